//! `/v1/owners`: the people who own applications (API.md §3, seed auth-mysql).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use portcullis_common::token::Amr;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JsonBody, auth, created};
use crate::domain::Ctx;
use crate::domain::passwords;
use crate::domain::sessions;
use crate::domain::tokens::{self, Grant, OWNER_AUDIENCE};
use crate::domain::users::{canonical, check_email};
use crate::error::{ApiError, ApiResult, Problem};
use crate::infra::store::Prepared as _;
use crate::infra::store::is_unique_violation;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(login))
        .routes(routes!(me_get, me_patch, me_delete))
}

/// Owner access tokens live this long; owners have no refresh tokens.
const OWNER_TOKEN_TTL: i64 = 3600;

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewOwner {
    email: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OwnerView {
    id: Uuid,
    email: String,
    first_name: String,
    last_name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl OwnerView {
    fn from_row(r: &Row) -> Self {
        Self {
            id: r.get(0),
            email: r.get(1),
            first_name: r.get(2),
            last_name: r.get(3),
            created_at: r.get(4),
        }
    }
}

const OWNER_COLUMNS: &str = "id, email, first_name, last_name, created_at";

fn name(value: &str, field: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} must be at most 100 characters"
        )));
    }
    Ok(value.to_owned())
}

fn owner_exists(e: tokio_postgres::Error) -> ApiError {
    if is_unique_violation(&e, None) {
        ApiError::new(
            ErrorCode::OwnerExists,
            "an owner with this email already exists",
        )
    } else {
        e.into()
    }
}

/// Register an owner.
#[utoipa::path(post, path = "/v1/owners", tag = "owners", request_body = NewOwner,
    responses((status = 201, body = OwnerView), (status = 409, description = "owner_exists", body = Problem),
              (status = 422, description = "weak_password", body = Problem)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<NewOwner>,
) -> ApiResult<Response> {
    let email = check_email(&body.email)?;
    let (first, last) = (
        name(&body.first_name, "first_name")?,
        name(&body.last_name, "last_name")?,
    );
    passwords::check_new(&body.password, &Default::default(), &[&email])?;
    state
        .limiter
        .hit(
            crate::infra::limits::Scope::Ip {
                app: "owners",
                route: "register",
                ip: ctx.ip,
            },
            30,
        )
        .await?;
    let hash = state.hasher.hash(&body.password).await?;
    let client = state.pool.get().await?;
    let sql = format!(
        "INSERT INTO owners (id, email, email_canonical, password_hash, first_name, last_name)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {OWNER_COLUMNS}"
    );
    let row = client
        .q_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &email,
                &canonical(&email),
                &hash,
                &first,
                &last,
            ],
        )
        .await
        .map_err(owner_exists)?;
    Ok(created(OwnerView::from_row(&row)))
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
#[utoipa::path(post, path = "/v1/owners/login", tag = "owners", request_body = OwnerLogin,
    responses((status = 200, body = OwnerToken), (status = 401, description = "invalid_credentials", body = Problem)))]
async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<OwnerLogin>,
) -> ApiResult<Json<OwnerToken>> {
    passwords::check_shape(&body.password).map_err(|_| ApiError::invalid_credentials())?;
    let account = canonical(&body.email);
    state
        .limiter
        .hit(
            crate::infra::limits::Scope::Ip {
                app: "owners",
                route: "login",
                ip: ctx.ip,
            },
            60,
        )
        .await?;
    let failures = crate::infra::limits::Scope::AccountFailures {
        app: "owners",
        account: &account,
    };
    state.limiter.hit(failures, 100).await?;
    let client = state.pool.get().await?;
    let row = client
        .q_opt(
            "SELECT id, password_hash,
                 (SELECT before FROM revocations WHERE kind = 'user' AND subject = owners.id::text)
             FROM owners WHERE email_canonical = $1",
            &[&account],
        )
        .await?;
    drop(client);
    let hash: Option<String> = row.as_ref().map(|r| r.get(1));
    let verified = state.hasher.verify(hash.as_deref(), &body.password).await?;
    let (Some(row), true) = (row, verified) else {
        return Err(ApiError::invalid_credentials());
    };
    state.limiter.forgive(failures).await;
    let (token, _) = tokens::mint(
        &state,
        Grant {
            audience: OWNER_AUDIENCE,
            sub: row.get(0),
            sid: Uuid::now_v7(),
            roles: Vec::new(),
            scope: String::new(),
            amr: vec![Amr::Pwd],
            guest: false,
            ttl: OWNER_TOKEN_TTL,
        },
        // After a password change's cutoff, even within the same second.
        row.get::<_, Option<i64>>(2)
            .map_or(ctx.now, |cutoff| ctx.now.max(cutoff + 1)),
    )
    .await?;
    Ok(Json(OwnerToken {
        access_token: token,
        token_type: "Bearer",
        expires_in: OWNER_TOKEN_TTL,
    }))
}

