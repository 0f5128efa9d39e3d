//! Harness bodies of the fuzz targets (each target in `fuzz_targets/` is one line calling
//! one of these), the fixed key and verifier they run against, and the seed corpus.
//!
//! - [`jose`]: `split`, strict base64url, `parse_header`, `parse_claims` and
//!   `json::for_each_member` on arbitrary bytes, then every accessor of what they return.
//! - [`verify`]: the whole `Verifier::verify` against a snapshot holding one fixed Ed25519
//!   key. Besides never panicking, it must accept only the tokens [`seeds`] minted with
//!   that key: the fuzzer cannot sign, and every other byte string (a re-encoded
//!   signature, a changed claim, a cache hit on a look-alike) must be refused. And the
//!   verified-token cache must change nothing: a verifier with a cache answers every
//!   input, seen once or twice, exactly as one without (same verdict, same identity).
//! - [`dpop`]: `core::dpop::check` of the input as a DPoP proof of a fixed request, and
//!   `htu_matches` of it as a URI. It must accept only the proof [`seeds`] signed (the
//!   fuzzer cannot sign with the proof's key either), and the replay table must then
//!   refuse it the second time.
//!
//! Everything is deterministic (fixed key, fixed `now`, Ed25519 signatures are
//! deterministic), so the seed files in `fuzz/seeds/` are exactly what [`seeds`] returns.
//! `cargo test` in this directory checks that; `PORTCULLIS_FUZZ_BLESS=1 cargo test`
//! rewrites them after a change here.

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use portcullis_common::ErrorCode;
use portcullis_common::jwk::{Jwk, Jwks};
use portcullis_verifier::core::dpop::{self, Expect, ProofBuf, ReplayTable, Seen, Target};
use portcullis_verifier::core::jose::{
    self, Audience, Claims, Header, b64_decode, parse_claims, parse_header, split,
};
use portcullis_verifier::core::json::{self, JsonStr, Value};
use portcullis_verifier::core::revocations::parse_uuid;
use portcullis_verifier::core::{
    Id, Identity, KeySet, RevocationsBuilder, Scratch, Settings, Snapshot, Trust, Verified,
    Verifier,
};

/// The `now` every verification runs at.
pub const NOW: i64 = 1_750_000_000;
const ISSUER: &str = "https://auth.portcullis.test";
const AUDIENCE: &str = "api";
/// Not a secret: the fuzzer knowing it changes nothing, it only ever sees the public key.
const SIGNING_SEED: [u8; 32] = [0x5a; 32];
const REVOKED_SID: &str = "7d0f3c1e-0000-4000-8000-00000000dead";
const CUT_OFF_USER: &str = "0b9e8a52-1111-4000-8000-0000000000c0";

/// The verifier, snapshot and accepted tokens, built (and self-checked) on first use.
struct Fixture {
    /// With a verified-token cache.
    verifier: Verifier,
    /// Without one: the reference the cached verifier must agree with.
    uncached: Verifier,
    snapshot: Snapshot,
    /// The only inputs `verify` may accept.
    accepted: Vec<Vec<u8>>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

/// One seed: its file name, bytes and, for signed tokens, the verdict expected at [`NOW`].
struct Seed {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Option<Result<(), ErrorCode>>,
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&SIGNING_SEED)
}

fn kid() -> String {
    Jwk::ed25519(signing_key().verifying_key().as_bytes())
        .kid
        .expect("Jwk::ed25519 sets a kid")
}

/// A compact JWS over the given header and claims text, signed with the fixed key.
fn mint(header: &str, claims: &str) -> Vec<u8> {
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = signing_key().sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    token.into_bytes()
}

/// The request every `dpop` input is checked against.
const DPOP_TARGET: Target<'static> = Target {
    method: "POST",
    scheme: "https",
    host: "api.portcullis.test",
    path: "/v1/orders",
};
/// The access token sent with the proof (its hash is the proof's `ath`).
const DPOP_TOKEN: &str = "access.token.bytes";
/// The proof key's seed (as public as [`SIGNING_SEED`]).
const PROOF_SEED: [u8; 32] = [0x3c; 32];

/// The one proof `dpop` may accept: by the fixed proof key, of [`DPOP_TARGET`] at [`NOW`].
fn dpop_proof() -> Vec<u8> {
    use sha2::Digest;
    let key = SigningKey::from_bytes(&PROOF_SEED);
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let header = format!(
        r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}}}"#
    );
    let ath = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(DPOP_TOKEN));
    let claims = format!(
        r#"{{"jti":"e1b2","htm":"POST","htu":"https:\/\/API.portcullis.test:443/v1/orders?x","iat":{NOW},"ath":"{ath}","nonce":"n"}}"#
    );
    let mut proof = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key.sign(proof.as_bytes());
    proof.push('.');
    proof.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    proof.into_bytes()
}

