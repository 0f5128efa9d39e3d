//! The only writer of the Redis layout (API.md §5): the public JWKS and the revocations the
//! verifiers enforce. Every change is written to PostgreSQL first (by the caller), then here
//! as state, `INCR portcullis:version`, `PUBLISH`, in that order.
//!
//! The reconcile pass (`flows::maintenance`) rewrites the layout from PostgreSQL at start
//! and on a timer through [`Publisher::published`], [`Publisher::replace_jwks`],
//! [`Publisher::rewrite_revocations`] and [`Publisher::announce_resync`], so a flushed,
//! restarted or briefly unreachable Redis heals by itself.

use std::collections::HashMap;

use portcullis_common::redis_conn::{RedisConfig, RedisConn};
use portcullis_common::redis_layout::{
    EVENTS_CHANNEL, Event, JWKS, JWKS_SIGNED, REVOKED_SESSIONS, REVOKED_USERS, VERSION,
};
use portcullis_common::signed_jwks;
use redis::AsyncCommands as _;

/// `HSET key field value` unless the field already holds a larger cutoff: two writers (a
/// revocation and a reconcile on another replica) never move a cutoff backwards.
const RAISE_CUTOFF: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); return 1 end
return 0
";

/// `HDEL key field` only if it still holds the value the reconciler judged stale.
const DROP_IF_UNCHANGED: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
";

/// `SET key new` only if the key still holds `expected` (`""` = absent): the reconciler
/// never overwrites a JWKS another replica published after the reconciler read Redis.
const SET_IF_UNCHANGED: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2]); return 1
end
return 0
";

/// A cheap, cloneable handle on one multiplexed, self-reconnecting Redis connection.
#[derive(Clone)]
pub struct Publisher {
    conn: RedisConn,
    raise: redis::Script,
    drop_if: redis::Script,
    set_if: redis::Script,
    /// Signs the key set for verifiers with trust keys (API.md §5 `portcullis:jwks:signed`).
    signer: Option<std::sync::Arc<ed25519_dalek::SigningKey>>,
}

/// How long a sealed key set serves before the reconciler seals it again (verifiers
/// refuse one older than a day).
pub const RESEAL_SECS: i64 = 3600;

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher(..)")
    }
}

/// What one reconcile pass found missing or stale and repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    pub jwks: bool,
    pub sessions_added: usize,
    pub users_written: usize,
    pub pruned: usize,
}

impl Repaired {
    pub fn any(&self) -> bool {
        self.jwks || self.sessions_added > 0 || self.users_written > 0 || self.pruned > 0
    }
}

/// What Redis holds, read before PostgreSQL by a reconcile pass.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub jwks: Option<String>,
    /// `revoked:users`: user id -> cutoff.
    pub users: HashMap<String, i64>,
}

impl Publisher {
    /// Connects lazily: the control plane starts (and answers 503 where Redis is needed)
    /// while Redis is down, and the connection comes back by itself.
    pub fn new(redis: &RedisConfig, publisher_key: Option<&[u8; 32]>) -> redis::RedisResult<Self> {
        Ok(Self {
            conn: redis.connection(),
            raise: redis::Script::new(RAISE_CUTOFF),
            drop_if: redis::Script::new(DROP_IF_UNCHANGED),
            set_if: redis::Script::new(SET_IF_UNCHANGED),
            signer: publisher_key
                .map(|seed| std::sync::Arc::new(ed25519_dalek::SigningKey::from_bytes(seed))),
        })
    }

    /// Whether this control plane signs what it publishes.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Whether the signed key set in Redis is ours, carries `jwks_json` and is younger
    /// than [`RESEAL_SECS`] (nothing to do), or needs sealing again.
    pub async fn signed_is_current(&self, jwks_json: &str, now: i64) -> redis::RedisResult<bool> {
        let Some(signer) = &self.signer else {
            return Ok(true);
        };
        let mut conn = self.conn.clone();
        let held: Option<String> = conn.get(JWKS_SIGNED).await?;
        let own = signed_jwks::TrustKeys::of(signer);
        let opened = held.and_then(|held| signed_jwks::open(&held, &own).ok());
        let same = |a: &str| {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(jwks_json).ok()
        };
        Ok(opened.is_some_and(|o| same(&o.jwks) && now - o.iat < RESEAL_SECS))
    }

