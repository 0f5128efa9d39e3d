//! Second factors and their SQL: TOTP factors (RFC 6238: SHA-1, 6 digits, 30 s, what
//! authenticator apps accept), SMS and email one-time codes, recovery codes.
//!
//! - A TOTP secret is sealed at rest; a code is accepted within ±1 step, once: the factor
//!   remembers the last step it accepted, and an equal or older step is a replay.
//! - SMS and email codes are 6 digits, live 10 minutes, are bound to the request that asked
//!   for them (a step-up's `mfa_token`, or the session of an enrolment), die after
//!   [`MAX_ATTEMPTS`] wrong tries, and a new one retires the old.
//! - Recovery codes are single use, stored as a keyed MAC.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use totp_rs::{Algorithm, TOTP};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::settings::MfaPolicy;
use crate::domain::users::User;
use crate::infra::clock;
use crate::infra::crypto::{Secrets, random_digits, recovery_code};
use crate::infra::store::{DbError, Prepared as _};

const TOTP_STEP: u64 = 30;
/// How long an SMS or email code lives.
pub const CODE_TTL: i64 = 600;
/// Wrong codes a single SMS/email code, or a step-up's `mfa_token`, survives.
pub const MAX_ATTEMPTS: i32 = 5;
pub const RECOVERY_CODES: usize = 10;

/// A second factor's storage went wrong, or it cannot be used for this user.
#[derive(Debug, thiserror::Error)]
pub enum FactorError {
    /// The account has no phone number or email address for this channel.
    #[error("the account has no {0}")]
    NoDestination(&'static str),
    /// A stored secret does not open (the wrong key-encryption key, or a damaged row).
    #[error("{0}")]
    Sealed(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(FactorError);

/// A way to pass the second step of a sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Totp,
    RecoveryCode,
    Sms,
    Email,
    /// A passkey (`/login/mfa/webauthn` gives the options, `credential` the answer).
    Webauthn,
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

    pub const fn method(self) -> Method {
        match self {
            Self::Sms => Method::Sms,
            Self::Email => Method::Email,
        }
    }

    /// Where this user's codes of this channel go.
    pub fn destination(self, user: &User) -> Result<&str, FactorError> {
        match self {
            Self::Sms => user
                .phone
                .as_deref()
                .ok_or(FactorError::NoDestination("phone number")),
            Self::Email => user
                .email
                .as_deref()
                .ok_or(FactorError::NoDestination("email address")),
        }
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

/// The user's confirmed factors and unused recovery codes, under the application's
/// `policy`.
pub async fn enrolled(
    client: &impl GenericClient,
    policy: MfaPolicy,
    user: Uuid,
) -> Result<Enrolled, DbError> {
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
        policy,
    })
}

/// The TOTP generator of `secret`, labelled for authenticator apps.
pub fn totp_of(secret: Vec<u8>, issuer: &str, account: &str) -> Result<TOTP, FactorError> {
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
    .map_err(|_| FactorError::Sealed("a TOTP secret is unusable"))
}

/// The time step a 6-digit `code` matches within ±1 step of `now`, if any.
pub fn totp_step(totp: &TOTP, code: &str, now: i64) -> Option<i64> {
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
fn open_secret(secrets: &Secrets, id: Uuid, sealed: &[u8]) -> Result<Vec<u8>, FactorError> {
    secrets
        .open(sealed, id.as_bytes())
        .ok_or(FactorError::Sealed("a TOTP secret does not open"))
}

/// Checks a TOTP code of the user's confirmed factor and records its step, so the same
/// code (or an older one) is refused from now on. With `before`, only a factor confirmed
/// before that time counts.
pub async fn check_totp_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    code: &str,
    now: i64,
    before: Option<OffsetDateTime>,
) -> Result<bool, FactorError> {
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
    let totp = totp_of(open_secret(secrets, id, &sealed)?, "", "")?;
    let Some(step) = totp_step(&totp, code, now) else {
        return Ok(false);
    };
    Ok(accept_step_in(tx, id, step).await?)
}

/// Records `step` as the factor's last accepted one, unless it is not newer (a replay).
async fn accept_step_in(tx: &impl GenericClient, factor: Uuid, step: i64) -> Result<bool, DbError> {
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
pub fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Uses a recovery code up. With `before`, only a code made before that time counts.
pub async fn use_recovery_code_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    code: &str,
    now: i64,
    before: Option<OffsetDateTime>,
) -> Result<bool, DbError> {
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
                &secrets.code_mac(user.as_bytes(), &code),
                &clock::at(now),
                &before,
            ],
        )
        .await?;
    Ok(used == 1)
}

