//! The verifier's current [`Snapshot`] behind an atomic pointer, and the health of the
//! sync that feeds it.
//!
//! Readers (`load`) take no lock: `arc-swap` hands out the current `Arc` wait-free. There
//! is one writer per process (the sync task); it builds a new immutable snapshot and
//! swaps it in whole, so a reader never sees keys from one version and revocations from
//! another.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Notify;

use crate::core::Snapshot;

/// Shared between the sync task, the HTTP and gRPC servers.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Unix seconds of the last successful contact with the key source; 0 = never.
    last_sync_ok: AtomicI64,
    /// How long without a successful sync before readiness fails.
    max_staleness: AtomicI64,
    /// Signalled by the hot path when a token names a `kid` we do not know, so a JWKS URL
    /// source can refetch early (rate limited there). `notify_one` does not allocate.
    pub unknown_kid: Notify,
}

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub keys_loaded: bool,
    /// Seconds since the last successful sync (`None` if never synced).
    pub since_sync: Option<i64>,
    pub max_staleness: i64,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.keys_loaded && self.since_sync.is_some_and(|s| s <= self.max_staleness)
    }
}

impl Shared {
    pub fn new(max_staleness_secs: i64) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            last_sync_ok: AtomicI64::new(0),
            max_staleness: AtomicI64::new(max_staleness_secs),
            unknown_kid: Notify::new(),
        })
    }

    /// The current snapshot (wait-free, no allocation).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Replaces the snapshot with `f(current)`. Only the single sync task writes.
    pub fn update(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let next = f(&self.snapshot.load());
        self.snapshot.store(Arc::new(next));
    }

    pub fn mark_synced(&self, now: i64) {
        self.last_sync_ok.store(now, Ordering::Relaxed);
    }

    /// A source whose documents declare a longer freshness (JWKS `Cache-Control`) may
    /// widen the staleness bound for itself.
    pub fn set_max_staleness(&self, secs: i64) {
        self.max_staleness.store(secs, Ordering::Relaxed);
    }

    pub fn readiness(&self, now: i64) -> Readiness {
        let last = self.last_sync_ok.load(Ordering::Relaxed);
        Readiness {
            keys_loaded: !self.load().keys.is_empty(),
            since_sync: (last > 0).then(|| now.saturating_sub(last)),
            max_staleness: self.max_staleness.load(Ordering::Relaxed),
        }
    }
}

/// The wall clock, in Unix seconds. The only place the verifier reads it; everything
/// below takes `now` as a parameter.
#[allow(clippy::disallowed_methods)] // the one sanctioned clock read
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
