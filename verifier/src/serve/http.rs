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
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portcullis_common::ErrorCode;
use portcullis_common::tls::{self, Conn};
use tokio::sync::Semaphore;

use super::{
    App, Credentials, Decision, IDENTITY_HEADERS, challenge, identity_headers, problem_body,
    with_scratch,
};
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

/// The request headers the verifier acts on, found in one pass over the header map
/// (instead of a hashed lookup per name).
#[derive(Default)]
struct Heads<'r> {
    authorization: Option<&'r HeaderValue>,
    cookie: Option<&'r HeaderValue>,
    request_id: Option<&'r HeaderValue>,
    /// `X-Original-URI` (nginx), else `X-Forwarded-Uri` (Traefik).
    original_uri: Option<&'r HeaderValue>,
    forwarded_uri: Option<&'r HeaderValue>,
    original_method: Option<&'r HeaderValue>,
    forwarded_method: Option<&'r HeaderValue>,
}

impl<'r> Heads<'r> {
    fn scan(headers: &'r HeaderMap) -> Self {
        let mut h = Heads::default();
        // The first of each, as `HeaderMap::get` would return.
        let first = |slot: &mut Option<&'r HeaderValue>, v| {
            slot.get_or_insert(v);
        };
        for (name, value) in headers {
            if *name == header::AUTHORIZATION {
                first(&mut h.authorization, value);
            } else if *name == header::COOKIE {
                first(&mut h.cookie, value);
            } else {
                match name.as_str() {
                    "x-request-id" => first(&mut h.request_id, value),
                    "x-original-uri" => first(&mut h.original_uri, value),
                    "x-forwarded-uri" => first(&mut h.forwarded_uri, value),
                    "x-original-method" => first(&mut h.original_method, value),
                    "x-forwarded-method" => first(&mut h.forwarded_method, value),
                    _ => {}
                }
            }
        }
        h
    }

    fn credentials(&self) -> Credentials<'r> {
        Credentials {
            authorization: self.authorization.map(HeaderValue::as_bytes),
            cookies: self.cookie.map(HeaderValue::as_bytes),
        }
    }
}

/// Answers one request.
pub fn handle<B>(app: &App, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let heads = Heads::scan(req.headers());
    let path = req.uri().path();
    let mut response = match (path, req.method()) {
        ("/healthz", _) => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        ("/readyz", _) => readyz(app),
        ("/metrics", _) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Body::from(app.metrics.render(&app.shared)))
            .unwrap_or_default(),
        ("/v1/verify", &Method::GET | &Method::POST) => verify(app, &heads),
        ("/v1/verify", _) => {
            let mut r = json(StatusCode::METHOD_NOT_ALLOWED, String::new());
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            r
        }
        _ => ext_authz(app, &req, &heads),
    };
    let headers = response.headers_mut();
    if !headers.contains_key(REQUEST_ID) {
        headers.insert(REQUEST_ID, request_id(heads.request_id));
    }
    app.metrics.latency.record(started.elapsed());
    response
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` when it is a sane token, else a fresh random one.
fn request_id(theirs: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = theirs.filter(|v| {
        (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    }) {
        return v.clone();
    }
    let mut id = [0u8; 32];
    hex(rand::random::<u128>(), &mut id);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// `value` as 32 lower-case hex digits.
fn hex(value: u128, out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
}

fn verify(app: &App, heads: &Heads<'_>) -> Response<Body> {
    with_scratch(
        |scratch| match app.authenticate(heads.credentials(), scratch, true) {
            Ok(v) => {
                app.metrics.allowed();
                let mut r = json(
                    StatusCode::OK,
                    format!(r#"{{"valid":true,"claims":{}}}"#, v.payload.unwrap_or("{}")),
                );
                add_identity(r.headers_mut(), &v, heads.request_id);
                r
            }
            Err(reject) => deny(app, &reject),
        },
    )
}

fn ext_authz<B>(app: &App, req: &Request<B>, heads: &Heads<'_>) -> Response<Body> {
    fn text(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    let path = text(heads.original_uri.or(heads.forwarded_uri)).unwrap_or_else(|| {
        let p = req.uri().path();
        match p.strip_prefix(EXT_AUTHZ_PREFIX) {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            _ => p,
        }
    });
    let method =
        text(heads.original_method.or(heads.forwarded_method)).unwrap_or(req.method().as_str());
    with_scratch(
        |scratch| match app.decide(heads.credentials(), path, method, scratch) {
            Decision::Allow(v) => {
                app.metrics.allowed();
                let mut r = Response::new(Body::default());
                add_identity(r.headers_mut(), &v, heads.request_id);
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

/// [`IDENTITY_HEADERS`] as header names, built at compile time.
const IDENTITY_NAMES: [HeaderName; 5] = [
    HeaderName::from_static(IDENTITY_HEADERS[0]),
    HeaderName::from_static(IDENTITY_HEADERS[1]),
    HeaderName::from_static(IDENTITY_HEADERS[2]),
    HeaderName::from_static(IDENTITY_HEADERS[3]),
    HeaderName::from_static(IDENTITY_HEADERS[4]),
];

/// The `x-auth-*` headers (and `x-request-id`) of an allowed request. Every value is a
/// slice of one buffer: one allocation per answer, not one per header.
fn add_identity(headers: &mut HeaderMap, verified: &Verified<'_>, theirs: Option<&HeaderValue>) {
    let values = identity_headers(verified);
    let mut buf = bytes::BytesMut::with_capacity(values.iter().flatten().map(|v| v.len()).sum());
    for v in values.iter().flatten() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    headers.reserve(IDENTITY_NAMES.len() + 1);
    let mut at = 0;
    for (name, value) in IDENTITY_NAMES.iter().zip(values) {
        let Some(value) = value else { continue };
        let slice = buf.slice(at..at + value.len());
        at += value.len();
        // Values that are not valid header text are dropped.
        if let Ok(v) = HeaderValue::from_maybe_shared(slice) {
            headers.insert(name.clone(), v);
        }
    }
    headers.insert(REQUEST_ID, request_id(theirs));
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
