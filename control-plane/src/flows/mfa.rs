//! Second factors (API.md §3 `/mfa/*`, `/login/mfa`): TOTP (RFC 6238: SHA-1, 6 digits,
//! 30 s, what authenticator apps accept), one-time codes by SMS or email, recovery codes,
//! and the login step-up that asks for one of them.
//!
//! - A TOTP secret is sealed at rest; a code is accepted within ±1 step, once: the factor
//!   remembers the last step it accepted, and an equal or older step is a replay.
//! - SMS and email codes are 6 digits, live 10 minutes, are bound to the request that asked
//!   for them (the step-up's `mfa_token`, or the session of an enrolment), die after 5
//!   wrong tries, and a new one retires the old.
//! - Recovery codes are single use, stored as a keyed MAC.
//! - Every wrong code counts against the account (`rate_limits.mfa_failures_per_hour`), so
//!   a six-digit code cannot be brute-forced by asking for new tokens.

use deadpool_postgres::GenericClient;
use portcullis_common::ErrorCode;
use portcullis_common::token::Amr;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use totp_rs::{Algorithm, TOTP};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::messages;
use crate::domain::one_time::{self, Purpose};
use crate::domain::settings::MfaPolicy;
use crate::domain::users::User;
use crate::error::ApiError;
use crate::infra::clock;
use crate::infra::crypto::{digest, random_digits, recovery_code};
use crate::infra::limits::Scope;
use crate::infra::outbox;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

const TOTP_STEP: u64 = 30;
const CODE_TTL: i64 = 600;
/// Wrong codes a single SMS/email code, or a step-up's `mfa_token`, survives.
const MAX_ATTEMPTS: i32 = 5;
pub const RECOVERY_CODES: usize = 10;

/// A way to pass the second step of a sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Totp,
    RecoveryCode,
    Sms,
    Email,
}

/// A channel for one-time codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
        }
    }

    const fn method(self) -> Method {
        match self {
            Self::Sms => Method::Sms,
            Self::Email => Method::Email,
        }
    }

    /// Where this user's codes of this channel go.
    fn destination(self, user: &User) -> Result<&str, ApiError> {
        match self {
            Self::Sms => user.phone.as_deref(),
            Self::Email => user.email.as_deref(),
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "the account has no {}",
                match self {
                    Self::Sms => "phone number",
                    Self::Email => "email address",
                }
            ))
        })
    }
}

/// A factor as `GET /mfa` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FactorView {
    /// `totp`, `sms` or `email`.
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enabled_at: OffsetDateTime,
}

/// `GET /mfa`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrolled {
    pub factors: Vec<FactorView>,
    pub recovery_codes_left: i64,
    /// The application's policy: `off`, `optional` or `required`.
    pub policy: MfaPolicy,
}

pub async fn enrolled(
    client: &impl GenericClient,
    app: &App,
    user: Uuid,
) -> Result<Enrolled, ApiError> {
    let rows = client
        .q(
            "SELECT kind, confirmed_at FROM mfa_factors
             WHERE user_id = $1 AND confirmed_at IS NOT NULL ORDER BY confirmed_at",
            &[&user],
        )
        .await?;
    let left = client
        .q_one(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
            &[&user],
        )
        .await?;
    Ok(Enrolled {
        factors: rows
            .iter()
            .map(|r| FactorView {
                kind: r.get(0),
                enabled_at: r.get(1),
            })
            .collect(),
        recovery_codes_left: left.get(0),
        policy: app.settings.mfa.policy,
    })
}

/// The second-step methods open to `user`, or `None` when the sign-in needs no second step.
/// Under `required`, a user with no factor gets a code mailed to their address.
pub async fn methods_for(
    client: &impl GenericClient,
    app: &App,
    user: &User,
) -> Result<Option<Vec<Method>>, ApiError> {
    if app.settings.mfa.policy == MfaPolicy::Off || user.guest {
        return Ok(None);
    }
    let e = enrolled(client, app, user.id).await?;
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
    if !methods.is_empty() && e.recovery_codes_left > 0 {
        methods.push(Method::RecoveryCode);
    }
    if methods.is_empty() && app.settings.mfa.policy == MfaPolicy::Required {
        if user.email.is_none() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this application requires a second factor and the account has none",
            ));
        }
        methods.push(Method::Email);
    }
    Ok((!methods.is_empty()).then_some(methods))
}

