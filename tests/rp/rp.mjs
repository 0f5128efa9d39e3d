// A certified OpenID relying party for Portcullis tests: panva's `openid-client` (v6,
// pinned in package-lock.json) as the client of one OpenID Provider, driven over
// stdin/stdout by tests/src/rp.rs.
//
// Usage: node rp.mjs   (then one JSON command per line on stdin)
//
// Every command is `{"id": N, "cmd": NAME, ...arguments}`; every answer is one line
// `{"id": N, "result": VALUE}` or `{"id": N, "harness_error": "why"}` (a command this
// script cannot run: unknown, malformed, or before `discover`). An exception thrown by
// openid-client is a result, not a harness error: `{"error": {...}}` (see `describe`), so
// that a test can assert the exact OAuth refusal.
//
// Commands (all but `discover` need a successful `discover` first):
//   discover            {issuer, client: {client_id, client_secret?, redirect_uri, auth_method}}
//                       -> {metadata}
//   authorization_url   {extra: {name: value|null}} -> {url, state, nonce, code_verifier}
//   callback            {callback_url, request: {url, state, nonce, code_verifier}}
//                       -> the token response and "claims" (the validated ID token's)
//   refresh             {refresh_token} -> the token response and "claims" (or null)
//   userinfo            {access_token, expected_sub} -> the UserInfo claims
//   introspect          {token} -> the introspection response
//   revoke              {token} -> {}
//   client_credentials  {scope} -> the token response
//   end_session_url     {params: {name: value|null}} -> {url}
//
// It never drives a login page: the test gets the authorization URL, signs in by its own
// means and hands back the URL the provider redirected to.
//
// Not for anything but tests: nothing is persisted, and plain http is allowed.

import * as readline from 'node:readline';

import * as oidc from 'openid-client';

// What a test gets unless its `extra` says otherwise: everything a sign-in usually asks.
const DEFAULT_SCOPE = 'openid email profile offline_access';
// openid-client's bound on each HTTP request, below the Rust side's 20 s per command so
// that a hung provider shows as openid-client's timeout error rather than a harness one.
const HTTP_TIMEOUT_SECONDS = 15;

// A command this script cannot run (as opposed to an openid-client exception).
class HarnessError extends Error {}

let config;
let redirectUri;

function requireString(args, name) {
  const value = args[name];
  if (typeof value !== 'string') throw new HarnessError(`"${name}" must be a string`);
  return value;
}

function requireUrl(args, name) {
  const value = requireString(args, name);
  try {
    return new URL(value);
  } catch {
    throw new HarnessError(`"${name}" is not a URL: ${value}`);
  }
}

function requireConfig() {
  if (!config) throw new HarnessError('no configuration: "discover" has not succeeded');
  return config;
}

// Request parameters as strings: numbers (max_age) and booleans written out; a null
// value removes the parameter (e.g. `{"nonce": null}` to send none).
function applyParameters(parameters, extra) {
  if (extra === undefined || extra === null) return parameters;
  if (typeof extra !== 'object' || Array.isArray(extra)) {
    throw new HarnessError('parameters must be a JSON object');
  }
  for (const [name, value] of Object.entries(extra)) {
    if (value === null) delete parameters[name];
    else parameters[name] = typeof value === 'string' ? value : JSON.stringify(value);
  }
  return parameters;
}

function clientAuthentication(client) {
  switch (client.auth_method) {
    case 'client_secret_basic':
      return oidc.ClientSecretBasic(requireString(client, 'client_secret'));
    case 'client_secret_post':
      return oidc.ClientSecretPost(requireString(client, 'client_secret'));
    case 'none':
      return oidc.None();
    default:
      throw new HarnessError(`unknown auth_method ${JSON.stringify(client.auth_method)}`);
  }
}

// A token endpoint response with its validated ID token claims (the `claims()` helper
// is not enumerable, so JSON would drop it).
function withClaims(tokens) {
  return { ...tokens, claims: tokens.claims() ?? null };
}

