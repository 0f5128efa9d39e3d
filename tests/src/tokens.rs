//! Minting Portcullis access tokens and key sets for tests, benches and local demos, with
//! the control plane's own signer (`portcullis_common::token::sign_compact`). Never for production (keys are
//! plain values, `signing_key` is deterministic).

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_common::jwk::{Jwk, Jwks};
use portcullis_common::token::{AccessTokenClaims, AccessTokenHeader, Amr};

/// The wall clock in Unix seconds (tests and tools mint tokens a running server accepts).
#[allow(clippy::disallowed_methods)] // the harness's one clock read
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A deterministic Ed25519 key (all 32 seed bytes set to `seed`).
pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A fresh random Ed25519 key.
pub fn random_signing_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// The RFC 7638 key id Portcullis gives `key`.
pub fn kid(key: &VerifyingKey) -> String {
    Jwk::ed25519(key.as_bytes()).kid.unwrap_or_default()
}

/// The public JWKS JSON of `keys`, as the control plane publishes it.
pub fn jwks_json(keys: &[VerifyingKey]) -> String {
    let jwks = Jwks {
        keys: keys.iter().map(|k| Jwk::ed25519(k.as_bytes())).collect(),
    };
    serde_json::to_string(&jwks).unwrap_or_default()
}

/// A random id shaped like a UUID v4 (the form of Portcullis ids).
pub fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub use portcullis_common::token::sign_compact;

/// Mints access tokens (API.md §2) with one key, issuer and audience.
#[derive(Debug)]
pub struct Minter {
    key: SigningKey,
    issuer: String,
    audience: String,
    header: Vec<u8>,
}

impl Minter {
    pub fn new(key: SigningKey, issuer: &str, audience: &str) -> Self {
        let header = serde_json::to_vec(&AccessTokenHeader::eddsa(kid(&key.verifying_key())))
            .unwrap_or_default();
        Self {
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            header,
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Realistic claims issued at `now` and valid for `ttl` seconds: roles `admin`, `ops`,
    /// scopes `users:read users:write`, `amr` `pwd`.
    pub fn claims(&self, now: i64, ttl: i64, sub: &str, sid: &str) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.audience.clone(),
            client_id: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: new_id(),
            sid: sid.to_owned(),
            roles: vec!["admin".to_owned(), "ops".to_owned()],
            scope: "users:read users:write".to_owned(),
            amr: vec![Amr::Pwd],
            guest: false,
            cnf: None,
        }
    }

    /// Signs `claims` under this minter's header.
    pub fn sign(&self, claims: &AccessTokenClaims) -> String {
        sign_compact(
            &self.key,
            &self.header,
            &serde_json::to_vec(claims).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn minted_tokens_have_the_portcullis_shape() {
        let m = Minter::new(signing_key(3), "https://i.test", "app");
        let token = m.sign(&m.claims(100, 900, "u", "s"));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], kid(&m.verifying_key()).as_str());
        assert_eq!(new_id().len(), 36);
        assert_ne!(new_id(), new_id());
    }
}
