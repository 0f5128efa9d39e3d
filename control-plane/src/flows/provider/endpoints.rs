//! UserInfo (OIDC Core 5.3), token introspection (RFC 7662), token revocation
//! (RFC 7009) and RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Deps, OAuthCode, ProviderError, has_scope, issuer, logout_token, oauth, user_claims};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::authorizations::{self, BrowserSession};
use crate::domain::clients::{self, Client};
use crate::domain::dpop::{self, Presented};
use crate::domain::sessions::{self, Bound, Which};
use crate::domain::tokens::Principal;
use crate::domain::users;
use crate::flows::signin::session;
use crate::infra::clock;
use crate::infra::crypto::digest;
use crate::infra::outbox;

/// An access token the provider issued to one of `app`'s clients, checked.
async fn client_token(deps: Deps<'_>, app: &App, token: &str) -> Result<Principal, ProviderError> {
    let app_id = app.id.to_string();
    let keys = deps.signin.keys;
    let principal = deps
        .tokens
        .authenticate(keys, deps.signin.pool, token, &app_id, clock::unix_now())
        .await?;
    if principal.claims.client_id == app_id {
        return Err(oauth(
            OAuthCode::InvalidToken,
            "the token was not issued to an OAuth client",
        ));
    }
    Ok(principal)
}

/// The claims about the user of the presented access token, by its scope (which must have
/// `openid`). A DPoP-bound token needs its proof (RFC 9449 §7).
pub async fn userinfo(
    deps: Deps<'_>,
    app: &App,
    presented: &Presented<'_>,
) -> Result<Value, ProviderError> {
    let principal = client_token(deps, app, presented.token).await?;
    let cnf = principal.claims.cnf.as_ref().map(|c| c.jkt.as_str());
    let (pool, secrets) = (deps.signin.pool, deps.signin.secrets);
    dpop::check_binding(pool, secrets, app, presented, cnf, clock::unix_now()).await?;
    if !has_scope(&principal.claims.scope, "openid") {
        return Err(oauth(
            OAuthCode::InvalidToken,
            "the token's scope has no openid",
        ));
    }
    let db = deps.signin.pool.get().await?;
    let user = users::find(&db, app.id, principal.sub)
        .await?
        .ok_or_else(|| oauth(OAuthCode::InvalidToken, "the user is gone"))?;
    Ok(user_claims(&user, &principal.claims.scope))
}

/// What a confidential `client` learns about `token` (RFC 7662 §2.2): an access token of
/// the application, or a refresh token of the client itself; anything else is inactive.
pub async fn introspect(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    token: &str,
) -> Result<Value, ProviderError> {
    if !client.confidential {
        return Err(oauth(
            OAuthCode::UnauthorizedClient,
            "introspection is for confidential clients",
        ));
    }
    if let Ok(p) = deps
        .tokens
        .authenticate(
            deps.signin.keys,
            deps.signin.pool,
            token,
            &app.id.to_string(),
            clock::unix_now(),
        )
        .await
    {
        let c = &p.claims;
        // RFC 9449 §6.2: a bound token's answer says so, with the key.
        let token_type = if c.cnf.is_some() { "DPoP" } else { "Bearer" };
        let mut answer = json!({
            "active": true, "token_type": token_type, "scope": c.scope, "client_id": c.client_id,
            "sub": c.sub, "aud": c.aud, "iss": c.iss, "exp": c.exp, "iat": c.iat, "jti": c.jti,
            "sid": c.sid,
        });
        if let Some(cnf) = &c.cnf {
            answer["cnf"] = json!({ "jkt": cnf.jkt });
        }
        return Ok(answer);
    }
    let db = deps.signin.pool.get().await?;
    let now = clock::at(clock::unix_now());
    let found = sessions::presented_in(&db, app.id, &digest(token), Some(client.id), now).await?;
    Ok(match found {
        Some(f) if f.live && f.used_at.is_none() => json!({
            "active": true, "token_type": "refresh_token", "client_id": client.id.to_string(),
            "sub": f.user.to_string(), "scope": f.scope.unwrap_or_default(),
            "iss": issuer(deps.public_url, app.id), "sid": f.sid.to_string(),
        }),
        _ => json!({ "active": false }),
    })
}

