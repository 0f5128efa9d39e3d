//! The token endpoint (RFC 6749 §3.2, OIDC Core 3.1.3): an authorization code with its
//! PKCE verifier, a refresh token (rotated with reuse detection, as the application's own
//! refresh), or a machine client's own credentials.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Deps, IdToken, OAuthCode, ProviderError, has_scope, id_token, oauth};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::authorizations::{self, Presented};
use crate::domain::clients::{self, Client};
use crate::domain::sessions::{self, Which};
use crate::domain::tokens::{self, Grant, token_type};
use crate::domain::users;
use crate::flows::signin::SignInError;
use crate::flows::signin::session::{self, ForClient};
use crate::infra::crypto::pkce_challenge;

/// How a client authenticated: HTTP Basic (`client_secret_basic`, already form-decoded),
/// or `client_id` (and `client_secret`, `client_secret_post`) in the body.
#[derive(Debug, Default)]
pub struct ClientAuth<'a> {
    pub basic: Option<(String, String)>,
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a str>,
}

/// The client making a request at the token, introspection or revocation endpoint.
/// A confidential client must present its secret; a public one must not have one.
pub async fn authenticate_client(
    deps: Deps<'_>,
    app: &App,
    auth: &ClientAuth<'_>,
) -> Result<Client, ProviderError> {
    let (id, secret) = match (&auth.basic, auth.client_secret) {
        (Some(_), Some(_)) => {
            return Err(oauth(
                OAuthCode::InvalidRequest,
                "use one client authentication method, not two",
            ));
        }
        (Some((id, secret)), None) => (id.as_str(), Some(secret.as_str())),
        (None, secret) => (auth.client_id.unwrap_or(""), secret),
    };
    let unknown = || oauth(OAuthCode::InvalidClient, "client authentication failed");
    let db = deps.signin.pool.get().await?;
    let client = clients::by_client_id(&db, app.id, id)
        .await?
        .ok_or_else(unknown)?;
    match (client.confidential, secret) {
        (true, Some(secret)) if client.secret_matches(secret) => Ok(client),
        (false, None) => Ok(client),
        (false, Some(_)) => Err(oauth(
            OAuthCode::InvalidClient,
            "a public client has no secret to present",
        )),
        _ => Err(unknown()),
    }
}

/// A token request's parameters (form-encoded).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1, OIDC Core 3.1.3.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Answers a token request of the authenticated `client`.
pub async fn exchange(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    r: &TokenRequest,
    ctx: &Ctx,
) -> Result<TokenResponse, ProviderError> {
    let grant = r.grant_type.as_deref().unwrap_or("");
    if !clients::GRANT_TYPES.contains(&grant) {
        return Err(oauth(
            OAuthCode::UnsupportedGrantType,
            "grant_type must be authorization_code, refresh_token or client_credentials",
        ));
    }
    if !client.allows_grant(grant) {
        return Err(oauth(
            OAuthCode::UnauthorizedClient,
            format!("the client may not use the {grant} grant"),
        ));
    }
    match grant {
        "authorization_code" => code(deps, app, client, r, ctx).await,
        "refresh_token" => refresh(deps, app, client, r, ctx).await,
        _ => client_credentials(deps, app, client, r, ctx).await,
    }
}

fn invalid_grant(why: &str) -> ProviderError {
    oauth(OAuthCode::InvalidGrant, why)
}

/// Whether `verifier` (RFC 7636 §4.1: 43..=128 unreserved characters) hashes to
/// `challenge` under S256.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shaped = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    shaped && pkce_challenge(verifier) == challenge
}

