//! What the HTTP port answers, written once for both ways a request arrives (the HTTP/1.1
//! fast path of [`super::h1`], and hyper for HTTP/2 and everything the fast path hands
//! over): `/v1/verify`, health, metrics, and on every other path the answer Envoy's
//! ext_authz HTTP mode and nginx `auth_request` expect: `200` with `x-auth-*` headers, or
//! `401`/`403` with a problem+json body and `WWW-Authenticate`.
//!
//! The path and method the route policy sees are the original request's: nginx passes
//! them as `X-Original-URI` / `X-Original-Method`, Traefik as `X-Forwarded-Uri` /
//! `X-Forwarded-Method`; Envoy sends the original path itself, optionally under the
//! prefix [`EXT_AUTHZ_PREFIX`] (recommended: it keeps an application's own `/healthz` from
//! reaching the verifier's).
//!
//! Answers are synchronous: the decision is made on the worker thread's stack (the
//! scratch buffers never live in a future) and written out at once through a [`Reply`].

use std::time::Instant;

use portcullis_common::ErrorCode;

use super::super::{
    App, Credentials, Decision, IDENTITY_HEADERS, challenge, identity_headers, problem_body,
    with_scratch,
};
use crate::core::Reject;
use crate::core::dpop::Target;
use crate::state::unix_now;

/// Prefix stripped from ext_authz check paths (Envoy `path_prefix: /ext_authz`).
pub const EXT_AUTHZ_PREFIX: &str = "/ext_authz";

/// Where an answer is written: status first, then headers, then the body (which ends it).
/// Header values are only ever valid header text ([`header_text`]).
pub(crate) trait Reply {
    fn status(&mut self, status: u16);
    fn header(&mut self, name: &'static str, value: &[u8]);
    /// The body (possibly empty) and its content type (`""`: none).
    fn body(&mut self, content_type: &'static str, body: &[u8]);
}

/// A request as the answers see it, whichever parser read it.
#[derive(Debug, Default)]
pub(crate) struct Req<'r> {
    pub method: &'r str,
    /// The target's path (no query).
    pub path: &'r str,
    pub heads: Heads<'r>,
    /// Mutual TLS is on and this client presented no certificate.
    pub no_client_cert: bool,
}

/// Cookie header fields kept per request; a request with more has the rest ignored (an
/// HTTP/1.1 client sends one, an HTTP/2 client splits one into a few).
const MAX_COOKIE_FIELDS: usize = 8;

/// The request headers the verifier acts on, found in one pass (the first of each; every
/// `Cookie` field, up to [`MAX_COOKIE_FIELDS`]).
#[derive(Debug, Default)]
pub(crate) struct Heads<'r> {
    pub authorization: Option<&'r [u8]>,
    cookies: [&'r [u8]; MAX_COOKIE_FIELDS],
    cookie_count: usize,
    pub request_id: Option<&'r [u8]>,
    /// `X-Original-URI` (nginx), else `X-Forwarded-Uri` (Traefik).
    pub original_uri: Option<&'r [u8]>,
    pub forwarded_uri: Option<&'r [u8]>,
    pub original_method: Option<&'r [u8]>,
    pub forwarded_method: Option<&'r [u8]>,
    pub host: Option<&'r [u8]>,
    pub forwarded_host: Option<&'r [u8]>,
    pub forwarded_proto: Option<&'r [u8]>,
    dpop: Option<&'r [u8]>,
    dpop_fields: usize,
}

impl<'r> Heads<'r> {
    /// Takes one header; `name` in any case.
    pub(super) fn see(&mut self, name: &str, value: &'r [u8]) {
        if name.len() == 6 && name.eq_ignore_ascii_case("cookie") {
            if let Some(slot) = self.cookies.get_mut(self.cookie_count) {
                *slot = value;
                self.cookie_count += 1;
            }
            return;
        }
        if name.len() == 4 && name.eq_ignore_ascii_case("dpop") {
            self.dpop.get_or_insert(value);
            self.dpop_fields += 1;
            return;
        }
        let slot = match name.len() {
            4 if name.eq_ignore_ascii_case("host") => &mut self.host,
            16 if name.eq_ignore_ascii_case("x-forwarded-host") => &mut self.forwarded_host,
            17 if name.eq_ignore_ascii_case("x-forwarded-proto") => &mut self.forwarded_proto,
            13 if name.eq_ignore_ascii_case("authorization") => &mut self.authorization,
            12 if name.eq_ignore_ascii_case("x-request-id") => &mut self.request_id,
            14 if name.eq_ignore_ascii_case("x-original-uri") => &mut self.original_uri,
            15 if name.eq_ignore_ascii_case("x-forwarded-uri") => &mut self.forwarded_uri,
            17 if name.eq_ignore_ascii_case("x-original-method") => &mut self.original_method,
            18 if name.eq_ignore_ascii_case("x-forwarded-method") => &mut self.forwarded_method,
            _ => return,
        };
        slot.get_or_insert(value);
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            authorization: self.authorization,
            cookies: &self.cookies[..self.cookie_count],
            dpop: self.dpop,
            dpop_fields: self.dpop_fields,
        }
    }

