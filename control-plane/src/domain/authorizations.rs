//! What the OpenID Provider remembers between its endpoints: a browser's sign-in at its
//! pages (`provider_sessions`, the SSO cookie's row), the users' consents to clients
//! (`oauth_consents`), and authorization codes (`oauth_codes`: single use, 60 seconds).
//! Secrets (the cookie's value, a code) are stored as their SHA-256 only.

use deadpool_postgres::GenericClient;
use portcullis_common::token::Amr;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::Jkt;
use crate::domain::sessions::amr_names;
use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::{DbError, Prepared as _};

/// How long an authorization code may wait for its exchange (RFC 6749 §4.1.2: short).
pub const CODE_SECS: i64 = 60;
/// How long a browser stays signed in at the provider's pages.
pub const BROWSER_SESSION_SECS: i64 = 12 * 3600;

/// A browser signed in at the provider.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    pub id: Uuid,
    pub user: Uuid,
    pub amr: Vec<Amr>,
    pub auth_time: OffsetDateTime,
}

fn amr_of(names: &[String]) -> Vec<Amr> {
    names
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
        .collect()
}

/// Opens a browser session for `user`; returns it and the cookie's secret.
pub async fn open_browser_session(
    client: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    amr: &[Amr],
    now: i64,
) -> Result<(BrowserSession, String), DbError> {
    let secret = random_token(32);
    let id = Uuid::now_v7();
    client
        .exec(
            "INSERT INTO provider_sessions (id, hash, app_id, user_id, amr, auth_time, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &digest(&secret),
                &app,
                &user,
                &amr_names(amr),
                &clock::at(now),
                &clock::at(now + BROWSER_SESSION_SECS),
            ],
        )
        .await?;
    let session = BrowserSession {
        id,
        user,
        amr: amr.to_vec(),
        auth_time: clock::at(now),
    };
    Ok((session, secret))
}

/// The live browser session whose cookie holds `secret`, for `app`, of an enabled user.
pub async fn browser_session(
    client: &impl GenericClient,
    app: Uuid,
    secret: &str,
    now: i64,
) -> Result<Option<BrowserSession>, DbError> {
    if secret.is_empty() || secret.len() > 256 {
        return Ok(None);
    }
    let row = client
        .q_opt(
            "SELECT p.id, p.user_id, p.amr, p.auth_time FROM provider_sessions p
             JOIN users u ON u.id = p.user_id
             WHERE p.hash = $1 AND p.app_id = $2 AND p.ended_at IS NULL AND p.expires_at > $3
               AND u.active AND (u.expires_at IS NULL OR u.expires_at > $3)",
            &[&digest(secret), &app, &clock::at(now)],
        )
        .await?;
    Ok(row.map(|r| {
        let amr: Vec<String> = r.get(2);
        BrowserSession {
            id: r.get(0),
            user: r.get(1),
            amr: amr_of(&amr),
            auth_time: r.get(3),
        }
    }))
}

/// Ends a browser session (RP-initiated logout); false if it had ended.
pub async fn end_browser_session_in(
    tx: &impl GenericClient,
    id: Uuid,
    now: i64,
) -> Result<bool, DbError> {
    Ok(tx
        .exec(
            "UPDATE provider_sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL",
            &[&id, &clock::at(now)],
        )
        .await?
        == 1)
}

