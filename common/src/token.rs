//! The access-token profile of API.md §2 (RFC 9068 JWT access tokens, signed with EdDSA).
//!
//! `AccessTokenClaims` is the owned form the control plane mints and tests use to build
//! tokens. The verifier reads the same claims without owning them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The only signing algorithm Portcullis issues.
pub const ALG_EDDSA: &str = "EdDSA";
/// Default access-token lifetime when an application sets none.
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// The JOSE header Portcullis writes on every access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenHeader {
    pub alg: String,
    pub typ: String,
    pub kid: String,
}

impl AccessTokenHeader {
    pub fn eddsa(kid: impl Into<String>) -> Self {
        Self {
            alg: ALG_EDDSA.to_owned(),
            typ: ACCESS_TOKEN_TYP.to_owned(),
            kid: kid.into(),
        }
    }
}

/// Claims of an access token, API.md §2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    pub sid: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default)]
    pub amr: Vec<Amr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
    /// The key the token is bound to (RFC 9449 §6.1): present only on tokens issued with a
    /// DPoP proof, which are then accepted only with a proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The confirmation claim (RFC 7800 §3.1) of a DPoP-bound access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The base64url (unpadded) RFC 7638 SHA-256 thumbprint of the proof key's public JWK.
    pub jkt: String,
}

/// Authentication methods reference values (`amr`) Portcullis records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Amr {
    Pwd,
    Otp,
    Mfa,
    Magic,
    Oauth,
    Guest,
    /// A key held in hardware proved possession (a passkey that cannot leave its device,
    /// RFC 8176).
    Hwk,
    /// A key that may be synced between devices proved possession (a synced passkey).
    Swk,
}
/// Signs raw header and payload bytes into a compact JWS (RFC 7515 §7.1) with Ed25519.
/// The control plane signs its access tokens here; tests also sign malformed JSON with it.
pub fn sign_compact(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    token
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cnf_is_written_only_for_a_bound_token() {
        let mut claims = AccessTokenClaims {
            iss: "https://auth.example.com".into(),
            sub: "u".into(),
            aud: "a".into(),
            client_id: "a".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
            sid: "s".into(),
            roles: Vec::new(),
            scope: String::new(),
            amr: vec![Amr::Pwd],
            guest: false,
            cnf: None,
        };
        let unbound = serde_json::to_value(&claims).unwrap();
        assert!(unbound.get("cnf").is_none(), "{unbound}");
        claims.cnf = Some(Confirmation {
            jkt: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
        });
        let bound = serde_json::to_string(&claims).unwrap();
        assert!(
            bound.contains(r#""cnf":{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#),
            "{bound}"
        );
        let back: AccessTokenClaims = serde_json::from_str(&bound).unwrap();
        assert_eq!(back, claims);
    }
}
