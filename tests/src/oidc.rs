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
//! registry or npm's own cache), the first time a test needs them; later runs start at
//! once. Missing `node` or `npm` produce an error naming the Debian packages.
//!
//! Not a mock and not for production: the accounts have no passwords, and nothing is
//! persisted.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

use crate::{
    ENSURE_DEPS_HINT, LOG_BANNER, POLL_INTERVAL, TempDir, find_binary, free_port, log_tail,
    open_log, percent_encode, retry, wait_timeout,
};

/// How long Node.js may take to print the provider's ready line.
const OIDC_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `npm ci` may take (a cold npm cache downloads ~100 small packages).
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
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
        let node = find_binary("node").ok_or_else(missing_node)?;
        let modules = installed_modules()?;
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

fn missing_node() -> anyhow::Error {
    anyhow!(
        "node or npm not found on PATH: install them with 'apt-get install nodejs npm' \
         {ENSURE_DEPS_HINT}"
    )
}

/// `tests/oidc`: the provider's script, package.json and package-lock.json.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The log's lines written since its last banner (this start's).
fn this_run(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    match text.rfind(LOG_BANNER) {
        Some(start) => text[start..].to_owned(),
        None => text,
    }
}

/// `node_modules` of `tests/oidc/package-lock.json`, installed on first use.
///
/// One directory per lock file content (plus package.json) under the cache directory.
/// An install runs `npm ci` in a private temporary directory and renames it into place
/// when complete: a directory under its final name is always whole, so processes
/// racing to install (nextest, parallel `cargo test` runs) cost at most a duplicate
/// download, never a half-installed tree. Within this process a mutex makes the tests
/// wait for one install.
fn installed_modules() -> Result<PathBuf> {
    static INSTALLED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(modules) = installed.as_ref() {
        return Ok(modules.clone());
    }
    let modules = install(&source_dir(), &cache_dir())?;
    *installed = Some(modules.clone());
    Ok(modules)
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-oidc` (the temp dir without a home).
fn cache_dir() -> PathBuf {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("portcullis-oidc")
}

/// Installs the packages of `source`'s lock file under `cache` unless there already;
/// returns the `node_modules` directory.
fn install(source: &Path, cache: &Path) -> Result<PathBuf> {
    const FILES: [&str; 2] = ["package.json", "package-lock.json"];
    let mut manifest = Vec::new();
    for file in FILES {
        let path = source.join(file);
        manifest.extend(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        manifest.push(0);
    }
    let done = cache.join(format!("{:016x}", fnv1a(&manifest)));
    let modules = done.join("node_modules");
    if modules.join("oidc-provider").join("package.json").is_file() {
        return Ok(modules);
    }

    let npm = find_binary("npm").ok_or_else(missing_node)?;
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = cache.join(format!(
        ".install-{}-{}",
        process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = npm_ci(&npm, source, &tmp, &FILES).and_then(|()| {
        match fs::rename(&tmp, &done) {
            Ok(()) => Ok(()),
            // Another process finished first: its tree is as good as ours.
            Err(_) if modules.join("oidc-provider").join("package.json").is_file() => Ok(()),
            Err(err) => Err(anyhow!(
                "renaming {} to {}: {err}",
                tmp.display(),
                done.display()
            )),
        }
    });
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| modules)
}

/// `npm ci` of `source`'s `files` copied into `dir`, bounded by [`NPM_INSTALL_TIMEOUT`].
fn npm_ci(npm: &Path, source: &Path, dir: &Path, files: &[&str]) -> Result<()> {
    for file in files {
        fs::copy(source.join(file), dir.join(file))
            .with_context(|| format!("copying {file} to {}", dir.display()))?;
    }
    let log = dir.join("npm.log");
    let (stdout, stderr) = open_log(&log, "npm ci")?;
    let mut child = Command::new(npm)
        // --ignore-scripts: none of these packages needs an install script; none runs.
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
        ])
        .current_dir(dir)
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {} ci", npm.display()))?;
    match wait_timeout(&mut child, NPM_INSTALL_TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("npm ci of tests/oidc failed ({status}); {}", log_tail(&log)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "npm ci of tests/oidc took over {NPM_INSTALL_TIMEOUT:?}; {}",
                log_tail(&log)
            )
        }
    }
}

/// 64-bit FNV-1a: names the cache directory of a lock file (not a security check).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

/// A response of the provider, read whole.
struct Page {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

/// One request on a fresh connection; a body is sent form-urlencoded.
async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    body: Option<String>,
) -> Result<Page> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if !cookie.is_empty() {
            request = request.header(hyper::header::COOKIE, cookie);
        }
        if body.is_some() {
            request = request.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(BROWSER_REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {BROWSER_REQUEST_TIMEOUT:?}"))?
}

/// A browser's cookies for one host: name, value and path, as RFC 6265 matches them
/// (the provider scopes its interaction cookies to `/interaction/UID` and `/auth/UID`).
#[derive(Debug, Default)]
struct CookieJar {
    cookies: Vec<(String, String, String)>,
}

impl CookieJar {
    /// Takes one `Set-Cookie` value; an expired or emptied cookie is removed.
    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        let mut path = "/".to_owned();
        let mut expired = value.is_empty();
        for attribute in parts {
            let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
            let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
            match key.as_str() {
                "path" if val.starts_with('/') => val.clone_into(&mut path),
                "max-age" => expired |= val.parse::<i64>().is_ok_and(|age| age <= 0),
                // The provider deletes cookies by expiring them at the epoch.
                "expires" => expired |= val.contains("1970"),
                _ => {}
            }
        }
        self.cookies.retain(|(n, _, p)| !(*n == name && *p == path));
        if !expired {
            self.cookies.push((name, value, path));
        }
    }

    /// The `Cookie` header for a request to `path` (with its query): longest paths first.
    fn header_for(&self, path: &str) -> String {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let mut matching: Vec<_> = self
            .cookies
            .iter()
            .filter(|(_, _, scope)| path_matches(path, scope))
            .collect();
        matching.sort_by_key(|(_, _, scope)| std::cmp::Reverse(scope.len()));
        let mut header = String::new();
        for (name, value, _) in matching {
            if !header.is_empty() {
                header.push_str("; ");
            }
            let _ = write!(header, "{name}={value}");
        }
        header
    }
}

/// RFC 6265 §5.1.4 path-match.
fn path_matches(path: &str, scope: &str) -> bool {
    path == scope
        || (path.starts_with(scope)
            && (scope.ends_with('/') || path.as_bytes().get(scope.len()) == Some(&b'/')))
}

/// A `<form>` of the provider's interaction pages: its `data-prompt` and `action`.
#[derive(Debug, PartialEq, Eq)]
struct Form {
    prompt: String,
    action: String,
}

/// The forms of a page written by `provider.mjs` (attributes in double quotes).
fn forms(html: &str) -> Vec<Form> {
    let attribute = |tag: &str, name: &str| {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(html_unescape(&tag[start..start + len]))
    };
    html.match_indices("<form")
        .filter_map(|(start, _)| {
            let tag = &html[start..start + html[start..].find('>')?];
            Some(Form {
                prompt: attribute(tag, "data-prompt")?,
                action: attribute(tag, "action")?,
            })
        })
        .collect()
}

/// Undoes the numeric and common named entities of `provider.mjs`'s pages.
fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(end) = rest.find(';').filter(|&end| end <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix('#')
                .and_then(|code| code.parse::<u32>().ok())
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of an HTML page for an error message: tags dropped, whitespace collapsed.
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    html_unescape(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::Value;

    use super::*;
    use crate::http::{Reply, request};

    const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
    // A code verifier and its S256 challenge, the latter computed apart from the provider:
    // printf %s VERIFIER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d =
    const VERIFIER: &str = "portcullis-oidc-test-code-verifier-0123456789_abcdefghij~XYZ";
    const CHALLENGE: &str = "PYO10CY5P5Z8umidIMfvB-rkaFMSNRAKtvZPJgu_24Y";

    fn provider() -> OidcProvider {
        OidcProvider::start(
            &[
                OidcClient::new("rp", "rp-secret", &[REDIRECT_URI]),
                OidcClient::new("rp-post", "post-secret", &[REDIRECT_URI])
                    .with_auth_method(TokenAuthMethod::ClientSecretPost),
            ],
            &[
                OidcAccount::new("alice", "alice@example.test", true),
                OidcAccount::new("bob", "bob@example.test", false),
            ],
        )
        .unwrap()
    }

    fn addr(provider: &OidcProvider) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, provider.port()))
    }

    /// An authorization URL for `client_id`, with `extra` parameters appended.
    fn authorize_url(provider: &OidcProvider, client_id: &str, extra: &[(&str, &str)]) -> String {
        let mut url = format!(
            "{}/auth?response_type=code&client_id={client_id}&redirect_uri={}\
             &scope=openid%20email",
            provider.issuer(),
            percent_encode(REDIRECT_URI)
        );
        for (key, value) in extra {
            let _ = write!(url, "&{key}={}", percent_encode(value));
        }
        url
    }

    fn pkce(state: &'static str, nonce: &'static str) -> [(&'static str, &'static str); 4] {
        [
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]
    }

    /// The query parameters of a callback URL at [`REDIRECT_URI`].
    fn callback_params(location: &str) -> HashMap<String, String> {
        let query = location
            .strip_prefix(REDIRECT_URI)
            .and_then(|rest| rest.strip_prefix('?'))
            .unwrap_or_else(|| panic!("not a callback: {location}"));
        query
            .split('&')
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), percent_decode(value))
            })
            .collect()
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                byte => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Exchanges `code` at the token endpoint as client `rp` (client_secret_basic).
    async fn redeem(provider: &OidcProvider, code: &str, verifier: &str) -> Reply {
        let basic = format!("Basic {}", STANDARD.encode("rp:rp-secret"));
        request(
            addr(provider),
            "POST",
            "/token",
            &[
                ("authorization", basic.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={verifier}",
                percent_encode(code),
                percent_encode(REDIRECT_URI)
            )),
        )
        .await
    }

    fn jwt_payload(jwt: &str) -> Value {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn discovery_names_the_issuer_and_survives_a_restart() {
        let mut provider = provider();
        let issuer = provider.issuer();
        assert_eq!(issuer, format!("http://127.0.0.1:{}", provider.port()));
        let discovery = request(
            addr(&provider),
            "GET",
            "/.well-known/openid-configuration",
            &[],
            None,
        )
        .await;
        assert_eq!(discovery.status, 200, "{}", discovery.body);
        let doc = discovery.json();
        assert_eq!(doc["issuer"], issuer.as_str());
        assert_eq!(doc["authorization_endpoint"], format!("{issuer}/auth"));
        assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        let jwks = request(addr(&provider), "GET", "/jwks", &[], None)
            .await
            .json();
        assert_eq!(jwks["keys"][0]["alg"], "RS256");
        assert!(jwks["keys"][0].get("d").is_none(), "public keys only");

        let port = provider.port();
        provider.stop();
        provider.stop(); // idempotent
        assert!(std::net::TcpStream::connect(addr(&provider)).is_err());
        provider.restart().unwrap();
        assert_eq!(provider.port(), port);
        let again = request(addr(&provider), "GET", "/jwks", &[], None)
            .await
            .json();
        assert_eq!(again, jwks, "the signing key survives a restart");

        let dir = provider.dir.path.clone();
        drop(provider);
        assert!(!dir.exists(), "drop removes the temp dir");
    }

    #[tokio::test]
    async fn code_flow_with_pkce_issues_an_id_token_once() {
        let provider = provider();
        let url = authorize_url(&provider, "rp", &pkce("st-1", "n-1"));
        let location = provider.sign_in(&url, "alice").await.unwrap();
        let params = callback_params(&location);
        assert_eq!(params["state"], "st-1");
        assert_eq!(params["iss"], provider.issuer(), "RFC 9207 iss");
        let code = &params["code"];

        let wrong = redeem(&provider, code, &format!("{VERIFIER}x")).await;
        assert_eq!(wrong.status, 400, "{}", wrong.body);
        assert_eq!(wrong.json()["error"], "invalid_grant");

        // A failed verifier does not use the code up; a replay is refused (and revokes
        // what the code's grant issued).
        let reply = redeem(&provider, code, VERIFIER).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let replayed = redeem(&provider, code, VERIFIER).await;
        assert_eq!(replayed.status, 400, "{}", replayed.body);
        assert_eq!(replayed.json()["error"], "invalid_grant");
        let tokens = reply.json();
        assert_eq!(tokens["token_type"], "Bearer");
        let claims = jwt_payload(tokens["id_token"].as_str().unwrap());
        assert_eq!(claims["iss"], provider.issuer());
        assert_eq!(claims["aud"], "rp");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@example.test");
        assert_eq!(claims["email_verified"], true);
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert!(exp > iat && exp - iat <= 300, "short-lived: {iat}..{exp}");
    }

    #[tokio::test]
    async fn client_secret_post_and_an_unverified_email() {
        let provider = provider();
        let url = authorize_url(&provider, "rp-post", &pkce("st-2", "n-2"));
        let params = callback_params(&provider.sign_in(&url, "bob").await.unwrap());
        let reply = request(
            addr(&provider),
            "POST",
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}\
                 &client_id=rp-post&client_secret=post-secret",
                percent_encode(&params["code"]),
                percent_encode(REDIRECT_URI)
            )),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let claims = jwt_payload(reply.json()["id_token"].as_str().unwrap());
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["email_verified"], false);
    }

    #[tokio::test]
    async fn refusals_come_back_as_errors() {
        let provider = provider();

        // No PKCE, or `plain`: refused by the provider, sent back to the callback.
        for extra in [
            &[("state", "s"), ("nonce", "n")][..],
            &[
                ("state", "s"),
                ("code_challenge", VERIFIER),
                ("code_challenge_method", "plain"),
            ][..],
        ] {
            let url = authorize_url(&provider, "rp", extra);
            let params = callback_params(&provider.sign_in(&url, "alice").await.unwrap());
            assert_eq!(params["error"], "invalid_request", "{params:?}");
            assert!(!params.contains_key("code"));
            assert_eq!(params["state"], "s");
        }

        // The user says no.
        let url = authorize_url(&provider, "rp", &pkce("st-3", "n-3"));
        let params = callback_params(&provider.sign_in_and_deny(&url, "alice").await.unwrap());
        assert_eq!(params["error"], "access_denied");
        assert_eq!(params["state"], "st-3");

        // No account of that name: the sign-in page says so.
        let err = provider.sign_in(&url, "mallory").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("no account with sub mallory"),
            "{err:#}"
        );

        // A redirect_uri the client did not register: an error page, no redirect.
        let bad = url.replace(
            &percent_encode(REDIRECT_URI),
            &percent_encode("http://127.0.0.1:9/elsewhere"),
        );
        let err = provider.sign_in(&bad, "alice").await.unwrap_err();
        assert!(format!("{err:#}").contains("redirect_uri"), "{err:#}");

        // Not the provider at all.
        let err = provider.sign_in(REDIRECT_URI, "alice").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("is not at the provider"),
            "{err:#}"
        );
    }

    #[test]
    fn cookie_jar_matches_paths_and_forgets_expired_cookies() {
        let mut jar = CookieJar::default();
        jar.store("_interaction=abc; path=/interaction/abc; expires=Tue, 01 Dec 2099 00:00:00 GMT; samesite=lax; httponly");
        jar.store("_session=s1; path=/; samesite=none; httponly");
        jar.store("_resume=r; path=/auth/abc");
        assert_eq!(
            jar.header_for("/interaction/abc/login"),
            "_interaction=abc; _session=s1"
        );
        assert_eq!(jar.header_for("/interaction/abcd"), "_session=s1");
        assert_eq!(jar.header_for("/auth/abc?x=1"), "_resume=r; _session=s1");
        jar.store("_resume=; path=/auth/abc; expires=Thu, 01 Jan 1970 00:00:00 GMT");
        jar.store("_session=s2; path=/");
        assert_eq!(jar.header_for("/auth/abc"), "_session=s2");
        assert!(path_matches("/a/b", "/a/"));
        assert!(!path_matches("/ab", "/a/"));
    }

    #[test]
    fn parses_forms_urls_and_pages() {
        let html = r#"<form method="post" action="/interaction/x&#38;y/login" data-prompt="login"><input name="login"></form>
            <form action="/no-prompt"></form><form method="post" action="/interaction/u/abort" data-prompt="abort">"#;
        assert_eq!(
            forms(html),
            [
                Form {
                    prompt: "login".into(),
                    action: "/interaction/x&y/login".into()
                },
                Form {
                    prompt: "abort".into(),
                    action: "/interaction/u/abort".into()
                },
            ]
        );
        assert_eq!(
            page_text("<h1>oops!</h1>\n<pre>error: invalid_request &amp; more</pre>"),
            "oops! error: invalid_request & more"
        );
        let origin = "http://127.0.0.1:4000";
        assert_eq!(on_provider(origin, "/auth/1").as_deref(), Some("/auth/1"));
        assert_eq!(
            on_provider(origin, "http://127.0.0.1:4000/auth?a=1").as_deref(),
            Some("/auth?a=1")
        );
        assert_eq!(
            on_provider(origin, "http://127.0.0.1:4000?a").as_deref(),
            Some("/?a")
        );
        assert_eq!(on_provider(origin, "http://127.0.0.1:40001/cb"), None);
        assert_eq!(on_provider(origin, "//evil.test/"), None);
        assert_eq!(on_provider(origin, "http://127.0.0.1:9/cb"), None);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn missing_node_names_the_packages() {
        assert_eq!(
            missing_node().to_string(),
            "node or npm not found on PATH: install them with 'apt-get install nodejs npm' \
             (or run scripts/ensure-deps)"
        );
    }
}
