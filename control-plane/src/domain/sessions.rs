//! Login sessions and their refresh tokens (API.md §2): starting a session, rotating its
//! refresh token with reuse detection and the grace window, and revoking sessions and users
//! (PostgreSQL first, then the Redis layout the verifiers read).

use deadpool_postgres::GenericClient;
use portcullis_common::ErrorCode;
use portcullis_common::token::Amr;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::tokens::{self, Grant, Tokens};
use crate::domain::users::{self, NewUser, USER_COLUMNS, User};
use crate::error::ApiError;
use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::Prepared as _;
use crate::infra::store::is_unique_violation;
use crate::state::AppState;

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

fn amr_names(amr: &[Amr]) -> Vec<String> {
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
) -> Result<Vec<Revoked>, ApiError> {
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

/// Records a per-user cutoff and closes the user's sessions. Returns the cutoff: every
/// token of `user` issued at or before it is refused.
///
/// The user row is locked first, and logins and refreshes hold it shared while they issue,
/// so a login racing this revocation either finishes first (its token's `iat` is then at
/// or before the cutoff, read from the database clock after the lock) or sees the change.
pub async fn revoke_user_in(
    tx: &impl GenericClient,
    user: Uuid,
    now: i64,
) -> Result<i64, ApiError> {
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
async fn cutoff_now(tx: &impl GenericClient, now: i64) -> Result<i64, ApiError> {
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
pub async fn publish_sessions(state: &AppState, revoked: &[Revoked]) {
    for r in revoked {
        if let Err(e) = state
            .publisher
            .session_revoked(&r.session.to_string(), r.until)
            .await
        {
            metrics::counter!("portcullis_publish_failures_total").increment(1);
            tracing::warn!(error = %e, "session revocation not published; the reconciler will");
        }
    }
}

/// Publishes committed per-user cutoffs (see [`publish_sessions`]).
pub async fn publish_users(state: &AppState, users: &[Uuid], before: i64) {
    for user in users {
        if let Err(e) = state
            .publisher
            .user_revoked(&user.to_string(), before)
            .await
        {
            metrics::counter!("portcullis_publish_failures_total").increment(1);
            tracing::warn!(error = %e, "user revocation not published; the reconciler will");
        }
    }
}

/// Whose session [`start`] opens.
#[derive(Debug)]
pub enum Subject<'a> {
    /// A user being created: inserted in the same transaction as the session (and the
    /// mails of its registration), so a failure leaves none of them.
    New(&'a NewUser, &'a [crate::domain::mailings::Mailing]),
    /// A signed-in user; refused with `403 user_disabled` if disabled meanwhile.
    Existing(&'a User),
}

/// Starts a session and returns the user and its first tokens. A session already bound to
/// the same device is revoked in the same transaction.
pub async fn start(
    state: &AppState,
    app: &App,
    subject: Subject<'_>,
    device: Option<&str>,
    ctx: &Ctx,
    amr: Vec<Amr>,
) -> Result<(User, Tokens), ApiError> {
    let refresh = random_token(32);
    let sid = Uuid::now_v7();
    let expires = clock::at(ctx.now + app.settings.refresh_token_ttl);
    let mut client = state.pool.get().await?;
    let mut attempt = 0;
    let mut mailed = false;
    let (user, replaced) = loop {
        attempt += 1;
        let tx = client.transaction().await?;
        let user = match subject {
            Subject::New(new, mailings) => {
                let user = users::insert(&tx, app.id, new).await?;
                for mailing in mailings {
                    crate::domain::mailings::mail_in(&tx, &state.links(), app, &user, mailing, ctx)
                        .await?;
                    mailed = true;
                }
                user
            }
            Subject::Existing(user) => {
                let user = lock_user(&tx, user.id).await?;
                if user.disabled(clock::at(ctx.now)) {
                    return Err(disabled());
                }
                user
            }
        };
        let replaced = match device {
            Some(d) => {
                let which = Which::Device {
                    user: user.id,
                    device: d.to_owned(),
                };
                revoke_in(&tx, &which, ctx.now).await?
            }
            None => Vec::new(),
        };
        let inserted = tx
            .exec(
                "INSERT INTO sessions (id, user_id, app_id, device_id, user_agent, ip, amr,
                     created_at, last_seen_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
                &[
                    &sid,
                    &user.id,
                    &app.id,
                    &device,
                    &ctx.user_agent,
                    &ctx.ip.to_string(),
                    &amr_names(&amr),
                    &clock::at(ctx.now),
                    &expires,
                ],
            )
            .await;
        match inserted {
            // Two logins on one device at once: the loser retries and replaces the winner.
            Err(e) if attempt < 3 && is_unique_violation(&e, Some("sessions_device")) => continue,
            other => other?,
        };
        tx.exec(
            "INSERT INTO refresh_tokens (hash, session_id) VALUES ($1, $2)",
            &[&digest(&refresh), &sid],
        )
        .await?;
        let event = |event| Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event,
            details: serde_json::json!({ "session_id": sid, "amr": amr_names(&amr) }),
            ctx,
        };
        if matches!(subject, Subject::New(..)) {
            audit::record(&tx, event("user.created")).await?;
        }
        audit::record(&tx, event("login.succeeded")).await?;
        tx.commit().await?;
        break (user, replaced);
    };
    drop(client);
    if mailed {
        state.outbox.wake();
    }
    publish_sessions(state, &replaced).await;
    let tokens = issue(state, app, &user, sid, refresh, amr, ctx.now).await?;
    Ok((user, tokens))
}

fn disabled() -> ApiError {
    ApiError::new(ErrorCode::UserDisabled, "the user is disabled or expired")
}

/// The user row, locked shared until the transaction ends: a concurrent revocation of the
/// user waits for this session to be recorded (see [`revoke_user_in`]).
async fn lock_user(tx: &impl GenericClient, id: Uuid) -> Result<User, ApiError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR SHARE");
    let row = tx
        .q_opt(&sql, &[&id])
        .await?
        .ok_or_else(ApiError::invalid_credentials)?;
    Ok(User::from_row(&row))
}

async fn issue(
    state: &AppState,
    app: &App,
    user: &User,
    sid: Uuid,
    refresh_token: String,
    amr: Vec<Amr>,
    now: i64,
) -> Result<Tokens, ApiError> {
    let ttl = app.settings.access_token_ttl;
    let app_id = app.id.to_string();
    let (access_token, claims) = tokens::mint(
        state,
        Grant {
            audience: &app_id,
            sub: user.id,
            sid,
            roles: user.roles.clone(),
            scope: user.scope.clone(),
            amr,
            guest: user.guest,
            ttl,
        },
        user.issued_at(now),
    )
    .await?;
    Ok(Tokens {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: ttl,
        expires_at: clock::at(claims.exp),
        session_id: sid,
        user_id: user.id,
        roles: claims.roles,
    })
}

/// Longest refresh token accepted before any lookup (ours are 43 characters).
const MAX_REFRESH_LEN: usize = 256;

/// Rotates `presented`: exactly one concurrent caller wins (an atomic
/// `UPDATE ... WHERE used_at IS NULL`). A token presented again within the application's
/// grace window gets the same successor; any other reuse revokes the whole session.
pub async fn refresh(
    state: &AppState,
    app: &App,
    presented: &str,
    ctx: &Ctx,
) -> Result<Tokens, ApiError> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidRefreshToken,
            "the refresh token is invalid or expired",
        )
    };
    if presented.is_empty() || presented.len() > MAX_REFRESH_LEN {
        return Err(invalid());
    }
    let hash = digest(presented);
    // The successor is a function of the presented token, so the winning UPDATE records
    // it at once and a retry within the grace window can recompute it.
    let successor = state.secrets.successor(presented);
    let successor_hash = digest(&successor);
    let now = clock::at(ctx.now);
    let mut client = state.pool.get().await?;
    // The common case in one statement (one round trip, one commit). `holder` takes the
    // user row shared and re-checks it is enabled under that lock (see `revoke_user_in`);
    // the UPDATE's `used_at IS NULL` is re-checked under the row lock too, so of two
    // concurrent refreshes with one token exactly one gets a row back.
    let sql = format!(
        "WITH target AS (
             SELECT rt.hash, s.id AS sid, s.user_id, s.amr
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
             WHERE rt.hash = $1 AND rt.used_at IS NULL AND s.app_id = $2
               AND s.revoked_at IS NULL AND s.expires_at > $3),
         holder AS (
             SELECT {USER_COLUMNS} FROM users
             WHERE id = (SELECT user_id FROM target) AND active
               AND (expires_at IS NULL OR expires_at > $3)
             FOR SHARE),
         won AS (
             UPDATE refresh_tokens rt SET used_at = $3, successor_hash = $4
             FROM target t
             WHERE rt.hash = t.hash AND rt.used_at IS NULL AND EXISTS (SELECT 1 FROM holder)
             RETURNING t.sid, t.amr),
         successor AS (
             INSERT INTO refresh_tokens (hash, session_id) SELECT $4, sid FROM won),
         seen AS (
             UPDATE sessions SET last_seen_at = $3, ip = $5, user_agent = COALESCE($6, user_agent)
             FROM won WHERE sessions.id = won.sid)
         SELECT holder.*, won.sid, won.amr FROM won, holder"
    );
    let won = client
        .q_opt(
            &sql,
            &[
                &hash,
                &app.id,
                &now,
                &successor_hash,
                &ctx.ip.to_string(),
                &ctx.user_agent,
            ],
        )
        .await?;
    if let Some(row) = won {
        let user = User::from_row(&row);
        let n = users::USER_COLUMN_COUNT;
        let (sid, amr): (Uuid, Vec<String>) = (row.get(n), row.get(n + 1));
        drop(client);
        metrics::counter!("portcullis_refresh_total", "outcome" => "rotated").increment(1);
        return issue(state, app, &user, sid, successor, amr_parse(&amr), ctx.now).await;
    }

    let tx = client.transaction().await?;
    // Not rotatable: unknown, expired, revoked, or already used.
    let row = tx
        .q_opt(
            "SELECT rt.used_at, rt.successor_hash, s.id, s.user_id, s.amr,
                    s.revoked_at IS NULL AND s.expires_at > $3 AS live
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
             WHERE rt.hash = $1 AND s.app_id = $2",
            &[&hash, &app.id, &now],
        )
        .await?;
    let Some(row) = row else {
        metrics::counter!("portcullis_refresh_total", "outcome" => "invalid").increment(1);
        return Err(invalid());
    };
    let used_at: Option<OffsetDateTime> = row.get(0);
    let successor_hash: Option<Vec<u8>> = row.get(1);
    let (sid, user_id, amr): (Uuid, Uuid, Vec<String>) = (row.get(2), row.get(3), row.get(4));
    let live: bool = row.get(5);
    if !live {
        metrics::counter!("portcullis_refresh_total", "outcome" => "invalid").increment(1);
        return Err(invalid());
    }
    if used_at.is_none() {
        // Unused, on a live session, yet not rotated: the user is disabled or expired
        // (or the token was rotated a moment ago by a concurrent request, and then it is
        // used by now).
        let user = lock_user(&tx, user_id).await?;
        if user.disabled(now) {
            return Err(disabled());
        }
        return Err(invalid());
    }
    let grace = app.settings.refresh_token_reuse_grace_secs;
    let within_grace =
        grace > 0 && used_at.is_some_and(|used| (now - used).whole_seconds() <= grace);
    if within_grace {
        // The successor must still be the session's live token: a session never has two.
        let successor_live = tx
            .q_opt(
                "SELECT 1 FROM refresh_tokens WHERE hash = $1 AND used_at IS NULL",
                &[&successor_hash],
            )
            .await?
            .is_some();
        if successor_live {
            let user = lock_user(&tx, user_id).await?;
            tx.commit().await?;
            drop(client);
            if user.disabled(now) {
                return Err(disabled());
            }
            metrics::counter!("portcullis_refresh_total", "outcome" => "grace").increment(1);
            return issue(state, app, &user, sid, successor, amr_parse(&amr), ctx.now).await;
        }
    }
    let which = Which::One {
        user: user_id,
        session: sid,
    };
    let revoked = revoke_in(&tx, &which, ctx.now).await?;
    audit::record(
        &tx,
        Event {
            app: Some(app.id),
            user: Some(user_id),
            actor: Actor::Anonymous,
            event: "refresh_token.reused",
            details: serde_json::json!({ "session_id": sid }),
            ctx,
        },
    )
    .await?;
    tx.commit().await?;
    drop(client);
    metrics::counter!("portcullis_refresh_total", "outcome" => "reused").increment(1);
    tracing::warn!(session = %sid, "refresh token reused; session revoked");
    publish_sessions(state, &revoked).await;
    Err(ApiError::new(
        ErrorCode::RefreshTokenReused,
        "the refresh token was already used; the session is revoked",
    ))
}

