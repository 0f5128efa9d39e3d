-- Webhooks of an application: signed deliveries (Standard Webhooks) of its security events
-- through the outbox. The signing secret is sealed under the key-encryption key, bound to
-- the webhook's id.
CREATE TABLE webhooks (
    id         uuid PRIMARY KEY,
    app_id     uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    url        text NOT NULL,
    -- Event names (as in the audit log), or '*' for every event.
    events     text[] NOT NULL,
    secret_enc bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_app ON webhooks (app_id);
