//! The OAuth endpoints besides the authorization endpoint: token, UserInfo,
//! introspection, revocation, and RP-initiated logout.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{SESSION_COOKIE, cookie_path, no_store, oauth_error};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::dpop::Presented;
use crate::flows::provider::authorize;
use crate::flows::provider::endpoints::{self, LoggedOut, LogoutRequest};
use crate::flows::provider::token::{self, ClientAuth, TokenRequest, TokenResponse};
use crate::flows::provider::{OAuthCode, ProviderError};
use crate::http::error::ApiResult;
use crate::http::error::challenge;
use crate::http::extract::{
    LiveApp, RequestTarget, authorization, cookie, dpop_header, limit_ip, token_proof,
};
use crate::http::pages::page;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token_endpoint))
        .routes(routes!(userinfo_get, userinfo_post))
        .routes(routes!(introspect))
        .routes(routes!(revoke))
        .routes(routes!(logout))
}

/// Client authentication from the headers and the form.
fn client_auth<'a>(
    headers: &HeaderMap,
    client_id: Option<&'a str>,
    secret: Option<&'a str>,
) -> Result<ClientAuth<'a>, ProviderError> {
    let basic = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) if value.len() > 6 && value[..6].eq_ignore_ascii_case("basic ") => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before the Base64.
            let decoded = STANDARD
                .decode(value[6..].trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| {
                    let (id, secret) = d.split_once(':')?;
                    let decode = |s: &str| {
                        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                            .ok()
                            .and_then(|mut v| v.pop())
                            .map(|(_, v)| v)
                    };
                    Some((decode(id)?, decode(secret)?))
                })
                .ok_or_else(|| {
                    crate::flows::provider::oauth(
                        OAuthCode::InvalidClient,
                        "malformed Basic credentials",
                    )
                })?;
            Some(decoded)
        }
        _ => None,
    };
    Ok(ClientAuth {
        basic,
        client_id,
        client_secret: secret,
    })
}

/// The client authenticating a request (HTTP Basic, or its id and secret in the form).
async fn authenticated(
    state: &AppState,
    app: &App,
    headers: &HeaderMap,
    client_id: &Option<String>,
    client_secret: &Option<String>,
) -> Result<crate::domain::clients::Client, ProviderError> {
    let auth = client_auth(headers, client_id.as_deref(), client_secret.as_deref())?;
    token::authenticate_client(state.provider(), app, &auth).await
}

/// The token endpoint: `authorization_code` (with PKCE), `refresh_token`,
/// `client_credentials`.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth2/token", operation_id = "providerToken", tag = "provider",
    params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse),
              (status = 400, description = "RFC 6749 §5.2 error: invalid_grant, invalid_request, unsupported_grant_type, ...", body = Object),
              (status = 401, description = "invalid_client", body = Object)))]
async fn token_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    target: RequestTarget,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<TokenRequest>,
) -> Response {
    let deps = state.provider();
    let result = async {
        limit_ip(&state, &app, "provider-token", &ctx)
            .await
            .map_err(|_| {
                crate::flows::provider::oauth(
                    OAuthCode::InvalidRequest,
                    "too many requests; slow down",
                )
            })?;
        // RFC 9449 §5: the proof first; its refusal is an OAuth error like any other.
        let dpop = token_proof(&state, &app, &headers, &target).await?;
        let ctx = ctx.with_dpop(dpop);
        let client =
            authenticated(&state, &app, &headers, &form.client_id, &form.client_secret).await?;
        token::exchange(deps, &app, &client, &form, &ctx).await
    }
    .await;
    match result {
        Ok(tokens) => {
            let mut response = Json(tokens).into_response();
            no_store(&mut response);
            response
        }
        Err(e) => oauth_error(e),
    }
}

async fn userinfo(
    state: &AppState,
    app: &App,
    headers: &HeaderMap,
    target: &RequestTarget,
) -> Response {
    let Some((token, scheme)) = authorization(headers) else {
        return bearer_error("invalid_token", "an access token is required");
    };
    let proof = match dpop_header(headers) {
        Ok(proof) => proof,
        Err(e) => return dpop_error(ProviderError::from(e)),
    };
    let presented = Presented {
        token,
        scheme,
        proof,
        endpoint: target.endpoint(&state.config.public_url),
    };
    match endpoints::userinfo(state.provider(), app, &presented).await {
        Ok(claims) => Json(claims).into_response(),
        Err(e @ ProviderError::OAuth(OAuthCode::InvalidDpopProof | OAuthCode::UseDpopNonce, _)) => {
            dpop_error(e)
        }
        Err(ProviderError::OAuth(_, why)) => bearer_error("invalid_token", &why),
        Err(e) => oauth_error(e),
    }
}

