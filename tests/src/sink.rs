//! A loopback HTTP sink for tests of outgoing HTTP calls (webhooks, SMS providers).
//!
//! [`HttpSink`] is an HTTP/1.1 server inside the test process that records every
//! request it receives and answers them all with one status the test chooses (200 by
//! default, body `{}`), so a test can check what was sent and simulate a failing
//! provider. It can be stopped and restarted on the same port to simulate an outage
//! (connections refused meanwhile); the recorded requests survive.
//!
//! It serves from a thread of its own with its own Tokio runtime, for two reasons: it
//! keeps answering while the test's runtime is busy or blocked, and [`HttpSink::stop`]
//! closes the port before it returns (ending that thread drops its runtime, and with it
//! the listener and every open connection). No TLS, no HTTP/2.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::retry;

/// Poll interval of [`HttpSink::wait_for`].
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One request received by an [`HttpSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The path with the query string, as sent (`/hook?attempt=1`).
    pub path: String,
    /// In the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// Reads a whole request into a record (the body collected).
    pub(crate) async fn read(request: Request<Incoming>) -> Result<Self, hyper::Error> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Self {
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.to_string(), |path| path.as_str().to_owned()),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: body.to_vec(),
        })
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A recording HTTP/1.1 server on 127.0.0.1; dropping it stops it.
#[derive(Debug)]
pub struct HttpSink {
    addr: SocketAddr,
    state: Arc<State>,
    server: Option<Server>,
}

/// What the serving thread shares with the [`HttpSink`].
#[derive(Debug)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    status: AtomicU16,
    body: Mutex<Bytes>,
}

/// The serving thread and the way to end it.
#[derive(Debug)]
struct Server {
    shutdown: oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl HttpSink {
    /// Binds an ephemeral port on 127.0.0.1 and starts serving it; it accepts
    /// connections as soon as this returns.
    ///
    /// # Errors
    ///
    /// Fails when the port cannot be bound or the serving thread cannot start.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 for the HTTP sink")?;
        let addr = listener
            .local_addr()
            .context("reading the HTTP sink's address")?;
        let mut sink = Self {
            addr,
            state: Arc::new(State {
                requests: Mutex::new(Vec::new()),
                status: AtomicU16::new(200),
                body: Mutex::new(Bytes::from_static(b"{}")),
            }),
            server: None,
        };
        sink.serve(listener)?;
        Ok(sink)
    }

    /// `http://127.0.0.1:PORT{path}`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The address; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in the order they were complete.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock_requests().clone()
    }

    /// Answers every following request with the JSON `body` (default `{}`), e.g. a
    /// provider's verdict.
    pub fn set_body(&self, body: &Value) {
        *self
            .state
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Bytes::from(body.to_string());
    }

    /// Answers every following request with `status` (the body stays as set). Requests
    /// are recorded whatever the status.
    ///
    /// # Panics
    ///
    /// Panics when `status` is not a final status (200 to 599).
    pub fn set_status(&self, status: u16) {
        assert!(
            (200..=599).contains(&status),
            "HttpSink::set_status({status}): not a final HTTP status"
        );
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Polls [`requests`](Self::requests) every 50 ms until there are at least `count`,
    /// and returns them all.
    ///
    /// # Panics
    ///
    /// Panics when `limit` passes first, listing the requests received so far.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            if start.elapsed() >= limit {
                let seen: Vec<String> = requests
                    .iter()
                    .map(|request| format!("{} {}", request.method, request.path))
                    .collect();
                panic!(
                    "expected at least {count} request(s) at {} within {limit:?}, got {}: {seen:?}",
                    self.url(""),
                    requests.len()
                );
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }

    /// Stops serving and closes the port and every open connection before returning:
    /// connections are refused afterwards. Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            let _ = server.thread.join();
        }
    }

    /// Stops the sink if it runs, then serves the same port again, keeping the recorded
    /// requests and the status.
    ///
    /// # Errors
    ///
    /// Fails when the port cannot be bound again (another process took it meanwhile).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let what = format!("HTTP sink did not restart on {}", self.addr);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            let listener =
                TcpListener::bind(self.addr).with_context(|| format!("binding {}", self.addr))?;
            self.serve(listener)
        })
    }

    /// Serves `listener` from a new thread.
    fn serve(&mut self, listener: TcpListener) -> Result<()> {
        listener
            .set_nonblocking(true)
            .context("making the HTTP sink's listener non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the HTTP sink's runtime")?;
        let listener = {
            // Registers the socket with the sink's runtime, not the caller's.
            let _runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .context("registering the HTTP sink's listener")?
        };
        let (shutdown, stopped) = oneshot::channel();
        let state = Arc::clone(&self.state);
        let thread = thread::Builder::new()
            .name(format!("http-sink-{}", self.addr.port()))
            // The runtime is dropped on this thread when `accept` returns, which drops
            // the listener and the connection tasks.
            .spawn(move || {
                let handle = move |request| record(request, Arc::clone(&state));
                runtime.block_on(accept(listener, handle, stopped))
            })
            .context("spawning the HTTP sink's thread")?;
        self.server = Some(Server { shutdown, thread });
        Ok(())
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

impl State {
    fn lock_requests(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        // A panicking test thread must not hide the requests from the others.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped), each request
/// answered by `handle` (the loop of every HTTP stand-in in this crate).
pub(crate) async fn accept<F, Fut>(
    listener: tokio::net::TcpListener,
    handle: F,
    mut stopped: oneshot::Receiver<()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, hyper::Error>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            // A broken connection only concerns its client.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

/// Records `request` and answers it with the current status.
async fn record(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let recorded = Recorded::read(request).await?;
    state.lock_requests().push(recorded);

    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = state
        .body
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::ErrorKind;

    use super::*;
    use crate::http::request;

    #[tokio::test]
    async fn records_switches_status_stops_and_restarts() {
        let mut sink = HttpSink::start().await.unwrap();
        let addr = sink.addr();
        assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            sink.url("/hook"),
            format!("http://127.0.0.1:{}/hook", addr.port())
        );
        assert!(sink.requests().is_empty());

        let reply = request(
            addr,
            "POST",
            "/hook?attempt=1",
            &[("X-Signature", "sig")],
            Some(r#"{"event":"user.created"}"#.to_owned()),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "{}");
        assert_eq!(reply.header("content-type"), Some("application/json"));

        let recorded = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(recorded.len(), 1);
        let hook = &recorded[0];
        assert_eq!(hook.method, "POST");
        assert_eq!(hook.path, "/hook?attempt=1");
        assert_eq!(hook.header("x-signature"), Some("sig"));
        assert_eq!(hook.header("Content-Type"), Some("application/json"));
        assert!(hook.headers.iter().any(|(name, _)| name == "x-signature"));
        assert_eq!(hook.json()["event"], "user.created");

        sink.set_status(503);
        let reply = request(addr, "GET", "/status", &[], None).await;
        assert_eq!(reply.status, 503);
        let recorded = sink.requests();
        assert_eq!(recorded.len(), 2, "recorded whatever the status");
        assert_eq!(recorded[1].method, "GET");
        assert!(recorded[1].body.is_empty());
        assert_eq!(recorded[1].json(), Value::Null);

        sink.stop();
        sink.stop(); // idempotent
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

        sink.restart().unwrap();
        assert_eq!(sink.addr(), addr);
        let reply = request(addr, "PUT", "/again", &[], Some("{}".to_owned())).await;
        assert_eq!(reply.status, 503, "the status survives a restart");
        sink.set_status(200);
        let reply = request(addr, "PUT", "/again", &[], Some("{}".to_owned())).await;
        assert_eq!(reply.status, 200);
        let paths: Vec<String> = sink.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/hook?attempt=1", "/status", "/again", "/again"]);

        drop(sink);
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    #[tokio::test]
    #[should_panic(expected = "expected at least 1 request(s)")]
    async fn wait_for_panics_after_the_limit() {
        let sink = HttpSink::start().await.unwrap();
        sink.wait_for(1, Duration::from_millis(100)).await;
    }
}
