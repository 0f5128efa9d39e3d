//! An application's OAuth clients (Portcullis as an OpenID Provider), managed by its
//! administrator. Deleting a client revokes every session it holds.

use serde_json::json;
use uuid::Uuid;

use super::{AdminError, Deps};
use crate::domain::Ctx;
use crate::domain::apps::{App, AppError};
use crate::domain::audit::{self, Actor, Event};
use crate::domain::clients::{self, Client, ClientFields, GRANT_TYPES};
use crate::domain::sessions::{self, Bound};
use crate::domain::settings::redirect_uri_ok;

fn invalid(why: &str) -> AdminError {
    AppError::Invalid(why.to_owned()).into()
}

/// Checks a client's fields.
pub fn check(f: &ClientFields) -> Result<(), AdminError> {
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name must be 1 to 100 characters"));
    }
    let uris_ok = |uris: &[String], max: usize| {
        uris.len() <= max && uris.iter().all(|u| redirect_uri_ok(u) && !u.contains('*'))
    };
    if f.redirect_uris.is_empty() && f.grant_types.iter().any(|g| g == "authorization_code") {
        return Err(invalid(
            "redirect_uris must list at least one URI for the authorization_code grant",
        ));
    }
    if !uris_ok(&f.redirect_uris, 20) || !uris_ok(&f.post_logout_redirect_uris, 20) {
        return Err(invalid(
            "redirect_uris and post_logout_redirect_uris: at most 20 absolute http(s) URIs each, exact (no wildcard, no fragment)",
        ));
    }
    if f.backchannel_logout_uri
        .as_deref()
        .is_some_and(|u| !redirect_uri_ok(u))
    {
        return Err(invalid(
            "backchannel_logout_uri must be an absolute http(s) URI",
        ));
    }
    if f.grant_types.is_empty()
        || !f
            .grant_types
            .iter()
            .all(|g| GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(invalid(
            "grant_types: authorization_code, refresh_token, client_credentials",
        ));
    }
    if !f.confidential && f.grant_types.iter().any(|g| g == "client_credentials") {
        return Err(invalid("a public client cannot use client_credentials"));
    }
    let scope_ok = |s: &String| {
        (1..=100).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    };
    if f.scopes.len() > 100 || !f.scopes.iter().all(scope_ok) {
        return Err(invalid("scopes: at most 100 scope tokens"));
    }
    let ttl_ok =
        |t: Option<i32>, range: std::ops::RangeInclusive<i32>| t.is_none_or(|t| range.contains(&t));
    if !ttl_ok(f.access_token_ttl, 60..=86_400) || !ttl_ok(f.refresh_token_ttl, 300..=365 * 86_400)
    {
        return Err(invalid(
            "access_token_ttl must be 60..=86400 seconds, refresh_token_ttl 300 seconds..=365 days",
        ));
    }
    Ok(())
}

fn record<'a>(app: Uuid, event: &'static str, client: Uuid, ctx: &'a Ctx) -> Event<'a> {
    Event {
        app: Some(app),
        user: None,
        actor: Actor::Admin,
        event,
        details: json!({ "client_id": client }),
        ctx,
    }
}

/// Creates a client; returns it and, for a confidential one, its secret (shown once).
pub async fn create(
    deps: Deps<'_>,
    app: &App,
    f: &ClientFields,
    ctx: &Ctx,
) -> Result<(Client, Option<String>), AdminError> {
    check(f)?;
    let mut db = deps.pool.get().await?;
    let tx = db.transaction().await?;
    let (client, secret) = clients::insert(&tx, app.id, f).await?;
    audit::record(&tx, record(app.id, "oauth_client.created", client.id, ctx)).await?;
    tx.commit().await?;
    Ok((client, secret))
}

/// Replaces a client's fields.
pub async fn update(
    deps: Deps<'_>,
    app: &App,
    id: Uuid,
    f: &ClientFields,
    ctx: &Ctx,
) -> Result<Option<Client>, AdminError> {
    check(f)?;
    let mut db = deps.pool.get().await?;
    let tx = db.transaction().await?;
    let Some(client) = clients::update(&tx, app.id, id, f).await? else {
        return Ok(None);
    };
    audit::record(&tx, record(app.id, "oauth_client.updated", id, ctx)).await?;
    tx.commit().await?;
    Ok(Some(client))
}

/// Deletes a client: its sessions are revoked first (and published), then it goes.
pub async fn delete(deps: Deps<'_>, app: &App, id: Uuid, ctx: &Ctx) -> Result<bool, AdminError> {
    let mut db = deps.pool.get().await?;
    let tx = db.transaction().await?;
    if clients::find(&tx, app.id, id).await?.is_none() {
        return Ok(false);
    }
    let revoked = sessions::revoke_bound_in(&tx, Bound::Client(id), ctx.now).await?;
    clients::delete(&tx, app.id, id).await?;
    audit::record(&tx, record(app.id, "oauth_client.deleted", id, ctx)).await?;
    tx.commit().await?;
    drop(db);
    let revoked: Vec<_> = revoked.into_iter().map(|e| e.revoked).collect();
    sessions::publish_sessions(deps.publisher, &revoked).await;
    Ok(true)
}
