//! Passkey routes (API.md §3 "Passkeys"): register (signed in), sign in (public), the
//! user's list, rename and delete, and the page that runs the browser ceremony.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Dpop, JsonBody, LiveApp, PublicApp, SignedIn, route};
use super::pages::locked_down;
use super::{DeviceId, SignInOptions, cookies, created};
use crate::domain::Ctx;
use crate::domain::audit::Actor;
use crate::domain::messages::escape;
use crate::domain::passkeys::PasskeyView;
use crate::domain::tokens::Tokens;
use crate::flows::mfa::proof::Proof;
use crate::flows::passkeys::{Options, manage, register};
use crate::flows::signin::passkey as signin;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_begin))
        .routes(routes!(register_finish))
        .routes(routes!(list))
        .routes(routes!(rename, delete))
        .routes(routes!(login_begin))
        .routes(routes!(login_finish))
        .routes(routes!(page))
        .route("/v1/passkeys.js", axum::routing::get(script))
}

/// Begin adding a passkey. Within 15 minutes of signing in nothing else is needed; later,
/// the `current_password` or a second-factor `code`.
#[utoipa::path(post, path = "/v1/apps/{app}/passkeys/register/begin", operation_id = "beginPasskeyRegistration", tag = "passkeys",
    params(("app" = String, Path)),
    request_body = Proof,
    responses((status = 200, body = Options),
              (status = 400, description = "invalid_request: passkeys are off", body = Problem),
              (status = 401, description = "invalid_credentials: sign in again or give the password", body = Problem)))]
async fn register_begin(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(proof): JsonBody<Proof>,
) -> ApiResult<Json<Options>> {
    let options = register::begin(
        state.mfa(),
        &me.app,
        &me.user,
        me.principal.sid,
        &proof,
        &ctx,
    )
    .await?;
    Ok(Json(options))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct RegisterFinish {
    ceremony_id: String,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON (binary
    /// members base64url).
    #[schema(value_type = Object)]
    credential: RegisterPublicKeyCredential,
    /// A name for the user to tell their passkeys apart (default "Passkey").
    name: Option<String>,
}

/// Finish adding a passkey with the authenticator's answer.
#[utoipa::path(post, path = "/v1/apps/{app}/passkeys/register/finish", operation_id = "finishPasskeyRegistration", tag = "passkeys",
    params(("app" = String, Path)),
    request_body = RegisterFinish,
    responses((status = 201, body = PasskeyView),
              (status = 400, description = "invalid_request (refused answer) or invalid_state (ceremony unknown, expired or used)", body = Problem)))]
async fn register_finish(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(body): JsonBody<RegisterFinish>,
) -> ApiResult<Response> {
    let passkey = register::finish(
        state.mfa(),
        &me.app,
        &me.user,
        &body.ceremony_id,
        &body.credential,
        body.name.as_deref(),
        &ctx,
    )
    .await?;
    Ok(created(passkey))
}

/// The signed-in user's passkeys.
#[utoipa::path(get, path = "/v1/apps/{app}/passkeys", operation_id = "listPasskeys", tag = "passkeys",
    params(("app" = String, Path)),
    responses((status = 200, body = Vec<PasskeyView>), (status = 401, body = Problem)))]
async fn list(State(state): State<AppState>, me: SignedIn) -> ApiResult<Json<Vec<PasskeyView>>> {
    Ok(Json(manage::list(state.mfa(), me.user.id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct Rename {
    name: String,
}

fn passkey_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("passkey"))
}

/// Rename one of the signed-in user's passkeys.
#[utoipa::path(patch, path = "/v1/apps/{app}/passkeys/{id}", operation_id = "renamePasskey", tag = "passkeys",
    params(("app" = String, Path), ("id" = String, Path)),
    request_body = Rename,
    responses((status = 204, description = "renamed"), (status = 404, body = Problem)))]
