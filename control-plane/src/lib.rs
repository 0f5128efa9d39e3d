//! The Portcullis control plane: owners, applications, their users, sessions, refresh-token
//! rotation and signing keys on PostgreSQL, published to every verifier through Redis
//! (API.md §2, §3, §5, §6).
//!
//! `main.rs` parses configuration and calls [`run`]; tests call [`run`] on port 0, or
//! [`assemble`] to drive the flows without HTTP.
//!
//! Layers, each importing only those below it (ARCHITECTURE.md draws them;
//! `scripts/check-layers` enforces it): `http/` (extractors, wire types, the one error
//! mapping, a file per resource) → `state` (what handlers share, and each flow's `Deps`)
//! → `flows/` (one use case each: signing in, recovery, second factors, social login,
//! administration, the maintenance schedule) → `domain/` (an aggregate each, owning its
//! SQL) → `infra/` (store, publisher, outbox, egress, crypto, clock, limits, CAPTCHA).

pub mod config;
pub mod domain;
pub mod flows;
pub mod http;
pub mod infra;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_common::tls::{self, ClientCert};
use tokio::net::TcpListener;

pub use crate::flows::maintenance::MAINTENANCE_LOCK;

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

/// Everything a running control plane shares, from its configuration: the migrated
/// database, Redis, the message transports and guarded clients, the key ring (refused
/// when the stored keys do not open with this key-encryption key). No task is started.
pub async fn assemble(config: Config) -> Result<AppState, StartError> {
    let pool = migrate(&config).await?;
    let publisher = Publisher::new(&config.redis, config.jwks_publisher_key.as_ref())?;
    let client = infra::outbox::http_client().map_err(StartError::Messages)?;
    // One guarded client (the system roots read once) for webhooks, CAPTCHA and identity
    // providers.
    let egress =
        infra::egress::Egress::new(config.egress_allow_private).map_err(StartError::Messages)?;
    let outbox =
        infra::outbox::Outbox::new(&config.transports(), client).map_err(StartError::Messages)?;
    let captcha = infra::captcha::Captcha::new(egress.clone(), publisher.connection());
    let oauth = flows::oauth::OAuth::new(egress.clone());
    let state = AppState::new(
        config,
        state::Parts {
            pool,
            publisher,
            outbox,
            captcha,
            oauth,
            egress,
        },
    );
    // A key that does not open means the wrong encryption key: refuse to start.
    match state.keys.refresh().await {
        Ok(_) => Ok(state),
        Err(domain::keys::KeyError::Sealed(_)) => Err(StartError::Keys(
            "the signing keys in the database do not open with this key".into(),
        )),
        Err(e) => Err(StartError::Keys(e.to_string())),
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
    for old in &config.deprecated {
        tracing::warn!(
            setting = old,
            "deprecated setting name; see the README's configuration table for its new name"
        );
    }
    let state = assemble(config).await?;
    let maintenance = tokio::spawn(flows::maintenance::run(flows::maintenance::Maintenance {
        pool: state.pool.clone(),
        keys: state.keys.clone(),
        publisher: state.publisher.clone(),
        interval: state.config.reconcile_interval,
        key_rotation_interval: state.config.key_rotation_interval,
    }));
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
