//! Login sessions and their refresh tokens (API.md §2): starting a session, rotating its
//! refresh token with reuse detection and the grace window, and revoking sessions and users
//! (PostgreSQL first, then the Redis layout the verifiers read).

use deadpool_postgres::GenericClient;
use portcullis_common::token::Amr;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::users::{self, USER_COLUMNS, User};
use crate::domain::{Ctx, Jkt};
use crate::infra::clock;
use crate::infra::crypto::digest;
use crate::infra::publish::Publisher;
use crate::infra::store::{DbError, Prepared as _, is_unique_violation};

/// One row of `GET /sessions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub device_id: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub current: bool,
}

/// Which sessions a revocation covers.
#[derive(Clone, Debug)]
pub enum Which {
    One { user: Uuid, session: Uuid },
    Device { user: Uuid, device: String },
    AllOfUser { user: Uuid, except: Option<Uuid> },
}

/// A session revoked in PostgreSQL, still to be published.
#[derive(Clone, Debug)]
pub struct Revoked {
    pub session: Uuid,
    pub until: i64,
}

/// `amr` values as stored (and audited).
pub fn amr_names(amr: &[Amr]) -> Vec<String> {
    amr.iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn amr_parse(names: &[String]) -> Vec<Amr> {
    names
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
        .collect()
}

/// Revokes the live sessions `which` names, recording each in `revocations`.
pub async fn revoke_in(
    tx: &impl GenericClient,
    which: &Which,
    now: i64,
) -> Result<Vec<Revoked>, DbError> {
    let until = crate::domain::revocation_until(now);
    let at = clock::at(now);
    let (condition, user, extra) = match which {
        // The parameter is text for every variant; casting it (never the column) keeps the
        // primary-key index usable.
        Which::One { user, session } => ("id = $4::text::uuid", user, Some(session.to_string())),
        Which::Device { user, device } => ("device_id = $4::text", user, Some(device.clone())),
        Which::AllOfUser { user, except } => (
            "($4::text IS NULL OR id <> $4::text::uuid)",
            user,
            except.map(|e| e.to_string()),
        ),
    };
    let sql = format!(
        "WITH r AS (
             UPDATE sessions SET revoked_at = $1
             WHERE user_id = $2 AND revoked_at IS NULL AND {condition}
             RETURNING id)
         INSERT INTO revocations (kind, subject, until)
         SELECT 'session', r.id::text, $3 FROM r
         ON CONFLICT (kind, subject) DO UPDATE SET until = GREATEST(revocations.until, EXCLUDED.until)
         RETURNING subject"
    );
    let rows = tx.q(&sql, &[&at, &user, &until, &extra]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, String>(0).parse().ok())
        .map(|session| Revoked { session, until })
        .collect())
}

/// What [`revoke_bound_in`] ends: every session of a client, or of a browser's sign-in
/// at the provider.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    Client(Uuid),
    ProviderSession(Uuid),
}

/// A session [`revoke_bound_in`] ended: whose, and the client it was for.
#[derive(Clone, Debug)]
pub struct Ended {
    pub revoked: Revoked,
    pub user: Uuid,
    pub client: Option<Uuid>,
}

/// Revokes the live sessions `bound` names, as [`revoke_in`] does.
pub async fn revoke_bound_in(
    tx: &impl GenericClient,
    bound: Bound,
    now: i64,
) -> Result<Vec<Ended>, DbError> {
    let until = crate::domain::revocation_until(now);
    let (column, id) = match bound {
        Bound::Client(id) => ("client_id", id),
        Bound::ProviderSession(id) => ("provider_session", id),
    };
    let sql = format!(
        "WITH r AS (
             UPDATE sessions SET revoked_at = $1
             WHERE {column} = $2 AND revoked_at IS NULL
             RETURNING id, user_id, client_id),
         i AS (
             INSERT INTO revocations (kind, subject, until)
             SELECT 'session', r.id::text, $3 FROM r
             ON CONFLICT (kind, subject) DO UPDATE SET until = GREATEST(revocations.until, EXCLUDED.until))
         SELECT id, user_id, client_id FROM r"
    );
    let rows = tx.q(&sql, &[&clock::at(now), &id, &until]).await?;
    Ok(rows
        .iter()
        .map(|r| Ended {
            revoked: Revoked {
                session: r.get(0),
                until,
            },
            user: r.get(1),
            client: r.get(2),
        })
        .collect())
}

