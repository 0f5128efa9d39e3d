//! The flow: started at `/authorize`, finished at the callback (an identity, a link, or a
//! new user), then redeemed by the application at `/oauth/exchange`; links confirmed by
//! the linking user's own session; unlinking.

use deadpool_postgres::GenericClient;
use portcullis_common::token::Amr;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::provider::redeem;
use super::{Deps, OAuthError, callback_url, with_query};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::identities::{self, Asserted, Flow, NewFlow};
use crate::domain::one_time::{self, Purpose};
use crate::domain::passkeys;
use crate::domain::settings::providers::{OAuthProvider, ProviderKind};
use crate::domain::users::{self, NewUser, User};
use crate::flows::mfa::{self, Proof};
use crate::flows::signin::{self, SignIn, SignInError};
use crate::infra::crypto::{pkce_challenge, random_token};

/// How long a started sign-in may take at the provider.
const FLOW_TTL_SECS: i64 = 10 * 60;
/// How long the code handed back to the application lives.
const EXCHANGE_TTL_SECS: i64 = 60;

/// A started authorization: where to send the browser, and the cookie that binds the
/// flow to it.
#[derive(Debug)]
pub struct Started {
    pub location: String,
    pub binding: String,
}

/// What `/authorize` was asked.
#[derive(Debug, Default)]
pub struct Authorize<'a> {
    /// Where the browser returns (exactly one of `allowed_redirect_uris`).
    pub redirect_uri: Option<&'a str>,
    /// The application's own value, returned as `state` on the redirect.
    pub state: Option<&'a str>,
    /// A link ticket from [`begin_link`]: it names the user, the redirect URI and state.
    pub link: Option<&'a str>,
    /// The application's own PKCE challenge (S256) for the code it will exchange.
    pub code_challenge: Option<&'a str>,
    pub code_challenge_method: Option<&'a str>,
}

/// Starts a sign-in (or, with a link ticket, a link) at provider `p`. The ticket is used
/// up in the same transaction that records the flow.
pub async fn start(
    deps: Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    ask: &Authorize<'_>,
    now: i64,
) -> Result<Started, OAuthError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let (link_user, redirect_uri, client_state) = match ask.link {
        Some(ticket) => {
            let found = one_time::consume_in(&tx, app.id, Purpose::OauthLink, ticket, now)
                .await?
                .filter(|f| f.data.get("provider").and_then(Value::as_str) == Some(&p.name))
                .ok_or(OAuthError::CodeUsed(
                    "the link ticket is unknown, expired or already used",
                ))?;
            let text = |k: &str| found.data.get(k).and_then(Value::as_str).map(str::to_owned);
            (Some(found.user), text("redirect_uri"), text("state"))
        }
        None => (
            None,
            ask.redirect_uri.map(str::to_owned),
            ask.state.map(str::to_owned),
        ),
    };
    let redirect_uri = redirect_uri.ok_or(OAuthError::Invalid("redirect_uri is required"))?;
    let client_state = client_state.as_deref();
    let client_challenge = ask.code_challenge;
    let own = redirect_uri == provider_return(deps.public_url, app.id);
    check_client(app, ask, &redirect_uri, client_state, own)?;
    let discovery = deps.oauth.discover(p).await?;
    let state = random_token(32);
    let verifier = random_token(32);
    let challenge = pkce_challenge(&verifier);
    let nonce = random_token(16);
    let binding = random_token(32);
    let flow = NewFlow {
        state: &state,
        app: app.id,
        provider: &p.name,
        binding: &binding,
        verifier: &verifier,
        nonce: &nonce,
        redirect_uri: &redirect_uri,
        client_state,
        client_challenge,
        link_user,
        expires: now + FLOW_TTL_SECS,
    };
    identities::start_flow(&tx, &flow, now).await?;
    tx.commit().await?;
    let callback = callback_url(deps.public_url, app.id, &p.name);
    let asked = Asked {
        state: &state,
        challenge: &challenge,
        nonce: &nonce,
        linking: link_user.is_some(),
    };
    Ok(Started {
        location: authorize_url(p, &discovery.authorization_endpoint, &callback, &asked),
        binding,
    })
}

