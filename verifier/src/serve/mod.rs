//! Serving decisions: the HTTP server ([`http`]: `/v1/verify`, Envoy ext_authz HTTP mode,
//! nginx `auth_request`, health and metrics) and gRPC ext_authz v3 ([`grpc`]). Both call
//! [`App::decide`], so a token gets the same answer and headers on either port.

pub mod grpc;
pub mod http;
pub mod metrics;

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use portcullis_common::{ErrorCode, credentials};

use crate::core::dpop::{self, Expect, KeyTables, ProofBuf, ReplayTable, Scheme, Seen, Target};
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
    pub dpop: DpopCheck,
}

/// Where the caller's credentials are, as the transport found them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'r> {
    /// The `Authorization` header value.
    pub authorization: Option<&'r [u8]>,
    /// The `Cookie` header values, in order.
    pub cookies: &'r [&'r [u8]],
    /// The first `DPoP` header value.
    pub dpop: Option<&'r [u8]>,
    /// How many `DPoP` header fields the request had (a proof must come alone).
    pub dpop_fields: usize,
}

/// DPoP proofs at this verifier (RFC 9449 §7): how old a proof may be, the proofs
/// already accepted, and the tables of the clients' keys that prove most. Both are
/// allocated when the first DPoP-bound token arrives, so verifiers that never see one do
/// not carry them.
#[derive(Debug)]
pub struct DpopCheck {
    pub max_age_secs: i64,
    replay_entries: usize,
    replay: OnceLock<ReplayTable>,
    tables: OnceLock<KeyTables>,
}

/// Client keys given a precomputed table ([`KeyTables`]): 30 KiB each, 2 MiB in all.
const KEY_TABLES: usize = 64;

impl DpopCheck {
    pub fn new(max_age_secs: i64, replay_entries: usize) -> Self {
        Self {
            max_age_secs,
            replay_entries,
            replay: OnceLock::new(),
            tables: OnceLock::new(),
        }
    }

    fn tables(&self) -> &KeyTables {
        self.tables.get_or_init(|| KeyTables::new(KEY_TABLES))
    }

    fn replay(&self) -> &ReplayTable {
        self.replay.get_or_init(|| {
            // Without randomness the table's buckets could be predicted, not its answers:
            // a fixed key only costs the protection against aimed bucket floods.
            let mut key = [0u8; 16];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
            ReplayTable::new(self.replay_entries, key)
        })
    }
}

impl Default for DpopCheck {
    fn default() -> Self {
        Self::new(dpop::DEFAULT_MAX_AGE_SECS, DEFAULT_REPLAY_ENTRIES)
    }
}

/// Proofs remembered by default (about 9 MiB): every proof of 11,000 a second for the
/// 90 s a proof stays usable with the default window and leeway.
pub const DEFAULT_REPLAY_ENTRIES: usize = 1 << 20;

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

const fn dpop_refusal(reason: &'static str) -> Reject {
    Reject {
        code: ErrorCode::InvalidDpopProof,
        reason,
    }
}

impl App {
    /// Decides on `request` carrying `creds`. Verification and the policy check allocate
    /// nothing; the payload is decoded into `scratch`.
    pub fn decide<'s>(
        &self,
        creds: Credentials<'_>,
        request: &Target<'_>,
        scratch: &'s mut Scratch,
    ) -> Decision<'s> {
        let (path, method) = (request.path, request.method);
        let policy = self.policy.load();
        match policy.gate(path, method) {
            Gate::Public => return Decision::Public,
            Gate::Deny => return Decision::Deny(UNNORMALIZED),
            Gate::Token => {}
        }
        match self.authenticate(creds, request, scratch, false) {
            Ok(v) if policy.permits(path, method, &v.identity) => Decision::Allow(v),
            Ok(_) => Decision::Deny(FORBIDDEN),
            Err(reject) => Decision::Deny(reject),
        }
    }

    /// Finds and verifies the caller's token for `request` (a DPoP-bound token's proof
    /// must describe it), without any route policy (`/v1/verify`); `with_payload` asks
    /// for the claims JSON even on a cache hit.
    pub fn authenticate<'s>(
        &self,
        creds: Credentials<'_>,
        request: &Target<'_>,
        scratch: &'s mut Scratch,
        with_payload: bool,
    ) -> Result<Verified<'s>, Reject> {
        let (token, scheme) = self.token(creds).ok_or(MISSING)?;
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
        let verified = result?;
        self.check_binding(&verified, token, scheme, creds, request, now)?;
        Ok(verified)
    }

    /// RFC 9449 §7: a token bound to a DPoP key comes as `Authorization: DPoP` with one
    /// proof, by that key, of this request, with this token's hash, not seen before. An
    /// unbound token comes as `Bearer` (or in the cookie).
    fn check_binding(
        &self,
        verified: &Verified<'_>,
        token: &[u8],
        scheme: Scheme,
        creds: Credentials<'_>,
        request: &Target<'_>,
        now: i64,
    ) -> Result<(), Reject> {
        let Some(jkt) = dpop::proof_key(verified.identity.facts().jkt(), scheme)? else {
            return Ok(());
        };
        let proof = match (creds.dpop, creds.dpop_fields) {
            (Some(proof), 1) => proof,
            (None, _) | (_, 0) => return Err(dpop_refusal("DPoP proof missing")),
            _ => return Err(dpop_refusal("more than one DPoP header")),
        };
        let expect = Expect {
            target: *request,
            access_token: Some(token),
            jkt: Some(jkt),
            now,
            max_age_secs: self.dpop.max_age_secs,
            leeway_secs: self.verifier.settings().leeway_secs,
        };
        let mut buf = ProofBuf::new();
        let accepted = dpop::check_with(proof, &expect, Some(self.dpop.tables()), &mut buf)?;
        let until = accepted.usable_until(&expect);
        match self
            .dpop
            .replay()
            .first_use(&accepted.jkt, accepted.jti, until, now)
        {
            Seen::Again => Err(dpop_refusal("DPoP proof replayed (jti seen before)")),
            Seen::First { evicted } => {
                if evicted {
                    self.metrics.replay_evicted();
                }
                Ok(())
            }
        }
    }

    fn token<'r>(&self, creds: Credentials<'r>) -> Option<(&'r [u8], Scheme)> {
        if let Some(auth) = creds.authorization {
            if let Some(token) = credentials::bearer(auth) {
                return Some((token, Scheme::Bearer));
            }
            if let Some(token) = credentials::dpop(auth) {
                return Some((token, Scheme::Dpop));
            }
        }
        let name = self.cookie.as_deref()?;
        credentials::cookie(creds.cookies.iter().copied(), name.as_bytes())
            .map(|token| (token, Scheme::Cookie))
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

/// The challenge to a refused DPoP proof, with the proof algorithms accepted.
const DPOP_CHALLENGE: &str = "DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA Ed25519 ES256\"";

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

/// The `WWW-Authenticate` challenge for a refusal (RFC 6750 §3, RFC 9449 §7.1).
pub fn challenge(reject: &Reject) -> Option<&'static str> {
    if reject.code == ErrorCode::InvalidDpopProof {
        return Some(DPOP_CHALLENGE);
    }
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
    fn the_dpop_challenge_names_the_algorithms() {
        assert!(DPOP_CHALLENGE.contains(&format!("algs=\"{}\"", dpop::ALGS)));
        assert_eq!(challenge(&dpop_refusal("x")), Some(DPOP_CHALLENGE));
    }

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
