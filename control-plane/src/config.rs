//! The control plane's configuration (API.md §6), parsed once at start-up from an [`Env`]
//! so tests can feed a map. A refused setting is a [`ConfigError`] naming the variable;
//! `main` prints it on one line and exits with status 64.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;
use portcullis_common::env::http_url;
pub use portcullis_common::env::{ConfigError, Env, ProcessEnv};
use portcullis_common::redis_conn::{REDIS_URL, RedisConfig};
use portcullis_common::tls::{self, ReloadingConfig};

/// Typed configuration. `Debug` never prints a secret.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// HTTPS on `listen` (`PORTCULLIS_TLS_CERT_FILE`, `PORTCULLIS_TLS_KEY_FILE`).
    pub tls: Option<std::sync::Arc<ReloadingConfig>>,
    pub database_url: String,
    pub redis: RedisConfig,
    /// `iss` of every token and the base of the discovery document (no trailing slash).
    pub issuer: String,
    /// Base of links sent by mail; defaults to the issuer.
    pub public_url: String,
    pub admin_token: String,
    pub key_encryption_key: [u8; 32],
    /// `PORTCULLIS_JWKS_PUBLISHER_KEY`: the Ed25519 seed that signs the key set it
    /// publishes (`portcullis:jwks:signed`); none: no signed set.
    pub jwks_publisher_key: Option<[u8; 32]>,
    pub trusted_proxies: Vec<IpNet>,
    /// How long a signing key stays active before the schedule rotates it.
    pub key_rotation_interval: Duration,
    /// How long a new key is published before it may sign (covers JWKS URL caches).
    pub key_publish_lead: Duration,
    /// Period of the Redis reconciler (and of key-schedule checks).
    pub reconcile_interval: Duration,
    /// Concurrent Argon2id hashes; defaults to the number of cores.
    pub hash_workers: usize,
    pub db_pool_size: usize,
    pub drain_timeout: Duration,
    /// Outgoing mail (`smtp://`, `smtps://`); `None`: messages are logged, not sent.
    pub smtp_url: Option<String>,
    /// The envelope and `From` address of every mail.
    pub mail_from: String,
    /// Where SMS messages are POSTed as `{"to", "body"}`; `None`: logged, not sent.
    pub sms_webhook_url: Option<String>,
    /// Sent as `Authorization: Bearer` to the SMS endpoint when set.
    pub sms_webhook_token: Option<String>,
    /// Lets outgoing calls (webhooks, CAPTCHA, identity providers) reach loopback or
    /// private addresses (tests, on-premises); never link-local or metadata ones.
    pub egress_allow_private: bool,
    /// Settings read under a deprecated name, for a line in the log at start.
    pub deprecated: Vec<&'static str>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("redis", &self.redis)
            .field("issuer", &self.issuer)
            .field("public_url", &self.public_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("key_rotation_interval", &self.key_rotation_interval)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("hash_workers", &self.hash_workers)
            .field("mail_from", &self.mail_from)
            .field("smtp", &self.smtp_url.is_some())
            .field("sms", &self.sms_webhook_url.is_some())
            .field("egress_allow_private", &self.egress_allow_private)
            .field("jwks_publisher_key", &self.jwks_publisher_key.is_some())
            .finish_non_exhaustive()
    }
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(var, message)
}

/// An `http(s)://` URL without a trailing slash (paths are appended to it).
fn base_url(var: &'static str, value: String) -> Result<String, ConfigError> {
    Ok(http_url(var, value)?.trim_end_matches('/').to_owned())
}

/// `PORTCULLIS_DATABASE_URL`: a `postgres://` URL this control plane can use.
fn database_url(env: &impl Env) -> Result<String, ConfigError> {
    const VAR: &str = "PORTCULLIS_DATABASE_URL";
    let url = env.required(VAR)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(err(VAR, "must be a postgres:// URL"));
    }
    // The URL may carry a password: the reason names the parameter, never the URL.
    crate::infra::db_tls::DbTarget::parse(&url).map_err(|reason| err(VAR, reason))?;
    Ok(url)
}

/// `PORTCULLIS_KEY_ENCRYPTION_KEY`: 32 bytes in base64.
fn key_encryption_key(env: &impl Env) -> Result<[u8; 32], ConfigError> {
    const VAR: &str = "PORTCULLIS_KEY_ENCRYPTION_KEY";
    STANDARD
        .decode(env.required(VAR)?)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| err(VAR, "must be 32 bytes in base64"))
}

/// `PORTCULLIS_JWKS_PUBLISHER_KEY`: 32 bytes in base64 (a secret, as the encryption key).
fn jwks_publisher_key(env: &impl Env) -> Result<Option<[u8; 32]>, ConfigError> {
    const VAR: &str = "PORTCULLIS_JWKS_PUBLISHER_KEY";
    let Some(value) = env.set(VAR) else {
        return Ok(None);
    };
    STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(Some)
        .ok_or_else(|| err(VAR, "must be 32 bytes in base64 (an Ed25519 seed)"))
}

