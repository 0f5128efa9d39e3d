//! What every handler shares: configuration, the database pool, the key ring, the Redis
//! publisher and rate limiter, the password hasher. Passed as axum state, never global.

use std::sync::Arc;

use deadpool_postgres::Pool;
use portcullis_verifier::core::{Settings, Verifier};

use crate::config::Config;
use crate::domain::apps::AppCache;
use crate::domain::keys::KeyRing;
use crate::domain::tokens::OWNER_TOKEN_TYP;
use crate::infra::captcha::Captcha;
use crate::infra::crypto::{PasswordHasherPool, Secrets};
use crate::infra::egress::Egress;
use crate::infra::limits::Limiter;
use crate::infra::outbox::Outbox;
use crate::infra::publish::Publisher;

#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Pool,
    pub keys: Arc<KeyRing>,
    pub apps: AppCache,
    pub publisher: Publisher,
    pub limiter: Limiter,
    pub hasher: PasswordHasherPool,
    pub secrets: Secrets,
    pub outbox: Outbox,
    pub captcha: Captcha,
    /// The SSRF-guarded client of calls to tenant-chosen addresses.
    pub egress: Egress,
    /// Social-login providers (HTTP through the SSRF guard, discovery and keys cached).
    pub oauth: crate::flows::oauth::OAuth,
    /// The sidecar's verify core, for user tokens presented to the control plane itself.
    pub verifier: Arc<Verifier>,
    /// The same for owner tokens, which carry their own `typ`.
    pub owner_verifier: Arc<Verifier>,
}

impl AppState {
    /// What mailed links are made with.
    pub fn links(&self) -> crate::domain::mailings::Links<'_> {
        crate::domain::mailings::Links {
            public_url: &self.config.public_url,
            secrets: &self.secrets,
        }
    }

    pub fn new(
        config: Config,
        pool: Pool,
        publisher: Publisher,
        outbox: Outbox,
        captcha: Captcha,
        oauth: crate::flows::oauth::OAuth,
        egress: Egress,
    ) -> Self {
        let secrets = Secrets::new(&config.key_encryption_key);
        let verifier = |typ: &str| {
            Arc::new(Verifier::new(
                Settings {
                    issuers: vec![config.issuer.clone()],
                    // Each route checks the audience it expects (an application id, or owners).
                    audiences: Vec::new(),
                    leeway_secs: crate::domain::LEEWAY_SECS,
                    typs: vec![typ.to_owned()],
                },
                4096,
            ))
        };
        let owner_verifier = verifier(OWNER_TOKEN_TYP);
        let verifier = verifier(portcullis_common::token::ACCESS_TOKEN_TYP);
        Self {
            keys: Arc::new(KeyRing::new(
                pool.clone(),
                secrets.clone(),
                config.key_publish_lead,
            )),
            limiter: Limiter::new(publisher.connection()),
            apps: AppCache::new(),
            hasher: PasswordHasherPool::new(config.hash_workers),
            config: Arc::new(config),
            pool,
            publisher,
            secrets,
            outbox,
            captcha,
            oauth,
            egress,
            verifier,
            owner_verifier,
        }
    }
}
