//! Administration (API.md §3): owners and their accounts ([`owners`]), their applications
//! ([`apps`]), and what an application's administrator (its API key or its owner) manages:
//! users ([`users`]), roles ([`roles`]) and webhooks ([`webhooks`]). Every change is
//! recorded in the audit log in the transaction that makes it, and a change that takes
//! access away revokes the tokens it concerns.

pub mod apps;
pub mod clients;
pub mod owners;
pub mod roles;
pub mod users;
pub mod webhooks;

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use crate::domain::apps::{AppCache, AppError};
use crate::domain::keys::{KeyError, KeyRing};
use crate::domain::owners::OwnerError;
use crate::domain::passwords::PasswordError;
use crate::domain::roles::RoleError;
use crate::domain::sessions;
use crate::domain::users::UserError;
use crate::domain::webhooks::WebhookError;
use crate::infra::crypto::{HashError, PasswordHasherPool, Secrets};
use crate::infra::egress::Egress;
use crate::infra::limits::{LimitError, Limiter};
use crate::infra::outbox::Outbox;
use crate::infra::publish::Publisher;
use crate::infra::store::DbError;

/// What administration works with.
#[derive(Clone, Copy, Debug)]
pub struct Deps<'a> {
    pub pool: &'a Pool,
    pub publisher: &'a Publisher,
    pub hasher: &'a PasswordHasherPool,
    pub limiter: &'a Limiter,
    /// Owners' access tokens.
    pub keys: &'a KeyRing,
    pub issuer: &'a str,
    /// Webhook and provider secrets.
    pub secrets: &'a Secrets,
    /// Webhook URLs are checked through it.
    pub egress: &'a Egress,
    pub outbox: &'a Outbox,
    /// Forgets a changed application.
    pub apps: &'a AppCache,
}

/// Why an administrative change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// An owner's sign-in or a password confirmation failed.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(AdminError);

/// Revokes every token of each of `users`, in the caller's transaction; returns each
/// user's cutoff, for [`publish`] after the commit.
async fn revoke_users_in(
    tx: &impl GenericClient,
    users: &[Uuid],
    now: i64,
) -> Result<Vec<(Uuid, i64)>, DbError> {
    let mut cutoffs = Vec::with_capacity(users.len());
    for user in users {
        cutoffs.push((*user, sessions::revoke_user_in(tx, *user, now).await?));
    }
    Ok(cutoffs)
}

/// Tells the verifiers about committed cutoffs.
async fn publish(publisher: &Publisher, cutoffs: &[(Uuid, i64)]) {
    for (user, before) in cutoffs {
        sessions::publish_users(publisher, &[*user], *before).await;
    }
}
