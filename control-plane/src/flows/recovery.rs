//! Flows that reach a user outside the browser (API.md §3): password reset, email
//! verification and magic links, on single-use tokens (`domain::one_time`) mailed through
//! the outbox (`domain::mailings`).
//!
//! A mail asked for by address ([`recipient`], then [`send`]) is counted against the
//! address whether or not an account has it, and the answer never says which: the
//! caller sends in a task of its own, so neither the answer nor its timing tells.

use portcullis_common::token::Amr;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::identities;
use crate::domain::mailings::{self, MailError, Mailing};
use crate::domain::one_time::{self, Purpose};
use crate::domain::passwords::{self, PasswordError};
use crate::domain::sessions;
use crate::domain::users::{self, User, UserError, canonical, check_email};
use crate::flows::signin::{self, Deps, SignIn, SignInError};
use crate::infra::clock;
use crate::infra::crypto::HashError;
use crate::infra::limits::{LimitError, Scope};
use crate::infra::store::DbError;

/// Why a recovery step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The token is unknown, expired, used, or no longer matches its user.
    #[error("the link has expired or was already used")]
    ExpiredOrUsed,
    #[error("redirect_uri is not one of the application's allowed_redirect_uris")]
    RedirectNotAllowed,
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    SignIn(#[from] SignInError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(RecoveryError);

/// Counts one message to `address` (known or not, so the limit itself tells nothing).
async fn count_message(deps: Deps<'_>, app: &App, address: &str) -> Result<(), LimitError> {
    let app_id = app.id.to_string();
    deps.limiter
        .hit(
            Scope::Messages {
                app: &app_id,
                kind: "links",
                destination: address,
            },
            app.settings.rate_limits.messages_per_account_per_hour,
        )
        .await
}

/// Checks and counts a mail asked for by `email`; returns the user it may go to (known,
/// enabled, not a guest, with this address), if any. Pass that user to [`send`].
pub async fn recipient(
    deps: Deps<'_>,
    app: &App,
    email: &str,
    ctx: &Ctx,
) -> Result<Option<User>, RecoveryError> {
    let email = check_email(email)?;
    count_message(deps, app, &canonical(&email)).await?;
    let client = deps.pool.get().await?;
    let user = users::find_by_login(&client, app.id, &email).await?;
    Ok(user.filter(|u| !u.guest && !u.disabled(clock::at(ctx.now)) && u.email.is_some()))
}

/// The `redirect_uri` of a magic link, if it is one of the application's.
pub fn magic_redirect(app: &App, uri: Option<String>) -> Result<Option<String>, RecoveryError> {
    match uri {
        Some(uri) if app.settings.redirect_allowed(&uri) => Ok(Some(uri)),
        Some(_) => Err(RecoveryError::RedirectNotAllowed),
        None => Ok(None),
    }
}

/// Makes the token and queues the mail, and wakes the outbox.
pub async fn send(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    mailing: &Mailing,
    ctx: &Ctx,
) -> Result<(), RecoveryError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    mailings::mail_in(&tx, &deps.links, app, user, mailing, ctx).await?;
    tx.commit().await?;
    deps.outbox.wake();
    Ok(())
}

/// Mails the signed-in `user` a link confirming their address.
pub async fn send_verification(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    ctx: &Ctx,
) -> Result<(), RecoveryError> {
    let email = user.email.as_deref().ok_or(MailError::NoAddress)?;
    count_message(deps, app, &canonical(email)).await?;
    send(deps, app, user, &Mailing::EmailVerification, ctx).await
}

/// When the reset token expires, if it is usable (asking does not use it up).
pub async fn reset_expiry(
    deps: Deps<'_>,
    app: &App,
    token: &str,
    now: i64,
) -> Result<OffsetDateTime, RecoveryError> {
    let client = deps.pool.get().await?;
    let found = one_time::find(&client, app.id, Purpose::PasswordReset, token, now, false).await?;
    Ok(found.ok_or(RecoveryError::ExpiredOrUsed)?.expires_at)
}