/// Replaces the user's recovery codes with ten new ones, returned in clear this once.
pub async fn new_recovery_codes_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
) -> Result<Vec<String>, DbError> {
    tx.exec("DELETE FROM recovery_codes WHERE user_id = $1", &[&user])
        .await?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| secrets.code_mac(user.as_bytes(), &normalize_recovery(c)))
        .collect();
    tx.exec(
        "INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::bytea[])",
        &[&user, &hashes],
    )
    .await?;
    Ok(codes)
}

/// Whether the user has an unused recovery code.
pub async fn has_recovery_codes_in(tx: &impl GenericClient, user: Uuid) -> Result<bool, DbError> {
    Ok(tx
        .q_opt(
            "SELECT 1 FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL LIMIT 1",
            &[&user],
        )
        .await?
        .is_some())
}

/// Whether the user has a confirmed factor (of `kind`, when given).
pub async fn has_factor_in(
    tx: &impl GenericClient,
    user: Uuid,
    kind: Option<&str>,
) -> Result<bool, DbError> {
    Ok(tx
        .q_opt(
            "SELECT 1 FROM mfa_factors
             WHERE user_id = $1 AND ($2::text IS NULL OR kind = $2) AND confirmed_at IS NOT NULL
             LIMIT 1",
            &[&user, &kind],
        )
        .await?
        .is_some())
}

/// Checks the newest live code of `channel` (any channel when `None`) bound to `bound_to`.
/// A wrong code costs it an attempt; the right one uses it up.
pub async fn check_otp_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    bound_to: &[u8],
    channel: Option<Channel>,
    code: &str,
    now: i64,
) -> Result<bool, DbError> {
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
        && bool::from(secrets.code_mac(id.as_bytes(), code).ct_eq(&hash));
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

/// The channel of the newest live code bound to `bound_to` (of `channel`, when given).
pub async fn pending_channel_in(
    tx: &impl GenericClient,
    user: Uuid,
    bound_to: &[u8],
    channel: Option<Channel>,
    now: i64,
) -> Result<Option<Channel>, DbError> {
    let row = tx
        .q_opt(
            "SELECT channel FROM otp_codes
             WHERE bound_to = $1 AND user_id = $2 AND ($3::text IS NULL OR channel = $3)
               AND used_at IS NULL AND expires_at > $4
             ORDER BY created_at DESC LIMIT 1",
            &[
                &bound_to,
                &user,
                &channel.map(Channel::as_str),
                &clock::at(now),
            ],
        )
        .await?;
    Ok(row.map(|r| match r.get::<_, &str>(0) {
        "sms" => Channel::Sms,
        _ => Channel::Email,
    }))
}

/// A new code of `channel` for `user`, bound to `bound_to`; the previous one for the same
/// request is retired. Returns the code in clear (for its message).
pub async fn new_otp_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    channel: Channel,
    bound_to: &[u8],
    now: i64,
) -> Result<String, DbError> {
    let id = Uuid::now_v7();
    let code = random_digits(6);
    tx.exec(
        "UPDATE otp_codes SET used_at = $3
         WHERE bound_to = $1 AND channel = $2 AND used_at IS NULL",
        &[&bound_to, &channel.as_str(), &clock::at(now)],
    )
    .await?;
    tx.exec(
        "INSERT INTO otp_codes (id, user_id, channel, bound_to, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &user,
            &channel.as_str(),
            &bound_to,
            &secrets.code_mac(id.as_bytes(), &code),
            &clock::at(now),
            &clock::at(now + CODE_TTL),
        ],
    )
    .await?;
    Ok(code)
}