    /// Seals `jwks_json` as key set `seq` and stores it (the caller announces the change).
    pub async fn seal_jwks(&self, jwks_json: &str, seq: u64, now: i64) -> redis::RedisResult<()> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let sealed = signed_jwks::seal(signer, jwks_json, seq, now).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "sealing the key set", e))
        })?;
        let mut conn = self.conn.clone();
        let () = conn.set(JWKS_SIGNED, sealed).await?;
        Ok(())
    }

    /// Tells the verifiers the key set changed.
    pub async fn announce_jwks(&self) -> redis::RedisResult<()> {
        self.announce(|version| Event::Jwks { version }).await?;
        Ok(())
    }

    /// The connection, for the rate limiter (which shares it).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    async fn announce(&self, event: impl FnOnce(u64) -> Event) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let version: u64 = conn.incr(VERSION, 1).await?;
        let _: i64 = conn
            .publish(EVENTS_CHANNEL, event(version).encode())
            .await?;
        Ok(version)
    }

    /// Publishes the JWKS (every `next`, `active` and `retired` key).
    pub async fn jwks(&self, json: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let () = conn.set(JWKS, json).await?;
        self.announce(|version| Event::Jwks { version }).await?;
        Ok(())
    }

    pub async fn session_revoked(&self, session_id: &str, until: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        // GT: a later `until` already there is kept.
        let _: i64 = redis::cmd("ZADD")
            .arg(REVOKED_SESSIONS)
            .arg("GT")
            .arg(until)
            .arg(session_id)
            .query_async(&mut conn)
            .await?;
        self.announce(|version| Event::SessionRevoked {
            session_id: session_id.to_owned(),
            until,
            version,
        })
        .await?;
        Ok(())
    }

    pub async fn user_revoked(&self, user_id: &str, before: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .raise
            .key(REVOKED_USERS)
            .arg(user_id)
            .arg(before)
            .invoke_async(&mut conn)
            .await?;
        self.announce(|version| Event::UserRevoked {
            user_id: user_id.to_owned(),
            before,
            version,
        })
        .await?;
        Ok(())
    }

    /// The JWKS and the user cutoffs Redis holds now.
    pub async fn published(&self) -> redis::RedisResult<Published> {
        let mut conn = self.conn.clone();
        Ok(Published {
            jwks: conn.get(JWKS).await?,
            users: conn.hgetall(REVOKED_USERS).await?,
        })
    }

    /// Sets the JWKS to `fresh` unless it changed since it was read as `published` (another
    /// replica's newer set is never overwritten); whether it was set.
    pub async fn replace_jwks(
        &self,
        published: Option<&str>,
        fresh: &str,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let set: i64 = self
            .set_if
            .key(JWKS)
            .arg(published.unwrap_or(""))
            .arg(fresh)
            .invoke_async(&mut conn)
            .await?;
        Ok(set == 1)
    }

    /// Makes the revocation sets hold `sessions` (id -> until) and `users` (id -> cutoff):
    /// expired sessions pruned, missing entries added, stale user entries dropped unless
    /// changed since `published` was read. Returns what it changed.
    pub async fn rewrite_revocations(
        &self,
        published: &Published,
        sessions: &HashMap<String, i64>,
        users: &HashMap<String, i64>,
        now: i64,
    ) -> redis::RedisResult<Repaired> {
        let mut conn = self.conn.clone();
        let mut repaired = Repaired::default();
        repaired.pruned += conn
            .zrembyscore::<_, _, _, usize>(REVOKED_SESSIONS, "-inf", format!("({now}"))
            .await?;
        let members: Vec<(i64, &str)> = sessions
            .iter()
            .map(|(sid, until)| (*until, sid.as_str()))
            .collect();
        for chunk in members.chunks(1000) {
            let mut add = redis::cmd("ZADD");
            add.arg(REVOKED_SESSIONS).arg("GT").arg("CH");
            for (until, sid) in chunk {
                add.arg(*until).arg(*sid);
            }
            repaired.sessions_added += add.query_async::<usize>(&mut conn).await?;
        }
        for (user, value) in &published.users {
            if !users.contains_key(user) {
                repaired.pruned += self
                    .drop_if
                    .key(REVOKED_USERS)
                    .arg(user)
                    .arg(value)
                    .invoke_async::<usize>(&mut conn)
                    .await?;
            }
        }
        for (user, before) in users {
            if published.users.get(user) != Some(before) {
                repaired.users_written += self
                    .raise
                    .key(REVOKED_USERS)
                    .arg(user)
                    .arg(before)
                    .invoke_async::<usize>(&mut conn)
                    .await?;
            }
        }
        Ok(repaired)
    }

    /// Bumps the version by two and announces it, so every verifier sees a gap and re-reads
    /// the whole state (API.md §5: a version that is not the next one forces a resync).
    pub async fn announce_resync(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let version: u64 = conn.incr(VERSION, 2).await?;
        let _: i64 = conn
            .publish(EVENTS_CHANNEL, Event::Jwks { version }.encode())
            .await?;
        Ok(())
    }
}
