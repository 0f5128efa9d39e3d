//! Applications: the row, its settings, and how a request names one. An expired or deleted
//! application answers `404 app_not_found` on its end-user routes; its owner still sees it.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::settings::{AppSettings, SettingsError};
use crate::infra::clock;
use crate::infra::store::{DbError, Prepared as _, is_unique_violation};

/// An application that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No such application, or (on its end-user routes) it has expired.
    #[error("no such application, or it has expired")]
    NotFound,
    #[error("this owner already has an application with this name")]
    Exists,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(AppError);

pub const APP_COLUMNS: &str = "id, owner_id, name, settings, expires_at, created_at";

#[derive(Clone, Debug)]
pub struct App {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub settings: AppSettings,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// An application as its owner sees it (the API key is shown only when created or rotated).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    pub id: Uuid,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl App {
    pub fn from_row(row: &Row) -> Self {
        let settings: Value = row.get(3);
        Self {
            id: row.get(0),
            owner_id: row.get(1),
            name: row.get(2),
            settings: AppSettings::from_stored(&settings),
            expires_at: row.get(4),
            created_at: row.get(5),
        }
    }

    pub fn view(&self, api_key: Option<String>) -> AppView {
        AppView {
            id: self.id,
            name: self.name.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            access_token_ttl: self.settings.access_token_ttl,
            refresh_token_ttl: self.settings.refresh_token_ttl,
            api_key,
        }
    }

    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= clock::at(now))
    }
}

/// The application a path names, if it exists.
pub async fn find(client: &impl GenericClient, id: &str) -> Result<Option<App>, DbError> {
    let Ok(id) = id.parse::<Uuid>() else {
        return Ok(None);
    };
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1");
    Ok(client.q_opt(&sql, &[&id]).await?.map(|r| App::from_row(&r)))
}

/// How long a replica serves an application's row (settings, expiry) from memory. A change
/// made on this replica applies at once (it forgets the entry); one made on another
/// replica, within this long.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Applications as the end-user routes see them, cached briefly: every login and refresh
/// needs the settings, and reading them each time costs a database round trip.
#[derive(Clone, Debug)]
pub struct AppCache {
    cache: moka::sync::Cache<Uuid, Option<Arc<App>>>,
    /// Bumped by every `forget`: a read that started before one never caches its result,
    /// so a row read just before a local change cannot outlive it.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl AppCache {
    pub fn new() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_FOR)
                .build(),
            generation: Arc::default(),
        }
    }

    /// The application for an end-user route: it must exist and not be expired.
    pub async fn live(&self, pool: &Pool, id: &str, now: i64) -> Result<Arc<App>, AppError> {
        let Ok(uuid) = id.parse::<Uuid>() else {
            return Err(AppError::NotFound);
        };
        let app = match self.cache.get(&uuid) {
            Some(app) => app,
            None => {
                use std::sync::atomic::Ordering::SeqCst;
                let generation = self.generation.load(SeqCst);
                let client = pool.get().await?;
                let app = find(&client, id).await?.map(Arc::new);
                if self.generation.load(SeqCst) == generation {
                    self.cache.insert(uuid, app.clone());
                }
                app
            }
        };
        match app {
            Some(app) if !app.expired(now) => Ok(app),
            _ => Err(AppError::NotFound),
        }
    }

    /// Drops one application (changed or deleted here).
    pub fn forget(&self, id: Uuid) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.invalidate(&id);
    }

    /// Drops every application (an owner and all of theirs deleted).
    pub fn forget_all(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.invalidate_all();
    }
}

impl Default for AppCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The application's row, locked until the transaction ends (for read-modify-write).
pub async fn lock(tx: &impl GenericClient, id: Uuid) -> Result<App, AppError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 FOR UPDATE");
    tx.q_opt(&sql, &[&id])
        .await?
        .map(|r| App::from_row(&r))
        .ok_or(AppError::NotFound)
}

/// The application `id` if `key_digest` is the digest of its API key.
pub async fn by_api_key(
    client: &impl GenericClient,
    id: Uuid,
    key_digest: &[u8],
) -> Result<Option<App>, DbError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 AND api_key_hash = $2");
    Ok(client
        .q_opt(&sql, &[&id, &key_digest])
        .await?
        .map(|r| App::from_row(&r)))
}

/// A name of 1..=100 characters, no control characters; trimmed.
pub fn check_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(AppError::Invalid("name must be 1..=100 characters".into()));
    }
    Ok(name.to_owned())
}

/// Two applications of one owner with one name.
fn name_taken(e: tokio_postgres::Error) -> AppError {
    if is_unique_violation(&e, Some("apps_owner_id_name_key")) {
        AppError::Exists
    } else {
        e.into()
    }
}

/// The fields of a new application, checked.
#[derive(Debug)]
pub struct NewApp<'a> {
    pub owner: Uuid,
    pub name: &'a str,
    pub api_key_digest: &'a [u8],
    pub settings: &'a AppSettings,
    pub expires_at: Option<OffsetDateTime>,
}

pub async fn insert(client: &impl GenericClient, new: &NewApp<'_>) -> Result<App, AppError> {
    let sql = format!(
        "INSERT INTO apps (id, owner_id, name, api_key_hash, settings, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {APP_COLUMNS}"
    );
    let row = client
        .q_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &new.owner,
                &new.name,
                &new.api_key_digest,
                &Json(new.settings),
                &new.expires_at,
            ],
        )
        .await
        .map_err(name_taken)?;
    Ok(App::from_row(&row))
}

/// The owner's applications, oldest first.
pub async fn of_owner(client: &impl GenericClient, owner: Uuid) -> Result<Vec<App>, DbError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE owner_id = $1 ORDER BY created_at, id");
    let rows = client.q(&sql, &[&owner]).await?;
    Ok(rows.iter().map(App::from_row).collect())
}

/// Sets the name (when given), the settings and the expiry.
pub async fn update_in(
    tx: &impl GenericClient,
    id: Uuid,
    name: Option<&str>,
    settings: &AppSettings,
    expires_at: Option<OffsetDateTime>,
) -> Result<App, AppError> {
    let sql = format!(
        "UPDATE apps SET name = COALESCE($2, name), settings = $3, expires_at = $4
         WHERE id = $1 RETURNING {APP_COLUMNS}"
    );
    let row = tx
        .q_opt(&sql, &[&id, &name, &Json(settings), &expires_at])
        .await
        .map_err(name_taken)?
        .ok_or(AppError::NotFound)?;
    Ok(App::from_row(&row))
}

pub async fn set_settings_in(
    tx: &impl GenericClient,
    id: Uuid,
    settings: &AppSettings,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE apps SET settings = $2 WHERE id = $1",
        &[&id, &Json(settings)],
    )
    .await?;
    Ok(())
}

pub async fn set_api_key_in(
    tx: &impl GenericClient,
    id: Uuid,
    digest: &[u8],
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE apps SET api_key_hash = $2 WHERE id = $1",
        &[&id, &digest],
    )
    .await?;
    Ok(())
}

/// Deletes the application; its users, sessions, roles and webhooks go with it.
pub async fn delete_in(tx: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    tx.exec("DELETE FROM apps WHERE id = $1", &[&id]).await?;
    Ok(())
}