/// The signed-in owner's profile.
#[utoipa::path(get, path = "/v1/owners/me", tag = "owners",
    responses((status = 200, body = OwnerView), (status = 401, body = Problem)))]
async fn me_get(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
) -> ApiResult<Json<OwnerView>> {
    let id = auth::owner(&state, &headers, ctx.now).await?;
    let client = state.pool.get().await?;
    let sql = format!("SELECT {OWNER_COLUMNS} FROM owners WHERE id = $1");
    let row = client
        .q_opt(&sql, &[&id])
        .await?
        .ok_or_else(|| ApiError::unauthenticated(ErrorCode::TokenRevoked))?;
    Ok(Json(OwnerView::from_row(&row)))
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
#[utoipa::path(patch, path = "/v1/owners/me", tag = "owners", request_body = OwnerPatch,
    responses((status = 200, body = OwnerView), (status = 409, description = "owner_exists", body = Problem)))]
async fn me_patch(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    JsonBody(body): JsonBody<OwnerPatch>,
) -> ApiResult<Json<OwnerView>> {
    let id = auth::owner(&state, &headers, ctx.now).await?;
    let email = body.email.as_deref().map(check_email).transpose()?;
    let first = body
        .first_name
        .as_deref()
        .map(|v| name(v, "first_name"))
        .transpose()?;
    let last = body
        .last_name
        .as_deref()
        .map(|v| name(v, "last_name"))
        .transpose()?;
    if email.is_some() || body.password.is_some() {
        // A stolen token alone must not take the account over (ASVS 5 §6.2.3).
        let current = body.current_password.as_deref().unwrap_or("");
        let client = state.pool.get().await?;
        let row = client
            .q_opt("SELECT password_hash FROM owners WHERE id = $1", &[&id])
            .await?;
        drop(client);
        let stored: Option<String> = row.map(|r| r.get(0));
        let shape_ok = passwords::check_shape(current).is_ok();
        if !(shape_ok && state.hasher.verify(stored.as_deref(), current).await?) {
            return Err(ApiError::invalid_credentials());
        }
    }
    let hash = match &body.password {
        Some(p) => {
            passwords::check_new(p, &Default::default(), &[email.as_deref().unwrap_or("")])?;
            Some(state.hasher.hash(p).await?)
        }
        None => None,
    };
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let sql = format!(
        "UPDATE owners SET first_name = COALESCE($2, first_name), last_name = COALESCE($3, last_name),
             email = COALESCE($4, email), email_canonical = COALESCE($5, email_canonical),
             password_hash = COALESCE($6, password_hash)
         WHERE id = $1 RETURNING {OWNER_COLUMNS}"
    );
    let row = tx
        .q_opt(
            &sql,
            &[
                &id,
                &first,
                &last,
                &email,
                &email.as_deref().map(canonical),
                &hash,
            ],
        )
        .await
        .map_err(owner_exists)?
        .ok_or_else(|| ApiError::unauthenticated(ErrorCode::TokenRevoked))?;
    // Every owner token issued until now stops working, this request's included: the
    // owner signs in again with the new password.
    let cutoff = match hash {
        Some(_) => Some(sessions::revoke_user_in(&tx, id, ctx.now).await?),
        None => None,
    };
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(&state, &[id], before).await;
    }
    Ok(Json(OwnerView::from_row(&row)))
}

/// Delete the signed-in owner with every application, user and session below it.
#[utoipa::path(delete, path = "/v1/owners/me", tag = "owners",
    responses((status = 204, description = "deleted"), (status = 401, body = Problem)))]
async fn me_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = auth::owner(&state, &headers, ctx.now).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let (mut users, before) =
        sessions::revoke_app_users_in(&tx, sessions::AppsOf::Owner(id), ctx.now).await?;
    let before = before.max(sessions::revoke_user_in(&tx, id, ctx.now).await?);
    users.push(id);
    tx.exec("DELETE FROM owners WHERE id = $1", &[&id]).await?;
    tx.commit().await?;
    drop(client);
    state.apps.forget_all();
    sessions::publish_users(&state, &users, before).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
