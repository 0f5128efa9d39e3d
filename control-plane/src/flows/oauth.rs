//! Social login over OAuth 2.0 / OpenID Connect (API.md §3 `/oauth/*`): the control plane
//! is the relying party of the providers an application configures.
//!
//! ```text
//! GET  /oauth/{p}/authorize?redirect_uri=R[&state=S]      (R exactly in the allowlist)
//!   -> oauth_flows row { sha256(state), sha256(browser cookie), PKCE verifier, nonce, R }
//!   -> Set-Cookie (the browser binding) + 302 to the provider (code, S256, state, nonce)
//! GET|POST /oauth/{p}/callback?code&state
//!   -> the row by state, unused, unexpired, same browser        else 400 invalid_state
//!   -> used (single use) -> code + verifier at the token endpoint -> ID token verified
//!      (JWKS signature, alg pinned to the key, iss, aud, azp, exp, nonce)
//!   -> identity by (provider, subject): its user | a link | a new user | an email that is
//!      someone's: linked only if the provider says verified AND the app allows it
//!   -> 302 R?code=C&state=S     (C: one-time, 60 s)     | R?error=…&state=S
//! POST /oauth/exchange {code} -> the usual sign-in answer (amr ["oauth"], or a step-up)
//! ```
//!
//! Provider calls go through the webhook client (the SSRF guard: no private addresses
//! unless `PORTCULLIS_WEBHOOK_ALLOW_PRIVATE`, which also permits `http://` issuers).
//! Client secrets are sealed in the settings (bound to the app, provider, issuer and
//! client id) and shown masked.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::providers::{OAuthProvider, ProviderKind};
use crate::domain::users::{self, NewUser, User};
use crate::error::ApiError;
use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::egress::{Egress, EgressError};
use crate::infra::store::Prepared as _;
use portcullis_common::ErrorCode;

/// How long a started sign-in may take at the provider.
const FLOW_TTL_SECS: i64 = 10 * 60;
/// How long the code handed back to the application lives.
const EXCHANGE_TTL_SECS: i64 = 60;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Discovery documents and key sets are cached this long (refetched early for a new kid).
const CACHE_FOR: Duration = Duration::from_secs(3600);
const CLOCK_LEEWAY_SECS: u64 = 60;

/// The endpoints of a provider, discovered (OIDC) or fixed (GitHub).
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// The provider client: HTTP through the SSRF guard, discovery and key sets cached.
#[derive(Clone)]
pub struct OAuth {
    egress: Egress,
    discovery: moka::sync::Cache<String, Arc<Discovery>>,
    keys: moka::sync::Cache<String, (Arc<jsonwebtoken::jwk::JwkSet>, std::time::Instant)>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuth(..)")
    }
}

fn down(what: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable("the identity provider", what)
}

impl OAuth {
    pub fn new(egress: Egress) -> Self {
        Self {
            egress,
            discovery: moka::sync::Cache::builder()
                .max_capacity(1000)
                .time_to_live(CACHE_FOR)
                .build(),
            keys: moka::sync::Cache::builder()
                .max_capacity(1000)
                .time_to_live(CACHE_FOR)
                .build(),
        }
    }

