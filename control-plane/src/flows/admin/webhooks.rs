//! An application's webhooks (API.md §3 `/webhooks`) and their dead letters.

use serde_json::json;
use uuid::Uuid;

use super::{AdminError, Deps};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::webhooks::{self, Webhook};

/// What a webhook is set to: its URL, events, and a secret (generated on creation when
/// absent; kept on a replacement when absent).
#[derive(Debug)]
pub struct Target<'a> {
    pub url: &'a str,
    pub events: &'a [String],
    pub secret: Option<&'a str>,
}

/// Records `event` about webhook `id` in the caller's transaction.
async fn record(
    tx: &impl deadpool_postgres::GenericClient,
    app: &App,
    event: &'static str,
    id: Uuid,
    ctx: &Ctx,
) -> Result<(), AdminError> {
    let details = json!({ "webhook_id": id });
    audit::record(tx, Event::by_admin(app.id, None, event, details, ctx)).await?;
    Ok(())
}

/// A new webhook; the answer carries its secret (the only time it is shown).
pub async fn create(
    deps: Deps<'_>,
    app: &App,
    target: &Target<'_>,
    ctx: &Ctx,
) -> Result<Webhook, AdminError> {
    let events = webhooks::check_events(target.events)?;
    webhooks::check_url(deps.egress, target.url).await?;
    let secret = webhooks::secret(target.secret)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let mut webhook =
        webhooks::create(&tx, deps.secrets, app.id, target.url, &events, &secret).await?;
    record(&tx, app, "webhook.created", webhook.id, ctx).await?;
    tx.commit().await?;
    webhook.secret = Some(secret);
    Ok(webhook)
}

/// Replaces a webhook's URL and events (and its secret, when given).
pub async fn replace(
    deps: Deps<'_>,
    app: &App,
    id: Uuid,
    target: &Target<'_>,
    ctx: &Ctx,
) -> Result<Webhook, AdminError> {
    let events = webhooks::check_events(target.events)?;
    webhooks::check_url(deps.egress, target.url).await?;
    let secret = target
        .secret
        .map(|s| webhooks::secret(Some(s)))
        .transpose()?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let webhook = webhooks::update(
        &tx,
        deps.secrets,
        app.id,
        id,
        target.url,
        &events,
        secret.as_deref(),
    )
    .await?;
    record(&tx, app, "webhook.updated", id, ctx).await?;
    tx.commit().await?;
    Ok(webhook)
}

/// Deletes a webhook; its pending deliveries fail.
pub async fn delete(deps: Deps<'_>, app: &App, id: Uuid, ctx: &Ctx) -> Result<(), AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    webhooks::delete(&tx, app.id, id).await?;
    record(&tx, app, "webhook.deleted", id, ctx).await?;
    tx.commit().await?;
    Ok(())
}

/// Queues a dead letter again (with a new day of retries).
pub async fn replay(deps: Deps<'_>, app: &App, id: Uuid, delivery: Uuid) -> Result<(), AdminError> {
    let client = deps.pool.get().await?;
    webhooks::replay(&client, app.id, id, delivery).await?;
    drop(client);
    deps.outbox.wake_webhooks();
    Ok(())
}
