//! The access-token profile of API.md §2 (RFC 9068 JWT access tokens, signed with EdDSA).
//!
//! `AccessTokenClaims` is the owned form the control plane mints and tests use to build
//! tokens. The verifier reads the same claims without owning them.

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
}
