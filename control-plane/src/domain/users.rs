//! Users of an application: the row, its public view, canonical identifiers, lookups, and
//! the revocation that follows disabling or deleting one.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::one_time;
use crate::infra::store::{DbError, Prepared as _, is_unique_violation};

/// Why a user could not be created, found or changed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("a user with this email or username already exists")]
    Exists,
    #[error("user not found")]
    NotFound,
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(UserError);

/// Every column `User::from_row` reads, in order. The last two are derived: the user's
/// revocation cutoff, if any (see `User::cutoff`), and the permissions of their roles as a
/// sorted, space-separated `scope` (read with the row, so a sign-in or a refresh costs no
/// extra round trip).
pub const USER_COLUMNS: &str = "id, app_id, email, username, phone, email_verified, active, \
     guest, roles, expires_at, created_at, password_hash, display_name, \
     (SELECT before FROM revocations WHERE kind = 'user' AND subject = users.id::text) AS cutoff, \
     (SELECT COALESCE(string_agg(DISTINCT p, ' ' ORDER BY p), '') FROM roles r, unnest(r.permissions) p \
      WHERE r.app_id = users.app_id AND r.name = ANY(users.roles)) AS scope";

/// How many columns [`USER_COLUMNS`] has (a query selecting more reads from here on).
pub const USER_COLUMN_COUNT: usize = 15;

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub app_id: Uuid,
    pub email: Option<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
    pub email_verified: bool,
    pub active: bool,
    pub guest: bool,
    pub roles: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub password_hash: String,
    pub display_name: Option<String>,
    /// Tokens of this user issued at or before this Unix time are revoked.
    pub cutoff: Option<i64>,
    /// The permissions of the user's roles, space-separated: the `scope` of their tokens.
    pub scope: String,
}

/// The profile of API.md §3 `GET /me` (and of the user administration routes).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: Option<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
    pub email_verified: bool,
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub active: bool,
    pub guest: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl User {
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            app_id: row.get(1),
            email: row.get(2),
            username: row.get(3),
            phone: row.get(4),
            email_verified: row.get(5),
            active: row.get(6),
            guest: row.get(7),
            roles: row.get(8),
            expires_at: row.get(9),
            created_at: row.get(10),
            password_hash: row.get(11),
            display_name: row.get(12),
            cutoff: row.get(13),
            scope: row.get(14),
        }
    }

    pub fn view(&self) -> UserView {
        UserView {
            id: self.id,
            email: self.email.clone(),
            username: self.username.clone(),
            phone: self.phone.clone(),
            email_verified: self.email_verified,
            roles: self.roles.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            active: self.active,
            guest: self.guest,
            name: self.display_name.clone(),
        }
    }

    /// The `iat` for a token issued at `now`: after the user's revocation cutoff even when
    /// that cutoff falls in this same second (a login right after a password change).
    pub fn issued_at(&self, now: i64) -> i64 {
        self.cutoff.map_or(now, |cutoff| now.max(cutoff + 1))
    }

    /// Inactive, or past its `expires_at`.
    pub fn disabled(&self, now: OffsetDateTime) -> bool {
        !self.active || self.expires_at.is_some_and(|at| at <= now)
    }
}

pub async fn find(
    client: &impl GenericClient,
    app: Uuid,
    id: Uuid,
) -> Result<Option<User>, DbError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = $2");
    Ok(client
        .q_opt(&sql, &[&app, &id])
        .await?
        .map(|r| User::from_row(&r)))
}

/// A page of an application's users in creation order (ids are UUID v7, so a cursor is
/// the last id seen), optionally those with one canonical `email`. Returns the page and
/// whether more follow.
pub async fn page(
    client: &impl GenericClient,
    app: Uuid,
    after: Option<Uuid>,
    email: Option<&str>,
    limit: i64,
) -> Result<(Vec<User>, bool), DbError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE app_id = $1 AND ($2::uuid IS NULL OR id > $2) AND ($3::text IS NULL OR email_canonical = $3)
         ORDER BY id LIMIT $4"
    );
    let email = email.map(canonical);
    let rows = client
        .q(&sql, &[&app, &after, &email, &(limit + 1)])
        .await?;
    let more = rows.len() as i64 > limit;
    let users = rows
        .iter()
        .take(limit as usize)
        .map(User::from_row)
        .collect();
    Ok((users, more))
}

