//! The Redis source (API.md §5): load the full state, follow `portcullis:events`, resync
//! on a version gap, on an unparsable message, on reconnect and on a timer.
//!
//! ```text
//! Connecting --ok--> subscribe --> Resyncing (version, then jwks + zset + hash) --> Live
//! Live: event v <= last+1 -> apply (idempotent); v > last+1 or unparsable -> Resyncing
//!       timer -> Resyncing; any error -> Connecting (backoff), last snapshot kept
//! ```
//!
//! Subscribing happens before the first read, so no event between the read and the
//! subscription is lost. During an outage verification goes on with the last snapshot;
//! `/readyz` turns false once the last successful contact is older than the staleness
//! bound.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use portcullis_common::redis_conn::{RedisConfig, RedisConn};
use portcullis_common::redis_layout::{self as layout, Event};
use portcullis_common::signed_jwks::{self, EnvelopeError, TrustKeys};
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::{Backoff, install_jwks};
use crate::core::{RevocationsBuilder, Snapshot, Trust};
use crate::state::{Shared, unix_now};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const SCAN_COUNT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {COMMAND_TIMEOUT:?}")]
    Timeout,
    #[error("the event subscription closed")]
    Closed,
}

async fn bounded<T>(f: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, SyncError> {
    tokio::time::timeout(COMMAND_TIMEOUT, f)
        .await
        .map_err(|_| SyncError::Timeout)?
        .map_err(SyncError::from)
}

/// What the sync remembers between messages.
#[derive(Debug, Default)]
struct Cursor {
    version: u64,
    jwks_digest: Option<[u8; 32]>,
    /// With trust keys, only the signed key set is read, and its `seq` must grow.
    trust: Option<Arc<TrustKeys>>,
    seq: Option<u64>,
    /// The last envelope refused (said once, not on every resync).
    refused: Option<[u8; 32]>,
}

/// An envelope older than this is refused even by a verifier that holds none: the
/// control plane seals the key set again well within it (every hour), so a replayed old
/// set (one with a withdrawn key, say) cannot be fed to a verifier that just started.
pub const SIGNED_JWKS_MAX_AGE_SECS: i64 = 86_400;

/// Runs forever: connect, resync, follow events; reconnect with backoff on any failure.
/// With `trust`, keys come only from the key set signed by one of those publisher keys.
pub async fn run(
    redis: RedisConfig,
    shared: Arc<Shared>,
    resync_every: Duration,
    trust: Option<Arc<TrustKeys>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut cursor = Cursor {
        trust,
        ..Cursor::default()
    };
    loop {
        let err = follow(&redis, &shared, resync_every, &mut cursor, &mut backoff).await;
        metrics::counter!("portcullis_verifier_sync_errors_total").increment(1);
        let delay = backoff.next_delay();
        tracing::warn!(error = %err, retry_in = ?delay, "redis sync interrupted; verifying with the last snapshot");
        tokio::time::sleep(delay).await;
    }
}

async fn follow(
    redis: &RedisConfig,
    shared: &Shared,
    resync_every: Duration,
    cursor: &mut Cursor,
    backoff: &mut Backoff,
) -> SyncError {
    // Each round connects afresh: with Sentinel that asks for the current master, with a
    // Cluster it subscribes on the first node that answers.
    let mut pubsub = match bounded(redis.subscribe(layout::EVENTS_CHANNEL)).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut conn = redis.connection();
    if let Err(e) = resync(&mut conn, shared, cursor).await {
        return e;
    }
    backoff.reset();
    let mut messages = pubsub.on_message();
    let mut timer =
        tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let outcome = tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => on_message(&mut conn, shared, cursor, msg.get_payload_bytes()).await,
                None => Err(SyncError::Closed),
            },
            _ = timer.tick() => resync(&mut conn, shared, cursor).await,
        };
        if let Err(e) = outcome {
            return e;
        }
    }
}

async fn on_message(
    conn: &mut RedisConn,
    shared: &Shared,
    cursor: &mut Cursor,
    payload: &[u8],
) -> Result<(), SyncError> {
    let Some(event) = Event::decode(payload) else {
        tracing::warn!("unparsable event on {}; resyncing", layout::EVENTS_CHANNEL);
        return resync(conn, shared, cursor).await;
    };
    let version = event.version();
    if version > cursor.version + 1 {
        tracing::info!(
            have = cursor.version,
            got = version,
            "event version gap; resyncing"
        );
        metrics::counter!("portcullis_verifier_version_gaps_total").increment(1);
        return resync(conn, shared, cursor).await;
    }
    let now = unix_now();
    match event {
        Event::Jwks { .. } => refresh_jwks(conn, shared, cursor).await?,
        Event::SessionRevoked {
            session_id, until, ..
        } => shared.update(|old| Snapshot {
            keys: old.keys.clone(),
            revocations: old.revocations.with_session(&session_id, until, now),
            version: version.max(old.version),
        }),
        Event::UserRevoked {
            user_id, before, ..
        } => shared.update(|old| Snapshot {
            keys: old.keys.clone(),
            revocations: old.revocations.with_user_cutoff(&user_id, before, now),
            version: version.max(old.version),
        }),
    }
    // Applying an event at or below the current version is harmless (revocations are
    // idempotent), which also covers a Redis whose counter restarted after a flush.
    cursor.version = cursor.version.max(version);
    shared.mark_synced(now);
    metrics::gauge!("portcullis_verifier_sync_version").set(cursor.version as f64);
    Ok(())
}

