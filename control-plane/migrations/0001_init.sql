-- Portcullis control plane: the first schema.
-- Owner -> application -> user -> session -> refresh token cascade through foreign keys, so
-- deleting any of them removes everything below it in one statement. Revocations are kept
-- apart (no foreign key): a deleted user's tokens stay revoked until they expire.

CREATE TABLE owners (
    id              uuid PRIMARY KEY,
    email           text NOT NULL,
    email_canonical text NOT NULL UNIQUE,
    password_hash   text NOT NULL,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE apps (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES owners (id) ON DELETE CASCADE,
    name         text NOT NULL,
    api_key_hash bytea NOT NULL UNIQUE,
    settings     jsonb NOT NULL DEFAULT '{}',
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, name)
);

CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    app_id             uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    email              text,
    email_canonical    text,
    username           text,
    username_canonical text,
    phone              text,
    password_hash      text NOT NULL,
    email_verified     boolean NOT NULL DEFAULT false,
    active             boolean NOT NULL DEFAULT true,
    guest              boolean NOT NULL DEFAULT false,
    display_name       text,
    roles              text[] NOT NULL DEFAULT '{}',
    expires_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, email_canonical),
    UNIQUE (app_id, username_canonical)
);

CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    app_id       uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    device_id    text,
    user_agent   text,
    ip           text,
    amr          text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    -- The refresh tokens' absolute lifetime: rotation never extends it.
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
-- Full indexes: the cascades from users and apps look sessions up by these columns.
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_app ON sessions (app_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
-- At most one live session per device of a user: a new login on the device replaces it.
CREATE UNIQUE INDEX sessions_device ON sessions (user_id, device_id)
    WHERE revoked_at IS NULL AND device_id IS NOT NULL;

CREATE TABLE refresh_tokens (
    hash           bytea PRIMARY KEY,
    session_id     uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    used_at        timestamptz,
    successor_hash bytea
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid             text PRIMARY KEY,
    state           text NOT NULL CHECK (state IN ('next', 'active', 'retired', 'removed')),
    public_key      bytea NOT NULL,
    -- XChaCha20-Poly1305 under PORTCULLIS_KEY_ENCRYPTION_KEY: nonce || ciphertext.
    private_key_enc bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- First time a JWKS holding this key reached Redis: the publish lead counts from here.
    published_at    timestamptz,
    activated_at    timestamptz,
    retired_at      timestamptz,
    -- A retired key stays published until every token it signed has expired.
    remove_after    timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';

-- What the verifiers must refuse, mirrored to Redis (API.md §5) and rewritten from here by
-- the reconciler. kind 'session': subject = session id; kind 'user': subject = user (or
-- owner) id and tokens issued at or before `before` are refused. `until`: Unix time after
-- which the entry may be dropped (every token it covers has expired).
CREATE TABLE revocations (
    kind    text NOT NULL CHECK (kind IN ('session', 'user')),
    subject text NOT NULL,
    before  bigint NOT NULL DEFAULT 0,
    until   bigint NOT NULL,
    PRIMARY KEY (kind, subject)
);
CREATE INDEX revocations_until ON revocations (until);