async fn rename(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Rename>,
) -> ApiResult<StatusCode> {
    let id = passkey_id(&id)?;
    manage::rename(state.mfa(), &me.app, me.user.id, id, &body.name, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete one of the signed-in user's passkeys; refused when it is the last way to sign in.
/// Sessions stay (end them with `DELETE /sessions`).
#[utoipa::path(delete, path = "/v1/apps/{app}/passkeys/{id}", operation_id = "deletePasskey", tag = "passkeys",
    params(("app" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"),
              (status = 403, description = "forbidden: the last way to sign in", body = Problem),
              (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = passkey_id(&id)?;
    manage::delete(state.mfa(), &me.app, me.user.id, id, Actor::User, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct LoginBegin {
    /// Limits the sign-in to this account's passkeys; with neither, any passkey of the
    /// application may answer (discoverable, as in autofill).
    email: Option<String>,
    username: Option<String>,
}

/// Begin a passkey sign-in. Without an account the authenticator offers its passkeys for
/// this site; add `mediation: "conditional"` to the options for autofill.
#[utoipa::path(post, path = "/v1/apps/{app}/passkeys/login/begin", operation_id = "beginPasskeyLogin", tag = "passkeys",
    params(("app" = String, Path)),
    request_body = LoginBegin,
    responses((status = 200, body = Options),
              (status = 400, description = "invalid_request: passkeys are off", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn login_begin(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::PasskeyBegin>,
    JsonBody(body): JsonBody<LoginBegin>,
) -> ApiResult<Json<Options>> {
    let login = body.email.or(body.username);
    let options = signin::begin(state.signin(), &app, login.as_deref(), &ctx).await?;
    Ok(Json(options))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct LoginFinish {
    ceremony_id: String,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.
    #[schema(value_type = Object)]
    credential: PublicKeyCredential,
    device_id: Option<DeviceId>,
    #[serde(default)]
    options: SignInOptions,
}

/// Finish a passkey sign-in: tokens as `/login` answers them (`amr`: `hwk` or `swk`, and
/// `mfa`: user verification is required).
#[utoipa::path(post, path = "/v1/apps/{app}/passkeys/login/finish", operation_id = "finishPasskeyLogin", tag = "passkeys",
    params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = LoginFinish,
    responses((status = 200, body = Tokens),
              (status = 400, description = "invalid_state: ceremony unknown, expired or used", body = Problem),
              (status = 401, description = "invalid_credentials", body = Problem),
              (status = 403, description = "user_disabled", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn login_finish(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::PasskeyFinish>,
    Dpop(dpop): Dpop,
    JsonBody(body): JsonBody<LoginFinish>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let device = body.device_id.as_ref().map(DeviceId::as_str);
    let tokens = signin::finish(
        state.signin(),
        &app,
        &body.ceremony_id,
        &body.credential,
        device,
        &ctx,
    )
    .await?;
    let response = Json(tokens.clone()).into_response();
    Ok(cookies::maybe(
        response,
        body.options.set_cookie,
        &state.config.public_url,
        &app,
        &tokens,
    ))
}

/// A page that runs the passkey ceremonies in the browser (sign in, add a passkey, a
/// passkey as second factor): for trying passkeys out, and for the tests. Serve it from an
/// origin in the application's `passkeys.origins`.
#[utoipa::path(get, path = "/v1/apps/{app}/passkeys/page", operation_id = "passkeyPage", tag = "passkeys",
    params(("app" = String, Path)),
    responses((status = 200, description = "the page", content_type = "text/html"), (status = 404, body = Problem)))]
async fn page(LiveApp(app): LiveApp) -> Response {
    let title = format!("{}: passkeys", app.name);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title></head><body data-app=\"{app}\"><main><h1>{t}</h1>\
         <form><label>Email <input id=\"login\" autocomplete=\"username webauthn\"></label>\
         <label>Password <input id=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
         <button id=\"password-signin\">Sign in with the password</button>\
         <button id=\"passkey-named\">Sign in with a passkey for this email</button>\
         <button id=\"passkey-signin\">Sign in with a passkey</button></form>\
         <form><label>Passkey name <input id=\"name\"></label>\
         <button id=\"passkey-add\">Add a passkey</button></form>\
         <h2>Answer</h2><output id=\"result\" aria-live=\"polite\"></output></main>\
         <script src=\"/v1/passkeys.js\"></script></body></html>",
        t = escape(&title),
        app = app.id,
    );
    let mut response = (StatusCode::OK, html).into_response();
    locked_down(&mut response, "text/html; charset=utf-8", CSP);
    response
}

/// Only this origin's script and requests.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

async fn script() -> Response {
    let mut response = (StatusCode::OK, include_str!("passkeys.js")).into_response();
    locked_down(&mut response, "text/javascript; charset=utf-8", CSP);
    response
}
