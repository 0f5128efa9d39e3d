//! The public end-user routes of an application (API.md §3): register, login (JSON or HTTP
//! Basic), guest, refresh, logout and token introspection.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis_common::ErrorCode;
use portcullis_common::token::{AccessTokenClaims, Amr};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JsonBody, auth, cookies, created};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::mailings::Mailing;
use crate::domain::passwords;
use crate::domain::sessions::{self, Subject, Which};
use crate::domain::tokens::{self, Tokens};
use crate::domain::users::{self, Changes, NewUser, UserView, canonical, check_device};
use crate::error::{ApiError, ApiResult, Problem};
use crate::flows::mfa::{self, SignIn};
use crate::infra::crypto::random_token;
use crate::infra::limits::Scope;
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

/// Loads the live application and counts this request against its per-IP limit.
pub(super) async fn app_for(
    state: &AppState,
    app: &str,
    route: &str,
    ctx: &Ctx,
) -> Result<Arc<App>, ApiError> {
    let app = state.apps.live(&state.pool, app, ctx.now).await?;
    let app_id = app.id.to_string();
    state
        .limiter
        .hit(
            Scope::Ip {
                app: &app_id,
                route,
                ip: ctx.ip,
            },
            app.settings.rate_limits.per_ip_per_minute,
        )
        .await?;
    Ok(app)
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
    device_id: Option<String>,
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
#[utoipa::path(post, path = "/v1/apps/{app}/register", tag = "users", params(("app" = String, Path)),
    request_body = Registration,
    responses((status = 201, body = Registered), (status = 409, description = "user_exists", body = Problem),
              (status = 422, description = "weak_password", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn register(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Registration>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "register", &ctx).await?;
    let token = captcha_token(body.captcha_token.as_deref(), &headers);
    state
        .captcha
        .check(app.id, app.settings.captcha.as_ref(), token, ctx.ip)
        .await?;
    let profile = Changes::profile(
        Some(&body.email),
        body.username.as_deref(),
        body.phone.as_deref(),
    )?;
    let device = check_device(body.device_id.as_deref())?;
    let password = match &body.password {
        Some(p) => {
            passwords::check_new(
                p,
                &app.settings.password_policy,
                &[
                    profile.email.as_deref().unwrap_or(""),
                    profile.username.as_deref().unwrap_or(""),
                ],
            )?;
            p.clone()
        }
        None => random_token(32),
    };
    let mut mailings = Vec::new();
    if body.options.verify_email {
        mailings.push(Mailing::EmailVerification);
    }
    if body.password.is_none() && body.options.send_reset_email {
        mailings.push(Mailing::SetPassword);
    }
    let new = NewUser {
        email: profile.email,
        username: profile.username,
        phone: profile.phone,
        password_hash: state.hasher.hash(&password).await?,
        active: true,
        ..NewUser::default()
    };
    let (user, tokens) = sessions::start(
        &state,
        &app,
        Subject::New(&new, &mailings),
        device.as_deref(),
        &ctx,
        vec![Amr::Pwd],
    )
    .await?;
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
    device_id: Option<String>,
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
pub(super) fn maybe_cookies(
    response: Response,
    set_cookie: bool,
    state: &AppState,
    app: &App,
    tokens: &Tokens,
) -> Response {
    if set_cookie {
        cookies::with_cookies(response, &state.config.public_url, app, tokens)
    } else {
        response
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(super) struct SignInOptions {
    /// Also set the tokens as `HttpOnly; Secure; SameSite=Lax` cookies.
    #[serde(default)]
    pub(super) set_cookie: bool,
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
#[utoipa::path(post, path = "/v1/apps/{app}/login", tag = "users", params(("app" = String, Path)),
    request_body = Login,
    responses((status = 200, body = SignIn),
              (status = 401, description = "invalid_credentials", body = Problem),
              (status = 403, description = "user_disabled", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Login>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "login", &ctx).await?;
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
    let device = check_device(body.device_id.as_deref())?;
    // Oversized or NUL-bearing passwords are refused like wrong ones, before any hashing.
    if passwords::check_shape(&password).is_err() || login.len() > 320 {
        return Err(ApiError::invalid_credentials());
    }
    let client = state.pool.get().await?;
    let user = users::find_by_login(&client, app.id, &login).await?;
    drop(client);
    // Failures count against the account, whichever identifier named it (email or
    // username); an unknown identifier is counted as itself.
    let app_id = app.id.to_string();
    let account = user
        .as_ref()
        .map_or_else(|| canonical(&login), |u| u.id.to_string());
    let failures = Scope::AccountFailures {
        app: &app_id,
        account: &account,
    };
    let ip_failures = Scope::LoginFailuresIp {
        app: &app_id,
        ip: ctx.ip,
    };
    if let Some(captcha) = &app.settings.captcha {
        // Unknown counts (Redis down) ask for the CAPTCHA rather than skip it.
        let due = |n: Option<u64>| n.is_none_or(|n| n >= u64::from(captcha.login_after_failures));
        if due(state.limiter.count(failures).await) || due(state.limiter.count(ip_failures).await) {
            let token = captcha_token(body.captcha_token.as_deref(), &headers);
            state
                .captcha
                .check(app.id, app.settings.captcha.as_ref(), token, ctx.ip)
                .await?;
        }
    }
    state
        .limiter
        .hit(
            failures,
            app.settings.rate_limits.per_account_failures_per_hour,
        )
        .await?;
    let hash = user
        .as_ref()
        .filter(|u| !u.guest)
        .map(|u| u.password_hash.as_str());
    let verified = state.hasher.verify(hash, &password).await?;
    let named = user.as_ref().map(|u| u.id);
    let (Some(user), true) = (user, verified) else {
        metrics::counter!("portcullis_logins_total", "outcome" => "failed").increment(1);
        if app.settings.captcha.is_some() {
            state.limiter.hit(ip_failures, u32::MAX).await?;
        }
        // The account it named, if any; never the identifier or the password tried.
        let client = state.pool.get().await?;
        let failed = Event {
            app: Some(app.id),
            user: named,
            actor: Actor::Anonymous,
            event: "login.failed",
            details: serde_json::Value::Null,
            ctx: &ctx,
        };
        audit::record(&client, failed).await?;
        return Err(ApiError::invalid_credentials());
    };
    state.limiter.forgive(failures).await;
    let signed_in =
        mfa::after_first_factor(&state, &app, &user, vec![Amr::Pwd], device.as_deref(), &ctx)
            .await?;
    let outcome = match signed_in {
        SignIn::Tokens(_) => "ok",
        SignIn::Mfa(_) => "mfa_required",
    };
    metrics::counter!("portcullis_logins_total", "outcome" => outcome).increment(1);
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
    device_id: Option<String>,
}

/// A new guest user (no email, no password) and its session.
#[utoipa::path(post, path = "/v1/apps/{app}/guest", tag = "users", params(("app" = String, Path)),
    request_body = NewGuest, responses((status = 201, body = Tokens), (status = 429, body = Problem)))]
async fn guest(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<NewGuest>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "guest", &ctx).await?;
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 100 || n.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("name must be at most 100 characters"));
    }
    let device = check_device(body.device_id.as_deref())?;
    let new = NewUser {
        // "!" is no Argon2 hash: no password ever matches a guest.
        password_hash: "!".to_owned(),
        active: true,
        guest: true,
        display_name: name.map(str::to_owned),
        ..NewUser::default()
    };
    let (_, tokens) = sessions::start(
        &state,
        &app,
        Subject::New(&new, &[]),
        device.as_deref(),
        &ctx,
        vec![Amr::Guest],
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
#[utoipa::path(post, path = "/v1/apps/{app}/token/refresh", tag = "users", params(("app" = String, Path)),
    request_body = RefreshRequest,
    responses((status = 200, body = Tokens),
              (status = 401, description = "invalid_refresh_token or refresh_token_reused", body = Problem)))]
async fn refresh(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "refresh", &ctx).await?;
    let from_cookie = cookies::cookie(&headers, &app.settings.cookies.refresh_name);
    let presented = body
        .refresh_token
        .as_deref()
        .or_else(|| tokens::bearer(&headers))
        .or(from_cookie)
        .ok_or_else(|| ApiError::bad_request("refresh_token is required"))?;
    // A refresh by cookie answers with cookies, and its body leaves the refresh token out:
    // it never leaves its HttpOnly cookie.
    let by_cookie = body.refresh_token.is_none() && tokens::bearer(&headers).is_none();
    let tokens = sessions::refresh(&state, &app, presented, &ctx).await?;
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
#[utoipa::path(post, path = "/v1/apps/{app}/logout", tag = "users", params(("app" = String, Path)),
    request_body = RefreshRequest,
    responses((status = 200, body = LoggedOut), (status = 401, body = Problem)))]
