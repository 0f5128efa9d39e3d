//! The OAuth clients of an application (`oauth_clients`), for Portcullis as an OpenID
//! Provider: confidential ones hold a secret (256 random bits, stored as its SHA-256,
//! shown once), public ones none and must use PKCE.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::infra::crypto::{digest, random_token};
use crate::infra::store::{DbError, Prepared as _};

/// The grant types a client may use.
pub const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

/// A client as stored (and as its administrators see it; the secret never).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Client {
    /// The `client_id`.
    pub id: Uuid,
    #[serde(skip)]
    pub app: Uuid,
    pub name: String,
    /// `false`: a public client (a browser or native app): no secret, PKCE required.
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Scopes it may be granted (`openid`, `profile`, `email`, `offline_access`, `roles`,
    /// and permissions of the application's roles).
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    /// Signs users in without asking for consent (the application's own client).
    pub first_party: bool,
    /// Seconds; none: the application's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    secret_hash: Option<Vec<u8>>,
}

impl Client {
    /// Whether `secret` is this confidential client's (constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.secret_hash
            .as_deref()
            .is_some_and(|h| bool::from(h.ct_eq(&digest(secret))))
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }
}

/// A client's fields, checked by the caller (`flows::admin::clients`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ClientFields {
    pub name: String,
    #[serde(default = "yes")]
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_grants")]
    pub grant_types: Vec<String>,
    #[serde(default)]
    pub first_party: bool,
    pub access_token_ttl: Option<i32>,
    pub refresh_token_ttl: Option<i32>,
    pub backchannel_logout_uri: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(str::to_owned)
        .to_vec()
}

fn default_grants() -> Vec<String> {
    ["authorization_code", "refresh_token"]
        .map(str::to_owned)
        .to_vec()
}

const COLUMNS: &str = "id, app_id, name, secret_hash, redirect_uris, post_logout_redirect_uris, \
                       scopes, grant_types, first_party, access_token_ttl, refresh_token_ttl, \
                       backchannel_logout_uri, created_at";

fn client(r: &Row) -> Client {
    let secret_hash: Option<Vec<u8>> = r.get(3);
    Client {
        id: r.get(0),
        app: r.get(1),
        name: r.get(2),
        confidential: secret_hash.is_some(),
        redirect_uris: r.get(4),
        post_logout_redirect_uris: r.get(5),
        scopes: r.get(6),
        grant_types: r.get(7),
        first_party: r.get(8),
        access_token_ttl: r.get(9),
        refresh_token_ttl: r.get(10),
        backchannel_logout_uri: r.get(11),
        created_at: r.get(12),
        secret_hash,
    }
}

/// Creates a client; with `confidential`, also its secret (returned, the only time).
pub async fn insert(
    client: &impl GenericClient,
    app: Uuid,
    f: &ClientFields,
) -> Result<(Client, Option<String>), DbError> {
    let secret = f.confidential.then(|| random_token(32));
    let row = client
        .q_one(
            &format!(
                "INSERT INTO oauth_clients (id, app_id, name, secret_hash, redirect_uris,
                     post_logout_redirect_uris, scopes, grant_types, first_party,
                     access_token_ttl, refresh_token_ttl, backchannel_logout_uri)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &app,
                &f.name,
                &secret.as_deref().map(digest),
                &f.redirect_uris,
                &f.post_logout_redirect_uris,
                &f.scopes,
                &f.grant_types,
                &f.first_party,
                &f.access_token_ttl,
                &f.refresh_token_ttl,
                &f.backchannel_logout_uri,
            ],
        )
        .await?;
    Ok((self::client(&row), secret))
}

/// Replaces a client's fields (its secret and kind stay).
pub async fn update(
    client: &impl GenericClient,
    app: Uuid,
    id: Uuid,
    f: &ClientFields,
) -> Result<Option<Client>, DbError> {
    Ok(client
        .q_opt(
            &format!(
                "UPDATE oauth_clients SET name = $3, redirect_uris = $4,
                     post_logout_redirect_uris = $5, scopes = $6, grant_types = $7,
                     first_party = $8, access_token_ttl = $9, refresh_token_ttl = $10,
                     backchannel_logout_uri = $11
                 WHERE app_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[
                &app,
                &id,
                &f.name,
                &f.redirect_uris,
                &f.post_logout_redirect_uris,
                &f.scopes,
                &f.grant_types,
                &f.first_party,
                &f.access_token_ttl,
                &f.refresh_token_ttl,
                &f.backchannel_logout_uri,
            ],
        )
        .await?
        .as_ref()
        .map(self::client))
}

/// The application's client `id`.
pub async fn find(
    client: &impl GenericClient,
    app: Uuid,
    id: Uuid,
) -> Result<Option<Client>, DbError> {
    Ok(client
        .q_opt(
            &format!("SELECT {COLUMNS} FROM oauth_clients WHERE app_id = $1 AND id = $2"),
            &[&app, &id],
        )
        .await?
        .as_ref()
        .map(self::client))
}

/// The application's client named by a `client_id` string (`None` for anything else).
pub async fn by_client_id(
    client: &impl GenericClient,
    app: Uuid,
    client_id: &str,
) -> Result<Option<Client>, DbError> {
    match client_id.parse::<Uuid>() {
        Ok(id) => find(client, app, id).await,
        Err(_) => Ok(None),
    }
}

/// The application's clients, oldest first.
pub async fn list(client: &impl GenericClient, app: Uuid) -> Result<Vec<Client>, DbError> {
    Ok(client
        .q(
            &format!(
                "SELECT {COLUMNS} FROM oauth_clients WHERE app_id = $1 ORDER BY created_at, id"
            ),
            &[&app],
        )
        .await?
        .iter()
        .map(self::client)
        .collect())
}

/// Deletes a client (its codes, consents and sessions go with it).
pub async fn delete(client: &impl GenericClient, app: Uuid, id: Uuid) -> Result<bool, DbError> {
    Ok(client
        .exec(
            "DELETE FROM oauth_clients WHERE app_id = $1 AND id = $2",
            &[&app, &id],
        )
        .await?
        == 1)
}

/// Where client `id` takes back-channel logout tokens: `None` if the client is gone,
/// `Some(None)` if it registered no URI.
pub async fn backchannel_uri(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Option<String>>, DbError> {
    Ok(client
        .q_opt(
            "SELECT backchannel_logout_uri FROM oauth_clients WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.get(0)))
}