/// Records a per-user cutoff and closes the user's sessions. Returns the cutoff: every
/// token of `user` issued at or before it is refused.
///
/// The user row is locked first, and logins and refreshes hold it shared while they issue,
/// so a login racing this revocation either finishes first (its token's `iat` is then at
/// or before the cutoff, read from the database clock after the lock) or sees the change.
pub async fn revoke_user_in(tx: &impl GenericClient, user: Uuid, now: i64) -> Result<i64, DbError> {
    tx.exec("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
        .await?;
    let before = cutoff_now(tx, now).await?;
    tx.exec(
        "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        &[&user, &clock::at(before)],
    )
    .await?;
    tx.exec(
        "INSERT INTO revocations (kind, subject, before, until) VALUES ('user', $1, $2, $3)
         ON CONFLICT (kind, subject) DO UPDATE
         SET before = GREATEST(revocations.before, EXCLUDED.before),
             until = GREATEST(revocations.until, EXCLUDED.until)",
        &[
            &user.to_string(),
            &before,
            &crate::domain::revocation_until(before),
        ],
    )
    .await?;
    Ok(before)
}

/// A revocation cutoff: `now`, or the database clock if later (after the locks the caller
/// waited for, so it covers every token issued by whoever held them).
async fn cutoff_now(tx: &impl GenericClient, now: i64) -> Result<i64, DbError> {
    Ok(tx
        .q_one(
            "SELECT GREATEST($1, floor(EXTRACT(EPOCH FROM clock_timestamp()))::bigint)",
            &[&now],
        )
        .await?
        .get(0))
}

/// Publishes committed session revocations. A Redis failure is logged and left to the
/// reconciler: PostgreSQL already holds the revocation.
pub async fn publish_sessions(publisher: &Publisher, revoked: &[Revoked]) {
    for r in revoked {
        if let Err(e) = publisher
            .session_revoked(&r.session.to_string(), r.until)
            .await
        {
            metrics::counter!("portcullis_publish_failures_total").increment(1);
            tracing::warn!(error = %e, "session revocation not published; the reconciler will");
        }
    }
}

/// Publishes committed per-user cutoffs (see [`publish_sessions`]).
pub async fn publish_users(publisher: &Publisher, users: &[Uuid], before: i64) {
    for user in users {
        if let Err(e) = publisher.user_revoked(&user.to_string(), before).await {
            metrics::counter!("portcullis_publish_failures_total").increment(1);
            tracing::warn!(error = %e, "user revocation not published; the reconciler will");
        }
    }
}

/// Longest refresh token accepted before any lookup (ours are 43 characters).
pub const MAX_REFRESH_LEN: usize = 256;

/// Whether a new session row went in.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    /// Another session took the device at the same moment (unique `sessions_device`).
    DeviceTaken,
}

/// A new session `sid` of `user` and its first refresh token (stored as its digest). With
/// `dpop`, its refresh tokens are bound to that key: each refresh needs a proof by it.
#[allow(clippy::too_many_arguments)]
pub async fn insert_in(
    tx: &impl GenericClient,
    sid: Uuid,
    user: Uuid,
    app: Uuid,
    device: Option<&str>,
    amr: &[Amr],
    expires: OffsetDateTime,
    refresh_token: &str,
    binding: Option<&Binding>,
    dpop: Option<&Jkt>,
    ctx: &Ctx,
) -> Result<Inserted, DbError> {
    let inserted = tx
        .exec(
            "INSERT INTO sessions (id, user_id, app_id, device_id, user_agent, ip, amr,
                 created_at, last_seen_at, expires_at, client_id, scope, provider_session,
                 dpop_jkt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13)",
            &[
                &sid,
                &user,
                &app,
                &device,
                &ctx.user_agent,
                &ctx.ip.to_string(),
                &amr_names(amr),
                &clock::at(ctx.now),
                &expires,
                &binding.map(|b| b.client),
                &binding.map(|b| b.scope.as_str()),
                &binding.and_then(|b| b.provider_session),
                &dpop.map(|k| k.0.as_slice()),
            ],
        )
        .await;
    match inserted {
        Err(e) if is_unique_violation(&e, Some("sessions_device")) => {
            return Ok(Inserted::DeviceTaken);
        }
        other => other?,
    };
    tx.exec(
        "INSERT INTO refresh_tokens (hash, session_id) VALUES ($1, $2)",
        &[&digest(refresh_token), &sid],
    )
    .await?;
    Ok(Inserted::Yes)
}

