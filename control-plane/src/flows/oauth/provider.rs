//! The relying-party side of a provider: discovery and key sets (cached, refetched for a
//! new `kid` at most every 30 s), the token endpoint, ID-token verification (OpenID Connect
//! Core §3.1.3.7, RFC 8725) and GitHub's user API, all through the SSRF-guarded client.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Deps, OAuthError, callback_url};
use crate::domain::apps::App;
use crate::domain::identities::{Asserted, Flow};
use crate::domain::settings::providers::{OAuthProvider, ProviderKind};
use crate::infra::egress::{Egress, EgressError};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Discovery documents and key sets are cached this long (refetched early for a new kid).
const CACHE_FOR: Duration = Duration::from_secs(3600);
const CLOCK_LEEWAY_SECS: u64 = 60;

/// The endpoints of a provider, discovered (OIDC) or fixed (GitHub).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
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

fn down(what: &dyn std::fmt::Display) -> OAuthError {
    OAuthError::Unavailable(what.to_string())
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

    pub(super) fn target(&self, url: &str) -> Result<http::Uri, OAuthError> {
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

    pub(super) async fn call(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), OAuthError> {
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

    pub(super) async fn get_json(
        &self,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let mut request = http::Request::get(self.target(url)?)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis");
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| down(&e))?;
        let (status, body) = self.call(request).await?;
        if status != 200 {
            return Err(down(&format!("{url} answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|_| down(&format!("{url} did not answer JSON")))
    }

    pub(super) async fn discover(&self, p: &OAuthProvider) -> Result<Arc<Discovery>, OAuthError> {
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
                userinfo_endpoint: None,
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
    ) -> Result<Arc<jsonwebtoken::jwk::JwkSet>, OAuthError> {
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

/// Verifies an ID token (OpenID Connect Core §3.1.3.7, RFC 8725): the signature with the
/// provider's key named by `kid`, the algorithm pinned by that key's type, `iss`, `aud`
/// (and `azp` when several), `exp`/`iat`, and the `nonce` of this flow.
pub(super) async fn verify_id_token(
    oauth: &OAuth,
    discovery: &Discovery,
    p: &OAuthProvider,
    id_token: &str,
    nonce: &str,
) -> Result<Asserted, OAuthError> {
    use jsonwebtoken::{Algorithm, Validation};
    let header =
        jsonwebtoken::decode_header(id_token).map_err(|_| OAuthError::IdToken("header"))?;
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
        return Err(OAuthError::IdToken("algorithm"));
    }
    let key = signing_key(oauth, discovery, &header).await?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = CLOCK_LEEWAY_SECS;
    validation.set_audience(&[p.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    // `iss` is compared below (Microsoft's multi-tenant issuer is a template).
    let data = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        OAuthError::IdToken(match e.kind() {
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::InvalidAudience => "audience",
            ErrorKind::InvalidSignature => "signature",
            ErrorKind::ImmatureSignature => "not yet valid",
            _ => "malformed",
        })
    })?;
    let c = data.claims;
    check_claims(&c, discovery, p, nonce)?;
    let verified = c.email_verified == Value::Bool(true) || c.email_verified == json!("true");
    Ok(Asserted {
        issuer: c.iss,
        subject: c.sub,
        email: c.email,
        email_verified: verified,
        name: c.name,
    })
}

/// The provider's key `header` names (its only key when it names none), usable for the
/// header's algorithm.
async fn signing_key(
    oauth: &OAuth,
    discovery: &Discovery,
    header: &jsonwebtoken::Header,
) -> Result<jsonwebtoken::DecodingKey, OAuthError> {
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
    .ok_or(OAuthError::IdToken("unknown key"))?;
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return Err(OAuthError::IdToken("an encryption key"));
    }
    // The key's own algorithm, when it names one, must be the token's.
    if let Some(key_alg) = jwk.common.key_algorithm
        && format!("{key_alg:?}") != format!("{:?}", header.alg)
    {
        return Err(OAuthError::IdToken("the key is for another algorithm"));
    }
    jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| OAuthError::IdToken("unusable key"))
}

/// The claims the library does not check: `iss` (a template for Microsoft's multi-tenant
/// issuer), `azp`, the flow's `nonce` (in constant time), and `sub`.
fn check_claims(
    c: &IdClaims,
    discovery: &Discovery,
    p: &OAuthProvider,
    nonce: &str,
) -> Result<(), OAuthError> {
    let expected_iss = match &c.tid {
        Some(tid)
            if p.kind == ProviderKind::Microsoft && discovery.issuer.contains("{tenantid}") =>
        {
            discovery.issuer.replace("{tenantid}", tid)
        }
        _ => discovery.issuer.clone(),
    };
    if c.iss != expected_iss {
        return Err(OAuthError::IdToken("issuer"));
    }
    let several = c.aud.as_array().is_some_and(|a| a.len() > 1);
    if (several || c.azp.is_some()) && c.azp.as_deref() != Some(p.client_id.as_str()) {
        return Err(OAuthError::IdToken("authorized party"));
    }
    let nonce_ok = c.nonce.as_deref().is_some_and(|n| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            n.as_bytes(),
            nonce.as_bytes(),
        ))
    });
    if !nonce_ok {
        return Err(OAuthError::IdToken("nonce"));
    }
    if c.sub.is_empty() || c.sub.len() > 255 {
        return Err(OAuthError::IdToken("subject"));
    }
    Ok(())
}

/// GitHub: the user (`id`, `name`) and its primary verified email from the user API.
/// Without the `user:email` (or `user`) scope there is no address to read; with it, a
/// failed read is an outage, never "no address" (that would skip the address checks).
pub(super) async fn github_user(
    oauth: &OAuth,
    api: &str,
    token: &str,
    email_scope: bool,
) -> Result<Asserted, OAuthError> {
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
pub(super) async fn redeem(
    deps: &Deps<'_>,
    app: &App,
    p: &OAuthProvider,
    flow: &Flow,
    code: &str,
) -> Result<Asserted, OAuthError> {
    let oauth = deps.oauth;
    let discovery = oauth.discover(p).await?;
    let callback = callback_url(deps.public_url, app.id, &p.name);
    let secret = p.secret(deps.secrets, app.id)?;
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
    let body = serde_urlencoded::to_string(&form).map_err(|e| down(&e))?;
    let mut request = http::Request::post(oauth.target(&discovery.token_endpoint)?)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "portcullis");
    if let (Some(secret), true) = (secret.as_deref(), basic) {
        // RFC 6749 §2.3.1: both parts form-encoded before base64.
        let user =
            serde_urlencoded::to_string([("", p.client_id.as_str())]).map_err(|e| down(&e))?;
        let pass = serde_urlencoded::to_string([("", secret)]).map_err(|e| down(&e))?;
        let pair = format!("{}:{}", &user[1..], &pass[1..]);
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(pair)),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| down(&e))?;
    let (status, answer) = oauth.call(request).await?;
    let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|_| {
        down(&format!(
            "the token endpoint answered {status} without JSON"
        ))
    })?;
    if status != 200 || answer.error.is_some() {
        // invalid_grant (a replayed or foreign code, a wrong verifier) and the like.
        return Err(OAuthError::CodeRefused);
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
        .ok_or(OAuthError::IdToken("the provider sent none"))?;
    let asserted = verify_id_token(oauth, &discovery, p, &id_token, &flow.nonce).await?;
    let asked_email = p.scopes().split(' ').any(|s| s == "email");
    match (&asserted.email, asked_email, answer.access_token.as_deref()) {
        (None, true, Some(token)) => with_userinfo(oauth, &discovery, asserted, token).await,
        _ => Ok(asserted),
    }
}

