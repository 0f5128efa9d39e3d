//! What every handler shares: configuration, the database pool, the key ring, the Redis
//! publisher and rate limiter, the password hasher. Passed as axum state, never global.
//! Handlers hand each flow only the parts it uses (its `Deps`, built here).

use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::config::Config;
use crate::domain::apps::AppCache;
use crate::domain::keys::KeyRing;
use crate::domain::mailings::Links;
use crate::domain::tokens::Verifiers;
use crate::flows::{mfa, signin};
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
    /// The sidecar's verify core, for the tokens presented to the control plane itself.
    pub tokens: Arc<Verifiers>,
}

/// What a running control plane is made of, besides its configuration.
#[derive(Debug)]
pub struct Parts {
    pub pool: Pool,
    pub publisher: Publisher,
    pub outbox: Outbox,
    pub captcha: Captcha,
    pub oauth: crate::flows::oauth::OAuth,
    pub egress: Egress,
}

impl AppState {
    pub fn new(config: Config, parts: Parts) -> Self {
        let secrets = Secrets::new(&config.key_encryption_key);
        Self {
            keys: Arc::new(KeyRing::new(
                parts.pool.clone(),
                secrets.clone(),
                config.key_publish_lead,
            )),
            limiter: Limiter::new(parts.publisher.connection()),
            apps: AppCache::new(),
            hasher: PasswordHasherPool::new(config.hash_workers),
            tokens: Arc::new(Verifiers::new(&config.issuer)),
            config: Arc::new(config),
            pool: parts.pool,
            publisher: parts.publisher,
            secrets,
            outbox: parts.outbox,
            captcha: parts.captcha,
            oauth: parts.oauth,
            egress: parts.egress,
        }
    }

    /// What mailed links are made with.
    pub fn links(&self) -> Links<'_> {
        Links {
            public_url: &self.config.public_url,
            secrets: &self.secrets,
        }
    }

    /// What signing in works with.
    pub fn signin(&self) -> signin::Deps<'_> {
        signin::Deps {
            pool: &self.pool,
            keys: &self.keys,
            issuer: &self.config.issuer,
            publisher: &self.publisher,
            outbox: &self.outbox,
            links: self.links(),
            secrets: &self.secrets,
            hasher: &self.hasher,
            limiter: &self.limiter,
            captcha: &self.captcha,
        }
    }

    /// What social login works with.
    pub fn oauth(&self) -> crate::flows::oauth::Deps<'_> {
        crate::flows::oauth::Deps {
            pool: &self.pool,
            oauth: &self.oauth,
            secrets: &self.secrets,
            public_url: &self.config.public_url,
        }
    }

    /// What administration works with.
    pub fn admin(&self) -> crate::flows::admin::Deps<'_> {
        crate::flows::admin::Deps {
            pool: &self.pool,
            publisher: &self.publisher,
            hasher: &self.hasher,
            limiter: &self.limiter,
            keys: &self.keys,
            issuer: &self.config.issuer,
            secrets: &self.secrets,
            egress: &self.egress,
            outbox: &self.outbox,
            apps: &self.apps,
        }
    }

    /// What second factors work with.
    pub fn provider(&self) -> crate::flows::provider::Deps<'_> {
        crate::flows::provider::Deps {
            signin: self.signin(),
            public_url: &self.config.public_url,
            tokens: &self.tokens,
        }
    }

    pub fn mfa(&self) -> mfa::Deps<'_> {
        mfa::Deps {
            pool: &self.pool,
            secrets: &self.secrets,
            limiter: &self.limiter,
            outbox: &self.outbox,
            hasher: &self.hasher,
        }
    }
}
