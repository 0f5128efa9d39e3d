//! Second factors (API.md §3): enrolment and removal of TOTP, SMS and email codes,
//! recovery codes, and the second step of a sign-in (`/login/mfa`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use webauthn_rs::prelude::PublicKeyCredential;

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{
    Dpop, JsonBody, LiveApp, PublicApp, RequestTarget, SignedIn, limit_ip, route, signed_in,
};
use super::{SignInOptions, cookies};
use crate::domain::Ctx;
use crate::domain::factors::{self, Channel, Enrolled, Method};
use crate::domain::tokens::Tokens;
use crate::flows::mfa::{Proof, enrol};
use crate::flows::signin::stepup::{self, Answer};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login_mfa))
        .routes(routes!(login_mfa_passkey))
        .routes(routes!(factors))
        .routes(routes!(totp_setup))
        .routes(routes!(totp_verify))
        .routes(routes!(remove_factor))
        .routes(routes!(otp_send))
        .routes(routes!(otp_verify))
        .routes(routes!(recovery_codes))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct SecondStep {
    mfa_token: String,
    method: Method,
    /// The code, for every method but `webauthn`.
    code: Option<String>,
    /// For `webauthn`: the `PublicKeyCredential` from `navigator.credentials.get()` with
    /// the options of `/login/mfa/webauthn`, as JSON.
    #[schema(value_type = Option<Object>)]
    credential: Option<PublicKeyCredential>,
    #[serde(default)]
    options: SignInOptions,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct StepUpToken {
    mfa_token: String,
}

/// The passkey request options of a sign-in that answered `mfa_required` with `webauthn`
/// among its methods; then `/login/mfa` with `method: "webauthn"` and the `credential`.
#[utoipa::path(post, path = "/v1/apps/{app}/login/mfa/webauthn", operation_id = "loginMfaPasskeyOptions", tag = "mfa", params(("app" = String, Path)),
    request_body = StepUpToken,
    responses((status = 200, description = "`{\"publicKey\": PublicKeyCredentialRequestOptions}`", body = Object),
              (status = 401, description = "invalid_mfa_token", body = Problem)))]
async fn login_mfa_passkey(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::LoginMfaPasskey>,
    JsonBody(body): JsonBody<StepUpToken>,
) -> ApiResult<Json<serde_json::Value>> {
    let options = stepup::passkey_options(state.signin(), &app, &body.mfa_token, &ctx).await?;
    Ok(Json(options))
}

