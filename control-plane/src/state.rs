//! What every handler shares: configuration, the database pool, the key ring, the Redis
//! publisher and rate limiter, the password hasher. Passed as axum state, never global.

use std::sync::Arc;

use deadpool_postgres::Pool;
use portcullis_verifier::core::{Settings, Verifier};

use crate::config::Config;
use crate::crypto::{PasswordHasherPool, Secrets};
use crate::keys::KeyRing;
use crate::limits::Limiter;
use crate::publish::Publisher;

/// Clock skew tolerated when the control plane checks its own tokens.
pub const LEEWAY_SECS: i64 = 30;

#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Pool,
    pub keys: Arc<KeyRing>,
    pub publisher: Publisher,
    pub limiter: Limiter,
    pub hasher: PasswordHasherPool,
    pub secrets: Secrets,
    /// The sidecar's verify core, for tokens presented to the control plane itself.
    pub verifier: Arc<Verifier>,
}

impl AppState {
    pub fn new(config: Config, pool: Pool, publisher: Publisher) -> Self {
        let secrets = Secrets::new(&config.key_encryption_key);
        let verifier = Verifier::new(
            Settings {
                issuers: vec![config.issuer.clone()],
                // Each route checks the audience it expects (an application id, or owners).
                audiences: Vec::new(),
                leeway_secs: LEEWAY_SECS,
                typs: vec![portcullis_common::token::ACCESS_TOKEN_TYP.to_owned()],
            },
            4096,
        );
        Self {
            keys: Arc::new(KeyRing::new(pool.clone(), secrets.clone())),
            limiter: Limiter::new(publisher.connection()),
            hasher: PasswordHasherPool::new(config.hash_workers),
            config: Arc::new(config),
            pool,
            publisher,
            secrets,
            verifier: Arc::new(verifier),
        }
    }
}
