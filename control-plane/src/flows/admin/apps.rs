//! An owner's applications (API.md §3 `/v1/apps`): created with an API key shown once,
//! changed under the row lock (concurrent changes never undo each other), deleted with
//! every user and session (their tokens revoked). A change applies on this replica at
//! once and on others within `AppCache`'s lifetime.

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{AdminError, Deps};
use crate::domain::Ctx;
use crate::domain::apps::{self, App, NewApp};
use crate::domain::audit::{self, Event};
use crate::domain::sessions::{self, AppsOf};
use crate::domain::settings::AppSettings;
use crate::domain::settings::providers;
use crate::infra::crypto::{digest, random_token};

/// What an owner sets on an application; `None` keeps the current value (the defaults,
/// on creation).
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub name: Option<&'a str>,
    pub access_token_ttl: Option<i64>,
    pub refresh_token_ttl: Option<i64>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
}

impl Changes<'_> {
    /// `settings` with these lifetimes, checked.
    fn settings(&self, mut settings: AppSettings) -> Result<AppSettings, AdminError> {
        settings.access_token_ttl = self.access_token_ttl.unwrap_or(settings.access_token_ttl);
        settings.refresh_token_ttl = self.refresh_token_ttl.unwrap_or(settings.refresh_token_ttl);
        settings.validate().map_err(apps::AppError::from)?;
        Ok(settings)
    }
}

/// A new API key: 256 random bits, shown once, stored as SHA-256.
fn new_api_key() -> String {
    format!("pk_{}", random_token(32))
}

/// Records `event` about `app` in the caller's transaction.
async fn record(
    tx: &impl deadpool_postgres::GenericClient,
    app: Uuid,
    event: &'static str,
    details: Value,
    ctx: &Ctx,
) -> Result<(), AdminError> {
    audit::record(tx, Event::by_admin(app, None, event, details, ctx)).await?;
    Ok(())
}

/// A new application of `owner` (`changes.name` is required); returns it with its API key.
pub async fn create(
    deps: Deps<'_>,
    owner: Uuid,
    changes: &Changes<'_>,
) -> Result<(App, String), AdminError> {
    let name = apps::check_name(changes.name.unwrap_or(""))?;
    let settings = changes.settings(AppSettings::default())?;
    let key = new_api_key();
    let client = deps.pool.get().await?;
    let new = NewApp {
        owner,
        name: &name,
        api_key_digest: &digest(&key),
        settings: &settings,
        expires_at: changes.expires_at.flatten(),
    };
    Ok((apps::insert(&client, &new).await?, key))
}

/// Changes an application's name, lifetimes or expiry.
pub async fn update(
    deps: Deps<'_>,
    app: &App,
    changes: &Changes<'_>,
    ctx: &Ctx,
) -> Result<App, AdminError> {
    let name = changes.name.map(apps::check_name).transpose()?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let current = apps::lock(&tx, app.id).await?;
    let settings = changes.settings(current.settings.clone())?;
    let expires_at = changes.expires_at.unwrap_or(current.expires_at);
    let updated = apps::update_in(&tx, app.id, name.as_deref(), &settings, expires_at).await?;
    record(&tx, app.id, "app.updated", Value::Null, ctx).await?;
    tx.commit().await?;
    deps.apps.forget(app.id);
    Ok(updated)
}

/// Deletes an application with its users and sessions; their tokens are revoked.
pub async fn delete(deps: Deps<'_>, app: &App, ctx: &Ctx) -> Result<(), AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let (users, before) = sessions::revoke_app_users_in(&tx, AppsOf::App(app.id), ctx.now).await?;
    apps::delete_in(&tx, app.id).await?;
    // Kept after the application (the log has no foreign keys).
    record(&tx, app.id, "app.deleted", Value::Null, ctx).await?;
    tx.commit().await?;
    drop(client);
    deps.apps.forget(app.id);
    sessions::publish_users(deps.publisher, &users, before).await;
    Ok(())
}

/// Replaces the API key; the previous one stops working at once. Returns the new key.
pub async fn rotate_key(deps: Deps<'_>, app: &App, ctx: &Ctx) -> Result<String, AdminError> {
    let key = new_api_key();
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    apps::set_api_key_in(&tx, app.id, &digest(&key)).await?;
    record(&tx, app.id, "app.api_key_rotated", Value::Null, ctx).await?;
    tx.commit().await?;
    Ok(key)
}

/// Merges the named fields of `patch` into the settings; invalid values change nothing.
/// Returns the settings as shown (secrets masked).
pub async fn merge_settings(
    deps: Deps<'_>,
    app: &App,
    patch: &Value,
    ctx: &Ctx,
) -> Result<AppSettings, AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let current = apps::lock(&tx, app.id).await?;
    let mut settings = current
        .settings
        .merged(patch)
        .map_err(apps::AppError::from)?;
    providers::seal_secrets(&mut settings.oauth_providers, deps.secrets, app.id);
    apps::set_settings_in(&tx, app.id, &settings).await?;
    // Which settings were named, never their values (a CAPTCHA secret is one).
    let named: Vec<&String> = patch
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let details = serde_json::json!({ "fields": named });
    record(&tx, app.id, "app.settings_updated", details, ctx).await?;
    tx.commit().await?;
    deps.apps.forget(app.id);
    Ok(settings.public())
}
