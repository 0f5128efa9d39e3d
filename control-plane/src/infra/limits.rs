//! Rate limits shared by every replica through Redis (API.md §3 "Abuse limits"): fixed
//! windows counted with one atomic script per check. Keys live under `portcullis:rl:` and
//! expire with their window; identifiers are hashed so no email address sits in Redis.
//!
//! When Redis cannot be reached the limiter lets requests through (and counts that in
//! `portcullis_rate_limit_unavailable_total`): an outage of the cache must not take logins
//! down with it.

use std::net::IpAddr;

use portcullis_common::redis_conn::RedisConn;
use redis::Script;
use sha2::{Digest, Sha256};

/// Increments a window counter, starting its expiry on the first hit; returns the count
/// and the seconds left in the window.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

/// Takes one back (a login attempt that turned out right), never below zero.
const FORGIVE: &str = r"
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
";

#[derive(Clone)]
pub struct Limiter {
    conn: RedisConn,
    hit: Script,
    forgive: Script,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter(..)")
    }
}

/// What is being counted.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Requests to `route` of `app` from one client address, per minute.
    Ip {
        app: &'a str,
        route: &'a str,
        ip: IpAddr,
    },
    /// Password attempts on one account (by its canonical identifier), per hour; a right
    /// password is forgiven afterwards, so what remains are failures.
    AccountFailures { app: &'a str, account: &'a str },
    /// Mails and SMS sent to one account or one destination (an address, a phone), per
    /// hour: no one can be flooded with messages, and a code cannot be re-sent forever.
    /// `kind` keeps links (reset, magic link) and codes apart, so asking for links to
    /// someone's address cannot use up the codes that sign them in.
    Messages {
        app: &'a str,
        kind: &'static str,
        destination: &'a str,
    },
    /// Wrong second-factor codes on one account, per hour: with a 6-digit code, what stops
    /// brute force.
    MfaFailures { app: &'a str, user: &'a str },
    /// Failed sign-ins from one client address, per hour (when a CAPTCHA is due).
    LoginFailuresIp { app: &'a str, ip: IpAddr },
}

/// The client a per-address limit counts: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so counting single addresses would not limit it).
fn client(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Scope<'_> {
    fn key(&self) -> String {
        match self {
            Self::Ip { app, route, ip } => {
                format!("portcullis:rl:{app}:{route}:ip:{}", client(ip))
            }
            Self::AccountFailures { app, account } => {
                format!("portcullis:rl:{app}:login-failures:{}", hashed(account))
            }
            Self::Messages {
                app,
                kind,
                destination,
            } => format!(
                "portcullis:rl:{app}:messages-{kind}:{}",
                hashed(destination)
            ),
            Self::MfaFailures { app, user } => {
                format!("portcullis:rl:{app}:mfa-failures:{}", hashed(user))
            }
            Self::LoginFailuresIp { app, ip } => {
                format!("portcullis:rl:{app}:ip-failures:{}", client(ip))
            }
        }
    }

    fn window(&self) -> i64 {
        match self {
            Self::Ip { .. } => 60,
            Self::AccountFailures { .. }
            | Self::Messages { .. }
            | Self::MfaFailures { .. }
            | Self::LoginFailuresIp { .. } => 3600,
        }
    }
}

/// An identifier as it is named in Redis: the first 128 bits of its SHA-256, in hex.
fn hashed(identifier: &str) -> String {
    let h = Sha256::digest(identifier.as_bytes());
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A limit reached, or (for the limits that fail closed) a count that cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("too many requests; retry in {retry_after} s")]
    Limited { retry_after: u64 },
    #[error("the rate limiter is unavailable")]
    Unavailable,
}

impl Limiter {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            hit: Script::new(HIT),
            forgive: Script::new(FORGIVE),
        }
    }

    async fn run(&self, script: &Script, scope: &Scope<'_>) -> Option<(u64, u64)> {
        let mut conn = self.conn.clone();
        match script
            .key(scope.key())
            .arg(scope.window())
            .invoke_async::<(u64, i64)>(&mut conn)
            .await
        {
            Ok((n, ttl)) => Some((n, ttl.max(1) as u64)),
            Err(e) => {
                metrics::counter!("portcullis_rate_limit_unavailable_total").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; request let through");
                None
            }
        }
    }

    /// Counts one request or attempt; `429` once more than `limit` arrived in the window.
    /// Counting before the work is done means attempts in flight count too, so a burst
    /// cannot slip past the limit while its password checks are queued.
    pub async fn hit(&self, scope: Scope<'_>, limit: u32) -> Result<(), LimitError> {
        match self.run(&self.hit, &scope).await {
            Some((n, ttl)) if n > u64::from(limit) => Err(LimitError::Limited { retry_after: ttl }),
            _ => Ok(()),
        }
    }

    /// [`hit`](Self::hit), but `503` when the count cannot be kept: for limits that are
    /// the only defence (wrong second-factor codes), Redis down must not mean unlimited.
    pub async fn hit_or_refuse(&self, scope: Scope<'_>, limit: u32) -> Result<(), LimitError> {
        match self.run(&self.hit, &scope).await {
            Some((n, ttl)) if n > u64::from(limit) => Err(LimitError::Limited { retry_after: ttl }),
            Some(_) => Ok(()),
            None => Err(LimitError::Unavailable),
        }
    }

    /// The current count of `scope`, without adding to it; `None` when Redis cannot say.
    pub async fn count(&self, scope: Scope<'_>) -> Option<u64> {
        let mut conn = self.conn.clone();
        redis::AsyncCommands::get::<_, Option<u64>>(&mut conn, scope.key())
            .await
            .map(Option::unwrap_or_default)
            .ok()
    }

    /// Takes back one [`hit`](Self::hit) of `scope` (the attempt succeeded).
    pub async fn forgive(&self, scope: Scope<'_>) {
        let mut conn = self.conn.clone();
        if let Err(e) = self
            .forgive
            .key(scope.key())
            .invoke_async::<i64>(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "rate limiter unavailable");
        }
    }
}
