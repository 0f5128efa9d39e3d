//! DPoP (RFC 9449): the check of a `DPoP` proof against the request it came with, and the
//! replay table that remembers the proofs a process has accepted.
//!
//! One check for both binaries: the verifier runs it for every request carrying a
//! DPoP-bound access token (with the token's `cnf.jkt` and hash), the control plane for
//! proofs sent to its token-issuing endpoints (no token yet) and to its account routes.
//! Like the rest of the core it is sans-IO and allocates nothing: the header is decoded
//! on the stack, the payload into a caller-owned [`ProofBuf`], the proof's key is read
//! from its `jwk` header into a fixed array, and the signature checked with
//! curve25519-dalek (EdDSA, see [`super::keys::ed25519_verify_strict_once`]) or ring
//! (ES256). The replay table is a fixed array of small locked buckets.
//!
//! Order of checks: size, form, header (`typ` `dpop+jwt`, `alg` EdDSA (or `Ed25519`) or ES256 only, a
//! public `jwk` of that algorithm's key type and nothing private in it), the key's
//! RFC 7638 thumbprint against the token's `cnf.jkt`, the signature, then the claims:
//! `htm` equal to the method, `htu` equal to the request's URI (normalized, see
//! [`htu_matches`]), `iat` within the window, `ath` the token's SHA-256. Claims are read
//! only after the signature holds. Nonces and replay are the caller's: the control plane
//! issues nonces, and each process keeps its own [`ReplayTable`].

use std::sync::{Mutex, PoisonError, RwLock};

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable};
use curve25519_dalek::traits::BasepointTable;

use portcullis_common::ErrorCode;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::Reject;
use super::jose::{self, b64_decode};
use super::json::{self, JsonError, JsonStr, Value};
use super::keys::{ed25519_verify_strict_once, strict};

/// Longest proof accepted, checked before anything is parsed. A proof with a P-256 key
/// and a long URI is under 1 KiB.
pub const MAX_PROOF_LEN: usize = 4096;
const MAX_PROOF_PAYLOAD: usize = MAX_PROOF_LEN * 3 / 4;
/// Longest `htu` compared (longer URIs are refused).
const MAX_HTU_LEN: usize = 2048;
/// Longest `jti` accepted (RFC 9449 asks for enough randomness, not a length; 96 random
/// bits encode in 16 characters).
const MAX_JTI_LEN: usize = 256;
/// How long after its `iat` a proof is accepted, by default (plus the clock leeway).
pub const DEFAULT_MAX_AGE_SECS: i64 = 60;
/// The proof algorithms accepted, as `WWW-Authenticate`'s `algs` parameter lists them.
/// `Ed25519` is RFC 9864's fully specified name for what JOSE long called `EdDSA` (panva's
/// `dpop` package writes it); both are Ed25519 here.
pub const ALGS: &str = "EdDSA Ed25519 ES256";

/// The request a proof must describe.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The method, compared exactly (methods are case-sensitive, RFC 9110 §9.1).
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// The authority the client addressed (`Host`), with or without a port.
    pub host: &'a str,
    /// The path; a query or fragment is ignored.
    pub path: &'a str,
}

/// What a proof is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    pub target: Target<'a>,
    /// The access token sent with the proof: its SHA-256 must be the proof's `ath`.
    /// `None` at token endpoints, where `ath` is not checked.
    pub access_token: Option<&'a [u8]>,
    /// The thumbprint the access token (or refresh token) is bound to.
    pub jkt: Option<&'a [u8; 32]>,
    pub now: i64,
    /// How long after its `iat` a proof is accepted.
    pub max_age_secs: i64,
    /// Clock skew tolerated on `iat`, both ways.
    pub leeway_secs: i64,
}

/// Where a proof's payload is decoded; the accepted [`Proof`] borrows from it.
#[derive(Debug)]
pub struct ProofBuf {
    payload: [u8; MAX_PROOF_PAYLOAD],
}

