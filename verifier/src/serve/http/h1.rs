//! The HTTP/1.1 fast path for checks: parse with `httparse`, answer, write the answer
//! bytes straight into one buffer per connection, one `write` per batch of pipelined
//! requests.
//!
//! Hand-written because this is the verifier's hot path and hyper's general machinery
//! (a `Request` with a hashed header map, a `Response` built and encoded, a timer per
//! request head, per-header allocations) cost more than the check itself: measured in
//! `benches/README.md`, the same answers through hyper ran at 0.8x nginx `return 200`
//! on one core. It only takes the requests checks are made of: HTTP/1.1, no body, an
//! origin-form target of plain URI characters, no `Upgrade`/`Expect`/`Transfer-Encoding`,
//! `Connection` absent, `keep-alive` or `close`. Anything else — a parse error, a head
//! too large, HTTP/1.0, HTTP/2's preface, `HEAD`, a body — is handed, with every byte
//! not yet answered, to hyper for the rest of the connection ([`Outcome::HandOff`]), so
//! protocol edge cases and errors keep hyper's answers. Both paths answer through
//! [`super::answer`].

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use portcullis_common::tls::Conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::answer::{Heads, Reply, Req, answer};
use super::{HEADER_READ_TIMEOUT, MAX_HEAD_BYTES};
use crate::serve::App;

/// At most this many request headers (as hyper is configured).
pub(crate) const MAX_HEADERS: usize = 100;
const READ_CAPACITY: usize = 8 * 1024;

/// How a connection left the fast path.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Closed (by the client, after `Connection: close`, on shutdown or a slow head).
    Closed,
    /// hyper serves the rest: these bytes, then whatever the connection sends.
    HandOff(BytesMut),
}

/// Serves `conn` until it closes or needs hyper.
pub(crate) async fn serve(
    conn: &mut Conn,
    app: &App,
    no_client_cert: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<Outcome> {
    let mut buf = BytesMut::with_capacity(READ_CAPACITY);
    let mut out: Vec<u8> = Vec::with_capacity(2 * 1024);
    // When the first byte of a still incomplete head arrived.
    let mut head_since: Option<Instant> = None;
    loop {
        let mut close = false;
        let stopping = *shutdown.borrow();
        while !buf.is_empty() {
            match next(&buf, app, no_client_cert, stopping, &mut out) {
                Step::Answered { len, close: c } => {
                    buf.advance(len);
                    head_since = None;
                    if c {
                        close = true;
                        break;
                    }
                }
                Step::Partial if buf.len() <= MAX_HEAD_BYTES => break,
                Step::Partial | Step::HandOff => {
                    conn.write_all(&out).await?;
                    return Ok(Outcome::HandOff(buf));
                }
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        if close {
            let _ = conn.shutdown().await;
            return Ok(Outcome::Closed);
        }
        if buf.is_empty() {
            // Idle between requests: wait for the next, or for shutdown.
            buf.clear();
            buf.reserve(READ_CAPACITY);
            tokio::select! {
                biased;
                read = conn.read_buf(&mut buf) => if read? == 0 {
                    return Ok(Outcome::Closed);
                },
                _ = shutdown.wait_for(|stop| *stop) => return Ok(Outcome::Closed),
            }
        } else {
            // A head is arriving in pieces: it gets HEADER_READ_TIMEOUT in all.
            buf.reserve(READ_CAPACITY);
            let deadline = *head_since.get_or_insert_with(Instant::now) + HEADER_READ_TIMEOUT;
            match tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)).await {
                Ok(Ok(read)) if read > 0 => {}
                Ok(Err(e)) => return Err(e),
                _ => return Ok(Outcome::Closed),
            }
        }
    }
}

enum Step {
    /// One request answered into `out`; `len` bytes of input used.
    Answered {
        len: usize,
        close: bool,
    },
    /// The head is not complete yet.
    Partial,
    HandOff,
}

/// Parses and answers the request at the start of `input`, if the fast path takes it.
fn next(input: &[u8], app: &App, no_client_cert: bool, stopping: bool, out: &mut Vec<u8>) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(input) {
        // A head over the limit is hyper's to refuse (431), complete or not.
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Ok(httparse::Status::Complete(_)) | Err(_) => return Step::HandOff,
    };
    let Some((req, close)) = fast_request(&parsed, no_client_cert) else {
        return Step::HandOff;
    };
    let close = close || stopping;
    answer(app, &req, &mut Raw::new(out, close));
    Step::Answered { len, close }
}

