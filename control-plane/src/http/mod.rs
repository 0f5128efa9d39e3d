//! The REST surface (API.md §3): one router whose routes and OpenAPI document come from the
//! same handler annotations (utoipa-axum), so `/openapi.json` cannot miss a route.
//!
//! Handlers are thin: who is calling and the body come from extractors (`extract.rs`); a
//! handler calls one flow or domain function and renders its value, or its error, mapped
//! to problem+json in one place (`error.rs`).

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use self::error::ApiError;
use crate::infra::clock;
use crate::state::AppState;

mod admin;
mod apps;
mod audit;
mod clients;
mod cookies;
pub mod error;
pub mod extract;
mod me;
mod mfa;
mod oauth;
mod ops;
mod owners;
mod pages;
mod passkeys;
mod provider;
mod recovery;
mod roles;
mod users;
mod webhooks;

/// Largest accepted request body (API.md §1).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis control plane",
        description = "Owners, applications, their users, sessions, tokens and signing keys. \
                       Errors are RFC 9457 problem documents with a stable `code`."
    ),
    components(schemas(error::Problem))
)]
struct ApiDoc;

/// The whole application: routes, the OpenAPI document and the middleware.
pub fn router(state: AppState) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(owners::routes())
        .merge(apps::routes())
        .merge(users::routes())
        .merge(me::routes())
        .merge(recovery::routes())
        .merge(mfa::routes())
        .merge(passkeys::routes())
        .merge(provider::routes())
        .merge(clients::routes())
        .merge(oauth::routes())
        .merge(admin::routes())
        .merge(audit::routes())
        .merge(roles::routes())
        .merge(webhooks::routes())
        .merge(ops::routes())
        .split_for_parts();
    let api = serde_json::to_string(&api).unwrap_or_default();
    let x_request_id = HeaderName::from_static("x-request-id");
    // Order, outermost first: the request id is set before anything can answer (so every
    // response, errors included, carries it), tracing sees it, metrics time the handler.
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    api,
                )
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        // Inside the metrics, so a refused cross-site request is counted like any answer.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cookies::csrf_guard,
        ))
        // Outside the CSRF guard and every handler: whatever answers a request with a DPoP
        // proof, a refusal included, hands out a fresh nonce.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            dpop_nonce,
        ))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The matched route's template, never the path itself: a path can carry a
            // token (`/password/reset/{token}`).
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("http", method = %req.method(), route = %route, request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// RFC 9449 §8: every answer to a request that carried a DPoP proof to an application's
/// route has `DPoP-Nonce`, a nonce of that application good for five minutes, so a client
/// always holds a current one (and one asked to `use_dpop_nonce` has it at once).
async fn dpop_nonce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let app = request
        .headers()
        .contains_key(extract::DPOP)
        .then(|| {
            let rest = request.uri().path().strip_prefix("/v1/apps/")?;
            rest.split('/').next()?.parse::<uuid::Uuid>().ok()
        })
        .flatten();
    let mut response = next.run(request).await;
    if let Some(app) = app {
        let nonce = crate::domain::dpop::nonce(&state.secrets, app, clock::unix_now());
        if let Ok(value) = HeaderValue::from_str(&nonce) {
            response.headers_mut().insert(DPOP_NONCE, value);
        }
    }
    response
}

/// The response header carrying a DPoP nonce.
const DPOP_NONCE: &str = "dpop-nonce";

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("portcullis_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("portcullis_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SignInOptions {
    /// Also set the tokens as `HttpOnly; Secure; SameSite=Lax` cookies.
    #[serde(default)]
    pub set_cookie: bool,
}

/// A client's device id: a JSON integer or string (the seed API documents an integer, most
/// clients send a string). Kept as text, an integer as its decimal digits: `GET /sessions`
/// returns `7` as `"7"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(pub String);

impl DeviceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DeviceId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<DeviceId, E> {
                Ok(DeviceId(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<DeviceId, E> {
                Ok(DeviceId(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<DeviceId, E> {
                Ok(DeviceId(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl utoipa::PartialSchema for DeviceId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(128)),
            )
            .description(Some(
                "An integer or a string, kept as text (`GET /sessions` returns 7 as \"7\")",
            ))
            .into()
    }
}

impl ToSchema for DeviceId {}

/// For PATCH bodies: tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(super) fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A PATCH of an RFC 3339 `expires_at`: absent (`None`) keeps it, `null` clears it.
pub(super) fn expiry_patch(
    patch: Option<Option<String>>,
) -> Result<Option<Option<time::OffsetDateTime>>, ApiError> {
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::bad_request("expires_at must be an RFC 3339 time"))
    };
    patch
        .map(|p| p.as_deref().map(parse).transpose())
        .transpose()
}

/// `201 Created` with a JSON body.
pub fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}
