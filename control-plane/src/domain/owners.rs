//! Owners: the people who own applications (API.md §3 `/v1/owners`, seed auth-mysql).
//! They sign in with a password and get short access tokens (no refresh tokens); a
//! password change or deletion revokes them through the same per-subject cutoff users
//! have (`domain::revocations`).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::users::canonical;
use crate::infra::store::{DbError, Prepared as _, is_unique_violation};

/// Why an owner change was refused.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("an owner with this email already exists")]
    Exists,
    /// The owner of the token is gone.
    #[error("the owner no longer exists")]
    Gone,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(OwnerError);

// An owner as they see themselves (no doc comment: it would change the published schema).
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerView {
    pub id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl OwnerView {
    fn from_row(r: &Row) -> Self {
        Self {
            id: r.get(0),
            email: r.get(1),
            first_name: r.get(2),
            last_name: r.get(3),
            created_at: r.get(4),
        }
    }
}

const OWNER_COLUMNS: &str = "id, email, first_name, last_name, created_at";

/// A first or last name: at most 100 characters, no control characters; trimmed.
pub fn check_name(value: &str, field: &str) -> Result<String, OwnerError> {
    let value = value.trim();
    if value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(OwnerError::Invalid(format!(
            "{field} must be at most 100 characters"
        )));
    }
    Ok(value.to_owned())
}

fn email_taken(e: tokio_postgres::Error) -> OwnerError {
    if is_unique_violation(&e, None) {
        OwnerError::Exists
    } else {
        e.into()
    }
}

/// A new owner; `email` checked, `first` and `last` through [`check_name`].
pub async fn insert(
    client: &impl GenericClient,
    email: &str,
    password_hash: &str,
    first: &str,
    last: &str,
) -> Result<OwnerView, OwnerError> {
    let sql = format!(
        "INSERT INTO owners (id, email, email_canonical, password_hash, first_name, last_name)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {OWNER_COLUMNS}"
    );
    let row = client
        .q_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &email,
                &canonical(email),
                &password_hash,
                &first,
                &last,
            ],
        )
        .await
        .map_err(email_taken)?;
    Ok(OwnerView::from_row(&row))
}

pub async fn find(client: &impl GenericClient, id: Uuid) -> Result<Option<OwnerView>, DbError> {
    let sql = format!("SELECT {OWNER_COLUMNS} FROM owners WHERE id = $1");
    Ok(client
        .q_opt(&sql, &[&id])
        .await?
        .map(|r| OwnerView::from_row(&r)))
}

/// What signing in as an owner checks: the id, the password hash, and the owner's
/// revocation cutoff if any.
#[derive(Debug)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub cutoff: Option<i64>,
}

/// The owner with address `email` (canonicalised here), for signing in.
pub async fn credentials_by_email(
    client: &impl GenericClient,
    email: &str,
) -> Result<Option<Credentials>, DbError> {
    let row = client
        .q_opt(
            "SELECT id, password_hash,
                 (SELECT before FROM revocations WHERE kind = 'user' AND subject = owners.id::text)
             FROM owners WHERE email_canonical = $1",
            &[&canonical(email)],
        )
        .await?;
    Ok(row.map(|r| Credentials {
        id: r.get(0),
        password_hash: r.get(1),
        cutoff: r.get(2),
    }))
}

/// The owner's password hash, if the owner exists.
pub async fn password_hash(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<String>, DbError> {
    let row = client
        .q_opt("SELECT password_hash FROM owners WHERE id = $1", &[&id])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Changes to an owner, checked; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct Changes {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<String>,
}

pub async fn update_in(
    tx: &impl GenericClient,
    id: Uuid,
    changes: &Changes,
) -> Result<OwnerView, OwnerError> {
    let sql = format!(
        "UPDATE owners SET first_name = COALESCE($2, first_name), last_name = COALESCE($3, last_name),
             email = COALESCE($4, email), email_canonical = COALESCE($5, email_canonical),
             password_hash = COALESCE($6, password_hash)
         WHERE id = $1 RETURNING {OWNER_COLUMNS}"
    );
    let row = tx
        .q_opt(
            &sql,
            &[
                &id,
                &changes.first_name,
                &changes.last_name,
                &changes.email,
                &changes.email.as_deref().map(canonical),
                &changes.password_hash,
            ],
        )
        .await
        .map_err(email_taken)?
        .ok_or(OwnerError::Gone)?;
    Ok(OwnerView::from_row(&row))
}

/// Deletes the owner; applications, their users and sessions go with it.
pub async fn delete_in(tx: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    tx.exec("DELETE FROM owners WHERE id = $1", &[&id]).await?;
    Ok(())
}
