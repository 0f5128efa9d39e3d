//! `/v1/apps/{app}/webhooks`: endpoints that receive the application's events, their
//! deliveries and the replay of dead letters (API.md §3), for its API key or its owner.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::created;
use super::extract::{AppAdmin, JsonBody};
use crate::domain::Ctx;
use crate::domain::webhooks::{self, Delivery, Webhook};
use crate::flows::admin::webhooks::{self as webhook_flows, Target};
use crate::http::error::{ApiError, ApiResult, Problem};
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
#[utoipa::path(get, path = "/v1/apps/{app}/webhooks", operation_id = "listWebhooks", tag = "admin", params(("app" = String, Path)),
    responses((status = 200, body = WebhookList), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
) -> ApiResult<Json<WebhookList>> {
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
#[utoipa::path(post, path = "/v1/apps/{app}/webhooks", operation_id = "createWebhook", tag = "admin", params(("app" = String, Path)),
    request_body = WebhookBody,
    responses((status = 201, body = Webhook), (status = 400, description = "a private or unusable url", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Response> {
    let webhook = webhook_flows::create(state.admin(), &app, &body.target(), &ctx).await?;
    Ok(created(webhook))
}

impl WebhookBody {
    fn target(&self) -> Target<'_> {
        Target {
            url: &self.url,
            events: &self.events,
            secret: self.secret.as_deref(),
        }
    }
}

fn webhook_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("webhook"))
}

/// Replace a webhook's URL and events (and its secret, when given).
#[utoipa::path(put, path = "/v1/apps/{app}/webhooks/{id}", operation_id = "replaceWebhook", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)), request_body = WebhookBody,
    responses((status = 200, body = Webhook), (status = 404, body = Problem)))]
async fn put(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Json<Webhook>> {
    let id = webhook_id(&id)?;
    let target = body.target();
    Ok(Json(
        webhook_flows::replace(state.admin(), &app, id, &target, &ctx).await?,
    ))
}

/// Delete a webhook; its pending deliveries fail.
#[utoipa::path(delete, path = "/v1/apps/{app}/webhooks/{id}", operation_id = "deleteWebhook", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = webhook_id(&id)?;
    webhook_flows::delete(state.admin(), &app, id, &ctx).await?;
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
#[utoipa::path(get, path = "/v1/apps/{app}/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 400, body = Problem)))]
async fn deliveries(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
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
#[utoipa::path(post, path = "/v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/replay", operation_id = "replayWebhookDelivery", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path), ("delivery" = String, Path)),
    responses((status = 202, description = "queued again"), (status = 404, body = Problem)))]
async fn replay(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Path((_, id, delivery)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let id = webhook_id(&id)?;
    let delivery = delivery
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("failed delivery"))?;
    webhook_flows::replay(state.admin(), &app, id, delivery).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
