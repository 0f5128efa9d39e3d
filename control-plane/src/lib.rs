//! The Portcullis control plane: owners, applications, their users, sessions, refresh-token
//! rotation and signing keys on PostgreSQL, published to every verifier through Redis
//! (API.md §2, §3, §5, §6).
//!
//! `main.rs` parses configuration and calls [`run`]; tests call [`run`] on port 0.
//!
//! Layout: `http/` holds thin handlers (one file per resource); `sessions`, `users`,
//! `apps`, `keys`, `tokens` hold the domain logic and its SQL; `publish` is the only Redis
//! writer (and the reconciler); `limits` the shared rate limits; `crypto` the Argon2id pool,
//! the AEAD for secrets at rest and token digests; `store` the pool and migrations.

pub mod config;
pub mod domain;
pub mod error;
pub mod flows;
pub mod http;
pub mod infra;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_common::tls::{self, ClientCert};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::infra::publish::Publisher;
use crate::state::AppState;

/// Why the control plane could not start. Each names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("PORTCULLIS_DATABASE_URL: {0}")]
    Database(#[from] infra::store::StoreError),
    #[error("PORTCULLIS_REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PORTCULLIS_KEY_ENCRYPTION_KEY: {0}")]
    Keys(String),
    /// The message: it names the variable (SMTP or SMS).
    #[error("{0}")]
    Messages(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects to PostgreSQL (retrying while it starts) and applies the migrations.
pub async fn migrate(config: &Config) -> Result<deadpool_postgres::Pool, StartError> {
    let pool = infra::store::pool(&config.database_url, config.db_pool_size)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match infra::store::migrate(&pool).await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "schema migrations applied");
                }
                return Ok(pool);
            }
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, attempt, "database not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves the control plane on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    portcullis_common::tls::install_provider();
    infra::metrics::install();
    let tls = config.tls.clone();
    let pool = migrate(&config).await?;
    let publisher = Publisher::new(&config.redis)?;
    let client = infra::outbox::http_client().map_err(StartError::Messages)?;
    // One guarded client (the system roots read once) for webhooks, CAPTCHA and identity
    // providers.
    let egress =
        infra::egress::Egress::new(config.webhook_allow_private).map_err(StartError::Messages)?;
    let outbox =
        infra::outbox::Outbox::new(&config.transports(), client).map_err(StartError::Messages)?;
    let captcha = infra::captcha::Captcha::new(egress.clone(), publisher.connection());
    let oauth = flows::oauth::OAuth::new(egress.clone());
    let state = AppState::new(config, pool, publisher, outbox, captcha, oauth, egress);
    // A key that does not open means the wrong encryption key: refuse to start.
    match state.keys.refresh().await {
        Ok(_) => {}
        Err(e) if e.code == portcullis_common::ErrorCode::Internal => {
            return Err(StartError::Keys(
                "the signing keys in the database do not open with this key".into(),
            ));
        }
        Err(e) => return Err(StartError::Keys(e.detail)),
    }
    let maintenance = tokio::spawn(maintain(state.clone()));
    let delivery = tokio::spawn(flows::delivery::run(
        state.outbox.clone(),
        state.pool.clone(),
        state.secrets.clone(),
        state.egress.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "control plane listening");
    let app = http::router(state.clone());
    let drain = state.config.drain_timeout;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reload = tls.clone().map(|t| tokio::spawn(t.watch()));
    // Sets NODELAY: answers are small and latency matters more than packet count (without
    // it a response split across two writes can wait out the client's delayed ACK, ~40 ms).
    let listener = ServeListener(tls::Listener::new(
        listener,
        tls.map(|t| (t, ClientCert::Required)),
    ));
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    let mut stopped = stop_rx.clone();
    let result = tokio::select! {
        r = server => r,
        // In-flight requests get `drain` to finish once shutdown begins.
        () = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => Ok(()),
    };
    maintenance.abort();
    delivery.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    result?;
    Ok(())
}

/// The background schedule: reconcile Redis from PostgreSQL at start and every interval,
/// rotate keys when due, drop retired keys whose tokens have expired, and prune ended
/// sessions, delivered messages and expired one-time tokens.
async fn prune(state: &AppState, with_audit: bool) -> Result<(), error::ApiError> {
    let client = state.pool.get().await?;
    domain::sessions::prune(&client, infra::clock::unix_now()).await?;
    flows::oauth::prune(&client, infra::clock::unix_now()).await?;
    infra::outbox::prune(&client).await?;
    if with_audit {
        domain::audit::prune(&client).await?;
    }
    Ok(())
}

/// How often events past their retention are deleted (a larger sweep than the rest).
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Advisory lock making the maintenance pass single-flight across replicas ("maintain").
pub const MAINTENANCE_LOCK: i64 = 0x6d61_696e_7461_696e;

async fn maintain(state: AppState) {
    let mut tick = tokio::time::interval(state.config.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_audit_prune: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        // One replica at a time: a pass started while another replica's runs is skipped
        // (every replica ticks, so the work still happens once per interval).
        let _lease = match infra::store::try_singleton(&state.pool, MAINTENANCE_LOCK).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                ::metrics::counter!("portcullis_maintenance_skipped_total").increment(1);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance lock unavailable; retrying next interval");
                continue;
            }
        };
        // Bounded: a pass stuck on a half-open connection must not hold the lock (and so
        // every replica's maintenance) for long.
        let limit = (state.config.reconcile_interval * 4).max(Duration::from_secs(120));
        let pass = maintenance_pass(&state, &mut last_audit_prune);
        if tokio::time::timeout(limit, pass).await.is_err() {
            ::metrics::counter!("portcullis_reconcile_failures_total").increment(1);
            tracing::warn!(?limit, "maintenance pass timed out; retrying next interval");
        }
    }
}

/// One maintenance pass: the key schedule, pruning, and the Redis reconcile.
async fn maintenance_pass(state: &AppState, last_audit_prune: &mut Option<std::time::Instant>) {
    if let Err(e) = state
        .keys
        .maintain(state.config.key_rotation_interval)
        .await
    {
        tracing::warn!(error = %e, "key schedule check failed");
    }
    let with_audit = last_audit_prune.is_none_or(|at| at.elapsed() >= AUDIT_PRUNE_EVERY);
    match prune(state, with_audit).await {
        Ok(()) if with_audit => *last_audit_prune = Some(std::time::Instant::now()),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "pruning failed; retrying next interval"),
    }
    match state
        .publisher
        .reconcile(&state.pool, &state.keys, infra::clock::unix_now())
        .await
    {
        Ok(repaired) if repaired.any() => {
            ::metrics::counter!("portcullis_reconcile_repairs_total").increment(1);
            tracing::info!(?repaired, "Redis reconciled from PostgreSQL");
        }
        Ok(_) => {}
        Err(e) => {
            ::metrics::counter!("portcullis_reconcile_failures_total").increment(1);
            tracing::warn!(error = %e, "reconcile failed; retrying next interval");
        }
    }
}

/// The shared plain-or-TLS listener, for axum (which takes its own `Listener` trait).
struct ServeListener(tls::Listener);

/// The TCP peer of a connection, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ServeListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ServeListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::serve::Listener for ServeListener {
    type Io = tls::Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(conn) => return conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