/// Sets a new password with a reset token: the token is used up and every session of the
/// user revoked (their access tokens too).
pub async fn reset_password(
    deps: Deps<'_>,
    app: &App,
    token: &str,
    new_password: &str,
    ctx: &Ctx,
) -> Result<(), RecoveryError> {
    let client = deps.pool.get().await?;
    let found = one_time::find(
        &client,
        app.id,
        Purpose::PasswordReset,
        token,
        ctx.now,
        false,
    )
    .await?
    .ok_or(RecoveryError::ExpiredOrUsed)?;
    let user = users::find(&client, app.id, found.user)
        .await?
        .ok_or(RecoveryError::ExpiredOrUsed)?;
    drop(client);
    // Checked before the token is used, so a weak password can be corrected with it.
    passwords::check_new(
        new_password,
        &app.settings.password_policy,
        &[
            user.email.as_deref().unwrap_or(""),
            user.username.as_deref().unwrap_or(""),
        ],
    )?;
    let hash = deps.hasher.hash(new_password).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    one_time::consume_in(&tx, app.id, Purpose::PasswordReset, token, ctx.now)
        .await?
        .ok_or(RecoveryError::ExpiredOrUsed)?;
    let before = sessions::revoke_user_in(&tx, user.id, ctx.now).await?;
    users::set_password_in(&tx, user.id, &hash, ctx.now).await?;
    audit::record(
        &tx,
        Event::by_user(app.id, user.id, "password.reset", Value::Null, ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    sessions::publish_users(deps.publisher, &[user.id], before).await;
    Ok(())
}

/// Confirms the address a verification token was mailed to, if it is still the user's.
pub async fn verify_email(
    deps: Deps<'_>,
    app: &App,
    token: &str,
    ctx: &Ctx,
) -> Result<(), RecoveryError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let found = one_time::consume_in(&tx, app.id, Purpose::EmailVerification, token, ctx.now)
        .await?
        .ok_or(RecoveryError::ExpiredOrUsed)?;
    let mailed_to = found
        .data
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("");
    // The address changed since: the token confirms nothing.
    if !users::mark_verified_in(&tx, found.user, Some(mailed_to)).await? {
        return Err(RecoveryError::ExpiredOrUsed);
    }
    audit::record(
        &tx,
        Event::by_user(app.id, found.user, "email.verified", Value::Null, ctx),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Uses the magic-link token and signs its user in (`amr: ["magic"]`), or starts a
/// step-up. Returns the link's `redirect_uri` if the application still allows it.
pub async fn magic_sign_in(
    deps: Deps<'_>,
    app: &App,
    token: &str,
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<(SignIn, Option<String>), RecoveryError> {
    let device = users::check_device(device)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let found = one_time::consume_in(&tx, app.id, Purpose::MagicLink, token, ctx.now)
        .await?
        .ok_or(RecoveryError::ExpiredOrUsed)?;
    let user = users::find(&tx, app.id, found.user)
        .await?
        .ok_or(RecoveryError::ExpiredOrUsed)?;
    // Bound to the address it was mailed to: after an email change it signs no one in.
    let mailed_to = found.data.get("email").and_then(Value::as_str);
    if user.email.as_deref().map(canonical).as_deref() != mailed_to {
        return Err(RecoveryError::ExpiredOrUsed);
    }
    if user.disabled(clock::at(ctx.now)) {
        return Err(SignInError::UserDisabled.into());
    }
    // The link reached the mailbox: the address is the user's. If it was never proven
    // before, whoever registered it may not be its owner (an account made in advance to
    // hijack it later): the mailbox's owner claims it, and the password, the sessions and
    // the provider identities set up before are dropped. Second factors stay: mailbox
    // access alone never removes one (at worst they lock the claimant out; they let no
    // one else in).
    let claimed = !user.email_verified;
    let mut cutoff = None;
    if claimed {
        cutoff = Some(sessions::revoke_user_in(&tx, user.id, ctx.now).await?);
        users::set_password_in(&tx, user.id, "!", ctx.now).await?;
        identities::unlink_all_in(&tx, user.id).await?;
    }
    users::mark_verified_in(&tx, user.id, None).await?;
    audit::record(
        &tx,
        Event::by_user(
            app.id,
            user.id,
            "login.magic_link",
            json!({ "first_proof_of_address": claimed }),
            ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(deps.publisher, &[user.id], before).await;
    }
    // Re-checked: the allowlist may have lost the URI since the link was mailed.
    let redirect = found
        .data
        .get("redirect_uri")
        .and_then(Value::as_str)
        .filter(|uri| app.settings.redirect_allowed(uri))
        .map(str::to_owned);
    let signed_in =
        signin::after_first_factor(deps, app, &user, vec![Amr::Magic], device.as_deref(), ctx)
            .await?;
    Ok((signed_in, redirect))
}