impl ProofBuf {
    pub const fn new() -> Self {
        Self {
            payload: [0; MAX_PROOF_PAYLOAD],
        }
    }
}

impl Default for ProofBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// An accepted proof.
#[derive(Clone, Copy, Debug)]
pub struct Proof<'p> {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key.
    pub jkt: [u8; 32],
    /// `jti` as written in the proof (JSON escapes not decoded).
    pub jti: &'p str,
    pub iat: i64,
    /// `nonce` as written in the proof, when there is one.
    pub nonce: Option<&'p str>,
}

impl Proof<'_> {
    /// The last second at which this proof could still be accepted: how long a replay
    /// table must remember it.
    pub fn usable_until(&self, expect: &Expect<'_>) -> i64 {
        self.iat
            .saturating_add(expect.max_age_secs)
            .saturating_add(expect.leeway_secs)
    }
}

/// The thumbprint as `cnf.jkt` writes it (base64url, 43 characters).
pub fn jkt_text(jkt: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jkt)
}

const fn refuse(reason: &'static str) -> Reject {
    Reject {
        code: ErrorCode::InvalidDpopProof,
        reason,
    }
}

/// Checks `proof` (the `DPoP` header's value) against `expect`.
pub fn check<'p>(
    proof: &[u8],
    expect: &Expect<'_>,
    buf: &'p mut ProofBuf,
) -> Result<Proof<'p>, Reject> {
    check_with(proof, expect, None, buf)
}

/// [`check`], with the tables of the Ed25519 keys that prove often (see [`KeyTables`]).
pub fn check_with<'p>(
    proof: &[u8],
    expect: &Expect<'_>,
    tables: Option<&KeyTables>,
    buf: &'p mut ProofBuf,
) -> Result<Proof<'p>, Reject> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(refuse("proof exceeds the size cap"));
    }
    let segments = jose::split(proof).map_err(|_| refuse("proof is not a compact JWS"))?;
    let mut header_buf = [0u8; jose::MAX_HEADER_LEN];
    let header = b64_decode(segments.header, &mut header_buf)
        .map_err(|_| refuse("proof header is not strict base64url"))?;
    let key = read_header(header)?;
    let jkt = key.thumbprint();
    if expect.jkt.is_some_and(|want| *want != jkt) {
        return Err(refuse("proof key is not the key the token is bound to"));
    }
    let mut signature = [0u8; 96];
    let signature = b64_decode(segments.signature, &mut signature)
        .map_err(|_| refuse("proof signature is not strict base64url"))?;
    if !key.verifies(segments.signing_input, signature, tables) {
        return Err(refuse("proof signature does not verify"));
    }

    let payload = b64_decode(segments.payload, &mut buf.payload)
        .map_err(|_| refuse("proof payload is not strict base64url"))?;
    let payload = std::str::from_utf8(payload).map_err(|_| refuse("proof payload is not UTF-8"))?;
    let claims = read_claims(payload)?;
    if !claims.htm.eq_str(expect.target.method) {
        return Err(refuse("proof htm is not the request's method"));
    }
    let mut htu_buf = [0u8; MAX_HTU_LEN];
    let htu = match claims.htu.as_plain() {
        Some(plain) => plain,
        None => claims
            .htu
            .decode_into(&mut htu_buf)
            .ok_or(refuse("proof htu is too long"))?,
    };
    if !htu_matches(htu, &expect.target) {
        return Err(refuse("proof htu is not the request's URI"));
    }
    let leeway = expect.leeway_secs;
    if claims.iat > expect.now.saturating_add(leeway) {
        return Err(refuse("proof iat is in the future"));
    }
    if claims.iat
        < expect
            .now
            .saturating_sub(expect.max_age_secs.saturating_add(leeway))
    {
        return Err(refuse("proof is too old"));
    }
    if let Some(token) = expect.access_token {
        let ath = claims.ath.ok_or(refuse("proof ath missing"))?;
        let mut hash = [0u8; 33];
        let decoded = ath
            .as_plain()
            .and_then(|a| b64_decode(a.as_bytes(), &mut hash).ok())
            .ok_or(refuse("proof ath is not base64url"))?;
        let hash: [u8; 32] = Sha256::digest(token).into();
        if decoded != hash {
            return Err(refuse("proof ath is not the access token's hash"));
        }
    }
    Ok(Proof {
        jkt,
        jti: claims.jti.raw(),
        iat: claims.iat,
        nonce: claims.nonce.map(|n| n.raw()),
    })
}

