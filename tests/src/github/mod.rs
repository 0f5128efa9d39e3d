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

use self::api::*;

mod api;

#[cfg(test)]
mod tests;

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