/// The ID token lacks the email its scope asked for: a provider may keep scope claims
/// for the UserInfo endpoint when it also issues an access token (OIDC Core §5.4, the
/// default of many, `oidc-provider` among them). Reads them there (§5.3), from the same
/// subject (§5.3.2: a different `sub` is refused, never mixed in).
async fn with_userinfo(
    oauth: &OAuth,
    discovery: &Discovery,
    mut asserted: Asserted,
    access_token: &str,
) -> Result<Asserted, OAuthError> {
    let Some(endpoint) = discovery.userinfo_endpoint.as_deref() else {
        return Ok(asserted);
    };
    let info = oauth.get_json(endpoint, Some(access_token)).await?;
    if info.get("sub").and_then(Value::as_str) != Some(asserted.subject.as_str()) {
        return Err(OAuthError::IdToken(
            "the userinfo subject is not the ID token's",
        ));
    }
    asserted.email = info.get("email").and_then(Value::as_str).map(str::to_owned);
    let verified = info.get("email_verified").unwrap_or(&Value::Null);
    asserted.email_verified = *verified == Value::Bool(true) || *verified == json!("true");
    if asserted.name.is_none() {
        asserted.name = info.get("name").and_then(Value::as_str).map(str::to_owned);
    }
    Ok(asserted)
}
