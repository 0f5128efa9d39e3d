//! A throwaway **real** OpenID Provider for tests of social login, and a headless browser
//! to sign in at it.
//!
//! [`OidcProvider`] runs `tests/oidc/provider.mjs` under Node.js: the npm package
//! `oidc-provider` (a certified OpenID Provider implementation, pinned in
//! `tests/oidc/package-lock.json`) with the clients and accounts a test gives it, on a free
//! loopback port, issuer `http://127.0.0.1:PORT`. It serves discovery, the JWKS (one
//! RS256 key, kept across restarts), the authorization, token and userinfo endpoints;
//! only the authorization-code flow, and every request must carry an S256 PKCE
//! challenge. Everything else lives in its memory: a restart forgets sessions, grants
//! and codes.
//!
//! [`OidcProvider::sign_in`] does what a person's browser would do with an authorization
//! URL: it follows the provider's redirects with the provider's cookies, signs in as the
//! given account on the provider's own (minimal) sign-in page, allows the consent, and
//! returns the URL the provider finally sends the browser to (the relying party's callback
//! with `code` and `state`, or with `error`).
//!
//! The npm packages are installed once per version of the lock file into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-oidc/<hash>/` (`npm ci`, from the npm
//! registry or npm's own cache; this crate's `npm` module), the first time a test needs
//! them; later runs start at once. Missing `node` or `npm` produce an error naming the
//! Debian packages.
//!
//! Not a mock and not for production: the accounts have no passwords, and nothing is
//! persisted.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

use crate::npm::{self, missing_node};
use crate::{
    LOG_BANNER, POLL_INTERVAL, TempDir, find_binary, free_port, log_tail, open_log, percent_encode,
    retry,
};
// The unit tests (`tests.rs`, through `super::*`) check the cache directories' hash.
#[cfg(test)]
use crate::fnv1a;

use self::browser::*;

mod browser;

#[cfg(test)]
mod tests;

/// How long Node.js may take to print the provider's ready line.
const OIDC_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The start of the line `provider.mjs` prints once it listens.
const READY_LINE: &str = "oidc-provider ready on ";
/// Bound on one HTTP exchange of [`OidcProvider::sign_in`].
const BROWSER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the requests of one [`OidcProvider::sign_in`] (a loop would be a bug).
const BROWSER_MAX_STEPS: usize = 12;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

impl TokenAuthMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }
}

/// A confidential client registered at the provider (response type `code`, grant type
/// `authorization_code`; PKCE S256 required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcClient {
    pub client_id: String,
    pub client_secret: String,
    /// Matched exactly by the provider.
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: TokenAuthMethod,
}

impl OidcClient {
    /// A client authenticating with `client_secret_basic`.
    pub fn new(client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: redirect_uris.iter().map(|&uri| uri.to_owned()).collect(),
            token_endpoint_auth_method: TokenAuthMethod::ClientSecretBasic,
        }
    }

    /// The same client authenticating with `method` instead.
    pub fn with_auth_method(mut self, method: TokenAuthMethod) -> Self {
        self.token_endpoint_auth_method = method;
        self
    }
}

/// An end user of the provider: the claims it asserts (`email` and `email_verified`
/// with scope `email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcAccount {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
}

impl OidcAccount {
    pub fn new(sub: &str, email: &str, email_verified: bool) -> Self {
        Self {
            sub: sub.to_owned(),
            email: email.to_owned(),
            email_verified,
        }
    }
}

/// A throwaway `oidc-provider` on a free 127.0.0.1 port, in its own temporary directory.
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct OidcProvider {
    node: PathBuf,
    port: u16,
    dir: TempDir,
    clients: Vec<OidcClient>,
    accounts: Vec<OidcAccount>,
    /// Signs the provider's cookies; the same across restarts.
    cookie_key: String,
    /// `oidc-provider`'s default claims behaviour: with an access token issued, the ID
    /// token carries only `sub` and the scopes' claims are at UserInfo (OIDC Core §5.4).
    /// Otherwise the ID token carries them too, as the big providers do.
    default_claims: bool,
    child: Option<Child>,
}

impl OidcProvider {
    /// Installs the npm packages if this lock file's are not in the cache yet, then
    /// starts the provider and waits (up to ~20 s) for its ready line. If it does not
    /// come up, tries again on a new port (3 attempts in all).
    ///
    /// # Errors
    ///
    /// Fails when `node` or `npm` is missing (naming the Debian packages), when `npm ci`
    /// fails (quoting its log), or when the provider does not come up (quoting its log,
    /// which also shows a configuration `oidc-provider` refuses, e.g. a bad redirect URI).
    pub fn start(clients: &[OidcClient], accounts: &[OidcAccount]) -> Result<Self> {
        Self::start_as(clients, accounts, false)
    }

