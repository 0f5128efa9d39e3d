//! Social login (API.md §3 `/oauth/*`): authorize, callback, the code exchange, and
//! linking and unlinking a provider. The flow itself is `crate::flows::oauth`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use super::cookies::cookie;
use super::me::signed_in;
use super::users::{SignInOptions, app_for, maybe_cookies};
use crate::domain::Ctx;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::one_time::{self, Purpose};
use crate::domain::providers::ProviderKind;
use crate::domain::users;
use crate::error::{ApiError, ApiResult, Problem};
use crate::flows::mfa::{self, Proof, SignIn};
use crate::flows::oauth::{self, Answer};
use crate::state::AppState;
use portcullis_common::token::Amr;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(callback_get, callback_post))
        .routes(routes!(exchange))
        .routes(routes!(link, unlink))
        .routes(routes!(link_confirm))
}

/// The cookie binding a flow to the browser that started it: `__Host-` (Secure, Path=/,
/// no Domain), so a sibling subdomain cannot plant one; one per application and provider.
fn binding_cookie(app: uuid::Uuid, provider: &str) -> String {
    format!("__Host-portcullis_oauth_{}_{provider}", app.simple())
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct AuthorizeQuery {
    /// Where the browser returns (exactly one of `allowed_redirect_uris`).
    redirect_uri: Option<String>,
    /// The application's own value, returned as `state` on the redirect.
    state: Option<String>,
    /// A link ticket from `POST /oauth/{provider}/link`.
    link: Option<String>,
    /// The application's own PKCE challenge (S256) for the code it will exchange:
    /// recommended, so a code stolen on its way back is useless.
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

fn found(location: &str) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(location)
        .map_err(|_| ApiError::bad_request("the redirect target is not a valid URL"))?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(response)
}

/// Sends the browser to the provider (`302`), with `state`, PKCE S256 and a `nonce`.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth/{provider}/authorize", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path), AuthorizeQuery),
    responses((status = 302, description = "to the provider"),
              (status = 400, description = "redirect_uri not allowed", body = Problem),
              (status = 404, description = "no such provider", body = Problem),
              (status = 503, description = "the provider is unreachable", body = Problem)))]
async fn authorize(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((app, provider)): Path<(String, String)>,
    Query(query): Query<AuthorizeQuery>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "oauth-authorize", &ctx).await?;
    let p = oauth::provider(&app, &provider)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    // A link: the ticket names the user, the redirect URI and the state.
    let (link_user, redirect_uri, client_state) = match &query.link {
        Some(ticket) => {
            let found = one_time::consume_in(&tx, app.id, Purpose::OauthLink, ticket, ctx.now)
                .await?
                .filter(|f| f.data.get("provider").and_then(|v| v.as_str()) == Some(&p.name))
                .ok_or_else(|| {
                    ApiError::new(
                        portcullis_common::ErrorCode::TokenExpiredOrUsed,
                        "the link ticket is unknown, expired or already used",
                    )
                })?;
            let text = |k: &str| {
                found
                    .data
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            (Some(found.user), text("redirect_uri"), text("state"))
        }
        None => (None, query.redirect_uri.clone(), query.state.clone()),
    };
    let redirect_uri =
        redirect_uri.ok_or_else(|| ApiError::bad_request("redirect_uri is required"))?;
    if query.code_challenge.is_some()
        && query.code_challenge_method.as_deref().unwrap_or("S256") != "S256"
    {
        return Err(ApiError::bad_request("code_challenge_method must be S256"));
    }
    let started = oauth::start(
        &tx,
        &state.oauth,
        &state.config.public_url,
        &app,
        p,
        &redirect_uri,
        client_state.as_deref(),
        query.code_challenge.as_deref(),
        link_user,
        ctx.now,
    )
    .await?;
    tx.commit().await?;
    let mut response = found(&started.location)?;
    // Apple posts its answer cross-site (form_post): only SameSite=None comes along.
    let same_site = if p.kind == ProviderKind::Apple {
        "None"
    } else {
        "Lax"
    };
    let cookie = format!(
        "{}={}; Path=/; Max-Age=600; HttpOnly; Secure; SameSite={same_site}",
        binding_cookie(app.id, &p.name),
        started.binding
    );
    let cookie = HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

/// Finishes at the callback and clears the binding cookie.
async fn land(
    state: AppState,
    ctx: Ctx,
    headers: HeaderMap,
    app: String,
    provider: String,
    answer: Answer,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "oauth-callback", &ctx).await?;
    let p = oauth::provider(&app, &provider)?;
    let name = binding_cookie(app.id, &p.name);
    let binding = cookie(&headers, &name);
    let location = oauth::callback(&state, &app, p, &answer, binding, &ctx).await?;
    let mut response = found(&location)?;
    let clear = format!("{name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax");
    let clear = HeaderValue::from_str(&clear).map_err(|e| ApiError::internal(&e))?;
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

/// The provider's redirect target: signs in, creates or links the user, then `302` to
/// the `redirect_uri` with a one-time `code` (or `linked`, or `error`).
#[utoipa::path(get, path = "/v1/apps/{app}/oauth/{provider}/callback", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 302, description = "back to the application"),
              (status = 400, description = "invalid_state", body = Problem)))]
async fn callback_get(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, provider)): Path<(String, String)>,
    Query(answer): Query<Answer>,
) -> ApiResult<Response> {
    land(state, ctx, headers, app, provider, answer).await
}

