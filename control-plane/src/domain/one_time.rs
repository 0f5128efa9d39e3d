//! Single-use, purpose-bound tokens (`one_time_tokens`): password reset, email
//! verification, magic links, the sign-in step-up's `mfa_token`, a social-login link.
//!
//! A token is 256 random bits, stored as its SHA-256 only, bound to one user and one
//! purpose (every lookup names the purpose, so a reset token never verifies an email), with
//! a short life. Using one is a single `UPDATE … WHERE used_at IS NULL`: one caller wins.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::{DbError, Prepared as _};

/// What a single-use token is for. Its lifetime comes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    PasswordReset,
    EmailVerification,
    MagicLink,
    /// The second step of a sign-in (`mfa_token`).
    MfaLogin,
    /// Opens the social-login authorize route to link a provider to a signed-in user.
    OauthLink,
}

impl Purpose {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::EmailVerification => "email_verification",
            Self::MagicLink => "magic_link",
            Self::MfaLogin => "mfa_login",
            Self::OauthLink => "oauth_link",
        }
    }

    /// Seconds a token of this purpose stays usable.
    pub const fn ttl(self) -> i64 {
        match self {
            Self::PasswordReset => 30 * 60,
            Self::EmailVerification => 24 * 3600,
            Self::MagicLink => 15 * 60,
            Self::MfaLogin => 5 * 60,
            Self::OauthLink => 2 * 60,
        }
    }
}

/// Longest token accepted before any lookup (ours are 43 characters).
const MAX_TOKEN_LEN: usize = 256;

/// A token's row, once found usable.
#[derive(Debug)]
pub struct Found {
    pub user: Uuid,
    pub data: Value,
    pub expires_at: OffsetDateTime,
    pub attempts: i32,
}

/// Creates a token for `user` and returns it (the only time it exists in clear).
pub async fn issue_in(
    tx: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    purpose: Purpose,
    data: Value,
    now: i64,
) -> Result<String, DbError> {
    let token = random_token(32);
    tx.exec(
        "INSERT INTO one_time_tokens (hash, purpose, user_id, app_id, data, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &digest(&token),
            &purpose.as_str(),
            &user,
            &app,
            &data,
            &clock::at(now),
            &clock::at(now + purpose.ttl()),
        ],
    )
    .await?;
    Ok(token)
}

/// The token's row if it is usable now (unused, unexpired, of this purpose and application),
/// without using it. `lock` takes the row until the transaction ends.
pub async fn find(
    client: &impl GenericClient,
    app: Uuid,
    purpose: Purpose,
    token: &str,
    now: i64,
    lock: bool,
) -> Result<Option<Found>, DbError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let sql = if lock {
        "SELECT user_id, data, expires_at, attempts FROM one_time_tokens
         WHERE hash = $1 AND purpose = $2 AND app_id = $3 AND used_at IS NULL AND expires_at > $4
         FOR UPDATE"
    } else {
        "SELECT user_id, data, expires_at, attempts FROM one_time_tokens
         WHERE hash = $1 AND purpose = $2 AND app_id = $3 AND used_at IS NULL AND expires_at > $4"
    };
    let row = client
        .q_opt(
            sql,
            &[&digest(token), &purpose.as_str(), &app, &clock::at(now)],
        )
        .await?;
    Ok(row.map(|r| Found {
        user: r.get(0),
        data: r.get(1),
        expires_at: r.get(2),
        attempts: r.get(3),
    }))
}

/// Uses the token up (exactly one caller wins) and returns its row; `None` if it was not
/// usable.
pub async fn consume_in(
    tx: &impl GenericClient,
    app: Uuid,
    purpose: Purpose,
    token: &str,
    now: i64,
) -> Result<Option<Found>, DbError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let row = tx
        .q_opt(
            "UPDATE one_time_tokens SET used_at = $4
             WHERE hash = $1 AND purpose = $2 AND app_id = $3 AND used_at IS NULL AND expires_at > $4
             RETURNING user_id, data, expires_at, attempts",
            &[&digest(token), &purpose.as_str(), &app, &clock::at(now)],
        )
        .await?;
    Ok(row.map(|r| Found {
        user: r.get(0),
        data: r.get(1),
        expires_at: r.get(2),
        attempts: r.get(3),
    }))
}

/// Uses up the token whose digest is `hash` (the caller holds its row locked).
pub async fn use_in(tx: &impl GenericClient, hash: &[u8], now: i64) -> Result<(), DbError> {
    tx.exec(
        "UPDATE one_time_tokens SET used_at = $2 WHERE hash = $1",
        &[&hash, &clock::at(now)],
    )
    .await?;
    Ok(())
}

/// Counts a wrong attempt against the token whose digest is `hash`.
pub async fn count_attempt_in(tx: &impl GenericClient, hash: &[u8]) -> Result<(), DbError> {
    tx.exec(
        "UPDATE one_time_tokens SET attempts = attempts + 1 WHERE hash = $1",
        &[&hash],
    )
    .await?;
    Ok(())
}

/// Retires every unused token of `purpose` the user holds (a password set, a new email).
pub async fn retire_in(
    tx: &impl GenericClient,
    user: Uuid,
    purposes: &[&str],
    now: i64,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE one_time_tokens SET used_at = $3
         WHERE user_id = $1 AND purpose = ANY($2) AND used_at IS NULL",
        &[&user, &purposes, &clock::at(now)],
    )
    .await?;
    Ok(())
}

/// Deletes one-time tokens a day after they expired.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM one_time_tokens WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}
