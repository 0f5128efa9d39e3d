//! `/v1/apps/{app}/webhooks`: endpoints that receive the application's events, their
//! deliveries and the replay of dead letters (API.md §3), for its API key or its owner.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JsonBody, auth, created};
use crate::domain::Ctx;
use crate::domain::audit::{self, Event};
use crate::domain::webhooks::{self, Delivery, Webhook};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(put, delete))
        .routes(routes!(deliveries))
        .routes(routes!(replay))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WebhookList {
    webhooks: Vec<Webhook>,
}

/// The application's webhooks.
#[utoipa::path(get, path = "/v1/apps/{app}/webhooks", tag = "admin", params(("app" = String, Path)),
    responses((status = 200, body = WebhookList), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<WebhookList>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let client = state.pool.get().await?;
    Ok(Json(WebhookList {
        webhooks: webhooks::list(&client, app.id).await?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct WebhookBody {
    url: String,
    /// Event names as in the audit log (`user.created`, `session.revoked`, ...), or `*`.
    events: Vec<String>,
    /// `whsec_…`; generated when absent (on creation).
    secret: Option<String>,
}

/// A new webhook; its secret is shown only in this answer.
#[utoipa::path(post, path = "/v1/apps/{app}/webhooks", tag = "admin", params(("app" = String, Path)),
    request_body = WebhookBody,
    responses((status = 201, body = Webhook), (status = 400, description = "a private or unusable url", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let events = webhooks::check_events(&body.events)?;
    webhooks::check_url(&state.egress, &body.url).await?;
    let secret = webhooks::secret(body.secret.as_deref())?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let mut webhook =
        webhooks::create(&tx, &state.secrets, app.id, &body.url, &events, &secret).await?;
    audit::record(
        &tx,
        Event::by_admin(
            app.id,
            None,
            "webhook.created",
            json!({ "webhook_id": webhook.id }),
            &ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    webhook.secret = Some(secret);
    Ok(created(webhook))
}

fn webhook_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("webhook"))
}

/// Replace a webhook's URL and events (and its secret, when given).
#[utoipa::path(put, path = "/v1/apps/{app}/webhooks/{id}", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)), request_body = WebhookBody,
    responses((status = 200, body = Webhook), (status = 404, body = Problem)))]
async fn put(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Json<Webhook>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let id = webhook_id(&id)?;
    let events = webhooks::check_events(&body.events)?;
    webhooks::check_url(&state.egress, &body.url).await?;
    let secret = body
        .secret
        .as_deref()
        .map(|s| webhooks::secret(Some(s)))
        .transpose()?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let webhook = webhooks::update(
        &tx,
        &state.secrets,
        app.id,
        id,
        &body.url,
        &events,
        secret.as_deref(),
    )
    .await?;
    audit::record(
        &tx,
        Event::by_admin(
            app.id,
            None,
            "webhook.updated",
            json!({ "webhook_id": id }),
            &ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(webhook))
}

/// Delete a webhook; its pending deliveries fail.
#[utoipa::path(delete, path = "/v1/apps/{app}/webhooks/{id}", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let id = webhook_id(&id)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    webhooks::delete(&tx, app.id, id).await?;
    audit::record(
        &tx,
        Event::by_admin(
            app.id,
            None,
            "webhook.deleted",
            json!({ "webhook_id": id }),
            &ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct DeliveryQuery {
    /// `pending`, `sent` or `failed` (the dead letters).
    state: Option<String>,
    /// 1..=200, default 50.
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeliveryList {
    deliveries: Vec<Delivery>,
}

/// The webhook's deliveries, newest first; `state=failed` lists the dead letters.
#[utoipa::path(get, path = "/v1/apps/{app}/webhooks/{id}/deliveries", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 400, body = Problem)))]
async fn deliveries(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let id = webhook_id(&id)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=200"));
    }
    if q.state
        .as_deref()
        .is_some_and(|s| !matches!(s, "pending" | "sent" | "failed"))
    {
        return Err(ApiError::bad_request(
            "state must be pending, sent or failed",
        ));
    }
    let client = state.pool.get().await?;
    Ok(Json(DeliveryList {
        deliveries: webhooks::deliveries(&client, app.id, id, q.state.as_deref(), limit).await?,
    }))
}

/// Send a dead letter again (with a new day of retries).
#[utoipa::path(post, path = "/v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/replay", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path), ("delivery" = String, Path)),
    responses((status = 202, description = "queued again"), (status = 404, body = Problem)))]
async fn replay(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id, delivery)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let id = webhook_id(&id)?;
    let delivery = delivery
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("failed delivery"))?;
    let client = state.pool.get().await?;
    webhooks::replay(&client, app.id, id, delivery).await?;
    drop(client);
    state.outbox.wake_webhooks();
    Ok(StatusCode::ACCEPTED.into_response())
}
