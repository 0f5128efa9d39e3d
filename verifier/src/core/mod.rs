//! The sans-IO verify core: token bytes and a key snapshot in, a decision out.
//!
//! Nothing here performs I/O, reads the clock or allocates per call: `now` is a parameter,
//! the payload is decoded into a caller-owned [`Scratch`], claims borrow from it, keys and
//! revocations come from an immutable [`Snapshot`]. That makes the core fuzzable,
//! benchmarkable and testable for allocations without a socket (see `tests/alloc.rs`).
//!
//! Order of checks (RFC 8725): size caps, form, header, `typ`, key by `kid` with the
//! algorithm pinned by the key, signature, then claims: `exp`, `nbf`, `iat`, `iss`, `aud`,
//! and revocation by session and by per-user cutoff. Claims are only read after the
//! signature holds. A token seen before is a verified-cache hit instead: one keyed hash
//! finds what its checks concluded, and only the times, the key-set generation and the
//! revocations are checked again (see [`cache`]).

pub mod cache;
pub mod dpop;
pub mod identity;
pub mod jose;
pub mod json;
pub mod keys;
pub mod revocations;

use std::sync::Arc;

use portcullis_common::ErrorCode;

pub use self::cache::VerifiedCache;
pub use self::identity::{Facts, Identity};
pub use self::jose::{Audience, Claims, FormError, MAX_TOKEN_LEN};
pub use self::keys::{Alg, KeySet, KeysError, Trust};
pub use self::revocations::{Id, Revocations, RevocationsBuilder};

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

/// Caller-owned buffers: the payload is decoded into one, the caller's identity rendered
/// (or copied from the cache) into the other, and the result borrows both. Keep one per
/// worker thread and reuse it.
#[derive(Debug)]
pub struct Scratch {
    payload: [u8; jose::MAX_PAYLOAD_LEN],
    identity: [u8; identity::MAX_IDENTITY_LEN],
}

impl Scratch {
    pub const fn new() -> Self {
        Self {
            payload: [0; jose::MAX_PAYLOAD_LEN],
            identity: [0; identity::MAX_IDENTITY_LEN],
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
    /// Who is calling, as the transports pass it on and the route policy reads it.
    pub identity: Identity<'s>,
    /// The decoded claims JSON (valid UTF-8, one object): always there from
    /// [`Verifier::verify_with_payload`]; from [`Verifier::verify`] only when the token
    /// was not a cache hit.
    pub payload: Option<&'s str>,
    /// Whether this was a verified-cache hit (no signature, base64 or JSON work).
    pub cached: bool,
}

/// The verifier: settings plus the verified-token cache.
#[derive(Debug)]
pub struct Verifier {
    settings: Settings,
    cache: VerifiedCache,
}

impl Verifier {
    /// A verifier whose cache is keyed with fresh operating-system randomness.
    pub fn new(settings: Settings, cache_entries: usize) -> Self {
        let mut key = [0u8; 16];
        // Without randomness the cache could be keyed predictably: run without one.
        let entries =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key) {
                Ok(()) => cache_entries,
                Err(_) => 0,
            };
        Self::with_cache_key(settings, entries, key)
    }

    /// A verifier whose cache is keyed with `key`, which must be secret and random (tests
    /// and benches pass a fixed one).
    pub fn with_cache_key(mut settings: Settings, cache_entries: usize, key: [u8; 16]) -> Self {
        settings.typs = settings
            .typs
            .iter()
            .map(|t| normalize_typ(t).to_ascii_lowercase())
            .collect();
        Self {
            settings,
            cache: VerifiedCache::new(cache_entries, key),
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
        self.check(token, now, snap, scratch, false)
    }

    /// [`Verifier::verify`], with the claims JSON decoded even on a cache hit.
    pub fn verify_with_payload<'s>(
        &self,
        token: &[u8],
        now: i64,
        snap: &Snapshot,
        scratch: &'s mut Scratch,
    ) -> Result<Verified<'s>, Reject> {
        self.check(token, now, snap, scratch, true)
    }

