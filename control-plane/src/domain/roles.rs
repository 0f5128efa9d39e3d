//! Roles of an application (API.md §3 `/roles`): each a name and a set of permission
//! strings. Users hold roles by name (`users.roles`); the union of their permissions is the
//! `scope` of the user's tokens (read with the user row, see `users::USER_COLUMNS`), so a
//! change reaches a user's tokens at their next refresh, or at once when revoked.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::infra::store::{DbError, Prepared as _, is_unique_violation};

/// Why a role change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("a role with this name already exists")]
    Exists,
    #[error("role not found")]
    NotFound,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(RoleError);

#[derive(Debug, Serialize, ToSchema)]
pub struct Role {
    pub name: String,
    pub permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Role {
    fn from_row(row: &Row) -> Self {
        Self {
            name: row.get(0),
            permissions: row.get(1),
            created_at: row.get(2),
        }
    }
}

/// At most this many permissions per role.
const MAX_PERMISSIONS: usize = 100;

/// Permissions: 1..=128 printable ASCII characters without spaces (they travel
/// space-separated in `scope`); sorted, duplicates dropped.
pub fn check_permissions(permissions: &[String]) -> Result<Vec<String>, RoleError> {
    if permissions.len() > MAX_PERMISSIONS {
        return Err(RoleError::Invalid(format!(
            "a role has at most {MAX_PERMISSIONS} permissions"
        )));
    }
    let mut out = Vec::with_capacity(permissions.len());
    for p in permissions {
        if !(1..=128).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RoleError::Invalid(format!(
                "permissions are 1..=128 printable ASCII characters without spaces: {p:?}"
            )));
        }
        out.push(p.clone());
    }
    out.sort();
    out.dedup();
    // A token carries the permissions: keep a role's share of it small (the verifier
    // refuses tokens over 8 KiB, browsers cookies over 4 KiB).
    if out.iter().map(|p| p.len() + 1).sum::<usize>() > 2048 {
        return Err(RoleError::Invalid(
            "a role's permissions may take at most 2048 characters in all".into(),
        ));
    }
    Ok(out)
}

pub async fn list(client: &impl GenericClient, app: Uuid) -> Result<Vec<Role>, DbError> {
    let rows = client
        .q(
            "SELECT name, permissions, created_at FROM roles WHERE app_id = $1 ORDER BY name",
            &[&app],
        )
        .await?;
    Ok(rows.iter().map(Role::from_row).collect())
}

/// A new role; `409 role_exists` when the name is taken.
pub async fn create(
    client: &impl GenericClient,
    app: Uuid,
    name: &str,
    permissions: &[String],
) -> Result<Role, RoleError> {
    let row = client
        .q_one(
            "INSERT INTO roles (app_id, name, permissions) VALUES ($1, $2, $3)
             RETURNING name, permissions, created_at",
            &[&app, &name, &permissions],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e, None) {
                RoleError::Exists
            } else {
                e.into()
            }
        })?;
    Ok(Role::from_row(&row))
}

/// Creates or replaces the role's permissions.
pub async fn put(
    client: &impl GenericClient,
    app: Uuid,
    name: &str,
    permissions: &[String],
) -> Result<Role, DbError> {
    let row = client
        .q_one(
            "INSERT INTO roles (app_id, name, permissions) VALUES ($1, $2, $3)
             ON CONFLICT (app_id, name) DO UPDATE SET permissions = EXCLUDED.permissions
             RETURNING name, permissions, created_at",
            &[&app, &name, &permissions],
        )
        .await?;
    Ok(Role::from_row(&row))
}

/// Deletes the role and takes it from every user holding it; returns those users, or
/// `None` when there was no such role.
pub async fn delete_in(
    tx: &impl GenericClient,
    app: Uuid,
    name: &str,
) -> Result<Option<Vec<Uuid>>, DbError> {
    let deleted = tx
        .exec(
            "DELETE FROM roles WHERE app_id = $1 AND name = $2",
            &[&app, &name],
        )
        .await?;
    if deleted == 0 {
        return Ok(None);
    }
    let rows = tx
        .q(
            "UPDATE users SET roles = array_remove(roles, $2)
             WHERE app_id = $1 AND roles @> ARRAY[$2::text] RETURNING id",
            &[&app, &name],
        )
        .await?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// The users holding role `name`.
pub async fn holders(
    client: &impl GenericClient,
    app: Uuid,
    name: &str,
) -> Result<Vec<Uuid>, DbError> {
    let rows = client
        .q(
            "SELECT id FROM users WHERE app_id = $1 AND roles @> ARRAY[$2::text]",
            &[&app, &name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_checked_sorted_and_deduplicated() {
        let ok = check_permissions(&["b:write".into(), "a:read".into(), "b:write".into()]);
        assert_eq!(ok.unwrap_or_default(), ["a:read", "b:write"]);
        for bad in ["", "has space", "tab\t", "é"] {
            assert!(check_permissions(&[bad.into()]).is_err(), "{bad:?}");
        }
        assert!(check_permissions(&vec!["x".to_owned(); 101]).is_err());
    }
}