    fn target(&self, url: &str) -> Result<http::Uri, ApiError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| down(&format!("{url:?} is not a URL")))?;
        let https = uri.scheme_str() == Some("https");
        if !(https || (self.egress.allows_private() && uri.scheme_str() == Some("http"))) {
            return Err(down(&"provider URLs must be https://"));
        }
        if self.egress.refuses(&uri) {
            return Err(down(&"a provider URL names a private address"));
        }
        Ok(uri)
    }

    async fn call(&self, request: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), ApiError> {
        match self
            .egress
            .call(request, CALL_TIMEOUT, MAX_ANSWER_BYTES)
            .await
        {
            Ok(answer) => Ok((answer.status, answer.body)),
            Err(EgressError::Refused) => Err(down(&"a provider URL names a private address")),
            Err(e) => Err(down(&e)),
        }
    }

    async fn get_json(&self, url: &str, bearer: Option<&str>) -> Result<Value, ApiError> {
        let mut request = http::Request::get(self.target(url)?)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis");
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::internal(&e))?;
        let (status, body) = self.call(request).await?;
        if status != 200 {
            return Err(down(&format!("{url} answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|_| down(&format!("{url} did not answer JSON")))
    }

    async fn discover(&self, p: &OAuthProvider) -> Result<Arc<Discovery>, ApiError> {
        let issuer = p.issuer();
        if p.kind == ProviderKind::Github {
            let api = if issuer == "https://github.com" {
                "https://api.github.com".to_owned()
            } else {
                format!("{issuer}/api/v3")
            };
            return Ok(Arc::new(Discovery {
                issuer: api,
                authorization_endpoint: format!("{issuer}/login/oauth/authorize"),
                token_endpoint: format!("{issuer}/login/oauth/access_token"),
                jwks_uri: None,
                token_endpoint_auth_methods_supported: vec!["client_secret_post".into()],
            }));
        }
        if let Some(d) = self.discovery.get(&issuer) {
            return Ok(d);
        }
        let url = format!("{issuer}/.well-known/openid-configuration");
        let doc: Discovery = serde_json::from_value(self.get_json(&url, None).await?)
            .map_err(|e| down(&format!("discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: the document is the issuer's own.
        let template = p.kind == ProviderKind::Microsoft && doc.issuer.contains("{tenantid}");
        if doc.issuer.trim_end_matches('/') != issuer && !template {
            return Err(down(&format!(
                "discovery names issuer {:?}, not {issuer:?}",
                doc.issuer
            )));
        }
        let doc = Arc::new(doc);
        self.discovery.insert(issuer, doc.clone());
        Ok(doc)
    }

    async fn key_set(
        &self,
        jwks_uri: &str,
        kid: Option<&str>,
    ) -> Result<Arc<jsonwebtoken::jwk::JwkSet>, ApiError> {
        if let Some((set, fetched)) = self.keys.get(jwks_uri) {
            let known = kid.is_none_or(|k| set.find(k).is_some());
            // An unknown kid refetches (a rotation), at most every 30 s.
            if known || fetched.elapsed() < Duration::from_secs(30) {
                return Ok(set);
            }
        }
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(self.get_json(jwks_uri, None).await?)
                .map_err(|e| down(&format!("key set: {e}")))?;
        let set = Arc::new(set);
        self.keys.insert(
            jwks_uri.to_owned(),
            (set.clone(), std::time::Instant::now()),
        );
        Ok(set)
    }
}

/// What a provider says about the person who signed in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Asserted {
    /// The `iss` of the ID token (Microsoft: the tenant's), or GitHub's API base.
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Value,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    email: Option<String>,
    /// A boolean, or (Apple) the string `"true"`.
    #[serde(default)]
    email_verified: Value,
    #[serde(default)]
    name: Option<String>,
}

fn invalid_id_token(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidToken,
        format!("the provider's ID token was refused: {why}"),
    )
}

/// Verifies an ID token (OpenID Connect Core §3.1.3.7, RFC 8725): the signature with the
/// provider's key named by `kid`, the algorithm pinned by that key's type, `iss`, `aud`
/// (and `azp` when several), `exp`/`iat`, and the `nonce` of this flow.
async fn verify_id_token(
    oauth: &OAuth,
    discovery: &Discovery,
    p: &OAuthProvider,
    id_token: &str,
    nonce: &str,
) -> Result<Asserted, ApiError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(id_token).map_err(|_| invalid_id_token("header"))?;
    let allowed = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    if !allowed.contains(&header.alg) {
        return Err(invalid_id_token("algorithm"));
    }
    let jwks_uri = discovery
        .jwks_uri
        .as_deref()
        .ok_or_else(|| down(&"the discovery document has no jwks_uri"))?;
    let set = oauth.key_set(jwks_uri, header.kid.as_deref()).await?;
    let jwk = match &header.kid {
        Some(kid) => set.find(kid),
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    }
    .ok_or_else(|| invalid_id_token("unknown key"))?;
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return Err(invalid_id_token("an encryption key"));
    }
    // The key's own algorithm, when it names one, must be the token's.
    if let Some(key_alg) = jwk.common.key_algorithm
        && format!("{key_alg:?}") != format!("{:?}", header.alg)
    {
        return Err(invalid_id_token("the key is for another algorithm"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid_id_token("unusable key"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = CLOCK_LEEWAY_SECS;
    validation.set_audience(&[p.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    // `iss` is compared below (Microsoft's multi-tenant issuer is a template).
    let data = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        invalid_id_token(match e.kind() {
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::InvalidAudience => "audience",
            ErrorKind::InvalidSignature => "signature",
            ErrorKind::ImmatureSignature => "not yet valid",
            _ => "malformed",
        })
    })?;
    let c = data.claims;
    let expected_iss = match &c.tid {
        Some(tid)
            if p.kind == ProviderKind::Microsoft && discovery.issuer.contains("{tenantid}") =>
        {
            discovery.issuer.replace("{tenantid}", tid)
        }
        _ => discovery.issuer.clone(),
    };
    if c.iss != expected_iss {
        return Err(invalid_id_token("issuer"));
    }
    let several = c.aud.as_array().is_some_and(|a| a.len() > 1);
    if (several || c.azp.is_some()) && c.azp.as_deref() != Some(p.client_id.as_str()) {
        return Err(invalid_id_token("authorized party"));
    }
    let nonce_ok = c.nonce.as_deref().is_some_and(|n| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            n.as_bytes(),
            nonce.as_bytes(),
        ))
    });
    if !nonce_ok {
        return Err(invalid_id_token("nonce"));
    }
    if c.sub.is_empty() || c.sub.len() > 255 {
        return Err(invalid_id_token("subject"));
    }
    let verified = c.email_verified == Value::Bool(true) || c.email_verified == json!("true");
    Ok(Asserted {
        issuer: c.iss,
        subject: c.sub,
        email: c.email,
        email_verified: verified,
        name: c.name,
    })
}

/// GitHub: the user (`id`, `name`) and its primary verified email from the user API.
/// Without the `user:email` (or `user`) scope there is no address to read; with it, a
/// failed read is an outage, never "no address" (that would skip the address checks).
async fn github_user(
    oauth: &OAuth,
    api: &str,
    token: &str,
    email_scope: bool,
) -> Result<Asserted, ApiError> {
    let user = oauth.get_json(&format!("{api}/user"), Some(token)).await?;
    let id = user
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| down(&"the user API answered no id"))?;
    let emails = match email_scope {
        true => {
            oauth
                .get_json(&format!("{api}/user/emails"), Some(token))
                .await?
        }
        false => Value::Null,
    };
    let primary = emails.as_array().and_then(|list| {
        list.iter()
            .find(|e| e.get("primary") == Some(&Value::Bool(true)))
    });
    Ok(Asserted {
        issuer: api.to_owned(),
        subject: id.to_string(),
        email: primary
            .and_then(|e| e.get("email"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        email_verified: primary.and_then(|e| e.get("verified")) == Some(&Value::Bool(true)),
        name: user.get("name").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The provider `name` of `app`, or `404`.
pub fn provider<'a>(app: &'a App, name: &str) -> Result<&'a OAuthProvider, ApiError> {
    app.settings
        .oauth_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found("OAuth provider"))
}

/// Where the provider sends the browser back.
pub fn callback_url(public_url: &str, app: Uuid, provider: &str) -> String {
    format!("{public_url}/v1/apps/{app}/oauth/{provider}/callback")
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> Result<String, ApiError> {
    let query = serde_urlencoded::to_string(pairs).map_err(|e| ApiError::internal(&e))?;
    let join = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{join}{query}"))
}

/// A started authorization: where to send the browser, and the cookie that binds the
/// flow to it.
#[derive(Debug)]
pub struct Started {
    pub location: String,
    pub binding: String,
}

/// Starts a sign-in (or, with `link_user`, a link) at provider `p`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client: &impl GenericClient,
    oauth: &OAuth,
    public_url: &str,
    app: &App,
    p: &OAuthProvider,
    redirect_uri: &str,
    client_state: Option<&str>,
    client_challenge: Option<&str>,
    link_user: Option<Uuid>,
    now: i64,
) -> Result<Started, ApiError> {
    let challenge_ok = |c: &str| {
        c.len() == 43
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if client_challenge.is_some_and(|c| !challenge_ok(c)) {
        return Err(ApiError::bad_request(
            "code_challenge must be an S256 challenge (43 base64url characters)",
        ));
    }
    if !app.settings.redirect_allowed(redirect_uri) {
        return Err(ApiError::bad_request(
            "redirect_uri is not one of the application's allowed_redirect_uris",
        ));
    }
    if client_state.is_some_and(|s| s.len() > 512 || s.chars().any(char::is_control)) {
        return Err(ApiError::bad_request(
            "state is at most 512 printable characters",
        ));
    }
    let discovery = oauth.discover(p).await?;
    let state = random_token(32);
    let verifier = random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let nonce = random_token(16);
    let binding = random_token(32);
    client
        .exec(
            "INSERT INTO oauth_flows (state_hash, app_id, provider, browser_hash, code_verifier,
                 nonce, redirect_uri, client_state, link_user_id, created_at, expires_at,
                 client_challenge)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &digest(&state),
                &app.id,
                &p.name,
                &digest(&binding),
                &verifier,
                &nonce,
                &redirect_uri,
                &client_state,
                &link_user,
                &clock::at(now),
                &clock::at(now + FLOW_TTL_SECS),
                &client_challenge,
            ],
        )
        .await?;
    let callback = callback_url(public_url, app.id, &p.name);
    let scope = p.scopes();
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", p.client_id.as_str()),
        ("redirect_uri", callback.as_str()),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if p.kind != ProviderKind::Github {
        pairs.push(("nonce", nonce.as_str()));
        if link_user.is_some() {
            // A link is never approved silently by a provider session in the browser.
            pairs.push(("prompt", "consent"));
        }
    }
    if p.kind == ProviderKind::Apple {
        // Apple posts the answer when names or emails are asked for.
        pairs.push(("response_mode", "form_post"));
    }
    Ok(Started {
        location: with_query(&discovery.authorization_endpoint, &pairs)?,
        binding,
    })
}

/// The provider's answer at the callback.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// A flow found by its state, already marked used.
#[derive(Debug)]
struct Flow {
    state_hash: Vec<u8>,
    verifier: String,
    nonce: String,
    redirect_uri: String,
    client_state: Option<String>,
    link_user: Option<Uuid>,
}

fn invalid_state() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        "this sign-in is unknown, expired, already finished, or was started in another browser",
    )
}