fn header(kid: &str) -> String {
    format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#)
}

fn claims(sub: &str, sid: &str, iat: i64, exp: i64) -> String {
    format!(
        r#"{{"iss":"{ISSUER}","sub":"{sub}","aud":"{AUDIENCE}","client_id":"web","iat":{iat},"nbf":{iat},"exp":{exp},"jti":"5f1c2d3e-2222-4000-8000-000000000001","sid":"{sid}","roles":["admin","ops"],"scope":"read write","amr":["pwd","otp"]}}"#
    )
}

/// The seed corpus (shared by both targets), in file-name order.
fn seeds() -> Vec<Seed> {
    let kid = kid();
    let user = "3c4d5e6f-3333-4000-8000-000000000042";
    let sid = "9a8b7c6d-4444-4000-8000-000000000007";
    let good_claims = claims(user, sid, NOW - 60, NOW + 3600);
    // Escapes wherever the verifier decodes on demand: `kid` lookup, `iss` comparison,
    // `aud` arrays, revocation ids; a fractional `exp`, a nested object, `typ` with the
    // `application/` prefix and a `jku` that must be read past.
    let escaped_kid = format!("\\u{:04x}{}", kid.as_bytes()[0], &kid[1..]);
    let escaped_header = format!(
        r#"{{"typ":"application/at+jwt","jku":"https://evil.test/jwks","alg":"EdDSA","kid":"{escaped_kid}"}}"#
    );
    let escaped_claims = format!(
        r#"{{ "iss" : "https:\/\/auth.portcullis.test", "sub":"\u0033c4d5e6f-3333-4000-8000-000000000042", "aud":["other","\u0061pi"], "exp":{}.5, "iat":{}, "sid":"x\ud83d\ude00\n", "guest":true, "ext":{{"a":[1,-2.5e3,true,null,{{}}]}}, "roles":[], "scope":"  read\twrite " }}"#,
        NOW + 3600,
        NOW - 60
    );
    let signed = |name, h: &str, c: &str, expect| Seed {
        name,
        bytes: mint(h, c),
        expect: Some(expect),
    };
    let text = |name, t: &str| Seed {
        name,
        bytes: t.as_bytes().to_vec(),
        expect: None,
    };
    vec![
        text("claims-escaped.json", &escaped_claims),
        text("claims.json", &good_claims),
        Seed {
            name: "dpop-proof",
            bytes: dpop_proof(),
            expect: None,
        },
        signed(
            "cut-off-token",
            &header(&kid),
            &claims(CUT_OFF_USER, sid, NOW - 60, NOW + 3600),
            Err(ErrorCode::TokenRevoked),
        ),
        signed(
            "expired-token",
            &header(&kid),
            &claims(user, sid, NOW - 7200, NOW - 3600),
            Err(ErrorCode::TokenExpired),
        ),
        text("header.json", &header(&kid)),
        signed(
            "revoked-token",
            &header(&kid),
            &claims(user, REVOKED_SID, NOW - 60, NOW + 3600),
            Err(ErrorCode::TokenRevoked),
        ),
        signed("valid-token", &header(&kid), &good_claims, Ok(())),
        signed(
            "valid-token-escaped",
            &escaped_header,
            &escaped_claims,
            Ok(()),
        ),
    ]
}

impl Fixture {
    fn new() -> Self {
        let jwks = Jwks {
            keys: vec![Jwk::ed25519(signing_key().verifying_key().as_bytes())],
        };
        let jwks = serde_json::to_vec(&jwks).expect("a JWKS serializes");
        let keys = KeySet::from_jwks(&jwks, Trust::Portcullis).expect("the fixed key loads");
        let mut revocations = RevocationsBuilder::new(NOW);
        revocations.session(REVOKED_SID, NOW + 86_400);
        revocations.user(CUT_OFF_USER, NOW);
        let snapshot = Snapshot {
            keys: Arc::new(keys),
            revocations: revocations.build(),
            version: 1,
        };
        let settings = Settings {
            issuers: vec![ISSUER.to_owned()],
            audiences: vec![AUDIENCE.to_owned()],
            leeway_secs: 60,
            typs: vec!["at+jwt".to_owned()],
        };
        // Cache on: a fuzz input equal to an accepted seed is a cache hit.
        let verifier = Verifier::new(settings.clone(), 1024);
        let uncached = Verifier::new(settings, 0);

        // Self-check, so a verifier change that makes the seeds meaningless is loud.
        let mut accepted = Vec::new();
        for seed in seeds() {
            let Some(expect) = seed.expect else { continue };
            let got = verifier
                .verify(&seed.bytes, NOW, &snapshot, &mut Scratch::default())
                .map(|_| ())
                .map_err(|r| r.code);
            assert_eq!(got, expect, "fuzz fixture out of date: seed {}", seed.name);
            if expect.is_ok() {
                accepted.push(seed.bytes);
            }
        }
        Self {
            verifier,
            uncached,
            snapshot,
            accepted,
        }
    }
}

