//! `/v1/owners`: the people who own applications (API.md §3, seed auth-mysql).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::created;
use super::extract::{JsonBody, Owner};
use crate::domain::Ctx;
use crate::domain::owners::OwnerView;
use crate::flows::admin::owners::{self, OWNER_TOKEN_TTL, Registration, Update};
use crate::http::error::{ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(login))
        .routes(routes!(me_get, me_patch, me_delete))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewOwner {
    email: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
}

/// Register an owner.
#[utoipa::path(post, path = "/v1/owners", operation_id = "registerOwner", tag = "owners", request_body = NewOwner,
    responses((status = 201, body = OwnerView), (status = 409, description = "owner_exists", body = Problem),
              (status = 422, description = "weak_password", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<NewOwner>,
) -> ApiResult<Response> {
    let new = Registration {
        email: &body.email,
        password: &body.password,
        first_name: &body.first_name,
        last_name: &body.last_name,
    };
    Ok(created(owners::register(state.admin(), &new, &ctx).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct OwnerLogin {
    email: String,
    password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OwnerToken {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
}

/// Sign in as an owner.
#[utoipa::path(post, path = "/v1/owners/login", operation_id = "loginOwner", tag = "owners", request_body = OwnerLogin,
    responses((status = 200, body = OwnerToken), (status = 401, description = "invalid_credentials", body = Problem)))]
async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<OwnerLogin>,
) -> ApiResult<Json<OwnerToken>> {
    let token = owners::login(state.admin(), &body.email, &body.password, &ctx).await?;
    Ok(Json(OwnerToken {
        access_token: token,
        token_type: "Bearer",
        expires_in: OWNER_TOKEN_TTL,
    }))
}

/// The signed-in owner's profile.
#[utoipa::path(get, path = "/v1/owners/me", operation_id = "getOwner", tag = "owners",
    responses((status = 200, body = OwnerView), (status = 401, body = Problem)))]
async fn me_get(State(state): State<AppState>, Owner(id): Owner) -> ApiResult<Json<OwnerView>> {
    Ok(Json(owners::profile(state.admin(), id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct OwnerPatch {
    /// Required to change `email` or `password`.
    current_password: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

/// Update the signed-in owner. A new password revokes the owner's other tokens.
#[utoipa::path(patch, path = "/v1/owners/me", operation_id = "updateOwner", tag = "owners", request_body = OwnerPatch,
    responses((status = 200, body = OwnerView), (status = 409, description = "owner_exists", body = Problem)))]
async fn me_patch(
    State(state): State<AppState>,
    ctx: Ctx,
    Owner(id): Owner,
    JsonBody(body): JsonBody<OwnerPatch>,
) -> ApiResult<Json<OwnerView>> {
    let update = Update {
        current_password: body.current_password.as_deref(),
        first_name: body.first_name.as_deref(),
        last_name: body.last_name.as_deref(),
        email: body.email.as_deref(),
        password: body.password.as_deref(),
    };
    Ok(Json(
        owners::update(state.admin(), id, &update, &ctx).await?,
    ))
}

/// Delete the signed-in owner with every application, user and session below it.
#[utoipa::path(delete, path = "/v1/owners/me", operation_id = "deleteOwner", tag = "owners",
    responses((status = 204, description = "deleted"), (status = 401, body = Problem)))]
async fn me_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Owner(id): Owner,
) -> ApiResult<Response> {
    owners::delete(state.admin(), id, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
