//! `/v1/apps/{app}/users`: user administration by the application's API key or its owner
//! (API.md §3 "Application administration").

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AppAdmin, JsonBody};
use super::{created, expiry_patch};
use crate::domain::Ctx;
use crate::domain::audit::Actor;
use crate::domain::passkeys::PasskeyView;
use crate::domain::users::{self, Changes, NewUser, User, UserView, check_roles};
use crate::flows::account;
use crate::flows::admin;
use crate::flows::passkeys::manage;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(list_passkeys))
        .routes(routes!(delete_passkey))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct ListQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1..=200, default 50.
    limit: Option<i64>,
    /// Exact email (case-insensitive).
    email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct UserPage {
    users: Vec<UserView>,
    /// Present when more users follow.
    next_cursor: Option<String>,
}

/// Users in creation order, a page at a time.
#[utoipa::path(get, path = "/v1/apps/{app}/users", operation_id = "listUsers", tag = "admin", params(("app" = String, Path), ListQuery),
    responses((status = 200, body = UserPage), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<UserPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=200"));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<Uuid>()
                .map_err(|_| ApiError::bad_request("cursor is not valid"))
        })
        .transpose()?;
    let client = state.pool.get().await?;
    let (users, more) = users::page(&client, app.id, cursor, q.email.as_deref(), limit).await?;
    let next_cursor = more
        .then(|| users.last().map(|u| u.id.to_string()))
        .flatten();
    Ok(Json(UserPage {
        users: users.iter().map(User::view).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct UserCreate {
    email: String,
    password: Option<String>,
    username: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    active: Option<bool>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(default)]
    email_verified: bool,
}

/// Create a user (no session is started).
#[utoipa::path(post, path = "/v1/apps/{app}/users", operation_id = "createUser", tag = "admin", params(("app" = String, Path)),
    request_body = UserCreate,
    responses((status = 201, body = UserView), (status = 409, description = "user_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    JsonBody(body): JsonBody<UserCreate>,
) -> ApiResult<Response> {
    let profile = Changes::profile(
        Some(&body.email),
        body.username.as_deref(),
        body.phone.as_deref(),
    )?;
    let new = NewUser {
        email: profile.email,
        username: profile.username,
        phone: profile.phone,
        roles: check_roles(&body.roles)?,
        active: body.active.unwrap_or(true),
        expires_at: body.expires_at,
        email_verified: body.email_verified,
        ..NewUser::default()
    };
    let user =
        admin::users::create(state.admin(), &app, new, body.password.as_deref(), &ctx).await?;
    Ok(created(user.view()))
}

async fn find_user(state: &AppState, app: Uuid, id: &str) -> Result<User, ApiError> {
    let id = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("user"))?;
    let client = state.pool.get().await?;
    users::find(&client, app, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// One user.
#[utoipa::path(get, path = "/v1/apps/{app}/users/{id}", operation_id = "getUser", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn get_one(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(find_user(&state, app.id, &id).await?.view()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct UserPatch {
    active: Option<bool>,
    /// RFC 3339; `null` removes the expiry.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
    roles: Option<Vec<String>>,
    email: Option<String>,
    username: Option<String>,
    phone: Option<String>,
    email_verified: Option<bool>,
    /// With `roles`: revoke the user's current tokens, so a removed role stops working now
    /// rather than at the next refresh.
    #[serde(default)]
    revoke_tokens: bool,
}

/// Update a user. Disabling it (or setting an expiry in the past) revokes its tokens;
/// role changes reach tokens at their next refresh, or at once with `revoke_tokens`.
#[utoipa::path(patch, path = "/v1/apps/{app}/users/{id}", operation_id = "updateUser", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)), request_body = UserPatch,
    responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let user = find_user(&state, app.id, &id).await?;
    // Which fields were named, never their values (the log needs only the fact).
    let named: Vec<&str> = [
        ("active", body.active.is_some()),
        ("expires_at", body.expires_at.is_some()),
        ("roles", body.roles.is_some()),
        ("email", body.email.is_some()),
        ("username", body.username.is_some()),
        ("phone", body.phone.is_some()),
        ("email_verified", body.email_verified.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, named)| named.then_some(field))
    .collect();
    let changes = Changes {
        active: body.active,
        expires_at: expiry_patch(body.expires_at)?,
        roles: body.roles.as_deref().map(check_roles).transpose()?,
        email_verified: body.email_verified,
        ..Changes::profile(
            body.email.as_deref(),
            body.username.as_deref(),
            body.phone.as_deref(),
        )?
    };
    let revoke = body.revoke_tokens;
    let admin = state.admin();
    let updated = admin::users::update(admin, &app, &user, &changes, revoke, &named, &ctx).await?;
    Ok(Json(updated.view()))
}

/// Delete a user; every token of it is revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}/users/{id}", operation_id = "deleteUser", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let user = find_user(&state, app.id, &id).await?;
    account::delete_user(&state.pool, &state.publisher, &user, Actor::Admin, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A user's passkeys.
#[utoipa::path(get, path = "/v1/apps/{app}/users/{id}/passkeys", operation_id = "listUserPasskeys", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Vec<PasskeyView>), (status = 404, body = Problem)))]
async fn list_passkeys(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<PasskeyView>>> {
    let user = find_user(&state, app.id, &id).await?;
    Ok(Json(manage::list(state.mfa(), user.id).await?))
}

/// Delete a user's passkey (refused when it is their last way to sign in). Their sessions
/// stay: revoke them with `PATCH …/users/{id}` and `revoke_tokens`.
#[utoipa::path(delete, path = "/v1/apps/{app}/users/{id}/passkeys/{passkey}", operation_id = "deleteUserPasskey", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path), ("passkey" = String, Path)),
    responses((status = 204, description = "deleted"),
              (status = 403, description = "forbidden: the last way to sign in", body = Problem),
              (status = 404, body = Problem)))]
async fn delete_passkey(
    State(state): State<AppState>,
    ctx: Ctx,
    AppAdmin(app): AppAdmin,
    Path((_, id, passkey)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let user = find_user(&state, app.id, &id).await?;
    let passkey = passkey
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("passkey"))?;
    manage::delete(state.mfa(), &app, user.id, passkey, Actor::Admin, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
