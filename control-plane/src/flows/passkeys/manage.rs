//! A user's passkeys listed, renamed and deleted, by the user or by an administrator.
//! Deleting never leaves an account with no way in (no password, no linked identity, no
//! other passkey), and does not end sessions: ending them is a separate, explicit call.

use serde_json::json;
use uuid::Uuid;

use super::PasskeyError;
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::identities;
use crate::domain::passkeys::{self, PasskeyView};
use crate::domain::users;
use crate::flows::mfa::Deps;

/// The user's passkeys, oldest first.
pub async fn list(deps: Deps<'_>, user: Uuid) -> Result<Vec<PasskeyView>, PasskeyError> {
    let client = deps.pool.get().await?;
    Ok(passkeys::of_user(&client, user)
        .await?
        .iter()
        .map(passkeys::Stored::view)
        .collect())
}

/// Renames one of the user's passkeys.
pub async fn rename(
    deps: Deps<'_>,
    app: &App,
    user: Uuid,
    id: Uuid,
    name: &str,
    ctx: &Ctx,
) -> Result<(), PasskeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(PasskeyError::Invalid(
            "name must be 1 to 100 characters".into(),
        ));
    }
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    if !passkeys::rename_in(&tx, user, id, name).await? {
        return Err(PasskeyError::NotFound);
    }
    let details = json!({ "passkey_id": id });
    audit::record(
        &tx,
        Event::by_user(app.id, user, "passkey.renamed", details, ctx),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes one of the user's passkeys, `by` the user or an administrator.
pub async fn delete(
    deps: Deps<'_>,
    app: &App,
    user: Uuid,
    id: Uuid,
    by: Actor,
    ctx: &Ctx,
) -> Result<(), PasskeyError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    users::lock_in(&tx, user).await?;
    let others = passkeys::count_in(&tx, user).await? - 1;
    if !passkeys::delete_in(&tx, user, id).await? {
        return Err(PasskeyError::NotFound);
    }
    // No provider is named "": the second count is every linked identity.
    let (_, identities) = identities::count_in(&tx, user, "").await?;
    if others == 0 && identities == 0 && !users::has_password_in(&tx, user).await? {
        return Err(PasskeyError::LastWayIn);
    }
    let removed = Event {
        app: Some(app.id),
        user: Some(user),
        actor: by,
        event: "passkey.removed",
        details: json!({ "passkey_id": id }),
        ctx,
    };
    audit::record(&tx, removed).await?;
    tx.commit().await?;
    Ok(())
}