/// A session opened for an OAuth client (Portcullis as an OpenID Provider): its tokens
/// carry the client's id and the granted scope, and only that client refreshes them.
#[derive(Clone, Debug)]
pub struct Binding {
    pub client: Uuid,
    /// Space-separated.
    pub scope: String,
    /// The browser's sign-in at the provider the session came from (ends it).
    pub provider_session: Option<Uuid>,
}

/// A refresh token rotated: the session's user (read under a shared lock) and the session.
#[derive(Debug)]
pub struct Rotated {
    pub user: User,
    pub sid: Uuid,
    pub amr: Vec<Amr>,
    /// The granted scope of a client's session.
    pub scope: Option<String>,
}

/// Rotates the unused token `hash` of a live session of `app` to `successor_hash`, in one
/// statement (one round trip, one commit). `holder` takes the user row shared and
/// re-checks it is enabled under that lock (see [`revoke_user_in`]); the UPDATE's
/// `used_at IS NULL` is re-checked under the row lock too, so of two concurrent
/// rotations of one token exactly one gets a row back. A session bound to a DPoP key
/// rotates only with `ctx.dpop` that key (no row back otherwise, and nothing changed).
pub async fn rotate(
    client: &impl GenericClient,
    app: Uuid,
    hash: &[u8],
    successor_hash: &[u8],
    for_client: Option<Uuid>,
    ctx: &Ctx,
) -> Result<Option<Rotated>, DbError> {
    let sql = format!(
        "WITH target AS (
             SELECT rt.hash, s.id AS sid, s.user_id, s.amr, s.scope
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
             WHERE rt.hash = $1 AND rt.used_at IS NULL AND s.app_id = $2
               AND s.revoked_at IS NULL AND s.expires_at > $3
               AND s.client_id IS NOT DISTINCT FROM $7
               AND (s.dpop_jkt IS NULL OR s.dpop_jkt = $8)),
         holder AS (
             SELECT {USER_COLUMNS} FROM users
             WHERE id = (SELECT user_id FROM target) AND active
               AND (expires_at IS NULL OR expires_at > $3)
             FOR SHARE),
         won AS (
             UPDATE refresh_tokens rt SET used_at = $3, successor_hash = $4
             FROM target t
             WHERE rt.hash = t.hash AND rt.used_at IS NULL AND EXISTS (SELECT 1 FROM holder)
             RETURNING t.sid, t.amr, t.scope),
         successor AS (
             INSERT INTO refresh_tokens (hash, session_id) SELECT $4, sid FROM won),
         seen AS (
             UPDATE sessions SET last_seen_at = $3, ip = $5, user_agent = COALESCE($6, user_agent)
             FROM won WHERE sessions.id = won.sid)
         SELECT holder.*, won.sid, won.amr, won.scope FROM won, holder"
    );
    let won = client
        .q_opt(
            &sql,
            &[
                &hash,
                &app,
                &clock::at(ctx.now),
                &successor_hash,
                &ctx.ip.to_string(),
                &ctx.user_agent,
                &for_client,
                &ctx.dpop.as_ref().map(|k| k.0.as_slice()),
            ],
        )
        .await?;
    Ok(won.map(|row| {
        let n = users::USER_COLUMN_COUNT;
        let amr: Vec<String> = row.get(n + 1);
        Rotated {
            user: User::from_row(&row),
            sid: row.get(n),
            amr: amr_parse(&amr),
            scope: row.get(n + 2),
        }
    }))
}

/// A refresh token that did not rotate, as found.
#[derive(Debug)]
pub struct Presented {
    pub used_at: Option<OffsetDateTime>,
    pub successor_hash: Option<Vec<u8>>,
    pub sid: Uuid,
    pub user: Uuid,
    pub amr: Vec<Amr>,
    /// The session is neither revoked nor expired.
    pub live: bool,
    pub scope: Option<String>,
    /// The DPoP key the session's refresh tokens are bound to.
    pub dpop: Option<Jkt>,
}

