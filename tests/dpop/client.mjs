// An independent DPoP (RFC 9449) proof client for Portcullis tests: panva's `dpop` (v2,
// pinned in package-lock.json) makes every valid proof, and node:crypto the hand-crafted
// ones a test asks for (attacks, fixed iat or jti). Driven over stdin/stdout by
// tests/src/dpop.rs. Nothing here is ported from the Rust side: that is the point.
//
// Usage: node client.mjs   (then one JSON command per line on stdin)
//
// Every command is `{"id": N, "cmd": NAME, ...arguments}`; every answer is one line
// `{"id": N, "result": VALUE}` or `{"id": N, "harness_error": "why"}` (anything that went
// wrong: an unknown command or key, a bad argument, an exception).
//
// Commands:
//   hello  {} -> {node, dpop}: the versions of Node.js and of the dpop package
//   key    {alg: "EdDSA" | "Ed25519" | "ES256"}
//          -> {id, alg, jkt, public_jwk}: a fresh key pair (WebCrypto, via dpop's
//          generateKeyPair), kept here under `id`; `alg` is the JWS alg its valid proofs
//          carry (dpop writes "Ed25519" for an Ed25519 key, RFC 9864's name, whichever
//          name was asked for), `jkt` dpop's RFC 7638 SHA-256 thumbprint
//   proof  {key, htm, htu, access_token?, nonce?, iat?, jti?, alg?, typ?,
//           embed_private_key?, signed_by?, ath_override?}
//          -> {proof, made_by: "dpop" | "hand"}
//
// A proof without iat, jti, alg, typ, embed_private_key, signed_by or ath_override is
// dpop's generateProof verbatim. Anything else is built by hand in the same layout: header
// {alg, typ, jwk} with jwk {kty, crv, x, y?}, payload {iat, jti, htm, nonce?, htu, ath?}
// (dpop's member order), JSON without spaces, base64url without padding, then:
//   alg "none"      header alg "none", empty signature ("h.p.")
//   alg "HS256"     HMAC-SHA256 keyed with the jwk's raw `x` bytes, header alg "HS256"
//   other alg       header alg as given, signed with the key's own algorithm (e.g. "EdDSA"
//                   on an Ed25519 key: a valid proof as pre-RFC 9864 clients label it)
//   typ             header typ as given (default "dpop+jwt")
//   embed_private_key  the header jwk also carries the private `d`
//   signed_by       the header carries `key`'s jwk (and alg), the signature is made with
//                   the key `signed_by` names
//   ath_override    this string as ath, whatever access_token says
//   iat, jti        these values instead of now (Unix seconds) and a random UUID
//
// Not for anything but tests: keys live in memory, unprotected, until the process exits.

import { Buffer } from 'node:buffer';
import { createHmac, randomUUID, webcrypto } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as readline from 'node:readline';

import * as DPoP from 'dpop';

const { subtle } = webcrypto;

// A command this script cannot run.
class HarnessError extends Error {}

// id -> {alg, keypair, publicJwk}
const keys = new Map();
let nextKey = 0;

function requireString(args, name) {
  const value = args[name];
  if (typeof value !== 'string') throw new HarnessError(`"${name}" must be a string`);
  return value;
}

function optional(args, name, type) {
  const value = args[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== type) throw new HarnessError(`"${name}" must be a ${type} or null`);
  return value;
}

function requireKey(args, name) {
  const id = requireString(args, name);
  const key = keys.get(id);
  if (!key) throw new HarnessError(`unknown key ${JSON.stringify(id)} (keys live in the process that made them)`);
  return key;
}

function b64u(bytes) {
  return Buffer.from(bytes).toString('base64url');
}

function b64uJson(value) {
  return b64u(Buffer.from(JSON.stringify(value), 'utf8'));
}

// The public JWK as dpop writes it into the header: kty, crv, x, y (when EC), in that
// order, nothing else.
async function publicJwk(publicKey) {
  const { kty, crv, x, y } = await subtle.exportKey('jwk', publicKey);
  return { kty, crv, x, y };
}

// The WebCrypto signature parameters of a private key, as dpop signs with it (ECDSA's is
// r || s, the JWS form).
function signAlgorithm(privateKey) {
  switch (privateKey.algorithm.name) {
    case 'ECDSA':
      return { name: 'ECDSA', hash: 'SHA-256' };
    case 'Ed25519':
      return { name: 'Ed25519' };
    default:
      throw new HarnessError(`no signing for ${privateKey.algorithm.name}`);
  }
}

