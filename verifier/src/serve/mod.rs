//! Serving decisions: the HTTP server ([`http`]: `/v1/verify`, Envoy ext_authz HTTP mode,
//! nginx `auth_request`, health and metrics) and gRPC ext_authz v3 ([`grpc`]). Both call
//! [`App::decide`], so a token gets the same answer and headers on either port.

pub mod grpc;
pub mod http;
pub mod metrics;

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_common::{ErrorCode, credentials};

use crate::core::{Reject, Scratch, Verified, Verifier};
use crate::policy::{Gate, Policy};
use crate::state::{Shared, unix_now};

/// What both servers share.
#[derive(Debug)]
pub struct App {
    pub shared: Arc<Shared>,
    pub verifier: Verifier,
    pub policy: ArcSwap<Policy>,
    pub cookie: Option<String>,
    pub metrics: metrics::Metrics,
}

/// Where the caller's credentials are, as the transport found them.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'r> {
    /// The `Authorization` header value.
    pub authorization: Option<&'r [u8]>,
    /// The `Cookie` header values, in order.
    pub cookies: &'r [&'r [u8]],
}

/// A decision on one request.
// Boxing `Allow` would put an allocation on every allowed request; the value only lives
// on the stack for the length of one answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision<'s> {
    /// A valid token that the route policy lets through.
    Allow(Verified<'s>),
    /// A public route: no token needed.
    Public,
    Deny(Reject),
}

const FORBIDDEN: Reject = Reject {
    code: ErrorCode::Forbidden,
    reason: "route policy denies this caller",
};
const UNNORMALIZED: Reject = Reject {
    code: ErrorCode::Forbidden,
    reason: "path is not normalized",
};
const MISSING: Reject = Reject {
    code: ErrorCode::MissingToken,
    reason: "no bearer token or cookie",
};

impl App {
    /// Decides on a request for `path` and `method` carrying `creds`. Verification and the
    /// policy check allocate nothing; the payload is decoded into `scratch`.
    pub fn decide<'s>(
        &self,
        creds: Credentials<'_>,
        path: &str,
        method: &str,
        scratch: &'s mut Scratch,
    ) -> Decision<'s> {
        let policy = self.policy.load();
        match policy.gate(path, method) {
            Gate::Public => return Decision::Public,
            Gate::Deny => return Decision::Deny(UNNORMALIZED),
            Gate::Token => {}
        }
        match self.authenticate(creds, scratch, false) {
            Ok(v) if policy.permits(path, method, &v.identity) => Decision::Allow(v),
            Ok(_) => Decision::Deny(FORBIDDEN),
            Err(reject) => Decision::Deny(reject),
        }
    }

    /// Finds and verifies the caller's token, without any route policy (`/v1/verify`);
    /// `with_payload` asks for the claims JSON even on a cache hit.
    pub fn authenticate<'s>(
        &self,
        creds: Credentials<'_>,
        scratch: &'s mut Scratch,
        with_payload: bool,
    ) -> Result<Verified<'s>, Reject> {
        let token = self.token(creds).ok_or(MISSING)?;
        let snapshot = self.shared.load();
        let now = unix_now();
        let result = match with_payload {
            true => self
                .verifier
                .verify_with_payload(token, now, &snapshot, scratch),
            false => self.verifier.verify(token, now, &snapshot, scratch),
        };
        match &result {
            Ok(v) => self.metrics.cache(v.cached),
            Err(reject) if reject.code == ErrorCode::UnknownKey => {
                self.shared.unknown_kid.notify_one()
            }
            Err(_) => {}
        }
        result
    }

    fn token<'r>(&self, creds: Credentials<'r>) -> Option<&'r [u8]> {
        if let Some(token) = creds.authorization.and_then(credentials::bearer) {
            return Some(token);
        }
        let name = self.cookie.as_deref()?;
        credentials::cookie(creds.cookies.iter().copied(), name.as_bytes())
    }
}

/// Names of the headers an allowed request carries upstream, in [`identity_headers`]'
/// order.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-auth-user-id",
    "x-auth-session-id",
    "x-auth-app-id",
    "x-auth-roles",
    "x-auth-scope",
];

/// The values of [`IDENTITY_HEADERS`] for an allowed request (`None`: the token lacks the
/// claim, and the header is left out). They were rendered when the token was verified
/// (or come from the cache): nothing is copied or allocated here; the transport decides
/// how to store them and drops values that are not valid header text.
pub fn identity_headers<'s>(v: &Verified<'s>) -> [Option<&'s str>; 5] {
    let who = &v.identity;
    [
        who.sub(),
        who.sid(),
        who.app(),
        Some(who.roles_header()),
        Some(who.scope()),
    ]
}

thread_local! {
    /// One payload buffer per worker thread: reused across requests instead of zeroing
    /// 6 KiB on every one.
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is already borrowed).
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// The problem+json body for a refusal (RFC 9457). Never includes the token.
pub fn problem_body(reject: &Reject) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": reject.code.title(),
        "status": reject.code.status(),
        "detail": reject.reason,
        "code": reject.code.as_str(),
    })
    .to_string()
}

/// The `WWW-Authenticate` challenge for a refusal (RFC 6750 §3).
pub fn challenge(reject: &Reject) -> Option<&'static str> {
    match reject.code.status() {
        401 => Some("Bearer error=\"invalid_token\""),
        403 => Some("Bearer error=\"insufficient_scope\""),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_carry_the_code() {
        let r = Reject {
            code: ErrorCode::TokenExpired,
            reason: "exp has passed",
        };
        let v: serde_json::Value = serde_json::from_str(&problem_body(&r)).unwrap_or_default();
        assert_eq!(v["code"], "token_expired");
        assert_eq!(v["status"], 401);
        assert_eq!(challenge(&r), Some("Bearer error=\"invalid_token\""));
        assert_eq!(
            challenge(&FORBIDDEN),
            Some("Bearer error=\"insufficient_scope\"")
        );
    }
}
