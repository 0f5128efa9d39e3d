//! An application's users as its administrator manages them (API.md §3 `/v1/apps/{app}/
//! users`). Deleting one is `flows::account::delete_user`, shared with self-deletion.

use serde_json::{Value, json};

use super::{AdminError, Deps};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::passwords;
use crate::domain::sessions;
use crate::domain::users::{self, Changes, NewUser, User};
use crate::infra::clock;
use crate::infra::crypto::random_token;

/// Creates a user (no session is started). `new` is checked but has no hash yet: it is
/// made from `password`, checked against the policy, or from a random one nobody knows
/// (the user sets theirs through a reset link).
pub async fn create(
    deps: Deps<'_>,
    app: &App,
    mut new: NewUser,
    password: Option<&str>,
    ctx: &Ctx,
) -> Result<User, AdminError> {
    let password = match password {
        Some(p) => {
            let email = new.email.as_deref().unwrap_or("");
            passwords::check_new(p, &app.settings.password_policy, &[email])?;
            p.to_owned()
        }
        None => random_token(32),
    };
    new.password_hash = deps.hasher.hash(&password).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let user = users::insert(&tx, app.id, &new).await?;
    let created = Event::by_admin(app.id, Some(user.id), "user.created", Value::Null, ctx);
    audit::record(&tx, created).await?;
    tx.commit().await?;
    Ok(user)
}

/// Applies `changes` to `user`. Disabling the user (or an expiry in the past) revokes
/// their tokens; so does a role change with `revoke_tokens`. `named` lists the fields the
/// request named, for the audit log (never their values).
pub async fn update(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    changes: &Changes,
    revoke_tokens: bool,
    named: &[&str],
    ctx: &Ctx,
) -> Result<User, AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = users::update(&tx, user.id, changes).await?;
    let now = clock::at(ctx.now);
    let newly_disabled = updated.disabled(now) && !user.disabled(now);
    let revoke = newly_disabled || (revoke_tokens && changes.roles.is_some());
    let cutoff = match revoke {
        true => Some(sessions::revoke_user_in(&tx, user.id, ctx.now).await?),
        false => None,
    };
    let details = json!({ "fields": named, "revoked": revoke });
    audit::record(
        &tx,
        Event::by_admin(app.id, Some(user.id), "user.updated", details, ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(deps.publisher, &[user.id], before).await;
    }
    Ok(updated)
}
