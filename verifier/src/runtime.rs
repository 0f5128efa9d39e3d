//! Wiring: starts the key source, the servers and the policy reloader, and drains on
//! shutdown.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_common::tls::{self, ClientCert};
use tokio::net::TcpListener;

use crate::config::{Config, KeySource};
use crate::core::Verifier;
use crate::serve::App;
use crate::state::Shared;
use crate::{policy, serve, sync};

/// Listeners the verifier serves on (bound by the caller, so tests can use port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
}

/// Runs the verifier until `shutdown` resolves: starts the key source, both servers and the
/// policy reloader, then drains connections.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before anything that may speak TLS (the Redis sync included).
    portcullis_common::tls::install_provider();
    let shared = Shared::new(config.max_staleness_secs);
    let app = Arc::new(App {
        shared: shared.clone(),
        verifier: Verifier::new(config.settings.clone(), config.cache_entries),
        policy: ArcSwap::from_pointee(config.policy.clone()),
        cookie: config.cookie.clone(),
        metrics: serve::metrics::Metrics::new(),
        dpop: serve::DpopCheck::new(config.dpop_max_age_secs, config.dpop_replay_entries),
    });
    let mut background = tokio::task::JoinSet::new();
    match &config.source {
        KeySource::Redis(redis, trust) => {
            match trust {
                Some(trust) => tracing::info!(redis = %redis.describe(),
                    publisher_keys = ?trust.kids().collect::<Vec<_>>(),
                    "keys (signed) and revocations from Redis"),
                None => {
                    tracing::info!(redis = %redis.describe(), "keys and revocations from Redis")
                }
            }
            background.spawn(sync::redis::run(
                (**redis).clone(),
                shared.clone(),
                config.resync_interval,
                trust.clone(),
            ));
        }
        KeySource::JwksFile { path } => {
            background.spawn(sync::jwks::run_file(path.clone(), shared.clone()));
        }
        KeySource::JwksUrl { url } => {
            background.spawn(sync::jwks::run_url(
                url.clone(),
                shared.clone(),
                config.max_staleness_secs,
            ));
        }
    }
    if let Some(path) = config.policy_file.clone() {
        background.spawn(policy_reloader(path, app.clone()));
    }
    background.spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            serve::metrics::Metrics::upkeep();
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // One configuration for both ports, reloaded by one task. The HTTP port lets probes
    // in without a client certificate (and refuses checks without one); the gRPC port
    // refuses such callers in the handshake.
    if let Some(tls) = &config.tls {
        background.spawn(tls.clone().watch());
    }
    let tls_with = |mode| config.tls.clone().map(|t| (t, mode));
    let grpc = listeners.grpc.map(|l| {
        let listener = tls::Listener::new(l, tls_with(ClientCert::Required));
        tokio::spawn(serve::grpc::serve(
            listener,
            app.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    tracing::info!(http = ?listeners.http.local_addr().ok(), tls = config.tls.is_some(), "verifier listening");
    let limits = serve::http::Limits {
        max_connections: config.max_connections,
        drain_timeout: config.drain_timeout,
        client_cert_required: config.tls.as_ref().is_some_and(|t| t.checks_clients()),
    };
    let http = tls::Listener::new(listeners.http, tls_with(ClientCert::Optional));
    serve::http::serve(http, app, limits, stopped(stop_rx)).await;
    if let Some(grpc) = grpc
        && let Ok(Err(e)) = grpc.await
    {
        tracing::warn!(error = %e, "gRPC server ended with an error");
    }
    background.abort_all();
    Ok(())
}

/// Reloads the route policy when its file changes; a broken file keeps the last good one.
async fn policy_reloader(path: std::path::PathBuf, app: Arc<App>) {
    let stamp = |m: std::fs::Metadata| (m.modified().ok(), m.len());
    let mut seen = tokio::fs::metadata(&path).await.ok().map(stamp);
    loop {
        tokio::time::sleep(sync::jwks::FILE_POLL).await;
        let now = tokio::fs::metadata(&path).await.ok().map(stamp);
        if now == seen {
            continue;
        }
        seen = now;
        match policy::Policy::from_file(&path) {
            Ok(p) => {
                tracing::info!(path = %path.display(), "route policy reloaded");
                app.policy.store(Arc::new(p));
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "route policy refused; keeping the last good one")
            }
        }
    }
}