/// A refused DPoP proof at a resource (RFC 9449 §7.1, §9): 401 with the DPoP challenge.
fn dpop_error(e: ProviderError) -> Response {
    let ProviderError::OAuth(code, _) = e else {
        return oauth_error(e);
    };
    let code = match code {
        OAuthCode::UseDpopNonce => portcullis_common::ErrorCode::UseDpopNonce,
        _ => portcullis_common::ErrorCode::InvalidDpopProof,
    };
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    if let Some(value) = challenge(code) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn bearer_error(error: &str, description: &str) -> Response {
    let challenge = format!(
        "Bearer error=\"{error}\", error_description=\"{}\"",
        description.replace('"', "'")
    );
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// UserInfo (OIDC Core 5.3): the claims the access token's scope allows.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth2/userinfo", operation_id = "providerUserinfo", tag = "provider",
    params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "With a DPoP-bound token (Authorization: DPoP): its proof (RFC 9449)")),
    responses((status = 200, body = Object), (status = 401, description = "WWW-Authenticate: Bearer error=\"invalid_token\"")))]
async fn userinfo_get(
    State(state): State<AppState>,
    LiveApp(app): LiveApp,
    target: RequestTarget,
    headers: HeaderMap,
) -> Response {
    userinfo(&state, &app, &headers, &target).await
}

/// UserInfo by POST (OIDC Core 5.3.1).
#[utoipa::path(post, path = "/v1/apps/{app}/oauth2/userinfo", operation_id = "providerUserinfoPost", tag = "provider",
    params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "With a DPoP-bound token (Authorization: DPoP): its proof (RFC 9449)")),
    responses((status = 200, body = Object), (status = 401, description = "WWW-Authenticate: Bearer error=\"invalid_token\"")))]
async fn userinfo_post(
    State(state): State<AppState>,
    LiveApp(app): LiveApp,
    target: RequestTarget,
    headers: HeaderMap,
) -> Response {
    userinfo(&state, &app, &headers, &target).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct TokenForm {
    token: Option<String>,
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// Token introspection (RFC 7662), for confidential clients.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth2/introspect", operation_id = "providerIntrospect", tag = "provider",
    params(("app" = String, Path)),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "`{active, ...}`", body = Object), (status = 401, description = "invalid_client", body = Object)))]
async fn introspect(
    State(state): State<AppState>,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<TokenForm>,
) -> Response {
    let deps = state.provider();
    let _ = &form.token_type_hint;
    let result = async {
        let client =
            authenticated(&state, &app, &headers, &form.client_id, &form.client_secret).await?;
        endpoints::introspect(deps, &app, &client, form.token.as_deref().unwrap_or("")).await
    }
    .await;
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => oauth_error(e),
    }
}

/// Token revocation (RFC 7009): a refresh token or an access token of the client; the
/// session behind it ends. Unknown tokens answer 200 too.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth2/revoke", operation_id = "providerRevoke", tag = "provider",
    params(("app" = String, Path)),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "revoked (or unknown)"), (status = 401, description = "invalid_client", body = Object)))]
async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<TokenForm>,
) -> Response {
    let deps = state.provider();
    let result = async {
        let client =
            authenticated(&state, &app, &headers, &form.client_id, &form.client_secret).await?;
        endpoints::revoke(
            deps,
            &app,
            &client,
            form.token.as_deref().unwrap_or(""),
            &ctx,
        )
        .await
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oauth_error(e),
    }
}

/// RP-initiated logout: the browser's sign-in at the provider ends, with every session
/// opened from it; then back to a registered `post_logout_redirect_uri`, or a page.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth2/logout", operation_id = "providerLogout", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 303, description = "to the registered post_logout_redirect_uri"),
              (status = 200, description = "signed out", content_type = "text/html")))]
async fn logout(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    Query(request): Query<LogoutRequest>,
) -> ApiResult<Response> {
    let deps = state.provider();
    let browser =
        authorize::browser(deps, app.id, cookie(&headers, SESSION_COOKIE), ctx.now).await?;
    let outcome = endpoints::logout(deps, &app, &request, browser.as_ref(), &ctx).await;
    let mut response = match outcome {
        Ok(LoggedOut::Redirect(to)) => Redirect::to(&to).into_response(),
        Ok(LoggedOut::Page) => page(
            StatusCode::OK,
            "Signed out",
            &format!("You are signed out of {}.", app.name),
            None,
        ),
        Err(ProviderError::OAuth(_, why)) => {
            page(StatusCode::BAD_REQUEST, "Invalid request", &why, None)
        }
        Err(e) => return Err(e.into()),
    };
    let clear = format!(
        "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
        cookie_path(&app)
    );
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}
