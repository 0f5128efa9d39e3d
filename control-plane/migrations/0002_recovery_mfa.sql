-- Account recovery, email verification, magic links, MFA, the message outbox and the
-- security event log.

-- Single-use tokens that reach a user outside the browser (password reset, email
-- verification, magic link) and the mfa_token of a login step-up. Only the SHA-256 of each
-- token is stored. `purpose` is part of every lookup, so a token of one kind never stands in
-- for another. `data` holds what the token is bound to besides its user: the address an
-- email verification confirms, a magic link's redirect_uri, a step-up's device and methods.
CREATE TABLE one_time_tokens (
    hash       bytea PRIMARY KEY,
    purpose    text NOT NULL
               CHECK (purpose IN ('password_reset', 'email_verification', 'magic_link', 'mfa_login')),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    app_id     uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    data       jsonb NOT NULL DEFAULT '{}',
    -- Wrong codes presented with this token (mfa_login): it dies at the limit.
    attempts   integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, purpose);
CREATE INDEX one_time_tokens_expiry ON one_time_tokens (expires_at);

-- Second factors. A TOTP secret is sealed (XChaCha20-Poly1305 under the key-encryption key,
-- bound to the factor id); SMS and email factors send codes to the user's current phone or
-- email. `confirmed_at` is set once the user proved the factor with a first code.
CREATE TABLE mfa_factors (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('totp', 'sms', 'email')),
    secret_enc   bytea,
    confirmed_at timestamptz,
    -- TOTP: the last time step accepted; a code of that step or an earlier one is a replay.
    last_step    bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind)
);

-- Recovery codes: HMAC-SHA256 under a key derived from the key-encryption key, single use.
CREATE TABLE recovery_codes (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       bytea NOT NULL,
    -- A code proves who is asking only if it was made before the asking session began.
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz,
    PRIMARY KEY (user_id, hash)
);

-- One-time codes sent by SMS or email. `bound_to` is the request that asked for the code:
-- the digest of the login's mfa_token, or the session id (as bytes) of an enrolment; a code
-- is only accepted for the same request. `hash` = HMAC(key, id || code).
CREATE TABLE otp_codes (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel IN ('sms', 'email')),
    bound_to    bytea NOT NULL,
    hash        bytea NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX otp_codes_bound ON otp_codes (bound_to, channel);
CREATE INDEX otp_codes_expiry ON otp_codes (expires_at);

-- Messages to deliver (mail, SMS, webhook calls), committed in the transaction that
-- caused them and delivered by a worker with retries, so an outage delays messages and
-- loses none. A mail or SMS payload carries a secret (a link or a code): it is sealed, and
-- erased once delivered. A webhook call's `body` is an event (no secret) and stays, so a
-- failed (dead-letter) delivery can be replayed; its `recipient` is the webhook's id.
CREATE TABLE outbox (
    id              uuid PRIMARY KEY,
    app_id          uuid REFERENCES apps (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'sms', 'webhook')),
    -- The template's or event's name (password_reset, user.registered, ...).
    kind            text NOT NULL,
    recipient       text NOT NULL,
    payload         bytea,
    body            jsonb,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'logged', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_done ON outbox (done_at) WHERE state <> 'pending';
CREATE INDEX outbox_recipient ON outbox (recipient, id DESC) WHERE channel = 'webhook';

-- Security events, append-only. No foreign keys: the record of what happened outlives the
-- application or user it was about. Never a secret in `details`.
CREATE TABLE audit_events (
    id         uuid PRIMARY KEY,
    app_id     uuid,
    user_id    uuid,
    -- user, anonymous, admin or operator: the credential the request carried.
    actor      text NOT NULL,
    event      text NOT NULL,
    ip         text,
    user_agent text,
    request_id text,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_app ON audit_events (app_id, id DESC);
CREATE INDEX audit_events_user ON audit_events (user_id, id DESC);
CREATE INDEX audit_events_created ON audit_events (created_at);
