//! Password reset, email verification and magic links (API.md §3), and the pages their
//! mailed links open.
//!
//! `/password/forgot` and `/magic-link` answer `202` alike for known and unknown addresses,
//! after the same work (one lookup): the token and its mail are made in a task of their
//! own, so neither the answer nor its timing tells whether an account exists.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{
    JsonBody, LiveApp, PublicApp, RequestTarget, Route as _, SignedIn, public_app, route,
    token_proof,
};
use super::pages::{Form, Submitted, answer, page, problem_page};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::mailings::Mailing;
use crate::domain::users::User;
use crate::flows::recovery;
use crate::flows::signin::SignIn;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(forgot))
        .routes(routes!(reset_check))
        .routes(routes!(reset_page, reset))
        .routes(routes!(verification_send))
        .routes(routes!(verify_page, verify_email))
        .routes(routes!(magic_link))
        .routes(routes!(magic_page, magic_verify))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Accepted {
    accepted: bool,
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(Accepted { accepted: true })).into_response()
}

/// Sends `mailing` to `user` in a task of its own (see the module docs).
fn mail_later(state: &AppState, app: Arc<App>, user: User, mailing: Mailing, ctx: &Ctx) {
    let (state, ctx) = (state.clone(), ctx.clone());
    tokio::spawn(async move {
        if let Err(e) = recovery::send(state.signin(), &app, &user, &mailing, &ctx).await {
            tracing::warn!(error = %e, "a requested mail was not queued");
        }
    });
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct Forgot {
    email: String,
}

/// Mail a single-use password-reset link (30 minutes). Always `202`.
#[utoipa::path(post, path = "/v1/apps/{app}/password/forgot", operation_id = "forgotPassword", tag = "recovery", params(("app" = String, Path)),
    request_body = Forgot,
    responses((status = 202, body = Accepted), (status = 429, description = "rate_limited", body = Problem)))]
async fn forgot(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::PasswordForgot>,
    JsonBody(body): JsonBody<Forgot>,
) -> ApiResult<Response> {
    if let Some(user) = recovery::recipient(state.signin(), &app, &body.email, &ctx).await? {
        mail_later(&state, app, user, Mailing::PasswordReset, &ctx);
    }
    Ok(accepted())
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Usable {
    valid: bool,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
}

/// Whether a reset token is still usable (it is not used up by asking).
#[utoipa::path(get, path = "/v1/apps/{app}/password/reset/{token}", operation_id = "checkResetToken", tag = "recovery",
    params(("app" = String, Path), ("token" = String, Path)),
    responses((status = 200, body = Usable), (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn reset_check(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    Path((_, token)): Path<(String, String)>,
) -> ApiResult<Json<Usable>> {
    let expires_at = recovery::reset_expiry(state.signin(), &app, &token, ctx.now).await?;
    Ok(Json(Usable {
        valid: true,
        expires_at,
    }))
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The page a reset mail links to: a form for the new password.
#[utoipa::path(get, path = "/v1/apps/{app}/password/reset", operation_id = "passwordResetPage", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn reset_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(params): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "password/reset",
        title: |app| format!("Choose a new {} password", app.name),
        message: "Every device signed in to your account will be signed out.",
        inputs: &[("new_password", "New password", "password")],
        button: "Set password",
    };
    page.render(&state, &ctx, &app, params).await
}

/// A page a mailed link opens: a form that posts the link's token (and `inputs`) to
/// `/v1/apps/{app}/{posts_to}`.
struct LinkPage {
    posts_to: &'static str,
    title: fn(&App) -> String,
    message: &'static str,
    inputs: &'static [(&'static str, &'static str, &'static str)],
    button: &'static str,
}

