//! `/v1/apps/{app}/users`: user administration by the application's API key or its owner
//! (API.md §3 "Application administration").

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use serde_json::{Value, json};

use super::{JsonBody, auth, created};
use crate::domain::Ctx;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::passwords;
use crate::domain::sessions;
use crate::domain::users::{
    self, Changes, NewUser, USER_COLUMNS, User, UserView, canonical, check_roles,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::infra::crypto::random_token;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, patch, delete))
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
#[utoipa::path(get, path = "/v1/apps/{app}/users", tag = "admin", params(("app" = String, Path), ListQuery),
    responses((status = 200, body = UserPage), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<UserPage>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
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
    let email = q.email.as_deref().map(canonical);
    let client = state.pool.get().await?;
    // Ids are UUID v7: ordering by id is creation order, and a cursor is the last id seen.
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE app_id = $1 AND ($2::uuid IS NULL OR id > $2) AND ($3::text IS NULL OR email_canonical = $3)
         ORDER BY id LIMIT $4"
    );
    let rows = client
        .q(&sql, &[&app.id, &cursor, &email, &(limit + 1)])
        .await?;
    let more = rows.len() as i64 > limit;
    let users: Vec<User> = rows
        .iter()
        .take(limit as usize)
        .map(User::from_row)
        .collect();
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
#[utoipa::path(post, path = "/v1/apps/{app}/users", tag = "admin", params(("app" = String, Path)),
    request_body = UserCreate,
    responses((status = 201, body = UserView), (status = 409, description = "user_exists", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<UserCreate>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let profile = Changes::profile(
        Some(&body.email),
        body.username.as_deref(),
        body.phone.as_deref(),
    )?;
    let email = profile.email.clone().unwrap_or_default();
    let password = match &body.password {
        Some(p) => {
            passwords::check_new(p, &app.settings.password_policy, &[&email])?;
            p.clone()
        }
        None => random_token(32),
    };
    let new = NewUser {
        email: profile.email,
        username: profile.username,
        phone: profile.phone,
        password_hash: state.hasher.hash(&password).await?,
        roles: check_roles(&body.roles)?,
        active: body.active.unwrap_or(true),
        expires_at: body.expires_at,
        email_verified: body.email_verified,
        ..NewUser::default()
    };
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let user = users::insert(&tx, app.id, &new).await?;
    audit::record(
        &tx,
        Event::by_admin(app.id, Some(user.id), "user.created", Value::Null, &ctx),
    )
    .await?;
    tx.commit().await?;
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
#[utoipa::path(get, path = "/v1/apps/{app}/users/{id}", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<UserView>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
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
#[utoipa::path(patch, path = "/v1/apps/{app}/users/{id}", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)), request_body = UserPatch,
    responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
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
        expires_at: body
            .expires_at
            .map(|patch| super::patched_time(None, Some(patch)))
            .transpose()?,
        roles: body.roles.as_deref().map(check_roles).transpose()?,
        email_verified: body.email_verified,
        ..Changes::profile(
            body.email.as_deref(),
            body.username.as_deref(),
            body.phone.as_deref(),
        )?
    };
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = users::update(&tx, user.id, &changes).await?;
    let now = crate::infra::clock::at(ctx.now);
    let newly_disabled = updated.disabled(now) && !user.disabled(now);
    let revoke = newly_disabled || (body.revoke_tokens && body.roles.is_some());
    let cutoff = match revoke {
        true => Some(sessions::revoke_user_in(&tx, user.id, ctx.now).await?),
        false => None,
    };
    let details = json!({ "fields": named, "revoked": revoke });
    audit::record(
        &tx,
        Event::by_admin(app.id, Some(user.id), "user.updated", details, &ctx),
    )
    .await?;
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(&state, &[user.id], before).await;
    }
    Ok(Json(updated.view()))
}

/// Delete a user; every token of it is revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}/users/{id}", tag = "admin",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let app = auth::app_admin(&state, &headers, &app, ctx.now).await?;
    let user = find_user(&state, app.id, &id).await?;
    super::me::delete_user(&state, &user, Actor::Admin, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
