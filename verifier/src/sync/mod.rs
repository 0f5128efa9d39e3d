//! Key and revocation sources. Each runs as one task, the only writer of
//! [`crate::state::Shared`]:
//!
//! - [`redis`]: the Portcullis layout of API.md §5 (snapshot + pub/sub + resync).
//! - [`jwks`]: any issuer's JWKS from a file (polled) or a URL (Cache-Control, refetch on
//!   an unknown `kid`, rate limited). Keys only; no revocations.

pub mod jwks;
pub mod redis;

use std::sync::Arc;

use crate::core::{KeySet, Snapshot, Trust};
use crate::state::Shared;

/// Replaces the snapshot's keys with those of `doc`, unless the document is malformed or
/// holds no usable key: then the last good keys stay. Returns whether keys were replaced.
pub fn install_jwks(shared: &Shared, doc: &[u8], trust: Trust, source: &str) -> bool {
    match KeySet::from_jwks(doc, trust) {
        Ok(keys) => {
            for why in keys.skipped() {
                tracing::warn!(source, key = %why, "JWKS key skipped");
            }
            tracing::info!(source, keys = keys.len(), kids = ?keys.kids().collect::<Vec<_>>(), "verification keys loaded");
            metrics::gauge!("portcullis_verifier_keys_loaded").set(keys.len() as f64);
            let keys = Arc::new(keys);
            shared.update(|old| Snapshot {
                keys,
                revocations: old.revocations.clone(),
                version: old.version,
            });
            true
        }
        Err(e) => {
            tracing::error!(source, error = %e, "JWKS refused; keeping the last good keys");
            metrics::counter!("portcullis_verifier_jwks_refused_total").increment(1);
            false
        }
    }
}

/// Exponential backoff with jitter for reconnects and refetches.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: std::time::Duration,
    max: std::time::Duration,
    current: std::time::Duration,
}

impl Backoff {
    pub(crate) fn new(min: std::time::Duration, max: std::time::Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay: the current one plus up to 50 % jitter; then doubles it.
    pub(crate) fn next_delay(&mut self) -> std::time::Duration {
        let jitter = rand::random_range(0.0..0.5);
        let delay = self.current.mul_f64(1.0 + jitter).min(self.max);
        self.current = (self.current * 2).min(self.max);
        delay
    }
}
