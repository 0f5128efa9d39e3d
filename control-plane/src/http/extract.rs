//! What a handler takes from a request before it runs: the JSON body ([`JsonBody`]),
//! where the request came from ([`Ctx`]), and who is calling (API.md §3's four kinds):
//!
//! - [`Operator`]: `Authorization: Bearer $PORTCULLIS_ADMIN_TOKEN`;
//! - [`Owner`]: an owner's access token; [`OwnedApp`]: the `{app}` of the path, owned by
//!   the calling owner (an expired one too, so it can be extended);
//! - [`AppAdmin`]: the `{app}` of the path, by its API key or its owner's token;
//! - [`SignedIn`]: a user of the `{app}` of the path, by bearer token or the application's
//!   access cookie (state-changing cookie requests passed the CSRF guard on the way in),
//!   still existing and enabled; [`UserToken`]: the same token without the user lookup.
//!   A DPoP-bound token (RFC 9449) only as `Authorization: DPoP` with a proof by its key.
//!
//! And the application of an end-user route: [`LiveApp`] (exists and not expired), and
//! [`PublicApp`], which also counts the request against the application's per-IP limit
//! for its route ([`Route`]); and [`Dpop`], the key a token request's DPoP proof showed.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use portcullis_common::{ErrorCode, credentials};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::apps::{self, App};
use crate::domain::dpop::{self, DpopError, Endpoint, Presented, Scheme};
use crate::domain::tokens::{OWNER_AUDIENCE, Principal};
use crate::domain::users::{self, User};
use crate::domain::{Ctx, Jkt};
use crate::infra::clock;
use crate::infra::crypto::digest;
use crate::infra::limits::Scope;
use crate::state::AppState;

/// A JSON body: at most `MAX_BODY` bytes (`413 payload_too_large`), well-formed and of the
/// right shape (`400 invalid_request`). An empty body reads as `{}`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_or_absent = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 64 KiB")
            } else {
                ApiError::bad_request("the body could not be read")
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if !json_or_absent {
            return Err(ApiError::bad_request(
                "Content-Type must be application/json",
            ));
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", json_error(&e))))
    }
}

/// serde's message without the input echoed (it could be a password).
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            // "invalid type: string \"hunter2\", expected ..." would echo the value.
            match msg.split_once(", expected") {
                Some((_, expected)) if msg.starts_with("invalid") => {
                    format!("wrong type, expected{expected}")
                }
                _ => msg,
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<crate::Peer>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.0.ip());
        Ok(Ctx {
            ip: client_ip(peer, &parts.headers, &state.config.trusted_proxies),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(256).collect()),
            // Set (or echoed) by `SetRequestIdLayer` before any handler runs.
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|id| id.chars().take(128).collect()),
            now: clock::unix_now(),
            // Set by a token-issuing handler from its [`Dpop`].
            dpop: None,
        })
    }
}

/// The connection's address, unless it is a trusted proxy: then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    credentials::bearer_str(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The access token of `Authorization` (`Bearer` or `DPoP`), and which.
pub fn authorization(headers: &HeaderMap) -> Option<(&str, Scheme)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    credentials::bearer_str(value)
        .map(|t| (t, Scheme::Bearer))
        .or_else(|| credentials::dpop_str(value).map(|t| (t, Scheme::Dpop)))
}

/// The `DPoP` header: none, or one proof (two or more are refused, RFC 9449 §4.3).
pub fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, DpopError> {
    let mut values = headers.get_all(DPOP).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(DpopError::Invalid("more than one DPoP header"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| DpopError::Invalid("the DPoP header is not a compact JWS"))
}

/// The request header carrying a DPoP proof.
pub const DPOP: &str = "dpop";

/// The method and path a request was sent to: with `PORTCULLIS_PUBLIC_URL`, what a DPoP
/// proof's `htm` and `htu` must name.
#[derive(Clone, Debug)]
pub struct RequestTarget {
    pub method: Method,
    pub path: String,
}

impl RequestTarget {
    fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
        }
    }

    /// The endpoint a proof must name, under the control plane's public URL.
    pub fn endpoint(&self, public_url: &str) -> Endpoint {
        Endpoint::new(public_url, self.method.as_str(), &self.path)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTarget {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(parts))
    }
}

