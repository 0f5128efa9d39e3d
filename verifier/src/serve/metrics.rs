//! Prometheus metrics through the `metrics` facade. Per-decision counters are registered
//! once at start-up and kept as handles, so counting a decision on the hot path is an
//! atomic add with no label lookup or allocation.

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_common::ErrorCode;

use crate::state::{Shared, unix_now};

const LATENCY_BUCKETS: [f64; 12] = [
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];

fn handle() -> Option<&'static PrometheusHandle> {
    portcullis_common::process::prometheus(&LATENCY_BUCKETS)
}

#[derive(Debug)]
pub struct Metrics {
    allowed: Counter,
    /// One counter per code, indexed by `ErrorCode as usize`.
    denied: Vec<Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    replay_evictions: Counter,
    pub latency: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        handle();
        let decision = |result: &'static str| metrics::counter!("portcullis_verifier_decisions_total", "result" => result);
        Self {
            allowed: decision("allow"),
            denied: ErrorCode::ALL
                .iter()
                .map(|c| decision(c.as_str()))
                .collect(),
            cache_hits: metrics::counter!("portcullis_verifier_cache_hits_total"),
            cache_misses: metrics::counter!("portcullis_verifier_cache_misses_total"),
            replay_evictions: metrics::counter!("portcullis_verifier_dpop_replay_evictions_total"),
            latency: metrics::histogram!("portcullis_verifier_request_duration_seconds"),
        }
    }

    pub fn allowed(&self) {
        self.allowed.increment(1);
    }

    pub fn denied(&self, code: ErrorCode) {
        // `denied` follows `ErrorCode::ALL`, which lists the codes in declaration order.
        if let Some(c) = self.denied.get(code as usize) {
            c.increment(1);
        }
    }

    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.increment(1)
        } else {
            self.cache_misses.increment(1)
        }
    }

    /// A DPoP proof pushed out another that was still usable: the replay table is too
    /// small for the traffic (`PORTCULLIS_VERIFIER_DPOP_REPLAY_ENTRIES`).
    pub fn replay_evicted(&self) {
        self.replay_evictions.increment(1);
    }

    /// The Prometheus text exposition, with the sync gauges brought up to date.
    pub fn render(&self, shared: &Shared) -> String {
        let r = shared.readiness(unix_now());
        let snap = shared.load();
        metrics::gauge!("portcullis_verifier_sync_lag_seconds")
            .set(r.since_sync.map_or(-1.0, |s| s as f64));
        metrics::gauge!("portcullis_verifier_ready").set(if r.ready() { 1.0 } else { 0.0 });
        metrics::gauge!("portcullis_verifier_keys_loaded").set(snap.keys.len() as f64);
        metrics::gauge!("portcullis_verifier_snapshot_version").set(snap.version as f64);
        handle().map(PrometheusHandle::render).unwrap_or_default()
    }

    /// Drains histogram buffers; call periodically.
    pub fn upkeep() {
        if let Some(h) = handle() {
            h.run_upkeep();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
