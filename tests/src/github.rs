//! A loopback stand-in for GitHub's OAuth app flow, for tests of the GitHub preset of
//! social login (github.com cannot be reached from CI).
//!
//! [`GitHubStandIn`] is an HTTP/1.1 server inside the test process that behaves as GitHub's
//! documented web application flow
//! (<https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps>)
//! laid out the way GitHub Enterprise Server lays it out under one base URL, so a provider
//! whose `issuer` is [`GitHubStandIn::base_url`] reaches it:
//!
//! - `GET /login/oauth/authorize?client_id&redirect_uri&scope&state&code_challenge&
//!   code_challenge_method[&login]` sends the browser (302) to
//!   `redirect_uri?code=…&state=…`, signed in as the user named by `login` or, without
//!   it, by [`GitHubStandIn::sign_in_as`]. There is no sign-in or consent page: the
//!   requested scopes are granted.
//! - `POST /login/oauth/access_token` (a form: `client_id`, `client_secret`, `code`,
//!   `redirect_uri`, `code_verifier`) answers `{access_token, token_type: "bearer",
//!   scope}` (JSON with `Accept: application/json`, a form otherwise), and refuses with
//!   **status 200** and GitHub's error codes: `incorrect_client_credentials`,
//!   `bad_verification_code` (an unknown, used or expired code, or a verifier whose
//!   SHA-256 is not the challenge), `redirect_uri_mismatch`.
//! - `GET /api/v3/user` and `GET /api/v3/user/emails` with `Authorization: Bearer <token>`
//!   (or GitHub's older `token <token>`): the user `{id, login, name, email: null, …}` (the
//!   address kept private, GitHub's default) and its addresses `[{email, primary,
//!   verified, visibility}]` (the latter only with scope `user:email` or `user`, else 404
//!   as GitHub). 401 without a known token, 403 without a `User-Agent` (GitHub refuses
//!   those).
//!
//! Stricter than GitHub where a test gains from it: PKCE is required (S256; GitHub
//! accepts requests without it), the token request must repeat the authorize request's
//! `redirect_uri` exactly (GitHub lets it be left out), and a code is consumed by the
//! first redemption attempt of the right client, so a wrong verifier cannot be retried.
//! No callback URL is registered: any `redirect_uri` is accepted at authorize.
//!
//! Every request is recorded ([`Recorded`]) so a test can check what was sent. Like
//! [`crate::sink::HttpSink`], it serves from a thread of its own with its own Tokio
//! runtime (it keeps answering while the test's runtime is blocked) and dropping it
//! closes the port. Not a GitHub emulator beyond this flow: no refresh tokens, no device
//! flow, no other API.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::percent_encode;
pub use crate::sink::Recorded;
use crate::sink::accept;

/// GitHub's codes expire after ten minutes.
const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Where GitHub's API errors point.
const API_DOCS: &str = "https://docs.github.com/rest";

/// A GitHub account known to the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubUser {
    pub id: u64,
    pub login: String,
    /// The profile name; GitHub sends `null` when the user set none.
    pub name: Option<String>,
    /// `(email, primary, verified)`, in the order `/user/emails` lists them.
    pub emails: Vec<(String, bool, bool)>,
}

impl GitHubUser {
    pub fn new(id: u64, login: &str, name: Option<&str>, emails: &[(&str, bool, bool)]) -> Self {
        Self {
            id,
            login: login.to_owned(),
            name: name.map(str::to_owned),
            emails: emails
                .iter()
                .map(|&(email, primary, verified)| (email.to_owned(), primary, verified))
                .collect(),
        }
    }
}

/// A GitHub OAuth app's server side on 127.0.0.1; dropping it stops it.
#[derive(Debug)]
pub struct GitHubStandIn {
    addr: SocketAddr,
    state: Arc<State>,
    server: Option<Server>,
}

/// What the serving thread shares with the [`GitHubStandIn`].
#[derive(Debug)]
struct State {
    client_id: String,
    client_secret: String,
    users: Vec<GitHubUser>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The user the browser is signed in to GitHub as.
    signed_in: Option<u64>,
    /// Authorization codes handed out, by code.
    grants: HashMap<String, Grant>,
    /// Access tokens issued: the user and the granted scopes.
    tokens: HashMap<String, (u64, Vec<String>)>,
    requests: Vec<Recorded>,
}

