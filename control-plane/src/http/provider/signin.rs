//! The authorization endpoint and its pages: the request checked, then sign-in
//! (password and a second factor, a passkey, a social provider), consent, and the code
//! sent back. Each form holds a CSRF token that must match a `SameSite=Strict` cookie.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{SESSION_COOKIE, cookie_path};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::factors::Method;
use crate::flows::provider::ProviderError;
use crate::flows::provider::authorize::{self, Next, Refused, Request, SignedIn, Valid};
use crate::flows::signin::password::Attempt;
use crate::http::error::ApiError;
use crate::http::extract::{LiveApp, cookie, limit_ip};
use crate::http::pages::{Form, Look, page, page_scripted, problem_page};
use crate::infra::crypto::random_token;
use crate::state::AppState;

/// The double-submit CSRF token of the provider's forms.
const CSRF_COOKIE: &str = "portcullis_op_csrf";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize_page, authorize_form))
        .routes(routes!(social_return))
}

/// The authorization endpoint (GET): checks the request, then signs the browser in, asks
/// for consent, or sends the code back.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth2/authorize", operation_id = "providerAuthorize", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 303, description = "back to the client with a code or an error"),
              (status = 200, description = "the sign-in or consent page", content_type = "text/html"),
              (status = 400, description = "unknown client or unregistered redirect URI: a page, no redirect", content_type = "text/html")))]
async fn authorize_page(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    Query(request): Query<Request>,
) -> Response {
    let deps = state.provider();
    let valid = match authorize::validate(deps, &app, &request).await {
        Ok(valid) => valid,
        Err(refused) => return refused_page(refused),
    };
    let browser = authorize::browser(deps, app.id, cookie(&headers, SESSION_COOKIE), ctx.now).await;
    let next = match browser {
        Ok(browser) => authorize::next(deps, &app, &valid, browser.as_ref(), false, ctx.now).await,
        Err(e) => Err(e),
    };
    match next {
        Ok(next) => show(&state, &app, &request, &valid, next, &headers, None),
        Err(e) => failed_page(e),
    }
}

/// The forms of the provider's pages: the request's parameters again, the CSRF token, and
/// what was filled in.
#[derive(Debug, Default, Deserialize)]
struct Submitted {
    #[serde(flatten)]
    request: Request,
    csrf: Option<String>,
    /// `sign_in`, `second_factor` or `consent`.
    action: Option<String>,
    login: Option<String>,
    password: Option<String>,
    mfa_token: Option<String>,
    method: Option<String>,
    code: Option<String>,
    /// `yes` to allow (consent).
    allow: Option<String>,
    /// A passkey sign-in: the ceremony and the browser's answer (JSON).
    ceremony_id: Option<String>,
    credential: Option<String>,
    /// A social sign-in: the provider's name in the application's settings.
    provider: Option<String>,
}

/// The authorization endpoint's forms (POST): sign-in, second factor, consent.
#[utoipa::path(post, path = "/v1/apps/{app}/oauth2/authorize", operation_id = "providerAuthorizeForm", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 303, description = "back to the client, or on to the next page"),
              (status = 200, description = "the next page, or this one with what was wrong", content_type = "text/html")))]
