//! An application's roles (API.md §3 `/roles`). A change reaches users' tokens at their
//! next refresh, or at once with `revoke_tokens`.

use serde_json::json;

use super::{AdminError, Deps, publish, revoke_users_in};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::roles::{self, Role, RoleError};
use crate::domain::users::check_roles;

/// A role name, by the rules of the names users hold.
fn role_name(name: &str) -> Result<String, RoleError> {
    let mut names =
        check_roles(&[name.to_owned()]).map_err(|e| RoleError::Invalid(e.to_string()))?;
    Ok(names.remove(0))
}

pub async fn create(
    deps: Deps<'_>,
    app: &App,
    name: &str,
    permissions: &[String],
    ctx: &Ctx,
) -> Result<Role, AdminError> {
    let name = role_name(name)?;
    let permissions = roles::check_permissions(permissions)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let role = roles::create(&tx, app.id, &name, &permissions).await?;
    let details = json!({ "role": name, "permissions": permissions });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.created", details, ctx),
    )
    .await?;
    tx.commit().await?;
    Ok(role)
}

/// Creates or replaces a role's permissions.
pub async fn put(
    deps: Deps<'_>,
    app: &App,
    name: &str,
    permissions: &[String],
    revoke_tokens: bool,
    ctx: &Ctx,
) -> Result<Role, AdminError> {
    let name = role_name(name)?;
    let permissions = roles::check_permissions(permissions)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let role = roles::put(&tx, app.id, &name, &permissions).await?;
    let holders = match revoke_tokens {
        true => roles::holders(&tx, app.id, &name).await?,
        false => Vec::new(),
    };
    let cutoffs = revoke_users_in(&tx, &holders, ctx.now).await?;
    let details =
        json!({ "role": name, "permissions": permissions, "revoked_users": holders.len() });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.updated", details, ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    publish(deps.publisher, &cutoffs).await;
    Ok(role)
}

/// Deletes a role and takes it from every user holding it.
pub async fn delete(
    deps: Deps<'_>,
    app: &App,
    name: &str,
    revoke_tokens: bool,
    ctx: &Ctx,
) -> Result<(), AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let holders = roles::delete_in(&tx, app.id, name)
        .await?
        .ok_or(RoleError::NotFound)?;
    let cutoffs = match revoke_tokens {
        true => revoke_users_in(&tx, &holders, ctx.now).await?,
        false => Vec::new(),
    };
    let details = json!({ "role": name, "holders": holders.len(), "revoked": revoke_tokens });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.deleted", details, ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    publish(deps.publisher, &cutoffs).await;
    Ok(())
}
