//! Flows that reach a user outside the browser (API.md §3): password reset, email
//! verification and magic links, on single-use tokens.
//!
//! A token is 256 random bits, stored as its SHA-256 only, bound to one user and one
//! purpose (every lookup names the purpose, so a reset token never verifies an email), with
//! a short life. A mail is committed in the transaction that made its token, through the
//! outbox, so it is delivered even when SMTP is down at that moment.

use deadpool_postgres::GenericClient;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::messages;
use crate::domain::users::{User, canonical};
use crate::error::ApiError;
use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::outbox;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

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
) -> Result<String, ApiError> {
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
) -> Result<Option<Found>, ApiError> {
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
) -> Result<Option<Found>, ApiError> {
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

/// Retires every unused token of `purpose` the user holds (a password set, a new email).
pub async fn retire_in(
    tx: &impl GenericClient,
    user: Uuid,
    purposes: &[&str],
    now: i64,
) -> Result<(), ApiError> {
    tx.exec(
        "UPDATE one_time_tokens SET used_at = $3
         WHERE user_id = $1 AND purpose = ANY($2) AND used_at IS NULL",
        &[&user, &purposes, &clock::at(now)],
    )
    .await?;
    Ok(())
}

/// Sets the user's password hash (`'!'`: none) and ends what the old password started:
/// reset links mailed before, and sign-ins waiting at their second step.
pub async fn set_password_in(
    tx: &impl GenericClient,
    user: Uuid,
    hash: &str,
    now: i64,
) -> Result<(), ApiError> {
    tx.exec(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[&user, &hash],
    )
    .await?;
    let stale = [Purpose::PasswordReset.as_str(), Purpose::MfaLogin.as_str()];
    retire_in(tx, user, &stale, now).await
}

/// A mail that carries a link with a fresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mailing {
    /// `/password/forgot`.
    PasswordReset,
    /// Registration without a password (`send_reset_email`): a reset token, worded as a
    /// first password.
    SetPassword,
    /// `verify_email` at registration, or `/email/verify/send`.
    EmailVerification,
    /// `/magic-link`, with the checked `redirect_uri` the sign-in returns to.
    MagicLink { redirect_uri: Option<String> },
}

/// Makes the token and queues its mail in the caller's transaction; records the event.
/// The user must have an email address. Call `state.outbox.wake()` after the commit.
pub async fn mail_in(
    tx: &impl GenericClient,
    state: &AppState,
    app: &App,
    user: &User,
    mailing: &Mailing,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let Some(email) = user.email.as_deref() else {
        return Err(ApiError::bad_request("the account has no email address"));
    };
    let (purpose, data, page, event) = match mailing {
        Mailing::PasswordReset | Mailing::SetPassword => (
            Purpose::PasswordReset,
            json!({}),
            "password/reset",
            "password.reset_requested",
        ),
        Mailing::EmailVerification => (
            Purpose::EmailVerification,
            // Bound to the address: a token mailed to an old address confirms nothing new.
            json!({ "email": canonical(email) }),
            "email/verify",
            "email.verification_sent",
        ),
        Mailing::MagicLink { redirect_uri } => (
            Purpose::MagicLink,
            json!({ "redirect_uri": redirect_uri, "email": canonical(email) }),
            "magic-link/verify",
            "magic_link.sent",
        ),
    };
    let token = issue_in(tx, app.id, user.id, purpose, data, ctx.now).await?;
    let link = messages::link(&state.config.public_url, app, page, &token);
    let (kind, message) = match mailing {
        Mailing::PasswordReset => ("password_reset", messages::password_reset(app, &link)),
        Mailing::SetPassword => ("set_password", messages::set_password(app, &link)),
        Mailing::EmailVerification => (
            "email_verification",
            messages::email_verification(app, &link),
        ),
        Mailing::MagicLink { .. } => ("magic_link", messages::magic_link(app, &link)),
    };
    outbox::enqueue(tx, &state.secrets, app.id, kind, email, &message).await?;
    audit::record(
        tx,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            // Asked for by address, with no credential; a verification by the signed-in
            // user (or at their registration).
            actor: match mailing {
                Mailing::PasswordReset | Mailing::MagicLink { .. } => Actor::Anonymous,
                Mailing::SetPassword | Mailing::EmailVerification => Actor::User,
            },
            event,
            details: Value::Null,
            ctx,
        },
    )
    .await
    .map_err(Into::into)
}

/// Confirms the address a verification token was mailed to, if it is still the user's.
/// Returns the user id, or `None` when the token is not usable (or the address changed).
pub async fn verify_email_in(
    tx: &impl GenericClient,
    app: Uuid,
    token: &str,
    ctx: &Ctx,
) -> Result<Option<Uuid>, ApiError> {
    let Some(found) = consume_in(tx, app, Purpose::EmailVerification, token, ctx.now).await? else {
        return Ok(None);
    };
    let email = found
        .data
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("");
    let updated = tx
        .exec(
            "UPDATE users SET email_verified = true WHERE id = $1 AND email_canonical = $2",
            &[&found.user, &email],
        )
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    audit::record(
        tx,
        Event {
            app: Some(app),
            user: Some(found.user),
            actor: Actor::User,
            event: "email.verified",
            details: Value::Null,
            ctx,
        },
    )
    .await?;
    Ok(Some(found.user))
}

/// Deletes one-time tokens a day after they expired.
pub async fn prune(client: &impl GenericClient) -> Result<u64, crate::infra::store::DbError> {
    Ok(client
        .exec(
            "DELETE FROM one_time_tokens WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}