async fn authorize_form(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<Submitted>,
) -> Response {
    let deps = state.provider();
    let csrf_ok = match (cookie(&headers, CSRF_COOKIE), form.csrf.as_deref()) {
        (Some(a), Some(b)) => {
            use subtle::ConstantTimeEq as _;
            !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
        }
        _ => false,
    };
    if !csrf_ok {
        return page(
            StatusCode::FORBIDDEN,
            "Request refused",
            "The form expired or came from another site. Go back to the application and start again.",
            None,
        );
    }
    let valid = match authorize::validate(deps, &app, &form.request).await {
        Ok(valid) => valid,
        Err(refused) => return refused_page(refused),
    };
    let outcome = match form.action.as_deref() {
        Some("sign_in") => sign_in(&state, &app, &form, &ctx).await,
        Some("second_factor") => second_factor(&state, &app, &form, &ctx).await,
        Some("send_code") => send_code(&state, &app, &form, &ctx).await,
        Some("passkey") => passkey_sign_in(&state, &app, &form, &ctx).await,
        Some("social") => social_start(&state, &app, &form, &ctx).await,
        Some("consent") => consent(&state, &app, &valid, &form, &headers, &ctx).await,
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match outcome {
        Ok(Step::Show(next, set)) => show(&state, &app, &form.request, &valid, next, &headers, set),
        Ok(Step::Leave(response)) => response,
        Ok(Step::SecondFactor(challenge)) => second_factor_page(
            &app,
            &form.request,
            &headers,
            &challenge.mfa_token,
            &challenge.methods,
            None,
            None,
        ),
        Ok(Step::CodeSent(method)) => {
            let mfa_token = form.mfa_token.as_deref().unwrap_or("");
            let page = &form.request;
            second_factor_page(
                &app,
                page,
                &headers,
                mfa_token,
                &[method],
                Some(method),
                None,
            )
        }
        Err(e) if form.action.as_deref() == Some("second_factor") => {
            let mfa_token = form.mfa_token.as_deref().unwrap_or("");
            let method = form_method(&form);
            let why = format!("{}. Try again.", e.detail);
            let page = &form.request;
            second_factor_page(
                &app,
                page,
                &headers,
                mfa_token,
                &[method],
                Some(method),
                Some(&why),
            )
        }
        Err(e) if matches!(form.action.as_deref(), Some("sign_in" | "passkey")) => sign_in_page(
            &state,
            &app,
            &form.request,
            &valid,
            &headers,
            Some(&e.detail),
        ),
        Err(e) => problem_page(&e),
    }
}

/// What a form leads to.
enum Step {
    /// The next page or redirect; with a new browser session's cookie to set.
    Show(Next, Option<String>),
    SecondFactor(crate::flows::signin::stepup::Challenge),
    /// A code went out by this channel: its form.
    CodeSent(Method),
    /// Off to another site (a social sign-in), as this response says.
    Leave(Response),
}

/// The method a second-factor form names (an authenticator app's code when none).
fn form_method(form: &Submitted) -> Method {
    match form.method.as_deref() {
        Some("recovery_code") => Method::RecoveryCode,
        Some("email") => Method::Email,
        Some("sms") => Method::Sms,
        _ => Method::Totp,
    }
}

async fn sign_in(
    state: &AppState,
    app: &App,
    form: &Submitted,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    limit_ip(state, app, "provider-sign-in", ctx).await?;
    let attempt = Attempt {
        login: form.login.as_deref().unwrap_or(""),
        password: form.password.as_deref().unwrap_or(""),
        device_id: None,
        captcha_token: None,
    };
    let signed_in = authorize::sign_in(state.provider(), app, &attempt, ctx).await?;
    after_sign_in(state, app, form, signed_in, ctx).await
}

async fn passkey_sign_in(
    state: &AppState,
    app: &App,
    form: &Submitted,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    limit_ip(state, app, "provider-sign-in", ctx).await?;
    let credential: webauthn_rs::prelude::PublicKeyCredential =
        serde_json::from_str(form.credential.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::bad_request("the passkey's answer is missing or malformed"))?;
    let ceremony = form.ceremony_id.as_deref().unwrap_or("");
    let signed_in =
        authorize::sign_in_with_passkey(state.provider(), app, ceremony, &credential, ctx).await?;
    after_sign_in(state, app, form, signed_in, ctx).await
}

async fn second_factor(
    state: &AppState,
    app: &App,
    form: &Submitted,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    limit_ip(state, app, "provider-sign-in", ctx).await?;
    let mfa_token = form.mfa_token.as_deref().unwrap_or("");
    let code = form.code.as_deref().unwrap_or("");
    let deps = state.provider();
    let signed_in =
        authorize::second_factor(deps, app, mfa_token, form_method(form), code, ctx).await?;
    after_sign_in(state, app, form, signed_in, ctx).await
}

/// The cookie that carries an authorization request across a social sign-in begun on
/// the sign-in page: the request and the PKCE verifier of the code that comes back.
const RESUME_COOKIE: &str = "portcullis_op_resume";

#[derive(Debug, serde::Serialize, Deserialize)]
struct Resume {
    /// The authorization request, form-encoded.
    q: String,
    /// The verifier of the challenge sent to the social sign-in's start.
    v: String,
}

/// "Sign in with {provider}": the social sign-in starts at the application's own route,
/// and comes back to `/oauth2/social` with a one-time code.
async fn social_start(
    state: &AppState,
    app: &App,
    form: &Submitted,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    limit_ip(state, app, "provider-sign-in", ctx).await?;
    let provider = form.provider.as_deref().unwrap_or("");
    // One of the application's providers: its name is [a-z0-9_-] (checked when stored),
    // a path segment as it is.
    let provider = &crate::flows::oauth::provider(app, provider)?.name;
    let verifier = random_token(32);
    let challenge = crate::infra::crypto::pkce_challenge(&verifier);
    let resume = Resume {
        q: serde_urlencoded::to_string(&form.request).unwrap_or_default(),
        v: verifier,
    };
    let resume = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&resume).unwrap_or_default());
    let return_to = crate::flows::oauth::provider_return(&state.config.public_url, app.id);
    let query = serde_urlencoded::to_string([
        ("redirect_uri", return_to.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap_or_default();
    let to = format!("/v1/apps/{}/oauth/{provider}/authorize?{query}", app.id);
    let mut response = Redirect::to(&to).into_response();
    let cookie = format!(
        "{RESUME_COOKIE}={resume}; Path={}; Max-Age=600; HttpOnly; Secure; SameSite=Lax",
        cookie_path(app)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(Step::Leave(response))
}

#[derive(Debug, Deserialize)]
pub(super) struct SocialReturn {
    code: Option<String>,
}

/// Back from a social sign-in begun on the sign-in page: the one-time code redeemed with
/// the verifier the resume cookie kept, then on with the authorization request.
#[utoipa::path(get, path = "/v1/apps/{app}/oauth2/social", operation_id = "providerSocialReturn", tag = "provider",
    params(("app" = String, Path)),
    responses((status = 303, description = "on with the authorization request"),
              (status = 200, description = "the second-factor or consent page", content_type = "text/html"),
              (status = 400, description = "no sign-in under way in this browser", content_type = "text/html")))]
async fn social_return(
    State(state): State<AppState>,
    ctx: Ctx,
    LiveApp(app): LiveApp,
    headers: HeaderMap,
    Query(back): Query<SocialReturn>,
) -> Response {
    let resume = cookie(&headers, RESUME_COOKIE)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Resume>(&b).ok());
    let Some(resume) = resume else {
        let why = "No sign-in is under way in this browser: go back to the application.";
        return page(StatusCode::BAD_REQUEST, "Invalid request", why, None);
    };
    let Ok(request) = serde_urlencoded::from_str::<Request>(&resume.q) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "The request is damaged.",
            None,
        );
    };
    let deps = state.provider();
    let valid = match authorize::validate(deps, &app, &request).await {
        Ok(valid) => valid,
        Err(refused) => return refused_page(refused),
    };
    let code = back.code.as_deref().unwrap_or("");
    let signed_in = authorize::sign_in_with_social(deps, &app, code, &resume.v, &ctx).await;
    let mut response = match signed_in {
        Ok(SignedIn::SecondFactor(challenge)) => second_factor_page(
            &app,
            &request,
            &headers,
            &challenge.mfa_token,
            &challenge.methods,
            None,
            None,
        ),
        Ok(SignedIn::Done(browser, secret)) => {
            match authorize::next(deps, &app, &valid, Some(&browser), true, ctx.now).await {
                Ok(next) => show(&state, &app, &request, &valid, next, &headers, Some(secret)),
                Err(e) => failed_page(e),
            }
        }
        Err(e) => {
            let why = format!("{}. Try again.", ApiError::from(e).detail);
            sign_in_page(&state, &app, &request, &valid, &headers, Some(&why))
        }
    };
    let clear = format!(
        "{RESUME_COOKIE}=; Path={}; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
        cookie_path(&app)
    );
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// "Send a code" on the second-factor page: by the channel the form names.
async fn send_code(
    state: &AppState,
    app: &App,
    form: &Submitted,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    limit_ip(state, app, "provider-sign-in", ctx).await?;
    let (method, channel) = match form_method(form) {
        Method::Sms => (Method::Sms, crate::domain::factors::Channel::Sms),
        _ => (Method::Email, crate::domain::factors::Channel::Email),
    };
    let mfa_token = form.mfa_token.as_deref().unwrap_or("");
    crate::flows::signin::stepup::send_for_step_up(state.signin(), app, mfa_token, channel, ctx)
        .await?;
    Ok(Step::CodeSent(method))
}