/// Makes `channel` a confirmed factor of `user`.
pub async fn confirm_channel_in(
    tx: &impl GenericClient,
    user: Uuid,
    channel: Channel,
    now: i64,
) -> Result<(), DbError> {
    tx.exec(
        "INSERT INTO mfa_factors (id, user_id, kind, confirmed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, kind) DO UPDATE SET confirmed_at = EXCLUDED.confirmed_at",
        &[&Uuid::now_v7(), &user, &channel.as_str(), &clock::at(now)],
    )
    .await?;
    Ok(())
}

/// A new, unconfirmed TOTP secret for `user`, replacing an unconfirmed one, in one
/// statement (two setups at once cannot collide). `false` when a confirmed factor exists
/// (it is left alone).
pub async fn start_totp_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    secret: &[u8],
    now: i64,
) -> Result<bool, DbError> {
    let id = Uuid::now_v7();
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
                &user,
                &secrets.seal(secret, id.as_bytes()),
                &clock::at(now),
            ],
        )
        .await?;
    Ok(written == 1)
}

/// The user's TOTP factor, locked: whether it is confirmed already, or whether `code`
/// confirms it (its step then recorded).
#[derive(Debug, PartialEq, Eq)]
pub enum TotpConfirmation {
    NoSetup,
    AlreadyConfirmed,
    Wrong,
    Confirmed,
}

/// Confirms the user's pending TOTP secret with its first `code`.
pub async fn confirm_totp_in(
    tx: &impl GenericClient,
    secrets: &Secrets,
    user: Uuid,
    code: &str,
    now: i64,
) -> Result<TotpConfirmation, FactorError> {
    let row = tx
        .q_opt(
            "SELECT id, secret_enc, confirmed_at IS NOT NULL FROM mfa_factors
             WHERE user_id = $1 AND kind = 'totp' FOR UPDATE",
            &[&user],
        )
        .await?;
    let Some(row) = row else {
        return Ok(TotpConfirmation::NoSetup);
    };
    if row.get::<_, bool>(2) {
        return Ok(TotpConfirmation::AlreadyConfirmed);
    }
    let id: Uuid = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    let totp = totp_of(open_secret(secrets, id, &sealed)?, "", "")?;
    let accepted = match totp_step(&totp, code, now) {
        Some(step) => accept_step_in(tx, id, step).await?,
        None => false,
    };
    if !accepted {
        return Ok(TotpConfirmation::Wrong);
    }
    tx.exec(
        "UPDATE mfa_factors SET confirmed_at = $2 WHERE id = $1",
        &[&id, &clock::at(now)],
    )
    .await?;
    Ok(TotpConfirmation::Confirmed)
}

/// Removes the factor `kind`; with no factor left, the recovery codes go too.
pub async fn remove_in(tx: &impl GenericClient, user: Uuid, kind: &str) -> Result<(), DbError> {
    tx.exec(
        "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = $2",
        &[&user, &kind],
    )
    .await?;
    tx.exec(
        "DELETE FROM recovery_codes WHERE user_id = $1
           AND NOT EXISTS (SELECT 1 FROM mfa_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
        &[&user],
    )
    .await?;
    Ok(())
}

/// Drops the factors of `kinds` (their channel changed); recovery codes stay.
pub async fn drop_in(tx: &impl GenericClient, user: Uuid, kinds: &[&str]) -> Result<(), DbError> {
    tx.exec(
        "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = ANY($2)",
        &[&user, &kinds],
    )
    .await?;
    Ok(())
}

/// Removes every factor and recovery code of the user (an account recovered by email).
pub async fn remove_all_in(tx: &impl GenericClient, user: Uuid) -> Result<(), DbError> {
    tx.exec("DELETE FROM mfa_factors WHERE user_id = $1", &[&user])
        .await?;
    tx.exec("DELETE FROM recovery_codes WHERE user_id = $1", &[&user])
        .await?;
    Ok(())
}

/// Deletes one-time codes a day after they expired.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM otp_codes WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}

#[cfg(test)]
mod tests;
