//! Portcullis as an OpenID Provider for an application's OAuth clients: the authorization
//! endpoint and its pages ([`authorize`]), the token endpoint ([`token`]), and UserInfo,
//! introspection, revocation and RP-initiated logout ([`endpoints`]).
//!
//! One issuer per application, `{PUBLIC_URL}/v1/apps/{app}`: users, sessions and clients
//! belong to one application, so its discovery document, its ID tokens' `iss` and its
//! sign-in cookie are its own. Access tokens keep the control plane's `iss` and the
//! application as `aud` (what the verifiers check), with the client's `client_id` and the
//! granted `scope`.

pub mod authorize;
pub mod endpoints;
pub mod token;

use portcullis_common::token::{Amr, sign_compact};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::apps::App;
use crate::domain::clients::Client;
use crate::domain::dpop::DpopError;
use crate::domain::keys::KeyError;
use crate::domain::tokens::{TokenError, Verifiers};
use crate::domain::users::User;
use crate::flows::signin::{self, SignInError};
use crate::infra::store::DbError;

/// What the provider works with.
#[derive(Clone, Copy, Debug)]
pub struct Deps<'a> {
    pub signin: signin::Deps<'a>,
    /// `PORTCULLIS_PUBLIC_URL`: where the issuers live.
    pub public_url: &'a str,
    pub tokens: &'a Verifiers,
}

/// The application's issuer: exact, as in discovery and every ID token.
pub fn issuer(public_url: &str, app: Uuid) -> String {
    format!("{}/v1/apps/{app}", public_url.trim_end_matches('/'))
}

/// The OAuth 2.0 / OpenID Connect error codes the provider answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    AccessDenied,
    LoginRequired,
    ConsentRequired,
    InvalidToken,
    /// RFC 9449 §5: the DPoP proof is missing, refused, or by the wrong key.
    InvalidDpopProof,
    /// RFC 9449 §8: the proof must carry the `DPoP-Nonce` sent with this answer.
    UseDpopNonce,
}

impl OAuthCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidScope => "invalid_scope",
            Self::AccessDenied => "access_denied",
            Self::LoginRequired => "login_required",
            Self::ConsentRequired => "consent_required",
            Self::InvalidToken => "invalid_token",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
        }
    }

    /// The status of the JSON answer (RFC 6749 §5.2; RFC 6750 §3.1 for `invalid_token`).
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidClient | Self::InvalidToken => 401,
            _ => 400,
        }
    }
}

/// Why a provider request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// An OAuth error and its description (for the client; never a secret).
    #[error("{1}")]
    OAuth(OAuthCode, String),
    #[error(transparent)]
    SignIn(#[from] SignInError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(ProviderError);

impl From<TokenError> for ProviderError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(code) => Self::OAuth(OAuthCode::InvalidToken, code.to_string()),
            TokenError::Keys(e) => e.into(),
            TokenError::Db(e) => e.into(),
        }
    }
}

impl From<DpopError> for ProviderError {
    fn from(e: DpopError) -> Self {
        match e {
            DpopError::Invalid(why) => Self::OAuth(OAuthCode::InvalidDpopProof, why.to_owned()),
            DpopError::UseNonce => Self::OAuth(OAuthCode::UseDpopNonce, e.to_string()),
            DpopError::NotBound => Self::OAuth(OAuthCode::InvalidToken, e.to_string()),
            DpopError::Db(e) => e.into(),
        }
    }
}

pub(crate) fn oauth(code: OAuthCode, description: impl Into<String>) -> ProviderError {
    ProviderError::OAuth(code, description.into())
}

/// Whether the space-separated `scope` has `one`.
pub(crate) fn has_scope(scope: &str, one: &str) -> bool {
    scope.split(' ').any(|s| s == one)
}

/// What UserInfo and the ID token say about `user`, by scope (OIDC Core 5.4).
pub fn user_claims(user: &User, scope: &str) -> Value {
    let mut claims = json!({ "sub": user.id.to_string() });
    if has_scope(scope, "email") {
        claims["email"] = json!(user.email);
        claims["email_verified"] = json!(user.email_verified);
    }
    if has_scope(scope, "profile") {
        let name = user.display_name.as_ref().or(user.username.as_ref());
        claims["name"] = json!(name);
        claims["preferred_username"] = json!(user.username);
    }
    if has_scope(scope, "roles") {
        claims["roles"] = json!(user.roles);
    }
    claims
}

/// What an ID token is about.
#[derive(Debug)]
pub struct IdToken<'a> {
    pub app: &'a App,
    pub client: &'a Client,
    pub user: &'a User,
    pub scope: &'a str,
    pub nonce: Option<&'a str>,
    pub amr: &'a [Amr],
    pub auth_time: i64,
    /// The browser session at the provider (`sid`, for logout).
    pub sid: Option<Uuid>,
    pub ttl: i64,
}

/// Signs an ID token with the active key (EdDSA, the key set every verifier has).
pub async fn id_token(deps: Deps<'_>, t: &IdToken<'_>, now: i64) -> Result<String, ProviderError> {
    let mut claims = user_claims(t.user, t.scope);
    claims["iss"] = json!(issuer(deps.public_url, t.app.id));
    claims["aud"] = json!(t.client.id.to_string());
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + t.ttl);
    claims["auth_time"] = json!(t.auth_time);
    claims["amr"] = json!(t.amr);
    if let Some(nonce) = t.nonce {
        claims["nonce"] = json!(nonce);
    }
    if let Some(sid) = t.sid {
        claims["sid"] = json!(sid.to_string());
    }
    sign(deps, "JWT", &claims).await
}

/// `claims` signed with the active key (EdDSA, the key set every verifier has), typed.
async fn sign(deps: Deps<'_>, typ: &str, claims: &Value) -> Result<String, ProviderError> {
    let keys = deps.signin.keys.current().await?;
    let header = json!({"alg": "EdDSA", "typ": typ, "kid": keys.kid}).to_string();
    let payload = claims.to_string();
    Ok(sign_compact(
        &keys.signer,
        header.as_bytes(),
        payload.as_bytes(),
    ))
}

/// A logout token (OpenID Back-Channel Logout 1.0 §2.4) telling `client` that `user`'s
/// sign-in `sid` at the provider ended: typed `logout+jwt`, never a `nonce`.
pub async fn logout_token(
    deps: Deps<'_>,
    app: &App,
    client: Uuid,
    user: Uuid,
    sid: Uuid,
    now: i64,
) -> Result<String, ProviderError> {
    let claims = json!({
        "iss": issuer(deps.public_url, app.id),
        "aud": client.to_string(),
        "sub": user.to_string(),
        "sid": sid.to_string(),
        "iat": now,
        "exp": now + 120,
        "jti": Uuid::now_v7().to_string(),
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    sign(deps, "logout+jwt", &claims).await
}