async fn after_sign_in(
    state: &AppState,
    app: &App,
    form: &Submitted,
    signed_in: SignedIn,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    match signed_in {
        SignedIn::SecondFactor(challenge) => Ok(Step::SecondFactor(challenge)),
        SignedIn::Done(browser, secret) => {
            let deps = state.provider();
            let valid = authorize::validate(deps, app, &form.request)
                .await
                .map_err(|_| ApiError::bad_request("the authorization request changed"))?;
            let next = authorize::next(deps, app, &valid, Some(&browser), true, ctx.now).await?;
            Ok(Step::Show(next, Some(secret)))
        }
    }
}

async fn consent(
    state: &AppState,
    app: &App,
    valid: &Valid,
    form: &Submitted,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Step, ApiError> {
    let deps = state.provider();
    let browser = authorize::browser(deps, app.id, cookie(headers, SESSION_COOKIE), ctx.now)
        .await?
        .ok_or_else(|| ApiError::bad_request("sign in again: the sign-in at the provider ended"))?;
    let allow = form.allow.as_deref() == Some("yes");
    let to = authorize::consent(deps, app, valid, &browser, allow, ctx.now).await?;
    Ok(Step::Show(Next::Redirect(to), None))
}

/// Renders `next`, setting the browser session's cookie when one was just opened.
fn show(
    state: &AppState,
    app: &App,
    request: &Request,
    valid: &Valid,
    next: Next,
    headers: &HeaderMap,
    session: Option<String>,
) -> Response {
    let mut response = match next {
        Next::Redirect(to) => Redirect::to(&to).into_response(),
        Next::SignIn => sign_in_page(state, app, request, valid, headers, None),
        Next::Consent(scopes) => consent_page(app, request, valid, headers, &scopes),
    };
    if let Some(secret) = session {
        let value = format!(
            "{SESSION_COOKIE}={secret}; Path={}; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
            cookie_path(app),
            crate::domain::authorizations::BROWSER_SESSION_SECS
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The request's parameters as hidden fields, the CSRF token and the action.
fn hidden<'a>(request: &'a Request, csrf: &'a str, action: &'a str) -> Vec<(&'a str, &'a str)> {
    let fields = [
        ("client_id", &request.client_id),
        ("redirect_uri", &request.redirect_uri),
        ("response_type", &request.response_type),
        ("scope", &request.scope),
        ("state", &request.state),
        ("nonce", &request.nonce),
        ("code_challenge", &request.code_challenge),
        ("code_challenge_method", &request.code_challenge_method),
        ("prompt", &request.prompt),
        ("max_age", &request.max_age),
        ("login_hint", &request.login_hint),
        ("dpop_jkt", &request.dpop_jkt),
    ];
    let mut out: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)))
        .collect();
    out.push(("csrf", csrf));
    out.push(("action", action));
    out
}