    /// The request the client made, as the proxy in front describes it: method and URI
    /// from `X-Original-*` (nginx) or `X-Forwarded-*` (Traefik), else this request's own
    /// (Envoy, with [`EXT_AUTHZ_PREFIX`] taken off); host from `X-Forwarded-Host`, else
    /// `Host`; scheme from `X-Forwarded-Proto`, else `https`. The route policy reads the
    /// method and path, a DPoP proof's `htm` and `htu` must match all four.
    fn original<'a>(&'a self, req: &'a Req<'r>) -> Target<'a> {
        fn text(v: Option<&[u8]>) -> Option<&str> {
            v.and_then(|v| std::str::from_utf8(v).ok())
        }
        let path = text(self.original_uri.or(self.forwarded_uri)).unwrap_or_else(|| {
            match req.path.strip_prefix(EXT_AUTHZ_PREFIX) {
                Some("") => "/",
                Some(rest) if rest.starts_with('/') => rest,
                _ => req.path,
            }
        });
        Target {
            method: text(self.original_method.or(self.forwarded_method)).unwrap_or(req.method),
            scheme: text(self.forwarded_proto)
                .and_then(|p| p.split(',').next())
                .map_or("https", str::trim),
            host: text(self.forwarded_host.or(self.host)).unwrap_or(""),
            path,
        }
    }
}

/// Whether `value` may be sent as a header value (what `http::HeaderValue` accepts: no
/// control characters but tab). Identity values come from token claims, where JSON
/// escapes can carry CR and LF: those are dropped, never written.
pub(crate) fn header_text(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| (*b >= 0x20 && *b != 0x7f) || *b == b'\t')
}

/// Answers one request, recording its latency.
pub(crate) fn answer(app: &App, req: &Req<'_>, out: &mut impl Reply) {
    let started = Instant::now();
    route(app, req, out);
    app.metrics.latency.record(started.elapsed());
}