#[derive(Debug)]
struct Grant {
    user: u64,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    issued: Instant,
    used: bool,
}

/// The serving thread and the way to end it.
#[derive(Debug)]
struct Server {
    shutdown: oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl GitHubStandIn {
    /// Binds an ephemeral port on 127.0.0.1 and serves one OAuth app (`client_id`,
    /// `client_secret`) and `users`; it accepts connections as soon as this returns.
    ///
    /// # Errors
    ///
    /// Fails when the port cannot be bound or the serving thread cannot start.
    pub fn start(client_id: &str, client_secret: &str, users: &[GitHubUser]) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 for the GitHub stand-in")?;
        let addr = listener
            .local_addr()
            .context("reading the GitHub stand-in's address")?;
        listener
            .set_nonblocking(true)
            .context("making the GitHub stand-in's listener non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the GitHub stand-in's runtime")?;
        let listener = {
            // Registers the socket with the stand-in's runtime, not the caller's.
            let _runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .context("registering the GitHub stand-in's listener")?
        };
        let state = Arc::new(State {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            users: users.to_vec(),
            inner: Mutex::new(Inner::default()),
        });
        let (shutdown, stopped) = oneshot::channel();
        let serving = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name(format!("github-{}", addr.port()))
            // The runtime is dropped on this thread when `accept` returns, which drops
            // the listener and the connection tasks.
            .spawn(move || {
                let handle = move |request| serve(request, Arc::clone(&serving));
                runtime.block_on(accept(listener, handle, stopped))
            })
            .context("spawning the GitHub stand-in's thread")?;
        Ok(Self {
            addr,
            state,
            server: Some(Server { shutdown, thread }),
        })
    }

    /// `http://127.0.0.1:PORT`: the `issuer` of a `github` provider (GitHub Enterprise
    /// layout: `{base}/login/oauth/…` and the API at `{base}/api/v3`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Signs the browser in to GitHub as user `id`: the following authorizations without
    /// a `login` parameter are this user's.
    ///
    /// # Panics
    ///
    /// Panics when no user has this id (a test bug).
    pub fn sign_in_as(&self, id: u64) {
        assert!(
            self.state.users.iter().any(|user| user.id == id),
            "GitHubStandIn::sign_in_as({id}): no such user"
        );
        self.state.lock().signed_in = Some(id);
    }

    /// Every request received so far, in the order they were complete.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().requests.clone()
    }

    /// The requests whose path (without the query) is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.path.split('?').next() == Some(path))
            .collect()
    }
}

impl Drop for GitHubStandIn {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            let _ = server.thread.join();
        }
    }
}

