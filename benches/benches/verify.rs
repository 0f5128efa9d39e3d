//! Criterion benches of one token verification, all on the same token bytes (a realistic
//! Portcullis access token, ~630 bytes, claims as in the verifier's tests):
//!
//! - `verify_strict/bare`: `ed25519_dalek::VerifyingKey::verify_strict` over the signing
//!   input, signature already decoded. The floor: the signature math alone.
//! - `verify_strict/split+b64`: the same plus finding the signature and base64url-decoding
//!   it: the least any server checking a signature per request does.
//! - `verify_core/uncached`: `portcullis_verifier::core::Verifier` with the cache disabled
//!   (size 0): size cap, split, header, `typ`, `kid` lookup, strict signature over the
//!   key's precomputed table, claims, identity, revocation. Target: at most 0.9x
//!   `verify_strict/bare`.
//! - `verify_core/cached`: the same with a 65,536-entry cache after one warm verify, so
//!   every iteration is a cache hit (one keyed hash and a slot read; times and
//!   revocations still checked). Target: at most 250 ns.
//! - `jsonwebtoken/decode`: `jsonwebtoken::decode` with validation as close as it allows
//!   (see [`jsonwebtoken_decode`]), reported as a ratio.
//! - `dpop/proof_eddsa`, `dpop/proof_es256`: `core::dpop::check` on one proof (header, key,
//!   thumbprint, signature, claims, `htu`, `ath`), without the replay table;
//! - `dpop/replay_first_use`: one insertion into the replay table (a new proof each time);
//! - `dpop/cached_token+proof`: what a request with a DPoP-bound token costs the core once
//!   the token is cached and the client's key has its table (`KeyTables`, as the sidecar
//!   runs it): the cache hit, the EdDSA proof check and the replay table.
//!
//! Run: `cargo bench -p portcullis-benches --bench verify` (about 25 s); a smoke run:
//! `... --bench verify -- --warm-up-time 1 --measurement-time 1`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::Signature;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_benches::{
    AUDIENCE, ISSUER, LEEWAY_SECS, kid, mint, settings, signing_key, snapshot, split_signature,
    unix_now, verify_compact_strict,
};
use portcullis_common::token::{ACCESS_TOKEN_TYP, AccessTokenClaims};
use portcullis_verifier::core::{Scratch, Verifier};

/// Cache size of the cached bench: the verifier's default.
const CACHE_ENTRIES: usize = 65_536;

/// `jsonwebtoken::decode` configured to check what the verifier checks, as far as it can.
///
/// Same: algorithm pinned to EdDSA, signature, `exp` (required, leeway 30 s), `nbf`
/// (checked when present, leeway 30 s), `iss` and `aud` (required, exact match), and `typ`
/// and `kid` compared after decoding (jsonwebtoken does not check them; the verifier looks
/// the key up by `kid`, here the single key is given).
///
/// Different: jsonwebtoken verifies with ed25519-dalek's non-strict `verify` (the verifier
/// is strict), does not check `iat` against the clock, does not refuse duplicate JSON
/// members, non-canonical base64url or oversized tokens, reads the clock itself, parses the
/// claims twice (once for validation, once into the owned [`AccessTokenClaims`], which
/// allocates), and has no revocation lookup (the verifier probes two empty sets here).
struct JwtDecode {
    key: DecodingKey,
    validation: Validation,
    kid: String,
}

impl JwtDecode {
    fn new(x_b64: &str, kid: String) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Self {
            key: DecodingKey::from_ed_components(x_b64).expect("a valid Ed25519 x"),
            validation,
            kid,
        }
    }

    fn decode(&self, token: &str) -> Option<AccessTokenClaims> {
        let data =
            jsonwebtoken::decode::<AccessTokenClaims>(token, &self.key, &self.validation).ok()?;
        let typ_ok = data
            .header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP));
        let kid_ok = data.header.kid.as_deref() == Some(self.kid.as_str());
        (typ_ok && kid_ok).then_some(data.claims)
    }
}

/// See the module documentation.
fn jsonwebtoken_decode(c: &mut Criterion, token: &str, x_b64: &str, kid: String) {
    let jwt = JwtDecode::new(x_b64, kid);
    assert!(
        jwt.decode(token).is_some(),
        "jsonwebtoken refuses the token"
    );
    c.bench_function("jsonwebtoken/decode", |b| {
        b.iter(|| jwt.decode(black_box(token)))
    });
}

