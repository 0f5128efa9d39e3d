//! Second factors a signed-in user manages (API.md §3 `/mfa/*`): enrolling TOTP or an SMS
//! or email channel, recovery codes, removing a factor ([`enrol`]), and the proof a
//! sensitive change asks for ([`proof`]). The sign-in step-up that asks for a factor is
//! `flows::signin::stepup`.
//!
//! Every wrong code counts against the account (`rate_limits.mfa_failures_per_hour`), so a
//! six-digit code cannot be brute-forced by asking for new tokens or codes.

pub mod enrol;
pub mod proof;

use deadpool_postgres::Pool;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::factors::{self, Channel, FactorError};
use crate::domain::messages;
use crate::domain::settings::MfaPolicy;
use crate::domain::users::User;
use crate::infra::crypto::{HashError, PasswordHasherPool, Secrets};
use crate::infra::limits::{LimitError, Limiter, Scope};
use crate::infra::outbox::{self, Outbox};
use crate::infra::store::DbError;

pub use self::proof::Proof;

/// What second factors work with.
#[derive(Clone, Copy, Debug)]
pub struct Deps<'a> {
    pub pool: &'a Pool,
    /// TOTP secrets and code MACs.
    pub secrets: &'a Secrets,
    pub limiter: &'a Limiter,
    pub outbox: &'a Outbox,
    /// Passwords given as a proof.
    pub hasher: &'a PasswordHasherPool,
}

/// Why a second-factor change (or a proof) was refused.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error("the code is wrong, expired or already used")]
    InvalidCode,
    #[error("invalid credentials")]
    WrongPassword,
    /// Neither a password nor a code was given where one is needed.
    #[error(
        "this change needs the current password (current_password) or a second-factor code (code)"
    )]
    ProofRequired,
    #[error("multi-factor authentication is turned off for this application")]
    TurnedOff,
    #[error("{0}")]
    AlreadyEnabled(&'static str),
    #[error("factor not found")]
    NoSuchFactor,
    /// The session the proof is made in no longer exists.
    #[error("the session has ended")]
    SessionEnded,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Factor(#[from] FactorError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(MfaError);

/// Counts one attempt at a code for `user`; refused past the hourly limit. A right code is
/// forgiven afterwards (see [`forgive`]). Fails closed: without the count a six-digit code
/// could be guessed at leisure.
pub async fn count_attempt(limiter: &Limiter, app: &App, user: Uuid) -> Result<(), LimitError> {
    let (app_id, user_id) = (app.id.to_string(), user.to_string());
    limiter
        .hit_or_refuse(
            Scope::MfaFailures {
                app: &app_id,
                user: &user_id,
            },
            app.settings.rate_limits.mfa_failures_per_hour,
        )
        .await
}

/// Takes back the attempt of a right code.
pub async fn forgive(limiter: &Limiter, app: &App, user: Uuid) {
    let (app_id, user_id) = (app.id.to_string(), user.to_string());
    limiter
        .forgive(Scope::MfaFailures {
            app: &app_id,
            user: &user_id,
        })
        .await;
}

/// Records a second-factor event of `user`.
pub async fn record(
    tx: &impl deadpool_postgres::GenericClient,
    app: &App,
    user: Uuid,
    event: &'static str,
    details: Value,
    ctx: &Ctx,
) -> Result<(), DbError> {
    audit::record(tx, Event::by_user(app.id, user, event, details, ctx)).await
}

/// Sends a one-time code by `channel` to `user`, bound to `bound_to`. Limited per account
/// and per destination (`rate_limits.messages_per_account_per_hour`); a new code retires
/// the previous one for the same request.
pub async fn send_code(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    channel: Channel,
    bound_to: &[u8],
    ctx: &Ctx,
) -> Result<(), MfaError> {
    let destination = channel.destination(user)?.to_owned();
    let limit = app.settings.rate_limits.messages_per_account_per_hour;
    let (app_id, user_id) = (app.id.to_string(), user.id.to_string());
    for key in [user_id.as_str(), destination.as_str()] {
        deps.limiter
            .hit(
                Scope::Messages {
                    app: &app_id,
                    kind: "codes",
                    destination: key,
                },
                limit,
            )
            .await?;
    }
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let code = factors::new_otp_in(&tx, deps.secrets, user.id, channel, bound_to, ctx.now).await?;
    let message = match channel {
        Channel::Sms => messages::otp_sms(app, &code),
        Channel::Email => messages::otp_email(app, &code),
    };
    outbox::enqueue(&tx, deps.secrets, app.id, "otp", &destination, &message).await?;
    record(
        &tx,
        app,
        user.id,
        "mfa.code_sent",
        json!({ "channel": channel }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    deps.outbox.wake();
    Ok(())
}

/// Refused while the application's MFA policy is `off`.
pub fn refuse_when_off(app: &App) -> Result<(), MfaError> {
    if app.settings.mfa.policy == MfaPolicy::Off {
        return Err(MfaError::TurnedOff);
    }
    Ok(())
}
