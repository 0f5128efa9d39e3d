//! gRPC ext_authz v3 (`envoy.service.auth.v3.Authorization/Check`), for Envoy's and
//! Istio's gRPC external authorization. Same decision and `x-auth-*` headers as HTTP;
//! denials carry the HTTP status (401/403/503) explicitly in `DeniedHttpResponse`, plus
//! the matching gRPC status (UNAUTHENTICATED / PERMISSION_DENIED / UNAVAILABLE).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use std::pin::Pin;
use std::task::{Context, Poll};

use portcullis_common::tls::{self, Conn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::core::dpop::Target;

use super::{
    App, Credentials, Decision, IDENTITY_HEADERS, challenge, identity_headers, problem_body,
    with_scratch,
};

/// The Authorization service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    app: Arc<App>,
}

impl ExtAuthz {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    /// The decision for one check request (synchronous: scratch stays on the stack).
    pub fn check_sync(&self, request: &CheckRequest) -> CheckResponse {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let empty = HashMap::new();
        let headers = http.map_or(&empty, |h| &h.headers);
        // Envoy lower-cases header names in `headers`; with `encode_raw_headers` it sends
        // `header_map` instead.
        let raw = |name: &str| -> Option<&[u8]> {
            if let Some(v) = headers.get(name) {
                return Some(v.as_bytes());
            }
            let map = http?.header_map.as_ref()?;
            map.headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| {
                    if h.raw_value.is_empty() {
                        h.value.as_bytes()
                    } else {
                        h.raw_value.as_slice()
                    }
                })
        };
        // Envoy joins a request's cookie fields into one value, and the fields of any
        // other repeated header with commas, which no DPoP proof contains.
        let cookie = raw("cookie");
        let dpop = raw("dpop");
        let creds = Credentials {
            authorization: raw("authorization"),
            cookies: cookie.as_slice(),
            dpop,
            dpop_fields: dpop.map_or(0, |p| 1 + p.iter().filter(|b| **b == b',').count()),
        };
        let request = Target {
            method: http.map_or("GET", |h| h.method.as_str()),
            scheme: http
                .map(|h| h.scheme.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("https"),
            host: http.map_or("", |h| h.host.as_str()),
            path: http.map_or("/", |h| h.path.as_str()),
        };
        let app = &self.app;
        with_scratch(|scratch| match app.decide(creds, &request, scratch) {
            Decision::Allow(v) => {
                app.metrics.allowed();
                let mut ok = OkHttpResponseBuilder::new();
                for (name, value) in IDENTITY_HEADERS.iter().zip(identity_headers(&v)) {
                    if let Some(value) = value {
                        ok.add_header(*name, value, None, true);
                    }
                }
                let mut response = CheckResponse::with_status(tonic::Status::ok(""));
                response.set_http_response(ok);
                response
            }
            Decision::Public => {
                app.metrics.allowed();
                let mut response = CheckResponse::with_status(tonic::Status::ok(""));
                response.set_http_response(OkHttpResponseBuilder::new());
                response
            }
            Decision::Deny(reject) => {
                app.metrics.denied(reject.code);
                let (grpc, http_status) = match reject.code.status() {
                    403 => (
                        tonic::Status::permission_denied(reject.code.as_str()),
                        HttpStatusCode::Forbidden,
                    ),
                    503 => (
                        tonic::Status::unavailable(reject.code.as_str()),
                        HttpStatusCode::ServiceUnavailable,
                    ),
                    _ => (
                        tonic::Status::unauthenticated(reject.code.as_str()),
                        HttpStatusCode::Unauthorized,
                    ),
                };
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(http_status);
                denied.add_header("content-type", "application/problem+json", None, false);
                if let Some(c) = challenge(&reject) {
                    denied.add_header("www-authenticate", c, None, false);
                }
                denied.set_body(problem_body(&reject));
                let mut response = CheckResponse::with_status(grpc);
                response.set_http_response(denied);
                response
            }
        })
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        let response = self.check_sync(request.get_ref());
        self.app.metrics.latency.record(started.elapsed());
        Ok(tonic::Response::new(response))
    }
}

/// A connection as tonic takes it (its `Connected` trait on the shared stream type).
struct GrpcConn(Conn);

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves gRPC ext_authz on `listener` until `shutdown` resolves. Under mutual TLS the
/// listener's handshake already refused callers without a valid client certificate.
pub async fn serve(
    listener: tls::Listener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // tonic retries a failed accept at once: pause after one (EMFILE and the like).
    let incoming = futures_util::stream::unfold(listener, |mut listener| async move {
        let next = listener.accept().await.map(|(conn, _)| GrpcConn(conn));
        if next.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Some((next, listener))
    });
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(ExtAuthz::new(app)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
