//! The README's DPoP client example, run verbatim: the ```js block after "A client, with
//! panva's `dpop` package (npm):" is read from README.md at run time, only its constants
//! are pointed at this test's control plane, application and an API served by Debian's
//! nginx in front of the real verifier (the README's nginx shape), and Node.js runs it
//! beside the `dpop` package of `tests/dpop`. An edit that breaks the example fails here.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Stack, request, uuid_like};

/// The paragraph the README's example follows.
const MARKER: &str = "A client, with panva's `dpop` package (npm):";
/// What the example prints when the API answered a DPoP-bound token.
const EXPECTED: &str = "DPoP 200";

/// The README's example: the first ```js block after [`MARKER`].
fn readme_example() -> String {
    let readme = portcullis_tests::crate_dir()
        .parent()
        .unwrap()
        .join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let after = &text[text
        .find(MARKER)
        .expect("the README's DPoP client paragraph")..];
    let start = after.find("```js\n").expect("a ```js block after it") + "```js\n".len();
    let end = after[start..].find("\n```").expect("the block's end");
    after[start..start + end].to_owned()
}

/// `script` with the string constant `name` set to `value` (`const NAME = "…"`, once).
fn with_const(script: &str, name: &str, value: &str) -> String {
    let head = format!("const {name} = \"");
    assert_eq!(
        script.matches(&head).count(),
        1,
        "one {head}…\" in {script}"
    );
    let start = script.find(&head).unwrap() + head.len();
    let end = start + script[start..].find('"').unwrap();
    format!("{}{value}{}", &script[..start], &script[end..])
}

/// The test's directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_dpop_client_example_runs() {
    let node = portcullis_tests::find_binary("node").expect(
        "node not found: install it with 'apt-get install nodejs npm' (or run scripts/ensure-deps)",
    );
    let modules = tokio::task::spawn_blocking(|| portcullis_tests::npm_modules("dpop"))
        .await
        .unwrap()
        .unwrap();

    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let verifier = s.verifier().await;

    let scratch =
        Scratch(std::env::temp_dir().join(format!("portcullis-dpop-readme-{}", uuid_like())));
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = portcullis_tests::nginx::Nginx::in_front_of(verifier.addr, "orders").unwrap();
    let front = proxy.addr;
    // The API is really behind the verifier: nothing without a token.
    assert_eq!(
        request(front, "GET", "/orders", &[], None).await.status,
        401
    );

    let example = readme_example();
    let script = with_const(&example, "CONTROL_PLANE", &s.issuer);
    let script = with_const(&script, "APP", &app);
    let script = with_const(&script, "API", &format!("http://{front}/orders"));
    std::fs::write(dir.join("example.mjs"), &script).unwrap();
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();

    let run = tokio::process::Command::new(node)
        .arg("example.mjs")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the example finished within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}\n{script}", out.status);
    // `DPoP` from the login, and 200 for `Authorization: DPoP`: which the verifier gives
    // only to a token bound to the proof's key (an unbound one is `invalid_token`).
    assert_eq!(stdout.trim(), EXPECTED, "{stderr}\n{script}");
    drop((proxy, scratch));
}