/// Target `jose`: the parsers on arbitrary bytes.
pub fn jose(data: &[u8]) {
    // The input as a JSON document, a decoded header and a decoded claims set.
    let _ = json::for_each_member(data, |_, value| {
        touch_value(value);
        Ok(())
    });
    if let Ok(h) = parse_header(data) {
        touch_header(&h);
    }
    if let Ok(c) = parse_claims(data) {
        touch_claims(&c, data.len());
    }

    // The input as a compact token.
    let Ok(seg) = split(data) else { return };
    assert_eq!(
        seg.signing_input.len(),
        seg.header.len() + 1 + seg.payload.len()
    );
    let mut buf = [0u8; jose::MAX_PAYLOAD_LEN];
    if let Ok(Ok(h)) = b64_decode(seg.header, &mut buf[..jose::MAX_HEADER_LEN]).map(parse_header) {
        touch_header(&h);
    }
    if let Ok(Ok(c)) = b64_decode(seg.payload, &mut buf).map(parse_claims) {
        touch_claims(&c, jose::MAX_PAYLOAD_LEN);
    }
    let _ = b64_decode(seg.signature, &mut buf[..jose::MAX_SIGNATURE_LEN]);
}

/// Target `verify`: the whole verification, which must refuse all but the minted tokens,
/// and answer the same with the cache as without it.
pub fn verify(data: &[u8]) {
    let f = &*FIXTURE;
    let (mut a, mut b, mut c) = (Scratch::default(), Scratch::default(), Scratch::default());
    let reference = f.uncached.verify(data, NOW, &f.snapshot, &mut a);
    let first = f.verifier.verify(data, NOW, &f.snapshot, &mut b);
    let second = f.verifier.verify(data, NOW, &f.snapshot, &mut c);
    for got in [&first, &second] {
        assert_eq!(
            summary(got),
            summary(&reference),
            "the cache changed a verdict: {:?}",
            String::from_utf8_lossy(data)
        );
    }
    if let Ok(v) = reference {
        assert!(
            f.accepted.iter().any(|t| t == data),
            "accepted a token the fixed key never signed: {:?}",
            String::from_utf8_lossy(data)
        );
        touch_identity(&v.identity);
        let claims = parse_claims(
            v.payload
                .expect("an uncached verdict has its payload")
                .as_bytes(),
        )
        .expect("accepted claims parse");
        touch_claims(&claims, jose::MAX_PAYLOAD_LEN);
    }
}

/// Target `dpop`: the input as a proof (only the seed's may pass, once) and as a URI.
/// Returns whether the proof was accepted.
pub fn dpop(data: &[u8]) -> bool {
    if let Ok(uri) = std::str::from_utf8(data) {
        let _ = dpop::htu_matches(uri, &DPOP_TARGET);
    }
    let expect = Expect {
        target: DPOP_TARGET,
        access_token: Some(DPOP_TOKEN.as_bytes()),
        jkt: None,
        now: NOW,
        max_age_secs: dpop::DEFAULT_MAX_AGE_SECS,
        leeway_secs: 60,
    };
    let mut buf = ProofBuf::new();
    let Ok(proof) = dpop::check(data, &expect, &mut buf) else {
        return false;
    };
    assert!(
        data == dpop_proof().as_slice(),
        "accepted a proof its key never signed: {:?}",
        String::from_utf8_lossy(data)
    );
    assert_eq!(proof.nonce, Some("n"));
    let replay = ReplayTable::new(64, [1; 16]);
    let until = proof.usable_until(&expect);
    assert_eq!(
        replay.first_use(&proof.jkt, proof.jti, until, NOW),
        Seen::First { evicted: false }
    );
    assert_eq!(
        replay.first_use(&proof.jkt, proof.jti, until, NOW),
        Seen::Again
    );
    true
}