/// Takes the flow named by `state` if it was started by this browser (`binding`): used at
/// once, so neither a replayed callback nor a second tab can finish it again.
async fn take_flow(
    client: &impl GenericClient,
    app: Uuid,
    provider: &str,
    state: &str,
    binding: Option<&str>,
    now: i64,
) -> Result<Flow, ApiError> {
    let binding = binding.ok_or_else(invalid_state)?;
    if state.len() > 256 || binding.len() > 256 {
        return Err(invalid_state());
    }
    let row = client
        .q_opt(
            "UPDATE oauth_flows SET used_at = $5
             WHERE state_hash = $1 AND app_id = $2 AND provider = $3 AND browser_hash = $4
               AND used_at IS NULL AND expires_at > $5
             RETURNING code_verifier, nonce, redirect_uri, client_state, link_user_id",
            &[
                &digest(state),
                &app,
                &provider,
                &digest(binding),
                &clock::at(now),
            ],
        )
        .await?
        .ok_or_else(invalid_state)?;
    Ok(Flow {
        state_hash: digest(state),
        verifier: row.get(0),
        nonce: row.get(1),
        redirect_uri: row.get(2),
        client_state: row.get(3),
        link_user: row.get(4),
    })
}

/// The callback: finishes the flow and says where the browser goes next: the
/// application's redirect URI with `code` (or `linked`), or with `error=<code>` once the
/// flow is known. An error before that (a bad state) is returned as such.
pub async fn callback(
    state: &crate::state::AppState,
    app: &App,
    p: &OAuthProvider,
    answer: &Answer,
    binding: Option<&str>,
    ctx: &Ctx,
) -> Result<String, ApiError> {
    let client = state.pool.get().await?;
    let flow = take_flow(
        &client,
        app.id,
        &p.name,
        answer.state.as_deref().unwrap_or(""),
        binding,
        ctx.now,
    )
    .await?;
    drop(client);
    // Re-checked before anything happens: the allowlist may have lost the URI meanwhile.
    if !app.settings.redirect_allowed(&flow.redirect_uri) {
        return Err(ApiError::bad_request(
            "the redirect_uri is no longer allowed",
        ));
    }
    let back = |pairs: &[(&str, &str)]| -> Result<String, ApiError> {
        let mut pairs = pairs.to_vec();
        if let Some(s) = &flow.client_state {
            pairs.push(("state", s.as_str()));
        }
        with_query(&flow.redirect_uri, &pairs)
    };
    if let Some(error) = &answer.error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return back(&[("error", "access_denied"), ("provider_error", &error)]);
    }
    match finish(state, app, p, &flow, answer.code.as_deref(), ctx).await {
        Ok(Finished::SignedIn(code)) => back(&[("code", &code)]),
        Ok(Finished::LinkPending(code)) => back(&[("link_code", &code)]),
        Ok(Finished::Linked) => back(&[("linked", &p.name)]),
        Err(e) => {
            tracing::info!(provider = %p.name, code = %e.code, detail = %e.detail, "social sign-in refused");
            back(&[("error", e.code.as_str())])
        }
    }
}

