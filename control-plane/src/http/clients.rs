//! `/v1/apps/{app}/oauth-clients`: the application's OAuth clients, for Portcullis as an
//! OpenID Provider (API key or owner).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::created;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{AppAdmin, JsonBody};
use crate::domain::Ctx;
use crate::domain::clients::{self, Client, ClientFields};
use crate::flows::admin::clients as manage;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update, delete))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Created {
    #[serde(flatten)]
    client: Client,
    /// Shown only now, for a confidential client.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

/// The application's OAuth clients.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth-clients", operation_id = "listOauthClients", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 200, body = Vec<Client>), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
) -> ApiResult<Json<Vec<Client>>> {
    let db = state.pool.get().await?;
    Ok(Json(clients::list(&db, app.id).await?))
}

/// Register a client: confidential (the secret is in this answer only) or public
/// (`confidential: false`: PKCE, no secret).
#[utoipa::path(post, path = "/v1/apps/{app}/oauth-clients", operation_id = "createOauthClient", tag = "provider",
    params(("app" = String, Path)),
    request_body = ClientFields,
    responses((status = 201, body = Created), (status = 400, body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    JsonBody(fields): JsonBody<ClientFields>,
) -> ApiResult<Response> {
    let (client, client_secret) = manage::create(state.admin(), &app, &fields, &ctx).await?;
    Ok(created(Created {
        client,
        client_secret,
    }))
}

fn client_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("oauth client"))
}

/// One client.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth-clients/{id}", operation_id = "getOauthClient", tag = "provider",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Client), (status = 404, body = Problem)))]
async fn get_one(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Client>> {
    let db = state.pool.get().await?;
    let found = clients::find(&db, app.id, client_id(&id)?).await?;
    Ok(Json(
        found.ok_or_else(|| ApiError::not_found("oauth client"))?,
    ))
}

/// Replace a client's fields (its secret and kind stay).
#[utoipa::path(patch, path = "/v1/apps/{app}/oauth-clients/{id}", operation_id = "updateOauthClient", tag = "provider",
    params(("app" = String, Path), ("id" = String, Path)),
    request_body = ClientFields,
    responses((status = 200, body = Client), (status = 404, body = Problem)))]
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
    JsonBody(fields): JsonBody<ClientFields>,
) -> ApiResult<Json<Client>> {
    let updated = manage::update(state.admin(), &app, client_id(&id)?, &fields, &ctx).await?;
    Ok(Json(
        updated.ok_or_else(|| ApiError::not_found("oauth client"))?,
    ))
}

/// Delete a client; every session it holds is revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}/oauth-clients/{id}", operation_id = "deleteOauthClient", tag = "provider",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    if !manage::delete(state.admin(), &app, client_id(&id)?, &ctx).await? {
        return Err(ApiError::not_found("oauth client"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