/// The answer to a first factor when a second is needed (API.md §3 `/login`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Challenge {
    pub mfa_required: bool,
    pub mfa_token: String,
    pub methods: Vec<Method>,
    /// Seconds the `mfa_token` stays usable.
    pub expires_in: i64,
}

/// Opens a step-up for `user` after a first factor (`amr`): a short-lived, single-use
/// `mfa_token` remembering the device and the methods offered.
pub async fn challenge(
    state: &AppState,
    app: &App,
    user: &User,
    methods: Vec<Method>,
    amr: &[Amr],
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<Challenge, ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let data = json!({ "amr": amr, "methods": methods, "device_id": device });
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

/// The answer to a first factor (a password, a magic link): tokens, or a step-up.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignIn {
    Tokens(crate::domain::tokens::Tokens),
    Mfa(Challenge),
}

/// After a first factor (`amr`): the session and its tokens, or, when the user or the
/// application needs a second factor, a step-up (no session yet).
pub async fn after_first_factor(
    state: &AppState,
    app: &App,
    user: &User,
    amr: Vec<Amr>,
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<SignIn, ApiError> {
    if user.disabled(clock::at(ctx.now)) {
        return Err(ApiError::new(
            ErrorCode::UserDisabled,
            "the user is disabled or expired",
        ));
    }
    let client = state.pool.get().await?;
    let methods = methods_for(&client, app, user).await?;
    drop(client);
    match methods {
        Some(methods) => Ok(SignIn::Mfa(
            challenge(state, app, user, methods, &amr, device, ctx).await?,
        )),
        None => {
            let (_, tokens) = crate::domain::sessions::start(
                state,
                app,
                crate::domain::sessions::Subject::Existing(user),
                device,
                ctx,
                amr,
            )
            .await?;
            Ok(SignIn::Tokens(tokens))
        }
    }
}

/// A step-up passed: whom to sign in, on which device, with which `amr`.
#[derive(Debug)]
pub struct Passed {
    pub user: Uuid,
    pub device: Option<String>,
    pub amr: Vec<Amr>,
}

fn invalid_code() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCode,
        "the code is wrong, expired or already used",
    )
}

fn invalid_mfa_token() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidMfaToken,
        "the mfa_token is invalid, expired or already used; sign in again",
    )
}

/// Counts one attempt at a code for `user`; `429` past the hourly limit. A right code is
/// forgiven afterwards (see [`forgive`]).
async fn count_attempt(state: &AppState, app: &App, user: Uuid) -> Result<(), ApiError> {
    let (app_id, user_id) = (app.id.to_string(), user.to_string());
    // Fails closed: without the count a six-digit code could be guessed at leisure.
    state
        .limiter
        .hit_or_refuse(
            Scope::MfaFailures {
                app: &app_id,
                user: &user_id,
            },
            app.settings.rate_limits.mfa_failures_per_hour,
        )
        .await
        .map_err(Into::into)
}

async fn forgive(state: &AppState, app: &App, user: Uuid) {
    let (app_id, user_id) = (app.id.to_string(), user.to_string());
    state
        .limiter
        .forgive(Scope::MfaFailures {
            app: &app_id,
            user: &user_id,
        })
        .await;
}