/// Complete a sign-in that answered `mfa_required`: the `mfa_token` with a code of one of
/// the offered methods. `amr` records both factors.
#[utoipa::path(post, path = "/v1/apps/{app}/login/mfa", operation_id = "loginMfa", tag = "mfa", params(("app" = String, Path), ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449): the tokens are bound to its key")),
    request_body = SecondStep,
    responses((status = 200, body = Tokens),
              (status = 401, description = "invalid_code or invalid_mfa_token", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn login_mfa(
    State(state): State<AppState>,
    ctx: Ctx,
    PublicApp(app, _): PublicApp<route::LoginMfa>,
    Dpop(dpop): Dpop,
    JsonBody(body): JsonBody<SecondStep>,
) -> ApiResult<Response> {
    let ctx = ctx.with_dpop(dpop);
    let answer = match (&body.credential, &body.code) {
        (Some(credential), _) => Answer::Passkey(credential),
        (None, Some(code)) => Answer::Code(code),
        (None, None) => {
            return Err(ApiError::bad_request(
                "code (or, for webauthn, credential) is required",
            ));
        }
    };
    let tokens = stepup::finish(
        state.signin(),
        &app,
        &body.mfa_token,
        body.method,
        answer,
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

/// The signed-in user's second factors.
#[utoipa::path(get, path = "/v1/apps/{app}/mfa", operation_id = "listFactors", tag = "mfa", params(("app" = String, Path)),
    responses((status = 200, body = Enrolled), (status = 401, body = Problem)))]
async fn factors(State(state): State<AppState>, me: SignedIn) -> ApiResult<Json<Enrolled>> {
    let client = state.pool.get().await?;
    let policy = me.app.settings.mfa.policy;
    Ok(Json(factors::enrolled(&client, policy, me.user.id).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TotpSecret {
    /// Base32, for typing into an authenticator app.
    secret: String,
    /// `otpauth://totp/...`, for a QR code.
    otpauth_uri: String,
}

/// Start TOTP enrolment: a new secret (SHA-1, 6 digits, 30 s), confirmed by a first code.
/// Within 15 minutes of signing in the session alone is enough; later it needs the
/// `current_password` or a second-factor `code` (a stolen token must not enrol a factor).
#[utoipa::path(post, path = "/v1/apps/{app}/mfa/totp/setup", operation_id = "setUpTotp", tag = "mfa", params(("app" = String, Path)),
    request_body = Proof,
    responses((status = 200, body = TotpSecret),
              (status = 401, description = "invalid_credentials: sign in again or give the password", body = Problem),
              (status = 409, description = "mfa_already_enabled", body = Problem)))]
async fn totp_setup(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(proof): JsonBody<Proof>,
) -> ApiResult<Json<TotpSecret>> {
    let (secret, otpauth_uri) = enrol::totp_setup(
        state.mfa(),
        &me.app,
        &me.user,
        me.principal.sid,
        &proof,
        &ctx,
    )
    .await?;
    Ok(Json(TotpSecret {
        secret,
        otpauth_uri,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct CodeBody {
    code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Enabled {
    enabled: bool,
    /// Ten single-use codes, shown only now (absent when the user already had some).
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_codes: Option<Vec<String>>,
}

/// Confirm TOTP enrolment with a first code; returns ten recovery codes.
#[utoipa::path(post, path = "/v1/apps/{app}/mfa/totp/verify", operation_id = "verifyTotp", tag = "mfa", params(("app" = String, Path)),
    request_body = CodeBody,
    responses((status = 200, body = Enabled), (status = 401, description = "invalid_code", body = Problem)))]
async fn totp_verify(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(body): JsonBody<CodeBody>,
) -> ApiResult<Json<Enabled>> {
    let codes = enrol::totp_confirm(state.mfa(), &me.app, &me.user, &body.code, &ctx).await?;
    Ok(Json(Enabled {
        enabled: true,
        recovery_codes: Some(codes),
    }))
}

/// Remove a factor (`totp`, `sms` or `email`). Needs a second-factor `code` (TOTP, recovery
/// code, or a code sent to this session) or the `current_password`.
#[utoipa::path(delete, path = "/v1/apps/{app}/mfa/{factor}", operation_id = "removeFactor", tag = "mfa",
    params(("app" = String, Path), ("factor" = String, Path)),
    request_body = Proof,
    responses((status = 204, description = "removed"),
              (status = 401, description = "invalid_code or invalid_credentials", body = Problem),
              (status = 404, body = Problem)))]
async fn remove_factor(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, factor)): Path<(String, String)>,
    JsonBody(proof): JsonBody<Proof>,
) -> ApiResult<Response> {
    if !matches!(factor.as_str(), "totp" | "sms" | "email") {
        return Err(ApiError::not_found("factor"));
    }
    let SignedIn {
        app,
        principal,
        user,
    } = me;
    enrol::remove(
        state.mfa(),
        &app,
        &user,
        principal.sid,
        &factor,
        &proof,
        &ctx,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct SendCode {
    channel: Channel,
    /// During a sign-in: the step-up's token (instead of a user access token).
    mfa_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CodeSent {
    channel: Channel,
    /// Seconds the code stays usable.
    expires_in: i64,
}

/// Send a 6-digit code by SMS or email: with an `mfa_token`, for the second step of a
/// sign-in; with a user access token, to enrol the channel (or to prove a second factor).
#[utoipa::path(post, path = "/v1/apps/{app}/mfa/otp/send", operation_id = "sendOtp", tag = "mfa", params(("app" = String, Path)),
    request_body = SendCode,
    responses((status = 202, body = CodeSent),
              (status = 401, description = "invalid_mfa_token", body = Problem),
              (status = 429, description = "rate_limited", body = Problem)))]
async fn otp_send(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    target: RequestTarget,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SendCode>,
) -> ApiResult<Response> {
    match &body.mfa_token {
        Some(token) => {
            limit_ip(&state, &app, "otp-send", &ctx).await?;
            stepup::send_for_step_up(state.signin(), &app, token, body.channel, &ctx).await?;
        }
        None => {
            let me = signed_in(&state, &headers, &target, app).await?;
            limit_ip(&state, &me.app, "otp-send", &ctx).await?;
            let (app, user, sid) = (&me.app, &me.user, me.principal.sid);
            enrol::send_for_session(state.mfa(), app, user, sid, body.channel, &ctx).await?;
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CodeSent {
            channel: body.channel,
            expires_in: factors::CODE_TTL,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct VerifyCode {
    code: String,
    /// Which channel's code; the newest sent to this session when absent.
    channel: Option<Channel>,
}

/// Enable SMS or email codes as a factor with the code sent to this session.
#[utoipa::path(post, path = "/v1/apps/{app}/mfa/otp/verify", operation_id = "verifyOtp", tag = "mfa", params(("app" = String, Path)),
    request_body = VerifyCode,
    responses((status = 200, body = Enabled), (status = 401, description = "invalid_code", body = Problem)))]
async fn otp_verify(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(body): JsonBody<VerifyCode>,
) -> ApiResult<Json<Enabled>> {
    limit_ip(&state, &me.app, "otp-verify", &ctx).await?;
    let (_, codes) = enrol::enable_channel(
        state.mfa(),
        &me.app,
        &me.user,
        me.principal.sid,
        body.channel,
        &body.code,
        &ctx,
    )
    .await?;
    Ok(Json(Enabled {
        enabled: true,
        recovery_codes: codes,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// Ten new recovery codes; the previous ones stop working. Like TOTP setup, needs a
/// sign-in within 15 minutes or a `current_password` / `code`.
#[utoipa::path(post, path = "/v1/apps/{app}/mfa/recovery-codes", operation_id = "regenerateRecoveryCodes", tag = "mfa", params(("app" = String, Path)),
    request_body = Proof,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = Problem),
              (status = 401, description = "invalid_credentials or invalid_code", body = Problem)))]
async fn recovery_codes(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(proof): JsonBody<Proof>,
) -> ApiResult<Json<RecoveryCodes>> {
    let (app, user, sid) = (&me.app, &me.user, me.principal.sid);
    let codes = enrol::regenerate_recovery_codes(state.mfa(), app, user, sid, &proof, &ctx).await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}
