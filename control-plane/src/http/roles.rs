//! `/v1/apps/{app}/roles`: roles and their permissions (API.md §3 "Application
//! administration"), for the application's API key or its owner.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::created;
use super::extract::{AppAdmin, JsonBody};
use crate::domain::Ctx;
use crate::domain::roles::{self, Role};
use crate::flows::admin::roles as role_flows;
use crate::http::error::{ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(put, delete))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RoleList {
    roles: Vec<Role>,
}

/// The application's roles, by name.
#[utoipa::path(get, path = "/v1/apps/{app}/roles", operation_id = "listRoles", tag = "admin", params(("app" = String, Path)),
    responses((status = 200, body = RoleList), (status = 401, body = Problem)))]
async fn list(State(state): State<AppState>, AppAdmin(app): AppAdmin) -> ApiResult<Json<RoleList>> {
    let client = state.pool.get().await?;
    Ok(Json(RoleList {
        roles: roles::list(&client, app.id).await?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewRole {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
}

/// A new role.
#[utoipa::path(post, path = "/v1/apps/{app}/roles", operation_id = "createRole", tag = "admin", params(("app" = String, Path)),
    request_body = NewRole,
    responses((status = 201, body = Role), (status = 409, description = "role_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    JsonBody(body): JsonBody<NewRole>,
) -> ApiResult<Response> {
    let role = role_flows::create(state.admin(), &app, &body.name, &body.permissions, &ctx).await?;
    Ok(created(role))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct RolePermissions {
    permissions: Vec<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub(super) struct Revoke {
    /// `true`: the current tokens of every user holding the role are revoked (a per-user
    /// cutoff), so a removed permission stops working now rather than at the next refresh.
    #[serde(default)]
    revoke_tokens: bool,
}

/// Create or replace a role's permissions. Users' tokens carry the change from their next
/// refresh, or at once with `revoke_tokens=true`.
#[utoipa::path(put, path = "/v1/apps/{app}/roles/{name}", operation_id = "putRole", tag = "admin",
    params(("app" = String, Path), ("name" = String, Path), Revoke),
    request_body = RolePermissions,
    responses((status = 200, body = Role), (status = 400, body = Problem)))]
async fn put(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, name)): Path<(String, String)>,
    Query(revoke): Query<Revoke>,
    JsonBody(body): JsonBody<RolePermissions>,
) -> ApiResult<Json<Role>> {
    let (admin, permissions) = (state.admin(), &body.permissions);
    let role = role_flows::put(admin, &app, &name, permissions, revoke.revoke_tokens, &ctx).await?;
    Ok(Json(role))
}

/// Delete a role; it is taken from every user holding it (their tokens lose it at the next
/// refresh, or at once with `revoke_tokens=true`).
#[utoipa::path(delete, path = "/v1/apps/{app}/roles/{name}", operation_id = "deleteRole", tag = "admin",
    params(("app" = String, Path), ("name" = String, Path), Revoke),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, name)): Path<(String, String)>,
    Query(revoke): Query<Revoke>,
) -> ApiResult<Response> {
    role_flows::delete(state.admin(), &app, &name, revoke.revoke_tokens, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