/// The step-up's token row, if usable; `invalid_mfa_token` otherwise.
async fn step_up(
    client: &impl GenericClient,
    app: &App,
    mfa_token: &str,
    now: i64,
    lock: bool,
) -> Result<one_time::Found, ApiError> {
    match one_time::find(client, app.id, Purpose::MfaLogin, mfa_token, now, lock).await? {
        Some(found) if found.attempts < MAX_ATTEMPTS => Ok(found),
        _ => Err(invalid_mfa_token()),
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

/// `POST /login/mfa`: checks `code` for `method` against the step-up `mfa_token`. A wrong
/// code costs the token one of its attempts; the right one uses it up.
pub async fn complete(
    state: &AppState,
    app: &App,
    mfa_token: &str,
    method: Method,
    code: &str,
    ctx: &Ctx,
) -> Result<Passed, ApiError> {
    let mut client = state.pool.get().await?;
    let found = step_up(&client, app, mfa_token, ctx.now, false).await?;
    if !offered(&found).contains(&method) {
        return Err(ApiError::bad_request(
            "this method is not offered for this sign-in",
        ));
    }
    count_attempt(state, app, found.user).await?;
    let hash = digest(mfa_token);
    let tx = client.transaction().await?;
    // Locked: two concurrent tries with one token are counted one after the other.
    let found = step_up(&tx, app, mfa_token, ctx.now, true).await?;
    let ok = match method {
        Method::Totp => check_totp_in(&tx, state, found.user, code, ctx.now, None).await?,
        Method::RecoveryCode => {
            use_recovery_code_in(&tx, state, found.user, code, ctx.now, None).await?
        }
        Method::Sms => {
            check_otp_in(
                &tx,
                state,
                found.user,
                &hash,
                Some(Channel::Sms),
                code,
                ctx.now,
            )
            .await?
        }
        Method::Email => {
            check_otp_in(
                &tx,
                state,
                found.user,
                &hash,
                Some(Channel::Email),
                code,
                ctx.now,
            )
            .await?
        }
    };
    if !ok {
        tx.exec(
            "UPDATE one_time_tokens SET attempts = attempts + 1 WHERE hash = $1",
            &[&hash],
        )
        .await?;
        record(
            &tx,
            app,
            found.user,
            "login.mfa_failed",
            json!({ "method": method }),
            ctx,
        )
        .await?;
        tx.commit().await?;
        return Err(invalid_code());
    }
    tx.exec(
        "UPDATE one_time_tokens SET used_at = $2 WHERE hash = $1",
        &[&hash, &clock::at(ctx.now)],
    )
    .await?;
    record(
        &tx,
        app,
        found.user,
        "login.mfa_passed",
        json!({ "method": method }),
        ctx,
    )
    .await?;
    tx.commit().await?;
    drop(client);
    forgive(state, app, found.user).await;
    let mut amr: Vec<Amr> = found
        .data
        .get("amr")
        .cloned()
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    if method != Method::RecoveryCode {
        amr.push(Amr::Otp);
    }
    amr.push(Amr::Mfa);
    Ok(Passed {
        user: found.user,
        device: found
            .data
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        amr,
    })
}

async fn record(
    tx: &impl GenericClient,
    app: &App,
    user: Uuid,
    event: &'static str,
    details: Value,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    audit::record(
        tx,
        Event {
            app: Some(app.id),
            user: Some(user),
            actor: Actor::User,
            event,
            details,
            ctx,
        },
    )
    .await
    .map_err(Into::into)
}

fn totp_of(secret: Vec<u8>, issuer: &str, account: &str) -> Result<TOTP, ApiError> {
    // The otpauth label forbids ':' in either part.
    let clean = |s: &str| s.replace(':', " ");
    TOTP::new(
        Algorithm::SHA1,
        6,
        0,
        TOTP_STEP,
        secret,
        Some(clean(issuer)),
        clean(account),
    )
    .map_err(|e| ApiError::internal(&format!("TOTP: {e:?}")))
}

/// The time step a 6-digit `code` matches within ±1 step of `now`, if any.
fn totp_step(totp: &TOTP, code: &str, now: i64) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now.max(0) as u64 / TOTP_STEP;
    (current.saturating_sub(1)..=current + 1)
        .find(|step| {
            bool::from(
                totp.generate(step * TOTP_STEP)
                    .as_bytes()
                    .ct_eq(code.as_bytes()),
            )
        })
        .map(|step| step as i64)
}

/// A TOTP secret opened from its row.
fn open_secret(state: &AppState, id: Uuid, sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
    state
        .secrets
        .open(sealed, id.as_bytes())
        .ok_or_else(|| ApiError::internal(&"a TOTP secret does not open"))
}

/// Checks a TOTP code of the user's confirmed factor and records its step, so the same
/// code (or an older one) is refused from now on.
///
/// With `before`, only a factor confirmed before that time counts (see [`reauthenticate_in`]).
async fn check_totp_in(
    tx: &impl GenericClient,
    state: &AppState,
    user: Uuid,
    code: &str,
    now: i64,
    before: Option<OffsetDateTime>,
) -> Result<bool, ApiError> {
    let row = tx
        .q_opt(
            "SELECT id, secret_enc FROM mfa_factors
             WHERE user_id = $1 AND kind = 'totp' AND confirmed_at IS NOT NULL
               AND ($2::timestamptz IS NULL OR confirmed_at < $2)",
            &[&user, &before],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let id: Uuid = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    let totp = totp_of(open_secret(state, id, &sealed)?, "", "")?;
    let Some(step) = totp_step(&totp, code, now) else {
        return Ok(false);
    };
    accept_step_in(tx, id, step).await
}

/// Records `step` as the factor's last accepted one, unless it is not newer (a replay).
async fn accept_step_in(
    tx: &impl GenericClient,
    factor: Uuid,
    step: i64,
) -> Result<bool, ApiError> {
    let updated = tx
        .exec(
            "UPDATE mfa_factors SET last_step = $2
             WHERE id = $1 AND (last_step IS NULL OR last_step < $2)",
            &[&factor, &step],
        )
        .await?;
    Ok(updated == 1)
}

/// `xxxxx-xxxxx` in any case, with or without the dash or spaces.
fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Uses a recovery code up. With `before`, only a code made before that time counts.
async fn use_recovery_code_in(
    tx: &impl GenericClient,
    state: &AppState,
    user: Uuid,
    code: &str,
    now: i64,
    before: Option<OffsetDateTime>,
) -> Result<bool, ApiError> {
    let code = normalize_recovery(code);
    if code.len() != 10 {
        return Ok(false);
    }
    let used = tx
        .exec(
            "UPDATE recovery_codes SET used_at = $3
             WHERE user_id = $1 AND hash = $2 AND used_at IS NULL
               AND ($4::timestamptz IS NULL OR created_at < $4)",
            &[
                &user,
                &state.secrets.code_mac(user.as_bytes(), &code),
                &clock::at(now),
                &before,
            ],
        )
        .await?;
    Ok(used == 1)
}

/// Replaces the user's recovery codes with ten new ones, returned in clear this once.
async fn new_recovery_codes_in(
    tx: &impl GenericClient,
    state: &AppState,
    user: Uuid,
) -> Result<Vec<String>, ApiError> {
    tx.exec("DELETE FROM recovery_codes WHERE user_id = $1", &[&user])
        .await?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| {
            state
                .secrets
                .code_mac(user.as_bytes(), &normalize_recovery(c))
        })
        .collect();
    tx.exec(
        "INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::bytea[])",
        &[&user, &hashes],
    )
    .await?;
    Ok(codes)
}

/// Checks the newest live code of `channel` (any channel when `None`) bound to `bound_to`.
/// A wrong code costs it an attempt; the right one uses it up.
async fn check_otp_in(
    tx: &impl GenericClient,
    state: &AppState,
    user: Uuid,
    bound_to: &[u8],
    channel: Option<Channel>,
    code: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let row = tx
        .q_opt(
            "SELECT id, hash, attempts FROM otp_codes
             WHERE bound_to = $1 AND user_id = $2 AND ($3::text IS NULL OR channel = $3)
               AND used_at IS NULL AND expires_at > $4
             ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
            &[
                &bound_to,
                &user,
                &channel.map(Channel::as_str),
                &clock::at(now),
            ],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let id: Uuid = row.get(0);
    let hash: Vec<u8> = row.get(1);
    let attempts: i32 = row.get(2);
    let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
    let right = well_formed
        && attempts < MAX_ATTEMPTS
        && bool::from(state.secrets.code_mac(id.as_bytes(), code).ct_eq(&hash));
    if right {
        tx.exec(
            "UPDATE otp_codes SET used_at = $2 WHERE id = $1",
            &[&id, &clock::at(now)],
        )
        .await?;
    } else {
        tx.exec(
            "UPDATE otp_codes SET attempts = attempts + 1 WHERE id = $1",
            &[&id],
        )
        .await?;
    }
    Ok(right)
}

/// Sends a one-time code by `channel` to `user`, bound to `bound_to`. Limited per account
/// and per destination (`rate_limits.messages_per_account_per_hour`); a new code retires
/// the previous one for the same request.
async fn send_code(
    state: &AppState,
    app: &App,
    user: &User,
    channel: Channel,
    bound_to: &[u8],
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let destination = channel.destination(user)?.to_owned();
    let limit = app.settings.rate_limits.messages_per_account_per_hour;
    let (app_id, user_id) = (app.id.to_string(), user.id.to_string());
    for key in [user_id.as_str(), destination.as_str()] {
        state
            .limiter
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
    let id = Uuid::now_v7();
    let code = random_digits(6);
    let message = match channel {
        Channel::Sms => messages::otp_sms(app, &code),
        Channel::Email => messages::otp_email(app, &code),
    };
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    tx.exec(
        "UPDATE otp_codes SET used_at = $3
         WHERE bound_to = $1 AND channel = $2 AND used_at IS NULL",
        &[&bound_to, &channel.as_str(), &clock::at(ctx.now)],
    )
    .await?;
    tx.exec(
        "INSERT INTO otp_codes (id, user_id, channel, bound_to, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &user.id,
            &channel.as_str(),
            &bound_to,
            &state.secrets.code_mac(id.as_bytes(), &code),
            &clock::at(ctx.now),
            &clock::at(ctx.now + CODE_TTL),
        ],
    )
    .await?;
    outbox::enqueue(&tx, &state.secrets, app.id, "otp", &destination, &message).await?;
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
    state.outbox.wake();
    Ok(())
}

/// `POST /mfa/otp/send` during a sign-in: a code for the step-up `mfa_token`, by one of the
/// channels it offers.
pub async fn send_for_step_up(
    state: &AppState,
    app: &App,
    mfa_token: &str,
    channel: Channel,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let client = state.pool.get().await?;
    let found = step_up(&client, app, mfa_token, ctx.now, false).await?;
    if !offered(&found).contains(&channel.method()) {
        return Err(ApiError::bad_request(
            "this channel is not offered for this sign-in",
        ));
    }
    let user = crate::domain::users::find(&client, app.id, found.user)
        .await?
        .ok_or_else(invalid_mfa_token)?;
    drop(client);
    send_code(state, app, &user, channel, &digest(mfa_token), ctx).await
}

/// `POST /mfa/otp/send` by a signed-in user: a code to enrol `channel` (or to prove a
/// second factor before a sensitive change), bound to the session.
pub async fn send_for_session(
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    channel: Channel,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    refuse_when_off(app)?;
    send_code(state, app, user, channel, session.as_bytes(), ctx).await
}

fn refuse_when_off(app: &App) -> Result<(), ApiError> {
    if app.settings.mfa.policy == MfaPolicy::Off {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "multi-factor authentication is turned off for this application",
        ));
    }
    Ok(())
}

