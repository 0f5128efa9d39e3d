//! `/v1/apps/{app}/roles`: roles and their permissions (API.md §3 "Application
//! administration"), for the application's API key or its owner.

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
use crate::domain::roles::{self, Role};
use crate::domain::sessions;
use crate::domain::users::check_roles;
use crate::error::{ApiError, ApiResult, Problem};
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
#[utoipa::path(get, path = "/v1/apps/{app}/roles", tag = "admin", params(("app" = String, Path)),
    responses((status = 200, body = RoleList), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<RoleList>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
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
#[utoipa::path(post, path = "/v1/apps/{app}/roles", tag = "admin", params(("app" = String, Path)),
    request_body = NewRole,
    responses((status = 201, body = Role), (status = 409, description = "role_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<NewRole>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let name = one_role(&body.name)?;
    let permissions = roles::check_permissions(&body.permissions)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let role = roles::create(&tx, app.id, &name, &permissions).await?;
    let details = json!({ "role": name, "permissions": permissions });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.created", details, &ctx),
    )
    .await?;
    tx.commit().await?;
    Ok(created(role))
}

fn one_role(name: &str) -> Result<String, ApiError> {
    Ok(check_roles(&[name.to_owned()])?.remove(0))
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
#[utoipa::path(put, path = "/v1/apps/{app}/roles/{name}", tag = "admin",
    params(("app" = String, Path), ("name" = String, Path), Revoke),
    request_body = RolePermissions,
    responses((status = 200, body = Role), (status = 400, body = Problem)))]
async fn put(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, name)): Path<(String, String)>,
    Query(revoke): Query<Revoke>,
    JsonBody(body): JsonBody<RolePermissions>,
) -> ApiResult<Json<Role>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let name = one_role(&name)?;
    let permissions = roles::check_permissions(&body.permissions)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let role = roles::put(&tx, app.id, &name, &permissions).await?;
    let holders = if revoke.revoke_tokens {
        roles::holders(&tx, app.id, &name).await?
    } else {
        Vec::new()
    };
    let cutoffs = revoke_all_in(&tx, &holders, ctx.now).await?;
    let details =
        json!({ "role": name, "permissions": permissions, "revoked_users": holders.len() });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.updated", details, &ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    publish(&state, cutoffs).await;
    Ok(Json(role))
}

/// Per-user cutoffs for `users`, in the caller's transaction.
async fn revoke_all_in(
    tx: &impl deadpool_postgres::GenericClient,
    users: &[Uuid],
    now: i64,
) -> Result<Vec<(Uuid, i64)>, ApiError> {
    let mut cutoffs = Vec::with_capacity(users.len());
    for user in users {
        cutoffs.push((*user, sessions::revoke_user_in(tx, *user, now).await?));
    }
    Ok(cutoffs)
}

async fn publish(state: &AppState, cutoffs: Vec<(Uuid, i64)>) {
    for (user, before) in cutoffs {
        sessions::publish_users(state, &[user], before).await;
    }
}

/// Delete a role; it is taken from every user holding it (their tokens lose it at the next
/// refresh, or at once with `revoke_tokens=true`).
#[utoipa::path(delete, path = "/v1/apps/{app}/roles/{name}", tag = "admin",
    params(("app" = String, Path), ("name" = String, Path), Revoke),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, name)): Path<(String, String)>,
    Query(revoke): Query<Revoke>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let holders = roles::delete_in(&tx, app.id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    let cutoffs = if revoke.revoke_tokens {
        revoke_all_in(&tx, &holders, ctx.now).await?
    } else {
        Vec::new()
    };
    let details =
        json!({ "role": name, "holders": holders.len(), "revoked": revoke.revoke_tokens });
    audit::record(
        &tx,
        Event::by_admin(app.id, None, "role.deleted", details, &ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    publish(&state, cutoffs).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