/// `PORTCULLIS_TRUSTED_PROXIES`: CIDRs or single addresses.
fn trusted_proxies(env: &impl Env) -> Result<Vec<IpNet>, ConfigError> {
    env.list("PORTCULLIS_TRUSTED_PROXIES")
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| err("PORTCULLIS_TRUSTED_PROXIES", format!("{s:?} is not a CIDR")))
        })
        .collect()
}

/// Where mail and SMS go: `(smtp_url, mail_from, sms_url)`.
fn messages(env: &impl Env) -> Result<(Option<String>, String, Option<String>), ConfigError> {
    let smtp_url = env.set("PORTCULLIS_SMTP_URL");
    if let Some(url) = &smtp_url {
        crate::infra::outbox::check_smtp_url(url).map_err(|e| err("PORTCULLIS_SMTP_URL", e))?;
    }
    let mail_from = match env.set("PORTCULLIS_MAIL_FROM") {
        Some(from) => from,
        None if smtp_url.is_some() => {
            return Err(err(
                "PORTCULLIS_MAIL_FROM",
                "is required with PORTCULLIS_SMTP_URL",
            ));
        }
        None => "portcullis@localhost".to_owned(),
    };
    if !crate::domain::users::check_email(&mail_from).is_ok_and(|m| m == mail_from) {
        return Err(err("PORTCULLIS_MAIL_FROM", "must be an email address"));
    }
    let sms_url = env
        .set("PORTCULLIS_SMS_WEBHOOK_URL")
        .map(|u| base_url("PORTCULLIS_SMS_WEBHOOK_URL", u))
        .transpose()?;
    Ok((smtp_url, mail_from, sms_url))
}

const EGRESS_ALLOW_PRIVATE: &str = "PORTCULLIS_EGRESS_ALLOW_PRIVATE";
/// The name `PORTCULLIS_EGRESS_ALLOW_PRIVATE` had when only webhooks used it.
const WEBHOOK_ALLOW_PRIVATE: &str = "PORTCULLIS_WEBHOOK_ALLOW_PRIVATE";

/// `PORTCULLIS_EGRESS_ALLOW_PRIVATE`, or its old name (then also returned, to be logged).
fn egress_allow_private(env: &impl Env) -> Result<(bool, Vec<&'static str>), ConfigError> {
    if env.set(EGRESS_ALLOW_PRIVATE).is_some() || env.set(WEBHOOK_ALLOW_PRIVATE).is_none() {
        return Ok((env.flag(EGRESS_ALLOW_PRIVATE, false)?, Vec::new()));
    }
    Ok((
        env.flag(WEBHOOK_ALLOW_PRIVATE, false)?,
        vec![WEBHOOK_ALLOW_PRIVATE],
    ))
}

impl Config {
    /// Where messages go.
    pub fn transports(&self) -> crate::infra::outbox::Transports {
        crate::infra::outbox::Transports {
            smtp_url: self.smtp_url.clone(),
            mail_from: self.mail_from.clone(),
            sms_url: self.sms_webhook_url.clone(),
            sms_token: self.sms_webhook_token.clone(),
        }
    }

