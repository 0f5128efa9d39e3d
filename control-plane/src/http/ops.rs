//! Operator and infrastructure routes: health, readiness, metrics, the published keys and
//! discovery document, and key rotation (API.md §2, §3 "Operator").

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Operator};
use crate::domain::Ctx;
use crate::domain::keys::KeyInfo;
use crate::flows::maintenance;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::infra::store;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(jwks))
        .routes(routes!(discovery))
        .routes(routes!(rotate))
        .routes(routes!(keys))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "ops", responses((status = 200, description = "up")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    ready: bool,
    postgres: bool,
    redis: bool,
}

/// PostgreSQL and Redis are reachable.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let (postgres, redis) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), store::ping(&state.pool)),
        tokio::time::timeout(Duration::from_secs(2), state.publisher.ping()),
    );
    let postgres = postgres.unwrap_or(false);
    let redis = redis.unwrap_or(false);
    let ready = postgres && redis;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            postgres,
            redis,
        }),
    )
        .into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "ops", responses((status = 200, description = "Prometheus text")))]
async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::infra::metrics::render(),
    )
        .into_response()
}

/// The public signing keys (RFC 7517): next, active and retired.
#[utoipa::path(get, path = "/.well-known/jwks.json", operation_id = "getJwks", tag = "keys",
    responses((status = 200, description = "JWK Set"), (status = 503, body = Problem)))]
async fn jwks(State(state): State<AppState>) -> ApiResult<Response> {
    let keys = state.keys.current().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            // Short enough that a verifier polling this URL sees a rotation's next key long
            // before it signs.
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        keys.jwks_json.clone(),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Discovery {
    issuer: String,
    jwks_uri: String,
    id_token_signing_alg_values_supported: [&'static str; 1],
}

/// OpenID Connect discovery (the parts that describe the access tokens).
#[utoipa::path(get, path = "/.well-known/openid-configuration", operation_id = "getOpenidConfiguration", tag = "keys",
    responses((status = 200, body = Discovery)))]
async fn discovery(State(state): State<AppState>) -> Json<Discovery> {
    let issuer = state.config.issuer.clone();
    Json(Discovery {
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        issuer,
        id_token_signing_alg_values_supported: ["EdDSA"],
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub(super) struct Rotate {
    /// Withdraw the active key now (it may have leaked): it leaves the published set and
    /// every token it signed is refused; the next key signs at once.
    emergency: bool,
    /// Why, for the audit log (required with `emergency`).
    reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Rotated {
    /// The key that signs from now on (the previous `next`).
    kid: String,
}

/// Rotate. Planned: the next key (already published) becomes active, the active one
/// retires (published until its tokens expire), a new next key is published; `429` while
/// the next key has been published for less than the publish lead. Emergency: the active
/// key is withdrawn at once (unpublished, its tokens refused), the next key signs at once.
#[utoipa::path(post, path = "/v1/admin/keys/rotate", operation_id = "rotateSigningKey", tag = "admin",
    request_body = Rotate,
    responses((status = 200, body = Rotated), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 429, description = "planned, inside the publish lead", body = Problem)))]
async fn rotate(
    State(state): State<AppState>,
    ctx: Ctx,
    _: Operator,
    JsonBody(body): JsonBody<Rotate>,
) -> ApiResult<Json<Rotated>> {
    let reason = body.reason.as_deref().map(str::trim);
    let reason = match (body.emergency, reason) {
        (false, _) => None,
        (true, Some(r))
            if (1..=500).contains(&r.chars().count()) && !r.contains(char::is_control) =>
        {
            Some(r)
        }
        (true, _) => {
            return Err(ApiError::bad_request(
                "an emergency rotation needs a reason of 1..=500 characters",
            ));
        }
    };
    let (pool, keys, publisher) = (&state.pool, &state.keys, &state.publisher);
    let kid = maintenance::rotate_keys(pool, keys, publisher, reason, &ctx).await?;
    Ok(Json(Rotated { kid }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KeyList {
    keys: Vec<KeyInfo>,
}

/// Every signing key and its state.
#[utoipa::path(get, path = "/v1/admin/keys", operation_id = "listSigningKeys", tag = "admin",
    responses((status = 200, body = KeyList), (status = 401, body = Problem)))]
async fn keys(State(state): State<AppState>, _: Operator) -> ApiResult<Json<KeyList>> {
    Ok(Json(KeyList {
        keys: state.keys.list().await?,
    }))
}
