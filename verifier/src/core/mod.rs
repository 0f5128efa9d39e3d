//! The sans-IO verify core: token bytes and a key snapshot in, a decision out.
//!
//! Nothing here performs I/O, reads the clock or allocates per call: `now` is a parameter,
//! the payload is decoded into a caller-owned [`Scratch`], claims borrow from it, keys and
//! revocations come from an immutable [`Snapshot`]. That makes the core fuzzable,
//! benchmarkable and testable for allocations without a socket (see `tests/alloc.rs`).
//!
//! Order of checks (RFC 8725): size caps, form, header, `typ`, key by `kid` with the
//! algorithm pinned by the key, signature (or a verified-cache hit), then claims: `exp`,
//! `nbf`, `iat`, `iss`, `aud`, and revocation by session and by per-user cutoff. Claims are
//! only read after the signature holds.

pub mod cache;
pub mod jose;
pub mod json;
pub mod keys;
pub mod revocations;

use std::sync::Arc;

use portcullis_common::ErrorCode;

pub use self::cache::VerifiedCache;
pub use self::jose::{Audience, Claims, FormError, MAX_TOKEN_LEN};
pub use self::keys::{Alg, KeySet, KeysError, Trust};
pub use self::revocations::{Revocations, RevocationsBuilder};

/// Everything a verification reads that changes over time, swapped atomically as a whole.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub keys: Arc<KeySet>,
    pub revocations: Revocations,
    /// `portcullis:version` this state reflects (0 for non-Redis sources).
    pub version: u64,
}

impl Snapshot {
    /// No keys yet: every verification answers `unavailable`.
    pub fn empty() -> Self {
        Self {
            keys: Arc::new(KeySet::empty()),
            revocations: Revocations::default(),
            version: 0,
        }
    }
}

/// What a token must satisfy besides its signature (API.md §4 configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Accepted `iss` values, compared exactly. Must not be empty.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty accepts any audience.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: i64,
    /// Accepted `typ` header values; empty accepts any (or none).
    pub typs: Vec<String>,
}

/// Why a token was refused: the contract's code plus a static reason for debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: ErrorCode,
    pub reason: &'static str,
}

const fn reject(code: ErrorCode, reason: &'static str) -> Reject {
    Reject { code, reason }
}

impl From<FormError> for Reject {
    fn from(e: FormError) -> Self {
        let reason = match e {
            FormError::TooLong => "token exceeds the size cap",
            FormError::Segments => "not three non-empty segments",
            FormError::Base64 => "segment is not strict base64url",
            FormError::Json(json::JsonError::DuplicateMember) => "duplicate JSON member",
            FormError::Json(_) => "malformed JSON",
            FormError::Header(why) | FormError::Claims(why) => why,
        };
        reject(ErrorCode::InvalidToken, reason)
    }
}

/// Caller-owned buffer the payload is decoded into; claims borrow from it. Keep one per
/// worker thread or task and reuse it.
#[derive(Debug)]
pub struct Scratch {
    payload: [u8; jose::MAX_PAYLOAD_LEN],
}