    /// Refusals name the first bad variable in the order of API.md §6 (listener, database,
    /// Redis, issuer, ...).
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let listen = env.socket_addr("PORTCULLIS_LISTEN", "0.0.0.0:8080")?;
        let tls = tls::files_from_env(
            env,
            "PORTCULLIS_TLS_CERT_FILE",
            "PORTCULLIS_TLS_KEY_FILE",
            None,
        )?;
        let database_url = database_url(env)?;
        let redis = RedisConfig::from_env(env)?.ok_or_else(|| {
            err(
                REDIS_URL,
                "is required (or PORTCULLIS_REDIS_SENTINELS with PORTCULLIS_REDIS_SENTINEL_MASTER)",
            )
        })?;
        let issuer = base_url("PORTCULLIS_ISSUER", env.required("PORTCULLIS_ISSUER")?)?;
        let public_url = match env.set("PORTCULLIS_PUBLIC_URL") {
            Some(v) => base_url("PORTCULLIS_PUBLIC_URL", v)?,
            None => issuer.clone(),
        };
        let admin_token = env.required("PORTCULLIS_ADMIN_TOKEN")?;
        if admin_token.len() < 16 {
            return Err(err(
                "PORTCULLIS_ADMIN_TOKEN",
                "must be at least 16 characters",
            ));
        }
        let key_encryption_key = key_encryption_key(env)?;
        let days: u64 = env.number("PORTCULLIS_KEY_ROTATION_DAYS", 30, |d| *d >= 1)?;
        let lead: u64 = env.number("PORTCULLIS_KEY_PUBLISH_LEAD_SECS", 120, |s| *s <= 86_400)?;
        let reconcile: u64 = env.number("PORTCULLIS_RECONCILE_INTERVAL_SECS", 30, |s| *s >= 1)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let drain: u64 = env.number("PORTCULLIS_DRAIN_TIMEOUT_SECS", 10, |_| true)?;
        let (smtp_url, mail_from, sms_webhook_url) = messages(env)?;
        let (egress_allow_private, deprecated) = egress_allow_private(env)?;
        Ok(Self {
            listen,
            tls,
            database_url,
            redis,
            issuer,
            public_url,
            admin_token,
            key_encryption_key,
            jwks_publisher_key: jwks_publisher_key(env)?,
            trusted_proxies: trusted_proxies(env)?,
            key_rotation_interval: Duration::from_secs(days * 86_400),
            key_publish_lead: Duration::from_secs(lead),
            reconcile_interval: Duration::from_secs(reconcile),
            hash_workers: env.number("PORTCULLIS_HASH_WORKERS", cores, |n| *n >= 1)?,
            db_pool_size: env.number("PORTCULLIS_DB_POOL_SIZE", 16, |n| *n >= 1)?,
            drain_timeout: Duration::from_secs(drain),
            smtp_url,
            mail_from,
            sms_webhook_url,
            sms_webhook_token: env.set("PORTCULLIS_SMS_WEBHOOK_TOKEN"),
            egress_allow_private,
            deprecated,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("PORTCULLIS_DATABASE_URL", "postgres://u@localhost/db"),
            ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379"),
            ("PORTCULLIS_ISSUER", "http://localhost:8080/"),
            ("PORTCULLIS_ADMIN_TOKEN", "0123456789abcdef0123"),
            (
                "PORTCULLIS_KEY_ENCRYPTION_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ])
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.issuer, "http://localhost:8080");
        assert_eq!(c.public_url, c.issuer);
        assert_eq!(c.key_encryption_key[31], 31);
        let debug = format!("{c:?}");
        assert!(!debug.contains("0123456789abcdef") && !debug.contains("AAEC"));
    }

    #[test]
    fn each_bad_setting_names_its_variable() {
        let cases = [
            ("PORTCULLIS_DATABASE_URL", "mysql://x"),
            ("PORTCULLIS_REDIS_URL", "redis://a:1,http://b:2"),
            (
                "PORTCULLIS_DATABASE_URL",
                "postgres://u@h/db?sslmode=verify-none",
            ),
            ("PORTCULLIS_ISSUER", "localhost"),
            ("PORTCULLIS_ADMIN_TOKEN", "short"),
            ("PORTCULLIS_KEY_ENCRYPTION_KEY", "c2hvcnQ="),
            ("PORTCULLIS_TRUSTED_PROXIES", "10.0.0.0/8,nope"),
            ("PORTCULLIS_LISTEN", "8080"),
            ("PORTCULLIS_HASH_WORKERS", "0"),
            ("PORTCULLIS_SMTP_URL", "mailto:x@y"),
            ("PORTCULLIS_MAIL_FROM", "not an address"),
            ("PORTCULLIS_SMS_WEBHOOK_URL", "ftp://sms"),
            ("PORTCULLIS_WEBHOOK_ALLOW_PRIVATE", "yes"),
            ("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "yes"),
        ];
        for (var, value) in cases {
            let mut env = base();
            env.insert(var, value);
            let e = Config::from_env(&env).unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
        let mut env = base();
        env.insert("PORTCULLIS_SMTP_URL", "smtp://127.0.0.1:2525");
        assert_eq!(
            Config::from_env(&env).unwrap_err().var,
            "PORTCULLIS_MAIL_FROM",
            "a mail server needs a sender"
        );
        let mut env = base();
        env.insert("PORTCULLIS_TLS_CERT_FILE", "/nonexistent/cert.pem");
        assert_eq!(
            Config::from_env(&env).unwrap_err().var,
            "PORTCULLIS_TLS_KEY_FILE"
        );
        env.insert("PORTCULLIS_TLS_KEY_FILE", "/nonexistent/key.pem");
        assert_eq!(
            Config::from_env(&env).unwrap_err().var,
            "PORTCULLIS_TLS_CERT_FILE",
            "an unreadable certificate"
        );
        let mut env = base();
        env.insert("PORTCULLIS_WEBHOOK_ALLOW_PRIVATE", "true");
        let old = Config::from_env(&env).unwrap();
        assert!(old.egress_allow_private, "the old name still works");
        assert_eq!(old.deprecated, ["PORTCULLIS_WEBHOOK_ALLOW_PRIVATE"]);
        env.insert("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "false");
        let both = Config::from_env(&env).unwrap();
        assert!(
            !both.egress_allow_private && both.deprecated.is_empty(),
            "the new name wins"
        );
        let mut env = base();
        env.remove("PORTCULLIS_ADMIN_TOKEN");
        assert_eq!(
            Config::from_env(&env).unwrap_err().var,
            "PORTCULLIS_ADMIN_TOKEN"
        );
    }
}