/// What the client application asked for, checked: a PKCE challenge of its own (S256),
/// an allowed `redirect_uri`, a short printable `state`.
fn check_client(
    app: &App,
    ask: &Authorize<'_>,
    redirect_uri: &str,
    client_state: Option<&str>,
    own: bool,
) -> Result<(), OAuthError> {
    if ask.code_challenge.is_some() && ask.code_challenge_method.unwrap_or("S256") != "S256" {
        return Err(OAuthError::Invalid("code_challenge_method must be S256"));
    }
    let challenge_ok = |c: &str| {
        c.len() == 43
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if ask.code_challenge.is_some_and(|c| !challenge_ok(c)) {
        return Err(OAuthError::Invalid(
            "code_challenge must be an S256 challenge (43 base64url characters)",
        ));
    }
    if !own && !app.settings.redirect_allowed(redirect_uri) {
        return Err(OAuthError::Invalid(
            "redirect_uri is not one of the application's allowed_redirect_uris",
        ));
    }
    if client_state.is_some_and(|s| s.len() > 512 || s.chars().any(char::is_control)) {
        return Err(OAuthError::Invalid(
            "state is at most 512 printable characters",
        ));
    }
    Ok(())
}

/// What the provider's authorization request carries of the flow.
struct Asked<'a> {
    state: &'a str,
    challenge: &'a str,
    nonce: &'a str,
    linking: bool,
}

/// The provider's authorization URL for this flow.
fn authorize_url(p: &OAuthProvider, endpoint: &str, callback: &str, asked: &Asked<'_>) -> String {
    let scope = p.scopes();
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", p.client_id.as_str()),
        ("redirect_uri", callback),
        ("scope", scope.as_str()),
        ("state", asked.state),
        ("code_challenge", asked.challenge),
        ("code_challenge_method", "S256"),
    ];
    if p.kind != ProviderKind::Github {
        pairs.push(("nonce", asked.nonce));
        if asked.linking {
            // A link is never approved silently by a provider session in the browser.
            pairs.push(("prompt", "consent"));
        }
    }
    if p.kind == ProviderKind::Apple {
        // Apple posts the answer when names or emails are asked for.
        pairs.push(("response_mode", "form_post"));
    }
    with_query(endpoint, &pairs)
}

/// Starts linking `p` to a signed-in user (who must have signed in recently, or prove it
/// is them): a short-lived ticket, and the `/authorize` URL that carries it.
#[allow(clippy::too_many_arguments)]
pub async fn begin_link(
    deps: Deps<'_>,
    mfa: mfa::Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    user: &User,
    session: Uuid,
    redirect_uri: &str,
    state: Option<&str>,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<String, OAuthError> {
    if !app.settings.redirect_allowed(redirect_uri) {
        return Err(OAuthError::Invalid(
            "redirect_uri is not one of the application's allowed_redirect_uris",
        ));
    }
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    mfa::proof::recent_or_proof_in(&tx, mfa, app, user, session, proof, ctx).await?;
    let ticket = one_time::issue_in(
        &tx,
        app.id,
        user.id,
        Purpose::OauthLink,
        json!({ "provider": p.name, "redirect_uri": redirect_uri, "state": state }),
        ctx.now,
    )
    .await?;
    tx.commit().await?;
    let base = format!(
        "{}/v1/apps/{}/oauth/{}/authorize",
        deps.public_url, app.id, p.name
    );
    Ok(with_query(&base, &[("link", &ticket)]))
}

/// The provider's answer at the callback.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// Where a finished flow sends the browser: the application's redirect URI, with the
/// application's own `state` when it sent one.
#[derive(Debug)]
pub struct Back {
    redirect_uri: String,
    client_state: Option<String>,
}

impl Back {
    /// The redirect URI with `pairs` (and `state`) in its query.
    pub fn url(&self, pairs: &[(&str, &str)]) -> String {
        let mut pairs = pairs.to_vec();
        if let Some(s) = &self.client_state {
            pairs.push(("state", s.as_str()));
        }
        with_query(&self.redirect_uri, &pairs)
    }
}

/// How a flow that reached the callback ended.
#[derive(Debug)]
pub enum Outcome {
    /// Signed in: the one-time code for `/oauth/exchange`.
    SignedIn(String),
    /// A link waiting for the linking user's session to confirm it with this code.
    LinkPending(String),
    /// Already linked to the linking user.
    Linked(String),
    /// The user (or the provider) said no; the provider's error, cleaned.
    Denied(String),
    /// Refused here (the browser is told the contract's code of it).
    Refused(OAuthError),
}

/// A callback's result: where to go back, and what to say there.
#[derive(Debug)]
pub struct Landing {
    pub back: Back,
    pub outcome: Outcome,
}

/// The callback: takes the flow this browser started and finishes it. An unknown flow is
/// an error (there is nowhere safe to send the browser); once the flow is known, every
/// result goes back to the application's redirect URI.
pub async fn callback(
    deps: Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    answer: &Answer,
    binding: Option<&str>,
    ctx: &Ctx,
) -> Result<Landing, OAuthError> {
    let state = answer.state.as_deref().unwrap_or("");
    let binding = binding.ok_or(OAuthError::InvalidState)?;
    if state.len() > 256 || binding.len() > 256 {
        return Err(OAuthError::InvalidState);
    }
    let client = deps.pool.get().await?;
    let flow = identities::take_flow(&client, app.id, &p.name, state, binding, ctx.now)
        .await?
        .ok_or(OAuthError::InvalidState)?;
    drop(client);
    // Re-checked before anything happens: the allowlist may have lost the URI meanwhile.
    let own = flow.redirect_uri == provider_return(deps.public_url, app.id);
    if !own && !app.settings.redirect_allowed(&flow.redirect_uri) {
        return Err(OAuthError::Invalid("the redirect_uri is no longer allowed"));
    }
    let back = Back {
        redirect_uri: flow.redirect_uri.clone(),
        client_state: flow.client_state.clone(),
    };
    if let Some(error) = &answer.error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Ok(Landing {
            back,
            outcome: Outcome::Denied(error),
        });
    }
    let outcome = match finish(deps, app, p, &flow, answer.code.as_deref(), ctx).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Refused(e),
    };
    Ok(Landing { back, outcome })
}