/// The request as the answers see it, and whether the client asked to close; `None`
/// when it is not one the fast path takes.
fn fast_request<'r>(
    parsed: &httparse::Request<'_, 'r>,
    no_client_cert: bool,
) -> Option<(Req<'r>, bool)> {
    if parsed.version != Some(1) {
        return None;
    }
    let method = parsed.method?;
    let target = parsed.path?;
    if matches!(method, "HEAD" | "CONNECT")
        || !target.starts_with('/')
        || !target.bytes().all(uri_char)
    {
        return None;
    }
    let mut heads = Heads::default();
    let mut close = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !v.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else {
            heads.see(name, h.value);
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let req = Req {
        method,
        path,
        heads,
        no_client_cert,
    };
    Some((req, close))
}

/// RFC 3986 characters of a path and query (unreserved, sub-delims, `:@/?%`): anything
/// else goes to hyper, which decides.
fn uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// An answer written as HTTP/1.1 bytes.
struct Raw<'o> {
    out: &'o mut Vec<u8>,
    close: bool,
}

impl<'o> Raw<'o> {
    fn new(out: &'o mut Vec<u8>, close: bool) -> Self {
        Self { out, close }
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }
}

impl Reply for Raw<'_> {
    fn status(&mut self, status: u16) {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(decimal(status.into(), &mut [0; 20]));
        self.out.push(b' ');
        self.out.extend_from_slice(reason.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn header(&mut self, name: &'static str, value: &[u8]) {
        self.line(name.as_bytes(), value);
    }

    fn body(&mut self, content_type: &'static str, body: &[u8]) {
        if !content_type.is_empty() {
            self.line(b"content-type", content_type.as_bytes());
        }
        self.line(b"content-length", decimal(body.len() as u64, &mut [0; 20]));
        DATE.with(|d| self.line(b"date", &d.borrow_mut().now()));
        if self.close {
            self.line(b"connection", b"close");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The `Date` header (RFC 9110 §6.6.1), formatted once a second per thread.
struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl DateCache {
    fn now(&mut self) -> [u8; 29] {
        #[allow(clippy::disallowed_methods)] // wall-clock time is what a Date header says
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
            if let Ok(text) = <[u8; 29]>::try_from(text.as_bytes()) {
                self.text = text;
                self.second = second;
            }
        }
        self.text
    }
}

thread_local! {
    static DATE: std::cell::RefCell<DateCache> = const {
        std::cell::RefCell::new(DateCache { second: 0, text: [b' '; 29] })
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn classify(raw: &str) -> Option<(String, String, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw.as_bytes()).unwrap().is_complete());
        let (req, close) = fast_request(&parsed, false)?;
        let auth = String::from_utf8(req.heads.authorization.unwrap_or_default().to_vec()).unwrap();
        Some((req.path.to_owned(), auth, close))
    }

    #[test]
    fn takes_plain_checks() {
        let got = classify("GET /api/x?y=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n");
        assert_eq!(got, Some(("/api/x".into(), "Bearer t".into(), false)));
        let got = classify("POST /a HTTP/1.1\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n");
        assert_eq!(got.map(|g| g.2), Some(true));
    }

    #[test]
    fn hands_everything_else_to_hyper() {
        for raw in [
            "GET /a HTTP/1.0\r\n\r\n",
            "HEAD /a HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET http://a/b HTTP/1.1\r\n\r\n",
            "GET /a{b} HTTP/1.1\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "POST /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert!(classify(raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn answers_are_framed() {
        let mut out = Vec::new();
        let mut raw = Raw::new(&mut out, true);
        raw.status(401);
        raw.header("www-authenticate", b"Bearer");
        raw.body("application/json", b"{}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer\r\n"));
        assert!(text.contains("\r\ncontent-length: 2\r\n"));
        assert!(text.contains("\r\nconnection: close\r\n"));
        assert!(text.ends_with(" GMT\r\nconnection: close\r\n\r\n{}"));
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(
            decimal(18_446_744_073_709_551_615, &mut [0; 20]),
            b"18446744073709551615"
        );
    }
}