/// The key a token request's DPoP proof showed (RFC 9449 §5), once accepted by
/// [`dpop::token_request`]; `None` without a proof. Refused (`invalid_dpop_proof`,
/// `use_dpop_nonce`) before the handler changes anything. Handlers that issue tokens take
/// it and hand it on in their [`Ctx`] ([`Ctx::with_dpop`]).
#[derive(Debug)]
pub struct Dpop(pub Option<Jkt>);

impl FromRequestParts<AppState> for Dpop {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let LiveApp(app) = LiveApp::from_request_parts(parts, state).await?;
        let target = RequestTarget::of(parts);
        Ok(Dpop(
            token_proof(state, &app, &parts.headers, &target).await?,
        ))
    }
}

/// The DPoP proof of a token request to `app` (for a handler that answers refusals in a
/// form of its own).
pub async fn token_proof(
    state: &AppState,
    app: &App,
    headers: &HeaderMap,
    target: &RequestTarget,
) -> Result<Option<Jkt>, DpopError> {
    let proof = dpop_header(headers)?;
    let endpoint = target.endpoint(&state.config.public_url);
    let (pool, secrets) = (&state.pool, &state.secrets);
    dpop::token_request(pool, secrets, app, proof, &endpoint, clock::unix_now()).await
}

/// The value of cookie `name` across the request's `Cookie` fields.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let fields = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    credentials::cookie_str(fields, name)
}

fn missing_token() -> ApiError {
    ApiError::unauthenticated(ErrorCode::MissingToken)
}

/// The `{app}` of the route's path.
async fn path_app(parts: &mut Parts, state: &AppState) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::app_not_found())?;
    let app = params
        .iter()
        .find(|(name, _)| *name == "app")
        .map(|(_, value)| value.to_owned());
    app.ok_or_else(ApiError::app_not_found)
}

/// `Authorization: Bearer $PORTCULLIS_ADMIN_TOKEN`, compared in constant time.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(&parts.headers).ok_or_else(missing_token)?;
        let expected = state.config.admin_token.as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(Operator)
        } else {
            Err(ApiError::invalid_credentials())
        }
    }
}

/// The owner an owner's access token names.
#[derive(Debug)]
pub struct Owner(pub Uuid);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(missing_token)?;
        let principal = state
            .tokens
            .authenticate(
                &state.keys,
                &state.pool,
                token,
                OWNER_AUDIENCE,
                clock::unix_now(),
            )
            .await?;
        Ok(Owner(principal.sub))
    }
}

/// The `{app}` of the path, owned by the calling owner; `404 app_not_found` otherwise.
/// An expired application is reachable (its owner may extend it).
#[derive(Debug)]
pub struct OwnedApp(pub App);

impl FromRequestParts<AppState> for OwnedApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Owner(owner) = Owner::from_request_parts(parts, state).await?;
        let app = path_app(parts, state).await?;
        Ok(OwnedApp(owned_app(state, owner, &app).await?))
    }
}

async fn owned_app(state: &AppState, owner: Uuid, app: &str) -> Result<App, ApiError> {
    let client = state.pool.get().await?;
    match apps::find(&client, app).await? {
        Some(app) if app.owner_id == owner => Ok(app),
        _ => Err(ApiError::app_not_found()),
    }
}

/// The `{app}` of the path, by its API key or its owner's token. An owner reaches an
/// expired application (to extend it); an API key does not.
#[derive(Debug)]
pub struct AppAdmin(pub App);