async fn finish(
    deps: Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    flow: &Flow,
    code: Option<&str>,
    ctx: &Ctx,
) -> Result<Outcome, OAuthError> {
    let code = code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or(OAuthError::Invalid("the provider sent no code"))?;
    let asserted = redeem(&deps, app, p, flow, code).await?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let identity = identities::owner_in(&tx, app.id, &p.name, &asserted).await?;
    let code = random_token(32);
    let expires = ctx.now + EXCHANGE_TTL_SECS;
    let user_id = match (identity, flow.link_user) {
        (Some(owner), Some(linking)) if owner != linking => {
            return Err(OAuthError::IdentityLinked(
                "this identity is already linked to another user",
            ));
        }
        (Some(_), Some(_)) => return Ok(Outcome::Linked(p.name.clone())),
        (Some(owner), None) => {
            identities::touch_in(&tx, app.id, &p.name, &asserted, ctx.now).await?;
            owner
        }
        (None, Some(linking)) => {
            // Not linked yet: only the linking user's own session may finish it, so a
            // link URL opened by someone else (or forced on them) links nothing.
            let asserted = serde_json::to_value(&asserted)
                .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
            identities::hand_back_in(&tx, flow, &code, linking, expires, Some(&asserted)).await?;
            tx.commit().await?;
            return Ok(Outcome::LinkPending(code));
        }
        (None, None) => {
            let existing = match &asserted.email {
                Some(email) => users::by_email_in(&tx, app.id, email).await?,
                None => None,
            };
            match existing {
                // Both sides must have proven the address: an unverified local address may
                // belong to someone who registered it in advance (a pre-hijack).
                Some((user, true)) if asserted.email_verified && p.auto_link_verified_email => {
                    link(&tx, app.id, user, p, &asserted, true, ctx).await?;
                    user
                }
                Some(_) => return Err(OAuthError::EmailTaken),
                None => create(&tx, app, p, &asserted, ctx).await?,
            }
        }
    };
    identities::hand_back_in(&tx, flow, &code, user_id, expires, None).await?;
    tx.commit().await?;
    Ok(Outcome::SignedIn(code))
}

async fn link(
    tx: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    p: &OAuthProvider,
    asserted: &Asserted,
    automatic: bool,
    ctx: &Ctx,
) -> Result<(), OAuthError> {
    if !identities::link_in(tx, app, user, &p.name, asserted, ctx.now).await? {
        return Err(OAuthError::IdentityLinked(
            "this identity is linked already, or the user has another at this provider",
        ));
    }
    audit::record(
        tx,
        Event::by_user(
            app,
            user,
            "oauth.linked",
            json!({ "provider": p.name, "automatic": automatic }),
            ctx,
        ),
    )
    .await?;
    Ok(())
}

async fn create(
    tx: &impl GenericClient,
    app: &App,
    p: &OAuthProvider,
    asserted: &Asserted,
    ctx: &Ctx,
) -> Result<Uuid, OAuthError> {
    // An address the provider did not verify stays on the identity only: on the user it
    // would squat the address against its real owner's registration.
    let email = match &asserted.email {
        Some(e) if asserted.email_verified => Some(users::check_email(e)?),
        _ => None,
    };
    let user = users::insert(
        tx,
        app.id,
        &NewUser {
            email,
            username: None,
            phone: None,
            // "!" is no Argon2 hash: no password matches until the user sets one.
            password_hash: "!".to_owned(),
            roles: Vec::new(),
            active: true,
            expires_at: None,
            email_verified: asserted.email_verified,
            guest: false,
            display_name: asserted.name.clone().map(|n| n.chars().take(200).collect()),
        },
    )
    .await?;
    audit::record(
        tx,
        Event::by_user(
            app.id,
            user.id,
            "user.created",
            json!({ "provider": p.name }),
            ctx,
        ),
    )
    .await?;
    link(tx, app.id, user.id, p, asserted, false, ctx).await?;
    Ok(user.id)
}

