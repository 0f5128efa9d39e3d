//! A real headless browser for the passkey tests: Debian's Chromium with its WebAuthn
//! virtual authenticator, driven step by step.
//!
//! [`run`] starts `tests/browser/driver.mjs` under Node.js: npm `playwright-core` (pinned
//! in `tests/browser/package-lock.json`, installed into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-browser/<hash>/` on first use like the
//! OpenID provider's packages) launches the system `chromium` headless, opens one page and
//! plays the steps a test gives, in order, answering one JSON value per step. Passkey
//! ceremonies run against Chromium's own WebAuthn implementation and a virtual platform
//! authenticator added through the DevTools protocol (`WebAuthn.addVirtualAuthenticator`),
//! so what the control plane's pages send and receive is exactly what a browser makes.
//!
//! The steps (a JSON array; each step an object with one verb) and their results:
//!
//! - `{"authenticator": "add"}`, optionally with `"options"` overriding the defaults
//!   below (e.g. `{"isUserVerified": false}`): `{"authenticator_id": "..."}`.
//! - `{"authenticator": "remove"}`, the last one added: `{"removed": true}`.
//! - `{"credentials": true}`, those of the last one added: `{"credentials": [...]}`, each
//!   as DevTools gives it (`credentialId`, `isResidentCredential`, `rpId`, `userHandle`,
//!   `signCount`, `backupEligibility`, `backupState`, `userName`, `userDisplayName`; ids
//!   and handles in base64) without its private key.
//! - `{"goto": "http://..."}`, optionally with `"timeout_ms"` (default 15000; the
//!   navigation's limit, and the ready wait's unless `"ready_ms"` says otherwise, for a
//!   page known not to set it):
//!   `{"url", "status", "headers": {lower-case name: value}, "ready"}` (repeated headers
//!   joined by newlines).
//! - `{"fill": {"#selector": "value", ...}}`: `{}`.
//! - `{"click": "#selector"}`, optionally with `"timeout_ms"` (default 20000): the JSON
//!   the page then writes into `#result`, or `{"timeout": true}` when it writes nothing
//!   new in time.
//! - `{"eval": "expression"}`, a promise awaited: its value as JSON (`undefined` as
//!   `null`).
//! - `{"submit": "selector"}`, optionally with `"timeout_ms"` (default 15000): clicks a
//!   control that navigates (a form's button; redirects are followed) and gives where the
//!   browser ended: `{"url", "status", "text"}` (the page's text).
//!
//! The pages under test follow two conventions: a page sets `document.body.dataset.ready
//! = "true"` once its script has run (a `goto` waits for it; a page that never does, such
//! as an error page or one whose script its policy refused, gives `"ready": false` rather
//! than an error), and it writes the outcome of a button's action as JSON into
//! `<output id="result">` (what `click` waits for and returns). An added authenticator is
//! a passkey platform authenticator that verifies the user and needs no touch: DevTools
//! options `protocol: "ctap2"`, `transport: "internal"`, and `hasResidentKey`,
//! `hasUserVerification`, `isUserVerified`, `automaticPresenceSimulation` all true.
//!
//! Chromium's behaviour worth knowing when writing a test (Chromium 156, checked by this
//! module's tests): with no virtual authenticator at all (no `authenticator` step yet), a
//! ceremony never settles, not even at its `timeout` (presumably waiting on a dialog that
//! headless Chromium never shows), so `click` returns `{"timeout": true}`; after `add`
//! then `remove`, a ceremony fails with `NotAllowedError` only when its `timeout` runs
//! out (keep the pages' timeouts short in such tests); with an authenticator that holds
//! no credential for the site, `get()` fails with `NotAllowedError` at once, as does
//! `create()` requiring user verification from an authenticator added with
//! `"isUserVerified": false`. The authenticators live as long as the page, across
//! navigations.
//!
//! Not a general browser automation library: one page, no cookies or storage set from
//! outside, no screenshots; nothing is downloaded (no Playwright browser: the system
//! Chromium, found on `PATH`, or an error naming the Debian package).

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::npm::{self, missing_node};
use crate::{ENSURE_DEPS_HINT, TempDir, find_binary, is_executable};

/// Bound on one session once the packages are installed: the driver's own watchdog
/// (80 s) closes the browser and says which step hung before this kills it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(90);
/// Bytes of the driver's stderr quoted in an error (its end: where the failure is).
const STDERR_QUOTED: usize = 4000;

/// What a browser session gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// One value per step, in order (see the module documentation for each step's).
    pub results: Vec<Value>,
    /// The page's console errors and uncaught exceptions (`pageerror: ...`), in order,
    /// over the whole session: Content-Security-Policy violations show here ("Refused to
    /// execute inline script because it violates ..."), as do failed subresource loads.
    pub console: Vec<String>,
}