enum Finished {
    SignedIn(String),
    /// A link waiting for the linking user's session to confirm it with this code.
    LinkPending(String),
    /// Already linked to the linking user.
    Linked,
}

async fn finish(
    state: &crate::state::AppState,
    app: &App,
    p: &OAuthProvider,
    flow: &Flow,
    code: Option<&str>,
    ctx: &Ctx,
) -> Result<Finished, ApiError> {
    let code = code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| ApiError::bad_request("the provider sent no code"))?;
    let asserted = redeem(state, app, p, flow, code).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let identity = tx
        .q_opt(
            "SELECT user_id FROM oauth_identities
             WHERE app_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4 FOR UPDATE",
            &[&app.id, &p.name, &asserted.issuer, &asserted.subject],
        )
        .await?
        .map(|r| r.get::<_, Uuid>(0));
    let code = random_token(32);
    let user_id = match (identity, flow.link_user) {
        (Some(owner), Some(linking)) if owner != linking => {
            return Err(ApiError::new(
                ErrorCode::IdentityLinked,
                "this identity is already linked to another user",
            ));
        }
        (Some(_), Some(_)) => return Ok(Finished::Linked),
        (Some(owner), None) => {
            touch(&tx, app.id, p, &asserted, ctx).await?;
            owner
        }
        (None, Some(linking)) => {
            // Not linked yet: only the linking user's own session may finish it, so a
            // link URL opened by someone else (or forced on them) links nothing.
            let asserted = serde_json::to_value(&asserted).map_err(|e| ApiError::internal(&e))?;
            tx.exec(
                "UPDATE oauth_flows SET code_hash = $2, code_user_id = $3, code_expires_at = $4,
                     asserted = $5
                 WHERE state_hash = $1",
                &[
                    &flow.state_hash,
                    &digest(&code),
                    &linking,
                    &clock::at(ctx.now + EXCHANGE_TTL_SECS),
                    &asserted,
                ],
            )
            .await?;
            tx.commit().await?;
            return Ok(Finished::LinkPending(code));
        }
        (None, None) => match existing_by_email(&tx, app.id, &asserted).await? {
            // Both sides must have proven the address: an unverified local address may
            // belong to someone who registered it in advance (a pre-hijack).
            Some((user, true)) if asserted.email_verified && p.auto_link_verified_email => {
                link(&tx, app.id, user, p, &asserted, true, ctx).await?;
                user
            }
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::UserExists,
                    "an account with this email exists: sign in to it and link the provider",
                ));
            }
            None => create(&tx, app, p, &asserted, ctx).await?,
        },
    };
    tx.exec(
        "UPDATE oauth_flows SET code_hash = $2, code_user_id = $3, code_expires_at = $4
         WHERE state_hash = $1",
        &[
            &flow.state_hash,
            &digest(&code),
            &user_id,
            &clock::at(ctx.now + EXCHANGE_TTL_SECS),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Finished::SignedIn(code))
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The code and PKCE verifier at the token endpoint, then the ID token (or GitHub's user).
async fn redeem(
    state: &crate::state::AppState,
    app: &App,
    p: &OAuthProvider,
    flow: &Flow,
    code: &str,
) -> Result<Asserted, ApiError> {
    let oauth = &state.oauth;
    let discovery = oauth.discover(p).await?;
    let callback = callback_url(&state.config.public_url, app.id, &p.name);
    let secret = p.secret(&state.secrets, app.id)?;
    let basic = secret.is_some()
        && p.kind != ProviderKind::Github
        && (discovery.token_endpoint_auth_methods_supported.is_empty()
            || discovery
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_basic"));
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", callback.as_str()),
        ("code_verifier", flow.verifier.as_str()),
        ("client_id", p.client_id.as_str()),
    ];
    if let (Some(secret), false) = (secret.as_deref(), basic) {
        form.push(("client_secret", secret));
    }
    let body = serde_urlencoded::to_string(&form).map_err(|e| ApiError::internal(&e))?;
    let mut request = http::Request::post(oauth.target(&discovery.token_endpoint)?)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "portcullis");
    if let (Some(secret), true) = (secret.as_deref(), basic) {
        // RFC 6749 §2.3.1: both parts form-encoded before base64.
        let user = serde_urlencoded::to_string([("", p.client_id.as_str())])
            .map_err(|e| ApiError::internal(&e))?;
        let pass =
            serde_urlencoded::to_string([("", secret)]).map_err(|e| ApiError::internal(&e))?;
        let pair = format!("{}:{}", &user[1..], &pass[1..]);
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(pair)),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ApiError::internal(&e))?;
    let (status, answer) = oauth.call(request).await?;
    let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|_| {
        down(&format!(
            "the token endpoint answered {status} without JSON"
        ))
    })?;
    if status != 200 || answer.error.is_some() {
        // invalid_grant (a replayed or foreign code, a wrong verifier) and the like.
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "the provider refused the authorization code",
        ));
    }
    if p.kind == ProviderKind::Github {
        let token = answer
            .access_token
            .ok_or_else(|| down(&"the token endpoint sent no access token"))?;
        let scopes = p.scopes();
        let email_scope = scopes.split(' ').any(|s| s == "user:email" || s == "user");
        return github_user(oauth, &discovery.issuer, &token, email_scope).await;
    }
    let id_token = answer
        .id_token
        .ok_or_else(|| invalid_id_token("the provider sent none"))?;
    verify_id_token(oauth, &discovery, p, &id_token, &flow.nonce).await
}