/// The CSRF token: the browser's (from its cookie), or a new one (set with the page).
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE).filter(|c| c.len() == 43) {
        Some(existing) => (existing.to_owned(), false),
        None => (random_token(32), true),
    }
}

fn with_csrf(mut response: Response, app: &App, csrf: &str, new: bool) -> Response {
    if new {
        let value = format!(
            "{CSRF_COOKIE}={csrf}; Path={}; HttpOnly; Secure; SameSite=Strict",
            cookie_path(app)
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

fn action(app: &App) -> String {
    format!("/v1/apps/{}/oauth2/authorize", app.id)
}

/// The sign-in page: the password form, and a passkey button where the application's
/// passkeys include this page's origin.
fn sign_in_page(
    state: &AppState,
    app: &App,
    request: &Request,
    valid: &Valid,
    headers: &HeaderMap,
    error: Option<&str>,
) -> Response {
    let (csrf, new) = csrf_token(headers);
    let to = action(app);
    let password_fields = hidden(request, &csrf, "sign_in");
    let mut passkey_fields = hidden(request, &csrf, "passkey");
    passkey_fields.extend([("ceremony_id", ""), ("credential", "")]);
    let mut forms = vec![Form {
        action: &to,
        hidden: &password_fields,
        inputs: &[
            ("login", "Email or username", "text"),
            ("password", "Password", "password"),
        ],
        button: "Sign in",
    }];
    let social: Vec<(String, Vec<(&str, &str)>)> = app
        .settings
        .oauth_providers
        .iter()
        .map(|p| {
            let mut fields = hidden(request, &csrf, "social");
            fields.push(("provider", p.name.as_str()));
            (format!("Sign in with {}", p.name), fields)
        })
        .collect();
    for (button, fields) in &social {
        forms.push(Form {
            action: &to,
            hidden: fields,
            inputs: &[],
            button,
        });
    }
    let passkeys = authorize::offers_passkeys(state.provider(), app);
    if passkeys {
        forms.push(Form {
            action: &to,
            hidden: &passkey_fields,
            inputs: &[],
            button: "Sign in with a passkey",
        });
    }
    let message = match error {
        Some(e) => format!("{e}. Try again."),
        None => format!(
            "{} asks you to sign in with your {} account.",
            valid.client.name, app.name
        ),
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let title = format!("Sign in to {}", app.name);
    let look = Look {
        script: passkeys.then_some("/v1/provider-passkey.js"),
        ..branded(app)
    };
    let page = page_scripted(status, &title, &message, &forms, look);
    with_csrf(page, app, &csrf, new)
}

/// The label of a code's input, by method.
fn code_input(method: Method) -> &'static [(&'static str, &'static str, &'static str)] {
    match method {
        Method::Totp => &[("code", "Code from your authenticator app", "text")],
        Method::RecoveryCode => &[("code", "A recovery code", "text")],
        Method::Sms => &[("code", "The code sent by SMS", "text")],
        _ => &[("code", "The code sent by email", "text")],
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Totp => "totp",
        Method::RecoveryCode => "recovery_code",
        Method::Sms => "sms",
        Method::Email => "email",
        Method::Webauthn => "webauthn",
    }
}

/// The second step: a code form per method that takes one as it is (authenticator app,
/// recovery code), a "send a code" form per channel (SMS, email), and, once a code was
/// sent (`sent`), the form for it.
fn second_factor_page(
    app: &App,
    request: &Request,
    headers: &HeaderMap,
    mfa_token: &str,
    methods: &[Method],
    sent: Option<Method>,
    error: Option<&str>,
) -> Response {
    let (csrf, new) = csrf_token(headers);
    let to = action(app);
    let mut specs: Vec<(Method, &'static str)> = Vec::new();
    if let Some(channel) = sent {
        specs.push((channel, "second_factor"));
    }
    for method in [Method::Totp, Method::RecoveryCode] {
        if methods.contains(&method) {
            specs.push((method, "second_factor"));
        }
    }
    for channel in [Method::Sms, Method::Email] {
        if methods.contains(&channel) {
            specs.push((channel, "send_code"));
        }
    }
    if specs.is_empty() {
        let message = "This account's second factor is a passkey: go back and use \"Sign in \
                       with a passkey\".";
        return page(StatusCode::FORBIDDEN, "Second factor", message, None);
    }
    let fields: Vec<Vec<(&str, &str)>> = specs
        .iter()
        .map(|(method, step)| {
            let mut fields = hidden(request, &csrf, step);
            fields.push(("mfa_token", mfa_token));
            fields.push(("method", method_name(*method)));
            fields
        })
        .collect();
    let forms: Vec<Form<'_>> = specs
        .iter()
        .zip(&fields)
        .map(|((method, step), fields)| Form {
            action: &to,
            hidden: fields,
            inputs: if *step == "send_code" {
                &[]
            } else {
                code_input(*method)
            },
            button: match (*step, method) {
                ("send_code", Method::Sms) => "Send a code by SMS",
                ("send_code", _) => "Send a code by email",
                _ => "Continue",
            },
        })
        .collect();
    let message = match (error, sent) {
        (Some(e), _) => e,
        (None, Some(Method::Sms)) => "A code is on its way by SMS.",
        (None, Some(_)) => "A code is on its way by email.",
        (None, None) => "Enter a code to finish signing in.",
    };
    with_csrf(
        page_scripted(
            StatusCode::OK,
            "Second factor",
            message,
            &forms,
            branded(app),
        ),
        app,
        &csrf,
        new,
    )
}

/// The application's branding on the provider's pages.
fn branded(app: &App) -> Look<'_> {
    Look {
        script: None,
        logo: app.settings.branding.logo_url.as_deref(),
        color: app.settings.branding.primary_color.as_deref(),
    }
}

fn consent_page(
    app: &App,
    request: &Request,
    valid: &Valid,
    headers: &HeaderMap,
    scopes: &[String],
) -> Response {
    let (csrf, new) = csrf_token(headers);
    let to = action(app);
    let mut allow = hidden(request, &csrf, "consent");
    allow.push(("allow", "yes"));
    let mut deny = hidden(request, &csrf, "consent");
    deny.push(("allow", "no"));
    let forms = [
        Form {
            action: &to,
            hidden: &allow,
            inputs: &[],
            button: "Allow",
        },
        Form {
            action: &to,
            hidden: &deny,
            inputs: &[],
            button: "Deny",
        },
    ];
    let message = format!(
        "{} asks to use your {} account: {}.",
        valid.client.name,
        app.name,
        scopes.join(", ")
    );
    with_csrf(
        page_scripted(
            StatusCode::OK,
            "Allow access?",
            &message,
            &forms,
            branded(app),
        ),
        app,
        &csrf,
        new,
    )
}

fn refused_page(refused: Refused) -> Response {
    match refused {
        Refused::Page(why) => page(StatusCode::BAD_REQUEST, "Invalid request", &why, None),
        Refused::Redirect(to) => Redirect::to(&to).into_response(),
        Refused::Failed(e) => failed_page(e),
    }
}

fn failed_page(e: ProviderError) -> Response {
    problem_page(&ApiError::from(e))
}
