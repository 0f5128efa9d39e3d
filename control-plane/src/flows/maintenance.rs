//! The background schedule, single-flight across replicas: the key schedule (rotate when
//! due, retire what has expired), pruning (ended sessions, finished social-login flows,
//! delivered messages, used one-time tokens and codes, DPoP proofs past their window,
//! audit events past retention), and the reconcile pass that rewrites the Redis layout
//! from PostgreSQL, so a flushed, restarted or briefly unreachable Redis heals by itself.
//! And the operator's rotation ([`rotate_keys`]), which runs the same key step at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use crate::domain::Ctx;
use crate::domain::audit::{Actor, Event};
use crate::domain::keys::{KeyError, KeyRing};
use crate::domain::{audit, revocations, sessions};
use crate::infra::publish::{Publisher, Repaired};
use crate::infra::store::{self, DbError};
use crate::infra::{clock, outbox};

/// Advisory lock making the maintenance pass single-flight across replicas ("maintain").
pub const MAINTENANCE_LOCK: i64 = 0x6d61_696e_7461_696e;
/// How often events past their retention are deleted (a larger sweep than the rest).
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the schedule works with.
#[derive(Clone, Debug)]
pub struct Maintenance {
    pub pool: Pool,
    pub keys: Arc<KeyRing>,
    pub publisher: Publisher,
    /// Period of the pass (`PORTCULLIS_RECONCILE_INTERVAL_SECS`).
    pub interval: Duration,
    /// Age at which the active signing key is rotated.
    pub key_rotation_interval: Duration,
}

/// Why a reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(ReconcileError);

/// Runs the schedule until the task is dropped: at start, then every interval.
pub async fn run(m: Maintenance) {
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_audit_prune: Option<Instant> = None;
    loop {
        tick.tick().await;
        // One replica at a time: a pass started while another replica's runs is skipped
        // (every replica ticks, so the work still happens once per interval).
        let _lease = match store::try_singleton(&m.pool, MAINTENANCE_LOCK).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                metrics::counter!("portcullis_maintenance_skipped_total").increment(1);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance lock unavailable; retrying next interval");
                continue;
            }
        };
        // Bounded: a pass stuck on a half-open connection must not hold the lock (and so
        // every replica's maintenance) for long.
        let limit = (m.interval * 4).max(Duration::from_secs(120));
        if tokio::time::timeout(limit, pass(&m, &mut last_audit_prune))
            .await
            .is_err()
        {
            metrics::counter!("portcullis_reconcile_failures_total").increment(1);
            tracing::warn!(?limit, "maintenance pass timed out; retrying next interval");
        }
    }
}

/// One maintenance pass: the key schedule, pruning, and the Redis reconcile.
async fn pass(m: &Maintenance, last_audit_prune: &mut Option<Instant>) {
    if let Err(e) = m.keys.maintain(m.key_rotation_interval).await {
        tracing::warn!(error = %e, "key schedule check failed");
    }
    let with_audit = last_audit_prune.is_none_or(|at| at.elapsed() >= AUDIT_PRUNE_EVERY);
    match prune(&m.pool, with_audit).await {
        Ok(()) if with_audit => *last_audit_prune = Some(Instant::now()),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "pruning failed; retrying next interval"),
    }
    match reconcile(&m.publisher, &m.pool, &m.keys, clock::unix_now()).await {
        Ok(repaired) if repaired.any() => {
            metrics::counter!("portcullis_reconcile_repairs_total").increment(1);
            tracing::info!(?repaired, "Redis reconciled from PostgreSQL");
        }
        Ok(_) => {}
        Err(e) => {
            metrics::counter!("portcullis_reconcile_failures_total").increment(1);
            tracing::warn!(error = %e, "reconcile failed; retrying next interval");
        }
    }
}

/// Deletes what has ended: sessions, social-login flows, delivered messages, used tokens
/// and codes, remembered DPoP proofs, and (`with_audit`) events past their application's
/// retention.
async fn prune(pool: &Pool, with_audit: bool) -> Result<(), DbError> {
    let client = pool.get().await?;
    let now = clock::unix_now();
    sessions::prune(&client, now).await?;
    crate::domain::identities::prune(&client, now).await?;
    outbox::prune(&client).await?;
    crate::domain::one_time::prune(&client).await?;
    crate::domain::passkeys::prune(&client).await?;
    crate::domain::authorizations::prune(&client).await?;
    crate::domain::factors::prune(&client).await?;
    crate::domain::dpop::prune(&client, now).await?;
    if with_audit {
        audit::prune(&client).await?;
    }
    Ok(())
}