/// The scopes `user` consented to for `client`.
pub async fn consented(
    client: &impl GenericClient,
    user: Uuid,
    oauth_client: Uuid,
) -> Result<Vec<String>, DbError> {
    Ok(client
        .q_opt(
            "SELECT scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2",
            &[&user, &oauth_client],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or_default())
}

/// Records consent to `scopes` (added to what was consented before).
pub async fn consent(
    client: &impl GenericClient,
    user: Uuid,
    oauth_client: Uuid,
    scopes: &[String],
) -> Result<(), DbError> {
    client
        .exec(
            "INSERT INTO oauth_consents (user_id, client_id, scopes) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, client_id) DO UPDATE SET granted_at = now(),
                 scopes = ARRAY(SELECT DISTINCT unnest(oauth_consents.scopes || EXCLUDED.scopes))",
            &[&user, &oauth_client, &scopes],
        )
        .await?;
    Ok(())
}

/// An authorization code's contents.
#[derive(Debug, Clone)]
pub struct Code {
    pub client: Uuid,
    pub user: Uuid,
    pub provider_session: Option<Uuid>,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub amr: Vec<Amr>,
    pub auth_time: OffsetDateTime,
    /// RFC 9449 §10: only a DPoP proof by this key redeems the code.
    pub dpop_jkt: Option<Jkt>,
}

/// Stores a code; returns it (the only time it exists in clear).
pub async fn issue_code(
    client: &impl GenericClient,
    code: &Code,
    now: i64,
) -> Result<String, DbError> {
    let secret = random_token(32);
    client
        .exec(
            "INSERT INTO oauth_codes (hash, client_id, user_id, provider_session, redirect_uri,
                 scope, nonce, code_challenge, amr, auth_time, expires_at, dpop_jkt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &digest(&secret),
                &code.client,
                &code.user,
                &code.provider_session,
                &code.redirect_uri,
                &code.scope,
                &code.nonce,
                &code.code_challenge,
                &amr_names(&code.amr),
                &code.auth_time,
                &clock::at(now + CODE_SECS),
                &code.dpop_jkt.as_ref().map(|k| k.0.as_slice()),
            ],
        )
        .await?;
    Ok(secret)
}

/// A code presented at the token endpoint.
#[derive(Debug)]
pub enum Presented {
    /// First use: its contents (now used up).
    Fresh(Box<Code>),
    /// Used before: the session its first use opened, to revoke (RFC 6749 §4.1.2).
    Replayed(Option<Uuid>),
    /// Unknown, expired, or another client's.
    Unknown,
}

/// Uses the code `secret` of `oauth_client` up; in the caller's transaction, which then
/// records the session it opens ([`opened_in`]).
pub async fn use_code_in(
    tx: &impl GenericClient,
    oauth_client: Uuid,
    secret: &str,
    now: i64,
) -> Result<Presented, DbError> {
    if secret.is_empty() || secret.len() > 256 {
        return Ok(Presented::Unknown);
    }
    let hash = digest(secret);
    let Some(row) = tx
        .q_opt(
            "SELECT client_id, user_id, provider_session, redirect_uri, scope, nonce,
                    code_challenge, amr, auth_time, expires_at, used_at, session_id, dpop_jkt
             FROM oauth_codes WHERE hash = $1 FOR UPDATE",
            &[&hash],
        )
        .await?
    else {
        return Ok(Presented::Unknown);
    };
    let client_id: Uuid = row.get(0);
    let used_at: Option<OffsetDateTime> = row.get(10);
    if client_id != oauth_client {
        return Ok(Presented::Unknown);
    }
    if used_at.is_some() {
        return Ok(Presented::Replayed(row.get(11)));
    }
    if row.get::<_, OffsetDateTime>(9) <= clock::at(now) {
        return Ok(Presented::Unknown);
    }
    tx.exec(
        "UPDATE oauth_codes SET used_at = $2 WHERE hash = $1",
        &[&hash, &clock::at(now)],
    )
    .await?;
    let amr: Vec<String> = row.get(7);
    Ok(Presented::Fresh(Box::new(Code {
        client: client_id,
        user: row.get(1),
        provider_session: row.get(2),
        redirect_uri: row.get(3),
        scope: row.get(4),
        nonce: row.get(5),
        code_challenge: row.get(6),
        amr: amr_of(&amr),
        auth_time: row.get(8),
        dpop_jkt: row
            .get::<_, Option<Vec<u8>>>(12)
            .and_then(|k| k.try_into().ok())
            .map(Jkt),
    })))
}

/// Records the session a code's first use opened.
pub async fn opened_in(
    client: &impl GenericClient,
    secret: &str,
    session: Uuid,
) -> Result<(), DbError> {
    client
        .exec(
            "UPDATE oauth_codes SET session_id = $2 WHERE hash = $1",
            &[&digest(secret), &session],
        )
        .await?;
    Ok(())
}

/// Deletes codes a day past their expiry, and browser sessions a day past theirs.
pub async fn prune(client: &impl GenericClient) -> Result<(), DbError> {
    client
        .exec(
            "DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?;
    client
        .exec(
            "DELETE FROM provider_sessions WHERE expires_at < now() - interval '1 day'",
            &[],
        )
        .await?;
    Ok(())
}