/// `POST /mfa/otp/verify`: the session's code enables its channel as a factor. Returns new
/// recovery codes when the user had none.
pub async fn enable_channel(
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    channel: Option<Channel>,
    code: &str,
    ctx: &Ctx,
) -> Result<(Channel, Option<Vec<String>>), ApiError> {
    refuse_when_off(app)?;
    count_attempt(state, app, user.id).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .q_opt(
            "SELECT channel FROM otp_codes
             WHERE bound_to = $1 AND user_id = $2 AND ($3::text IS NULL OR channel = $3)
               AND used_at IS NULL AND expires_at > $4
             ORDER BY created_at DESC LIMIT 1",
            &[
                &session.as_bytes().as_slice(),
                &user.id,
                &channel.map(Channel::as_str),
                &clock::at(ctx.now),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Err(invalid_code());
    };
    let channel = match row.get::<_, &str>(0) {
        "sms" => Channel::Sms,
        _ => Channel::Email,
    };
    if !check_otp_in(
        &tx,
        state,
        user.id,
        session.as_bytes(),
        Some(channel),
        code,
        ctx.now,
    )
    .await?
    {
        tx.commit().await?;
        return Err(invalid_code());
    }
    tx.exec(
        "INSERT INTO mfa_factors (id, user_id, kind, confirmed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, kind) DO UPDATE SET confirmed_at = EXCLUDED.confirmed_at",
        &[
            &Uuid::now_v7(),
            &user.id,
            &channel.as_str(),
            &clock::at(ctx.now),
        ],
    )
    .await?;
    let has_codes = tx
        .q_opt(
            "SELECT 1 FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL LIMIT 1",
            &[&user.id],
        )
        .await?
        .is_some();
    let codes = if has_codes {
        None
    } else {
        Some(new_recovery_codes_in(&tx, state, user.id).await?)
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
    forgive(state, app, user.id).await;
    Ok((channel, codes))
}

/// `POST /mfa/totp/setup`: a new (unconfirmed) secret, replacing any unconfirmed one.
pub async fn totp_setup(
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(String, String), ApiError> {
    refuse_when_off(app)?;
    let id = Uuid::now_v7();
    let secret: [u8; 20] = rand::random();
    let account = user
        .email
        .clone()
        .or_else(|| user.username.clone())
        .unwrap_or_else(|| user.id.to_string());
    let totp = totp_of(secret.to_vec(), &app.name, &account)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    // A stolen access token must not enrol the thief's authenticator.
    recent_or_proof_in(&tx, state, app, user, session, proof, ctx).await?;
    // One statement, so two setups at once cannot collide: an unconfirmed secret is
    // replaced, a confirmed one is left alone (no row back).
    let written = tx
        .exec(
            "INSERT INTO mfa_factors (id, user_id, kind, secret_enc, created_at)
             VALUES ($1, $2, 'totp', $3, $4)
             ON CONFLICT (user_id, kind) DO UPDATE
             SET id = EXCLUDED.id, secret_enc = EXCLUDED.secret_enc,
                 created_at = EXCLUDED.created_at, last_step = NULL
             WHERE mfa_factors.confirmed_at IS NULL",
            &[
                &id,
                &user.id,
                &state.secrets.seal(&secret, id.as_bytes()),
                &clock::at(ctx.now),
            ],
        )
        .await?;
    if written == 0 {
        return Err(ApiError::new(
            ErrorCode::MfaAlreadyEnabled,
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
    state: &AppState,
    app: &App,
    user: &User,
    code: &str,
    ctx: &Ctx,
) -> Result<Vec<String>, ApiError> {
    refuse_when_off(app)?;
    count_attempt(state, app, user.id).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .q_opt(
            "SELECT id, secret_enc, confirmed_at IS NOT NULL FROM mfa_factors
             WHERE user_id = $1 AND kind = 'totp' FOR UPDATE",
            &[&user.id],
        )
        .await?;
    let Some(row) = row else {
        return Err(ApiError::bad_request(
            "no TOTP setup in progress: call /mfa/totp/setup",
        ));
    };
    if row.get::<_, bool>(2) {
        return Err(ApiError::new(
            ErrorCode::MfaAlreadyEnabled,
            "TOTP is already enabled",
        ));
    }
    let id: Uuid = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    let totp = totp_of(open_secret(state, id, &sealed)?, "", "")?;
    let accepted = match totp_step(&totp, code, ctx.now) {
        Some(step) => accept_step_in(&tx, id, step).await?,
        None => false,
    };
    if !accepted {
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
        return Err(invalid_code());
    }
    tx.exec(
        "UPDATE mfa_factors SET confirmed_at = $2 WHERE id = $1",
        &[&id, &clock::at(ctx.now)],
    )
    .await?;
    let codes = new_recovery_codes_in(&tx, state, user.id).await?;
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
    forgive(state, app, user.id).await;
    Ok(codes)
}

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
/// change it guards commits. `401 invalid_credentials` when none was given or the password
/// is wrong, `401 invalid_code` for a wrong code. Counts against the account like any code.
///
/// A second-factor code proves something only if a stolen access token could not have made
/// it: a TOTP factor confirmed, or recovery codes made, before this session began (an SMS or
/// email code goes to the user's own phone or mailbox).
pub async fn reauthenticate_in(
    tx: &impl GenericClient,
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let password = proof
        .password
        .as_deref()
        .or(proof.current_password.as_deref());
    if let Some(password) = password {
        count_attempt(state, app, user.id).await?;
        let hash = (!user.guest).then_some(user.password_hash.as_str());
        if crate::domain::passwords::check_shape(password).is_err()
            || !state.hasher.verify(hash, password).await?
        {
            return Err(ApiError::invalid_credentials());
        }
        forgive(state, app, user.id).await;
        return Ok(());
    }
    let Some(code) = proof.code.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "this change needs the current password (current_password) or a second-factor code (code)",
        ));
    };
    count_attempt(state, app, user.id).await?;
    let began = session_start(tx, session).await?;
    let ok = check_totp_in(tx, state, user.id, code, ctx.now, Some(began)).await?
        || check_otp_in(tx, state, user.id, session.as_bytes(), None, code, ctx.now).await?
        || use_recovery_code_in(tx, state, user.id, code, ctx.now, Some(began)).await?;
    if !ok {
        return Err(invalid_code());
    }
    forgive(state, app, user.id).await;
    Ok(())
}

async fn session_start(tx: &impl GenericClient, session: Uuid) -> Result<OffsetDateTime, ApiError> {
    tx.q_opt("SELECT created_at FROM sessions WHERE id = $1", &[&session])
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| ApiError::unauthenticated(ErrorCode::TokenRevoked))
}

/// A sign-in within [`RECENT_SIGN_IN_SECS`], or else a [`Proof`].
pub async fn recent_or_proof_in(
    tx: &impl GenericClient,
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let began = session_start(tx, session).await?;
    if (clock::at(ctx.now) - began).whole_seconds() <= RECENT_SIGN_IN_SECS {
        return Ok(());
    }
    reauthenticate_in(tx, state, app, user, session, proof, ctx).await
}

/// Removes a factor (`totp`, `sms` or `email`) once `proof` checks out; with no factor
/// left, the recovery codes go too. Nothing is spent when the factor does not exist.
#[allow(clippy::too_many_arguments)]
pub async fn remove(
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    kind: &str,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let exists = tx
        .q_opt(
            "SELECT 1 FROM mfa_factors WHERE user_id = $1 AND kind = $2 AND confirmed_at IS NOT NULL",
            &[&user.id, &kind],
        )
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("factor"));
    }
    reauthenticate_in(&tx, state, app, user, session, proof, ctx).await?;
    tx.exec(
        "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = $2",
        &[&user.id, &kind],
    )
    .await?;
    tx.exec(
        "DELETE FROM recovery_codes WHERE user_id = $1
           AND NOT EXISTS (SELECT 1 FROM mfa_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
        &[&user.id],
    )
    .await?;
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
    state: &AppState,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<Vec<String>, ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    recent_or_proof_in(&tx, state, app, user, session, proof, ctx).await?;
    let enrolled = tx
        .q_opt(
            "SELECT 1 FROM mfa_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL LIMIT 1",
            &[&user.id],
        )
        .await?;
    if enrolled.is_none() {
        return Err(ApiError::bad_request(
            "recovery codes need an enabled second factor",
        ));
    }
    let codes = new_recovery_codes_in(&tx, state, user.id).await?;
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

/// Deletes one-time codes a day after they expired.
pub async fn prune(client: &impl GenericClient) -> Result<u64, crate::infra::store::DbError> {
    Ok(client
        .exec(
            "DELETE FROM otp_codes WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (the 20-byte ASCII secret "12345678901234567890"),
    /// with the eight digits the RFC prints.
    #[test]
    fn rfc6238_appendix_b() {
        let totp = TOTP::new(
            Algorithm::SHA1,
            8,
            0,
            30,
            b"12345678901234567890".to_vec(),
            None,
            String::new(),
        )
        .unwrap();
        for (t, expected) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(totp.generate(t), expected, "T = {t}");
        }
    }

    #[test]
    fn steps_within_one_either_side_only() {
        let totp = totp_of(b"12345678901234567890".to_vec(), "Shop", "ann").unwrap();
        let now = 1_111_111_111;
        let code_at = |t: i64| totp.generate(t as u64);
        assert_eq!(totp_step(&totp, &code_at(now), now), Some(now / 30));
        assert_eq!(
            totp_step(&totp, &code_at(now - 30), now),
            Some(now / 30 - 1)
        );
        assert_eq!(
            totp_step(&totp, &code_at(now + 30), now),
            Some(now / 30 + 1)
        );
        assert_eq!(totp_step(&totp, &code_at(now - 60), now), None);
        assert_eq!(totp_step(&totp, &code_at(now + 60), now), None);
        assert_eq!(totp_step(&totp, "12345", now), None);
        assert_eq!(totp_step(&totp, "abcdef", now), None);
    }

    #[test]
    fn otpauth_uri_is_what_authenticator_apps_read() {
        let totp = totp_of(
            b"12345678901234567890".to_vec(),
            "My:Shop",
            "ann@example.com",
        )
        .unwrap();
        let uri = totp.get_url();
        assert!(
            uri.starts_with("otpauth://totp/My%20Shop:ann%40example.com?secret="),
            "{uri}"
        );
        assert!(uri.contains("issuer=My%20Shop"), "{uri}");
        assert_eq!(totp.get_secret_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn recovery_codes_normalize() {
        assert_eq!(normalize_recovery("ABCDE-fghjk"), "abcdefghjk");
        assert_eq!(normalize_recovery(" abcde fghjk "), "abcdefghjk");
        let code = recovery_code();
        assert_eq!(normalize_recovery(&code).len(), 10);
    }
}