    /// Like [`start`](Self::start), with `oidc-provider`'s default claims behaviour: the
    /// ID token of the code flow carries only `sub`; `email`, `email_verified` and
    /// `name` are at the UserInfo endpoint.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_with_default_claims(
        clients: &[OidcClient],
        accounts: &[OidcAccount],
    ) -> Result<Self> {
        Self::start_as(clients, accounts, true)
    }

    fn start_as(
        clients: &[OidcClient],
        accounts: &[OidcAccount],
        default_claims: bool,
    ) -> Result<Self> {
        let node = find_binary("node").ok_or_else(missing_node)?;
        let modules = npm::installed(&source_dir(), "portcullis-oidc")?;
        let dir = TempDir::new("oidc")?;
        // ES modules resolve packages next to the importing file (NODE_PATH is ignored
        // for `import`): the script runs from its own directory, beside a link to the
        // cached node_modules, so editing it never needs a reinstall.
        fs::copy(
            source_dir().join("provider.mjs"),
            dir.path.join("provider.mjs"),
        )
        .context("copying tests/oidc/provider.mjs")?;
        std::os::unix::fs::symlink(&modules, dir.path.join("node_modules"))
            .context("linking node_modules into the provider's directory")?;
        let mut provider = Self {
            node,
            port: 0,
            dir,
            clients: clients.to_vec(),
            accounts: accounts.to_vec(),
            cookie_key: format!("{:032x}", rand::random::<u128>()),
            default_claims,
            child: None,
        };
        retry("oidc-provider did not start", |_| {
            provider.port = free_port();
            provider.spawn()
        })?;
        Ok(provider)
    }

    /// `http://127.0.0.1:PORT`: the issuer, exactly as in discovery and the ID tokens
    /// (no trailing slash).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port on 127.0.0.1; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that receives the provider's stdout and stderr (failed authorization and
    /// token requests are logged there with their reason).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("oidc.log")
    }

    /// Kills the provider (SIGKILL) and waits for it to exit. Connections to
    /// [`port`](Self::port) are refused afterwards. Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the provider if it runs, then starts it again on the same port with the
    /// same clients, accounts and signing key (sessions, grants and unused codes are
    /// gone); waits for its ready line.
    ///
    /// # Errors
    ///
    /// Fails when the provider does not come up again (for instance if another process
    /// took the port meanwhile); the error quotes the end of its log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let what = format!("oidc-provider did not restart on port {}", self.port);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            self.spawn()
        })
    }

    /// Plays a browser that opens `authorize_url` (an authorization request at this
    /// provider), signs in as account `sub` and allows the consent. Follows redirects
    /// while they stay on the provider, carrying its cookies (a fresh cookie jar each
    /// call: no provider session survives between calls), and returns the first
    /// `Location` that leads away from it: the relying party's callback with `code`,
    /// `state` and `iss`, or with `error` when the provider refused the request but
    /// trusted the redirect URI (e.g. `error=invalid_request` without PKCE).
    ///
    /// # Errors
    ///
    /// Fails when `authorize_url` is not at this provider, when it cannot be reached,
    /// and when it answers with a page that is neither a redirect nor one of its sign-in
    /// and consent forms: the error then carries the page's text (the provider shows an
    /// error page instead of redirecting when it cannot trust the client or
    /// `redirect_uri`, and the sign-in page refuses an unknown `sub`).
    pub async fn sign_in(&self, authorize_url: &str, sub: &str) -> Result<String> {
        self.browse(authorize_url, sub, Consent::Allow).await
    }

    /// Like [`sign_in`](Self::sign_in), but the user denies the consent: the result is
    /// the callback with `error=access_denied`.
    ///
    /// # Errors
    ///
    /// As [`sign_in`](Self::sign_in).
    pub async fn sign_in_and_deny(&self, authorize_url: &str, sub: &str) -> Result<String> {
        self.browse(authorize_url, sub, Consent::Deny).await
    }

    /// The configuration file `provider.mjs` reads.
    fn write_config(&self) -> Result<PathBuf> {
        let clients: Vec<_> = self
            .clients
            .iter()
            .map(|client| {
                json!({
                    "client_id": client.client_id,
                    "client_secret": client.client_secret,
                    "redirect_uris": client.redirect_uris,
                    "token_endpoint_auth_method": client.token_endpoint_auth_method.as_str(),
                })
            })
            .collect();
        let accounts: Vec<_> = self
            .accounts
            .iter()
            .map(|account| {
                json!({
                    "sub": account.sub,
                    "email": account.email,
                    "email_verified": account.email_verified,
                })
            })
            .collect();
        let config = json!({
            "issuer": self.issuer(),
            "port": self.port,
            "jwks_path": self.dir.path.join("jwks.json"),
            "cookie_keys": [self.cookie_key],
            "clients": clients,
            "accounts": accounts,
            "default_claims": self.default_claims,
        });
        let path = self.dir.path.join("config.json");
        fs::write(&path, config.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Spawns the provider on `self.port` and waits for its ready line.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let config = self.write_config()?;
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("oidc-provider on port {}", self.port))?;
        let child = Command::new(&self.node)
            .arg(self.dir.path.join("provider.mjs"))
            .arg(&config)
            .current_dir(&self.dir.path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {} provider.mjs", self.node.display()))?;
        let ready = format!("{READY_LINE}{}", self.issuer());
        let child = self.child.insert(child);
        let deadline = Instant::now() + OIDC_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                bail!(
                    "oidc-provider on port {} exited ({status}) before it was ready; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            // The line printed after this start's banner: Node has bound the port.
            if this_run(&log).lines().any(|line| line == ready) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "oidc-provider on port {} was not ready within {OIDC_READY_TIMEOUT:?}; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    async fn browse(&self, authorize_url: &str, sub: &str, consent: Consent) -> Result<String> {
        let origin = self.issuer();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut path = on_provider(&origin, authorize_url)
            .ok_or_else(|| anyhow!("{authorize_url} is not at the provider {origin}"))?;
        let mut body: Option<String> = None;
        let mut jar = CookieJar::default();
        for _ in 0..BROWSER_MAX_STEPS {
            let method = if body.is_some() { "POST" } else { "GET" };
            let page = fetch(addr, method, &path, &jar.header_for(&path), body.take())
                .await
                .with_context(|| format!("{method} {origin}{path}"))?;
            for cookie in page.headers.get_all(hyper::header::SET_COOKIE) {
                if let Ok(cookie) = cookie.to_str() {
                    jar.store(cookie);
                }
            }
            if (300..400).contains(&page.status) {
                let location = page
                    .headers
                    .get(hyper::header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or_else(|| anyhow!("{method} {path}: {} without Location", page.status))?;
                match on_provider(&origin, location) {
                    Some(next) => path = next,
                    None => return Ok(location.to_owned()),
                }
                continue;
            }
            let forms = forms(&page.body);
            let find = |prompt: &str| {
                forms
                    .iter()
                    .find(|form| form.prompt == prompt)
                    .map(|form| form.action.clone())
            };
            if page.status == 200
                && let Some(action) = find("login")
            {
                body = Some(format!("login={}", percent_encode(sub)));
                path = action;
            } else if page.status == 200
                && let Some(action) = find("consent")
            {
                path = match consent {
                    Consent::Allow => action,
                    Consent::Deny => {
                        find("abort").ok_or_else(|| anyhow!("the consent page has no deny form"))?
                    }
                };
                body = Some(String::new());
            } else {
                bail!(
                    "{method} {origin}{path} answered {} with a page that is neither a redirect \
                     nor a sign-in form: {}",
                    page.status,
                    page_text(&page.body)
                );
            }
        }
        bail!("no redirect away from the provider after {BROWSER_MAX_STEPS} requests")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user's answer on the consent page.
#[derive(Debug, Clone, Copy)]
enum Consent {
    Allow,
    Deny,
}

/// `tests/oidc`: the provider's script, package.json and package-lock.json.
fn source_dir() -> PathBuf {
    crate::crate_dir().join("oidc")
}

/// The log's lines written since its last banner (this start's).
fn this_run(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    match text.rfind(LOG_BANNER) {
        Some(start) => text[start..].to_owned(),
        None => text,
    }
}

/// The path and query of `url` when it is at `origin` (absolute, or a path), else `None`.
fn on_provider(origin: &str, url: &str) -> Option<String> {
    if url.starts_with('/') && !url.starts_with("//") {
        return Some(url.to_owned());
    }
    let rest = url.strip_prefix(origin)?;
    match rest.chars().next() {
        None => Some("/".to_owned()),
        Some('/') => Some(rest.to_owned()),
        Some('?') => Some(format!("/{rest}")),
        Some(_) => None,
    }
}
