//! The HTTP server (hyper 1): `/v1/verify`, health, metrics, and on every other path the
//! answer Envoy's ext_authz HTTP mode and nginx `auth_request` expect: `200` with
//! `x-auth-*` headers, or `401`/`403` with a problem+json body and `WWW-Authenticate`.
//!
//! The path and method the route policy sees are the original request's: nginx passes
//! them as `X-Original-URI` / `X-Original-Method`, Traefik as `X-Forwarded-Uri` /
//! `X-Forwarded-Method`; Envoy sends the original path itself, optionally under the
//! prefix [`EXT_AUTHZ_PREFIX`] (recommended: it keeps an application's own `/healthz` from
//! reaching the verifier's).
//!
//! Handlers are synchronous: the decision is made on the worker thread's stack (the 6 KiB
//! payload scratch never lives in a future) and the response is ready at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portcullis_common::ErrorCode;
use portcullis_common::tls::{self, Conn};
use tokio::sync::Semaphore;

use super::{App, Credentials, Decision, challenge, for_each_identity, problem_body, with_scratch};
use crate::core::{Reject, Verified};
use crate::state::unix_now;

/// Prefix stripped from ext_authz check paths (Envoy `path_prefix: /ext_authz`).
pub const EXT_AUTHZ_PREFIX: &str = "/ext_authz";
/// Largest request head accepted (hyper's buffer; headers beyond it are refused).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Listener limits and shutdown behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// Mutual TLS: checks need a client certificate from the configured CA; probes and
    /// metrics (kubelet, Prometheus) do not.
    pub client_cert_required: bool,
}

/// The paths a caller without a client certificate may reach under mutual TLS.
fn open_without_client_cert(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn client_cert_required() -> Response<Body> {
    let reject = Reject {
        code: ErrorCode::Forbidden,
        reason: "this port requires a client certificate",
    };
    let mut r = json(StatusCode::FORBIDDEN, problem_body(&reject));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains open connections for
/// up to `limits.drain_timeout`.
pub async fn serve(
    mut listener: tls::Listener,
    app: Arc<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(100);
    builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: the kernel backlog holds the rest.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (conn, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let refused = limits.client_cert_required && !conn.client_verified();
        let service = hyper::service::service_fn(move |req: Request<_>| {
            let response = if refused && !open_without_client_cert(req.uri().path()) {
                client_cert_required()
            } else {
                handle(&app, req)
            };
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let conn: Conn = conn;
        let conn = builder
            .serve_connection(TokioIo::new(conn), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// Answers one request.
pub fn handle<B>(app: &App, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path();
    let mut response = match (path, req.method()) {
        ("/healthz", _) => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        ("/readyz", _) => readyz(app),
        ("/metrics", _) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Body::from(app.metrics.render(&app.shared)))
            .unwrap_or_default(),
        ("/v1/verify", &Method::GET | &Method::POST) => verify(app, req.headers()),
        ("/v1/verify", _) => {
            let mut r = json(StatusCode::METHOD_NOT_ALLOWED, String::new());
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            r
        }
        _ => ext_authz(app, &req),
    };
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id(req.headers()));
    app.metrics.latency.record(started.elapsed());
    response
}

const REQUEST_ID: &str = "x-request-id";

/// The caller's `x-request-id` when it is a sane token, else a fresh random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = rand::random::<u128>();
            HeaderValue::from_str(&format!("{id:032x}")).unwrap_or(HeaderValue::from_static("0"))
        })
}

fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        cookies: headers.get(header::COOKIE).map(HeaderValue::as_bytes),
    }
}

fn verify(app: &App, headers: &HeaderMap) -> Response<Body> {
    with_scratch(
        |scratch| match app.authenticate(credentials(headers), scratch) {
            Ok(v) => {
                app.metrics.allowed();
                let mut r = json(
                    StatusCode::OK,
                    format!(r#"{{"valid":true,"claims":{}}}"#, v.payload),
                );
                add_identity(r.headers_mut(), &v);
                r
            }
            Err(reject) => deny(app, &reject),
        },
    )
}

fn ext_authz<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let headers = req.headers();
    let original = |names: [&str; 2]| names.iter().find_map(|n| headers.get(*n)?.to_str().ok());
    let path = original(["x-original-uri", "x-forwarded-uri"]).unwrap_or_else(|| {
        let p = req.uri().path();
        match p.strip_prefix(EXT_AUTHZ_PREFIX) {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            _ => p,
        }
    });
    let method =
        original(["x-original-method", "x-forwarded-method"]).unwrap_or(req.method().as_str());
    with_scratch(
        |scratch| match app.decide(credentials(headers), path, method, scratch) {
            Decision::Allow(v) => {
                app.metrics.allowed();
                let mut r = Response::new(Body::default());
                add_identity(r.headers_mut(), &v);
                r
            }
            Decision::Public => {
                app.metrics.allowed();
                Response::new(Body::default())
            }
            Decision::Deny(reject) => deny(app, &reject),
        },
    )
}

fn add_identity(headers: &mut HeaderMap, verified: &Verified<'_>) {
    for_each_identity(verified, |name, value| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    });
}

fn deny(app: &App, reject: &Reject) -> Response<Body> {
    app.metrics.denied(reject.code);
    tracing::debug!(
        code = reject.code.as_str(),
        reason = reject.reason,
        "denied"
    );
    let status = StatusCode::from_u16(reject.code.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(problem_body(reject)))
        .unwrap_or_default();
    if let Some(c) = challenge(reject) {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn readyz(app: &App) -> Response<Body> {
    let r = app.shared.readiness(unix_now());
    let body = serde_json::json!({
        "ready": r.ready(),
        "keys_loaded": r.keys_loaded,
        "seconds_since_sync": r.since_sync,
        "max_staleness_secs": r.max_staleness,
        "version": app.shared.load().version,
    });
    json(
        if r.ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body.to_string(),
    )
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .unwrap_or_default()
}
