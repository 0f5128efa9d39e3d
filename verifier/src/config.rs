//! The verifier's configuration, parsed once at start-up from environment variables
//! (API.md §4) through a small [`Env`] trait so tests can feed a map.
//!
//! A bad setting is a [`ConfigError`] naming the variable; `main` prints it on one line
//! and exits with status 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{Settings, dpop};
use crate::policy::Policy;

use portcullis_common::env::http_url;
pub use portcullis_common::env::{ConfigError, Env, ProcessEnv};
use portcullis_common::redis_conn::{REDIS_SENTINELS, RedisConfig};
use portcullis_common::signed_jwks::TrustKeys;
use portcullis_common::tls::{self, ReloadingConfig};

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(var, message)
}

/// Where keys (and, for Redis, revocations) come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// Redis; with trust keys, only the signed key set is read (`portcullis:jwks:signed`).
    Redis(Box<RedisConfig>, Option<Arc<TrustKeys>>),
    JwksUrl {
        url: String,
    },
    JwksFile {
        path: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` when set to `off`.
    pub grpc_listen: Option<SocketAddr>,
    /// TLS on both listeners; with a client CA, ext_authz callers need its certificates.
    pub tls: Option<std::sync::Arc<ReloadingConfig>>,
    pub source: KeySource,
    pub settings: Settings,
    pub cookie: Option<String>,
    pub policy_file: Option<PathBuf>,
    pub policy: Policy,
    pub max_staleness_secs: i64,
    /// Full resync period for the Redis source (and file poll period).
    pub resync_interval: Duration,
    pub cache_entries: usize,
    /// How long after its `iat` a DPoP proof is accepted (plus the leeway).
    pub dpop_max_age_secs: i64,
    /// DPoP proofs remembered against replay.
    pub dpop_replay_entries: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

const LISTEN: &str = "PORTCULLIS_VERIFIER_LISTEN";
const GRPC_LISTEN: &str = "PORTCULLIS_VERIFIER_GRPC_LISTEN";
const REDIS_URL: &str = portcullis_common::redis_conn::REDIS_URL;
const TLS_CERT: &str = "PORTCULLIS_VERIFIER_TLS_CERT_FILE";
const TLS_KEY: &str = "PORTCULLIS_VERIFIER_TLS_KEY_FILE";
const TLS_CLIENT_CA: &str = "PORTCULLIS_VERIFIER_TLS_CLIENT_CA_FILE";
const JWKS_URL: &str = "PORTCULLIS_VERIFIER_JWKS_URL";
const JWKS_FILE: &str = "PORTCULLIS_VERIFIER_JWKS_FILE";
const ISSUER: &str = "PORTCULLIS_VERIFIER_ISSUER";
const AUDIENCE: &str = "PORTCULLIS_VERIFIER_AUDIENCE";
const LEEWAY: &str = "PORTCULLIS_VERIFIER_LEEWAY_SECS";
const TYP: &str = "PORTCULLIS_VERIFIER_TYP";
const COOKIE: &str = "PORTCULLIS_VERIFIER_COOKIE";
const POLICY_FILE: &str = "PORTCULLIS_VERIFIER_POLICY_FILE";
const MAX_STALENESS: &str = "PORTCULLIS_VERIFIER_MAX_STALENESS_SECS";
const RESYNC: &str = "PORTCULLIS_VERIFIER_RESYNC_SECS";
const CACHE_ENTRIES: &str = "PORTCULLIS_VERIFIER_CACHE_ENTRIES";
const MAX_CONNECTIONS: &str = "PORTCULLIS_VERIFIER_MAX_CONNECTIONS";
const DRAIN: &str = "PORTCULLIS_VERIFIER_DRAIN_SECS";
const TRUST_KEYS: &str = "PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS";
const DPOP_MAX_AGE: &str = "PORTCULLIS_VERIFIER_DPOP_MAX_AGE_SECS";
const DPOP_REPLAY_ENTRIES: &str = "PORTCULLIS_VERIFIER_DPOP_REPLAY_ENTRIES";

/// `PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS`: the publisher keys, a JWKS inline or `@file`.
fn trust_keys(env: &impl Env) -> Result<Option<TrustKeys>, ConfigError> {
    let Some(value) = env.set(TRUST_KEYS) else {
        return Ok(None);
    };
    let json = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| err(TRUST_KEYS, format!("reading {path}: {e}")))?,
        None => value,
    };
    TrustKeys::from_jwks(&json)
        .map(Some)
        .map_err(|e| err(TRUST_KEYS, e))
}

impl Config {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let listen = env.socket_addr(LISTEN, "0.0.0.0:8081")?;
        let grpc_listen = match env.set(GRPC_LISTEN) {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            _ => Some(env.socket_addr(GRPC_LISTEN, "0.0.0.0:8082")?),
        };

        let tls = tls::files_from_env(env, TLS_CERT, TLS_KEY, Some(TLS_CLIENT_CA))?;
        let redis = RedisConfig::from_env(env)?;
        let trust = trust_keys(env)?;
        let source = match (redis, env.set(JWKS_URL), env.set(JWKS_FILE)) {
            (Some(redis), None, None) => KeySource::Redis(Box::new(redis), trust.map(Arc::new)),
            (None, _, _) if trust.is_some() => {
                return Err(err(
                    TRUST_KEYS,
                    "trust keys sign the Redis source's key set: set them with Redis only",
                ));
            }
            (None, Some(url), None) => KeySource::JwksUrl {
                url: http_url(JWKS_URL, url)?,
            },
            (None, None, Some(path)) => KeySource::JwksFile { path: path.into() },
            (None, None, None) => {
                return Err(err(
                    REDIS_URL,
                    format!(
                        "no key source: set {REDIS_URL} (or {REDIS_SENTINELS}), {JWKS_URL} or {JWKS_FILE}"
                    ),
                ));
            }
            _ => {
                return Err(err(
                    REDIS_URL,
                    format!("set only one of {REDIS_URL}, {JWKS_URL}, {JWKS_FILE}"),
                ));
            }
        };

        let issuers = env.list(ISSUER);
        if issuers.is_empty() {
            return Err(err(
                ISSUER,
                "required: the issuer URL(s) tokens must carry in `iss`",
            ));
        }
        let leeway_secs: i64 = env.number(LEEWAY, 30, |s| (0..=600).contains(s))?;
        // Set but empty: any `typ` is accepted.
        let typs = match env.get(TYP) {
            Some(_) => env.list(TYP),
            None => vec![portcullis_common::token::ACCESS_TOKEN_TYP.to_owned()],
        };
        let settings = Settings {
            issuers,
            audiences: env.list(AUDIENCE),
            leeway_secs,
            typs,
        };

        let cookie = env.set(COOKIE);
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if cookie.as_ref().is_some_and(|c| !c.bytes().all(token_char)) {
            return Err(err(COOKIE, "not a valid cookie name"));
        }
        let policy_file = env.set(POLICY_FILE).map(PathBuf::from);
        let policy = match &policy_file {
            Some(path) => Policy::from_file(path).map_err(|e| err(POLICY_FILE, e.to_string()))?,
            None => Policy::default(),
        };

        // At least 2 s, and resyncs at least once within it.
        let max_staleness_secs: i64 = env.number(MAX_STALENESS, 60, |s| *s >= 2)?;
        let default_resync = (max_staleness_secs / 2).clamp(1, 30) as u64;
        let resync: u64 = env.number(RESYNC, default_resync, |s| {
            (1..max_staleness_secs).contains(&(*s as i64))
        })?;
        let cache_entries = env.number(CACHE_ENTRIES, 65_536usize, |n| *n <= 1 << 24)?;
        let dpop_max_age_secs = env.number(DPOP_MAX_AGE, dpop::DEFAULT_MAX_AGE_SECS, |s| {
            (1..=3600).contains(s)
        })?;
        let dpop_replay_entries = env.number(
            DPOP_REPLAY_ENTRIES,
            crate::serve::DEFAULT_REPLAY_ENTRIES,
            |n| (1024..=1 << 26).contains(n),
        )?;
        let max_connections = env.number(MAX_CONNECTIONS, 10_000usize, |n| *n >= 1)?;
        let drain: u64 = env.number(DRAIN, 10, |_| true)?;

        Ok(Self {
            listen,
            grpc_listen,
            tls,
            source,
            settings,
            cookie,
            policy_file,
            policy,
            max_staleness_secs,
            resync_interval: Duration::from_secs(resync),
            cache_entries,
            dpop_max_age_secs,
            dpop_replay_entries,
            max_connections,
            drain_timeout: Duration::from_secs(drain),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    const BASE: [(&str, &str); 2] = [
        (REDIS_URL, "redis://127.0.0.1:6379"),
        (ISSUER, "https://a.test, https://b.test"),
    ];

    #[test]
    fn defaults() {
        let c = Config::from_env(&env(&BASE)).unwrap();
        assert_eq!(c.listen.port(), 8081);
        assert_eq!(c.grpc_listen.unwrap().port(), 8082);
        assert_eq!(c.settings.issuers, ["https://a.test", "https://b.test"]);
        assert_eq!(c.settings.leeway_secs, 30);
        assert_eq!(c.settings.typs, ["at+jwt"]);
        assert!(c.settings.audiences.is_empty());
        assert_eq!(c.max_staleness_secs, 60);
        assert_eq!(c.resync_interval, Duration::from_secs(30));
    }

    #[test]
    fn each_bad_setting_names_its_variable() {
        let cases: [(&[(&str, &str)], &str); 11] = [
            (&[(ISSUER, "x")], REDIS_URL),
            (
                &[(REDIS_URL, "redis://h"), (JWKS_FILE, "/x"), (ISSUER, "x")],
                REDIS_URL,
            ),
            (&[(REDIS_URL, "http://h")], REDIS_URL),
            (&[(REDIS_URL, "redis://a:1,http://b:2")], REDIS_URL),
            (
                &[
                    (REDIS_URL, "redis://h"),
                    (ISSUER, "x"),
                    (TLS_CERT, "/nonexistent/c.pem"),
                ],
                TLS_KEY,
            ),
            (
                &[
                    (REDIS_URL, "redis://h"),
                    (ISSUER, "x"),
                    (TLS_CLIENT_CA, "/x/ca.pem"),
                ],
                TLS_CERT,
            ),
            (&[(REDIS_URL, "redis://h")], ISSUER),
            (
                &[(REDIS_URL, "redis://h"), (ISSUER, "x"), (LEEWAY, "abc")],
                LEEWAY,
            ),
            (
                &[(REDIS_URL, "redis://h"), (ISSUER, "x"), (LISTEN, "nope")],
                LISTEN,
            ),
            (
                &[
                    (REDIS_URL, "redis://h"),
                    (ISSUER, "x"),
                    (POLICY_FILE, "/nonexistent/p.toml"),
                ],
                POLICY_FILE,
            ),
            (
                &[(REDIS_URL, "redis://h"), (ISSUER, "x"), (COOKIE, "a b")],
                COOKIE,
            ),
        ];
        for (pairs, var) in cases {
            let e = Config::from_env(&env(pairs)).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}: {e}");
            assert!(e.to_string().starts_with(&format!("invalid {var}:")));
        }
    }

    #[test]
    fn empty_typ_accepts_any_and_grpc_can_be_off() {
        let mut e = env(&BASE);
        e.insert(TYP, "");
        e.insert(GRPC_LISTEN, "off");
        let c = Config::from_env(&e).unwrap();
        assert!(c.settings.typs.is_empty());
        assert!(c.grpc_listen.is_none());
    }
}
