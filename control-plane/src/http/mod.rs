//! The REST surface (API.md §3): one router whose routes and OpenAPI document come from the
//! same handler annotations (utoipa-axum), so `/openapi.json` cannot miss a route.
//!
//! Handlers are thin: parse and authorize here, call one domain function, return its value
//! or its [`ApiError`] (mapped to problem+json in one place, `error.rs`).

use std::net::IpAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::domain::Ctx;
use crate::error::ApiError;
use crate::infra::clock;
use crate::state::AppState;

mod admin;
mod apps;
mod audit;
mod auth;
mod cookies;
mod me;
mod mfa;
mod oauth;
mod ops;
mod owners;
mod pages;
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
    components(schemas(crate::error::Problem))
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

/// A JSON body: at most [`MAX_BODY`] bytes (`413 payload_too_large`), well-formed and of the
/// right shape (`400 invalid_request`). An empty body reads as `{}`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_or_absent = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 64 KiB")
            } else {
                ApiError::bad_request("the body could not be read")
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if !json_or_absent {
            return Err(ApiError::bad_request(
                "Content-Type must be application/json",
            ));
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", json_error(&e))))
    }
}

/// serde's message without the input echoed (it could be a password).
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            // "invalid type: string \"hunter2\", expected ..." would echo the value.
            match msg.split_once(", expected") {
                Some((_, expected)) if msg.starts_with("invalid") => {
                    format!("wrong type, expected{expected}")
                }
                _ => msg,
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<crate::Peer>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.0.ip());
        Ok(Ctx {
            ip: client_ip(peer, &parts.headers, &state.config.trusted_proxies),
            user_agent: parts
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(256).collect()),
            // Set (or echoed) by `SetRequestIdLayer` before any handler runs.
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|id| id.chars().take(128).collect()),
            now: clock::unix_now(),
        })
    }
}

/// The connection's address, unless it is a trusted proxy: then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}

/// For PATCH bodies: tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(super) fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Applies a PATCH of an RFC 3339 `expires_at`: absent keeps `current`, `null` clears it.
pub(super) fn patched_time(
    current: Option<time::OffsetDateTime>,
    patch: Option<Option<String>>,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    match patch {
        None => Ok(current),
        Some(None) => Ok(None),
        Some(Some(s)) => {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map(Some)
                .map_err(|_| ApiError::bad_request("expires_at must be an RFC 3339 time"))
        }
    }
}

/// `201 Created` with a JSON body.
pub fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.9".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        assert_eq!(client_ip(direct, &headers, &trusted), direct);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn json_errors_do_not_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[allow(dead_code)]
            password: u32,
        }
        let e = serde_json::from_str::<P>(r#"{"password":"hunter2secret"}"#).unwrap_err();
        assert!(!json_error(&e).contains("hunter2"), "{}", json_error(&e));
    }
}