fn verify(c: &mut Criterion) {
    let key = signing_key(7);
    let public = key.verifying_key();
    let now = unix_now();
    let token = mint(&key, now, "0190a1b2-0000-7000-8000-0000000000aa");
    let bytes = token.as_bytes();
    let snap = snapshot(&[public]).expect("the bench key set loads");

    let (signing_input, sig_b64) = split_signature(bytes).expect("a compact JWS");
    let sig = Signature::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig_b64)
            .expect("base64url signature"),
    )
    .expect("a 64-byte signature");
    assert!(public.verify_strict(signing_input, &sig).is_ok());
    assert!(verify_compact_strict(&public, bytes));
    c.bench_function("verify_strict/bare", |b| {
        b.iter(|| public.verify_strict(black_box(signing_input), black_box(&sig)))
    });
    c.bench_function("verify_strict/split+b64", |b| {
        b.iter(|| verify_compact_strict(&public, black_box(bytes)))
    });

    let mut scratch = Scratch::default();
    let uncached = Verifier::new(settings(), 0);
    let v = uncached
        .verify(bytes, now, &snap, &mut scratch)
        .expect("the verifier accepts the bench token");
    assert!(!v.cached);
    c.bench_function("verify_core/uncached", |b| {
        b.iter(|| {
            uncached
                .verify(black_box(bytes), now, &snap, &mut scratch)
                .is_ok()
        })
    });

    let cached = Verifier::new(settings(), CACHE_ENTRIES);
    let warm = cached.verify(bytes, now, &snap, &mut scratch);
    assert!(warm.is_ok_and(|v| !v.cached));
    let hit = cached.verify(bytes, now, &snap, &mut scratch);
    assert!(
        hit.is_ok_and(|v| v.cached),
        "second verify must hit the cache"
    );
    c.bench_function("verify_core/cached", |b| {
        b.iter(|| {
            cached
                .verify(black_box(bytes), now, &snap, &mut scratch)
                .is_ok()
        })
    });

    let x_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        public.as_bytes(),
    );
    jsonwebtoken_decode(c, &token, &x_b64, kid(&public));
    dpop(c, &key, now);
}

/// See the module documentation: the DPoP benches.
fn dpop(c: &mut Criterion, key: &ed25519_dalek::SigningKey, now: i64) {
    use portcullis_tests::dpop::LocalKey;
    use portcullis_verifier::core::dpop::{
        self, Expect, KeyTables, ProofBuf, ReplayTable, Seen, Target,
    };

    let snap = snapshot(&[key.verifying_key()]).expect("the bench key set loads");
    let url = "https://api.example.test/api/orders";
    let target = Target {
        method: "GET",
        scheme: "https",
        host: "api.example.test",
        path: "/api/orders",
    };
    let mut buf = ProofBuf::new();
    for (name, holder) in [
        ("dpop/proof_eddsa", LocalKey::ed25519(9)),
        ("dpop/proof_es256", LocalKey::p256()),
    ] {
        let minter = portcullis_benches::Minter::new(key.clone(), ISSUER, AUDIENCE);
        let token = minter.mint_bound(now, "j", "s", Some(&holder.jkt()));
        let proof = holder.proof("GET", url, "p", now, &token);
        let jkt: [u8; 32] = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            holder.jkt(),
        )
        .ok()
        .and_then(|j| j.try_into().ok())
        .expect("a thumbprint");
        let expect = Expect {
            target,
            access_token: Some(token.as_bytes()),
            jkt: Some(&jkt),
            now,
            max_age_secs: dpop::DEFAULT_MAX_AGE_SECS,
            leeway_secs: LEEWAY_SECS,
        };
        assert!(dpop::check(proof.as_bytes(), &expect, &mut buf).is_ok());
        c.bench_function(name, |b| {
            b.iter(|| dpop::check(black_box(proof.as_bytes()), &expect, &mut buf).is_ok())
        });
        if name != "dpop/proof_eddsa" {
            continue;
        }
        let replay = ReplayTable::new(1 << 20, [3; 16]);
        let mut n = 0u64;
        c.bench_function("dpop/replay_first_use", |b| {
            b.iter(|| {
                n += 1;
                let mut jkt = jkt;
                jkt[..8].copy_from_slice(&n.to_le_bytes());
                replay.first_use(&jkt, "jti", now + 90, now)
            })
        });
        let cached = Verifier::new(settings(), CACHE_ENTRIES);
        let mut scratch = Scratch::default();
        assert!(
            cached
                .verify(token.as_bytes(), now, &snap, &mut scratch)
                .is_ok()
        );
        let replay = ReplayTable::new(1 << 20, [4; 16]);
        let tables = KeyTables::new(64);
        for _ in 0..2 {
            assert!(dpop::check_with(proof.as_bytes(), &expect, Some(&tables), &mut buf).is_ok());
        }
        let mut n = 0u64;
        c.bench_function("dpop/cached_token+proof", |b| {
            b.iter(|| {
                let v = cached
                    .verify(black_box(token.as_bytes()), now, &snap, &mut scratch)
                    .ok()?;
                let bound = v.identity.facts().jkt()?;
                let proof = dpop::check_with(
                    proof.as_bytes(),
                    &Expect {
                        jkt: Some(bound),
                        ..expect
                    },
                    Some(&tables),
                    &mut buf,
                )
                .ok()?;
                // A new proof each time, as a client sends: vary the jti's key.
                n += 1;
                let mut jkt = proof.jkt;
                jkt[..8].copy_from_slice(&n.to_le_bytes());
                (replay.first_use(&jkt, proof.jti, now + 90, now) != Seen::Again).then_some(())
            })
        });
    }
}

criterion_group! {
    name = benches;
    // About 40 s for the whole bench; command-line flags override these.
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    targets = verify
}
criterion_main!(benches);
