-- Social login (API.md §3 `/oauth/*`): identities at external providers, the sign-ins
-- and links in flight, and the ticket that starts a link from a signed-in session.

-- An external identity, keyed by (provider, issuer, subject) within an application (OIDC
-- §5.7: iss + sub; a provider pointed at another issuer matches none of its old
-- identities), never by email. A user holds at most one identity per provider.
CREATE TABLE oauth_identities (
    id             uuid PRIMARY KEY,
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    issuer         text NOT NULL,
    subject        text NOT NULL,
    -- What the provider said at the last sign-in (shown in /me; never used to match).
    email          text,
    email_verified boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz,
    UNIQUE (app_id, provider, issuer, subject),
    UNIQUE (user_id, provider)
);

-- One authorization request: `state` (stored as SHA-256) is single use and bound to the
-- browser that started it (the SHA-256 of a cookie it was given), with the PKCE verifier
-- and the nonce the ID token must carry. Once the provider answered, `code_hash` is the
-- one-time code (60 s): for a sign-in, exchanged at POST /oauth/exchange (with the
-- application's own PKCE verifier when it sent `code_challenge`); for a link, confirmed at
-- POST /oauth/{provider}/link/confirm by the linking user's session, the identity the
-- provider asserted kept in `asserted` until then.
CREATE TABLE oauth_flows (
    state_hash      bytea PRIMARY KEY,
    app_id          uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    provider        text NOT NULL,
    browser_hash    bytea NOT NULL,
    code_verifier   text NOT NULL,
    nonce           text NOT NULL,
    redirect_uri    text NOT NULL,
    client_state    text,
    link_user_id    uuid REFERENCES users (id) ON DELETE CASCADE,
    client_challenge text,
    asserted        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    code_hash       bytea UNIQUE,
    code_user_id    uuid REFERENCES users (id) ON DELETE CASCADE,
    code_expires_at timestamptz,
    code_used_at    timestamptz
);
CREATE INDEX oauth_flows_expiry ON oauth_flows (expires_at);

-- The link ticket (a single-use token of a signed-in user that opens the authorize route).
ALTER TABLE one_time_tokens DROP CONSTRAINT one_time_tokens_purpose_check;
ALTER TABLE one_time_tokens ADD CONSTRAINT one_time_tokens_purpose_check
    CHECK (purpose IN ('password_reset', 'email_verification', 'magic_link', 'mfa_login', 'oauth_link'));