async fn logout(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Response> {
    let app = state.apps.live(&state.pool, &app, ctx.now).await?;
    let client = state.pool.get().await?;
    // The body's refresh token, a bearer access token, or the cookies (refresh first).
    let refresh_cookie = tokens::bearer(&headers)
        .is_none()
        .then(|| cookies::cookie(&headers, &app.settings.cookies.refresh_name))
        .flatten();
    let (session, user) = match body.refresh_token.as_deref().or(refresh_cookie) {
        Some(refresh) => {
            let found = sessions::session_of_refresh(&client, app.id, refresh).await?;
            drop(client);
            found.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRefreshToken,
                    "the refresh token is invalid or expired",
                )
            })?
        }
        None => {
            drop(client);
            let p = auth::user(&state, &headers, &app, ctx.now).await?;
            (p.sid, p.sub)
        }
    };
    sessions::revoke(
        &state,
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
#[utoipa::path(post, path = "/v1/apps/{app}/verify", tag = "users", params(("app" = String, Path)),
    responses((status = 200, body = Introspection),
              (status = 401, description = "token_expired, invalid_signature, token_revoked or invalid_token", body = Problem)))]
async fn verify(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Introspection>> {
    let app = state.apps.live(&state.pool, &app, ctx.now).await?;
    let principal = auth::user(&state, &headers, &app, ctx.now).await?;
    Ok(Json(Introspection {
        valid: true,
        claims: principal.claims,
    }))
}
