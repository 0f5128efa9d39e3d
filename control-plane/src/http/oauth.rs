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

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Dpop, JsonBody, PublicApp, SignedIn, cookie, route};
use super::{SignInOptions, cookies};
use crate::domain::Ctx;
use crate::domain::one_time::Purpose;
use crate::domain::settings::providers::ProviderKind;
use crate::flows::mfa::Proof;
use crate::flows::oauth::{self, Answer, Authorize, Outcome};
use crate::flows::signin::SignIn;
use crate::state::AppState;

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
#[utoipa::path(get, path = "/v1/apps/{app}/oauth/{provider}/authorize", operation_id = "startOauth", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path), AuthorizeQuery),
    responses((status = 302, description = "to the provider"),
              (status = 400, description = "redirect_uri not allowed", body = Problem),
              (status = 404, description = "no such provider", body = Problem),
              (status = 503, description = "the provider is unreachable", body = Problem)))]
async fn authorize(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::OauthAuthorize>,
    Path((_, provider)): Path<(String, String)>,
    Query(params): Query<AuthorizeQuery>,
) -> ApiResult<Response> {
    let p = oauth::provider(&app, &provider)?;
    let ask = Authorize {
        redirect_uri: params.redirect_uri.as_deref(),
        state: params.state.as_deref(),
        link: params.link.as_deref(),
        code_challenge: params.code_challenge.as_deref(),
        code_challenge_method: params.code_challenge_method.as_deref(),
    };
    let started = oauth::start(state.oauth(), &app, p, &ask, ctx.now).await?;
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
    app: std::sync::Arc<crate::domain::apps::App>,
    headers: HeaderMap,
    provider: String,
    answer: Answer,
) -> ApiResult<Response> {
    let p = oauth::provider(&app, &provider)?;
    let name = binding_cookie(app.id, &p.name);
    let binding = cookie(&headers, &name);
    let landing = oauth::callback(state.oauth(), &app, p, &answer, binding, &ctx).await?;
    let back = &landing.back;
    let location = match landing.outcome {
        Outcome::SignedIn(code) => back.url(&[("code", &code)]),
        Outcome::LinkPending(code) => back.url(&[("link_code", &code)]),
        Outcome::Linked(name) => back.url(&[("linked", &name)]),
        Outcome::Denied(error) => {
            back.url(&[("error", "access_denied"), ("provider_error", &error)])
        }
        Outcome::Refused(e) => {
            let e = ApiError::from(e);
            tracing::info!(provider = %p.name, code = %e.code, detail = %e.detail, "social sign-in refused");
            back.url(&[("error", e.code.as_str())])
        }
    };
    let mut response = found(&location)?;
    let clear = format!("{name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax");
    let clear = HeaderValue::from_str(&clear).map_err(|e| ApiError::internal(&e))?;
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

/// The provider's redirect target: signs in, creates or links the user, then `302` to
/// the `redirect_uri` with a one-time `code` (or `linked`, or `error`).
#[utoipa::path(get, path = "/v1/apps/{app}/oauth/{provider}/callback", operation_id = "oauthCallback", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 302, description = "back to the application"),
              (status = 400, description = "invalid_state", body = Problem)))]
async fn callback_get(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::OauthCallback>,
    headers: HeaderMap,
    Path((_, provider)): Path<(String, String)>,
    Query(answer): Query<Answer>,
) -> ApiResult<Response> {
    land(state, ctx, app, headers, provider, answer).await
}

/// The same, for providers that post their answer (`response_mode=form_post`).
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/callback", operation_id = "oauthCallbackFormPost", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 302, description = "back to the application"),
              (status = 400, description = "invalid_state", body = Problem)))]
async fn callback_post(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::OauthCallback>,
    headers: HeaderMap,
    Path((_, provider)): Path<(String, String)>,
    axum::extract::Form(answer): axum::extract::Form<Answer>,
) -> ApiResult<Response> {
    land(state, ctx, app, headers, provider, answer).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ExchangeBody {
    code: String,
    /// Required when `/authorize` was given a `code_challenge`.
    code_verifier: Option<String>,
    device_id: Option<super::DeviceId>,
    #[serde(default)]
    options: SignInOptions,
}

/// Trades the callback's one-time code (60 s, single use) for the usual sign-in answer:
/// tokens with `amr: ["oauth"]`, or a step-up when the user has a second factor.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/exchange", operation_id = "exchangeOauthCode", tag = "oauth", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = ExchangeBody,
    responses((status = 200, body = SignIn),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn exchange(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::OauthExchange>,
    Dpop(dpop): Dpop,
    JsonBody(body): JsonBody<ExchangeBody>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let signed_in = oauth::exchange(
        state.signin(),
        &app,
        &body.code,
        body.code_verifier.as_deref(),
        body.device_id.as_ref().map(super::DeviceId::as_str),
        &ctx,
    )
    .await?;
    let response = Json(&signed_in).into_response();
    Ok(match &signed_in {
        SignIn::Tokens(tokens) => cookies::maybe(
            response,
            body.options.set_cookie,
            &state.config.public_url,
            &app,
            tokens,
        ),
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
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/link", operation_id = "startOauthLink", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    request_body = LinkBody,
    responses((status = 200, body = LinkStart),
              (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn link(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, provider)): Path<(String, String)>,
    JsonBody(body): JsonBody<LinkBody>,
) -> ApiResult<Json<LinkStart>> {
    let p = oauth::provider(&me.app, &provider)?;
    let authorization_url = oauth::begin_link(
        state.oauth(),
        state.mfa(),
        &me.app,
        p,
        &me.user,
        me.principal.sid,
        &body.redirect_uri,
        body.state.as_deref(),
        &body.proof,
        &ctx,
    )
    .await?;
    Ok(Json(LinkStart {
        authorization_url,
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
#[utoipa::path(post, path = "/v1/apps/{app}/oauth/{provider}/link/confirm", operation_id = "confirmOauthLink", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    request_body = ConfirmBody,
    responses((status = 200, description = "linked"),
              (status = 409, description = "identity_linked", body = Problem),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn link_confirm(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, provider)): Path<(String, String)>,
    JsonBody(body): JsonBody<ConfirmBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = oauth::provider(&me.app, &provider)?;
    oauth::confirm_link(state.oauth(), &me.app, p, me.user.id, &body.code, &ctx).await?;
    Ok(Json(json!({ "linked": true, "provider": p.name })))
}

/// Unlinks `provider` from the signed-in user; never the last way to sign in.
#[utoipa::path(delete, path = "/v1/apps/{app}/oauth/{provider}/link", operation_id = "unlinkOauthIdentity", tag = "oauth",
    params(("app" = String, Path), ("provider" = String, Path)),
    responses((status = 204, description = "unlinked"),
              (status = 403, description = "the last way to sign in", body = Problem),
              (status = 404, body = Problem)))]
async fn unlink(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, provider)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    oauth::unlink(state.oauth(), me.app.id, &me.user, &provider, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
