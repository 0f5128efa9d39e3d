//! The verify path makes zero heap allocations, for accepted and rejected tokens, cached
//! or not, once warmed up. Counted by a global allocator with per-thread counters, so
//! tests running in parallel on other threads do not disturb the count.

// A global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use portcullis_verifier::core::{Revocations, Scratch};
use serde_json::json;

use crate::support::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn verify_allocates_nothing() {
    let key = signing_key(1);
    let other = signing_key(2);
    let v = verifier();
    let mut snap = snapshot(&[&key]);
    snap.revocations = Revocations::default()
        .with_session("0190a1b2-0000-7000-8000-00000000dead", NOW + 900, NOW)
        .with_user_cutoff("legacy-user", NOW, NOW);

    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims();
        c[name] = value;
        mint(&key, &header(&key), &c)
    };
    // Distinct accepted tokens, so each is verified uncached the first time.
    let fresh: Vec<String> = (0..50)
        .map(|i| with("jti", json!(format!("j{i}"))))
        .collect();
    let good = good_token(&key);
    let rejected = vec![
        with("exp", json!(NOW - 100)),
        with("nbf", json!(NOW + 100)),
        with("iss", json!("https://evil.test")),
        with("aud", json!(["x", "y"])),
        with("sid", json!("0190a1b2-0000-7000-8000-00000000dead")),
        with("sub", json!("legacy-user")),
        with("iss", json!("https:\\u002f\\u002fevil")),
        mint(&other, &header(&other), &claims()),
        mint(&other, &header(&key), &claims()),
        format!("{}x", good),
        "a.b".to_owned(),
        "x".repeat(10_000),
        format!(
            "{}.!!!.{}",
            good.split('.').next().unwrap(),
            good.rsplit('.').next().unwrap()
        ),
    ];

    let mut scratch = Scratch::default();
    let mut run_all = |tokens: &[String], expect_ok: bool| {
        for t in tokens {
            let res = v.verify(t.as_bytes(), NOW, &snap, &mut scratch);
            assert_eq!(res.is_ok(), expect_ok, "{t}: {res:?}");
        }
    };
    // Warm-up: lazily initialised statics inside dependencies.
    run_all(std::slice::from_ref(&good), true);
    run_all(&rejected, false);

    assert_eq!(
        allocations_during(|| run_all(&fresh, true)),
        0,
        "accepted, uncached"
    );
    assert_eq!(
        allocations_during(|| run_all(&fresh, true)),
        0,
        "accepted, cached"
    );
    let counts: Vec<u64> = rejected
        .iter()
        .map(|t| {
            allocations_during(|| {
                let _ = v.verify(t.as_bytes(), NOW, &snap, &mut scratch);
            })
        })
        .collect();
    assert!(
        counts.iter().all(|n| *n == 0),
        "rejected tokens allocated: {counts:?}"
    );
    // The counter itself works: this allocates.
    assert!(allocations_during(|| drop(vec![1u8; 10])) > 0);
}

/// The whole decision a transport asks for — snapshot load, token extraction (header or
/// cookie), verification, route policy, metrics — allocates nothing either.
#[test]
fn decide_allocates_nothing() {
    use arc_swap::ArcSwap;
    use portcullis_verifier::core::dpop::Target;
    use portcullis_verifier::policy::Policy;
    use portcullis_verifier::serve::metrics::Metrics;
    use portcullis_verifier::serve::{App, Credentials, Decision, DpopCheck};
    use portcullis_verifier::state::Shared;

    let key = signing_key(1);
    let shared = Shared::new(60);
    shared.update(|_| snapshot(&[&key]));
    let policy = Policy::from_toml(
        "[[rule]]\nprefix = \"/admin\"\nany_role = [\"root\"]\n\n[[rule]]\nprefix = \"/users\"\nall_scopes = [\"users:read\"]\n\n[[rule]]\nprefix = \"/public\"\npublic = true\n",
    )
    .unwrap();
    let app = App {
        shared,
        verifier: verifier(),
        policy: ArcSwap::from_pointee(policy),
        cookie: Some("at".into()),
        metrics: Metrics::new(),
        dpop: DpopCheck::default(),
    };
    let token = live_token(&key, SID, SUB);
    let bearer = format!("Bearer {token}");
    let cookie = format!("a=b; at={token}");
    let mut scratch = Scratch::default();
    let mut decide = |auth: Option<&str>, cookies: Option<&str>, path: &str| -> &'static str {
        let cookie = cookies.map(str::as_bytes);
        let creds = Credentials {
            authorization: auth.map(str::as_bytes),
            cookies: cookie.as_slice(),
            ..Credentials::default()
        };
        let request = Target {
            method: "GET",
            scheme: "https",
            host: "api.test",
            path,
        };
        match app.decide(creds, &request, &mut scratch) {
            Decision::Allow(_) => "allow",
            Decision::Public => "public",
            Decision::Deny(r) => r.code.as_str(),
        }
    };
    let cases: [(Option<&str>, Option<&str>, &str, &str); 6] = [
        (Some(&bearer), None, "/users/1", "allow"),
        (None, Some(&cookie), "/orders", "allow"),
        (Some(&bearer), None, "/admin", "forbidden"),
        (None, None, "/public/x", "public"),
        (None, None, "/orders", "missing_token"),
        (Some("Bearer a.b.c"), None, "/orders", "invalid_token"),
    ];
    for (auth, cookies, path, want) in cases {
        assert_eq!(decide(auth, cookies, path), want, "{path}");
    }
    for (auth, cookies, path, want) in cases {
        let n = allocations_during(|| assert_eq!(decide(auth, cookies, path), want));
        assert_eq!(n, 0, "{path} ({want}) allocated");
    }
}