/// The user holding the asserted address, and whether that user proved it.
async fn existing_by_email(
    tx: &impl GenericClient,
    app: Uuid,
    asserted: &Asserted,
) -> Result<Option<(Uuid, bool)>, ApiError> {
    let Some(email) = &asserted.email else {
        return Ok(None);
    };
    Ok(tx
        .q_opt(
            "SELECT id, email_verified FROM users WHERE app_id = $1 AND email_canonical = $2",
            &[&app, &users::canonical(email)],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

async fn touch(
    tx: &impl GenericClient,
    app: Uuid,
    p: &OAuthProvider,
    asserted: &Asserted,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    tx.exec(
        "UPDATE oauth_identities SET email = $5, email_verified = $6, last_used_at = $7
         WHERE app_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4",
        &[
            &app,
            &p.name,
            &asserted.issuer,
            &asserted.subject,
            &asserted.email,
            &asserted.email_verified,
            &clock::at(ctx.now),
        ],
    )
    .await?;
    Ok(())
}

async fn link(
    tx: &impl GenericClient,
    app: Uuid,
    user: Uuid,
    p: &OAuthProvider,
    asserted: &Asserted,
    automatic: bool,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let inserted = tx
        .exec(
            "INSERT INTO oauth_identities (id, app_id, user_id, provider, issuer, subject,
                 email, email_verified, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT DO NOTHING",
            &[
                &Uuid::now_v7(),
                &app,
                &user,
                &p.name,
                &asserted.issuer,
                &asserted.subject,
                &asserted.email,
                &asserted.email_verified,
                &clock::at(ctx.now),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(ApiError::new(
            ErrorCode::IdentityLinked,
            "this identity is linked already, or the user has another at this provider",
        ));
    }
    audit::record(
        tx,
        Event {
            app: Some(app),
            user: Some(user),
            actor: Actor::User,
            event: "oauth.linked",
            details: json!({ "provider": p.name, "automatic": automatic }),
            ctx,
        },
    )
    .await
    .map_err(Into::into)
}

async fn create(
    tx: &impl GenericClient,
    app: &App,
    p: &OAuthProvider,
    asserted: &Asserted,
    ctx: &Ctx,
) -> Result<Uuid, ApiError> {
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
        Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event: "user.created",
            details: json!({ "provider": p.name }),
            ctx,
        },
    )
    .await?;
    link(tx, app.id, user.id, p, asserted, false, ctx).await?;
    Ok(user.id)
}

/// `POST /oauth/exchange`: the one-time code (single use, 60 s) → its user. When the
/// application sent a `code_challenge` to `/authorize`, the code needs its verifier.
pub async fn exchange(
    client: &impl GenericClient,
    app: Uuid,
    code: &str,
    verifier: Option<&str>,
    now: i64,
) -> Result<Uuid, ApiError> {
    let used = || {
        ApiError::new(
            ErrorCode::TokenExpiredOrUsed,
            "the code is unknown, expired or already used",
        )
    };
    if code.is_empty() || code.len() > 256 || verifier.is_some_and(|v| v.len() > 128) {
        return Err(used());
    }
    // The verifier is checked in the same statement, so a wrong one uses nothing up.
    let challenge = verifier.map(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())));
    client
        .q_opt(
            "UPDATE oauth_flows SET code_used_at = $3
             WHERE code_hash = $1 AND app_id = $2 AND code_used_at IS NULL
               AND code_expires_at > $3 AND link_user_id IS NULL
               AND (client_challenge IS NULL OR client_challenge = $4)
             RETURNING code_user_id",
            &[&digest(code), &app, &clock::at(now), &challenge],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(used)
}

/// `POST /oauth/{provider}/link/confirm`: the link code, by the session of the user who
/// asked for the link (any other user's token finds nothing).
pub async fn confirm_link(
    tx: &impl GenericClient,
    app: Uuid,
    p: &OAuthProvider,
    user: Uuid,
    code: &str,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let used = || {
        ApiError::new(
            ErrorCode::TokenExpiredOrUsed,
            "the link code is unknown, expired, already used or not yours",
        )
    };
    if code.is_empty() || code.len() > 256 {
        return Err(used());
    }
    let asserted: Value = tx
        .q_opt(
            "UPDATE oauth_flows SET code_used_at = $4
             WHERE code_hash = $1 AND app_id = $2 AND provider = $3 AND link_user_id = $5
               AND code_user_id = $5 AND code_used_at IS NULL AND code_expires_at > $4
             RETURNING asserted",
            &[&digest(code), &app, &p.name, &clock::at(ctx.now), &user],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(used)?;
    let asserted: Asserted =
        serde_json::from_value(asserted).map_err(|e| ApiError::internal(&e))?;
    link(tx, app, user, p, &asserted, false, ctx).await
}

/// A linked identity as `/me` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityView {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

pub async fn identities(
    client: &impl GenericClient,
    user: Uuid,
) -> Result<Vec<IdentityView>, ApiError> {
    let rows = client
        .q(
            "SELECT provider, subject, email, email_verified, created_at, last_used_at
             FROM oauth_identities WHERE user_id = $1 ORDER BY created_at",
            &[&user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| IdentityView {
            provider: r.get(0),
            subject: r.get(1),
            email: r.get(2),
            email_verified: r.get(3),
            linked_at: r.get(4),
            last_used_at: r.get(5),
        })
        .collect())
}

/// Unlinks `provider` from `user`, unless it is the last way to sign in (no password and
/// no other identity).
pub async fn unlink(
    tx: &impl GenericClient,
    app: Uuid,
    user: &User,
    provider: &str,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    tx.exec("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user.id])
        .await?;
    let row = tx
        .q_one(
            "SELECT count(*) FILTER (WHERE provider = $2), count(*) FILTER (WHERE provider <> $2)
             FROM oauth_identities WHERE user_id = $1",
            &[&user.id, &provider],
        )
        .await?;
    let (this, others): (i64, i64) = (row.get(0), row.get(1));
    if this == 0 {
        return Err(ApiError::not_found("linked identity"));
    }
    let has_password = tx
        .q_one(
            "SELECT password_hash <> '!' FROM users WHERE id = $1",
            &[&user.id],
        )
        .await?
        .get::<_, bool>(0);
    if others == 0 && !has_password {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this is the last way to sign in: set a password or link another provider first",
        ));
    }
    tx.exec(
        "DELETE FROM oauth_identities WHERE user_id = $1 AND provider = $2",
        &[&user.id, &provider],
    )
    .await?;
    audit::record(
        tx,
        Event {
            app: Some(app),
            user: Some(user.id),
            actor: Actor::User,
            event: "oauth.unlinked",
            details: json!({ "provider": provider }),
            ctx,
        },
    )
    .await
    .map_err(Into::into)
}

/// Drops finished and expired flows (maintenance).
pub async fn prune(
    client: &impl GenericClient,
    now: i64,
) -> Result<u64, crate::infra::store::DbError> {
    Ok(client
        .exec(
            "DELETE FROM oauth_flows WHERE expires_at < $1
               AND (code_expires_at IS NULL OR code_expires_at < $1)",
            &[&clock::at(now)],
        )
        .await?)
}
