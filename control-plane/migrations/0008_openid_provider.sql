-- Portcullis as an OpenID Provider: an application's clients, the codes of its
-- authorization endpoint, the browser sessions at its sign-in pages (SSO), and consents.

CREATE TABLE oauth_clients (
    -- Also the client_id, as text.
    id                        uuid PRIMARY KEY,
    app_id                    uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name                      text NOT NULL,
    -- SHA-256 of a 256-bit random secret; NULL: a public client (PKCE, no secret).
    secret_hash               bytea,
    redirect_uris             text[] NOT NULL,
    post_logout_redirect_uris text[] NOT NULL DEFAULT '{}',
    scopes                    text[] NOT NULL,
    grant_types               text[] NOT NULL,
    first_party               boolean NOT NULL DEFAULT false,
    access_token_ttl          integer,
    refresh_token_ttl         integer,
    backchannel_logout_uri    text,
    created_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_clients_app ON oauth_clients (app_id);

-- A browser signed in at the provider's pages (its cookie holds the secret whose
-- SHA-256 is `hash`): a second client signs in without asking again.
CREATE TABLE provider_sessions (
    id         uuid PRIMARY KEY,
    hash       bytea NOT NULL UNIQUE,
    app_id     uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amr        text[] NOT NULL,
    auth_time  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz
);
CREATE INDEX provider_sessions_user ON provider_sessions (user_id);

CREATE TABLE oauth_codes (
    hash             bytea PRIMARY KEY,
    client_id        uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider_session uuid REFERENCES provider_sessions (id) ON DELETE CASCADE,
    redirect_uri     text NOT NULL,
    scope            text NOT NULL,
    nonce            text,
    code_challenge   text,
    amr              text[] NOT NULL,
    auth_time        timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    used_at          timestamptz,
    -- The session the code's tokens opened: revoked if the code is presented again.
    session_id       uuid
);
CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);

CREATE TABLE oauth_consents (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scopes     text[] NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id)
);

-- A session opened for a client: its tokens carry the client's id and the granted scope,
-- it refreshes only at the provider's token endpoint, and it ends with the browser
-- session it came from.
ALTER TABLE sessions
    ADD COLUMN client_id uuid REFERENCES oauth_clients (id) ON DELETE CASCADE,
    ADD COLUMN scope text,
    ADD COLUMN provider_session uuid REFERENCES provider_sessions (id) ON DELETE SET NULL;
CREATE INDEX sessions_provider_session ON sessions (provider_session);

-- Back-channel logout tokens (OpenID Back-Channel Logout 1.0) go out through the outbox,
-- in the webhook lane (tenant-chosen URLs, the guarded client): `recipient` is the client.
ALTER TABLE outbox DROP CONSTRAINT outbox_channel_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_channel_check
    CHECK (channel IN ('email', 'sms', 'webhook', 'backchannel'));