async function hashToken(token) {
  return b64u(await subtle.digest('SHA-256', Buffer.from(token, 'utf8')));
}

// A proof built by hand, in dpop's layout (see the top of this file).
async function handProof(key, htm, htu, args) {
  const signer = args.signed_by == null ? key : requireKey(args, 'signed_by');
  const alg = optional(args, 'alg', 'string') ?? key.alg;
  const jwk = { ...key.publicJwk };
  if (args.embed_private_key === true) {
    jwk.d = (await subtle.exportKey('jwk', key.keypair.privateKey)).d;
  }
  const header = { alg, typ: optional(args, 'typ', 'string') ?? 'dpop+jwt', jwk };
  const accessToken = optional(args, 'access_token', 'string');
  const ath = optional(args, 'ath_override', 'string')
    ?? (accessToken ? await hashToken(accessToken) : undefined);
  const payload = {
    iat: optional(args, 'iat', 'number') ?? Math.floor(Date.now() / 1000),
    jti: optional(args, 'jti', 'string') ?? randomUUID(),
    htm,
    nonce: optional(args, 'nonce', 'string'),
    htu,
    ath,
  };
  const input = `${b64uJson(header)}.${b64uJson(payload)}`;
  let signature;
  if (alg === 'none') {
    signature = '';
  } else if (alg === 'HS256') {
    const secret = Buffer.from(signer.publicJwk.x, 'base64url');
    signature = createHmac('sha256', secret).update(input, 'utf8').digest('base64url');
  } else {
    const { privateKey } = signer.keypair;
    const raw = await subtle.sign(signAlgorithm(privateKey), privateKey, Buffer.from(input, 'utf8'));
    signature = b64u(new Uint8Array(raw));
  }
  return `${input}.${signature}`;
}

// The options that take a proof away from dpop's generateProof.
const HAND_MADE = ['iat', 'jti', 'alg', 'typ', 'signed_by', 'ath_override'];

const commands = {
  async hello() {
    const manifest = new URL('./node_modules/dpop/package.json', import.meta.url);
    return { node: process.version, dpop: JSON.parse(readFileSync(manifest, 'utf8')).version };
  },

  async key(args) {
    const asked = requireString(args, 'alg');
    let generate;
    switch (asked) {
      case 'EdDSA':
      case 'Ed25519':
        generate = 'Ed25519';
        break;
      case 'ES256':
        generate = 'ES256';
        break;
      default:
        throw new HarnessError(`unsupported alg ${JSON.stringify(asked)}: EdDSA, Ed25519 or ES256`);
    }
    // Extractable: embed_private_key exports `d`; dpop needs only the public half to be.
    const keypair = await DPoP.generateKeyPair(generate, { extractable: true });
    const jwk = await publicJwk(keypair.publicKey);
    nextKey += 1;
    const id = `k${nextKey}`;
    keys.set(id, { alg: generate, keypair, publicJwk: jwk });
    return {
      id,
      alg: generate,
      jkt: await DPoP.calculateThumbprint(keypair.publicKey),
      public_jwk: JSON.parse(JSON.stringify(jwk)),
    };
  },

  async proof(args) {
    const key = requireKey(args, 'key');
    const htm = requireString(args, 'htm');
    const htu = requireString(args, 'htu');
    const handMade = args.embed_private_key === true
      || HAND_MADE.some((name) => args[name] !== undefined && args[name] !== null);
    if (handMade) return { proof: await handProof(key, htm, htu, args), made_by: 'hand' };
    const proof = await DPoP.generateProof(
      key.keypair,
      htu,
      htm,
      optional(args, 'nonce', 'string'),
      optional(args, 'access_token', 'string'),
    );
    return { proof, made_by: 'dpop' };
  },
};

function answer(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// One command at a time, in order: the Rust side holds a lock around each exchange.
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let id = null;
  try {
    const command = JSON.parse(line);
    id = command.id ?? null;
    const run = Object.hasOwn(commands, command.cmd) ? commands[command.cmd] : undefined;
    if (!run) throw new HarnessError(`unknown command ${JSON.stringify(command.cmd)}`);
    answer({ id, result: await run(command) });
  } catch (err) {
    console.error(`harness error: ${err?.stack ?? err}`);
    const why = err instanceof SyntaxError
      ? `bad JSON: ${err.message}`
      : String(err?.message ?? err);
    answer({ id, harness_error: why });
  }
}
