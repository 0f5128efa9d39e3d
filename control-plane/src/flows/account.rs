//! What a signed-in user changes about their own account (API.md §3 `/me`, `/password/
//! change`), and deleting a user (by themselves or an administrator).

use deadpool_postgres::Pool;
use serde_json::json;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::factors;
use crate::domain::one_time::{self, Purpose};
use crate::domain::passwords::{self, PasswordError};
use crate::domain::sessions::{self, Which};
use crate::domain::users::{self, Changes, User, UserError};
use crate::flows::mfa::{self, MfaError, Proof};
use crate::infra::crypto::HashError;
use crate::infra::limits::{LimitError, Scope};
use crate::infra::publish::Publisher;
use crate::infra::store::DbError;

/// Why a change to one's account was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The current password given with a password change is wrong.
    #[error("invalid credentials")]
    WrongPassword,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Mfa(#[from] MfaError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(AccountError);

/// A new username, email or phone. A new email or phone needs a proof (the current
/// password or a second-factor code: they are where recovery and codes go); it is
/// unverified, the SMS or email factor bound to the old one is removed, and links mailed
/// to an old address open nothing any more.
pub async fn change_profile(
    deps: mfa::Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    changes: &Changes,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<User, AccountError> {
    let email_changes = changes
        .email
        .as_deref()
        .is_some_and(|e| user.email.as_deref().map(users::canonical) != Some(users::canonical(e)));
    let phone_changes = changes.phone.is_some() && changes.phone != user.phone;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    // A guest has no credential to present; anyone else proves it is them. In the same
    // transaction: a code is spent only if the change commits.
    if (email_changes || phone_changes) && !user.guest {
        mfa::proof::reauthenticate_in(&tx, deps, app, user, session, proof, ctx).await?;
    }
    let updated = users::update(&tx, user.id, changes).await?;
    let mut gone = Vec::new();
    if email_changes {
        gone.push("email");
    }
    if phone_changes {
        gone.push("sms");
    }
    if !gone.is_empty() {
        factors::drop_in(&tx, user.id, &gone).await?;
        if email_changes {
            let mailed = [
                Purpose::PasswordReset.as_str(),
                Purpose::MagicLink.as_str(),
                Purpose::EmailVerification.as_str(),
            ];
            one_time::retire_in(&tx, user.id, &mailed, ctx.now).await?;
        }
        audit::record(
            &tx,
            Event::by_user(
                app.id,
                user.id,
                "user.contact_changed",
                json!({ "email": email_changes, "phone": phone_changes }),
                ctx,
            ),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(updated)
}

/// A password change: the current one checked (each attempt counted against the account,
/// so a stolen access token does not buy unlimited guesses), the new one set; with
/// `kill_sessions`, every other session is revoked. Returns the sessions revoked.
#[allow(clippy::too_many_arguments)]
pub async fn change_password(
    deps: mfa::Deps<'_>,
    publisher: &Publisher,
    app: &App,
    user: &User,
    session: Uuid,
    current: &str,
    new: &str,
    kill_sessions: bool,
    ctx: &Ctx,
) -> Result<usize, AccountError> {
    passwords::check_shape(current).map_err(|_| AccountError::WrongPassword)?;
    passwords::check_new(
        new,
        &app.settings.password_policy,
        &[
            user.email.as_deref().unwrap_or(""),
            user.username.as_deref().unwrap_or(""),
        ],
    )?;
    let (app_id, account) = (app.id.to_string(), format!("password-change:{}", user.id));
    let failures = Scope::AccountFailures {
        app: &app_id,
        account: &account,
    };
    deps.limiter
        .hit(
            failures,
            app.settings.rate_limits.per_account_failures_per_hour,
        )
        .await?;
    let hash = (!user.guest).then_some(user.password_hash.as_str());
    if !deps.hasher.verify(hash, current).await? {
        return Err(AccountError::WrongPassword);
    }
    deps.limiter.forgive(failures).await;
    let new_hash = deps.hasher.hash(new).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    users::set_password_in(&tx, user.id, &new_hash, ctx.now).await?;
    audit::record(
        &tx,
        Event::by_user(
            app.id,
            user.id,
            "password.changed",
            json!({ "kill_sessions": kill_sessions }),
            ctx,
        ),
    )
    .await?;
    let killed = if kill_sessions {
        let others = Which::AllOfUser {
            user: user.id,
            except: Some(session),
        };
        sessions::revoke_in(&tx, &others, ctx.now).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    drop(client);
    sessions::publish_sessions(publisher, &killed).await;
    Ok(killed.len())
}

/// Revokes every token of `user`, then deletes it (sessions cascade), recorded as done by
/// `actor`.
pub async fn delete_user(
    pool: &Pool,
    publisher: &Publisher,
    user: &User,
    actor: Actor,
    ctx: &Ctx,
) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let before = sessions::revoke_user_in(&tx, user.id, ctx.now).await?;
    users::delete_in(&tx, user.id).await?;
    let deleted = Event {
        app: Some(user.app_id),
        user: Some(user.id),
        actor,
        event: "user.deleted",
        details: serde_json::Value::Null,
        ctx,
    };
    audit::record(&tx, deleted).await?;
    tx.commit().await?;
    drop(client);
    sessions::publish_users(publisher, &[user.id], before).await;
    Ok(())
}
