//! Portcullis as an OpenID Provider (API.md §3 "OpenID Provider"): discovery, the
//! authorization endpoint and its pages, token, UserInfo, introspection, revocation and
//! logout, per application (issuer `{PUBLIC_URL}/v1/apps/{app}`).
//!
//! The OAuth endpoints answer errors as OAuth requires (RFC 6749 §5.2 JSON
//! `{error, error_description}`; RFC 6750 `WWW-Authenticate` at UserInfo), not as problem
//! documents: that is what every OAuth client reads. The pages ([`signin`]) are never
//! framed, and carry at most one script of this origin (the passkey button's).

mod endpoints;
mod signin;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, challenge};
use super::extract::LiveApp;
use super::pages::locked_down;
use crate::domain::apps::App;
use crate::domain::dpop;
use crate::flows::provider::{OAuthCode, ProviderError, issuer};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(discovery))
        .merge(signin::routes())
        .merge(endpoints::routes())
        .route(
            "/v1/provider-passkey.js",
            axum::routing::get(passkey_script),
        )
}

/// The sign-in page's passkey script.
async fn passkey_script() -> Response {
    let mut response = (StatusCode::OK, include_str!("passkey.js")).into_response();
    locked_down(
        &mut response,
        "text/javascript; charset=utf-8",
        "default-src 'none'; frame-ancestors 'none'",
    );
    response
}

/// The browser's sign-in at the provider (an opaque secret; SSO across clients).
pub(super) const SESSION_COOKIE: &str = "portcullis_op";
pub(super) fn cookie_path(app: &App) -> String {
    format!("/v1/apps/{}/oauth2", app.id)
}

fn endpoint(state: &AppState, app: &App, path: &str) -> String {
    format!("{}{path}", issuer(&state.config.public_url, app.id))
}

/// The provider's metadata (OpenID Connect Discovery 1.0, RFC 8414).
#[utoipa::path(get, path = "/v1/apps/{app}/.well-known/openid-configuration", operation_id = "providerDiscovery", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 200, description = "the provider's metadata", body = Object)))]
async fn discovery(State(state): State<AppState>, LiveApp(app): LiveApp) -> Json<Value> {
    let public = state.config.public_url.trim_end_matches('/');
    let auth_methods = ["client_secret_basic", "client_secret_post", "none"];
    Json(json!({
        "issuer": issuer(&state.config.public_url, app.id),
        "authorization_endpoint": endpoint(&state, &app, "/oauth2/authorize"),
        "token_endpoint": endpoint(&state, &app, "/oauth2/token"),
        "userinfo_endpoint": endpoint(&state, &app, "/oauth2/userinfo"),
        "introspection_endpoint": endpoint(&state, &app, "/oauth2/introspect"),
        "revocation_endpoint": endpoint(&state, &app, "/oauth2/revoke"),
        "end_session_endpoint": endpoint(&state, &app, "/oauth2/logout"),
        "jwks_uri": format!("{public}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access", "roles"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "sid",
                             "email", "email_verified", "name", "preferred_username", "roles"],
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": false,
        "dpop_signing_alg_values_supported": dpop::ALGS.split(' ').collect::<Vec<_>>(),
    }))
}

/// An OAuth error as JSON (RFC 6749 §5.2), or, for anything else, the problem document.
pub(super) fn oauth_error(e: ProviderError) -> Response {
    match e {
        ProviderError::OAuth(code, description) => {
            let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let body = json!({"error": code.as_str(), "error_description": description});
            let mut response = (status, Json(body)).into_response();
            let challenge = match code {
                OAuthCode::InvalidClient => {
                    Some(HeaderValue::from_static("Basic realm=\"portcullis\""))
                }
                // RFC 9449 §8: the nonce itself rides in `DPoP-Nonce` (http/mod.rs).
                OAuthCode::UseDpopNonce => challenge(ErrorCode::UseDpopNonce),
                OAuthCode::InvalidDpopProof => challenge(ErrorCode::InvalidDpopProof),
                _ => None,
            };
            if let Some(value) = challenge {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            no_store(&mut response);
            response
        }
        other => ApiError::from(other).into_response(),
    }
}

pub(super) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}
