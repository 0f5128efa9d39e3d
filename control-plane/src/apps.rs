//! Applications: the row, its settings, and how a request names one. An expired or deleted
//! application answers `404 app_not_found` on its end-user routes; its owner still sees it.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::clock;
use crate::error::ApiError;
use crate::settings::AppSettings;

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
    Ok(client
        .query_opt(&sql, &[&id])
        .await?
        .map(|r| App::from_row(&r)))
}

/// The application for an end-user route: it must exist and not be expired.
pub async fn live(client: &impl GenericClient, id: &str, now: i64) -> Result<App, ApiError> {
    match find(client, id).await? {
        Some(app) if !app.expired(now) => Ok(app),
        _ => Err(ApiError::app_not_found()),
    }
}

/// The application's row, locked until the transaction ends (for read-modify-write).
pub async fn lock(tx: &impl GenericClient, id: Uuid) -> Result<App, ApiError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 FOR UPDATE");
    tx.query_opt(&sql, &[&id])
        .await?
        .map(|r| App::from_row(&r))
        .ok_or_else(ApiError::app_not_found)
}
