//! Prometheus metrics through the `metrics` facade (`GET /metrics`). Labels are routes,
//! methods, statuses and outcomes: never a user, an address or a secret.

use metrics_exporter_prometheus::PrometheusHandle;

const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn handle() -> Option<&'static PrometheusHandle> {
    portcullis_common::process::prometheus(&LATENCY_BUCKETS)
}

/// Installs the recorder (idempotent).
pub fn install() {
    let _ = handle();
}

/// The text exposition.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
