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