/// The refresh token `hash` of `app` (and of `for_client`'s sessions, or of none's),
/// whatever its state.
pub async fn presented_in(
    tx: &impl GenericClient,
    app: Uuid,
    hash: &[u8],
    for_client: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<Option<Presented>, DbError> {
    let row = tx
        .q_opt(
            "SELECT rt.used_at, rt.successor_hash, s.id, s.user_id, s.amr,
                    s.revoked_at IS NULL AND s.expires_at > $3 AS live, s.scope, s.dpop_jkt
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
             WHERE rt.hash = $1 AND s.app_id = $2 AND s.client_id IS NOT DISTINCT FROM $4",
            &[&hash, &app, &now, &for_client],
        )
        .await?;
    Ok(row.map(|row| {
        let amr: Vec<String> = row.get(4);
        Presented {
            used_at: row.get(0),
            successor_hash: row.get(1),
            sid: row.get(2),
            user: row.get(3),
            amr: amr_parse(&amr),
            live: row.get(5),
            scope: row.get(6),
            dpop: row
                .get::<_, Option<Vec<u8>>>(7)
                .and_then(|k| k.try_into().ok())
                .map(Jkt),
        }
    }))
}

/// Whether the refresh token `hash` exists and is unused (a session's live token).
pub async fn token_unused_in(tx: &impl GenericClient, hash: &[u8]) -> Result<bool, DbError> {
    Ok(tx
        .q_opt(
            "SELECT 1 FROM refresh_tokens WHERE hash = $1 AND used_at IS NULL",
            &[&hash],
        )
        .await?
        .is_some())
}

/// The live session a refresh token belongs to, for logout.
pub async fn session_of_refresh(
    client: &impl GenericClient,
    app: Uuid,
    presented: &str,
) -> Result<Option<(Uuid, Uuid)>, DbError> {
    if presented.len() > MAX_REFRESH_LEN {
        return Ok(None);
    }
    let row = client
        .q_opt(
            "SELECT s.id, s.user_id FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
             WHERE rt.hash = $1 AND s.app_id = $2 AND s.revoked_at IS NULL",
            &[&digest(presented), &app],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The user of session `id`, if it exists.
pub async fn user_of(client: &impl GenericClient, id: Uuid) -> Result<Option<Uuid>, DbError> {
    Ok(client
        .q_opt("SELECT user_id FROM sessions WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// When session `id` began, if it still exists.
pub async fn started_at(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<OffsetDateTime>, DbError> {
    Ok(client
        .q_opt("SELECT created_at FROM sessions WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

pub async fn list(
    client: &impl GenericClient,
    user: Uuid,
    current: Uuid,
    now: i64,
) -> Result<Vec<SessionView>, DbError> {
    let rows = client
        .q(
            "SELECT id, device_id, user_agent, ip, created_at, last_seen_at FROM sessions
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
             ORDER BY created_at DESC",
            &[&user, &clock::at(now)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            SessionView {
                id,
                device_id: r.get(1),
                user_agent: r.get(2),
                ip: r.get(3),
                created_at: r.get(4),
                last_seen_at: r.get(5),
                current: id == current,
            }
        })
        .collect())
}

/// Whose users [`revoke_app_users_in`] revokes.
#[derive(Clone, Copy, Debug)]
pub enum AppsOf {
    Owner(Uuid),
    App(Uuid),
}

/// Per-user cutoffs for every user of an application (or of all of an owner's), before the
/// cascade deletes their rows: their tokens stay refused until they expire.
pub async fn revoke_app_users_in(
    tx: &impl GenericClient,
    which: AppsOf,
    now: i64,
) -> Result<(Vec<Uuid>, i64), DbError> {
    let (condition, id) = match which {
        AppsOf::Owner(id) => ("a.owner_id = $1", id),
        AppsOf::App(id) => ("a.id = $1", id),
    };
    let sql = format!(
        "INSERT INTO revocations (kind, subject, before, until)
         SELECT 'user', u.id::text, $2, $3 FROM users u JOIN apps a ON a.id = u.app_id
         WHERE {condition}
         ON CONFLICT (kind, subject) DO UPDATE
         SET before = GREATEST(revocations.before, EXCLUDED.before),
             until = GREATEST(revocations.until, EXCLUDED.until)
         RETURNING subject"
    );
    // The cascade that follows deletes the user rows, waiting for any login holding one;
    // the cutoff comes from the database clock so those logins' tokens fall under it.
    let before = cutoff_now(tx, now).await?;
    let rows = tx
        .q(
            &sql,
            &[&id, &before, &crate::domain::revocation_until(before)],
        )
        .await?;
    let users = rows
        .iter()
        .filter_map(|r| r.get::<_, String>(0).parse().ok())
        .collect();
    Ok((users, before))
}

/// Deletes sessions (and, by cascade, their refresh tokens) that ended more than a day ago:
/// expired, or revoked. Their revocations live on in `revocations` until tokens expire.
pub async fn prune(
    client: &impl GenericClient,
    now: i64,
) -> Result<u64, crate::infra::store::DbError> {
    let horizon = clock::at(now - 86_400);
    Ok(client
        .exec(
            "DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1",
            &[&horizon],
        )
        .await?)
}
