//! Passkeys (WebAuthn credentials, `passkeys`) of users, and the ceremonies under way
//! (`passkey_ceremonies`): what the relying-party library must find again when the browser
//! answers, kept here so any replica can finish what another began.
//!
//! A ceremony is named by 256 random bits handed to the client and stored as their SHA-256;
//! finishing one deletes it (`DELETE … RETURNING`: exactly one caller wins), and it lives
//! five minutes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::{Credential, Passkey};

use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::{DbError, Prepared as _};

/// How long a ceremony may take (WebAuthn's recommended timeout is five minutes).
pub const CEREMONY_SECS: i64 = 5 * 60;

/// A stored passkey.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: Uuid,
    pub user: Uuid,
    pub name: String,
    pub passkey: Passkey,
    pub aaguid: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

/// A passkey as its owner (or an administrator) sees it: never the public key's use.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PasskeyView {
    pub id: Uuid,
    pub name: String,
    /// The credential id, base64url.
    pub credential_id: String,
    /// The authenticator model (AAGUID) it declared; absent when it declared none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aaguid: Option<Uuid>,
    /// May be synced to other devices (a software-held key; `amr` says `swk`).
    pub backup_eligible: bool,
    /// Was backed up or synced when last used.
    pub backed_up: bool,
    /// How the browser can reach the authenticator (`internal`, `usb`, `hybrid`, ...).
    pub transports: Vec<String>,
    /// The authenticator's signature counter when last used (0: it keeps none).
    pub sign_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

impl Stored {
    pub fn credential(&self) -> Credential {
        self.passkey.clone().into()
    }

    /// Whether the key may live outside one piece of hardware (RFC 8176 `swk` rather
    /// than `hwk`).
    pub fn backup_eligible(&self) -> bool {
        self.credential().backup_eligible
    }

    pub fn view(&self) -> PasskeyView {
        let c = self.credential();
        PasskeyView {
            id: self.id,
            name: self.name.clone(),
            credential_id: URL_SAFE_NO_PAD.encode::<&[u8]>(c.cred_id.as_ref()),
            aaguid: self.aaguid,
            backup_eligible: c.backup_eligible,
            backed_up: c.backup_state,
            transports: c
                .transports
                .unwrap_or_default()
                .iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            sign_count: c.counter,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
        }
    }
}

const COLUMNS: &str = "id, user_id, name, credential, aaguid, created_at, last_used_at";

fn stored(r: &Row) -> Result<Stored, DbError> {
    let credential: Value = r.get(3);
    let passkey = serde_json::from_value(credential)
        .map_err(|e| DbError::Failed(format!("a stored passkey does not read: {e}")))?;
    Ok(Stored {
        id: r.get(0),
        user: r.get(1),
        name: r.get(2),
        passkey,
        aaguid: r.get(4),
        created_at: r.get(5),
        last_used_at: r.get(6),
    })
}

fn json(passkey: &Passkey) -> Result<Value, DbError> {
    serde_json::to_value(passkey).map_err(|e| DbError::Failed(format!("a passkey: {e}")))
}

/// The user's WebAuthn handle, made on first use: random, so an authenticator never
/// holds the user id or the email.
pub async fn handle_in(tx: &impl GenericClient, user: Uuid) -> Result<Uuid, DbError> {
    Ok(tx
        .q_one(
            "UPDATE users SET passkey_handle = COALESCE(passkey_handle, $2) WHERE id = $1
             RETURNING passkey_handle",
            &[&user, &Uuid::new_v4()],
        )
        .await?
        .get(0))
}

