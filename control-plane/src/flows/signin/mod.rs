//! Signing in, and what a signed-in session does with its tokens: password login,
//! registration and guests ([`password`]), the second step when a factor is needed
//! ([`stepup`]), and the session itself: started, its refresh token rotated, ended
//! ([`session`]). A passkey ([`passkey`]) is two factors at once and starts the session
//! itself; every other way in (a magic link, a social login) ends in
//! [`after_first_factor`].

pub mod passkey;
pub mod password;
pub mod session;
pub mod stepup;

use deadpool_postgres::Pool;
use portcullis_common::token::Amr;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::factors::FactorError;
use crate::domain::keys::{KeyError, KeyRing};
use crate::domain::mailings::{Links, MailError};
use crate::domain::passwords::PasswordError;
use crate::domain::tokens::Tokens;
use crate::domain::users::{User, UserError};
use crate::flows::mfa::MfaError;
use crate::flows::passkeys::PasskeyError;
use crate::infra::captcha::{Captcha, CaptchaError};
use crate::infra::clock;
use crate::infra::crypto::{HashError, PasswordHasherPool, Secrets};
use crate::infra::limits::{LimitError, Limiter};
use crate::infra::outbox::Outbox;
use crate::infra::publish::Publisher;
use crate::infra::store::DbError;

pub use self::stepup::Challenge;

/// What signing in works with.
#[derive(Clone, Copy, Debug)]
pub struct Deps<'a> {
    pub pool: &'a Pool,
    pub keys: &'a KeyRing,
    /// `iss` of the tokens.
    pub issuer: &'a str,
    pub publisher: &'a Publisher,
    pub outbox: &'a Outbox,
    /// Mails of a registration.
    pub links: Links<'a>,
    /// Refresh-token successors, code MACs.
    pub secrets: &'a Secrets,
    pub hasher: &'a PasswordHasherPool,
    pub limiter: &'a Limiter,
    pub captcha: &'a Captcha,
}

impl Deps<'_> {
    /// The part second factors work with.
    pub fn mfa(&self) -> crate::flows::mfa::Deps<'_> {
        crate::flows::mfa::Deps {
            pool: self.pool,
            secrets: self.secrets,
            limiter: self.limiter,
            outbox: self.outbox,
            hasher: self.hasher,
        }
    }
}

/// Why a sign-in (or a refresh, or a step-up) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the user is disabled or expired")]
    UserDisabled,
    #[error("the refresh token is invalid or expired")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session is revoked")]
    RefreshTokenReused,
    /// The refresh token (or code) is bound to a DPoP key and the request's proof, if
    /// any, is by another.
    #[error("the token is bound to a DPoP key: send a DPoP proof by that key")]
    WrongDpopKey,
    #[error("the mfa_token is invalid, expired or already used; sign in again")]
    InvalidMfaToken,
    #[error("the code is wrong, expired or already used")]
    InvalidCode,
    /// The application requires a second factor and the account has no way to give one.
    #[error("this application requires a second factor and the account has none")]
    NoSecondFactor,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Mfa(#[from] MfaError),
    #[error(transparent)]
    Factor(#[from] FactorError),
    #[error(transparent)]
    Passkey(#[from] PasskeyError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Captcha(#[from] CaptchaError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(SignInError);

/// The answer to a first factor (a password, a magic link): tokens, or a step-up.
// (A social login's answer too; the sentence above is the published schema's.)
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignIn {
    Tokens(Tokens),
    Mfa(Challenge),
}

/// After a first factor (`amr`): the session and its tokens, or, when the user or the
/// application needs a second factor, a step-up (no session yet).
pub async fn after_first_factor(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    amr: Vec<Amr>,
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<SignIn, SignInError> {
    if user.disabled(clock::at(ctx.now)) {
        return Err(SignInError::UserDisabled);
    }
    let client = deps.pool.get().await?;
    let methods = stepup::methods_for(&client, app, user).await?;
    drop(client);
    match methods {
        Some(methods) => Ok(SignIn::Mfa(
            stepup::challenge(deps.pool, app, user, methods, &amr, device, ctx).await?,
        )),
        None => {
            let (_, tokens) = session::start(
                deps,
                app,
                session::Subject::Existing(user),
                device,
                ctx,
                amr,
            )
            .await?;
            Ok(SignIn::Tokens(tokens))
        }
    }
}