/// DPoP-bound tokens: the proof check (EdDSA and ES256), the replay table, and the
/// refusals allocate nothing either, once the replay table exists.
#[test]
fn dpop_checks_allocate_nothing() {
    use arc_swap::ArcSwap;
    use portcullis_tests::dpop::LocalKey;
    use portcullis_verifier::core::dpop::Target;
    use portcullis_verifier::policy::Policy;
    use portcullis_verifier::serve::metrics::Metrics;
    use portcullis_verifier::serve::{App, Credentials, Decision, DpopCheck};
    use portcullis_verifier::state::Shared;

    let key = signing_key(1);
    let shared = Shared::new(60);
    shared.update(|_| snapshot(&[&key]));
    let app = App {
        shared,
        verifier: verifier(),
        policy: ArcSwap::from_pointee(Policy::default()),
        cookie: None,
        metrics: Metrics::new(),
        dpop: DpopCheck::default(),
    };
    let request = Target {
        method: "GET",
        scheme: "https",
        host: "api.test",
        path: "/orders",
    };
    let url = "https://api.test/orders";
    let holders = [LocalKey::ed25519(7), LocalKey::p256()];
    let decide = |auth: &str, proof: Option<&str>, scratch: &mut Scratch| -> &'static str {
        let creds = Credentials {
            authorization: Some(auth.as_bytes()),
            dpop: proof.map(str::as_bytes),
            dpop_fields: usize::from(proof.is_some()),
            ..Credentials::default()
        };
        match app.decide(creds, &request, scratch) {
            Decision::Allow(_) => "allow",
            Decision::Public => "public",
            Decision::Deny(r) => r.code.as_str(),
        }
    };
    let mut scratch = Scratch::default();
    for holder in &holders {
        let mut c = live_claims(SID, SUB);
        c["cnf"] = json!({"jkt": holder.jkt()});
        let token = mint(&key, &header(&key), &c);
        let auth = format!("DPoP {token}");
        let proofs: Vec<String> = (0..20)
            .map(|i| holder.proof("GET", url, &format!("p{i}"), wall_now(), &token))
            .collect();
        let wrong = holder.proof("POST", url, "w", wall_now(), &token);
        // Warm-up: the replay table and lazily initialised statics.
        assert_eq!(decide(&auth, Some(&proofs[0]), &mut scratch), "allow");
        for (i, proof) in proofs.iter().enumerate().skip(1) {
            let n = allocations_during(|| {
                assert_eq!(decide(&auth, Some(proof), &mut scratch), "allow", "{i}")
            });
            assert_eq!(n, 0, "accepted proof {i} allocated");
        }
        let bearer = format!("Bearer {token}");
        let refusals: [(&str, Option<&str>); 4] = [
            (&auth, Some(&proofs[3])), // replayed
            (&auth, Some(&wrong)),
            (&auth, None),
            (&bearer, None),
        ];
        for (auth, proof) in refusals {
            let n = allocations_during(|| {
                assert_eq!(decide(auth, proof, &mut scratch), "invalid_dpop_proof")
            });
            assert_eq!(n, 0, "refusal allocated");
        }
    }
}
