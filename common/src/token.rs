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