/// Revokes `token` for `client` (RFC 7009): its refresh token, or an access token issued
/// to it, ends the session behind it. Unknown tokens are no error.
pub async fn revoke(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    token: &str,
    ctx: &Ctx,
) -> Result<(), ProviderError> {
    let db = deps.signin.pool.get().await?;
    let now = clock::at(ctx.now);
    let by_refresh = sessions::presented_in(&db, app.id, &digest(token), Some(client.id), now)
        .await?
        .map(|f| (f.user, f.sid));
    drop(db);
    let target = match by_refresh {
        Some(found) => Some(found),
        None => match client_token(deps, app, token).await {
            Ok(p) if p.claims.client_id == client.id.to_string() => Some((p.sub, p.sid)),
            _ => None,
        },
    };
    if let Some((user, session)) = target {
        let which = Which::One { user, session };
        session::revoke(deps.signin, app.id, &which, "oauth_revocation", ctx).await?;
    }
    Ok(())
}

/// An RP-initiated logout request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogoutRequest {
    pub id_token_hint: Option<String>,
    pub client_id: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
}

/// Where a logout ends.
#[derive(Debug)]
pub enum LoggedOut {
    /// Back to the client's registered post-logout URI.
    Redirect(String),
    /// A page saying so (no redirect asked for, or none registered).
    Page,
}

/// The client a logout names: `client_id`, or the `aud` of the ID token hint. The hint is
/// only used to choose among that client's registered URIs, so its signature is not what
/// protects anything here: the browser's own cookie decides what is signed out.
fn named_client(r: &LogoutRequest) -> Option<String> {
    if let Some(id) = &r.client_id {
        return Some(id.clone());
    }
    let payload = r.id_token_hint.as_deref()?.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["aud"].as_str().map(str::to_owned)
}

/// Signs the browser out of the provider: its browser session ends, and every session
/// opened from it is revoked (its tokens refused by the verifiers).
pub async fn logout(
    deps: Deps<'_>,
    app: &App,
    r: &LogoutRequest,
    browser: Option<&BrowserSession>,
    ctx: &Ctx,
) -> Result<LoggedOut, ProviderError> {
    let db = deps.signin.pool.get().await?;
    let redirect = match (&r.post_logout_redirect_uri, named_client(r)) {
        (Some(uri), Some(client_id)) => {
            let client = clients::by_client_id(&db, app.id, &client_id).await?;
            if !client.is_some_and(|c| c.post_logout_redirect_uris.contains(uri)) {
                return Err(oauth(
                    OAuthCode::InvalidRequest,
                    "post_logout_redirect_uri is not one the client registered",
                ));
            }
            Some(uri.clone())
        }
        (Some(_), None) => {
            return Err(oauth(
                OAuthCode::InvalidRequest,
                "post_logout_redirect_uri needs client_id or id_token_hint",
            ));
        }
        (None, _) => None,
    };
    drop(db);
    if let Some(browser) = browser {
        end_browser_session(deps, app, browser.id, browser.user, ctx).await?;
    }
    Ok(match redirect {
        Some(uri) => {
            let mut params = Vec::new();
            if let Some(state) = &r.state {
                params.push(("state", state.as_str()));
            }
            LoggedOut::Redirect(if params.is_empty() {
                uri
            } else {
                super::authorize::with_query(&uri, &params)
            })
        }
        None => LoggedOut::Page,
    })
}

async fn end_browser_session(
    deps: Deps<'_>,
    app: &App,
    id: Uuid,
    user: Uuid,
    ctx: &Ctx,
) -> Result<(), ProviderError> {
    let mut db = deps.signin.pool.get().await?;
    let tx = db.transaction().await?;
    authorizations::end_browser_session_in(&tx, id, ctx.now).await?;
    let ended = sessions::revoke_bound_in(&tx, Bound::ProviderSession(id), ctx.now).await?;
    let sessions: Vec<Uuid> = ended.iter().map(|e| e.revoked.session).collect();
    let details = json!({ "reason": "provider_logout", "sessions": sessions });
    audit::record(
        &tx,
        Event::by_user(app.id, user, "session.revoked", details, ctx),
    )
    .await?;
    // Each client that had a session here and takes back-channel logouts gets a token.
    let mut told = Vec::new();
    for client in ended.iter().filter_map(|e| e.client) {
        if told.contains(&client) {
            continue;
        }
        told.push(client);
        if let Some(Some(_)) = clients::backchannel_uri(&tx, client).await? {
            let token = logout_token(deps, app, client, user, id, ctx.now).await?;
            let body = json!({ "logout_token": token });
            let to = client.to_string();
            let kind = "backchannel_logout";
            outbox::enqueue_call(&tx, app.id, "backchannel", kind, &to, &body).await?;
        }
    }
    tx.commit().await?;
    drop(db);
    if !told.is_empty() {
        deps.signin.outbox.wake_webhooks();
    }
    let revoked: Vec<_> = ended.into_iter().map(|e| e.revoked).collect();
    sessions::publish_sessions(deps.signin.publisher, &revoked).await;
    Ok(())
}
