//! The second step of a sign-in: after a first factor, a user with a second factor (or
//! any user, under an application's `required` policy) gets a short-lived, single-use
//! `mfa_token` and the methods open to them, and completes at `/login/mfa` with a code.
//! A wrong code costs the token one of its attempts; the right one uses it up.

use deadpool_postgres::{GenericClient, Pool};
use portcullis_common::token::Amr;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::PublicKeyCredential;

use super::passkey::{check_step_up, step_up_options};
use super::session::{self, Subject};
use super::{Deps, SignInError};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::factors::{self, Channel, MAX_ATTEMPTS, Method};
use crate::domain::one_time::{self, Purpose};
use crate::domain::passkeys;
use crate::domain::settings::MfaPolicy;
use crate::domain::tokens::Tokens;
use crate::domain::users::{self, User};
use crate::flows::mfa::{self, count_attempt, forgive, record};
use crate::infra::crypto::digest;

/// The answer to a first factor when a second is needed (API.md §3 `/login`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Challenge {
    pub mfa_required: bool,
    pub mfa_token: String,
    pub methods: Vec<Method>,
    /// Seconds the `mfa_token` stays usable.
    pub expires_in: i64,
}

/// A step-up passed: whom to sign in, on which device, with which `amr`.
#[derive(Debug)]
pub struct Passed {
    pub user: Uuid,
    pub device: Option<String>,
    pub amr: Vec<Amr>,
}

/// The second-step methods open to `user`, or `None` when the sign-in needs no second step.
/// Under `required`, a user with no factor gets a code mailed to their address.
pub async fn methods_for(
    client: &impl GenericClient,
    app: &App,
    user: &User,
) -> Result<Option<Vec<Method>>, SignInError> {
    if app.settings.mfa.policy == MfaPolicy::Off || user.guest {
        return Ok(None);
    }
    let e = factors::enrolled(client, app.settings.mfa.policy, user.id).await?;
    let mut methods: Vec<Method> = e
        .factors
        .iter()
        .filter_map(|f| match f.kind.as_str() {
            "totp" => Some(Method::Totp),
            "sms" => Some(Method::Sms),
            "email" => Some(Method::Email),
            _ => None,
        })
        .collect();
    if app.settings.passkeys.is_some() && passkeys::count_in(client, user.id).await? > 0 {
        methods.insert(0, Method::Webauthn);
    }
    if !methods.is_empty() && e.recovery_codes_left > 0 {
        methods.push(Method::RecoveryCode);
    }
    if methods.is_empty() && app.settings.mfa.policy == MfaPolicy::Required {
        if user.email.is_none() {
            return Err(SignInError::NoSecondFactor);
        }
        methods.push(Method::Email);
    }
    Ok((!methods.is_empty()).then_some(methods))
}

