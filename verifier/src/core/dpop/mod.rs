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
//! (ES256). The replay table ([`replay`]) is a fixed array of small locked buckets; the
//! tables of the keys that prove most are in [`tables`].
//!
//! Order of checks: size, form, header (`typ` `dpop+jwt`, `alg` EdDSA (or `Ed25519`) or ES256 only, a
//! public `jwk` of that algorithm's key type and nothing private in it), the key's
//! RFC 7638 thumbprint against the token's `cnf.jkt`, the signature, then the claims:
//! `htm` equal to the method, `htu` equal to the request's URI (normalized, see
//! [`htu_matches`]), `iat` within the window, `ath` the token's SHA-256. Claims are read
//! only after the signature holds. Nonces and replay are the caller's: the control plane
//! issues nonces, and each process keeps its own [`ReplayTable`].

use portcullis_common::ErrorCode;
use sha2::{Digest, Sha256};

pub use self::replay::{ReplayTable, Seen};
pub use self::tables::KeyTables;
use super::Reject;
use super::jose::{self, b64_decode};
use super::json::{self, JsonError, JsonStr, Value};
use super::keys::ed25519_verify_strict_once;

mod replay;
mod tables;

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

/// How a request carried its access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer`.
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 §7.1).
    Dpop,
    /// A cookie.
    Cookie,
}

/// RFC 9449 §7, the rule for both binaries: a token bound to a key (`bound`, its
/// `cnf.jkt`) comes only under the `DPoP` scheme, and then needs a proof by that key (the
/// key returned); an unbound token comes only as `Bearer` or in a cookie (`None`: no proof
/// to check).
pub fn proof_key(bound: Option<&[u8; 32]>, scheme: Scheme) -> Result<Option<&[u8; 32]>, Reject> {
    match (bound, scheme) {
        (None, Scheme::Dpop) => Err(Reject {
            code: ErrorCode::InvalidToken,
            reason: "token is not DPoP-bound: send it as Bearer",
        }),
        (None, Scheme::Bearer | Scheme::Cookie) => Ok(None),
        (Some(_), Scheme::Bearer | Scheme::Cookie) => {
            Err(refuse("DPoP-bound token presented without DPoP"))
        }
        (Some(key), Scheme::Dpop) => Ok(Some(key)),
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
}
