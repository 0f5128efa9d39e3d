//! Minting tokens and key sets for the core's tests.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use portcullis_tests::tokens;
use portcullis_verifier::core::{KeySet, Revocations, Settings, Snapshot, Trust, Verifier};
use serde_json::{Value, json};

pub const ISS: &str = "https://auth.example.test";
pub const AUD: &str = "0190a1b2-0000-7000-8000-00000000a00a";
pub const SID: &str = "0190a1b2-0000-7000-8000-000000000051";
pub const SUB: &str = "0190a1b2-0000-7000-8000-000000000055";
pub const NOW: i64 = 1_800_000_000;

pub use portcullis_tests::tokens::{new_id, signing_key, unix_now as wall_now};

pub fn kid(key: &SigningKey) -> String {
    tokens::kid(&key.verifying_key())
}

pub fn jwks_of(keys: &[&SigningKey]) -> String {
    tokens::jwks_json(&keys.iter().map(|k| k.verifying_key()).collect::<Vec<_>>())
}

pub fn snapshot(keys: &[&SigningKey]) -> Snapshot {
    Snapshot {
        keys: Arc::new(KeySet::from_jwks(jwks_of(keys).as_bytes(), Trust::Portcullis).unwrap()),
        revocations: Revocations::default(),
        version: 1,
    }
}

pub fn verifier() -> Verifier {
    Verifier::new(
        Settings {
            issuers: vec![ISS.into()],
            audiences: vec![AUD.into()],
            leeway_secs: 30,
            typs: vec!["at+jwt".into()],
        },
        4096,
    )
}

pub fn header(key: &SigningKey) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid(key)})
}

pub fn claims() -> Value {
    json!({
        "iss": ISS, "sub": SUB, "aud": AUD, "client_id": AUD, "iat": NOW - 10, "nbf": NOW - 10,
        "exp": NOW + 890, "jti": "j1", "sid": SID, "roles": ["admin", "ops"], "scope": "users:read users:write",
        "amr": ["pwd"],
    })
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs raw header and payload bytes (so tests can sign malformed JSON).
pub fn sign_raw(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    tokens::sign_compact(key, header, payload)
}

pub fn mint(key: &SigningKey, header: &Value, claims: &Value) -> String {
    sign_raw(
        key,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

pub fn good_token(key: &SigningKey) -> String {
    mint(key, &header(key), &claims())
}

/// Claims valid right now for session `sid` of user `sub`.
pub fn live_claims(sid: &str, sub: &str) -> Value {
    let now = wall_now();
    let mut c = claims();
    c["iat"] = json!(now);
    c["nbf"] = json!(now);
    c["exp"] = json!(now + 900);
    c["sid"] = json!(sid);
    c["sub"] = json!(sub);
    c
}

/// A token valid right now.
pub fn live_token(key: &SigningKey, sid: &str, sub: &str) -> String {
    mint(key, &header(key), &live_claims(sid, sub))
}