/// `POST /oauth/exchange`: the one-time code (single use, 60 s) redeemed, then the usual
/// sign-in answer (`amr` `oauth`, or a step-up). When the application sent a
/// `code_challenge` to `/authorize`, the code needs its verifier.
pub async fn exchange(
    deps: signin::Deps<'_>,
    app: &App,
    code: &str,
    verifier: Option<&str>,
    device: Option<&str>,
    ctx: &Ctx,
) -> Result<SignIn, OAuthError> {
    let device = users::check_device(device)?;
    let user = redeem_user(deps, app, code, verifier, ctx).await?;
    let client = deps.pool.get().await?;
    let amr = vec![Amr::Oauth];
    let signed_in =
        signin::after_first_factor(deps, app, &user, amr, device.as_deref(), ctx).await?;
    // Recorded once the outcome is known (a step-up is not a sign-in yet).
    let event = match &signed_in {
        SignIn::Tokens(_) => "login.succeeded",
        SignIn::Mfa(_) => "login.mfa_required",
    };
    let details = json!({ "method": "oauth" });
    audit::record(
        &client,
        Event::by_user(app.id, user.id, event, details, ctx),
    )
    .await?;
    if matches!(signed_in, SignIn::Tokens(_)) {
        metrics::counter!("portcullis_logins_total", "outcome" => "ok").increment(1);
    }
    Ok(signed_in)
}

/// The one-time code (single use, 60 s, with its verifier when the start sent a
/// challenge) redeemed: the user it signs in (here, and on the OpenID Provider's page).
pub async fn redeem_user(
    deps: signin::Deps<'_>,
    app: &App,
    code: &str,
    verifier: Option<&str>,
    ctx: &Ctx,
) -> Result<User, OAuthError> {
    const USED: OAuthError = OAuthError::CodeUsed("the code is unknown, expired or already used");
    if code.is_empty() || code.len() > 256 || verifier.is_some_and(|v| v.len() > 128) {
        return Err(USED);
    }
    let challenge = verifier.map(pkce_challenge);
    let client = deps.pool.get().await?;
    let user_id = identities::redeem_code(&client, app.id, code, challenge.as_deref(), ctx.now)
        .await?
        .ok_or(USED)?;
    users::find(&client, app.id, user_id)
        .await?
        .ok_or(OAuthError::SignIn(SignInError::InvalidCredentials))
}

/// Where a social sign-in begun on the OpenID Provider's page comes back: always an
/// allowed redirect URI of the application (the provider's own page, not a client's).
pub fn provider_return(public_url: &str, app: Uuid) -> String {
    format!(
        "{}/v1/apps/{app}/oauth2/social",
        public_url.trim_end_matches('/')
    )
}

/// `POST /oauth/{provider}/link/confirm`: the link code, by the session of the user who
/// asked for the link (any other user's token finds nothing).
pub async fn confirm_link(
    deps: Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    user: Uuid,
    code: &str,
    ctx: &Ctx,
) -> Result<(), OAuthError> {
    const USED: OAuthError =
        OAuthError::CodeUsed("the link code is unknown, expired, already used or not yours");
    if code.is_empty() || code.len() > 256 {
        return Err(USED);
    }
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let asserted: Value =
        identities::redeem_link_code_in(&tx, app.id, &p.name, user, code, ctx.now)
            .await?
            .ok_or(USED)?;
    let asserted: Asserted = serde_json::from_value(asserted)
        .map_err(|e| OAuthError::Unavailable(format!("a stored identity: {e}")))?;
    link(&tx, app.id, user, p, &asserted, false, ctx).await?;
    tx.commit().await?;
    Ok(())
}

/// Unlinks `provider` from `user`, unless it is the last way to sign in (no password, no
/// other identity, no passkey).
pub async fn unlink(
    deps: Deps<'_>,
    app: Uuid,
    user: &User,
    provider: &str,
    ctx: &Ctx,
) -> Result<(), OAuthError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    users::lock_in(&tx, user.id).await?;
    let (this, others) = identities::count_in(&tx, user.id, provider).await?;
    if this == 0 {
        return Err(OAuthError::NotLinked);
    }
    if others == 0
        && !users::has_password_in(&tx, user.id).await?
        && passkeys::count_in(&tx, user.id).await? == 0
    {
        return Err(OAuthError::LastWayIn);
    }
    identities::unlink_in(&tx, user.id, provider).await?;
    audit::record(
        &tx,
        Event::by_user(
            app,
            user.id,
            "oauth.unlinked",
            json!({ "provider": provider }),
            ctx,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