impl LinkPage {
    async fn render(&self, state: &AppState, ctx: &Ctx, app: &str, params: TokenQuery) -> Response {
        let app = match state.apps.live(&state.pool, app, ctx.now).await {
            Ok(app) => app,
            Err(e) => return problem_page(&e.into()),
        };
        let token = params.token.unwrap_or_default();
        // From configuration, as the mailed link: PUBLIC_URL may carry a path prefix.
        let action = format!(
            "{}/v1/apps/{}/{}",
            state.config.public_url, app.id, self.posts_to
        );
        page(
            StatusCode::OK,
            &(self.title)(&app),
            self.message,
            Some(Form {
                action: &action,
                hidden: &[("token", &token)],
                inputs: self.inputs,
                button: self.button,
            }),
        )
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct Reset {
    token: String,
    new_password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ResetDone {
    password_reset: bool,
}

/// Set a new password with a reset token: the token is used up, every session of the user
/// is revoked (their access tokens too), and the next sign-in still asks for a second
/// factor. Accepts JSON or the reset page's form.
#[utoipa::path(post, path = "/v1/apps/{app}/password/reset", operation_id = "resetPassword", tag = "recovery", params(("app" = String, Path)),
    request_body = Reset,
    responses((status = 200, body = ResetDone),
              (status = 410, description = "token_expired_or_used", body = Problem),
              (status = 422, description = "weak_password", body = Problem)))]
async fn reset(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    body: Submitted<Reset>,
) -> Response {
    let html = body.html;
    let done = reset_password(&state, &ctx, &app, body.body)
        .await
        .map(|()| ResetDone {
            password_reset: true,
        });
    answer(
        html,
        done,
        (
            "Password changed",
            "Your password was changed. Sign in again with the new one.",
        ),
    )
}

async fn reset_password(
    state: &AppState,
    ctx: &Ctx,
    app: &str,
    body: Reset,
) -> Result<(), ApiError> {
    let app = public_app(state, app, route::PasswordReset::NAME, ctx).await?;
    recovery::reset_password(state.signin(), &app, &body.token, &body.new_password, ctx).await?;
    Ok(())
}

/// Mail the signed-in user a link confirming their address (24 hours).
#[utoipa::path(post, path = "/v1/apps/{app}/email/verify/send", operation_id = "sendEmailVerification", tag = "recovery", params(("app" = String, Path)),
    responses((status = 202, body = Accepted), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn verification_send(
    State(state): State<AppState>,
    ctx: Ctx,
    SignedIn { app, user, .. }: SignedIn,
) -> ApiResult<Response> {
    recovery::send_verification(state.signin(), &app, &user, &ctx).await?;
    Ok(accepted())
}

/// The page a verification mail links to: one button that confirms.
#[utoipa::path(get, path = "/v1/apps/{app}/email/verify", operation_id = "emailVerificationPage", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn verify_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(params): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "email/verify",
        title: |_| "Confirm your email address".to_owned(),
        message: "Confirm that this address is yours.",
        inputs: &[],
        button: "Confirm",
    };
    page.render(&state, &ctx, &app, params).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct TokenBody {
    token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Verified {
    email_verified: bool,
}

/// Confirm an email address with the mailed token (JSON or the page's form).
#[utoipa::path(post, path = "/v1/apps/{app}/email/verify", operation_id = "verifyEmail", tag = "recovery", params(("app" = String, Path)),
    request_body = TokenBody,
    responses((status = 200, body = Verified), (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn verify_email(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    body: Submitted<TokenBody>,
) -> Response {
    let verified = async {
        let app = public_app(&state, &app, route::EmailVerify::NAME, &ctx).await?;
        recovery::verify_email(state.signin(), &app, &body.body.token, &ctx).await?;
        Ok::<_, ApiError>(())
    };
    let done = verified.await.map(|()| Verified {
        email_verified: true,
    });
    answer(
        body.html,
        done,
        (
            "Email address confirmed",
            "Thank you: your address is confirmed.",
        ),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct MagicRequest {
    email: String,
    /// Where the sign-in page sends the browser back to; must be one of the application's
    /// `allowed_redirect_uris`.
    redirect_uri: Option<String>,
}

/// Mail a single-use sign-in link (15 minutes). Always `202` for a well-formed request.
#[utoipa::path(post, path = "/v1/apps/{app}/magic-link", operation_id = "sendMagicLink", tag = "recovery", params(("app" = String, Path)),
    request_body = MagicRequest,
    responses((status = 202, body = Accepted),
              (status = 400, description = "redirect_uri not allowed", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn magic_link(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::MagicLink>,
    JsonBody(body): JsonBody<MagicRequest>,
) -> ApiResult<Response> {
    let redirect_uri = recovery::magic_redirect(&app, body.redirect_uri)?;
    if let Some(user) = recovery::recipient(state.signin(), &app, &body.email, &ctx).await? {
        mail_later(&state, app, user, Mailing::MagicLink { redirect_uri }, &ctx);
    }
    Ok(accepted())
}

/// The page a magic-link mail leads to: one button that signs in. A GET never uses the
/// token up, so a mail scanner following the link signs no one in.
#[utoipa::path(get, path = "/v1/apps/{app}/magic-link/verify", operation_id = "magicLinkPage", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn magic_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(params): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "magic-link/verify",
        title: |app| format!("Sign in to {}", app.name),
        message: "Continue to sign in with this link. It works once.",
        inputs: &[],
        button: "Sign in",
    };
    page.render(&state, &ctx, &app, params).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct MagicVerify {
    token: String,
    device_id: Option<super::DeviceId>,
}

/// Sign in with a magic-link token (`amr: ["magic"]`); a user with a second factor gets a
/// step-up instead of tokens. From the page's form, the browser is sent to the link's
/// `redirect_uri` with the result in the URL fragment (never sent to a server).
#[utoipa::path(post, path = "/v1/apps/{app}/magic-link/verify", operation_id = "signInWithMagicLink", tag = "recovery", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = MagicVerify,
    responses((status = 200, body = SignIn),
              (status = 303, description = "form post with a redirect_uri: back to it"),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn magic_verify(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    target: RequestTarget,
    headers: HeaderMap,
    body: Submitted<MagicVerify>,
) -> Response {
    let device = body.body.device_id.as_ref().map(super::DeviceId::as_str);
    let sent = Sent {
        token: &body.body.token,
        device,
        target: &target,
        headers: &headers,
    };
    match magic_sign_in(&state, ctx, &app, sent).await {
        Ok((signed_in, Some(redirect))) if body.html => {
            let fragment = match &signed_in {
                SignIn::Tokens(t) => format!(
                    "access_token={}&refresh_token={}&token_type={}&expires_in={}&session_id={}&user_id={}",
                    t.access_token,
                    t.refresh_token,
                    t.token_type,
                    t.expires_in,
                    t.session_id,
                    t.user_id
                ),
                SignIn::Mfa(c) => format!(
                    "mfa_required=true&mfa_token={}&methods={}",
                    c.mfa_token,
                    c.methods
                        .iter()
                        .filter_map(|m| serde_json::to_value(m).ok())
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            // Allowed redirect URIs hold no whitespace or control characters, so this parses.
            let Ok(location) = format!("{redirect}#{fragment}").parse::<header::HeaderValue>()
            else {
                return Json(signed_in).into_response();
            };
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, location);
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Ok((signed_in, _)) => Json(signed_in).into_response(),
        Err(e) if body.html => problem_page(&e),
        Err(e) => e.into_response(),
    }
}

/// What a magic-link sign-in sends: the link's token, the device, and the request (its
/// DPoP proof binds the tokens).
struct Sent<'a> {
    token: &'a str,
    device: Option<&'a str>,
    target: &'a RequestTarget,
    headers: &'a HeaderMap,
}

/// Uses the magic-link token and signs its user in. Returns the link's `redirect_uri`.
async fn magic_sign_in(
    state: &AppState,
    ctx: Ctx,
    app: &str,
    sent: Sent<'_>,
) -> Result<(SignIn, Option<String>), ApiError> {
    let app = public_app(state, app, route::MagicLinkVerify::NAME, &ctx).await?;
    let dpop = token_proof(state, &app, sent.headers, sent.target).await?;
    let ctx = ctx.with_dpop(dpop);
    let (token, device) = (sent.token, sent.device);
    Ok(recovery::magic_sign_in(state.signin(), &app, token, device, &ctx).await?)
}
