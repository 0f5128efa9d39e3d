//! Identities at social-login providers (`oauth_identities`: one per provider per user,
//! keyed by the provider's issuer and subject) and the sign-in flows under way at them
//! (`oauth_flows`: state, browser binding, PKCE verifier, nonce, redirect; then the one-time
//! code handed back to the application).

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::infra::clock;
use crate::infra::crypto::digest;
use crate::infra::store::{DbError, Prepared as _};

/// What a provider says about the person who signed in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Asserted {
    /// The `iss` of the ID token (Microsoft: the tenant's), or GitHub's API base.
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// A linked identity as `/me` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityView {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// The user an identity belongs to, its row locked.
pub async fn owner_in(
    tx: &impl GenericClient,
    app: Uuid,
    provider: &str,
    asserted: &Asserted,
) -> Result<Option<Uuid>, DbError> {
    Ok(tx
        .q_opt(
            "SELECT user_id FROM oauth_identities
             WHERE app_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4 FOR UPDATE",
            &[&app, &provider, &asserted.issuer, &asserted.subject],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Records what the provider says now about an identity used to sign in.
pub async fn touch_in(
    tx: &impl GenericClient,
    app: Uuid,
    provider: &str,
    asserted: &Asserted,
    now: i64,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE oauth_identities SET email = $5, email_verified = $6, last_used_at = $7
         WHERE app_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4",
        &[
            &app,
            &provider,
            &asserted.issuer,
            &asserted.subject,
            &asserted.email,
            &asserted.email_verified,
            &clock::at(now),
        ],
    )
    .await?;
    Ok(())
}

/// Links the identity to `user`; `false` when it is linked already, or the user has
/// another at this provider.
pub async fn link_in(
    tx: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    provider: &str,
    asserted: &Asserted,
    now: i64,
) -> Result<bool, DbError> {
    let inserted = tx
        .exec(
            "INSERT INTO oauth_identities (id, app_id, user_id, provider, issuer, subject,
                 email, email_verified, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT DO NOTHING",
            &[
                &Uuid::now_v7(),
                &app,
                &user,
                &provider,
                &asserted.issuer,
                &asserted.subject,
                &asserted.email,
                &asserted.email_verified,
                &clock::at(now),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The user's identities, oldest first.
pub async fn of_user(
    client: &impl GenericClient,
    user: Uuid,
) -> Result<Vec<IdentityView>, DbError> {
    let rows = client
        .q(
            "SELECT provider, subject, email, email_verified, created_at, last_used_at
             FROM oauth_identities WHERE user_id = $1 ORDER BY created_at",
            &[&user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| IdentityView {
            provider: r.get(0),
            subject: r.get(1),
            email: r.get(2),
            email_verified: r.get(3),
            linked_at: r.get(4),
            last_used_at: r.get(5),
        })
        .collect())
}

/// How many of the user's identities are at `provider`, and how many elsewhere.
pub async fn count_in(
    tx: &impl GenericClient,
    user: Uuid,
    provider: &str,
) -> Result<(i64, i64), DbError> {
    let row = tx
        .q_one(
            "SELECT count(*) FILTER (WHERE provider = $2), count(*) FILTER (WHERE provider <> $2)
             FROM oauth_identities WHERE user_id = $1",
            &[&user, &provider],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Unlinks the user's identity at `provider`.
pub async fn unlink_in(tx: &impl GenericClient, user: Uuid, provider: &str) -> Result<(), DbError> {
    tx.exec(
        "DELETE FROM oauth_identities WHERE user_id = $1 AND provider = $2",
        &[&user, &provider],
    )
    .await?;
    Ok(())
}

/// Unlinks every identity of the user (an account claimed by email).
pub async fn unlink_all_in(tx: &impl GenericClient, user: Uuid) -> Result<(), DbError> {
    tx.exec("DELETE FROM oauth_identities WHERE user_id = $1", &[&user])
        .await?;
    Ok(())
}

/// A sign-in (or link) flow to record when it starts.
#[derive(Debug)]
pub struct NewFlow<'a> {
    pub state: &'a str,
    pub app: Uuid,
    pub provider: &'a str,
    pub binding: &'a str,
    pub verifier: &'a str,
    pub nonce: &'a str,
    pub redirect_uri: &'a str,
    pub client_state: Option<&'a str>,
    pub client_challenge: Option<&'a str>,
    pub link_user: Option<Uuid>,
    pub expires: i64,
}

pub async fn start_flow(
    client: &impl GenericClient,
    f: &NewFlow<'_>,
    now: i64,
) -> Result<(), DbError> {
    client
        .exec(
            "INSERT INTO oauth_flows (state_hash, app_id, provider, browser_hash, code_verifier,
                 nonce, redirect_uri, client_state, link_user_id, created_at, expires_at,
                 client_challenge)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &digest(f.state),
                &f.app,
                &f.provider,
                &digest(f.binding),
                &f.verifier,
                &f.nonce,
                &f.redirect_uri,
                &f.client_state,
                &f.link_user,
                &clock::at(now),
                &clock::at(f.expires),
                &f.client_challenge,
            ],
        )
        .await?;
    Ok(())
}

/// A flow found by its state, already marked used.
#[derive(Debug)]
pub struct Flow {
    pub state_hash: Vec<u8>,
    pub verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub client_state: Option<String>,
    pub link_user: Option<Uuid>,
}

/// Takes the flow named by `state` if it was started by this browser (`binding`): used at
/// once (exactly one caller wins), so neither a replayed callback nor a second tab can
/// finish it again.
pub async fn take_flow(
    client: &impl GenericClient,
    app: Uuid,
    provider: &str,
    state: &str,
    binding: &str,
    now: i64,
) -> Result<Option<Flow>, DbError> {
    let row = client
        .q_opt(
            "UPDATE oauth_flows SET used_at = $5
             WHERE state_hash = $1 AND app_id = $2 AND provider = $3 AND browser_hash = $4
               AND used_at IS NULL AND expires_at > $5
             RETURNING code_verifier, nonce, redirect_uri, client_state, link_user_id",
            &[
                &digest(state),
                &app,
                &provider,
                &digest(binding),
                &clock::at(now),
            ],
        )
        .await?;
    Ok(row.map(|row| Flow {
        state_hash: digest(state),
        verifier: row.get(0),
        nonce: row.get(1),
        redirect_uri: row.get(2),
        client_state: row.get(3),
        link_user: row.get(4),
    }))
}

/// Records the one-time code the flow hands back: for `user`, until `expires`; with the
/// asserted identity when it waits for a link confirmation.
pub async fn hand_back_in(
    tx: &impl GenericClient,
    flow: &Flow,
    code: &str,
    user: Uuid,
    expires: i64,
    asserted: Option<&Value>,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE oauth_flows SET code_hash = $2, code_user_id = $3, code_expires_at = $4,
             asserted = COALESCE($5, asserted)
         WHERE state_hash = $1",
        &[
            &flow.state_hash,
            &digest(code),
            &user,
            &clock::at(expires),
            &asserted,
        ],
    )
    .await?;
    Ok(())
}

/// Uses up a sign-in's one-time code (not a link's): its user, if the code is live and,
/// when the application sent a challenge, `challenge` is it (checked in the same
/// statement, so a wrong verifier uses nothing up).
pub async fn redeem_code(
    client: &impl GenericClient,
    app: Uuid,
    code: &str,
    challenge: Option<&str>,
    now: i64,
) -> Result<Option<Uuid>, DbError> {
    Ok(client
        .q_opt(
            "UPDATE oauth_flows SET code_used_at = $3
             WHERE code_hash = $1 AND app_id = $2 AND code_used_at IS NULL
               AND code_expires_at > $3 AND link_user_id IS NULL
               AND (client_challenge IS NULL OR client_challenge = $4)
             RETURNING code_user_id",
            &[&digest(code), &app, &clock::at(now), &challenge],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Uses up a link code of `user` at `provider`: the asserted identity it carries.
pub async fn redeem_link_code_in(
    tx: &impl GenericClient,
    app: Uuid,
    provider: &str,
    user: Uuid,
    code: &str,
    now: i64,
) -> Result<Option<Value>, DbError> {
    Ok(tx
        .q_opt(
            "UPDATE oauth_flows SET code_used_at = $4
             WHERE code_hash = $1 AND app_id = $2 AND provider = $3 AND link_user_id = $5
               AND code_user_id = $5 AND code_used_at IS NULL AND code_expires_at > $4
             RETURNING asserted",
            &[&digest(code), &app, &provider, &clock::at(now), &user],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Drops finished and expired flows (maintenance).
pub async fn prune(client: &impl GenericClient, now: i64) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM oauth_flows WHERE expires_at < $1
               AND (code_expires_at IS NULL OR code_expires_at < $1)",
            &[&clock::at(now)],
        )
        .await?)
}
