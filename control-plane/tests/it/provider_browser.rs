//! The OpenID Provider in a real browser (Debian's Chromium through
//! `portcullis_tests::browser`): sign-in, consent, SSO for a second client, `prompt=none`,
//! logout, and a passkey on the provider's sign-in page.

use serde_json::{Value, json};

use crate::provider::Provider;
use crate::support::{HttpSink, PASSWORD, Stack, claims_of};

/// A PKCE pair (verifier, S256 challenge).
fn pkce() -> (String, String) {
    let verifier = portcullis_control_plane::infra::crypto::random_token(32);
    let challenge = portcullis_control_plane::infra::crypto::pkce_challenge(&verifier);
    (verifier, challenge)
}

#[tokio::test]
async fn in_a_browser_sign_in_consent_sso_prompt_none_and_logout() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    s.register(&p.app, "ann@example.com").await;
    let sink = HttpSink::start().await.unwrap();
    let back = sink.url("/cb");
    let client = |name: &str, first_party: bool| {
        json!({"name": name, "confidential": false, "redirect_uris": [back],
               "first_party": first_party})
    };
    let third = p.client(client("Partner", false)).await;
    let own = p.client(client("Shop app", true)).await;
    let authorize = |registered: &Value, prompt: &str| {
        let (_, challenge) = pkce();
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", registered["id"].as_str().unwrap()),
            ("redirect_uri", back.as_str()),
            ("scope", "openid email"),
            ("state", "st4te"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("prompt", prompt),
        ])
        .unwrap();
        format!("{}/oauth2/authorize?{query}", p.issuer)
    };
    let logout = format!("{}/oauth2/logout", p.issuer);
    let session = portcullis_tests::browser::run(&json!([
        {"goto": authorize(&third, "login"), "ready_ms": 300},
        {"eval": "document.title"},
        {"fill": {"input[name=login]": "ann@example.com", "input[name=password]": PASSWORD}},
        {"submit": "button:has-text('Sign in')"},
        {"submit": "button:has-text('Allow')"},
        // The application's own client: no password again (SSO), no consent.
        {"goto": authorize(&own, "none"), "ready_ms": 300},
        {"goto": logout, "ready_ms": 300},
        {"eval": "document.body.innerText"},
        {"goto": authorize(&own, "none"), "ready_ms": 300},
    ]))
    .await
    .unwrap();
    let r = &session.results;
    assert_eq!(r[1], json!("Sign in to shop"), "{r:?}");
    assert!(
        r[3]["text"]
            .as_str()
            .unwrap()
            .contains("Partner asks to use your shop account"),
        "{}",
        r[3]
    );
    let with_code = |v: &Value| {
        let url = v["url"].as_str().unwrap_or_default().to_owned();
        url.starts_with(&back) && url.contains("code=") && url.contains("state=st4te")
    };
    assert!(with_code(&r[4]), "consented: {}", r[4]);
    assert!(with_code(&r[5]), "signed in already: {}", r[5]);
    assert!(r[7].as_str().unwrap().contains("signed out"), "{}", r[7]);
    let refused = r[8]["url"].as_str().unwrap();
    assert!(
        refused.starts_with(&back) && refused.contains("error=login_required"),
        "{refused}"
    );
    assert!(session.console.is_empty(), "{:?}", session.console);
}

#[tokio::test]
async fn in_a_browser_the_sign_in_page_takes_a_passkey() {
    let s = Stack::start_with(&[("PORTCULLIS_PUBLIC_URL", "http://localhost:{port}")]).await;
    // Passkeys for http://localhost:PORT, the provider's origin here.
    let (app, key, _) = crate::passkeys_browser::site(&s).await;
    let origin = format!("http://localhost:{}", s.addr.port());
    let p = Provider {
        s: &s,
        app: app.clone(),
        key,
        issuer: format!("{origin}/v1/apps/{app}"),
    };
    s.register(&app, "ann@example.com").await;
    let sink = HttpSink::start().await.unwrap();
    let back = sink.url("/cb");
    let spa = p
        .client(
            json!({"name": "Shop app", "confidential": false, "redirect_uris": [back],
                       "first_party": true}),
        )
        .await;
    let (verifier, challenge) = pkce();
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", spa["id"].as_str().unwrap()),
        ("redirect_uri", back.as_str()),
        ("scope", "openid"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let authorize = format!("{}/oauth2/authorize?{query}", p.issuer);
    let passkey_page = format!("{origin}/v1/apps/{app}/passkeys/page");
    let session = portcullis_tests::browser::run(&json!([
        {"authenticator": "add"},
        {"goto": passkey_page},
        {"fill": {"#login": "ann@example.com", "#password": PASSWORD}},
        {"click": "#password-signin"},
        {"click": "#passkey-add"},
        {"goto": authorize},
        {"submit": "button:has-text('Sign in with a passkey')"},
    ]))
    .await
    .unwrap();
    let r = &session.results;
    assert!(r[4]["id"].is_string(), "{}", r[4]);
    assert_eq!(r[5]["ready"], true, "the page's script ran: {}", r[5]);
    let url = r[6]["url"].as_str().unwrap();
    assert!(url.starts_with(&back), "{}", r[6]);
    let code = url
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", back.as_str()),
        ("code_verifier", verifier.as_str()),
        ("client_id", spa["id"].as_str().unwrap()),
    ];
    let r = p.token(&form, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id_token = claims_of(r.json()["id_token"].as_str().unwrap());
    assert_eq!(id_token["amr"], json!(["hwk", "mfa"]));
    assert!(session.console.is_empty(), "{:?}", session.console);
}