impl FromRequestParts<AppState> for AppAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = bearer(&parts.headers).ok_or_else(missing_token)?;
        // A JWT is an owner's token; anything else is an API key.
        if credential.matches('.').count() == 2 {
            return Ok(AppAdmin(
                OwnedApp::from_request_parts(parts, state).await?.0,
            ));
        }
        let credential = credential.to_owned();
        let app = path_app(parts, state).await?;
        let Ok(id) = app.parse::<Uuid>() else {
            return Err(ApiError::app_not_found());
        };
        let client = state.pool.get().await?;
        match apps::by_api_key(&client, id, &digest(&credential)).await? {
            Some(app) if app.expired(clock::unix_now()) => Err(ApiError::app_not_found()),
            Some(app) => Ok(AppAdmin(app)),
            // Unknown application and wrong key answer alike: a key never probes for ids.
            None => Err(ApiError::unauthenticated(ErrorCode::InvalidCredentials)),
        }
    }
}

/// The `{app}` of an end-user route: it must exist and not be expired.
#[derive(Debug)]
pub struct LiveApp(pub Arc<App>);

impl FromRequestParts<AppState> for LiveApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let app = path_app(parts, state).await?;
        Ok(LiveApp(
            state
                .apps
                .live(&state.pool, &app, clock::unix_now())
                .await?,
        ))
    }
}

/// A public end-user route, by the name its per-IP limit counts under.
pub trait Route {
    const NAME: &'static str;
}

/// Declares route markers for [`PublicApp`].
macro_rules! routes {
    ($($marker:ident = $name:literal),+ $(,)?) => {$(
        #[derive(Debug)]
        pub struct $marker;
        impl super::Route for $marker {
            const NAME: &'static str = $name;
        }
    )+};
}

/// The public routes, each by the name its per-IP limit counts under.
pub mod route {
    routes! {
    Register = "register",
    Login = "login",
    Guest = "guest",
    Refresh = "refresh",
    LoginMfa = "login-mfa",
    OtpSend = "otp-send",
    OtpVerify = "otp-verify",
    OauthAuthorize = "oauth-authorize",
    OauthCallback = "oauth-callback",
    OauthExchange = "oauth-exchange",
    PasswordForgot = "password-forgot",
    PasswordReset = "password-reset",
    EmailVerify = "email-verify",
    MagicLink = "magic-link",
    MagicLinkVerify = "magic-link-verify",
    PasskeyBegin = "passkey-begin",
    PasskeyFinish = "passkey-finish",
    LoginMfaPasskey = "login-mfa-passkey",
    }
}

/// The live `{app}` of a public route, with this request counted against the
/// application's per-IP limit for route `R` (`429` past it).
#[derive(Debug)]
pub struct PublicApp<R>(pub Arc<App>, pub PhantomData<R>);

impl<R: Route> FromRequestParts<AppState> for PublicApp<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let app = path_app(parts, state).await?;
        let ctx = Ctx::from_request_parts(parts, state).await?;
        Ok(PublicApp(
            public_app(state, &app, R::NAME, &ctx).await?,
            PhantomData,
        ))
    }
}

/// The live application `app`, with this request counted against its per-IP limit for
/// `route` (for a handler that answers a refusal in a page of its own).
pub async fn public_app(
    state: &AppState,
    app: &str,
    route: &str,
    ctx: &Ctx,
) -> Result<Arc<App>, ApiError> {
    let app = state.apps.live(&state.pool, app, ctx.now).await?;
    limit_ip(state, &app, route, ctx).await?;
    Ok(app)
}

/// Counts this request against `app`'s per-IP limit for `route`.
pub async fn limit_ip(state: &AppState, app: &App, route: &str, ctx: &Ctx) -> Result<(), ApiError> {
    let app_id = app.id.to_string();
    state
        .limiter
        .hit(
            Scope::Ip {
                app: &app_id,
                route,
                ip: ctx.ip,
            },
            app.settings.rate_limits.per_ip_per_minute,
        )
        .await?;
    Ok(())
}