/// The same, for providers that post their answer (`response_mode=form_post`).
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/callback", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 302, description = "back to the application"),
              (status = 400, description = "invalid_state", body = Problem)))]
async fn callback_post(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, provider)): Path<(String, String)>,
    axum::extract::Form(answer): axum::extract::Form<Answer>,
) -> ApiResult<Response> {
    land(state, ctx, headers, app, provider, answer).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ExchangeBody {
    code: String,
    /// Required when `/authorize` was given a `code_challenge`.
    code_verifier: Option<String>,
    device_id: Option<String>,
    #[serde(default)]
    options: SignInOptions,
}

/// Trades the callback's one-time code (60 s, single use) for the usual sign-in answer:
/// tokens with `amr: ["oauth"]`, or a step-up when the user has a second factor.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/exchange", tag = "oauth", params(("app" = String, Path)),
    request_body = ExchangeBody,
    responses((status = 200, body = SignIn),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn exchange(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<ExchangeBody>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "oauth-exchange", &ctx).await?;
    let device = users::check_device(body.device_id.as_deref())?;
    let client = state.pool.get().await?;
    let user = oauth::exchange(
        &client,
        app.id,
        &body.code,
        body.code_verifier.as_deref(),
        ctx.now,
    )
    .await?;
    let user = users::find(&client, app.id, user)
        .await?
        .ok_or_else(ApiError::invalid_credentials)?;
    let signed_in = mfa::after_first_factor(
        &state,
        &app,
        &user,
        vec![Amr::Oauth],
        device.as_deref(),
        &ctx,
    )
    .await?;
    // Recorded once the outcome is known (a step-up is not a sign-in yet).
    let event = match &signed_in {
        SignIn::Tokens(_) => "login.succeeded",
        SignIn::Mfa(_) => "login.mfa_required",
    };
    audit::record(
        &client,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event,
            details: json!({ "method": "oauth" }),
            ctx: &ctx,
        },
    )
    .await?;
    drop(client);
    let response = Json(&signed_in).into_response();
    Ok(match &signed_in {
        SignIn::Tokens(tokens) => {
            metrics::counter!("portcullis_logins_total", "outcome" => "ok").increment(1);
            maybe_cookies(response, body.options.set_cookie, &state, &app, tokens)
        }
        SignIn::Mfa(_) => response,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct LinkBody {
    /// Where the browser returns once linked (exactly one of `allowed_redirect_uris`).
    redirect_uri: String,
    state: Option<String>,
    /// Needed unless the session signed in within the last 15 minutes.
    #[serde(flatten)]
    proof: Proof,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LinkStart {
    /// Open this in the browser (a top-level navigation): it goes to the provider, and
    /// back to `redirect_uri` with `linked={provider}` or `error`.
    authorization_url: String,
    expires_in: i64,
}

/// Starts linking `provider` to the signed-in user. Like enrolling a factor, it needs a
/// sign-in within the last 15 minutes, or the password or a second-factor code.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/link", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    request_body = LinkBody,
    responses((status = 200, body = LinkStart),
              (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn link(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, provider)): Path<(String, String)>,
    JsonBody(body): JsonBody<LinkBody>,
) -> ApiResult<Json<LinkStart>> {
    let (app, principal, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let p = oauth::provider(&app, &provider)?;
    if !app.settings.redirect_allowed(&body.redirect_uri) {
        return Err(ApiError::bad_request(
            "redirect_uri is not one of the application's allowed_redirect_uris",
        ));
    }
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    mfa::recent_or_proof_in(&tx, &state, &app, &user, principal.sid, &body.proof, &ctx).await?;
    let ticket = one_time::issue_in(
        &tx,
        app.id,
        user.id,
        Purpose::OauthLink,
        json!({ "provider": p.name, "redirect_uri": body.redirect_uri, "state": body.state }),
        ctx.now,
    )
    .await?;
    tx.commit().await?;
    let base = format!(
        "{}/v1/apps/{}/oauth/{}/authorize",
        state.config.public_url, app.id, p.name
    );
    let query = serde_urlencoded::to_string([("link", ticket.as_str())])
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(LinkStart {
        authorization_url: format!("{base}?{query}"),
        expires_in: Purpose::OauthLink.ttl(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ConfirmBody {
    /// The `link_code` the callback sent back to the redirect URI.
    code: String,
}

/// Finishes a link: the `link_code` from the callback, with the session of the user who
/// asked for the link (single use, 60 s). A link URL opened in someone else's browser
/// therefore links nothing.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/link/confirm", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    request_body = ConfirmBody,
    responses((status = 200, description = "linked"),
              (status = 409, description = "identity_linked", body = Problem),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn link_confirm(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, provider)): Path<(String, String)>,
    JsonBody(body): JsonBody<ConfirmBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let (app, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let p = oauth::provider(&app, &provider)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    oauth::confirm_link(&tx, app.id, p, user.id, &body.code, &ctx).await?;
    tx.commit().await?;
    Ok(Json(json!({ "linked": true, "provider": p.name })))
}

/// Unlinks `provider` from the signed-in user; never the last way to sign in.
#[utoipa::path(delete, path = "/v1/apps/{app}/oauth/{provider}/link", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 204, description = "unlinked"),
              (status = 403, description = "the last way to sign in", body = Problem),
              (status = 404, body = Problem)))]
async fn unlink(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, provider)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (app, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    oauth::unlink(&tx, app.id, &user, &provider, &ctx).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
