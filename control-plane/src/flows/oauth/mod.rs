//! Social login over OAuth 2.0 / OpenID Connect (API.md §3 `/oauth/*`): the control plane
//! is the relying party of the providers an application configures.
//!
//! ```text
//! GET  /oauth/{p}/authorize?redirect_uri=R[&state=S]      (R exactly in the allowlist)
//!   -> oauth_flows row { sha256(state), sha256(browser cookie), PKCE verifier, nonce, R }
//!   -> Set-Cookie (the browser binding) + 302 to the provider (code, S256, state, nonce)
//! GET|POST /oauth/{p}/callback?code&state
//!   -> the row by state, unused, unexpired, same browser        else 400 invalid_state
//!   -> used (single use) -> code + verifier at the token endpoint -> ID token verified
//!      (JWKS signature, alg pinned to the key, iss, aud, azp, exp, nonce)
//!   -> identity by (provider, subject): its user | a link | a new user | an email that is
//!      someone's: linked only if the provider says verified AND the app allows it
//!   -> 302 R?code=C&state=S     (C: one-time, 60 s)     | R?error=…&state=S
//! POST /oauth/exchange {code} -> the usual sign-in answer (amr ["oauth"], or a step-up)
//! ```
//!
//! Provider calls go through the SSRF-guarded client (`infra::egress`: no private
//! addresses unless `PORTCULLIS_EGRESS_ALLOW_PRIVATE`, which also permits `http://`
//! issuers) in [`provider`]; the flow is [`flow`]. Client secrets are sealed in the
//! settings (`domain::settings::providers`).

mod flow;
mod provider;

pub use self::flow::{
    Answer, Authorize, Back, Landing, Outcome, Started, begin_link, callback, confirm_link,
    exchange, provider_return, redeem_user, start, unlink,
};
pub use self::provider::OAuth;

use uuid::Uuid;

use crate::domain::apps::App;
use crate::domain::settings::SettingsError;
use crate::domain::settings::providers::OAuthProvider;
use crate::domain::users::UserError;
use crate::infra::crypto::Secrets;
use crate::infra::store::DbError;

/// What social login works with.
#[derive(Clone, Copy, Debug)]
pub struct Deps<'a> {
    pub pool: &'a deadpool_postgres::Pool,
    pub oauth: &'a OAuth,
    /// Client secrets.
    pub secrets: &'a Secrets,
    /// The base of the callback URL providers send the browser back to.
    pub public_url: &'a str,
}

/// Why a social sign-in (or a link) did not go through.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error(
        "this sign-in is unknown, expired, already finished, or was started in another browser"
    )]
    InvalidState,
    /// No such provider in the application's settings.
    #[error("OAuth provider not found")]
    NoProvider,
    #[error("{0}")]
    IdentityLinked(&'static str),
    #[error("an account with this email exists: sign in to it and link the provider")]
    EmailTaken,
    /// The provider's ID token failed a check (named).
    #[error("the provider's ID token was refused: {0}")]
    IdToken(&'static str),
    #[error("the provider refused the authorization code")]
    CodeRefused,
    /// A one-time or link code that is unknown, expired, used, or not the caller's.
    #[error("{0}")]
    CodeUsed(&'static str),
    #[error("linked identity not found")]
    NotLinked,
    #[error(
        "this is the last way to sign in: set a password, add a passkey or link another provider first"
    )]
    LastWayIn,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(&'static str),
    /// The provider could not be reached or answered nonsense: the cause is for the log.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    SignIn(#[from] crate::flows::signin::SignInError),
    #[error(transparent)]
    Mfa(#[from] crate::flows::mfa::MfaError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(OAuthError);

/// The provider `name` of `app`.
pub fn provider<'a>(app: &'a App, name: &str) -> Result<&'a OAuthProvider, OAuthError> {
    app.settings
        .oauth_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or(OAuthError::NoProvider)
}

/// Where the provider sends the browser back.
pub fn callback_url(public_url: &str, app: Uuid, provider: &str) -> String {
    format!("{public_url}/v1/apps/{app}/oauth/{provider}/callback")
}

/// `base` with `pairs` added to its query.
fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    // Form-encoding string pairs cannot fail.
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let join = if base.contains('?') { '&' } else { '?' };
    format!("{base}{join}{query}")
}
