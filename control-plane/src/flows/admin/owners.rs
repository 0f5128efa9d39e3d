//! Owners' own accounts (API.md §3 `/v1/owners`): registration, password sign-in (an
//! access token of audience `portcullis`, an hour, no refresh token), profile changes and
//! deletion with everything below the owner.

use portcullis_common::token::Amr;
use uuid::Uuid;

use super::{AdminError, Deps};
use crate::domain::Ctx;
use crate::domain::owners::{self, Changes, OwnerError, OwnerView};
use crate::domain::passwords;
use crate::domain::sessions::{self, AppsOf};
use crate::domain::tokens::{self, Grant, OWNER_AUDIENCE};
use crate::domain::users::check_email;
use crate::infra::limits::Scope;

/// Owner access tokens live this long; owners have no refresh tokens.
pub const OWNER_TOKEN_TTL: i64 = 3600;

/// Registrations and sign-ins per client address per minute.
const REGISTRATIONS_PER_IP: u32 = 30;
const LOGINS_PER_IP: u32 = 60;
/// Failed sign-ins per owner account per hour.
const FAILURES_PER_ACCOUNT: u32 = 100;

/// A new owner's fields as given.
#[derive(Debug)]
pub struct Registration<'a> {
    pub email: &'a str,
    pub password: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
}

pub async fn register(
    deps: Deps<'_>,
    new: &Registration<'_>,
    ctx: &Ctx,
) -> Result<OwnerView, AdminError> {
    let email = check_email(new.email)?;
    let first = owners::check_name(new.first_name, "first_name")?;
    let last = owners::check_name(new.last_name, "last_name")?;
    passwords::check_new(new.password, &Default::default(), &[&email])?;
    let per_ip = Scope::Ip {
        app: "owners",
        route: "register",
        ip: ctx.ip,
    };
    deps.limiter.hit(per_ip, REGISTRATIONS_PER_IP).await?;
    let hash = deps.hasher.hash(new.password).await?;
    let client = deps.pool.get().await?;
    Ok(owners::insert(&client, &email, &hash, &first, &last).await?)
}

/// Checks an owner's password (every attempt counted per address and per account) and
/// returns an access token.
pub async fn login(
    deps: Deps<'_>,
    email: &str,
    password: &str,
    ctx: &Ctx,
) -> Result<String, AdminError> {
    passwords::check_shape(password).map_err(|_| AdminError::InvalidCredentials)?;
    let account = crate::domain::users::canonical(email);
    let per_ip = Scope::Ip {
        app: "owners",
        route: "login",
        ip: ctx.ip,
    };
    deps.limiter.hit(per_ip, LOGINS_PER_IP).await?;
    let failures = Scope::AccountFailures {
        app: "owners",
        account: &account,
    };
    deps.limiter.hit(failures, FAILURES_PER_ACCOUNT).await?;
    let client = deps.pool.get().await?;
    let found = owners::credentials_by_email(&client, email).await?;
    drop(client);
    // An unknown address costs the same hash as a wrong password.
    let hash = found.as_ref().map(|f| f.password_hash.as_str());
    let verified = deps.hasher.verify(hash, password).await?;
    let (Some(found), true) = (found, verified) else {
        return Err(AdminError::InvalidCredentials);
    };
    deps.limiter.forgive(failures).await;
    let grant = Grant {
        audience: OWNER_AUDIENCE,
        client_id: None,
        sub: found.id,
        sid: Uuid::now_v7(),
        roles: Vec::new(),
        scope: String::new(),
        amr: vec![Amr::Pwd],
        guest: false,
        ttl: OWNER_TOKEN_TTL,
        dpop: None,
    };
    // After a password change's cutoff, even within the same second.
    let issued = found
        .cutoff
        .map_or(ctx.now, |cutoff| ctx.now.max(cutoff + 1));
    let (token, _) = tokens::mint(deps.keys, deps.issuer, grant, issued).await?;
    Ok(token)
}

pub async fn profile(deps: Deps<'_>, owner: Uuid) -> Result<OwnerView, AdminError> {
    let client = deps.pool.get().await?;
    Ok(owners::find(&client, owner)
        .await?
        .ok_or(OwnerError::Gone)?)
}

/// Changes to an owner as given.
#[derive(Debug, Default)]
pub struct Update<'a> {
    /// Required to change `email` or `password`.
    pub current_password: Option<&'a str>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// Changes the owner. A new email or password needs the current password; a new password
/// revokes every owner token issued until now, this request's included.
pub async fn update(
    deps: Deps<'_>,
    owner: Uuid,
    update: &Update<'_>,
    ctx: &Ctx,
) -> Result<OwnerView, AdminError> {
    let name = |v: Option<&str>, field| v.map(|v| owners::check_name(v, field)).transpose();
    let mut changes = Changes {
        email: update.email.map(check_email).transpose()?,
        first_name: name(update.first_name, "first_name")?,
        last_name: name(update.last_name, "last_name")?,
        password_hash: None,
    };
    if changes.email.is_some() || update.password.is_some() {
        // A stolen token alone must not take the account over (ASVS 5 §6.2.3).
        let current = update.current_password.unwrap_or("");
        let client = deps.pool.get().await?;
        let stored = owners::password_hash(&client, owner).await?;
        drop(client);
        let shape_ok = passwords::check_shape(current).is_ok();
        if !(shape_ok && deps.hasher.verify(stored.as_deref(), current).await?) {
            return Err(AdminError::InvalidCredentials);
        }
    }
    if let Some(p) = update.password {
        let email = changes.email.as_deref().unwrap_or("");
        passwords::check_new(p, &Default::default(), &[email])?;
        changes.password_hash = Some(deps.hasher.hash(p).await?);
    }
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = owners::update_in(&tx, owner, &changes).await?;
    let cutoff = match changes.password_hash {
        Some(_) => Some(sessions::revoke_user_in(&tx, owner, ctx.now).await?),
        None => None,
    };
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(deps.publisher, &[owner], before).await;
    }
    Ok(updated)
}

/// Deletes the owner with every application, user and session below it; every token of
/// theirs is revoked.
pub async fn delete(deps: Deps<'_>, owner: Uuid, ctx: &Ctx) -> Result<(), AdminError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let (mut users, before) =
        sessions::revoke_app_users_in(&tx, AppsOf::Owner(owner), ctx.now).await?;
    let before = before.max(sessions::revoke_user_in(&tx, owner, ctx.now).await?);
    users.push(owner);
    owners::delete_in(&tx, owner).await?;
    tx.commit().await?;
    drop(client);
    deps.apps.forget_all();
    sessions::publish_users(deps.publisher, &users, before).await;
    Ok(())
}