/// Opens a step-up for `user` after a first factor (`amr`): a short-lived, single-use
/// `mfa_token` remembering the device, the methods offered and the DPoP key the first
/// step proved (only that key may finish it).
pub async fn challenge(
    pool: &Pool,
    app: &App,
    user: &User,
    methods: Vec<Method>,
    amr: &[Amr],
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<Challenge, SignInError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let data = json!({
        "amr": amr,
        "methods": methods,
        "device_id": device,
        "dpop_jkt": ctx.dpop.map(|key| key.text()),
    });
    let token = one_time::issue_in(&tx, app.id, user.id, Purpose::MfaLogin, data, ctx.now).await?;
    record(
        &tx,
        app,
        user.id,
        "login.mfa_required",
        json!({ "methods": methods }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    Ok(Challenge {
        mfa_required: true,
        mfa_token: token,
        methods,
        expires_in: Purpose::MfaLogin.ttl(),
    })
}

/// The step-up's token row, if usable.
async fn step_up(
    client: &impl GenericClient,
    app: &App,
    mfa_token: &str,
    now: i64,
    lock: bool,
) -> Result<one_time::Found, SignInError> {
    match one_time::find(client, app.id, Purpose::MfaLogin, mfa_token, now, lock).await? {
        Some(found) if found.attempts < MAX_ATTEMPTS => Ok(found),
        _ => Err(SignInError::InvalidMfaToken),
    }
}

fn offered(found: &one_time::Found) -> Vec<Method> {
    found
        .data
        .get("methods")
        .cloned()
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default()
}

/// What `/login/mfa` presents for the method: a code, or a passkey's answer.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Code(&'a str),
    Passkey(&'a PublicKeyCredential),
}

/// `POST /login/mfa/webauthn`: the passkey request options of the step-up `mfa_token`
/// (when it offers `webauthn`); a new call replaces the previous challenge.
pub async fn passkey_options(
    deps: Deps<'_>,
    app: &App,
    mfa_token: &str,
    ctx: &Ctx,
) -> Result<Value, SignInError> {
    let client = deps.pool.get().await?;
    let found = step_up(&client, app, mfa_token, ctx.now, false).await?;
    if !offered(&found).contains(&Method::Webauthn) {
        return Err(SignInError::Invalid(
            "a passkey is not offered for this sign-in".into(),
        ));
    }
    step_up_options(&client, app, found.user, &digest(mfa_token), ctx.now).await
}

/// `POST /login/mfa`: checks the answer for `method` against the step-up `mfa_token`.
pub async fn complete(
    deps: Deps<'_>,
    app: &App,
    mfa_token: &str,
    method: Method,
    answer: Answer<'_>,
    ctx: &Ctx,
) -> Result<Passed, SignInError> {
    let mut client = deps.pool.get().await?;
    let found = step_up(&client, app, mfa_token, ctx.now, false).await?;
    // A first step made with a DPoP proof is finished only with a proof by the same key:
    // the mfa_token alone (copied from a log, say) cannot mint tokens bound to another
    // key, or bearer ones. Refused before any attempt is counted.
    if let Some(first) = found.data.get("dpop_jkt").and_then(Value::as_str)
        && ctx.dpop.map(|key| key.text()).as_deref() != Some(first)
    {
        return Err(SignInError::WrongDpopKey);
    }
    if !offered(&found).contains(&method) {
        return Err(SignInError::Invalid(
            "this method is not offered for this sign-in".into(),
        ));
    }
    count_attempt(deps.limiter, app, found.user).await?;
    let hash = digest(mfa_token);
    let tx = client.transaction().await?;
    // Locked: two concurrent tries with one token are counted one after the other.
    let found = step_up(&tx, app, mfa_token, ctx.now, true).await?;
    let (secrets, user, now) = (deps.secrets, found.user, ctx.now);
    let mut key_amr = Vec::new();
    let ok = match (method, answer) {
        (Method::Webauthn, Answer::Passkey(credential)) => {
            match check_step_up(&tx, app, user, &hash, credential, ctx).await? {
                Some(amr) => {
                    key_amr = amr;
                    true
                }
                None => false,
            }
        }
        (Method::Webauthn, Answer::Code(_)) | (_, Answer::Passkey(_)) => {
            return Err(SignInError::Invalid(
                "method webauthn takes a credential; the others a code".into(),
            ));
        }
        (Method::Totp, Answer::Code(code)) => {
            factors::check_totp_in(&tx, secrets, user, code, now, None).await?
        }
        (Method::RecoveryCode, Answer::Code(code)) => {
            factors::use_recovery_code_in(&tx, secrets, user, code, now, None).await?
        }
        (Method::Sms, Answer::Code(code)) => {
            factors::check_otp_in(&tx, secrets, user, &hash, Some(Channel::Sms), code, now).await?
        }
        (Method::Email, Answer::Code(code)) => {
            factors::check_otp_in(&tx, secrets, user, &hash, Some(Channel::Email), code, now)
                .await?
        }
    };
    let event = if ok {
        one_time::use_in(&tx, &hash, now).await?;
        "login.mfa_passed"
    } else {
        one_time::count_attempt_in(&tx, &hash).await?;
        "login.mfa_failed"
    };
    record(&tx, app, user, event, json!({ "method": method }), ctx).await?;
    tx.commit().await?;
    drop(client);
    if !ok {
        return Err(SignInError::InvalidCode);
    }
    forgive(deps.limiter, app, user).await;
    let mut amr: Vec<Amr> = found
        .data
        .get("amr")
        .cloned()
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    match method {
        Method::RecoveryCode => {}
        Method::Webauthn => amr.extend(key_amr.into_iter().filter(|a| *a != Amr::Mfa)),
        _ => amr.push(Amr::Otp),
    }
    amr.push(Amr::Mfa);
    Ok(Passed {
        user,
        device: found
            .data
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        amr,
    })
}

/// `POST /mfa/otp/send` during a sign-in: a code for the step-up `mfa_token`, by one of the
/// channels it offers.
pub async fn send_for_step_up(
    deps: Deps<'_>,
    app: &App,
    mfa_token: &str,
    channel: Channel,
    ctx: &Ctx,
) -> Result<(), SignInError> {
    let client = deps.pool.get().await?;
    let found = step_up(&client, app, mfa_token, ctx.now, false).await?;
    if !offered(&found).contains(&channel.method()) {
        return Err(SignInError::Invalid(
            "this channel is not offered for this sign-in".into(),
        ));
    }
    let user = users::find(&client, app.id, found.user)
        .await?
        .ok_or(SignInError::InvalidMfaToken)?;
    drop(client);
    mfa::send_code(deps.mfa(), app, &user, channel, &digest(mfa_token), ctx).await?;
    Ok(())
}

/// `POST /login/mfa`: the step-up completed with a code, then the session it opens.
pub async fn finish(
    deps: Deps<'_>,
    app: &App,
    mfa_token: &str,
    method: Method,
    answer: Answer<'_>,
    ctx: &Ctx,
) -> Result<Tokens, SignInError> {
    let passed = complete(deps, app, mfa_token, method, answer, ctx).await?;
    let client = deps.pool.get().await?;
    let user = users::find(&client, app.id, passed.user)
        .await?
        .ok_or(SignInError::InvalidCredentials)?;
    drop(client);
    let (_, tokens) = session::start(
        deps,
        app,
        Subject::Existing(&user),
        passed.device.as_deref(),
        ctx,
        passed.amr,
    )
    .await?;
    metrics::counter!("portcullis_logins_total", "outcome" => "ok").increment(1);
    Ok(tokens)
}