/// The user row, locked shared until the transaction ends: a concurrent revocation of
/// the user waits for the caller's session to be recorded (see
/// `sessions::revoke_user_in`).
pub async fn lock_shared(tx: &impl GenericClient, id: Uuid) -> Result<Option<User>, DbError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR SHARE");
    Ok(tx.q_opt(&sql, &[&id]).await?.map(|r| User::from_row(&r)))
}

/// By canonical email, or by canonical username when `login` has no `@`.
pub async fn find_by_login(
    client: &impl GenericClient,
    app: Uuid,
    login: &str,
) -> Result<Option<User>, DbError> {
    let column = if login.contains('@') {
        "email_canonical"
    } else {
        "username_canonical"
    };
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND {column} = $2");
    Ok(client
        .q_opt(&sql, &[&app, &canonical(login)])
        .await?
        .map(|r| User::from_row(&r)))
}

/// The user holding the address `email`, and whether they proved it.
pub async fn by_email_in(
    tx: &impl GenericClient,
    app: Uuid,
    email: &str,
) -> Result<Option<(Uuid, bool)>, DbError> {
    Ok(tx
        .q_opt(
            "SELECT id, email_verified FROM users WHERE app_id = $1 AND email_canonical = $2",
            &[&app, &canonical(email)],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Locks the user row for a change that must not race another (`FOR UPDATE`).
pub async fn lock_in(tx: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    tx.exec("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&id])
        .await?;
    Ok(())
}

/// Whether the user has a password (`'!'` means none).
pub async fn has_password_in(tx: &impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    Ok(tx
        .q_one(
            "SELECT password_hash <> '!' FROM users WHERE id = $1",
            &[&id],
        )
        .await?
        .get(0))
}

/// A new user's fields, already checked.
#[derive(Debug, Default)]
pub struct NewUser {
    pub email: Option<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub active: bool,
    pub expires_at: Option<OffsetDateTime>,
    pub email_verified: bool,
    pub guest: bool,
    pub display_name: Option<String>,
}

/// Changes to a user; `None` keeps the current value. A new email is unverified unless
/// `email_verified` says otherwise.
#[derive(Debug, Default)]
pub struct Changes {
    pub email: Option<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
    pub active: Option<bool>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub roles: Option<Vec<String>>,
    pub email_verified: Option<bool>,
}

impl Changes {
    /// The contact fields every profile route accepts, checked.
    pub fn profile(
        email: Option<&str>,
        username: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Self, UserError> {
        Ok(Self {
            email: email.map(check_email).transpose()?,
            username: username.map(check_username).transpose()?,
            phone: phone.map(check_phone).transpose()?,
            ..Self::default()
        })
    }
}

/// A unique email or username taken.
fn conflict(e: tokio_postgres::Error) -> UserError {
    if is_unique_violation(&e, None) {
        UserError::Exists
    } else {
        e.into()
    }
}

pub async fn insert(
    client: &impl GenericClient,
    app: Uuid,
    new: &NewUser,
) -> Result<User, UserError> {
    let sql = format!(
        "INSERT INTO users (id, app_id, email, email_canonical, username, username_canonical,
             phone, password_hash, roles, active, expires_at, email_verified, guest, display_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         RETURNING {USER_COLUMNS}"
    );
    let row = client
        .q_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &app,
                &new.email,
                &new.email.as_deref().map(canonical),
                &new.username,
                &new.username.as_deref().map(canonical),
                &new.phone,
                &new.password_hash,
                &new.roles,
                &new.active,
                &new.expires_at,
                &new.email_verified,
                &new.guest,
                &new.display_name,
            ],
        )
        .await
        .map_err(conflict)?;
    Ok(User::from_row(&row))
}

pub async fn update(
    client: &impl GenericClient,
    id: Uuid,
    changes: &Changes,
) -> Result<User, UserError> {
    let sql = format!(
        "UPDATE users SET
             email = COALESCE($2, email), email_canonical = COALESCE($3, email_canonical),
             email_verified = COALESCE($10,
                 CASE WHEN $3::text IS NULL OR $3 = email_canonical THEN email_verified ELSE false END),
             username = COALESCE($4, username), username_canonical = COALESCE($5, username_canonical),
             phone = COALESCE($6, phone), active = COALESCE($7, active),
             expires_at = CASE WHEN $8 THEN $9 ELSE expires_at END, roles = COALESCE($11, roles)
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    );
    let row = client
        .q_opt(
            &sql,
            &[
                &id,
                &changes.email,
                &changes.email.as_deref().map(canonical),
                &changes.username,
                &changes.username.as_deref().map(canonical),
                &changes.phone,
                &changes.active,
                &changes.expires_at.is_some(),
                &changes.expires_at.flatten(),
                &changes.email_verified,
                &changes.roles,
            ],
        )
        .await
        .map_err(conflict)?
        .ok_or(UserError::NotFound)?;
    Ok(User::from_row(&row))
}

/// Sets the user's password hash (`'!'`: none) and ends what the old password started:
/// reset links mailed before, and sign-ins waiting at their second step.
pub async fn set_password_in(
    tx: &impl GenericClient,
    user: Uuid,
    hash: &str,
    now: i64,
) -> Result<(), DbError> {
    tx.exec(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[&user, &hash],
    )
    .await?;
    let stale = [
        one_time::Purpose::PasswordReset.as_str(),
        one_time::Purpose::MfaLogin.as_str(),
    ];
    crate::domain::one_time::retire_in(tx, user, &stale, now).await
}

/// Marks the user's address as proven; with `mailed_to`, only if it is still that
/// (canonical) address. Returns whether it was marked.
pub async fn mark_verified_in(
    tx: &impl GenericClient,
    user: Uuid,
    mailed_to: Option<&str>,
) -> Result<bool, DbError> {
    let updated = tx
        .exec(
            "UPDATE users SET email_verified = true
             WHERE id = $1 AND ($2::text IS NULL OR email_canonical = $2)",
            &[&user, &mailed_to],
        )
        .await?;
    Ok(updated > 0)
}

/// Deletes the user; sessions, refresh tokens, factors and identities go with it.
pub async fn delete_in(tx: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    tx.exec("DELETE FROM users WHERE id = $1", &[&id]).await?;
    Ok(())
}

/// Trimmed and case-folded: two spellings of one address are one account.
pub fn canonical(identifier: &str) -> String {
    identifier.trim().to_lowercase()
}

/// A plausible email address (one `@`, something on both sides, no spaces, ≤ 254 bytes).
pub fn check_email(email: &str) -> Result<String, UserError> {
    let email = email.trim();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if valid {
        Ok(email.to_owned())
    } else {
        Err(UserError::Invalid("email is not a valid address".into()))
    }
}

/// 1..=64 characters of letters, digits, `.`, `_`, `-`; no `@` (that marks an email).
pub fn check_username(username: &str) -> Result<String, UserError> {
    let username = username.trim();
    let valid = (1..=64).contains(&username.chars().count())
        && username
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(username.to_owned())
    } else {
        Err(UserError::Invalid(
            "username must be 1..=64 letters, digits, '.', '_' or '-'".into(),
        ))
    }
}

/// E.164: `+` then 7..=15 digits, the first not 0.
pub fn check_phone(phone: &str) -> Result<String, UserError> {
    let phone = phone.trim();
    let digits = phone.strip_prefix('+').unwrap_or("");
    let valid = (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(phone.to_owned())
    } else {
        Err(UserError::Invalid(
            "phone must be in E.164 form, like +15551234567".into(),
        ))
    }
}

/// Role names: 1..=64 printable characters without spaces or commas (they travel in a
/// comma-separated header at the sidecar).
pub fn check_roles(roles: &[String]) -> Result<Vec<String>, UserError> {
    let mut out: Vec<String> = Vec::new();
    for role in roles {
        let ok = (1..=64).contains(&role.chars().count())
            && role.chars().all(|c| c.is_ascii_graphic() && c != ',');
        if !ok {
            return Err(UserError::Invalid(format!(
                "role names are 1..=64 printable ASCII characters without commas: {role:?}"
            )));
        }
        if !out.contains(role) {
            out.push(role.clone());
        }
    }
    Ok(out)
}

/// A device id: 1..=128 printable characters.
pub fn check_device(device: Option<&str>) -> Result<Option<String>, UserError> {
    match device.map(str::trim) {
        None | Some("") => Ok(None),
        Some(d) if d.chars().count() <= 128 && !d.chars().any(char::is_control) => {
            Ok(Some(d.to_owned()))
        }
        Some(_) => Err(UserError::Invalid(
            "device_id must be 1..=128 characters".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(canonical("  Ann@Example.COM "), "ann@example.com");
        assert!(check_email("ann@example.com").is_ok());
        for bad in ["", "ann", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_username("ann.b-c_1").is_ok());
        assert!(check_username("ann@x").is_err());
        assert!(check_phone("+15551234567").is_ok());
        assert!(check_phone("5551234567").is_err());
        assert!(check_roles(&["a,b".into()]).is_err());
        assert_eq!(
            check_roles(&["a".into(), "a".into()]).unwrap_or_default(),
            ["a"]
        );
    }
}
