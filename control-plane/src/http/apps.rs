//! `/v1/apps`: an owner's applications, their API keys and settings (API.md §3).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppAdmin, JsonBody, OwnedApp, Owner};
use super::{created, expiry_patch};
use crate::domain::Ctx;
use crate::domain::apps::{self, AppView};
use crate::domain::settings::AppSettings;
use crate::flows::admin::apps::{self as app_flows, Changes};
use crate::http::error::{ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(rotate_key))
        .routes(routes!(settings_get, settings_put))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewApp {
    name: String,
    access_token_ttl: Option<i64>,
    refresh_token_ttl: Option<i64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ApiKey {
    api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AppList {
    apps: Vec<AppView>,
}

/// Create an application; its API key is in this answer only.
#[utoipa::path(post, path = "/v1/apps", operation_id = "createApp", tag = "apps", request_body = NewApp,
    responses((status = 201, body = AppView), (status = 409, description = "app_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    Owner(owner): Owner,
    JsonBody(body): JsonBody<NewApp>,
) -> ApiResult<Response> {
    let changes = Changes {
        name: Some(&body.name),
        access_token_ttl: body.access_token_ttl,
        refresh_token_ttl: body.refresh_token_ttl,
        expires_at: Some(body.expires_at),
    };
    let (app, key) = app_flows::create(state.admin(), owner, &changes).await?;
    Ok(created(app.view(Some(key))))
}

/// The owner's applications.
#[utoipa::path(get, path = "/v1/apps", operation_id = "listApps", tag = "apps", responses((status = 200, body = AppList)))]
async fn list(State(state): State<AppState>, Owner(owner): Owner) -> ApiResult<Json<AppList>> {
    let client = state.pool.get().await?;
    let apps = apps::of_owner(&client, owner).await?;
    Ok(Json(AppList {
        apps: apps.iter().map(|app| app.view(None)).collect(),
    }))
}

/// One application.
#[utoipa::path(get, path = "/v1/apps/{app}", operation_id = "getApp", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, description = "app_not_found", body = Problem)))]
async fn get_one(OwnedApp(app): OwnedApp) -> Json<AppView> {
    Json(app.view(None))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct AppPatch {
    name: Option<String>,
    access_token_ttl: Option<i64>,
    refresh_token_ttl: Option<i64>,
    /// RFC 3339; `null` removes the expiry.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
}

/// Update an application's name, lifetimes or expiry.
#[utoipa::path(patch, path = "/v1/apps/{app}", operation_id = "updateApp", tag = "apps", params(("app" = String, Path)), request_body = AppPatch,
    responses((status = 200, body = AppView), (status = 409, description = "app_exists", body = Problem)))]
async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    OwnedApp(app): OwnedApp,
    JsonBody(body): JsonBody<AppPatch>,
) -> ApiResult<Json<AppView>> {
    let changes = Changes {
        name: body.name.as_deref(),
        access_token_ttl: body.access_token_ttl,
        refresh_token_ttl: body.refresh_token_ttl,
        expires_at: expiry_patch(body.expires_at)?,
    };
    let app = app_flows::update(state.admin(), &app, &changes, &ctx).await?;
    Ok(Json(app.view(None)))
}

/// Delete an application with its users and sessions; their tokens are revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}", operation_id = "deleteApp", tag = "apps", params(("app" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, description = "app_not_found", body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    OwnedApp(app): OwnedApp,
) -> ApiResult<Response> {
    app_flows::delete(state.admin(), &app, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replace the application's API key; the previous one stops working at once.
#[utoipa::path(post, path = "/v1/apps/{app}/api-keys", operation_id = "rotateApiKey", tag = "apps", params(("app" = String, Path)),
    responses((status = 201, body = ApiKey), (status = 404, description = "app_not_found", body = Problem)))]
async fn rotate_key(
    State(state): State<AppState>,
    ctx: Ctx,
    OwnedApp(app): OwnedApp,
) -> ApiResult<Response> {
    let api_key = app_flows::rotate_key(state.admin(), &app, &ctx).await?;
    Ok(created(ApiKey { api_key }))
}

/// The application's settings, defaults filled in.
#[utoipa::path(get, path = "/v1/apps/{app}/settings", operation_id = "getSettings", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = AppSettings)))]
async fn settings_get(AppAdmin(app): AppAdmin) -> Json<AppSettings> {
    Json(app.settings.public())
}

/// Merge the named fields into the settings; invalid values change nothing.
#[utoipa::path(put, path = "/v1/apps/{app}/settings", operation_id = "updateSettings", tag = "apps", params(("app" = String, Path)),
    request_body = AppSettings, responses((status = 200, body = AppSettings), (status = 400, body = Problem)))]
async fn settings_put(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> ApiResult<Json<AppSettings>> {
    Ok(Json(
        app_flows::merge_settings(state.admin(), &app, &patch, &ctx).await?,
    ))
}
