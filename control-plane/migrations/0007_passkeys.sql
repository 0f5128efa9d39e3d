-- Passkeys (WebAuthn). A user's handle is a random id given to authenticators as the
-- WebAuthn user.id (never the user id or the email); it is made with the first passkey.
ALTER TABLE users ADD COLUMN passkey_handle uuid UNIQUE;

CREATE TABLE passkeys (
    id             uuid PRIMARY KEY,
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id  bytea NOT NULL,
    name           text NOT NULL,
    -- The relying-party library's credential (public key, counter, flags), as JSON.
    credential     jsonb NOT NULL,
    aaguid         uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz,
    UNIQUE (app_id, credential_id)
);
CREATE INDEX passkeys_user ON passkeys (user_id);

-- A ceremony begun and not yet finished: single use (deleted when finished), five minutes.
CREATE TABLE passkey_ceremonies (
    hash        bytea PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    -- The signed-in user (registration), the user named (sign-in with an email), or none
    -- (discoverable sign-in).
    user_id     uuid REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('register', 'sign_in', 'step_up')),
    state       jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX passkey_ceremonies_expiry ON passkey_ceremonies (expires_at);
