//! Password reset, email verification and magic links (API.md §3), and the pages their
//! mailed links open.
//!
//! `/password/forgot` and `/magic-link` answer `202` alike for known and unknown addresses,
//! after the same work (one lookup): the token and its mail are made in a task of their
//! own, so neither the answer nor its timing tells whether an account exists.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use portcullis_common::token::Amr;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use super::me::signed_in;
use super::pages::{Form, Submitted, answer, page, problem_page};
use super::users::app_for;
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::mailings::{self, Mailing};
use crate::domain::one_time::{self, Purpose};
use crate::domain::passwords;
use crate::domain::sessions;
use crate::domain::users::{self, User, canonical, check_email};
use crate::error::{ApiError, ApiResult, Problem};
use crate::flows::mfa::{self, SignIn};
use crate::flows::recovery;
use crate::infra::limits::Scope;
use crate::infra::store::Prepared as _;
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

fn expired_or_used() -> ApiError {
    ApiError::new(
        ErrorCode::TokenExpiredOrUsed,
        "the link has expired or was already used",
    )
}

/// Counts one message to `address` (known or not, so the limit itself tells nothing).
async fn count_message(state: &AppState, app: &App, address: &str) -> Result<(), ApiError> {
    let app_id = app.id.to_string();
    state
        .limiter
        .hit(
            Scope::Messages {
                app: &app_id,
                kind: "links",
                destination: address,
            },
            app.settings.rate_limits.messages_per_account_per_hour,
        )
        .await
        .map_err(Into::into)
}

/// The user a mail may go to: known, enabled, not a guest, with this address.
async fn recipient(
    state: &AppState,
    app: &App,
    email: &str,
    now: i64,
) -> Result<Option<User>, ApiError> {
    let client = state.pool.get().await?;
    let user = users::find_by_login(&client, app.id, email).await?;
    Ok(user.filter(|u| !u.guest && !u.disabled(crate::infra::clock::at(now)) && u.email.is_some()))
}

/// Makes the token and queues the mail in a task of its own (see the module docs).
fn mail_later(state: &AppState, app: &App, user: User, mailing: Mailing, ctx: &Ctx) {
    let (state, app, ctx) = (state.clone(), app.clone(), ctx.clone());
    tokio::spawn(async move {
        let sent = async {
            let mut client = state.pool.get().await?;
            let tx = client.transaction().await?;
            mailings::mail_in(&tx, &state.links(), &app, &user, &mailing, &ctx).await?;
            tx.commit().await?;
            state.outbox.wake();
            Ok::<_, ApiError>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "a requested mail was not queued");
        }
    });
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct Forgot {
    email: String,
}

/// Mail a single-use password-reset link (30 minutes). Always `202`.
#[utoipa::path(post, path = "/v1/apps/{app}/password/forgot", tag = "recovery", params(("app" = String, Path)),
    request_body = Forgot,
    responses((status = 202, body = Accepted), (status = 429, description = "rate_limited", body = Problem)))]
