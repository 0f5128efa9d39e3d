//! JSON Web Keys (RFC 7517) as Portcullis publishes and reads them: Ed25519 `OKP` keys
//! (RFC 8037) with RFC 7638 thumbprints as key ids, plus the RSA and EC members a foreign
//! issuer's JWKS may carry.
//!
//! These are the owned, cold-path forms: parsing a JWKS happens when keys change, never
//! per request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A JWK Set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One JWK. Unknown members are ignored; private members are kept only so that a key
/// carrying one can be detected and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    // Private members (RFC 7518 §6, RFC 8037 §2). Never published; present = refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dq: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

impl Jwk {
    /// The public JWK of an Ed25519 key, `kid` = its RFC 7638 thumbprint.
    pub fn ed25519(public_key: &[u8; 32]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public_key);
        let kid = okp_thumbprint("Ed25519", &x);
        Self {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(x),
            kid: Some(kid),
            use_: Some("sig".into()),
            alg: Some("EdDSA".into()),
            ..Self::default()
        }
    }

    /// Whether the key carries private material (`d`, RSA CRT members or a symmetric `k`).
    pub fn has_private_part(&self) -> bool {
        [
            &self.d, &self.p, &self.q, &self.dp, &self.dq, &self.qi, &self.k,
        ]
        .iter()
        .any(|m| m.is_some())
    }

    /// The RFC 7638 thumbprint of this key, if its type is one RFC 7638 / RFC 8037 define.
    pub fn thumbprint(&self) -> Option<String> {
        match self.kty.as_str() {
            "OKP" => Some(okp_thumbprint(self.crv.as_deref()?, self.x.as_deref()?)),
            "EC" => {
                let (crv, x, y) = (self.crv.as_deref()?, self.x.as_deref()?, self.y.as_deref()?);
                Some(thumbprint_of(
                    &serde_json::json!({"crv": crv, "kty": "EC", "x": x, "y": y}),
                ))
            }
            "RSA" => {
                let (e, n) = (self.e.as_deref()?, self.n.as_deref()?);
                Some(thumbprint_of(
                    &serde_json::json!({"e": e, "kty": "RSA", "n": n}),
                ))
            }
            _ => None,
        }
    }
}

/// RFC 7638 thumbprint of an OKP key (RFC 8037 §2: members `crv`, `kty`, `x`).
pub fn okp_thumbprint(crv: &str, x: &str) -> String {
    thumbprint_of(&serde_json::json!({"crv": crv, "kty": "OKP", "x": x}))
}

/// SHA-256 over the canonical member set. `serde_json::Value` objects serialize with sorted
/// keys and no whitespace (no `preserve_order` feature), which is RFC 7638's canonical form
/// for these ASCII members.
fn thumbprint_of(required_members: &serde_json::Value) -> String {
    let canonical = required_members.to_string();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
    #[test]
    fn rfc8037_thumbprint_vector() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(
            okp_thumbprint("Ed25519", x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    /// RFC 7638 §3.1: the thumbprint of the example RSA key.
    #[test]
    fn rfc7638_rsa_vector() {
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        assert_eq!(
            jwk.thumbprint().unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ed25519_jwk_is_public_and_self_identified() {
        let jwk = Jwk::ed25519(&[7u8; 32]);
        assert!(!jwk.has_private_part());
        assert_eq!(jwk.kid, jwk.thumbprint());
        let text = serde_json::to_string(&jwk).unwrap();
        assert!(text.contains(r#""use":"sig""#) && !text.contains("\"d\""));
    }
}