/// A verdict as comparable data: the error code, or every identity field.
fn summary(
    v: &Result<Verified<'_>, portcullis_verifier::core::Reject>,
) -> Result<String, ErrorCode> {
    match v {
        Ok(v) => {
            let who = &v.identity;
            Ok(format!(
                "{:?} {:?} {:?} {:?} {:?} {:?}",
                who.sub(),
                who.sid(),
                who.app(),
                who.roles_header(),
                who.scope(),
                who.facts()
            ))
        }
        Err(r) => Err(r.code),
    }
}

fn touch_identity(who: &Identity<'_>) {
    assert!(who.roles().all(|r| !r.is_empty() && !r.contains(',')));
    assert!(who.scopes().all(|s| !s.is_empty() && !s.contains(' ')));
    let revocations = &FIXTURE.snapshot.revocations;
    if let Some(sid) = who.sid() {
        let _ = revocations.session_revoked(Id::parse(sid));
    }
    if let Some(sub) = who.sub() {
        let _ = revocations.user_cutoff(Id::parse(sub));
    }
}

fn touch_header(h: &Header<'_>) {
    for s in [Some(h.alg), h.kid, h.typ].into_iter().flatten() {
        touch_str(s);
    }
    if let Some(kid) = h.kid {
        let _ = FIXTURE.snapshot.keys.get(kid);
    }
}

/// `doc_len`: the length of the document the claims were read from.
fn touch_claims(c: &Claims<'_>, doc_len: usize) {
    for s in [c.iss, c.sub, c.client_id, c.sid, c.jti, c.scope]
        .into_iter()
        .flatten()
    {
        touch_str(s);
    }
    match c.aud {
        Some(aud @ Audience::One(s)) => {
            touch_str(s);
            let _ = aud.contains(AUDIENCE);
        }
        Some(aud @ Audience::Many(v)) => {
            touch_value(v);
            let _ = aud.contains(AUDIENCE);
        }
        None => {}
    }
    c.roles().for_each(touch_str);
    assert!(c.scopes().all(|s| !s.is_empty() && !s.contains(' ')));
    // Any claims set renders an identity into a buffer as long as its document.
    let mut buf = vec![0u8; doc_len];
    let who = Identity::from_claims(c, &mut buf).expect("an identity fits a payload-sized buffer");
    touch_identity(&who);
}

fn touch_value(v: Value<'_>) {
    if let Some(s) = v.as_str() {
        touch_str(s);
    }
    let _ = v.as_numeric_date();
    if let Some(items) = v.strings() {
        items.for_each(touch_str);
    }
}

/// Decoding, comparing and the plain view of one string must agree with each other.
fn touch_str(s: JsonStr<'_>) {
    // Every escape is longer than what it decodes to, so the raw length always suffices.
    let mut buf = vec![0u8; s.raw().len()];
    let decoded = s
        .decode_into(&mut buf)
        .expect("a decoded string is never longer than its raw form");
    assert!(s.eq_str(decoded), "eq_str disagrees with decode_into");
    assert_eq!(decoded.chars().count(), s.chars().count());
    if let Some(plain) = s.as_plain() {
        assert_eq!(plain, decoded);
    }
    let _ = parse_uuid(decoded);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `fuzz/seeds/` holds exactly [`seeds`] (rewrite with `PORTCULLIS_FUZZ_BLESS=1`).
    #[test]
    fn seed_files_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let bless = std::env::var_os("PORTCULLIS_FUZZ_BLESS").is_some();
        let seeds = seeds();
        if bless {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                std::fs::remove_file(entry.path()).expect("remove an old seed");
            }
            std::fs::create_dir_all(&dir).expect("create fuzz/seeds");
        }
        for seed in &seeds {
            let path = dir.join(seed.name);
            if bless {
                std::fs::write(&path, &seed.bytes).expect("write a seed");
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == seed.bytes,
                "{} is stale; run PORTCULLIS_FUZZ_BLESS=1 cargo test in fuzz/",
                path.display()
            );
        }
        let files = std::fs::read_dir(&dir).expect("fuzz/seeds exists").count();
        assert_eq!(
            files,
            seeds.len(),
            "fuzz/seeds holds files seeds() does not make"
        );
    }

    #[test]
    fn targets_accept_their_seeds() {
        for seed in seeds() {
            jose(&seed.bytes);
            verify(&seed.bytes);
            assert_eq!(
                dpop(&seed.bytes),
                seed.name == "dpop-proof",
                "{}",
                seed.name
            );
        }
        assert_eq!(FIXTURE.accepted.len(), 2);
    }
}
