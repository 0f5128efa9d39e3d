//! `/v1/apps`: an owner's applications, their API keys and settings (API.md §3).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JsonBody, auth, created};
use crate::domain::Ctx;
use crate::domain::apps::{self, APP_COLUMNS, App, AppView};
use crate::domain::audit::{self, Event};
use crate::domain::sessions::{self, AppsOf};
use crate::domain::settings::AppSettings;
use crate::error::{ApiError, ApiResult, Problem};
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::Prepared as _;
use crate::infra::store::is_unique_violation;
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

fn app_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name must be 1..=100 characters"));
    }
    Ok(name.to_owned())
}

fn app_exists(e: tokio_postgres::Error) -> ApiError {
    if is_unique_violation(&e, Some("apps_owner_id_name_key")) {
        ApiError::new(
            ErrorCode::AppExists,
            "this owner already has an application with this name",
        )
    } else {
        e.into()
    }
}

/// `settings` with the token lifetimes the request names, checked.
fn with_lifetimes(
    mut settings: AppSettings,
    access: Option<i64>,
    refresh: Option<i64>,
) -> Result<AppSettings, ApiError> {
    settings.access_token_ttl = access.unwrap_or(settings.access_token_ttl);
    settings.refresh_token_ttl = refresh.unwrap_or(settings.refresh_token_ttl);
    settings.validate()?;
    Ok(settings)
}

/// A new API key: 256 random bits, shown once, stored as SHA-256.
fn new_api_key() -> String {
    format!("pk_{}", random_token(32))
}

/// Create an application; its API key is in this answer only.
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = NewApp,
    responses((status = 201, body = AppView), (status = 409, description = "app_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewApp>,
) -> ApiResult<Response> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    let name = app_name(&body.name)?;
    let settings = with_lifetimes(
        AppSettings::default(),
        body.access_token_ttl,
        body.refresh_token_ttl,
    )?;
    let settings_json = serde_json::to_value(&settings).map_err(|e| ApiError::internal(&e))?;
    let key = new_api_key();
    let client = state.pool.get().await?;
    let sql = format!(
        "INSERT INTO apps (id, owner_id, name, api_key_hash, settings, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {APP_COLUMNS}"
    );
    let row = client
        .q_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &owner,
                &name,
                &digest(&key),
                &settings_json,
                &body.expires_at,
            ],
        )
        .await
        .map_err(app_exists)?;
    Ok(created(App::from_row(&row).view(Some(key))))
}

/// The owner's applications.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", responses((status = 200, body = AppList)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
) -> ApiResult<Json<AppList>> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    let client = state.pool.get().await?;
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE owner_id = $1 ORDER BY created_at, id");
    let rows = client.q(&sql, &[&owner]).await?;
    Ok(Json(AppList {
        apps: rows.iter().map(|r| App::from_row(r).view(None)).collect(),
    }))
}

/// One application.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, description = "app_not_found", body = Problem)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<AppView>> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    Ok(Json(auth::owned_app(&state, owner, &app).await?.view(None)))
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
#[utoipa::path(patch, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), request_body = AppPatch,
    responses((status = 200, body = AppView), (status = 409, description = "app_exists", body = Problem)))]
async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<AppPatch>,
) -> ApiResult<Json<AppView>> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    let app = auth::owned_app(&state, owner, &app).await?;
    let name = body.name.as_deref().map(app_name).transpose()?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    // Read-modify-write under the row lock: concurrent changes never undo each other.
    let app = apps::lock(&tx, app.id).await?;
    let settings = with_lifetimes(
        app.settings.clone(),
        body.access_token_ttl,
        body.refresh_token_ttl,
    )?;
    let expires_at = super::patched_time(app.expires_at, body.expires_at)?;
    let settings_json = serde_json::to_value(&settings).map_err(|e| ApiError::internal(&e))?;
    let sql = format!(
        "UPDATE apps SET name = COALESCE($2, name), settings = $3, expires_at = $4
         WHERE id = $1 RETURNING {APP_COLUMNS}"
    );
    let row = tx
        .q_one(&sql, &[&app.id, &name, &settings_json, &expires_at])
        .await
        .map_err(app_exists)?;
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "app.updated", serde_json::Value::Null, &ctx),
    )
    .await?;
    tx.commit().await?;
    state.apps.forget(app.id);
    Ok(Json(App::from_row(&row).view(None)))
}

/// Delete an application with its users and sessions; their tokens are revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, description = "app_not_found", body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    let app = auth::owned_app(&state, owner, &app).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let (users, before) = sessions::revoke_app_users_in(&tx, AppsOf::App(app.id), ctx.now).await?;
    tx.exec("DELETE FROM apps WHERE id = $1", &[&app.id])
        .await?;
    // Kept after the application (the log has no foreign keys).
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "app.deleted", serde_json::Value::Null, &ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    state.apps.forget(app.id);
    sessions::publish_users(&state, &users, before).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replace the application's API key; the previous one stops working at once.
#[utoipa::path(post, path = "/v1/apps/{app}/api-keys", tag = "apps", params(("app" = String, Path)),
    responses((status = 201, body = ApiKey), (status = 404, description = "app_not_found", body = Problem)))]
async fn rotate_key(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let owner = auth::owner(&state, &headers, ctx.now).await?;
    let app = auth::owned_app(&state, owner, &app).await?;
    let key = new_api_key();
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    tx.exec(
        "UPDATE apps SET api_key_hash = $2 WHERE id = $1",
        &[&app.id, &digest(&key)],
    )
    .await?;
    audit::record(
        &tx,
        Event::by_admin(
            app.id,
            None,
            "app.api_key_rotated",
            serde_json::Value::Null,
            &ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(created(ApiKey { api_key: key }))
}

/// The application's settings, defaults filled in.
#[utoipa::path(get, path = "/v1/apps/{app}/settings", tag = "apps", params(("app" = String, Path)),
    responses((status = 200, body = AppSettings)))]
async fn settings_get(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<AppSettings>> {
    Ok(Json(
        auth::app_admin(&state, &headers, &app, ctx.now)
            .await?
            .settings
            .public(),
    ))
}

/// Merge the named fields into the settings; invalid values change nothing.
#[utoipa::path(put, path = "/v1/apps/{app}/settings", tag = "apps", params(("app" = String, Path)),
    request_body = AppSettings, responses((status = 200, body = AppSettings), (status = 400, body = Problem)))]
async fn settings_put(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> ApiResult<Json<AppSettings>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let app = apps::lock(&tx, app.id).await?;
    let mut settings = app.settings.merged(&patch)?;
    crate::domain::providers::seal_secrets(&mut settings.oauth_providers, &state.secrets, app.id);
    let json = serde_json::to_value(&settings).map_err(|e| ApiError::internal(&e))?;
    tx.exec(
        "UPDATE apps SET settings = $2 WHERE id = $1",
        &[&app.id, &json],
    )
    .await?;
    // Which settings were named, never their values (a CAPTCHA secret is one).
    let named: Vec<&String> = patch
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let details = serde_json::json!({ "fields": named });
    let changed = Event::by_admin(app.id, None, "app.settings_updated", details, &ctx);
    audit::record(&tx, changed).await?;
    tx.commit().await?;
    state.apps.forget(app.id);
    Ok(Json(settings.public()))
}