impl Scratch {
    pub const fn new() -> Self {
        Self {
            payload: [0; jose::MAX_PAYLOAD_LEN],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// An accepted token.
#[derive(Clone, Copy, Debug)]
pub struct Verified<'s> {
    pub claims: Claims<'s>,
    /// The decoded claims JSON (valid UTF-8, one object).
    pub payload: &'s str,
    /// Whether the signature check was skipped thanks to the verified-token cache.
    pub cached: bool,
}

/// The verifier: settings plus the verified-token cache.
#[derive(Debug)]
pub struct Verifier {
    settings: Settings,
    cache: VerifiedCache,
}

impl Verifier {
    pub fn new(mut settings: Settings, cache_entries: usize) -> Self {
        settings.typs = settings
            .typs
            .iter()
            .map(|t| normalize_typ(t).to_ascii_lowercase())
            .collect();
        Self {
            settings,
            cache: VerifiedCache::new(cache_entries),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Verifies a compact JWS access token at time `now` (Unix seconds) against `snap`.
    pub fn verify<'s>(
        &self,
        token: &[u8],
        now: i64,
        snap: &Snapshot,
        scratch: &'s mut Scratch,
    ) -> Result<Verified<'s>, Reject> {
        let segments = jose::split(token)?;
        if snap.keys.is_empty() {
            return Err(reject(
                ErrorCode::Unavailable,
                "no verification keys loaded",
            ));
        }
        // A hit means these exact bytes passed every header check and the signature under
        // this key-set generation, with this verifier's (immutable) settings: all of that
        // depends on nothing else, so only the claims are read again.
        let digest = cache::digest(token);
        let cached = self.cache.contains(&digest, snap.keys.generation());
        if !cached {
            self.check_header_and_signature(&segments, snap)?;
        }

        let payload = jose::b64_decode(segments.payload, &mut scratch.payload)?;
        let payload = std::str::from_utf8(payload)
            .map_err(|_| reject(ErrorCode::InvalidToken, "payload is not UTF-8"))?;
        let claims = jose::parse_claims_str(payload)?;
        self.check_claims(&claims, now, snap)?;
        if !cached {
            self.cache.insert(&digest, snap.keys.generation());
        }
        Ok(Verified {
            claims,
            payload,
            cached,
        })
    }

    /// Header (`typ`, `kid`, `alg` pinned by the key) and signature: the work a cache hit
    /// skips.
    fn check_header_and_signature(
        &self,
        segments: &jose::Segments<'_>,
        snap: &Snapshot,
    ) -> Result<(), Reject> {
        let mut header_buf = [0u8; jose::MAX_HEADER_LEN];
        let header = jose::parse_header(jose::b64_decode(segments.header, &mut header_buf)?)?;
        if !self.typ_accepted(header.typ) {
            return Err(reject(ErrorCode::InvalidToken, "typ not accepted"));
        }
        let kid = header.kid.ok_or(reject(ErrorCode::UnknownKey, "no kid"))?;
        let key = snap
            .keys
            .get(kid)
            .ok_or(reject(ErrorCode::UnknownKey, "kid not in the key set"))?;
        // The key pins the algorithm; the token's `alg` must name exactly that one.
        if !header.alg.eq_str(key.alg().as_str()) {
            return Err(reject(
                ErrorCode::InvalidToken,
                "alg does not match the key",
            ));
        }
        let mut sig_buf = [0u8; jose::MAX_SIGNATURE_LEN];
        let signature = jose::b64_decode(segments.signature, &mut sig_buf).map_err(|_| {
            reject(
                ErrorCode::InvalidSignature,
                "signature is not strict base64url",
            )
        })?;
        if !key.verify(segments.signing_input, signature) {
            return Err(reject(
                ErrorCode::InvalidSignature,
                "signature does not verify",
            ));
        }
        Ok(())
    }

    fn typ_accepted(&self, typ: Option<json::JsonStr<'_>>) -> bool {
        if self.settings.typs.is_empty() {
            return true;
        }
        let Some(typ) = typ.and_then(|t| t.as_plain()) else {
            return false;
        };
        let typ = normalize_typ(typ);
        self.settings
            .typs
            .iter()
            .any(|t| t.eq_ignore_ascii_case(typ))
    }

    fn check_claims(&self, c: &Claims<'_>, now: i64, snap: &Snapshot) -> Result<(), Reject> {
        let leeway = self.settings.leeway_secs;
        let exp = c
            .exp
            .ok_or(reject(ErrorCode::InvalidToken, "exp missing"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(reject(ErrorCode::TokenExpired, "exp has passed"));
        }
        if c.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(reject(ErrorCode::NotYetValid, "nbf is in the future"));
        }
        if c.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(reject(ErrorCode::NotYetValid, "iat is in the future"));
        }
        let iss = c
            .iss
            .ok_or(reject(ErrorCode::InvalidIssuer, "iss missing"))?;
        if !self.settings.issuers.iter().any(|want| iss.eq_str(want)) {
            return Err(reject(ErrorCode::InvalidIssuer, "iss not accepted"));
        }
        if !self.settings.audiences.is_empty() {
            let aud = c
                .aud
                .ok_or(reject(ErrorCode::InvalidAudience, "aud missing"))?;
            if !self
                .settings
                .audiences
                .iter()
                .any(|want| aud.contains(want))
            {
                return Err(reject(ErrorCode::InvalidAudience, "aud not accepted"));
            }
        }
        if c.sid
            .is_some_and(|sid| snap.revocations.session_revoked(sid))
        {
            return Err(reject(ErrorCode::TokenRevoked, "session revoked"));
        }
        if let Some(cutoff) = c.sub.and_then(|sub| snap.revocations.user_cutoff(sub)) {
            // A token without `iat` cannot prove it postdates the cutoff: fail closed.
            if c.iat.is_none_or(|iat| iat <= cutoff) {
                return Err(reject(ErrorCode::TokenRevoked, "user tokens revoked"));
            }
        }
        Ok(())
    }
}

/// `typ` may be written with or without the `application/` prefix (RFC 7515 §4.1.9).
fn normalize_typ(typ: &str) -> &str {
    match typ.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}