/// A user's access token for the `{app}` of the path: `Authorization: Bearer`, or else
/// the application's access cookie.
#[derive(Debug)]
pub struct UserToken {
    pub app: Arc<App>,
    pub principal: Principal,
}

impl FromRequestParts<AppState> for UserToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let LiveApp(app) = LiveApp::from_request_parts(parts, state).await?;
        let target = RequestTarget::of(parts);
        let principal = user_principal(state, &parts.headers, &target, &app).await?;
        Ok(UserToken { app, principal })
    }
}

/// The checked user token of a request to `app`'s routes (sent to `target`: a bound
/// token's proof must name it).
pub async fn user_principal(
    state: &AppState,
    headers: &HeaderMap,
    target: &RequestTarget,
    app: &App,
) -> Result<Principal, ApiError> {
    let (token, scheme) = match authorization(headers) {
        Some(found) => found,
        None => {
            let token = cookie(headers, &app.settings.cookies.access_name);
            (token.ok_or_else(missing_token)?, Scheme::Cookie)
        }
    };
    let app_id = app.id.to_string();
    let now = clock::unix_now();
    let principal = state
        .tokens
        .authenticate(&state.keys, &state.pool, token, &app_id, now)
        .await?;
    let presented = Presented {
        token,
        scheme,
        proof: dpop_header(headers)?,
        endpoint: target.endpoint(&state.config.public_url),
    };
    let cnf = principal.claims.cnf.as_ref().map(|c| c.jkt.as_str());
    let (pool, secrets) = (&state.pool, &state.secrets);
    dpop::check_binding(pool, secrets, app, &presented, cnf, now).await?;
    // A token the provider issued to an OAuth client is for the application's services
    // (within its scope), never for the account routes: a third party must not change the
    // password or add a passkey with it.
    if principal.claims.client_id != app_id {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "this token was issued to an OAuth client: it is not accepted here",
        ));
    }
    Ok(principal)
}

/// A signed-in user of the `{app}` of the path, who still exists and is enabled.
#[derive(Debug)]
pub struct SignedIn {
    pub app: Arc<App>,
    pub principal: Principal,
    pub user: User,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let LiveApp(app) = LiveApp::from_request_parts(parts, state).await?;
        let target = RequestTarget::of(parts);
        signed_in(state, &parts.headers, &target, app).await
    }
}

/// The signed-in user of a request to `app`'s routes (for a route that takes a user or
/// something else).
pub async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    target: &RequestTarget,
    app: Arc<App>,
) -> Result<SignedIn, ApiError> {
    let principal = user_principal(state, headers, target, &app).await?;
    let client = state.pool.get().await?;
    let user = users::find(&client, app.id, principal.sub)
        .await?
        .ok_or_else(|| ApiError::unauthenticated(ErrorCode::TokenRevoked))?;
    if user.disabled(clock::at(clock::unix_now())) {
        return Err(ApiError::unauthenticated(ErrorCode::UserDisabled));
    }
    Ok(SignedIn {
        app,
        principal,
        user,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.9".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        assert_eq!(client_ip(direct, &headers, &trusted), direct);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn json_errors_do_not_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[allow(dead_code)]
            password: u32,
        }
        let e = serde_json::from_str::<P>(r#"{"password":"hunter2secret"}"#).unwrap_err();
        assert!(!json_error(&e).contains("hunter2"), "{}", json_error(&e));
    }

    #[test]
    fn credentials_come_from_the_shared_parser() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  t.o.k ".parse().unwrap());
        h.insert(header::COOKIE, "a=1; at=\"tok\"".parse().unwrap());
        h.append(header::COOKIE, "rt=\"r".parse().unwrap());
        assert_eq!(bearer(&h), Some("t.o.k"));
        assert_eq!(cookie(&h, "at"), Some("tok"));
        assert_eq!(cookie(&h, "rt"), Some("\"r"), "a lone quote stays");
    }
}