const commands = {
  async discover(args) {
    const client = args.client ?? {};
    const clientId = requireString(client, 'client_id');
    redirectUri = requireString(client, 'redirect_uri');
    const auth = clientAuthentication(client);
    const metadata = { token_endpoint_auth_method: client.auth_method };
    if (typeof client.client_secret === 'string') metadata.client_secret = client.client_secret;
    config = await oidc.discovery(requireUrl(args, 'issuer'), clientId, metadata, auth, {
      execute: [oidc.allowInsecureRequests],
      timeout: HTTP_TIMEOUT_SECONDS,
    });
    return { metadata: config.serverMetadata() };
  },

  async authorization_url(args) {
    const configuration = requireConfig();
    const codeVerifier = oidc.randomPKCECodeVerifier();
    const parameters = applyParameters({
      redirect_uri: redirectUri,
      scope: DEFAULT_SCOPE,
      code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state: oidc.randomState(),
      nonce: oidc.randomNonce(),
    }, args.extra);
    const url = oidc.buildAuthorizationUrl(configuration, parameters);
    return {
      url: url.href,
      state: parameters.state ?? '',
      nonce: parameters.nonce ?? '',
      code_verifier: codeVerifier,
    };
  },

  async callback(args) {
    const configuration = requireConfig();
    const callbackUrl = requireUrl(args, 'callback_url');
    const request = args.request ?? {};
    // What the request asked decides what the answer must hold: an ID token when the
    // scope has openid, an auth_time within max_age when one was sent.
    const sent = requireUrl(request, 'url').searchParams;
    const maxAge = sent.has('max_age') ? Number(sent.get('max_age')) : undefined;
    const tokens = await oidc.authorizationCodeGrant(configuration, callbackUrl, {
      pkceCodeVerifier: requireString(request, 'code_verifier'),
      expectedState: request.state || undefined,
      expectedNonce: request.nonce || undefined,
      maxAge,
      idTokenExpected: (sent.get('scope') ?? '').split(' ').includes('openid'),
    });
    return withClaims(tokens);
  },

  async refresh(args) {
    const refreshToken = requireString(args, 'refresh_token');
    return withClaims(await oidc.refreshTokenGrant(requireConfig(), refreshToken));
  },

  async userinfo(args) {
    return oidc.fetchUserInfo(
      requireConfig(),
      requireString(args, 'access_token'),
      requireString(args, 'expected_sub'),
    );
  },

  async introspect(args) {
    return oidc.tokenIntrospection(requireConfig(), requireString(args, 'token'));
  },

  async revoke(args) {
    await oidc.tokenRevocation(requireConfig(), requireString(args, 'token'));
    return {};
  },

  async client_credentials(args) {
    const scope = requireString(args, 'scope');
    return oidc.clientCredentialsGrant(requireConfig(), scope ? { scope } : {});
  },

  async end_session_url(args) {
    const parameters = applyParameters({}, args.params);
    return { url: oidc.buildEndSessionUrl(requireConfig(), parameters).href };
  },
};

// An openid-client exception as JSON: whatever it carries of name, message, code (e.g.
// OAUTH_RESPONSE_BODY_ERROR, OAUTH_INVALID_RESPONSE), error, error_description and status
// (ResponseBodyError, AuthorizationResponseError, WWWAuthenticateChallengeError); the
// challenges of the latter, with the first one's error and error_description lifted up;
// "cause", the messages of the wrapped errors (openid-client's ClientError says
// "invalid response encountered" and keeps oauth4webapi's precise reason there, e.g.
// 'unexpected "state" response parameter value'); "expected", the value a failed
// comparison wanted; and the HTTP status of an unexpected response.
function describe(err) {
  if (!(err instanceof Error)) return { name: typeof err, message: String(err) };
  const out = { name: err.name, message: err.message };
  for (const key of ['code', 'error', 'error_description', 'status']) {
    if (err[key] !== undefined && err[key] !== null) out[key] = err[key];
  }
  if (err instanceof oidc.WWWAuthenticateChallengeError && Array.isArray(err.cause)) {
    out.challenges = err.cause;
    const first = err.cause[0]?.parameters ?? {};
    if (out.error === undefined && first.error !== undefined) out.error = first.error;
    if (out.error_description === undefined && first.error_description !== undefined) {
      out.error_description = first.error_description;
    }
    return out;
  }
  const causes = [];
  let cause = err.cause;
  for (let depth = 0; cause && typeof cause === 'object' && depth < 8; depth += 1) {
    if (cause instanceof Response) {
      out.status ??= cause.status;
      break;
    }
    if (cause instanceof Error) {
      // openid-client repeats the message of some errors it wraps.
      if (cause.message !== err.message) causes.push(cause.message);
    } else if ('expected' in cause && out.expected === undefined) {
      out.expected = cause.expected;
    }
    cause = cause.cause;
  }
  if (causes.length) out.cause = causes.join(': ');
  return out;
}

function answer(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// One command at a time, in order: the Rust side waits for each answer.
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let id = null;
  try {
    const command = JSON.parse(line);
    id = command.id ?? null;
    const run = Object.hasOwn(commands, command.cmd) ? commands[command.cmd] : undefined;
    if (!run) throw new HarnessError(`unknown command ${JSON.stringify(command.cmd)}`);
    let result;
    try {
      result = await run(command);
    } catch (err) {
      if (err instanceof HarnessError) throw err;
      console.error(`${command.cmd}: ${err?.stack ?? err}`);
      result = { error: describe(err) };
    }
    answer({ id, result });
  } catch (err) {
    console.error(`harness error: ${err?.stack ?? err}`);
    const why = err instanceof SyntaxError
      ? `bad JSON: ${err.message}`
      : String(err?.message ?? err);
    answer({ id, harness_error: why });
  }
}