async fn refresh_jwks(
    conn: &mut RedisConn,
    shared: &Shared,
    cursor: &mut Cursor,
) -> Result<(), SyncError> {
    if let Some(trust) = cursor.trust.clone() {
        return refresh_signed_jwks(conn, shared, cursor, &trust).await;
    }
    let doc: Option<Vec<u8>> = bounded(conn.get(layout::JWKS)).await?;
    let Some(doc) = doc else {
        tracing::warn!("{} is missing; keeping the last good keys", layout::JWKS);
        return Ok(());
    };
    let digest: [u8; 32] = Sha256::digest(&doc).into();
    if cursor.jwks_digest == Some(digest) {
        return Ok(());
    }
    if install_jwks(shared, &doc, Trust::Portcullis, "redis") {
        cursor.jwks_digest = Some(digest);
    }
    Ok(())
}

/// The signed key set: installed only if a trusted publisher key signed it, it is not
/// older than the one held (`seq`), and not past [`SIGNED_JWKS_MAX_AGE_SECS`]. Anything
/// else (unsigned, signed by another key, replayed, stale) is ignored, counted and said
/// once; the last good keys keep serving, and readiness follows the usual rules.
async fn refresh_signed_jwks(
    conn: &mut RedisConn,
    shared: &Shared,
    cursor: &mut Cursor,
    trust: &TrustKeys,
) -> Result<(), SyncError> {
    let doc: Option<Vec<u8>> = bounded(conn.get(layout::JWKS_SIGNED)).await?;
    let Some(doc) = doc else {
        tracing::warn!(
            "{} is missing; keeping the last good keys",
            layout::JWKS_SIGNED
        );
        return Ok(());
    };
    let digest: [u8; 32] = Sha256::digest(&doc).into();
    if cursor.jwks_digest == Some(digest) || cursor.refused == Some(digest) {
        return Ok(());
    }
    let opened = std::str::from_utf8(&doc)
        .map_err(|_| EnvelopeError::Malformed)
        .and_then(|text| signed_jwks::open(text, trust));
    let refusal = match &opened {
        Err(e) => Some(e.to_string()),
        Ok(o) if cursor.seq.is_some_and(|held| o.seq <= held) => Some(format!(
            "seq {} is not newer than the {} held (a replay)",
            o.seq,
            cursor.seq.unwrap_or_default()
        )),
        Ok(o) if o.iat < unix_now() - SIGNED_JWKS_MAX_AGE_SECS => {
            Some(format!("issued at {}, older than a day", o.iat))
        }
        Ok(_) => None,
    };
    if let Some(why) = refusal {
        cursor.refused = Some(digest);
        metrics::counter!("portcullis_verifier_jwks_refused_total").increment(1);
        tracing::error!(reason = %why, "signed key set refused; keeping the last good keys");
        return Ok(());
    }
    let Ok(opened) = opened else {
        return Ok(());
    };
    if install_jwks(
        shared,
        opened.jwks.as_bytes(),
        Trust::Portcullis,
        "redis (signed)",
    ) {
        cursor.jwks_digest = Some(digest);
        cursor.seq = Some(opened.seq);
    } else {
        cursor.refused = Some(digest);
    }
    Ok(())
}

/// Reads the whole state: the version first, then keys and revocations.
async fn resync(
    conn: &mut RedisConn,
    shared: &Shared,
    cursor: &mut Cursor,
) -> Result<(), SyncError> {
    let version: Option<u64> = bounded(conn.get(layout::VERSION)).await?;
    refresh_jwks(conn, shared, cursor).await?;
    let now = unix_now();
    let mut builder = RevocationsBuilder::new(now);
    scan(
        conn,
        "ZSCAN",
        layout::REVOKED_SESSIONS,
        |sid: String, until: f64| builder.session(&sid, until as i64),
    )
    .await?;
    scan(
        conn,
        "HSCAN",
        layout::REVOKED_USERS,
        |uid: String, before: i64| builder.user(&uid, before),
    )
    .await?;
    // A resync never un-revokes: what the last snapshot revoked and this read lacks is
    // kept until it expires (counted, and said once per resync).
    let kept = builder.keep(&shared.load().revocations);
    if kept > 0 {
        metrics::counter!("portcullis_verifier_revocations_kept_total").increment(kept as u64);
        tracing::warn!(
            kept,
            "Redis lacks revocations this verifier holds; kept until they expire"
        );
    }
    let revocations = builder.build();
    let version = version.unwrap_or(0);
    metrics::gauge!("portcullis_verifier_revoked_sessions").set(revocations.sessions_len() as f64);
    metrics::gauge!("portcullis_verifier_revoked_users").set(revocations.users_len() as f64);
    metrics::gauge!("portcullis_verifier_sync_version").set(version as f64);
    metrics::counter!("portcullis_verifier_resyncs_total").increment(1);
    shared.update(|old| Snapshot {
        keys: old.keys.clone(),
        revocations,
        version,
    });
    cursor.version = version;
    shared.mark_synced(now);
    tracing::debug!(version, "resynced from redis");
    Ok(())
}

/// Walks a sorted set or hash with ZSCAN/HSCAN: every entry present for the whole walk is
/// seen, without holding the whole collection in one reply.
async fn scan<V: redis::FromRedisValue>(
    conn: &mut RedisConn,
    command: &str,
    key: &str,
    mut each: impl FnMut(String, V),
) -> Result<(), SyncError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, V)>) = bounded(
            redis::cmd(command)
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(conn),
        )
        .await?;
        for (member, value) in page {
            each(member, value);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