async fn code(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    r: &TokenRequest,
    ctx: &Ctx,
) -> Result<TokenResponse, ProviderError> {
    let secret = r.code.as_deref().unwrap_or("");
    let mut db = deps.signin.pool.get().await?;
    let tx = db.transaction().await?;
    let presented = authorizations::use_code_in(&tx, client.id, secret, ctx.now).await?;
    if let Presented::Fresh(code) = &presented
        && code.dpop_jkt.is_some()
        && code.dpop_jkt != ctx.dpop
    {
        // RFC 9449 §10: the code is the key's alone. Rolled back: it stays usable.
        drop(tx);
        return Err(oauth(
            OAuthCode::InvalidDpopProof,
            "the code is bound to a DPoP key: send a DPoP proof by that key",
        ));
    }
    tx.commit().await?;
    let code = match presented {
        Presented::Fresh(code) => *code,
        Presented::Replayed(session) => {
            // A code used twice: what its first use opened is revoked (RFC 6749 §4.1.2).
            if let Some(session) = session {
                let user = sessions::user_of(&db, session).await?;
                if let Some(user) = user {
                    let which = Which::One { user, session };
                    session::revoke(deps.signin, app.id, &which, "code_replayed", ctx).await?;
                }
            }
            return Err(invalid_grant("the code was already used"));
        }
        Presented::Unknown => return Err(invalid_grant("the code is unknown or expired")),
    };
    if r.redirect_uri.as_deref() != Some(code.redirect_uri.as_str()) {
        return Err(invalid_grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    match (&code.code_challenge, r.code_verifier.as_deref()) {
        (Some(challenge), Some(verifier)) if pkce_matches(verifier, challenge) => {}
        (None, None) => {}
        (Some(_), _) => return Err(invalid_grant("the PKCE code_verifier does not match")),
        (None, Some(_)) => {
            return Err(invalid_grant(
                "a code_verifier for a request without code_challenge",
            ));
        }
    }
    let user = users::find(&db, app.id, code.user)
        .await?
        .ok_or_else(|| invalid_grant("the user is gone"))?;
    drop(db);
    let for_client = ForClient {
        client,
        scope: &code.scope,
        provider_session: code.provider_session,
    };
    let amr = code.amr.clone();
    let tokens = session::start_for_client(deps.signin, app, &user, for_client, ctx, amr)
        .await
        .map_err(grant_refused)?;
    let db = deps.signin.pool.get().await?;
    authorizations::opened_in(&db, secret, tokens.session_id).await?;
    drop(db);
    let id_token = if has_scope(&code.scope, "openid") {
        let t = IdToken {
            app,
            client,
            user: &user,
            scope: &code.scope,
            nonce: code.nonce.as_deref(),
            amr: &code.amr,
            auth_time: code.auth_time.unix_timestamp(),
            sid: code.provider_session,
            ttl: tokens.expires_in,
        };
        Some(id_token(deps, &t, ctx.now).await?)
    } else {
        None
    };
    Ok(TokenResponse {
        access_token: tokens.access_token,
        token_type: tokens.token_type,
        expires_in: tokens.expires_in,
        refresh_token: client
            .allows_grant("refresh_token")
            .then_some(tokens.refresh_token),
        id_token,
        scope: Some(code.scope),
    })
}

/// A sign-in refusal at the token endpoint is the grant's.
fn grant_refused(e: SignInError) -> ProviderError {
    match e {
        SignInError::InvalidRefreshToken
        | SignInError::RefreshTokenReused
        | SignInError::UserDisabled
        | SignInError::InvalidCredentials => invalid_grant(&e.to_string()),
        SignInError::WrongDpopKey => oauth(OAuthCode::InvalidDpopProof, e.to_string()),
        other => other.into(),
    }
}

async fn refresh(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    r: &TokenRequest,
    ctx: &Ctx,
) -> Result<TokenResponse, ProviderError> {
    let presented = r.refresh_token.as_deref().unwrap_or("");
    let tokens = session::refresh(deps.signin, app, presented, Some(client), ctx)
        .await
        .map_err(grant_refused)?;
    Ok(TokenResponse {
        access_token: tokens.access_token,
        token_type: tokens.token_type,
        expires_in: tokens.expires_in,
        refresh_token: Some(tokens.refresh_token),
        id_token: None,
        scope: None,
    })
}

/// A machine client's own token: `sub` is the client, no user, no session, no refresh.
async fn client_credentials(
    deps: Deps<'_>,
    app: &App,
    client: &Client,
    r: &TokenRequest,
    ctx: &Ctx,
) -> Result<TokenResponse, ProviderError> {
    if !client.confidential {
        return Err(oauth(
            OAuthCode::UnauthorizedClient,
            "client_credentials is for confidential clients",
        ));
    }
    let user_scopes = ["openid", "profile", "email", "offline_access", "roles"];
    let allowed =
        |s: &&str| !user_scopes.contains(s) && client.scopes.iter().any(|allowed| allowed == *s);
    let scope: Vec<&str> = match r.scope.as_deref() {
        Some(asked) => asked.split(' ').filter(|s| !s.is_empty()).collect(),
        None => client.scopes.iter().map(String::as_str).collect(),
    };
    if r.scope.is_some() && !scope.iter().all(allowed) {
        return Err(oauth(
            OAuthCode::InvalidScope,
            "a scope asked for is not the client's",
        ));
    }
    let scope = scope
        .into_iter()
        .filter(allowed)
        .collect::<Vec<_>>()
        .join(" ");
    let ttl = client
        .access_token_ttl
        .map_or(app.settings.access_token_ttl, i64::from);
    let app_id = app.id.to_string();
    let grant = Grant {
        audience: &app_id,
        client_id: Some(client.id.to_string()),
        sub: client.id,
        sid: Uuid::now_v7(),
        roles: Vec::new(),
        scope: scope.clone(),
        amr: Vec::new(),
        guest: false,
        ttl,
        dpop: ctx.dpop,
    };
    let (access_token, _) =
        tokens::mint(deps.signin.keys, deps.signin.issuer, grant, ctx.now).await?;
    Ok(TokenResponse {
        access_token,
        token_type: token_type(ctx.dpop),
        expires_in: ttl,
        refresh_token: None,
        id_token: None,
        scope: Some(scope),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(&verifier.replace('d', "e"), challenge));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
    }
}
