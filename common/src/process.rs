//! What both binaries do as processes: log, install the Prometheus recorder, and wait for
//! the signal to shut down.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Logs to stderr, filtered by `PORTCULLIS_LOG` (`tracing` syntax, default `info`), in
/// colour only when stderr is a terminal and `NO_COLOR` is unset: a log file or a
/// collector gets plain text.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// The `metrics` recorder is process-global by design of the facade; installing it twice
/// (several servers in one test process) reuses the first.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once, with `buckets` (seconds) for every histogram
/// named `…duration_seconds`; later calls return the first. `None` if another recorder
/// was installed first.
pub fn prometheus(buckets: &[f64]) -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), buckets)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Resolves at the first SIGTERM or Ctrl-C (or Ctrl-C alone where there is no SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return ctrl_c.await.unwrap_or(());
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
    tracing::info!("shutdown requested; draining");
}