/// The live session a refresh token belongs to, for logout.
pub async fn session_of_refresh(
    client: &impl GenericClient,
    app: Uuid,
    presented: &str,
) -> Result<Option<(Uuid, Uuid)>, ApiError> {
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

/// Revokes sessions and publishes them: the common end of logout and session deletion,
/// recorded as `session.revoked` with `reason`.
pub async fn revoke(
    state: &AppState,
    app: Uuid,
    which: &Which,
    reason: &'static str,
    ctx: &Ctx,
) -> Result<Vec<Revoked>, ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let revoked = revoke_in(&tx, which, ctx.now).await?;
    if !revoked.is_empty() {
        let user = match which {
            Which::One { user, .. }
            | Which::Device { user, .. }
            | Which::AllOfUser { user, .. } => *user,
        };
        let sessions: Vec<Uuid> = revoked.iter().map(|r| r.session).collect();
        audit::record(
            &tx,
            Event {
                app: Some(app),
                user: Some(user),
                actor: Actor::User,
                event: "session.revoked",
                details: serde_json::json!({ "reason": reason, "sessions": sessions }),
                ctx,
            },
        )
        .await?;
    }
    tx.commit().await?;
    drop(client);
    publish_sessions(state, &revoked).await;
    Ok(revoked)
}

pub async fn list(
    client: &impl GenericClient,
    user: Uuid,
    current: Uuid,
    now: i64,
) -> Result<Vec<SessionView>, ApiError> {
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
) -> Result<(Vec<Uuid>, i64), ApiError> {
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
