//! The signed key set (API.md §5 `portcullis:jwks:signed`): the JWKS the control plane
//! publishes, wrapped in a compact JWS signed with a publisher key that verifiers are
//! given by configuration, so whoever can write to Redis cannot plant a signing key.
//!
//! Header `{"alg":"EdDSA","typ":"jwks+jws","kid":<the publisher key's RFC 7638
//! thumbprint>}`; payload `{"seq":N,"iat":T,"jwks":{...}}`. `seq` only grows (the
//! control plane takes it from a PostgreSQL sequence), so an older envelope, replayed,
//! is refused by a verifier that holds a newer one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jwk::{Jwk, Jwks, okp_thumbprint};
use crate::token::sign_compact;

/// The envelope's `typ`.
pub const TYP: &str = "jwks+jws";

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("not signed with EdDSA as a key set (alg, typ)")]
    WrongType,
    #[error("signed by a key this verifier does not trust")]
    UntrustedKey,
    #[error("the signature does not verify")]
    BadSignature,
}

/// The publisher keys a verifier trusts: Ed25519 public keys by `kid`.
#[derive(Debug, Clone, Default)]
pub struct TrustKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustKeys {
    /// The publisher key `key` itself (the control plane checking what it published).
    pub fn of(key: &SigningKey) -> Self {
        let kid = public_jwk(key).kid.unwrap_or_default();
        Self {
            keys: vec![(kid, key.verifying_key())],
        }
    }

    /// From a JWKS of OKP Ed25519 public keys; `kid` is the RFC 7638 thumbprint when the
    /// key has none. Refuses a private part, another key type, or an empty set.
    pub fn from_jwks(json: &str) -> Result<Self, String> {
        let set: Jwks = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if jwk.has_private_part() {
                return Err("a trust key has a private part: give public keys only".into());
            }
            let ("OKP", Some("Ed25519"), Some(x)) =
                (jwk.kty.as_str(), jwk.crv.as_deref(), jwk.x.as_deref())
            else {
                return Err("trust keys are OKP Ed25519 public keys".into());
            };
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or("a trust key's x is not 32 bytes of base64url")?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
            if key.is_weak() {
                return Err("a trust key is a small-order point".into());
            }
            let kid = jwk
                .kid
                .clone()
                .unwrap_or_else(|| okp_thumbprint("Ed25519", x));
            keys.push((kid, key));
        }
        if keys.is_empty() {
            return Err("the trust key set is empty".into());
        }
        Ok(Self { keys })
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }
}

/// An envelope whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The JWKS, as signed.
    pub jwks: String,
    pub seq: u64,
    pub iat: i64,
    /// The publisher key that signed it.
    pub kid: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    seq: u64,
    iat: i64,
    jwks: Value,
}

/// The publisher key's public JWK (`kid`: its RFC 7638 thumbprint).
pub fn public_jwk(key: &SigningKey) -> Jwk {
    Jwk::ed25519(key.verifying_key().as_bytes())
}

/// Signs `jwks_json` as envelope `seq`, issued at `iat`.
pub fn seal(key: &SigningKey, jwks_json: &str, seq: u64, iat: i64) -> Result<String, String> {
    let jwks: Value = serde_json::from_str(jwks_json).map_err(|e| e.to_string())?;
    let kid = public_jwk(key).kid.unwrap_or_default();
    let header = serde_json::json!({"alg": "EdDSA", "typ": TYP, "kid": kid}).to_string();
    let payload = serde_json::to_string(&Payload { seq, iat, jwks }).map_err(|e| e.to_string())?;
    Ok(sign_compact(key, header.as_bytes(), payload.as_bytes()))
}

/// Checks an envelope against `trust`: the shape, the type, a trusted `kid`, a strict
/// Ed25519 signature; then reads the payload.
pub fn open(envelope: &str, trust: &TrustKeys) -> Result<Opened, EnvelopeError> {
    let mut parts = envelope.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(EnvelopeError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| EnvelopeError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(h)?).map_err(|_| EnvelopeError::Malformed)?;
    if header.alg != "EdDSA" || header.typ.as_deref() != Some(TYP) {
        return Err(EnvelopeError::WrongType);
    }
    let kid = header.kid.ok_or(EnvelopeError::UntrustedKey)?;
    let (_, key) = trust
        .keys
        .iter()
        .find(|(k, _)| *k == kid)
        .ok_or(EnvelopeError::UntrustedKey)?;
    let signature: [u8; 64] = decode(s)?
        .try_into()
        .map_err(|_| EnvelopeError::Malformed)?;
    let signed = &envelope.trim()[..h.len() + 1 + p.len()];
    key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| EnvelopeError::BadSignature)?;
    let payload = decode(p)?;
    let payload: Payload =
        serde_json::from_slice(&payload).map_err(|_| EnvelopeError::Malformed)?;
    Ok(Opened {
        jwks: payload.jwks.to_string(),
        seq: payload.seq,
        iat: payload.iat,
        kid,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn trust(keys: &[&SigningKey]) -> TrustKeys {
        let jwks = Jwks {
            keys: keys.iter().map(|k| public_jwk(k)).collect(),
        };
        TrustKeys::from_jwks(&serde_json::to_string(&jwks).unwrap()).unwrap()
    }

    #[test]
    fn sealed_opens_only_with_a_trusted_key() {
        let (a, b) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"abc"}]}"#;
        let sealed = seal(&a, jwks, 7, 100).unwrap();
        let opened = open(&sealed, &trust(&[&a])).unwrap();
        let same: Value = serde_json::from_str(&opened.jwks).unwrap();
        assert_eq!(same, serde_json::from_str::<Value>(jwks).unwrap());
        assert_eq!((opened.seq, opened.iat), (7, 100));
        assert_eq!(opened.kid, public_jwk(&a).kid.unwrap());
        assert_eq!(
            open(&sealed, &trust(&[&b])),
            Err(EnvelopeError::UntrustedKey)
        );
        assert!(
            open(&sealed, &trust(&[&b, &a])).is_ok(),
            "rotation: both trusted"
        );
        // Any change to the payload breaks the signature.
        let mut parts: Vec<String> = sealed.split('.').map(str::to_owned).collect();
        let forged = seal(&b, r#"{"keys":[]}"#, 8, 100).unwrap();
        parts[1] = forged.split('.').nth(1).unwrap().to_owned();
        assert_eq!(
            open(&parts.join("."), &trust(&[&a])),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            open(jwks, &trust(&[&a])),
            Err(EnvelopeError::Malformed),
            "unsigned"
        );
    }

    #[test]
    fn trust_keys_are_public_ed25519_keys() {
        assert!(TrustKeys::from_jwks(r#"{"keys":[]}"#).is_err());
        assert!(TrustKeys::from_jwks("nope").is_err());
        let a = SigningKey::from_bytes(&[1; 32]);
        let mut private = serde_json::to_value(public_jwk(&a)).unwrap();
        private["d"] = serde_json::json!("AAAA");
        let set = serde_json::json!({ "keys": [private] }).to_string();
        assert!(TrustKeys::from_jwks(&set).unwrap_err().contains("private"));
    }
}