/// The user of the application whose handle this is.
pub async fn user_by_handle(
    client: &impl GenericClient,
    app: Uuid,
    handle: Uuid,
) -> Result<Option<Uuid>, DbError> {
    Ok(client
        .q_opt(
            "SELECT id FROM users WHERE app_id = $1 AND passkey_handle = $2",
            &[&app, &handle],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The user's passkeys, oldest first.
pub async fn of_user(client: &impl GenericClient, user: Uuid) -> Result<Vec<Stored>, DbError> {
    client
        .q(
            &format!("SELECT {COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id"),
            &[&user],
        )
        .await?
        .iter()
        .map(stored)
        .collect()
}

/// How many passkeys the user has.
pub async fn count_in(client: &impl GenericClient, user: Uuid) -> Result<i64, DbError> {
    Ok(client
        .q_one("SELECT count(*) FROM passkeys WHERE user_id = $1", &[&user])
        .await?
        .get(0))
}

/// The application's passkey with this credential id, its row locked.
pub async fn by_credential_in(
    tx: &impl GenericClient,
    app: Uuid,
    credential_id: &[u8],
) -> Result<Option<Stored>, DbError> {
    tx.q_opt(
        &format!(
            "SELECT {COLUMNS} FROM passkeys WHERE app_id = $1 AND credential_id = $2 FOR UPDATE"
        ),
        &[&app, &credential_id],
    )
    .await?
    .as_ref()
    .map(stored)
    .transpose()
}

/// Stores a new passkey; `None` when the application already has this credential.
pub async fn insert_in(
    tx: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    name: &str,
    passkey: &Passkey,
    aaguid: Option<Uuid>,
) -> Result<Option<Stored>, DbError> {
    let credential_id: &[u8] = passkey.cred_id().as_ref();
    tx.q_opt(
        &format!(
            "INSERT INTO passkeys (id, app_id, user_id, credential_id, name, credential, aaguid)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (app_id, credential_id) DO NOTHING
             RETURNING {COLUMNS}"
        ),
        &[
            &Uuid::now_v7(),
            &app,
            &user,
            &credential_id,
            &name,
            &json(passkey)?,
            &aaguid,
        ],
    )
    .await?
    .as_ref()
    .map(stored)
    .transpose()
}

/// Records a use: the counter and flags the authenticator reported, and when.
pub async fn used_in(
    tx: &impl GenericClient,
    id: Uuid,
    passkey: &Passkey,
    now: i64,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE passkeys SET credential = $2, last_used_at = $3 WHERE id = $1",
        &[&id, &json(passkey)?, &clock::at(now)],
    )
    .await?;
    Ok(())
}

/// Renames the user's passkey; false if they have none by this id.
pub async fn rename_in(
    tx: &impl GenericClient,
    user: Uuid,
    id: Uuid,
    name: &str,
) -> Result<bool, DbError> {
    Ok(tx
        .exec(
            "UPDATE passkeys SET name = $3 WHERE user_id = $1 AND id = $2",
            &[&user, &id, &name],
        )
        .await?
        == 1)
}

/// Deletes the user's passkey; false if they have none by this id.
pub async fn delete_in(tx: &impl GenericClient, user: Uuid, id: Uuid) -> Result<bool, DbError> {
    Ok(tx
        .exec(
            "DELETE FROM passkeys WHERE user_id = $1 AND id = $2",
            &[&user, &id],
        )
        .await?
        == 1)
}

/// What a ceremony is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ceremony {
    /// A signed-in user adds a passkey.
    Register,
    /// Signing in with a passkey, with or without naming the account.
    SignIn,
    /// A passkey as the second step of a sign-in (named by its `mfa_token`).
    StepUp,
}

impl Ceremony {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::SignIn => "sign_in",
            Self::StepUp => "step_up",
        }
    }
}

/// A ceremony found and finished.
#[derive(Debug)]
pub struct Begun {
    pub user: Option<Uuid>,
    pub state: Value,
}

/// Stores a ceremony's state and returns its id, the only time it exists in clear.
pub async fn begin(
    client: &impl GenericClient,
    app: Uuid,
    user: Option<Uuid>,
    kind: Ceremony,
    state: &Value,
    now: i64,
) -> Result<String, DbError> {
    let id = random_token(32);
    begin_as(client, &digest(&id), app, user, kind, state, now).await?;
    Ok(id)
}

/// Stores a ceremony under `hash` (a step-up's is its `mfa_token`'s), replacing an
/// unfinished one there.
pub async fn begin_as(
    client: &impl GenericClient,
    hash: &[u8],
    app: Uuid,
    user: Option<Uuid>,
    kind: Ceremony,
    state: &Value,
    now: i64,
) -> Result<(), DbError> {
    client
        .exec(
            "INSERT INTO passkey_ceremonies (hash, app_id, user_id, kind, state, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (hash) DO UPDATE SET user_id = $3, kind = $4, state = $5, expires_at = $6",
            &[
                &hash,
                &app,
                &user,
                &kind.as_str(),
                state,
                &clock::at(now + CEREMONY_SECS),
            ],
        )
        .await?;
    Ok(())
}

/// Takes the ceremony named by `hash` if it is of this application and kind and not
/// expired: it is gone afterwards whatever the answer it leads to.
pub async fn finish(
    client: &impl GenericClient,
    hash: &[u8],
    app: Uuid,
    kind: Ceremony,
    now: i64,
) -> Result<Option<Begun>, DbError> {
    let row = client
        .q_opt(
            "DELETE FROM passkey_ceremonies WHERE hash = $1 RETURNING app_id, kind, user_id, state, expires_at",
            &[&hash],
        )
        .await?;
    Ok(row
        .filter(|r| {
            r.get::<_, Uuid>(0) == app
                && r.get::<_, &str>(1) == kind.as_str()
                && r.get::<_, OffsetDateTime>(4) > clock::at(now)
        })
        .map(|r| Begun {
            user: r.get(2),
            state: r.get(3),
        }))
}

/// Deletes expired ceremonies.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM passkey_ceremonies WHERE expires_at < now()",
            &[],
        )
        .await?)
}
