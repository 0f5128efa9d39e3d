//! Passkeys in a real browser: Debian's Chromium, driven by Playwright
//! (`portcullis_tests::browser`), with Chromium's virtual authenticator (CTAP2, resident
//! keys, user verification) on the control plane's own passkey page.

use serde_json::{Value, json};

use crate::support::{PASSWORD, Stack, claims_of};

/// An application with passkeys for the page's origin; (app, API key, page URL).
pub(crate) async fn site(s: &Stack) -> (String, String, String) {
    let (_, app, key) = s.owner_with_app().await;
    let origin = format!("http://localhost:{}", s.addr.port());
    let settings = json!({"passkeys": {"rp_id": "localhost", "origins": [origin]}});
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&key),
            Some(settings),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = format!("{origin}/v1/apps/{app}/passkeys/page");
    (app, key, page)
}

fn amr(result: &Value) -> Value {
    claims_of(result["access_token"].as_str().unwrap())["amr"].clone()
}

/// The README's snippet, run in the page: the browser's own JSON conversions.
const README_SNIPPET: &str = r#"(async () => {
  const app = document.body.dataset.app;
  const post = async (path, body) => (await fetch(path, {method: "POST",
    headers: {"content-type": "application/json"}, body: JSON.stringify(body)})).json();
  const begun = await post(`/v1/apps/${app}/passkeys/login/begin`, {});
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(begun.options.publicKey);
  const credential = await navigator.credentials.get({ publicKey });
  const tokens = await post(`/v1/apps/${app}/passkeys/login/finish`,
    { ceremony_id: begun.ceremony_id, credential: credential.toJSON() });
  return tokens;
})()"#;

#[tokio::test]
async fn a_browser_adds_a_passkey_and_signs_in_with_it_three_ways() {
    let s = Stack::start().await;
    let (app, _, page) = site(&s).await;
    s.register(&app, "ann@example.com").await;
    let verifier = s.verifier().await;
    let password = json!({"#login": "ann@example.com", "#password": PASSWORD});
    let session = portcullis_tests::browser::run(&json!([
        {"authenticator": "add"},
        {"goto": page},
        {"fill": password},
        {"click": "#password-signin"},
        {"fill": {"#name": "Laptop"}},
        {"click": "#passkey-add"},
        {"credentials": true},
        // A fresh page: nothing signed in. Without a username, then for a named account.
        {"goto": page},
        {"click": "#passkey-signin"},
        {"fill": {"#login": "ann@example.com"}},
        {"click": "#passkey-named"},
        // The password now asks for the passkey as the second step.
        {"fill": password},
        {"click": "#password-signin"},
        {"eval": README_SNIPPET},
        // The passkey's authenticator gone, another (empty) one present: refused.
        {"authenticator": "remove"},
        {"authenticator": "add"},
        {"goto": page},
        {"click": "#passkey-signin"},
    ]))
    .await
    .unwrap();
    let r = &session.results;
    assert!(r[3]["access_token"].is_string(), "{}", r[3]);
    assert_eq!(amr(&r[3]), json!(["pwd"]));
    assert_eq!(r[5]["name"], "Laptop", "{}", r[5]);
    let credentials = r[6]["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 1, "{}", r[6]);
    assert_eq!(credentials[0]["isResidentCredential"], true);
    assert_eq!(credentials[0]["rpId"], "localhost");
    let handle = credentials[0]["userHandle"].as_str().unwrap();
    let user = r[3]["user_id"].as_str().unwrap();
    let user_bytes = uuid::Uuid::parse_str(user).unwrap();
    use base64::Engine as _;
    let as_handle = base64::engine::general_purpose::STANDARD.encode(user_bytes.as_bytes());
    assert_eq!(handle.len(), as_handle.len(), "a 16-byte handle");
    assert_ne!(handle, as_handle, "a random handle, not the user id");
    let headers = &r[7]["headers"];
    assert!(
        headers["content-security-policy"]
            .as_str()
            .unwrap()
            .starts_with("default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    for (i, expected) in [(8, json!(["hwk", "mfa"])), (10, json!(["hwk", "mfa"]))] {
        assert!(r[i]["access_token"].is_string(), "step {i}: {}", r[i]);
        assert_eq!(amr(&r[i]), expected, "step {i}");
        assert_eq!(r[i]["user_id"], user);
    }
    assert_eq!(amr(&r[12]), json!(["pwd", "hwk", "mfa"]), "{}", r[12]);
    assert_eq!(amr(&r[13]), json!(["hwk", "mfa"]), "{}", r[13]);
    let token = r[8]["access_token"].as_str().unwrap();
    assert_eq!(verifier.status(token).await, 200);
    let refused = r[17]["error"].as_str().unwrap_or_default();
    assert!(refused.starts_with("NotAllowedError"), "{}", r[17]);
    assert!(r[17]["access_token"].is_null());
    assert!(session.console.is_empty(), "{:?}", session.console);
}

#[tokio::test]
async fn a_passkey_is_refused_at_another_origin() {
    let s = Stack::start().await;
    let (app, key, page) = site(&s).await;
    s.register(&app, "ann@example.com").await;
    let other = page.replace("localhost", "127.0.0.1");
    let session = portcullis_tests::browser::run(&json!([
        {"authenticator": "add"},
        {"goto": page},
        {"fill": {"#login": "ann@example.com", "#password": PASSWORD}},
        {"click": "#password-signin"},
        {"click": "#passkey-add"},
        // The browser refuses "localhost" as the relying party of another origin.
        {"goto": other},
        {"click": "#passkey-signin"},
    ]))
    .await
    .unwrap();
    let r = &session.results;
    assert!(r[4]["id"].is_string(), "{}", r[4]);
    // (Chromium says NotAllowedError, not telling which; a server refusal would carry a
    // problem document.)
    let refused = r[6]["error"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("SecurityError") || refused.starts_with("NotAllowedError"),
        "{}",
        r[6]
    );
    assert!(r[6]["problem"].is_null(), "{}", r[6]);

    // The server refuses an origin the application does not list, even for its own id.
    let elsewhere = json!({"passkeys": {"origins": ["http://localhost:1"]}});
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&key),
            Some(elsewhere),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.register(&app, "bob@example.com").await;
    let session = portcullis_tests::browser::run(&json!([
        {"authenticator": "add"},
        {"goto": page},
        {"fill": {"#login": "bob@example.com", "#password": PASSWORD}},
        {"click": "#password-signin"},
        {"click": "#passkey-add"},
    ]))
    .await
    .unwrap();
    let r = &session.results;
    assert!(r[3]["access_token"].is_string(), "{}", r[3]);
    assert_eq!(r[4]["problem"]["code"], "invalid_request", "{}", r[4]);
}