/// Rewrites the Redis layout from PostgreSQL: the JWKS, every unexpired revocation, and
/// removes expired or unknown entries (PostgreSQL rows past `now` are pruned too). When
/// anything changed, every verifier is made to resync; nothing is published when Redis
/// already matched.
pub async fn reconcile(
    publisher: &Publisher,
    pool: &Pool,
    keys: &KeyRing,
    now: i64,
) -> Result<Repaired, ReconcileError> {
    // Redis first, PostgreSQL second: every revocation is committed to PostgreSQL before
    // it reaches Redis, so whatever this read of Redis holds is already in the read of
    // PostgreSQL below, and an entry missing there is truly gone (expired).
    let published = publisher.published().await?;
    let client = pool.get().await?;
    let live = revocations::prune_and_read(&client, now).await?;
    drop(client);
    let mut repaired = Repaired::default();
    // Keys after Redis, as revocations: a JWKS another replica published is already in
    // this read of PostgreSQL, so the comparison never favours an older set.
    let fresh = keys.refresh().await?;
    if published.jwks.as_deref() == Some(fresh.jwks_json.as_str()) {
        keys.mark_published(&fresh).await?;
    } else if publisher
        .replace_jwks(published.jwks.as_deref(), &fresh.jwks_json)
        .await?
    {
        repaired.jwks = true;
        keys.mark_published(&fresh).await?;
    }
    if !publisher.signed_is_current(&fresh.jwks_json, now).await? {
        seal_jwks(publisher, pool, &fresh.jwks_json, now).await?;
        repaired.jwks = true;
    }
    let revoked = publisher
        .rewrite_revocations(&published, &live.sessions, &live.users, now)
        .await?;
    repaired.sessions_added = revoked.sessions_added;
    repaired.users_written = revoked.users_written;
    repaired.pruned = revoked.pruned;
    // A session entry in Redis that PostgreSQL no longer has only over-revokes until its
    // score passes, when the prune drops it.
    if repaired.any() {
        publisher.announce_resync().await?;
    }
    Ok(repaired)
}

/// Seals the key set with the next sequence number (PostgreSQL's: it only grows, across
/// replicas) when this control plane has a publisher key.
async fn seal_jwks(
    publisher: &Publisher,
    pool: &Pool,
    jwks_json: &str,
    now: i64,
) -> Result<(), ReconcileError> {
    if !publisher.signs() {
        return Ok(());
    }
    let client = pool.get().await.map_err(DbError::from)?;
    let seq = crate::domain::keys::next_signed_seq(&client).await?;
    drop(client);
    publisher.seal_jwks(jwks_json, seq, now).await?;
    Ok(())
}

/// An operator's rotation: planned ([`KeyRing::rotate`], refused inside the publish
/// lead), or with `emergency` (the reason, recorded) the withdrawal of the active key
/// ([`KeyRing::withdraw`]). Either way the new set is published now (by the reconcile pass
/// when Redis is down now). Returns the new active key's id.
pub async fn rotate_keys(
    pool: &Pool,
    keys: &KeyRing,
    publisher: &Publisher,
    emergency: Option<&str>,
    ctx: &Ctx,
) -> Result<String, KeyError> {
    let (kid, details) = match emergency {
        None => {
            let kid = keys.rotate().await?;
            (kid.clone(), serde_json::json!({ "kid": kid }))
        }
        Some(reason) => {
            let (withdrawn, kid) = keys.withdraw().await?;
            let details = serde_json::json!({
                "kid": kid, "emergency": true, "withdrawn": withdrawn, "reason": reason,
            });
            (kid, details)
        }
    };
    let client = pool.get().await.map_err(DbError::from)?;
    let rotated = Event {
        app: None,
        user: None,
        actor: Actor::Operator,
        event: "keys.rotated",
        details,
        ctx,
    };
    audit::record(&client, rotated).await?;
    drop(client);
    let fresh = keys.refresh().await?;
    // The signed set first: the event `jwks` then announces both.
    let sealed = seal_jwks(publisher, pool, &fresh.jwks_json, clock::unix_now()).await;
    if let Err(e) = sealed {
        tracing::warn!(error = %e, "signed key set not published after rotation; the reconciler will");
    }
    match publisher.jwks(&fresh.jwks_json).await {
        Ok(()) => keys.mark_published(&fresh).await?,
        Err(e) => {
            tracing::warn!(error = %e, "JWKS not published after rotation; the reconciler will")
        }
    }
    match emergency {
        Some(reason) => tracing::warn!(%kid, %reason, "signing key withdrawn by the operator"),
        None => tracing::info!(%kid, "signing key rotated by the operator"),
    }
    Ok(kid)
}
