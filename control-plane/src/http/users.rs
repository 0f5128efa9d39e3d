//! The public end-user routes of an application (API.md §3): register, login (JSON or HTTP
//! Basic), guest, refresh, logout and token introspection.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis_common::ErrorCode;
use portcullis_common::token::AccessTokenClaims;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{
    Dpop, JsonBody, LiveApp, PublicApp, RequestTarget, UserToken, authorization, bearer, cookie,
    route, user_principal,
};
use super::{SignInOptions, cookies, created};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::sessions::{self, Which};
use crate::domain::tokens::Tokens;
use crate::domain::users::UserView;
use crate::flows::signin::{SignIn, password, session};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(guest))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(verify))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct RegisterOptions {
    #[serde(default)]
    verify_email: bool,
    #[serde(default)]
    set_cookie: bool,
    #[serde(default)]
    send_reset_email: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct Registration {
    email: String,
    password: Option<String>,
    username: Option<String>,
    phone: Option<String>,
    device_id: Option<super::DeviceId>,
    #[serde(default)]
    options: RegisterOptions,
    /// The CAPTCHA provider's response token, when the application requires one (or the
    /// `x-captcha-token` header).
    captcha_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Registered {
    user: UserView,
    tokens: Tokens,
}

/// A new user and their first session. No password: a random one is set, and with
/// `send_reset_email` a mail lets the user choose one. `verify_email` mails a link that
/// confirms the address.
#[utoipa::path(post, path = "/v1/apps/{app}/register", operation_id = "register", tag = "users", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = Registration,
    responses((status = 201, body = Registered), (status = 409, description = "user_exists", body = Problem),
              (status = 422, description = "weak_password", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn register(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::Register>,
    Dpop(dpop): Dpop,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Registration>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let registration = password::Registration {
        email: &body.email,
        password: body.password.as_deref(),
        username: body.username.as_deref(),
        phone: body.phone.as_deref(),
        device_id: body.device_id.as_ref().map(super::DeviceId::as_str),
        verify_email: body.options.verify_email,
        send_reset_email: body.options.send_reset_email,
        captcha_token: captcha_token(body.captcha_token.as_deref(), &headers),
    };
    let (user, tokens) = password::register(state.signin(), &app, &registration, &ctx).await?;
    let response = created(Registered {
        user: user.view(),
        tokens: tokens.clone(),
    });
    Ok(maybe_cookies(
        response,
        body.options.set_cookie,
        &state,
        &app,
        &tokens,
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct Login {
    email: Option<String>,
    username: Option<String>,
    password: Option<String>,
    device_id: Option<super::DeviceId>,
    /// Needed once the address or the account has had failed sign-ins, when the
    /// application has a CAPTCHA provider (or the `x-captcha-token` header).
    captcha_token: Option<String>,
    #[serde(default)]
    options: SignInOptions,
}

/// The CAPTCHA response token: the body's `captcha_token`, else `x-captcha-token`.
fn captcha_token<'a>(body: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    body.or_else(|| headers.get("x-captcha-token")?.to_str().ok())
}

/// `response`, with the tokens as cookies when `set_cookie`.
fn maybe_cookies(
    response: Response,
    set_cookie: bool,
    state: &AppState,
    app: &App,
    tokens: &Tokens,
) -> Response {
    cookies::maybe(response, set_cookie, &state.config.public_url, app, tokens)
}

/// `Authorization: Basic base64(login:password)`.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (login, password) = decoded.split_once(':')?;
    Some((login.to_owned(), password.to_owned()))
}

/// Sign in with email or username and password (JSON or HTTP Basic). A user with a second
/// factor (or any user, under an application's `required` MFA policy) gets a step-up
/// (`mfa_required`, `mfa_token`, `methods`) to complete at `/login/mfa`.
#[utoipa::path(post, path = "/v1/apps/{app}/login", operation_id = "login", tag = "users", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = Login,
    responses((status = 200, body = SignIn),
              (status = 400, description = "use_dpop_nonce: retry with the DPoP-Nonce header's nonce", body = Problem),
              (status = 401, description = "invalid_credentials, or invalid_dpop_proof", body = Problem),
              (status = 403, description = "user_disabled", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::Login>,
    Dpop(dpop): Dpop,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Login>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let set_cookie = body.options.set_cookie;
    let (login, password) = match (basic(&headers), body.password) {
        (Some(pair), _) => pair,
        (None, Some(password)) => {
            let login = body
                .email
                .or(body.username)
                .ok_or_else(|| ApiError::bad_request("email or username is required"))?;
            (login, password)
        }
        (None, None) => return Err(ApiError::bad_request("password is required")),
    };
    let attempt = password::Attempt {
        login: &login,
        password: &password,
        device_id: body.device_id.as_ref().map(super::DeviceId::as_str),
        captcha_token: captcha_token(body.captcha_token.as_deref(), &headers),
    };
    let signed_in = password::login(state.signin(), &app, &attempt, &ctx).await?;
    Ok(match &signed_in {
        SignIn::Tokens(tokens) => {
            let tokens = tokens.clone();
            maybe_cookies(
                Json(signed_in).into_response(),
                set_cookie,
                &state,
                &app,
                &tokens,
            )
        }
        SignIn::Mfa(_) => Json(signed_in).into_response(),
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct NewGuest {
    name: Option<String>,
    device_id: Option<super::DeviceId>,
}

/// A new guest user (no email, no password) and its session.
#[utoipa::path(post, path = "/v1/apps/{app}/guest", operation_id = "createGuest", tag = "users", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = NewGuest, responses((status = 201, body = Tokens), (status = 429, body = Problem)))]
async fn guest(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::Guest>,
    Dpop(dpop): Dpop,
    JsonBody(body): JsonBody<NewGuest>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let tokens = password::guest(
        state.signin(),
        &app,
        body.name.as_deref(),
        body.device_id.as_ref().map(super::DeviceId::as_str),
        &ctx,
    )
    .await?;
    Ok(created(tokens))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct RefreshRequest {
    refresh_token: Option<String>,
    #[serde(default)]
    options: SignInOptions,
}

/// Exchange a refresh token for a new pair; the presented token is used up.
#[utoipa::path(post, path = "/v1/apps/{app}/token/refresh", operation_id = "refreshTokens", tag = "users", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = RefreshRequest,
    responses((status = 200, body = Tokens),
              (status = 400, description = "use_dpop_nonce: retry with the DPoP-Nonce header's nonce", body = Problem),
              (status = 401, description = "invalid_refresh_token, refresh_token_reused, or invalid_dpop_proof (a token bound to a DPoP key needs a proof by it)", body = Problem)))]
async fn refresh(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::Refresh>,
    Dpop(dpop): Dpop,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let from_cookie = cookie(&headers, &app.settings.cookies.refresh_name);
    let presented = body
        .refresh_token
        .as_deref()
        .or_else(|| bearer(&headers))
        .or(from_cookie)
        .ok_or_else(|| ApiError::bad_request("refresh_token is required"))?;
    // A refresh by cookie answers with cookies, and its body leaves the refresh token out:
    // it never leaves its HttpOnly cookie.
    let by_cookie = body.refresh_token.is_none() && bearer(&headers).is_none();
    let tokens = session::refresh(state.signin(), &app, presented, None, &ctx).await?;
    let mut shown = tokens.clone();
    if by_cookie {
        shown.refresh_token.clear();
    }
    let response = Json(shown).into_response();
    Ok(maybe_cookies(
        response,
        body.options.set_cookie || by_cookie,
        &state,
        &app,
        &tokens,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LoggedOut {
    logged_out: bool,
    session_id: Uuid,
}

/// End a session, by its refresh token or one of its access tokens.
#[utoipa::path(post, path = "/v1/apps/{app}/logout", operation_id = "logout", tag = "users", params(("app" = String, Path)),
    request_body = RefreshRequest,
    responses((status = 200, body = LoggedOut), (status = 401, body = Problem)))]
async fn logout(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    target: RequestTarget,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Response> {
    // The body's refresh token, an access token, or the cookies (refresh first).
    let refresh_cookie = authorization(&headers)
        .is_none()
        .then(|| cookie(&headers, &app.settings.cookies.refresh_name))
        .flatten();
    let (session, user) = match body.refresh_token.as_deref().or(refresh_cookie) {
        Some(refresh) => {
            let client = state.pool.get().await?;
            let found = sessions::session_of_refresh(&client, app.id, refresh).await?;
            found.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRefreshToken,
                    "the refresh token is invalid or expired",
                )
            })?
        }
        None => {
            let p = user_principal(&state, &headers, &target, &app).await?;
            (p.sid, p.sub)
        }
    };
    session::revoke(
        state.signin(),
        app.id,
        &Which::One { user, session },
        "logout",
        &ctx,
    )
    .await?;
    let response = Json(LoggedOut {
        logged_out: true,
        session_id: session,
    })
    .into_response();
    Ok(cookies::cleared(response, &state.config.public_url, &app))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Introspection {
    valid: bool,
    #[schema(value_type = Object)]
    claims: AccessTokenClaims,
}

/// Check an access token the way the verifier does, with PostgreSQL's revocations.
#[utoipa::path(post, path = "/v1/apps/{app}/verify", operation_id = "verifyAccessToken", tag = "users", params(("app" = String, Path)),
    responses((status = 200, body = Introspection),
              (status = 401, description = "token_expired, invalid_signature, token_revoked or invalid_token", body = Problem)))]
async fn verify(token: UserToken) -> ApiResult<Json<Introspection>> {
    Ok(Json(Introspection {
        valid: true,
        claims: token.principal.claims,
    }))
}
