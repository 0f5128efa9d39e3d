-- DPoP (RFC 9449): the key a session's refresh tokens are bound to, the key an
-- authorization code is bound to (`dpop_jkt`, RFC 9449 §10), and the proofs the control
-- plane has accepted, so none is accepted twice.

-- The RFC 7638 SHA-256 thumbprint (32 bytes) of the key whose proof opened the session;
-- NULL: not bound. Every refresh of a bound session needs a proof by that key.
ALTER TABLE sessions ADD COLUMN dpop_jkt bytea CHECK (octet_length(dpop_jkt) = 32);

-- The thumbprint the authorization request named; its code is redeemed only with a proof
-- by that key.
ALTER TABLE oauth_codes ADD COLUMN dpop_jkt bytea CHECK (octet_length(dpop_jkt) = 32);

-- One row per accepted proof: SHA-256 of (thumbprint || jti), kept while the proof's
-- `iat` is within the acceptance window, then pruned by the maintenance pass.
CREATE TABLE dpop_proofs (
    hash       bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX dpop_proofs_expiry ON dpop_proofs (expires_at);
