//! Applications: the row, its settings, and how a request names one. An expired or deleted
//! application answers `404 app_not_found` on its end-user routes; its owner still sees it.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::settings::AppSettings;
use crate::error::ApiError;
use crate::infra::clock;
use crate::infra::store::Prepared as _;

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
pub async fn find(client: &impl GenericClient, id: &str) -> Result<Option<App>, ApiError> {
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
    pub async fn live(&self, pool: &Pool, id: &str, now: i64) -> Result<Arc<App>, ApiError> {
        let Ok(uuid) = id.parse::<Uuid>() else {
            return Err(ApiError::app_not_found());
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
            _ => Err(ApiError::app_not_found()),
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
pub async fn lock(tx: &impl GenericClient, id: Uuid) -> Result<App, ApiError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 FOR UPDATE");
    tx.q_opt(&sql, &[&id])
        .await?
        .map(|r| App::from_row(&r))
        .ok_or_else(ApiError::app_not_found)
}
