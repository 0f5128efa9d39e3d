//! What a user presents to prove it is them before a sensitive change (enrolling a factor,
//! new recovery codes, a new password or email, linking an identity): the password, or a
//! second-factor code, or, for some changes, a sign-in recent enough.

use deadpool_postgres::GenericClient;
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Deps, MfaError, count_attempt, forgive};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::factors;
use crate::domain::passwords;
use crate::domain::sessions;
use crate::domain::users::User;
use crate::infra::clock;

/// What a user presents to prove it is them before a sensitive change: the password, or a
/// second-factor code (TOTP, a recovery code, or an SMS/email code sent to this session).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Proof {
    pub password: Option<String>,
    pub current_password: Option<String>,
    pub code: Option<String>,
}

/// How recent a sign-in must be for the session to enrol a factor or make recovery codes
/// without presenting a [`Proof`] (a "sudo" window, as GitHub's).
const RECENT_SIGN_IN_SECS: i64 = 15 * 60;

/// Checks a [`Proof`] in the caller's transaction, so a code it uses up is spent only if the
/// change it guards commits. Counts against the account like any code.
///
/// A second-factor code proves something only if a stolen access token could not have made
/// it: a TOTP factor confirmed, or recovery codes made, before this session began (an SMS or
/// email code goes to the user's own phone or mailbox).
pub async fn reauthenticate_in(
    tx: &impl GenericClient,
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), MfaError> {
    let password = proof
        .password
        .as_deref()
        .or(proof.current_password.as_deref());
    if let Some(password) = password {
        count_attempt(deps.limiter, app, user.id).await?;
        let hash = (!user.guest).then_some(user.password_hash.as_str());
        if passwords::check_shape(password).is_err() || !deps.hasher.verify(hash, password).await? {
            return Err(MfaError::WrongPassword);
        }
        forgive(deps.limiter, app, user.id).await;
        return Ok(());
    }
    let Some(code) = proof.code.as_deref() else {
        return Err(MfaError::ProofRequired);
    };
    count_attempt(deps.limiter, app, user.id).await?;
    let began = session_start(tx, session).await?;
    let secrets = deps.secrets;
    let ok = factors::check_totp_in(tx, secrets, user.id, code, ctx.now, Some(began)).await?
        || factors::check_otp_in(
            tx,
            secrets,
            user.id,
            session.as_bytes(),
            None,
            code,
            ctx.now,
        )
        .await?
        || factors::use_recovery_code_in(tx, secrets, user.id, code, ctx.now, Some(began)).await?;
    if !ok {
        return Err(MfaError::InvalidCode);
    }
    forgive(deps.limiter, app, user.id).await;
    Ok(())
}

async fn session_start(tx: &impl GenericClient, session: Uuid) -> Result<OffsetDateTime, MfaError> {
    sessions::started_at(tx, session)
        .await?
        .ok_or(MfaError::SessionEnded)
}

/// A sign-in within [`RECENT_SIGN_IN_SECS`], or else a [`Proof`].
pub async fn recent_or_proof_in(
    tx: &impl GenericClient,
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), MfaError> {
    let began = session_start(tx, session).await?;
    if (clock::at(ctx.now) - began).whole_seconds() <= RECENT_SIGN_IN_SECS {
        return Ok(());
    }
    reauthenticate_in(tx, deps, app, user, session, proof, ctx).await
}
