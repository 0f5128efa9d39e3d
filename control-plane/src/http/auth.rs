//! Who is calling: the four auth kinds of API.md §3 (operator, owner, API key, user).

use axum::http::HeaderMap;
use portcullis_common::ErrorCode;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::domain::apps::{self, APP_COLUMNS, App};
use crate::domain::tokens::{self, OWNER_AUDIENCE, Principal};
use crate::error::ApiError;
use crate::infra::crypto::digest;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    tokens::bearer(headers).ok_or_else(|| ApiError::unauthenticated(ErrorCode::MissingToken))
}

/// A user's access token for `app`: `Authorization: Bearer`, or else the application's
/// access cookie (state-changing cookie requests passed the CSRF guard on the way in).
pub(super) async fn user(
    state: &AppState,
    headers: &HeaderMap,
    app: &App,
    now: i64,
) -> Result<Principal, ApiError> {
    let token = match bearer(headers) {
        Ok(token) => token,
        Err(missing) => {
            super::cookies::cookie(headers, &app.settings.cookies.access_name).ok_or(missing)?
        }
    };
    tokens::authenticate(state, token, &app.id.to_string(), now).await
}

/// An owner's access token; returns the owner id.
pub(super) async fn owner(
    state: &AppState,
    headers: &HeaderMap,
    now: i64,
) -> Result<Uuid, ApiError> {
    Ok(
        tokens::authenticate(state, bearer(headers)?, OWNER_AUDIENCE, now)
            .await?
            .sub,
    )
}

/// The owner of application `app_id`, or its API key. An owner reaches an expired
/// application (to extend it); an API key does not.
pub(super) async fn app_admin(
    state: &AppState,
    headers: &HeaderMap,
    app_id: &str,
    now: i64,
) -> Result<App, ApiError> {
    let credential = bearer(headers)?;
    let client = state.pool.get().await?;
    if credential.matches('.').count() == 2 {
        drop(client);
        let owner = owner(state, headers, now).await?;
        return owned_app(state, owner, app_id).await;
    }
    let Ok(id) = app_id.parse::<Uuid>() else {
        return Err(ApiError::app_not_found());
    };
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 AND api_key_hash = $2");
    match client.q_opt(&sql, &[&id, &digest(credential)]).await? {
        Some(row) => {
            let app = App::from_row(&row);
            if app.expired(now) {
                Err(ApiError::app_not_found())
            } else {
                Ok(app)
            }
        }
        None => {
            // Unknown application and wrong key answer alike: a key never probes for ids.
            Err(ApiError::unauthenticated(ErrorCode::InvalidCredentials))
        }
    }
}

/// Application `app_id` if `owner` owns it; `404 app_not_found` otherwise.
pub(super) async fn owned_app(
    state: &AppState,
    owner: Uuid,
    app_id: &str,
) -> Result<App, ApiError> {
    let client = state.pool.get().await?;
    match apps::find(&client, app_id).await? {
        Some(app) if app.owner_id == owner => Ok(app),
        _ => Err(ApiError::app_not_found()),
    }
}

/// `Authorization: Bearer $PORTCULLIS_ADMIN_TOKEN`, compared in constant time.
pub(super) fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = bearer(headers)?;
    let expected = state.config.admin_token.as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError::invalid_credentials())
    }
}
