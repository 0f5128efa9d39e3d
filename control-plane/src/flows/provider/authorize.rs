//! The authorization endpoint (code flow only, OIDC Core 3.1.2): the request checked, then
//! the browser signed in (or already signed in: SSO), consent where needed, and a
//! single-use code sent back to the registered redirect URI.
//!
//! A request naming an unknown client or an unregistered redirect URI is answered with a
//! page, never a redirect (RFC 6749 §4.1.2.1); every other refusal goes back to the client
//! on its redirect URI with `error`, `state` and `iss` (RFC 9207).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Deps, OAuthCode, ProviderError, issuer, oauth};
use crate::domain::apps::App;
use crate::domain::authorizations::{self, BrowserSession, Code};
use crate::domain::clients::{self, Client};
use crate::domain::users::User;
use crate::domain::{Ctx, Jkt};
use crate::flows::signin::password::{self, Attempt};
use crate::flows::signin::stepup;
use crate::infra::clock;

/// The parameters of an authorization request, as sent (query or form).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Request {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    /// RFC 9449 §10: the thumbprint of the DPoP key that alone may redeem the code.
    pub dpop_jkt: Option<String>,
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct Valid {
    pub client: Client,
    pub redirect_uri: String,
    /// The scopes granted: those asked for that the client may have.
    pub scope: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    /// The DPoP key the code is bound to.
    pub dpop_jkt: Option<Jkt>,
}

/// A refused request: shown as a page, or sent back to the client.
#[derive(Debug)]
pub enum Refused {
    /// No trustworthy redirect URI: the browser stays here.
    Page(String),
    /// The client's redirect URI with the error.
    Redirect(String),
    Failed(ProviderError),
}