/// Records `request`, then answers it as GitHub would.
async fn serve(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let recorded = Recorded::read(request).await?;
    state.lock().requests.push(recorded.clone());
    let (path, query) = recorded
        .path
        .split_once('?')
        .unwrap_or((recorded.path.as_str(), ""));
    let query = parse_form(query);
    let body = &recorded.body;
    Ok(match (recorded.method.as_str(), path) {
        ("GET", "/login/oauth/authorize") => state.authorize(&query),
        ("POST", "/login/oauth/access_token") => {
            let json = recorded
                .header("accept")
                .is_some_and(|accept| accept.contains("application/json"));
            state.access_token(&parse_form(&String::from_utf8_lossy(body)), json)
        }
        ("GET", path @ ("/api/v3/user" | "/api/v3/user/emails")) => state.api(path, &recorded),
        _ => answer(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"message": "Not Found", "documentation_url": API_DOCS}).to_string(),
        ),
    })
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not take the stand-in down with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET /login/oauth/authorize`: the user (already signed in, consent given) is sent
    /// back with a code.
    fn authorize(&self, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let refuse = |why: &str| answer(StatusCode::BAD_REQUEST, "text/plain", why.to_owned());
        let param = |name: &str| query.get(name).map(String::as_str);
        if param("client_id") != Some(self.client_id.as_str()) {
            return refuse("unknown client_id");
        }
        let Some(redirect_uri) = param("redirect_uri").filter(|uri| !uri.is_empty()) else {
            return refuse("redirect_uri is required (no callback URL is registered)");
        };
        if param("code_challenge_method") != Some("S256") {
            return refuse("code_challenge_method must be S256");
        }
        let Some(challenge) = param("code_challenge").filter(|c| is_challenge(c)) else {
            return refuse("code_challenge must be 43 base64url characters");
        };
        let mut inner = self.lock();
        let user = match param("login") {
            Some(login) => self.users.iter().find(|user| user.login == login),
            None => inner
                .signed_in
                .and_then(|id| self.users.iter().find(|user| user.id == id)),
        };
        let Some(user) = user else {
            return refuse("nobody is signed in (sign_in_as, or a login parameter)");
        };
        let code = random_string(20);
        let mut location = format!(
            "{redirect_uri}{}code={code}",
            if redirect_uri.contains('?') { '&' } else { '?' }
        );
        if let Some(state) = param("state") {
            let _ = write!(location, "&state={}", percent_encode(state));
        }
        let Ok(location) = HeaderValue::from_str(&location) else {
            return refuse("redirect_uri is not a URL");
        };
        inner.grants.insert(
            code,
            Grant {
                user: user.id,
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                scopes: scopes_of(param("scope").unwrap_or("")),
                issued: Instant::now(),
                used: false,
            },
        );
        let mut response = answer(StatusCode::FOUND, "text/html", String::new());
        response.headers_mut().insert(header::LOCATION, location);
        response
    }

    /// `POST /login/oauth/access_token`: the code (with the client's secret and the PKCE
    /// verifier) for an access token.
    fn access_token(&self, form: &HashMap<String, String>, json: bool) -> Response<Full<Bytes>> {
        let param = |name: &str| form.get(name).map(String::as_str);
        let refuse = |error: &str, description: &str| {
            let uri = "https://docs.github.com/apps/managing-oauth-apps/\
                       troubleshooting-oauth-app-access-token-request-errors";
            token_answer(
                json,
                &[
                    ("error", error),
                    ("error_description", description),
                    ("error_uri", uri),
                ],
            )
        };
        if param("client_id") != Some(self.client_id.as_str())
            || param("client_secret") != Some(self.client_secret.as_str())
        {
            return refuse(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            );
        }
        let bad_code = || {
            refuse(
                "bad_verification_code",
                "The code passed is incorrect or expired.",
            )
        };
        let mut inner = self.lock();
        let Some(grant) = param("code").and_then(|code| inner.grants.get_mut(code)) else {
            return bad_code();
        };
        if grant.used || grant.issued.elapsed() > CODE_TTL {
            return bad_code();
        }
        grant.used = true;
        if param("redirect_uri") != Some(grant.redirect_uri.as_str()) {
            return refuse(
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
            );
        }
        let verified = param("code_verifier")
            .is_some_and(|verifier| challenge_of(verifier) == grant.challenge);
        if !verified {
            return bad_code();
        }
        let token = format!("gho_{}", random_string(36));
        let (user, scopes) = (grant.user, grant.scopes.clone());
        let scope = scopes.join(",");
        inner.tokens.insert(token.clone(), (user, scopes));
        token_answer(
            json,
            &[
                ("access_token", &token),
                ("token_type", "bearer"),
                ("scope", &scope),
            ],
        )
    }

    /// `GET /api/v3/user` and `/api/v3/user/emails`.
    fn api(&self, path: &str, request: &Recorded) -> Response<Full<Bytes>> {
        let refuse = |status: StatusCode, message: &str| {
            answer(
                status,
                "application/json; charset=utf-8",
                json!({"message": message, "documentation_url": API_DOCS}).to_string(),
            )
        };
        if request.header("user-agent").is_none_or(str::is_empty) {
            // GitHub's own words (it answers them as text).
            return answer(
                StatusCode::FORBIDDEN,
                "text/plain",
                "Request forbidden by administrative rules. Please make sure your request \
                 has a User-Agent header (https://docs.github.com/en/rest/overview/\
                 resources-in-the-rest-api#user-agent-required)."
                    .to_owned(),
            );
        }
        let Some(token) = request.header("authorization").and_then(bearer) else {
            return refuse(StatusCode::UNAUTHORIZED, "Requires authentication");
        };
        let granted = self.lock().tokens.get(token).cloned();
        let Some((id, scopes)) = granted else {
            return refuse(StatusCode::UNAUTHORIZED, "Bad credentials");
        };
        let Some(user) = self.users.iter().find(|user| user.id == id) else {
            return refuse(StatusCode::UNAUTHORIZED, "Bad credentials");
        };
        let body = if path == "/api/v3/user" {
            json!({
                "login": user.login,
                "id": user.id,
                "node_id": format!("U_{}", user.id),
                "type": "User",
                "site_admin": false,
                "name": user.name,
                "email": null,
            })
        } else if scopes.iter().any(|s| s == "user:email" || s == "user") {
            user.emails
                .iter()
                .map(|(email, primary, verified)| {
                    json!({
                        "email": email,
                        "primary": primary,
                        "verified": verified,
                        "visibility": if *primary { json!("private") } else { Value::Null },
                    })
                })
                .collect()
        } else {
            return refuse(StatusCode::NOT_FOUND, "Not Found");
        };
        let mut response = answer(
            StatusCode::OK,
            "application/json; charset=utf-8",
            body.to_string(),
        );
        if let Ok(scopes) = HeaderValue::from_str(&scopes.join(", ")) {
            response.headers_mut().insert("x-oauth-scopes", scopes);
        }
        response
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The token endpoint's answer, always 200 (errors too), as JSON or as a form.
fn token_answer(json: bool, pairs: &[(&str, &str)]) -> Response<Full<Bytes>> {
    if json {
        let object: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|&(key, value)| (key.to_owned(), json!(value)))
            .collect();
        return answer(
            StatusCode::OK,
            "application/json; charset=utf-8",
            Value::Object(object).to_string(),
        );
    }
    let form: Vec<String> = pairs
        .iter()
        .map(|&(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    answer(
        StatusCode::OK,
        "application/x-www-form-urlencoded; charset=utf-8",
        form.join("&"),
    )
}

/// The token of `Authorization: Bearer <token>` or `token <token>` (scheme in any case).
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    let token = token.trim();
    (known && !token.is_empty()).then_some(token)
}

/// Requested scopes (space separated, as sent; GitHub also takes commas).
fn scopes_of(scope: &str) -> Vec<String> {
    scope
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// RFC 7636 §4.2: an S256 challenge is the unpadded base64url of 32 bytes.
fn is_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// An `application/x-www-form-urlencoded` string (a query or a form body); the first of
/// repeated names wins, undecodable bytes are replaced.
fn parse_form(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(form_decode(name))
            .or_insert_with(|| form_decode(value));
    }
    out
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if hex(i + 1).is_some() && hex(i + 2).is_some() => {
                let (high, low) = (hex(i + 1).unwrap_or(0), hex(i + 2).unwrap_or(0));
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
fn challenge_of(verifier: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::{Reply, request};

    /// RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const CALLBACK: &str = "http://app.test/cb?x=1";

    fn form(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn stand_in() -> GitHubStandIn {
        GitHubStandIn::start(
            "Iv1.client",
            "s3cret",
            &[
                GitHubUser::new(
                    583231,
                    "octocat",
                    Some("The Octocat"),
                    &[
                        ("old@example.com", false, true),
                        ("octocat@example.com", true, true),
                    ],
                ),
                GitHubUser::new(2, "nameless", None, &[("n@example.com", true, false)]),
            ],
        )
        .unwrap()
    }

    async fn authorize(gh: &GitHubStandIn, pairs: &[(&str, &str)]) -> Reply {
        let path = format!("/login/oauth/authorize?{}", form(pairs));
        request(gh.addr(), "GET", &path, &[], None).await
    }

    /// A code for `login` (scopes `scope`), from a good authorize request.
    async fn code_for(gh: &GitHubStandIn, login: &str, scope: &str) -> String {
        let r = authorize(
            gh,
            &[
                ("client_id", "Iv1.client"),
                ("redirect_uri", CALLBACK),
                ("scope", scope),
                ("state", "st 1"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
                ("login", login),
            ],
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.body);
        let location = r.header("location").unwrap();
        let query = location.strip_prefix("http://app.test/cb?").unwrap();
        let answer = parse_form(query);
        assert_eq!(answer["x"], "1");
        assert_eq!(answer["state"], "st 1");
        answer["code"].clone()
    }

    async fn redeem(gh: &GitHubStandIn, pairs: &[(&str, &str)], accept: &str) -> Reply {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", accept),
        ];
        let path = "/login/oauth/access_token";
        request(gh.addr(), "POST", path, &headers, Some(form(pairs))).await
    }

    fn token_form<'a>(
        code: &'a str,
        secret: &'a str,
        verifier: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("client_id", "Iv1.client"),
            ("client_secret", secret),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ]
    }

    async fn api(gh: &GitHubStandIn, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(gh.addr(), "GET", path, headers, None).await
    }

    #[test]
    fn challenges_are_rfc_7636_s256() {
        assert_eq!(challenge_of(VERIFIER), CHALLENGE);
    }

    #[test]
    fn forms_decode() {
        let parsed = parse_form("a=1&b=x+y%2Fz&a=2&empty&c=%zz%4");
        assert_eq!(parsed["a"], "1", "the first wins");
        assert_eq!(parsed["b"], "x y/z");
        assert_eq!(parsed["empty"], "");
        assert_eq!(parsed["c"], "%zz%4");
        assert_eq!(bearer("Bearer gho_x"), Some("gho_x"));
        assert_eq!(bearer("token gho_x"), Some("gho_x"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[tokio::test]
    async fn authorize_refuses_unknown_clients_and_missing_pkce() {
        let gh = stand_in();
        let good = [
            ("client_id", "Iv1.client"),
            ("redirect_uri", CALLBACK),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ];
        let with = |name: &str, value: &str| -> Vec<(String, String)> {
            good.iter()
                .map(|&(k, v)| (k.to_owned(), if k == name { value } else { v }.to_owned()))
                .filter(|(_, v)| !v.is_empty())
                .collect()
        };
        for (name, value) in [
            ("client_id", "Iv1.other"),
            ("client_id", ""),
            ("code_challenge_method", "plain"),
            ("code_challenge_method", ""),
            ("code_challenge", ""),
            ("code_challenge", "short"),
            ("redirect_uri", ""),
        ] {
            let pairs = with(name, value);
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = authorize(&gh, &pairs).await;
            assert_eq!(r.status, 400, "{name}={value:?}: {}", r.body);
        }
        // Nobody signed in and no login: nothing to authorize.
        assert_eq!(authorize(&gh, &good).await.status, 400);
        gh.sign_in_as(2);
        let r = authorize(&gh, &good).await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert!(
            r.header("location")
                .unwrap()
                .starts_with("http://app.test/cb?x=1&code=")
        );
        assert!(
            !r.header("location").unwrap().contains("state="),
            "none sent"
        );
        assert_eq!(gh.requests_to("/login/oauth/authorize").len(), 9);
    }

    #[tokio::test]
    async fn the_code_buys_one_token_with_the_right_secret_redirect_and_verifier() {
        let gh = stand_in();
        let json = "application/json";
        let error = |r: &Reply| r.json()["error"].as_str().unwrap_or("").to_owned();

        // A wrong secret does not consume the code.
        let code = code_for(&gh, "octocat", "read:user user:email").await;
        let r = redeem(&gh, &token_form(&code, "wrong", VERIFIER), json).await;
        assert_eq!(
            (r.status, error(&r)),
            (200, "incorrect_client_credentials".into())
        );
        // A wrong verifier does, and fails.
        let r = redeem(&gh, &token_form(&code, "s3cret", CHALLENGE), json).await;
        assert_eq!(error(&r), "bad_verification_code");
        let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
        assert_eq!(error(&r), "bad_verification_code", "used");

        // Another redirect URI than at authorize.
        let code = code_for(&gh, "octocat", "read:user user:email").await;
        let mut pairs = token_form(&code, "s3cret", VERIFIER);
        pairs[3].1 = "http://app.test/cb";
        assert_eq!(
            error(&redeem(&gh, &pairs, json).await),
            "redirect_uri_mismatch"
        );

        // All right: a token, once.
        let code = code_for(&gh, "octocat", "read:user user:email").await;
        let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
        assert_eq!(r.status, 200);
        let answer = r.json();
        assert_eq!(answer["token_type"], "bearer");
        assert_eq!(answer["scope"], "read:user,user:email");
        let token = answer["access_token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("gho_") && token.len() == 40, "{token}");
        let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
        assert_eq!(error(&r), "bad_verification_code");
        let recorded = gh.requests_to("/login/oauth/access_token");
        assert_eq!(recorded.len(), 6);
        let sent = parse_form(&String::from_utf8_lossy(&recorded[4].body));
        assert_eq!(sent["code_verifier"], VERIFIER);

        // Without Accept: application/json, GitHub answers a form.
        let code = code_for(&gh, "octocat", "read:user").await;
        let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), "*/*").await;
        let content_type = r.header("content-type").unwrap();
        assert!(content_type.starts_with("application/x-www-form-urlencoded"));
        let answer = parse_form(&r.body);
        assert_eq!(answer["token_type"], "bearer");
        assert_eq!(answer["scope"], "read:user");
        assert!(answer["access_token"].starts_with("gho_"));
    }

    #[tokio::test]
    async fn the_user_api_wants_a_user_agent_a_token_and_user_email_for_addresses() {
        let gh = stand_in();
        let token_for = async |scope: &str| {
            let code = code_for(&gh, "octocat", scope).await;
            let form = token_form(&code, "s3cret", VERIFIER);
            let answer = redeem(&gh, &form, "application/json").await.json();
            answer["access_token"].as_str().unwrap().to_owned()
        };
        let full = format!("Bearer {}", token_for("read:user user:email").await);
        let narrow = format!("token {}", token_for("read:user").await);
        let ua = ("user-agent", "test");
        let get = async |path: &str, headers: &[(&str, &str)]| api(&gh, path, headers).await;

        let r = get("/api/v3/user", &[("authorization", &full)]).await;
        assert_eq!(r.status, 403, "no User-Agent");
        let r = get("/api/v3/user", &[ua]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["message"], "Requires authentication");
        let r = get("/api/v3/user", &[ua, ("authorization", "Bearer gho_nope")]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["message"], "Bad credentials");

        let r = get("/api/v3/user", &[ua, ("authorization", &full)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let user = r.json();
        assert_eq!(user["id"], 583231);
        assert_eq!(user["login"], "octocat");
        assert_eq!(user["name"], "The Octocat");
        assert_eq!(user["email"], Value::Null, "kept private");
        assert_eq!(r.header("x-oauth-scopes"), Some("read:user, user:email"));
        let r = get("/api/v3/user/emails", &[ua, ("authorization", &full)]).await;
        let emails = r.json();
        assert_eq!(
            emails[0],
            json!({"email": "old@example.com", "primary": false, "verified": true,
                   "visibility": null})
        );
        assert_eq!(
            emails[1],
            json!({"email": "octocat@example.com", "primary": true, "verified": true,
                   "visibility": "private"})
        );
        assert_eq!(emails.as_array().unwrap().len(), 2);

        // Without user:email the addresses are hidden; the profile is not.
        let r = get("/api/v3/user/emails", &[ua, ("authorization", &narrow)]).await;
        assert_eq!(r.status, 404);
        let r = get("/api/v3/user", &[ua, ("authorization", &narrow)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(get("/api/v3/elsewhere", &[ua]).await.status, 404);
    }

    #[tokio::test]
    async fn a_dropped_stand_in_closes_its_port() {
        let gh = stand_in();
        let addr = gh.addr();
        assert_eq!(gh.base_url(), format!("http://127.0.0.1:{}", addr.port()));
        drop(gh);
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
}
