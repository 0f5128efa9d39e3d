//! The HTTP port: `/v1/verify`, Envoy ext_authz HTTP mode and nginx `auth_request`
//! checks, health and metrics ([`answer`] says what each path answers).
//!
//! Each connection starts on the HTTP/1.1 fast path ([`h1`]), which takes the plain
//! requests checks are made of; anything else (HTTP/2, bodies, protocol errors, …) is
//! handed with its unread bytes to hyper for the rest of the connection. Both answer
//! through the same [`answer::answer`].

mod answer;
mod h1;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use portcullis_common::tls::{self, Conn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};

pub use self::answer::EXT_AUTHZ_PREFIX;
use self::answer::{Heads, Reply, Req, answer};
use super::App;

/// Largest request head accepted (headers beyond it are refused).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Listener limits and shutdown behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// Mutual TLS: checks need a client certificate from the configured CA; probes and
    /// metrics (kubelet, Prometheus) do not.
    pub client_cert_required: bool,
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
        .max_headers(h1::MAX_HEADERS);
    builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    let builder = Arc::new(builder);
    // hyper's connections drain through `graceful`, the fast path's through `stop`.
    let graceful = GracefulShutdown::new();
    let (stop, stopping) = watch::channel(false);
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
        let no_client_cert = limits.client_cert_required && !conn.client_verified();
        let connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stopping: stopping.clone(),
            no_client_cert,
        };
        tokio::spawn(async move {
            connection.run(conn).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async {
        graceful.shutdown().await;
        let _ = permits.acquire_many(limits.max_connections as u32).await;
    };
    if tokio::time::timeout(limits.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// What one connection's task holds.
struct Connection {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    stopping: watch::Receiver<bool>,
    no_client_cert: bool,
}

impl Connection {
    async fn run(mut self, mut conn: Conn) {
        let rest = match h1::serve(
            &mut conn,
            &self.app,
            self.no_client_cert,
            &mut self.stopping,
        )
        .await
        {
            Ok(h1::Outcome::HandOff(rest)) => rest.freeze(),
            Ok(h1::Outcome::Closed) | Err(_) => return,
        };
        let (app, no_client_cert) = (self.app, self.no_client_cert);
        let service = hyper::service::service_fn(move |req: Request<_>| {
            std::future::ready(Ok::<_, Infallible>(hyper_answer(
                &app,
                &req,
                no_client_cert,
            )))
        });
        let io = TokioIo::new(Prefixed { prefix: rest, conn });
        let conn = self.builder.serve_connection(io, service).into_owned();
        let _ = self.watcher.watch(conn).await;
    }
}

/// An answer through hyper (HTTP/2, and HTTP/1 requests the fast path hands over).
fn hyper_answer<B>(app: &App, req: &Request<B>, no_client_cert: bool) -> Response<Full<Bytes>> {
    let mut heads = Heads::default();
    for (name, value) in req.headers() {
        heads.see(name.as_str(), value.as_bytes());
    }
    // HTTP/2 names the host in `:authority`, which hyper keeps in the URI.
    if heads.host.is_none() {
        heads.host = req.uri().authority().map(|a| a.as_str().as_bytes());
    }
    let view = Req {
        method: req.method().as_str(),
        path: req.uri().path(),
        heads,
        no_client_cert,
    };
    let mut out = HyperReply(Response::new(Full::default()));
    answer(app, &view, &mut out);
    out.0
}

struct HyperReply(Response<Full<Bytes>>);

impl Reply for HyperReply {
    fn status(&mut self, status: u16) {
        *self.0.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }

    fn header(&mut self, name: &'static str, value: &[u8]) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            self.0
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }

    fn body(&mut self, content_type: &'static str, body: &[u8]) {
        if !content_type.is_empty() {
            self.header("content-type", content_type.as_bytes());
        }
        *self.0.body_mut() = Full::new(Bytes::copy_from_slice(body));
    }
}

/// A connection whose first bytes were already read: they are served first.
struct Prefixed {
    prefix: Bytes,
    conn: Conn,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.conn).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}
