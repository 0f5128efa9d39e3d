// A throwaway OpenID Provider for Portcullis tests: `oidc-provider` (a certified
// implementation), configured from a JSON file, with a minimal sign-in and consent UI
// that a headless HTTP client can drive (tests/src/oidc.rs does).
//
// Usage: node provider.mjs CONFIG.json   (or PORTCULLIS_OIDC_CONFIG=CONFIG.json)
//
// CONFIG.json:
//   {
//     "issuer": "http://127.0.0.1:PORT", "port": PORT,
//     "jwks_path": "/dir/jwks.json",      // created on first start, reused on restarts
//     "cookie_keys": ["secret", ...],
//     "clients": [{ "client_id", "client_secret", "redirect_uris": [...],
//                   "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post" }],
//     "accounts": [{ "sub", "email", "email_verified" }],
//     "default_claims": false   // true: oidc-provider's own ID-token claims behaviour
//   }
//
// Prints `oidc-provider ready on ISSUER` on stdout once listening. Everything is kept in
// memory (the default adapter): a restart forgets sessions, grants and codes, but keeps
// the signing key, so tokens issued before it still verify.
//
// Not for anything but tests: the accounts have no passwords.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import Provider from 'oidc-provider';

const configPath = process.argv[2] || process.env.PORTCULLIS_OIDC_CONFIG;
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json (or PORTCULLIS_OIDC_CONFIG)');
  process.exit(64);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));

const accounts = new Map(config.accounts.map((account) => [account.sub, account]));

// One RS256 key per provider directory: generated on the first start, read back on a
// restart, so the JWKS (and its kid) stay the same across a "provider down" test.
function signingKeys(path) {
  if (!fs.existsSync(path)) {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = privateKey.export({ format: 'jwk' });
    const kid = crypto.randomBytes(8).toString('hex');
    const tmp = `${path}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ keys: [{ ...jwk, kid, alg: 'RS256', use: 'sig' }] }));
    fs.renameSync(tmp, path);
  }
  return JSON.parse(fs.readFileSync(path, 'utf8'));
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    token_endpoint_auth_method: client.token_endpoint_auth_method,
    response_types: ['code'],
    grant_types: ['authorization_code'],
  })),
  jwks: signingKeys(config.jwks_path),
  cookies: { keys: config.cookie_keys },
  // Every client must send a code_challenge, and only S256 is accepted: a PKCE-less or
  // `plain` request is refused by the provider itself.
  pkce: { methods: ['S256'], required: () => true },
  responseTypes: ['code'],
  scopes: ['openid', 'email', 'profile'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Unless default_claims: put the scopes' claims into the ID token of the code flow too
  // (the default keeps them for userinfo, OIDC Core 5.4), as the big providers do.
  conformIdTokenClaims: Boolean(config.default_claims),
  async findAccount(_ctx, sub) {
    const account = accounts.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, email: account.email, email_verified: account.email_verified };
      },
    };
  },
  features: {
    devInteractions: { enabled: false },
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  // Short, so that nothing outlives a test; the code's 60 s is the usual maximum.
  ttl: {
    AuthorizationCode: 60,
    AccessToken: 300,
    IdToken: 300,
    Interaction: 300,
    Session: 600,
    Grant: 600,
  },
});

// What went wrong, in the log a failing test quotes.
for (const event of ['server_error', 'authorization.error', 'grant.error', 'interaction.error']) {
  provider.on(event, (_ctx, error) => {
    const why = [error.error_description, error.error_detail].filter(Boolean).join('; ');
    console.error(`${event}: ${error.name}: ${error.message}${why ? ` (${why})` : ''}`);
  });
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

async function formBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The interaction UI. GET /interaction/UID shows the login form (any known `sub`, no
// password) or the consent form; each form has a `data-prompt` attribute, which is what
// the Rust helper looks for. POST .../login, .../consent and .../abort finish the step
// and redirect (303) back to the provider's authorization endpoint.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|consent|abort))?$/);
  if (!match) return next();
  const [, uid, action] = match;
  ctx.set('cache-control', 'no-store');

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (error) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Interaction not found', `<p>${escape(error.message)}</p>`);
    return undefined;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Interaction mismatch', '<p>this interaction is not the one in progress</p>');
    return undefined;
  }
  const { prompt, params, session, grantId } = details;

  let result;
  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    if (prompt.name === 'login') {
      ctx.body = page('Sign in', `<form method="post" action="/interaction/${uid}/login" data-prompt="login">`
        + '<input name="login" placeholder="sub" required autofocus>'
        + '<button type="submit">Sign in</button></form>'
        + `<p><a href="/interaction/${uid}/abort">Cancel</a></p>`);
    } else if (prompt.name === 'consent') {
      ctx.body = page('Authorize', `<p>${escape(params.client_id)} asks for: ${escape(params.scope)}</p>`
        + `<form method="post" action="/interaction/${uid}/consent" data-prompt="consent">`
        + '<button type="submit">Allow</button></form>'
        + `<form method="post" action="/interaction/${uid}/abort" data-prompt="abort">`
        + '<button type="submit">Deny</button></form>');
    } else {
      ctx.status = 501;
      ctx.body = page('Not implemented', `<p>prompt ${escape(prompt.name)}</p>`);
    }
    return undefined;
  }
  if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
  } else if (ctx.method !== 'POST' || action !== prompt.name) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Wrong step', `<p>expected the ${escape(prompt.name)} step</p>`);
    return undefined;
  } else if (action === 'login') {
    const sub = (await formBody(ctx.req)).get('login');
    if (!accounts.has(sub)) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Unknown account', `<p>no account with sub ${escape(sub)}</p>`);
      return undefined;
    }
    result = { login: { accountId: sub } };
  } else {
    // Consent: grant what the prompt says is missing, as the built-in dev UI does.
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    result = { consent: { grantId: await grant.save() } };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: action === 'consent',
  });
  ctx.redirect(returnTo);
  ctx.status = 303;
  return undefined;
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider ready on ${config.issuer}`);
});
server.on('error', (error) => {
  console.error(`listening on 127.0.0.1:${config.port}: ${error.message}`);
  process.exit(1);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