async fn forgot(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<Forgot>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "password-forgot", &ctx).await?;
    let email = check_email(&body.email)?;
    count_message(&state, &app, &canonical(&email)).await?;
    if let Some(user) = recipient(&state, &app, &email, ctx.now).await? {
        mail_later(&state, &app, user, Mailing::PasswordReset, &ctx);
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
#[utoipa::path(get, path = "/v1/apps/{app}/password/reset/{token}", tag = "recovery",
    params(("app" = String, Path), ("token" = String, Path)),
    responses((status = 200, body = Usable), (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn reset_check(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((app, token)): Path<(String, String)>,
) -> ApiResult<Json<Usable>> {
    let app = state.apps.live(&state.pool, &app, ctx.now).await?;
    let client = state.pool.get().await?;
    let found = one_time::find(
        &client,
        app.id,
        Purpose::PasswordReset,
        &token,
        ctx.now,
        false,
    )
    .await?
    .ok_or_else(expired_or_used)?;
    Ok(Json(Usable {
        valid: true,
        expires_at: found.expires_at,
    }))
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The page a reset mail links to: a form for the new password.
#[utoipa::path(get, path = "/v1/apps/{app}/password/reset", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn reset_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "password/reset",
        title: |app| format!("Choose a new {} password", app.name),
        message: "Every device signed in to your account will be signed out.",
        inputs: &[("new_password", "New password", "password")],
        button: "Set password",
    };
    page.render(&state, &ctx, &app, query).await
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
    async fn render(&self, state: &AppState, ctx: &Ctx, app: &str, query: TokenQuery) -> Response {
        let app = match state.apps.live(&state.pool, app, ctx.now).await {
            Ok(app) => app,
            Err(e) => return problem_page(&e),
        };
        let token = query.token.unwrap_or_default();
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
#[utoipa::path(post, path = "/v1/apps/{app}/password/reset", tag = "recovery", params(("app" = String, Path)),
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
    let app = app_for(state, app, "password-reset", ctx).await?;
    let client = state.pool.get().await?;
    let found = one_time::find(
        &client,
        app.id,
        Purpose::PasswordReset,
        &body.token,
        ctx.now,
        false,
    )
    .await?
    .ok_or_else(expired_or_used)?;
    let user = users::find(&client, app.id, found.user)
        .await?
        .ok_or_else(expired_or_used)?;
    drop(client);
    // Checked before the token is used, so a weak password can be corrected with it.
    passwords::check_new(
        &body.new_password,
        &app.settings.password_policy,
        &[
            user.email.as_deref().unwrap_or(""),
            user.username.as_deref().unwrap_or(""),
        ],
    )?;
    let hash = state.hasher.hash(&body.new_password).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    one_time::consume_in(&tx, app.id, Purpose::PasswordReset, &body.token, ctx.now)
        .await?
        .ok_or_else(expired_or_used)?;
    let before = sessions::revoke_user_in(&tx, user.id, ctx.now).await?;
    crate::domain::users::set_password_in(&tx, user.id, &hash, ctx.now).await?;
    audit::record(
        &tx,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event: "password.reset",
            details: Value::Null,
            ctx,
        },
    )
    .await?;
    tx.commit().await?;
    drop(client);
    sessions::publish_users(state, &[user.id], before).await;
    Ok(())
}

/// Mail the signed-in user a link confirming their address (24 hours).
#[utoipa::path(post, path = "/v1/apps/{app}/email/verify/send", tag = "recovery", params(("app" = String, Path)),
    responses((status = 202, body = Accepted), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn verification_send(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let (app, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let Some(email) = user.email.as_deref() else {
        return Err(ApiError::bad_request("the account has no email address"));
    };
    count_message(&state, &app, &canonical(email)).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    mailings::mail_in(
        &tx,
        &state.links(),
        &app,
        &user,
        &Mailing::EmailVerification,
        &ctx,
    )
    .await?;
    tx.commit().await?;
    state.outbox.wake();
    Ok(accepted())
}

/// The page a verification mail links to: one button that confirms.
#[utoipa::path(get, path = "/v1/apps/{app}/email/verify", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn verify_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "email/verify",
        title: |_| "Confirm your email address".to_owned(),
        message: "Confirm that this address is yours.",
        inputs: &[],
        button: "Confirm",
    };
    page.render(&state, &ctx, &app, query).await
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
#[utoipa::path(post, path = "/v1/apps/{app}/email/verify", tag = "recovery", params(("app" = String, Path)),
    request_body = TokenBody,
    responses((status = 200, body = Verified), (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn verify_email(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    body: Submitted<TokenBody>,
) -> Response {
    let verified = async {
        let app = app_for(&state, &app, "email-verify", &ctx).await?;
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        recovery::verify_email_in(&tx, app.id, &body.body.token, &ctx)
            .await?
            .ok_or_else(expired_or_used)?;
        tx.commit().await?;
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
#[utoipa::path(post, path = "/v1/apps/{app}/magic-link", tag = "recovery", params(("app" = String, Path)),
    request_body = MagicRequest,
    responses((status = 202, body = Accepted),
              (status = 400, description = "redirect_uri not allowed", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn magic_link(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<MagicRequest>,
) -> ApiResult<Response> {
    let app = app_for(&state, &app, "magic-link", &ctx).await?;
    let email = check_email(&body.email)?;
    let redirect_uri = match body.redirect_uri {
        Some(uri) if app.settings.redirect_allowed(&uri) => Some(uri),
        Some(_) => {
            return Err(ApiError::bad_request(
                "redirect_uri is not one of the application's allowed_redirect_uris",
            ));
        }
        None => None,
    };
    count_message(&state, &app, &canonical(&email)).await?;
    if let Some(user) = recipient(&state, &app, &email, ctx.now).await? {
        mail_later(
            &state,
            &app,
            user,
            Mailing::MagicLink { redirect_uri },
            &ctx,
        );
    }
    Ok(accepted())
}

/// The page a magic-link mail leads to: one button that signs in. A GET never uses the
/// token up, so a mail scanner following the link signs no one in.
#[utoipa::path(get, path = "/v1/apps/{app}/magic-link/verify", tag = "recovery",
    params(("app" = String, Path), TokenQuery),
    responses((status = 200, description = "an HTML form", content_type = "text/html")))]
async fn magic_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let page = LinkPage {
        posts_to: "magic-link/verify",
        title: |app| format!("Sign in to {}", app.name),
        message: "Continue to sign in with this link. It works once.",
        inputs: &[],
        button: "Sign in",
    };
    page.render(&state, &ctx, &app, query).await
}

/// Sign in with a magic-link token (`amr: ["magic"]`); a user with a second factor gets a
/// step-up instead of tokens. From the page's form, the browser is sent to the link's
/// `redirect_uri` with the result in the URL fragment (never sent to a server).
#[utoipa::path(post, path = "/v1/apps/{app}/magic-link/verify", tag = "recovery", params(("app" = String, Path)),
    request_body = TokenBody,
    responses((status = 200, body = SignIn),
              (status = 303, description = "form post with a redirect_uri: back to it"),
              (status = 410, description = "token_expired_or_used", body = Problem)))]
async fn magic_verify(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(app): Path<String>,
    body: Submitted<TokenBody>,
) -> Response {
    match magic_sign_in(&state, &ctx, &app, &body.body.token).await {
        Ok((signed_in, Some(redirect))) if body.html => {
            let fragment = match &signed_in {
                SignIn::Tokens(t) => format!(
                    "access_token={}&refresh_token={}&token_type=Bearer&expires_in={}&session_id={}&user_id={}",
                    t.access_token, t.refresh_token, t.expires_in, t.session_id, t.user_id
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

/// Uses the magic-link token and signs its user in. Returns the link's `redirect_uri`.
async fn magic_sign_in(
    state: &AppState,
    ctx: &Ctx,
    app: &str,
    token: &str,
) -> Result<(SignIn, Option<String>), ApiError> {
    let app = app_for(state, app, "magic-link-verify", ctx).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let found = one_time::consume_in(&tx, app.id, Purpose::MagicLink, token, ctx.now)
        .await?
        .ok_or_else(expired_or_used)?;
    let user = users::find(&tx, app.id, found.user)
        .await?
        .ok_or_else(expired_or_used)?;
    // Bound to the address it was mailed to: after an email change it signs no one in.
    let mailed_to = found.data.get("email").and_then(Value::as_str);
    if user.email.as_deref().map(canonical).as_deref() != mailed_to {
        return Err(expired_or_used());
    }
    if user.disabled(crate::infra::clock::at(ctx.now)) {
        return Err(ApiError::new(
            ErrorCode::UserDisabled,
            "the user is disabled or expired",
        ));
    }
    // The link reached the mailbox: the address is the user's. If it was never proven
    // before, whoever registered it may not be its owner (an account made in advance to
    // hijack it later): the mailbox's owner claims it, and the password and sessions set
    // up before are dropped. Second factors stay: mailbox access alone never removes one
    // (at worst they lock the claimant out; they let no one else in).
    let claimed = !user.email_verified;
    let mut cutoff = None;
    if claimed {
        cutoff = Some(sessions::revoke_user_in(&tx, user.id, ctx.now).await?);
        crate::domain::users::set_password_in(&tx, user.id, "!", ctx.now).await?;
        // So are the provider identities linked to it meanwhile.
        tx.exec(
            "DELETE FROM oauth_identities WHERE user_id = $1",
            &[&user.id],
        )
        .await?;
    }
    tx.exec(
        "UPDATE users SET email_verified = true WHERE id = $1",
        &[&user.id],
    )
    .await?;
    audit::record(
        &tx,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event: "login.magic_link",
            details: json!({ "first_proof_of_address": claimed }),
            ctx,
        },
    )
    .await?;
    tx.commit().await?;
    drop(client);
    if let Some(before) = cutoff {
        sessions::publish_users(state, &[user.id], before).await;
    }
    // Re-checked: the allowlist may have lost the URI since the link was mailed.
    let redirect = found
        .data
        .get("redirect_uri")
        .and_then(Value::as_str)
        .filter(|uri| app.settings.redirect_allowed(uri))
        .map(str::to_owned);
    let signed_in =
        mfa::after_first_factor(state, &app, &user, vec![Amr::Magic], None, ctx).await?;
    Ok((signed_in, redirect))
}