fn route(app: &App, req: &Req<'_>, out: &mut impl Reply) {
    let open = matches!(req.path, "/healthz" | "/readyz" | "/metrics");
    if req.no_client_cert && !open {
        let reject = Reject {
            code: ErrorCode::Forbidden,
            reason: "this port requires a client certificate",
        };
        out.status(403);
        request_id(req, out);
        out.body("application/problem+json", problem_body(&reject).as_bytes());
        return;
    }
    match req.path {
        "/healthz" => json(req, out, 200, r#"{"status":"ok"}"#),
        "/readyz" => readyz(app, req, out),
        "/metrics" => {
            let text = app.metrics.render(&app.shared);
            out.status(200);
            request_id(req, out);
            out.body("text/plain; version=0.0.4", text.as_bytes());
        }
        "/v1/verify" if matches!(req.method, "GET" | "POST") => verify(app, req, out),
        "/v1/verify" => {
            out.status(405);
            out.header("allow", b"GET, POST");
            out.header("cache-control", b"no-store");
            request_id(req, out);
            out.body("application/json", b"");
        }
        _ => ext_authz(app, req, out),
    }
}

/// `x-request-id`: the caller's when it is a sane token, else a fresh random one.
fn request_id(req: &Req<'_>, out: &mut impl Reply) {
    match req.heads.request_id {
        Some(v) if (1..=128).contains(&v.len()) && v.iter().all(u8::is_ascii_graphic) => {
            out.header("x-request-id", v)
        }
        _ => {
            let mut id = [0u8; 32];
            hex(rand::random::<u128>(), &mut id);
            out.header("x-request-id", &id);
        }
    }
}

/// `value` as 32 lower-case hex digits.
fn hex(value: u128, out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
}

/// A JSON answer that must not be cached.
fn json(req: &Req<'_>, out: &mut impl Reply, status: u16, body: &str) {
    out.status(status);
    out.header("cache-control", b"no-store");
    request_id(req, out);
    out.body("application/json", body.as_bytes());
}

fn readyz(app: &App, req: &Req<'_>, out: &mut impl Reply) {
    let r = app.shared.readiness(unix_now());
    let body = serde_json::json!({
        "ready": r.ready(),
        "keys_loaded": r.keys_loaded,
        "seconds_since_sync": r.since_sync,
        "max_staleness_secs": r.max_staleness,
        "version": app.shared.load().version,
    });
    json(
        req,
        out,
        if r.ready() { 200 } else { 503 },
        &body.to_string(),
    );
}

fn verify(app: &App, req: &Req<'_>, out: &mut impl Reply) {
    let h = &req.heads;
    let request = h.original(req);
    with_scratch(
        |scratch| match app.authenticate(h.credentials(), &request, scratch, true) {
            Ok(v) => {
                app.metrics.allowed();
                out.status(200);
                out.header("cache-control", b"no-store");
                write_identity(out, identity_headers(&v));
                request_id(req, out);
                let claims = v.payload.unwrap_or("{}");
                out.body(
                    "application/json",
                    format!(r#"{{"valid":true,"claims":{claims}}}"#).as_bytes(),
                );
            }
            Err(reject) => deny(app, req, out, &reject),
        },
    )
}

fn ext_authz(app: &App, req: &Req<'_>, out: &mut impl Reply) {
    let h = &req.heads;
    let request = h.original(req);
    with_scratch(
        |scratch| match app.decide(h.credentials(), &request, scratch) {
            Decision::Allow(v) => {
                app.metrics.allowed();
                out.status(200);
                write_identity(out, identity_headers(&v));
                request_id(req, out);
                out.body("", b"");
            }
            Decision::Public => {
                app.metrics.allowed();
                out.status(200);
                request_id(req, out);
                out.body("", b"");
            }
            Decision::Deny(reject) => deny(app, req, out, &reject),
        },
    )
}

fn write_identity(out: &mut impl Reply, values: [Option<&str>; 5]) {
    for (name, value) in IDENTITY_HEADERS.iter().zip(values) {
        if let Some(value) = value.filter(|v| header_text(v.as_bytes())) {
            out.header(name, value.as_bytes());
        }
    }
}

fn deny(app: &App, req: &Req<'_>, out: &mut impl Reply, reject: &Reject) {
    app.metrics.denied(reject.code);
    tracing::debug!(
        code = reject.code.as_str(),
        reason = reject.reason,
        "denied"
    );
    let status = reject.code.status();
    out.status(status);
    out.header("cache-control", b"no-store");
    if let Some(c) = challenge(reject) {
        out.header("www-authenticate", c.as_bytes());
    }
    if status == 503 {
        out.header("retry-after", b"1");
    }
    request_id(req, out);
    out.body("application/problem+json", problem_body(reject).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_take_the_first_of_each_in_any_case() {
        let mut h = Heads::default();
        h.see("Authorization", b"Bearer a");
        h.see("AUTHORIZATION", b"Bearer b");
        h.see("X-Original-URI", b"/x");
        h.see("cookie", b"c=1");
        h.see("x-unrelated", b"?");
        h.see("DPoP", b"p1");
        h.see("dpop", b"p2");
        assert_eq!((h.dpop, h.dpop_fields), (Some(&b"p1"[..]), 2));
        assert_eq!(h.authorization, Some(&b"Bearer a"[..]));
        h.see("Cookie", b"d=2");
        assert_eq!(h.original_uri, Some(&b"/x"[..]));
        assert_eq!(h.credentials().cookies, [&b"c=1"[..], &b"d=2"[..]]);
        assert_eq!(h.request_id, None);
    }

    #[test]
    fn header_text_refuses_line_breaks() {
        assert!(header_text(b"a b\tc\xc3\xa9"));
        assert!(!header_text(b"a\r\nx-injected: 1"));
        assert!(!header_text(b"a\0"));
        assert!(!header_text(b"\x7f"));
    }

    #[test]
    fn ids_are_hex() {
        let mut out = [0u8; 32];
        hex(0x0123_4567_89ab_cdef_0011_2233_4455_6677, &mut out);
        assert_eq!(&out, b"0123456789abcdef0011223344556677");
    }
}