impl<E: Into<ProviderError>> From<E> for Refused {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

/// `redirect_uri` with `params` added to its query.
pub fn with_query(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let joiner = if redirect_uri.contains('?') { '&' } else { '?' };
    format!("{redirect_uri}{joiner}{query}")
}

/// Where an error goes back to the client.
fn error_redirect(deps: Deps<'_>, app: &App, valid: &Valid, code: OAuthCode, why: &str) -> String {
    let iss = issuer(deps.public_url, app.id);
    let mut params = vec![("error", code.as_str()), ("error_description", why)];
    if let Some(state) = &valid.state {
        params.push(("state", state));
    }
    params.push(("iss", &iss));
    with_query(&valid.redirect_uri, &params)
}

const LIMIT: usize = 2048;

/// Checks an authorization request against the application's clients.
pub async fn validate(deps: Deps<'_>, app: &App, r: &Request) -> Result<Valid, Refused> {
    let too_long = [
        &r.client_id,
        &r.redirect_uri,
        &r.scope,
        &r.state,
        &r.nonce,
        &r.code_challenge,
        &r.login_hint,
        &r.dpop_jkt,
    ]
    .iter()
    .any(|v| v.as_ref().is_some_and(|v| v.len() > LIMIT));
    if too_long {
        return Err(Refused::Page("a parameter is too long".into()));
    }
    let client_id = r.client_id.as_deref().unwrap_or("");
    let db = deps.signin.pool.get().await?;
    let client = clients::by_client_id(&db, app.id, client_id)
        .await?
        .ok_or_else(|| Refused::Page("unknown client_id".into()))?;
    let redirect_uri = r.redirect_uri.clone().unwrap_or_default();
    if !client.redirect_uris.contains(&redirect_uri) {
        return Err(Refused::Page(
            "redirect_uri is not one the client registered".into(),
        ));
    }
    let mut valid = Valid {
        client,
        redirect_uri,
        scope: Vec::new(),
        state: r.state.clone(),
        nonce: r.nonce.clone(),
        code_challenge: r.code_challenge.clone(),
        prompt: r
            .prompt
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        max_age: None,
        login_hint: r.login_hint.clone(),
        dpop_jkt: None,
    };
    let refuse = |valid: &Valid, code, why: &str| {
        Err(Refused::Redirect(error_redirect(
            deps, app, valid, code, why,
        )))
    };
    if r.response_type.as_deref() != Some("code") {
        return refuse(
            &valid,
            OAuthCode::UnsupportedResponseType,
            "only response_type=code is supported",
        );
    }
    if !valid.client.allows_grant("authorization_code") {
        return refuse(
            &valid,
            OAuthCode::UnauthorizedClient,
            "the client may not use the authorization code grant",
        );
    }
    match (
        r.code_challenge.as_deref(),
        r.code_challenge_method.as_deref(),
    ) {
        (None, _) if !valid.client.confidential => {
            return refuse(
                &valid,
                OAuthCode::InvalidRequest,
                "a public client must send a PKCE code_challenge (S256)",
            );
        }
        (Some(c), Some("S256")) if c.len() == 43 => {}
        (Some(_), _) => {
            return refuse(
                &valid,
                OAuthCode::InvalidRequest,
                "code_challenge must be S256 (43 characters) with code_challenge_method=S256",
            );
        }
        (None, _) => {}
    }
    let asked: Vec<&str> = r
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    valid.scope = asked
        .iter()
        .filter(|s| valid.client.scopes.iter().any(|allowed| allowed == *s))
        .map(|s| (*s).to_owned())
        .collect();
    valid.scope.dedup();
    if !valid.scope.iter().any(|s| s == "openid") {
        return refuse(
            &valid,
            OAuthCode::InvalidScope,
            "scope must include openid (and scopes the client may have)",
        );
    }
    if let Some(max_age) = &r.max_age {
        match max_age.parse::<i64>() {
            Ok(n) if n >= 0 => valid.max_age = Some(n),
            _ => {
                return refuse(
                    &valid,
                    OAuthCode::InvalidRequest,
                    "max_age must be a number of seconds",
                );
            }
        }
    }
    if let Some(jkt) = &r.dpop_jkt {
        let Some(jkt) = Jkt::parse(jkt) else {
            return refuse(
                &valid,
                OAuthCode::InvalidRequest,
                "dpop_jkt must be a JWK SHA-256 thumbprint (43 base64url characters)",
            );
        };
        valid.dpop_jkt = Some(jkt);
    }
    let known = ["none", "login", "consent"];
    if valid.prompt.iter().any(|p| !known.contains(&p.as_str()))
        || (valid.prompt.iter().any(|p| p == "none") && valid.prompt.len() > 1)
    {
        return refuse(
            &valid,
            OAuthCode::InvalidRequest,
            "prompt must be none, or login and/or consent",
        );
    }
    Ok(valid)
}

/// What the browser sees next.
#[derive(Debug)]
pub enum Next {
    /// The sign-in page.
    SignIn,
    /// The consent page, for these scopes.
    Consent(Vec<String>),
    /// Back to the client (a code, or an error).
    Redirect(String),
}

/// The step after a valid request, for the browser's session at the provider (if any).
/// `signed_in_now`: the browser has just signed in on this request's page (`prompt=login`
/// is satisfied).
pub async fn next(
    deps: Deps<'_>,
    app: &App,
    valid: &Valid,
    browser: Option<&BrowserSession>,
    signed_in_now: bool,
    now: i64,
) -> Result<Next, ProviderError> {
    let none = valid.prompt.iter().any(|p| p == "none");
    let fresh_enough = |b: &BrowserSession| {
        valid
            .max_age
            .is_none_or(|max| now - b.auth_time.unix_timestamp() <= max)
    };
    let must_sign_in = !signed_in_now && valid.prompt.iter().any(|p| p == "login");
    let Some(browser) = browser.filter(|b| fresh_enough(b) && !must_sign_in) else {
        if none {
            let why = "the user is not signed in at the provider";
            let to = error_redirect(deps, app, valid, OAuthCode::LoginRequired, why);
            return Ok(Next::Redirect(to));
        }
        return Ok(Next::SignIn);
    };
    let db = deps.signin.pool.get().await?;
    let consented = authorizations::consented(&db, browser.user, valid.client.id).await?;
    drop(db);
    let ask: Vec<String> = if valid.prompt.iter().any(|p| p == "consent") {
        valid.scope.clone()
    } else if valid.client.first_party {
        Vec::new()
    } else {
        valid
            .scope
            .iter()
            .filter(|s| !consented.contains(s))
            .cloned()
            .collect()
    };
    if !ask.is_empty() {
        if none {
            let why = "the user has not consented to this client";
            let to = error_redirect(deps, app, valid, OAuthCode::ConsentRequired, why);
            return Ok(Next::Redirect(to));
        }
        return Ok(Next::Consent(ask));
    }
    Ok(Next::Redirect(
        code_redirect(deps, app, valid, browser, now).await?,
    ))
}

/// Issues a code for `browser`'s user and the redirect carrying it.
async fn code_redirect(
    deps: Deps<'_>,
    app: &App,
    valid: &Valid,
    browser: &BrowserSession,
    now: i64,
) -> Result<String, ProviderError> {
    let code = Code {
        client: valid.client.id,
        user: browser.user,
        provider_session: Some(browser.id),
        redirect_uri: valid.redirect_uri.clone(),
        scope: valid.scope.join(" "),
        nonce: valid.nonce.clone(),
        code_challenge: valid.code_challenge.clone(),
        amr: browser.amr.clone(),
        auth_time: browser.auth_time,
        dpop_jkt: valid.dpop_jkt,
    };
    let db = deps.signin.pool.get().await?;
    let secret = authorizations::issue_code(&db, &code, now).await?;
    let iss = issuer(deps.public_url, app.id);
    let mut params = vec![("code", secret.as_str())];
    if let Some(state) = &valid.state {
        params.push(("state", state));
    }
    params.push(("iss", &iss));
    Ok(with_query(&valid.redirect_uri, &params))
}

/// The answer to the consent page: `allow`ed, the scopes are recorded and a code issued;
/// denied, `access_denied` goes back to the client.
pub async fn consent(
    deps: Deps<'_>,
    app: &App,
    valid: &Valid,
    browser: &BrowserSession,
    allow: bool,
    now: i64,
) -> Result<String, ProviderError> {
    if !allow {
        let why = "the user denied the request";
        return Ok(error_redirect(
            deps,
            app,
            valid,
            OAuthCode::AccessDenied,
            why,
        ));
    }
    let db = deps.signin.pool.get().await?;
    authorizations::consent(&db, browser.user, valid.client.id, &valid.scope).await?;
    drop(db);
    code_redirect(deps, app, valid, browser, now).await
}

/// A sign-in on the provider's page: signed in (a browser session and its cookie's
/// secret), or a second factor to ask for (the step-up's `mfa_token` and methods).
#[derive(Debug)]
pub enum SignedIn {
    Done(BrowserSession, String),
    SecondFactor(stepup::Challenge),
}

/// Checks a password sign-in on the provider's page (with its lockout counting, CAPTCHA
/// and audit), then opens the browser session unless a second factor is due.
pub async fn sign_in(
    deps: Deps<'_>,
    app: &App,
    attempt: &Attempt<'_>,
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    let user = password::check(deps.signin, app, attempt, ctx).await?;
    let amr = vec![portcullis_common::token::Amr::Pwd];
    after_first_factor(deps, app, &user, amr, ctx).await
}

/// After a first factor (`amr`): the browser session, or the second factor due first.
async fn after_first_factor(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    amr: Vec<portcullis_common::token::Amr>,
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    let db = deps.signin.pool.get().await?;
    let methods = stepup::methods_for(&db, app, user).await?;
    drop(db);
    if let Some(methods) = methods {
        let challenge =
            stepup::challenge(deps.signin.pool, app, user, methods, &amr, None, ctx).await?;
        return Ok(SignedIn::SecondFactor(challenge));
    }
    browser_session(deps, app, user, &amr, ctx).await
}

/// A passkey sign-in on the provider's page (the ceremony begun at
/// `/passkeys/login/begin`): two factors at once, so the browser session opens.
pub async fn sign_in_with_passkey(
    deps: Deps<'_>,
    app: &App,
    ceremony_id: &str,
    credential: &webauthn_rs::prelude::PublicKeyCredential,
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    let (user, amr) =
        crate::flows::signin::passkey::verify(deps.signin, app, ceremony_id, credential, ctx)
            .await?;
    browser_session(deps, app, &user, &amr, ctx).await
}

/// A social sign-in begun on the provider's page, back with its one-time code (and the
/// verifier of the challenge the page sent): a browser session, or a second factor due.
pub async fn sign_in_with_social(
    deps: Deps<'_>,
    app: &App,
    code: &str,
    verifier: &str,
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    let user = crate::flows::oauth::redeem_user(deps.signin, app, code, Some(verifier), ctx)
        .await
        .map_err(|e| oauth(OAuthCode::AccessDenied, e.to_string()))?;
    let amr = vec![portcullis_common::token::Amr::Oauth];
    after_first_factor(deps, app, &user, amr, ctx).await
}

/// Whether the provider's sign-in page can offer passkeys: they are on, and the page's
/// origin (the public URL's) is one of theirs.
pub fn offers_passkeys(deps: Deps<'_>, app: &App) -> bool {
    let Ok(public) = webauthn_rs::prelude::Url::parse(deps.public_url) else {
        return false;
    };
    let origin = public.origin().ascii_serialization();
    app.settings
        .passkeys
        .as_ref()
        .is_some_and(|p| p.origins.contains(&origin))
}

/// The second factor on the provider's page: a code for the step-up `mfa_token`.
pub async fn second_factor(
    deps: Deps<'_>,
    app: &App,
    mfa_token: &str,
    method: crate::domain::factors::Method,
    code: &str,
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    let answer = stepup::Answer::Code(code);
    let passed = stepup::complete(deps.signin, app, mfa_token, method, answer, ctx).await?;
    let db = deps.signin.pool.get().await?;
    let user = crate::domain::users::find(&db, app.id, passed.user)
        .await?
        .ok_or_else(|| oauth(OAuthCode::AccessDenied, "the user is gone"))?;
    drop(db);
    browser_session(deps, app, &user, &passed.amr, ctx).await
}

async fn browser_session(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    amr: &[portcullis_common::token::Amr],
    ctx: &Ctx,
) -> Result<SignedIn, ProviderError> {
    if user.disabled(clock::at(ctx.now)) {
        return Err(crate::flows::signin::SignInError::UserDisabled.into());
    }
    let db = deps.signin.pool.get().await?;
    let (session, secret) =
        authorizations::open_browser_session(&db, app.id, user.id, amr, ctx.now).await?;
    Ok(SignedIn::Done(session, secret))
}

/// The browser session whose cookie holds `secret`, if live.
pub async fn browser(
    deps: Deps<'_>,
    app: Uuid,
    secret: Option<&str>,
    now: i64,
) -> Result<Option<BrowserSession>, ProviderError> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    let db = deps.signin.pool.get().await?;
    Ok(authorizations::browser_session(&db, app, secret, now).await?)
}