/// Runs one browser session: headless Chromium (the system package), one page, the
/// `steps` (a JSON array, see the module documentation) in order. Installs the driver's
/// npm packages first if this lock file's are not in the cache yet; the session itself
/// is bounded by 90 s.
///
/// # Errors
///
/// Fails when Chromium is missing (naming `apt-get install chromium` and
/// `scripts/ensure-deps`), when `node` or `npm` is missing, when the npm install fails,
/// when `steps` is not an array, and when a step fails (a selector not found, a
/// navigation error such as a refused connection, an unknown step, `#result` that is not
/// JSON): the error names the step and quotes the driver's message, the results so far,
/// the console and the driver's stderr.
pub async fn run(steps: &Value) -> Result<Session> {
    let chromium = find_binary("chromium")
        .or_else(|| find_binary("chromium-browser"))
        .ok_or_else(|| missing_chromium("chromium not found on PATH"))?;
    run_with(&chromium, steps).await
}

/// [`run`] with the Chromium binary at `chromium`.
async fn run_with(chromium: &Path, steps: &Value) -> Result<Session> {
    if !is_executable(chromium) {
        return Err(missing_chromium(&format!(
            "no Chromium executable at {}",
            chromium.display()
        )));
    }
    let Some(step_list) = steps.as_array() else {
        bail!("browser steps must be a JSON array, got {steps}");
    };
    let node = find_binary("node").ok_or_else(missing_node)?;
    let source = crate::crate_dir().join("browser");
    let modules = {
        let source = source.clone();
        // npm ci and the install mutex block: off the test's runtime.
        tokio::task::spawn_blocking(move || npm::installed(&source, "portcullis-browser"))
            .await
            .context("the npm install task panicked")??
    };
    let dir = TempDir::new("browser")?;
    // As for the OpenID provider: the script runs beside a link to the cached packages.
    fs::copy(source.join("driver.mjs"), dir.path.join("driver.mjs"))
        .context("copying tests/browser/driver.mjs")?;
    std::os::unix::fs::symlink(&modules, dir.path.join("node_modules"))
        .context("linking node_modules into the browser's directory")?;

    let mut child = Command::new(&node)
        .arg(dir.path.join("driver.mjs"))
        .current_dir(&dir.path)
        // Playwright makes Chromium's profile under the temp dir: this session's own
        // directory, removed on drop even when the browser was killed.
        .env("TMPDIR", &dir.path)
        // Chromium's other files (dconf, font caches) stay there too, not in $HOME.
        .env("XDG_CACHE_HOME", &dir.path)
        .env("XDG_CONFIG_HOME", &dir.path)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A test that gives up (or the timeout below) must not leave Node behind; the
        // browser exits when its DevTools pipe from Node closes.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {} driver.mjs", node.display()))?;
    let input = json!({ "chromium": chromium, "steps": step_list });
    let mut stdin = child.stdin.take().context("the driver's stdin")?;
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .context("writing the steps to the driver")?;
    // Closing stdin ends the driver's read of its input.
    drop(stdin);

    let output = tokio::time::timeout(SESSION_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("the browser session took over {SESSION_TIMEOUT:?}"))?
        .context("waiting for the driver")?;
    let stderr = stderr_tail(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(answer) = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
    else {
        bail!(
            "the browser driver exited ({}) without an answer; stdout: {stdout}\n\
             driver stderr: {stderr}",
            output.status
        );
    };
    let console = strings(&answer["console"]);
    if let Some(error) = answer["error"].as_str() {
        let step = answer["step"].as_i64().unwrap_or(-1);
        let which = usize::try_from(step)
            .ok()
            .and_then(|index| step_list.get(index))
            .map_or_else(|| "launching the browser".to_owned(), Value::to_string);
        bail!(
            "browser step {step} ({which}) failed: {error}\nresults so far: {}\n\
             console: {console:?}\ndriver stderr: {stderr}",
            answer["results"]
        );
    }
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    if !output.status.success() || results.len() != step_list.len() {
        bail!(
            "the browser driver exited ({}) with {} results for {} steps: {answer}\n\
             driver stderr: {stderr}",
            output.status,
            results.len(),
            step_list.len()
        );
    }
    Ok(Session { results, console })
}

/// The error for a missing Chromium, naming the Debian package.
fn missing_chromium(what: &str) -> anyhow::Error {
    anyhow!("{what}: install it with 'apt-get install chromium' {ENSURE_DEPS_HINT}")
}

/// The strings of a JSON array (others skipped).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The end of the driver's stderr, or `(empty)`.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let start = text.len().saturating_sub(STDERR_QUOTED);
    // Back to a character boundary (the cut may land inside a UTF-8 sequence).
    let start = (start..=text.len())
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use tokio::sync::oneshot;

    use super::*;
    use crate::sink::accept;

    /// The page of these tests: no inline script (its policy refuses them), ready once
    /// `/page.js` ran; `#go` writes what the browser offers into `#result`.
    const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>browser harness</title>
<script src="/page.js" defer></script></head>
<body><input id="name"><button id="go">Go</button><output id="result"></output>
</body></html>"#;
    const PAGE_JS: &str = r#"document.body.dataset.ready = "true";
document.getElementById("go").addEventListener("click", () => {
  document.getElementById("result").textContent = JSON.stringify({
    clicked: true,
    webauthn: typeof PublicKeyCredential,
    name: document.getElementById("name").value,
  });
});"#;
    /// The same page with an inline script, which the policy refuses: never ready.
    const INLINE: &str = r#"<!doctype html><html><body>
<script>document.body.dataset.ready = "true";</script></body></html>"#;

    /// Serves the pages on a free port of 127.0.0.1 until the returned sender drops.
    async fn serve() -> (u16, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(accept(listener, page, stopped));
        (port, stop)
    }

    async fn page(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (status, content_type, body) = match request.uri().path() {
            "/" => (200, "text/html; charset=utf-8", PAGE),
            "/page.js" => (200, "text/javascript", PAGE_JS),
            "/inline" => (200, "text/html; charset=utf-8", INLINE),
            _ => (404, "text/plain", "not found"),
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-security-policy", "default-src 'self'")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        Ok(response)
    }

    /// A WebAuthn ceremony in the page, settled or not after `limit_ms`: its outcome
    /// (`{"ok": type}`, `{"error": name}` or `{"pending": true}`) and how long it took.
    fn ceremony(call: &str, limit_ms: u32) -> Value {
        json!({ "eval": format!(
            "(async () => {{
               const start = performance.now();
               const ceremony = {call}.then(
                 (credential) => ({{ ok: credential.type }}),
                 (error) => ({{ error: error.name }}));
               const limit = new Promise((resolve) =>
                 setTimeout(() => resolve({{ pending: true }}), {limit_ms}));
               const outcome = await Promise.race([ceremony, limit]);
               return {{ ...outcome, ms: Math.round(performance.now() - start) }};
             }})()"
        )})
    }

    /// `navigator.credentials.create` of a discoverable credential for `localhost`.
    fn create(timeout_ms: u32) -> String {
        format!(
            "navigator.credentials.create({{ publicKey: {{
               challenge: new Uint8Array(32),
               rp: {{ name: 'Portcullis tests', id: 'localhost' }},
               user: {{ id: new Uint8Array([1, 2, 3]), name: 'a@example.com', displayName: 'A' }},
               pubKeyCredParams: [{{ type: 'public-key', alg: -7 }}],
               authenticatorSelection: {{ residentKey: 'required', userVerification: 'required' }},
               timeout: {timeout_ms} }} }})"
        )
    }

    /// `navigator.credentials.get` of any discoverable credential for `localhost`.
    fn get(timeout_ms: u32) -> String {
        format!(
            "navigator.credentials.get({{ publicKey: {{
               challenge: new Uint8Array(32), rpId: 'localhost',
               userVerification: 'required', timeout: {timeout_ms} }} }})"
        )
    }

    #[tokio::test]
    async fn drives_a_page_and_a_virtual_authenticator() {
        let (port, _stop) = serve().await;
        // `localhost`, not 127.0.0.1: WebAuthn needs a secure context and an RP ID that
        // is a domain; http://localhost is both.
        let origin = format!("http://localhost:{port}");
        let session = run(&json!([
            { "goto": format!("{origin}/") },
            { "fill": { "#name": "Alice" } },
            { "click": "#go" },
            { "authenticator": "add" },
            { "credentials": true },
            ceremony(&create(10_000), 15_000),
            { "credentials": true },
            ceremony(&get(10_000), 15_000),
            { "goto": format!("{origin}/inline"), "timeout_ms": 1000 },
            { "credentials": true },
            { "eval": "document.title" },
            { "authenticator": "remove" },
        ]))
        .await
        .unwrap();
        let results = &session.results;
        assert_eq!(results.len(), 12);

        assert_eq!(results[0]["url"], format!("{origin}/"));
        assert_eq!(results[0]["status"], 200);
        assert_eq!(results[0]["ready"], true);
        assert_eq!(
            results[0]["headers"]["content-security-policy"],
            "default-src 'self'"
        );
        assert_eq!(results[1], json!({}));
        assert_eq!(
            results[2],
            json!({ "clicked": true, "webauthn": "function", "name": "Alice" })
        );

        assert!(results[3]["authenticator_id"].as_str().unwrap().len() > 10);
        assert_eq!(results[4], json!({ "credentials": [] }));
        assert_eq!(results[5]["ok"], "public-key", "{}", results[5]);
        let credentials = results[6]["credentials"].as_array().unwrap();
        assert_eq!(credentials.len(), 1, "{}", results[6]);
        assert_eq!(credentials[0]["rpId"], "localhost");
        assert_eq!(credentials[0]["isResidentCredential"], true);
        assert_eq!(credentials[0]["userHandle"], "AQID"); // [1, 2, 3] in base64
        assert!(credentials[0].get("privateKey").is_none());
        assert_eq!(results[7]["ok"], "public-key", "{}", results[7]);

        // The page whose script its policy refused: a result, with the violation in the
        // console; the authenticator and its credential survive the navigation.
        assert_eq!(results[8]["status"], 200);
        assert_eq!(results[8]["ready"], false);
        assert_eq!(results[9]["credentials"].as_array().unwrap().len(), 1);
        assert_eq!(results[10], "");
        assert_eq!(results[11], json!({ "removed": true }));
        assert!(
            session
                .console
                .iter()
                .any(|line| line.contains("Content Security Policy")),
            "{:?}",
            session.console
        );
    }

    /// What a ceremony does without a usable authenticator (see the module docs).
    #[tokio::test]
    async fn ceremonies_without_an_authenticator() {
        let (port, _stop) = serve().await;
        let page = format!("http://localhost:{port}/");
        let session = run(&json!([
            { "goto": page },
            // No virtual authenticator yet: still pending well past its own timeout.
            ceremony(&create(1000), 4000),
            // A new page: the pending request goes (a frame has one at a time).
            { "goto": page },
            { "authenticator": "add" },
            { "authenticator": "remove" },
            // Virtual authenticators on, none left: refused when its timeout runs out.
            ceremony(&create(1000), 10_000),
            { "authenticator": "add" },
            // An authenticator without a credential for the site: refused at once.
            ceremony(&get(10_000), 10_000),
            { "authenticator": "remove" },
            // One that cannot verify the user, asked to: refused at once.
            { "authenticator": "add", "options": { "isUserVerified": false } },
            ceremony(&create(10_000), 10_000),
        ]))
        .await
        .unwrap();
        let results = &session.results;
        assert_eq!(results[1]["pending"], true, "{}", results[1]);
        assert_eq!(results[5]["error"], "NotAllowedError", "{}", results[5]);
        let ms = results[5]["ms"].as_u64().unwrap();
        assert!((900..5000).contains(&ms), "{}", results[5]);
        for refused in [&results[7], &results[10]] {
            assert_eq!(refused["error"], "NotAllowedError", "{refused}");
            assert!(refused["ms"].as_u64().unwrap() < 1000, "{refused}");
        }
    }

    #[tokio::test]
    async fn a_failing_step_is_an_error_naming_it() {
        let (port, _stop) = serve().await;
        let err = run(&json!([
            { "goto": format!("http://localhost:{port}/") },
            { "fill": { "#no-such-field": "x" } },
        ]))
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(r##"browser step 1 ({"fill":{"#no-such-field":"x"}}) failed: "##),
            "{err}"
        );
        assert!(err.contains("#no-such-field"), "{err}");
        assert!(err.contains(r#""ready":true"#), "the results so far: {err}");

        let err = run(&json!({ "goto": "http://localhost:1/" }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must be a JSON array"), "{err}");
    }

    #[tokio::test]
    async fn missing_chromium_names_the_package() {
        let err = run_with(Path::new("/nonexistent/chromium"), &json!([]))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Chromium executable at /nonexistent/chromium: install it with \
             'apt-get install chromium' (or run scripts/ensure-deps)"
        );
    }

    #[test]
    fn stderr_is_quoted_from_its_end() {
        assert_eq!(stderr_tail(b"  \n"), "(empty)");
        assert_eq!(stderr_tail(b"boom\n"), "boom");
        let long = format!("{}é{}", "a".repeat(10), "b".repeat(STDERR_QUOTED - 1));
        // The cut lands inside `é`: the quote starts after it.
        assert_eq!(stderr_tail(long.as_bytes()), "b".repeat(STDERR_QUOTED - 1));
    }
}
