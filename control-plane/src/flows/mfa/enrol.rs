//! Enrolling and removing second factors, and recovery codes.

use serde_json::{Value, json};
use uuid::Uuid;

use super::proof::{Proof, reauthenticate_in, recent_or_proof_in};
use super::{Deps, MfaError, count_attempt, forgive, record, refuse_when_off, send_code};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::factors::{self, Channel, TotpConfirmation};
use crate::domain::users::User;

/// `POST /mfa/otp/send` by a signed-in user: a code to enrol `channel` (or to prove a
/// second factor before a sensitive change), bound to the session.
pub async fn send_for_session(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    channel: Channel,
    ctx: &Ctx,
) -> Result<(), MfaError> {
    refuse_when_off(app)?;
    send_code(deps, app, user, channel, session.as_bytes(), ctx).await
}

/// `POST /mfa/otp/verify`: the session's code enables its channel as a factor. Returns new
/// recovery codes when the user had none.
pub async fn enable_channel(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    channel: Option<Channel>,
    code: &str,
    ctx: &Ctx,
) -> Result<(Channel, Option<Vec<String>>), MfaError> {
    refuse_when_off(app)?;
    count_attempt(deps.limiter, app, user.id).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let bound_to = session.as_bytes();
    let Some(channel) =
        factors::pending_channel_in(&tx, user.id, bound_to, channel, ctx.now).await?
    else {
        return Err(MfaError::InvalidCode);
    };
    let right = factors::check_otp_in(
        &tx,
        deps.secrets,
        user.id,
        bound_to,
        Some(channel),
        code,
        ctx.now,
    )
    .await?;
    if !right {
        tx.commit().await?;
        return Err(MfaError::InvalidCode);
    }
    factors::confirm_channel_in(&tx, user.id, channel, ctx.now).await?;
    let codes = if factors::has_recovery_codes_in(&tx, user.id).await? {
        None
    } else {
        Some(factors::new_recovery_codes_in(&tx, deps.secrets, user.id).await?)
    };
    record(
        &tx,
        app,
        user.id,
        "mfa.enabled",
        json!({ "factor": channel }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    drop(client);
    forgive(deps.limiter, app, user.id).await;
    Ok((channel, codes))
}

/// `POST /mfa/totp/setup`: a new (unconfirmed) secret, replacing any unconfirmed one.
/// Returns the secret in base32 and its `otpauth://` URI.
pub async fn totp_setup(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(String, String), MfaError> {
    refuse_when_off(app)?;
    let secret: [u8; 20] = rand::random();
    let account = user
        .email
        .clone()
        .or_else(|| user.username.clone())
        .unwrap_or_else(|| user.id.to_string());
    let totp = factors::totp_of(secret.to_vec(), &app.name, &account)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    // A stolen access token must not enrol the thief's authenticator.
    recent_or_proof_in(&tx, deps, app, user, session, proof, ctx).await?;
    if !factors::start_totp_in(&tx, deps.secrets, user.id, &secret, ctx.now).await? {
        return Err(MfaError::AlreadyEnabled(
            "TOTP is already enabled; remove it first",
        ));
    }
    record(
        &tx,
        app,
        user.id,
        "mfa.totp_setup_started",
        Value::Null,
        ctx,
    )
    .await?;
    tx.commit().await?;
    Ok((totp.get_secret_base32(), totp.get_url()))
}

/// `POST /mfa/totp/verify`: the first code confirms the secret; returns ten recovery codes.
pub async fn totp_confirm(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    code: &str,
    ctx: &Ctx,
) -> Result<Vec<String>, MfaError> {
    refuse_when_off(app)?;
    count_attempt(deps.limiter, app, user.id).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    match factors::confirm_totp_in(&tx, deps.secrets, user.id, code, ctx.now).await? {
        TotpConfirmation::Confirmed => {}
        TotpConfirmation::NoSetup => {
            return Err(MfaError::Invalid(
                "no TOTP setup in progress: call /mfa/totp/setup",
            ));
        }
        TotpConfirmation::AlreadyConfirmed => {
            return Err(MfaError::AlreadyEnabled("TOTP is already enabled"));
        }
        TotpConfirmation::Wrong => {
            record(
                &tx,
                app,
                user.id,
                "mfa.totp_confirm_failed",
                Value::Null,
                ctx,
            )
            .await?;
            tx.commit().await?;
            return Err(MfaError::InvalidCode);
        }
    }
    let codes = factors::new_recovery_codes_in(&tx, deps.secrets, user.id).await?;
    record(
        &tx,
        app,
        user.id,
        "mfa.enabled",
        json!({ "factor": "totp" }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    drop(client);
    forgive(deps.limiter, app, user.id).await;
    Ok(codes)
}

/// Removes a factor (`totp`, `sms` or `email`) once `proof` checks out; with no factor
/// left, the recovery codes go too. Nothing is spent when the factor does not exist.
pub async fn remove(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    kind: &str,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), MfaError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    if !factors::has_factor_in(&tx, user.id, Some(kind)).await? {
        return Err(MfaError::NoSuchFactor);
    }
    reauthenticate_in(&tx, deps, app, user, session, proof, ctx).await?;
    factors::remove_in(&tx, user.id, kind).await?;
    record(
        &tx,
        app,
        user.id,
        "mfa.disabled",
        json!({ "factor": kind }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `POST /mfa/recovery-codes`: ten new codes; the old ones stop working.
pub async fn regenerate_recovery_codes(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<Vec<String>, MfaError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    recent_or_proof_in(&tx, deps, app, user, session, proof, ctx).await?;
    if !factors::has_factor_in(&tx, user.id, None).await? {
        return Err(MfaError::Invalid(
            "recovery codes need an enabled second factor",
        ));
    }
    let codes = factors::new_recovery_codes_in(&tx, deps.secrets, user.id).await?;
    record(
        &tx,
        app,
        user.id,
        "mfa.recovery_codes_regenerated",
        Value::Null,
        ctx,
    )
    .await?;
    tx.commit().await?;
    Ok(codes)
}