    fn check<'s>(
        &self,
        token: &[u8],
        now: i64,
        snap: &Snapshot,
        scratch: &'s mut Scratch,
        want_payload: bool,
    ) -> Result<Verified<'s>, Reject> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(FormError::TooLong.into());
        }
        let Scratch { payload, identity } = scratch;
        let probe = self.cache.probe(token);
        let generation = snap.keys.generation();
        // No keys means generation 0, which no entry carries: the full path answers.
        if let Some(facts) = self.cache.get(&probe, token, generation, identity) {
            // The slot's seqlock guarantees these are the bytes of one insertion, which
            // were an identity's text: a failure here is a bug, refused rather than served.
            const UNREADABLE: Reject = reject(ErrorCode::InvalidToken, "cache entry unreadable");
            let text =
                std::str::from_utf8(&identity[..facts.text_len()]).map_err(|_| UNREADABLE)?;
            let who = Identity::new(facts, text).ok_or(UNREADABLE)?;
            self.check_times(facts.exp, facts.nbf, facts.iat, now)?;
            check_revocations(&who, snap)?;
            let payload = match want_payload {
                true => Some(decode_payload(jose::split(token)?.payload, payload)?),
                false => None,
            };
            return Ok(Verified {
                identity: who,
                payload,
                cached: true,
            });
        }

        let segments = jose::split(token)?;
        if snap.keys.is_empty() {
            return Err(reject(
                ErrorCode::Unavailable,
                "no verification keys loaded",
            ));
        }
        self.check_header_and_signature(&segments, snap)?;
        let payload = decode_payload(segments.payload, payload)?;
        let claims = jose::parse_claims_str(payload)?;
        self.check_times(
            claims
                .exp
                .ok_or(reject(ErrorCode::InvalidToken, "exp missing"))?,
            claims.nbf,
            claims.iat,
            now,
        )?;
        self.check_issuer_and_audience(&claims)?;
        // Fits: the buffer is as long as the longest payload; a bad `cnf.jkt` is refused.
        let who = Identity::from_claims(&claims, identity)
            .map_err(|why| reject(ErrorCode::InvalidToken, why))?;
        check_revocations(&who, snap)?;
        self.cache.insert(
            &probe,
            token,
            generation,
            who.facts(),
            who.text().as_bytes(),
        );
        Ok(Verified {
            identity: who,
            payload: Some(payload),
            cached: false,
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

    fn check_times(
        &self,
        exp: i64,
        nbf: Option<i64>,
        iat: Option<i64>,
        now: i64,
    ) -> Result<(), Reject> {
        let leeway = self.settings.leeway_secs;
        if now >= exp.saturating_add(leeway) {
            return Err(reject(ErrorCode::TokenExpired, "exp has passed"));
        }
        if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(reject(ErrorCode::NotYetValid, "nbf is in the future"));
        }
        if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(reject(ErrorCode::NotYetValid, "iat is in the future"));
        }
        Ok(())
    }

    /// Checks that depend only on the token and this verifier's fixed settings: a cache
    /// hit has passed them already.
    fn check_issuer_and_audience(&self, c: &Claims<'_>) -> Result<(), Reject> {
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
        Ok(())
    }
}

/// Revocation by session, then by per-user cutoff: checked on every acceptance.
fn check_revocations(who: &Identity<'_>, snap: &Snapshot) -> Result<(), Reject> {
    if who
        .sid_key()
        .is_some_and(|sid| snap.revocations.session_revoked(sid))
    {
        return Err(reject(ErrorCode::TokenRevoked, "session revoked"));
    }
    if let Some(cutoff) = who
        .sub_key()
        .and_then(|sub| snap.revocations.user_cutoff(sub))
    {
        // A token without `iat` cannot prove it postdates the cutoff: fail closed.
        if who.facts().iat().is_none_or(|iat| iat <= cutoff) {
            return Err(reject(ErrorCode::TokenRevoked, "user tokens revoked"));
        }
    }
    Ok(())
}

/// The payload segment decoded into `buf`, as UTF-8.
fn decode_payload<'b>(segment: &[u8], buf: &'b mut [u8]) -> Result<&'b str, Reject> {
    let payload = jose::b64_decode(segment, buf)?;
    std::str::from_utf8(payload)
        .map_err(|_| reject(ErrorCode::InvalidToken, "payload is not UTF-8"))
}

/// `typ` may be written with or without the `application/` prefix (RFC 7515 §4.1.9).
fn normalize_typ(typ: &str) -> &str {
    match typ.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}