/// A proof's public key, read from its `jwk` header.
enum ProofKey<'a> {
    /// `x` as written (its text is hashed into the thumbprint) and as bytes.
    Ed25519 { x: &'a str, point: [u8; 32] },
    /// `x` and `y` as written, and the uncompressed SEC1 point ring takes.
    P256 {
        x: &'a str,
        y: &'a str,
        point: [u8; 65],
    },
}

impl ProofKey<'_> {
    /// RFC 7638: SHA-256 over the required members in lexicographic order, no
    /// whitespace. The coordinates' text is canonical base64url (checked when read), so
    /// it is hashed as written.
    fn thumbprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            ProofKey::Ed25519 { x, .. } => {
                h.update(br#"{"crv":"Ed25519","kty":"OKP","x":""#);
                h.update(x.as_bytes());
                h.update(br#""}"#);
            }
            ProofKey::P256 { x, y, .. } => {
                h.update(br#"{"crv":"P-256","kty":"EC","x":""#);
                h.update(x.as_bytes());
                h.update(br#"","y":""#);
                h.update(y.as_bytes());
                h.update(br#""}"#);
            }
        }
        h.finalize().into()
    }

    fn verifies(&self, message: &[u8], signature: &[u8], tables: Option<&KeyTables>) -> bool {
        let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        match self {
            ProofKey::Ed25519 { point, .. } => {
                if let Some(verdict) = tables.and_then(|t| t.verify(point, message, signature)) {
                    return verdict;
                }
                let verdict = ed25519_verify_strict_once(point, message, signature);
                if verdict && let Some(tables) = tables {
                    tables.learn(point);
                }
                verdict
            }
            ProofKey::P256 { point, .. } => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(message, signature)
            .is_ok(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProofAlg {
    EdDSA,
    Es256,
}

/// Reads the proof's JOSE header: `typ`, `alg` and the key. Members that change how the
/// JWS is read (`crit`, `b64`, `zip`, `enc`, `cty`) are refused; others are ignored.
fn read_header(doc: &[u8]) -> Result<ProofKey<'_>, Reject> {
    let (mut typ, mut alg, mut jwk) = (None, None, None);
    json::for_each_member(doc, |name, value| {
        match name {
            "typ" => typ = Some(value.as_str().ok_or(JsonError::Syntax)?),
            "alg" => alg = Some(value.as_str().ok_or(JsonError::Syntax)?),
            "jwk" => match value {
                Value::Object(raw) => jwk = Some(raw),
                _ => return Err(JsonError::Syntax),
            },
            "crit" | "b64" | "zip" | "enc" | "cty" => return Err(JsonError::Syntax),
            _ => {}
        }
        Ok(())
    })
    .map_err(|_| refuse("proof header is malformed or has a refused member"))?;
    if !typ.is_some_and(|t| {
        t.as_plain()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    }) {
        return Err(refuse("proof typ is not dpop+jwt"));
    }
    let alg = match alg.and_then(|a| a.as_plain()) {
        Some("EdDSA" | "Ed25519") => ProofAlg::EdDSA,
        Some("ES256") => ProofAlg::Es256,
        _ => return Err(refuse("proof alg is not EdDSA or ES256")),
    };
    read_jwk(jwk.ok_or(refuse("proof jwk missing"))?, alg)
}

/// Reads the proof's `jwk`: a public key of the type `alg` names, nothing private.
fn read_jwk(raw: &str, alg: ProofAlg) -> Result<ProofKey<'_>, Reject> {
    const PRIVATE: Reject = refuse("proof jwk holds private key material");
    let (mut kty, mut crv, mut x, mut y, mut private) = (None, None, None, None, false);
    json::for_each_member_str(raw, |name, value| {
        let text = || {
            value
                .as_str()
                .and_then(|s| s.as_plain())
                .ok_or(JsonError::Syntax)
        };
        match name {
            "kty" => kty = Some(text()?),
            "crv" => crv = Some(text()?),
            "x" => x = Some(text()?),
            "y" => y = Some(text()?),
            "d" | "p" | "q" | "dp" | "dq" | "qi" | "oth" | "k" => private = true,
            _ => {}
        }
        Ok(())
    })
    .map_err(|_| refuse("proof jwk is malformed"))?;
    if private {
        return Err(PRIVATE);
    }
    let coordinate = |text: Option<&str>| -> Result<[u8; 32], Reject> {
        let mut out = [0u8; 33];
        let bytes = b64_decode(text.unwrap_or("").as_bytes(), &mut out)
            .map_err(|_| refuse("proof jwk coordinate is not base64url"))?;
        <[u8; 32]>::try_from(bytes).map_err(|_| refuse("proof jwk coordinate has the wrong size"))
    };
    match (alg, kty, crv) {
        (ProofAlg::EdDSA, Some("OKP"), Some("Ed25519")) if y.is_none() => {
            let point = coordinate(x)?;
            Ok(ProofKey::Ed25519 {
                x: x.unwrap_or(""),
                point,
            })
        }
        (ProofAlg::Es256, Some("EC"), Some("P-256")) => {
            let mut point = [4u8; 65];
            point[1..33].copy_from_slice(&coordinate(x)?);
            point[33..].copy_from_slice(&coordinate(y)?);
            Ok(ProofKey::P256 {
                x: x.unwrap_or(""),
                y: y.unwrap_or(""),
                point,
            })
        }
        _ => Err(refuse("proof jwk is not a key for its alg")),
    }
}

struct ProofClaims<'a> {
    jti: JsonStr<'a>,
    htm: JsonStr<'a>,
    htu: JsonStr<'a>,
    iat: i64,
    ath: Option<JsonStr<'a>>,
    nonce: Option<JsonStr<'a>>,
}

fn read_claims(doc: &str) -> Result<ProofClaims<'_>, Reject> {
    let (mut jti, mut htm, mut htu, mut iat, mut ath, mut nonce) =
        (None, None, None, None, None, None);
    json::for_each_member_str(doc, |name, value| {
        let string = || value.as_str().ok_or(JsonError::Syntax);
        match name {
            "jti" => jti = Some(string()?),
            "htm" => htm = Some(string()?),
            "htu" => htu = Some(string()?),
            "ath" => ath = Some(string()?),
            "nonce" => nonce = Some(string()?),
            "iat" => iat = Some(value.as_numeric_date().ok_or(JsonError::Syntax)?),
            _ => {}
        }
        Ok(())
    })
    .map_err(|_| refuse("proof claims are malformed or mistyped"))?;
    let jti = jti
        .filter(|j| (1..=MAX_JTI_LEN).contains(&j.raw().len()))
        .ok_or(refuse("proof jti missing or too long"))?;
    Ok(ProofClaims {
        jti,
        htm: htm.ok_or(refuse("proof htm missing"))?,
        htu: htu.ok_or(refuse("proof htu missing"))?,
        iat: iat.ok_or(refuse("proof iat missing"))?,
        ath,
        nonce,
    })
}

/// Whether the proof's `htu` names the request's URI (RFC 9449 §4.3, RFC 3986 §6.2.2 and
/// §6.2.3): the scheme and host compare case-insensitively, a port that is the scheme's
/// default (443, 80) counts as absent, an empty path is `/`, the query and fragment are
/// ignored, and percent-encoded octets compare with their hex digits in either case.
/// Nothing else is normalized: no dot segments, no decoding of unreserved characters, no
/// user information (refused).
pub fn htu_matches(htu: &str, target: &Target<'_>) -> bool {
    let Some((scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(target.scheme) {
        return false;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return false;
    }
    let target_path = target.path.split(['?', '#']).next().unwrap_or("");
    without_default_port(authority, scheme)
        .eq_ignore_ascii_case(without_default_port(target.host, target.scheme))
        && paths_equal(or_root(path), or_root(target_path))
}

fn or_root(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

fn without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// Byte equality, except that the two hex digits after each `%` compare in either case.
fn paths_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut hex = 0;
    a.iter().zip(b).all(|(x, y)| {
        let same = if hex > 0 {
            hex -= 1;
            x.eq_ignore_ascii_case(y)
        } else {
            x == y
        };
        if *x == b'%' && same {
            hex = 2;
        }
        same
    })
}

/// Precomputed tables for the Ed25519 keys that prove most: a client proves with the same
/// key on every request, so after its second valid proof its key gets a radix-16 table of
/// `-A`, and its later proofs are checked as the verifier checks tokens (`[S]B - [k]A` as
/// two fixed-base multiplications, [`super::keys::Ed25519Key::verify_strict`]): about a
/// third less than the variable-base check a key used once needs.
///
/// Fixed size, allocated once: direct-mapped slots of 30 KiB, each under a read-write lock
/// (a hit takes a read lock; learning a key takes the write lock only if it is free, and
/// never waits). A key is learned only after it made a valid signature, and only on its
/// second sighting in its slot, so one-off keys (and a flood of them) never cost a table
/// build; a key pushed out by another one just takes the slow path again. The slot is
/// chosen by the key's own bytes: a client grinding keys into another's slot only makes
/// that client's proofs slower, never accepted or refused differently.
pub struct KeyTables {
    slots: Box<[RwLock<TableSlot>]>,
}

struct TableSlot {
    /// The key whose table this is (all zero: none; no valid key encodes as that).
    key: [u8; 32],
    /// The last key seen here without a table: the next sighting builds one.
    seen: [u8; 32],
    minus_a: EdwardsBasepointTable,
}

impl std::fmt::Debug for KeyTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTables")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl KeyTables {
    /// `slots` tables (at least one), 30 KiB each.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1))
                .map(|_| {
                    RwLock::new(TableSlot {
                        key: [0; 32],
                        seen: [0; 32],
                        minus_a: ED25519_BASEPOINT_TABLE.clone(),
                    })
                })
                .collect(),
        }
    }

    fn slot(&self, key: &[u8; 32]) -> &RwLock<TableSlot> {
        let mut index = [0u8; 8];
        index.copy_from_slice(&key[..8]);
        let index = u64::from_le_bytes(index) as usize % self.slots.len();
        &self.slots[index]
    }

    /// The strict verdict over `key`'s table, when it has one.
    fn verify(&self, key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> Option<bool> {
        let slot = self
            .slot(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.key != *key {
            return None;
        }
        Some(strict(key, message, signature, |k, s| {
            ED25519_BASEPOINT_TABLE * s + slot.minus_a.mul_base(k)
        }))
    }

    /// `key` just made a valid signature: remember it, and build its table the second time.
    fn learn(&self, key: &[u8; 32]) {
        let Ok(mut slot) = self.slot(key).try_write() else {
            return;
        };
        if slot.key == *key {
            return;
        }
        if slot.seen != *key {
            slot.seen = *key;
            return;
        }
        // It verified a signature, so it decompresses and is not of small order.
        let Some(a) = CompressedEdwardsY(*key).decompress() else {
            return;
        };
        slot.minus_a = EdwardsBasepointTable::create(&-a);
        slot.key = *key;
    }
}

/// Ways per bucket of the [`ReplayTable`]: one 64-byte cache line of entries.
const WAYS: usize = 8;

/// What the replay table says about a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before; now remembered. `evicted` is true when remembering it pushed out
    /// another proof that was still usable (the table is too small for the traffic).
    First { evicted: bool },
    /// Seen before, and still usable: a replay.
    Again,
}

/// The proofs a process has accepted, remembered until they could no longer be accepted
/// anyway (`iat` past the window), so a replayed `jti` is refused.
///
/// Fixed size, allocated once: buckets of [`WAYS`] entries, each a 32-bit fingerprint of
/// the (key thumbprint, `jti`) pair and the second the proof stops being usable, under a
/// lock held for a few comparisons. The bucket and fingerprint come from SipHash keyed
/// with a secret drawn at start, so a client cannot aim its proofs at one bucket. An
/// expired entry is reused first; a bucket full of live entries gives up the one that
/// expires soonest, and says so ([`Seen::First`] `evicted`), which is what bounds the
/// memory: size it at (proofs per second) × (window) entries. A fingerprint collision
/// can refuse a fresh proof as a replay with odds of about 2^-29 per proof (8 ways ×
/// 2^-32); the client's next proof gets through.
pub struct ReplayTable {
    buckets: Box<[Mutex<[u64; WAYS]>]>,
    mask: usize,
    hasher: SipHasher13,
}

impl std::fmt::Debug for ReplayTable {
    // Never prints the hash key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayTable")
            .field("entries", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl ReplayTable {
    /// A table of at least `entries` entries (rounded up to a power of two, at least one
    /// bucket), keyed with `key`, which must be secret and random.
    pub fn new(entries: usize, key: [u8; 16]) -> Self {
        let buckets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        Self {
            buckets: (0..buckets).map(|_| Mutex::new([0; WAYS])).collect(),
            mask: buckets - 1,
            hasher: SipHasher13::new_with_key(&key),
        }
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Records the proof `jti` made with key `jkt`, usable until `until`, at time `now`;
    /// says whether it was seen before.
    pub fn first_use(&self, jkt: &[u8; 32], jti: &str, until: i64, now: i64) -> Seen {
        let mut h = self.hasher;
        std::hash::Hasher::write(&mut h, jkt);
        std::hash::Hasher::write(&mut h, jti.as_bytes());
        let h = h.finish128();
        // Fingerprint 0 marks an empty way.
        let fingerprint = (h.h2 as u32).max(1);
        let until = until.clamp(now, i64::from(u32::MAX)) as u32;
        let now = now.clamp(0, i64::from(u32::MAX)) as u32;
        let Some(bucket) = self.buckets.get(h.h1 as usize & self.mask) else {
            return Seen::First { evicted: false };
        };
        let mut ways = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let print = |w: u64| (w >> 32) as u32;
        let expiry = |w: u64| w as u32;
        let live = |w: u64| w != 0 && expiry(w) >= now;
        if ways.iter().any(|w| live(*w) && print(*w) == fingerprint) {
            return Seen::Again;
        }
        // The way to take: an empty or expired one, else the one expiring soonest.
        let (slot, evicted) = match ways.iter().position(|w| !live(*w)) {
            Some(i) => (i, false),
            None => {
                let soonest = (0..WAYS).min_by_key(|i| expiry(ways[*i])).unwrap_or(0);
                (soonest, true)
            }
        };
        ways[slot] = u64::from(fingerprint) << 32 | u64::from(until);
        Seen::First { evicted }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target<'a>(method: &'a str, host: &'a str, path: &'a str) -> Target<'a> {
        Target {
            method,
            scheme: "https",
            host,
            path,
        }
    }

    #[test]
    fn htu_normalization() {
        let t = target("GET", "api.example.com", "/v1/things/%7e");
        for ok in [
            "https://api.example.com/v1/things/%7e",
            "HTTPS://API.Example.COM/v1/things/%7E",
            "https://api.example.com:443/v1/things/%7e",
            "https://api.example.com/v1/things/%7e?q=1",
            "https://api.example.com/v1/things/%7e#f",
        ] {
            assert!(htu_matches(ok, &t), "{ok}");
        }
        for bad in [
            "http://api.example.com/v1/things/%7e",
            "https://api.example.com:8443/v1/things/%7e",
            "https://api.example.com/v1/things/~",
            "https://api.example.com/v1/Things/%7e",
            "https://evil.test/v1/things/%7e",
            "https://user@api.example.com/v1/things/%7e",
            "https://api.example.com/v1/things/%7e/",
            "//api.example.com/v1/things/%7e",
            "api.example.com/v1/things/%7e",
        ] {
            assert!(!htu_matches(bad, &t), "{bad}");
        }
        // The target's own port and query are normalized the same way; an empty path is /.
        let t = target("GET", "h.test:443", "/?x=1");
        assert!(htu_matches("https://h.test", &t));
        let t = Target {
            scheme: "http",
            ..target("GET", "h.test:80", "/a")
        };
        assert!(htu_matches("http://h.test/a", &t));
        assert!(!htu_matches("http://h.test:8080/a", &t));
    }

    /// With tables, the verdict is the same as without, for the key learned and others,
    /// valid signatures and corrupted ones.
    #[test]
    fn key_tables_change_no_verdict() {
        use ed25519_dalek::Signer;
        let tables = KeyTables::new(2);
        let keys: Vec<_> = (1..=3u8)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
            .collect();
        for round in 0..4 {
            for (i, sk) in keys.iter().enumerate() {
                let public = sk.verifying_key().to_bytes();
                let message = format!("message {round} {i}");
                let good = sk.sign(message.as_bytes()).to_bytes();
                let mut bad = good;
                bad[40] ^= 1;
                let key = ProofKey::Ed25519 {
                    x: "",
                    point: public,
                };
                assert!(key.verifies(message.as_bytes(), &good, Some(&tables)));
                assert!(!key.verifies(message.as_bytes(), &bad, Some(&tables)));
                assert!(!key.verifies(b"another message", &good, Some(&tables)));
            }
        }
        // Keys 1 and 3 share a slot or not; either way some key got a table by now.
        assert!(
            tables
                .slots
                .iter()
                .any(|s| s.read().unwrap().key != [0; 32])
        );
    }

    #[test]
    fn replay_table_remembers_until_expiry() {
        let table = ReplayTable::new(64, [7; 16]);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            table.first_use(&a, "j1", 160, 100),
            Seen::First { evicted: false }
        );
        assert_eq!(table.first_use(&a, "j1", 160, 150), Seen::Again);
        // Another key's jti of the same text is another proof.
        assert_eq!(
            table.first_use(&b, "j1", 160, 150),
            Seen::First { evicted: false }
        );
        // Once the proof could no longer be accepted, its entry may go.
        assert_eq!(
            table.first_use(&a, "j1", 300, 161),
            Seen::First { evicted: false }
        );
    }

    #[test]
    fn a_full_table_evicts_the_soonest_and_says_so() {
        let table = ReplayTable::new(1, [7; 16]);
        assert_eq!(table.capacity(), WAYS);
        let key = [3u8; 32];
        for i in 0..WAYS {
            let jti = format!("j{i}");
            assert_eq!(
                table.first_use(&key, &jti, 200 + i as i64, 100),
                Seen::First { evicted: false }
            );
        }
        assert_eq!(
            table.first_use(&key, "late", 300, 100),
            Seen::First { evicted: true }
        );
        // j0 (expiring soonest) was given up; the others are still remembered.
        assert_eq!(table.first_use(&key, "j1", 300, 100), Seen::Again);
        assert_eq!(table.first_use(&key, "late", 300, 100), Seen::Again);
    }
}
