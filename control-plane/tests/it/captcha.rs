//! CAPTCHA (API.md §3): a local HTTP endpoint speaking the `siteverify` protocol stands in
//! for Turnstile; registration always asks, login once failures pile up, the provider down
//! fails closed.

use serde_json::json;

use crate::support::{HttpSink, PASSWORD, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_suspicious_logins_need_a_verified_captcha() {
    let mut provider = HttpSink::start().await.unwrap();
    provider.set_body(&json!({"success": true}));
    // The provider is on loopback, which CAPTCHA verify URLs may reach only when allowed.
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let (owner, app, key) = s.owner_with_app().await;
    let settings = format!("/v1/apps/{app}/settings");
    for bad in [
        json!({"captcha": {"provider": "turnstile"}}),
        json!({"captcha": {"provider": "turnstile", "secret": ""}}),
        json!({"captcha": {"provider": "nocaptcha", "secret": "x"}}),
        json!({"captcha": {"provider": "turnstile", "secret": "x", "verify_url": "ftp://x"}}),
    ] {
        let r = s
            .call("PUT", &settings, Some(&owner), Some(bad.clone()))
            .await;
        assert_eq!(r.code(), "invalid_request", "{bad}");
    }
    let captcha = json!({"captcha": {"provider": "turnstile", "secret": "captcha-secret-1",
        "verify_url": provider.url("/siteverify"), "login_after_failures": 2}});
    let r = s.call("PUT", &settings, Some(&owner), Some(captcha)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["captcha"]["secret"],
        "********",
        "the secret is never shown"
    );
    // Sent back as shown, the secret is kept.
    let shown = s.get(&settings, Some(&key)).await.json();
    assert_eq!(
        s.call("PUT", &settings, Some(&key), Some(shown))
            .await
            .status,
        200
    );
    // The stored secret is not sent anywhere new.
    let elsewhere = json!({"captcha": {"verify_url": "https://evil.example/siteverify"}});
    let r = s.call("PUT", &settings, Some(&key), Some(elsewhere)).await;
    assert_eq!(r.code(), "invalid_request", "{}", r.body);

    let register = format!("/v1/apps/{app}/register");
    let r = s
        .post(
            &register,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "captcha_required"));
    assert!(provider.requests().is_empty());
    let r = s
        .post(
            &register,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "captcha_token": "tok-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sent = provider.requests().remove(0);
    assert_eq!(sent.method, "POST");
    let form = String::from_utf8(sent.body.clone()).unwrap();
    assert!(
        form.contains("secret=captcha-secret-1") && form.contains("response=tok-1"),
        "{form}"
    );
    assert!(form.contains("remoteip=127.0.0.1"), "{form}");
    // A token passes once.
    let r = s
        .post(
            &register,
            None,
            json!({"email": "bob@example.com", "password": PASSWORD, "captcha_token": "tok-1"}),
        )
        .await;
    assert_eq!(r.code(), "captcha_invalid");
    assert_eq!(provider.requests().len(), 1, "refused before the provider");
    // The provider refuses; the header carries the token as well as the body.
    provider.set_body(&json!({"success": false, "error-codes": ["invalid-input-response"]}));
    let r = crate::support::request(
        s.addr,
        "POST",
        &register,
        &[("x-captcha-token", "tok-2")],
        Some(json!({"email": "bob@example.com", "password": PASSWORD}).to_string()),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "captcha_invalid"));
    provider.set_body(&json!({"success": true}));

    // Login: free until the account has two failures, then a CAPTCHA is due.
    let login = format!("/v1/apps/{app}/login");
    assert_eq!(
        s.post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD})
        )
        .await
        .status,
        200
    );
    for _ in 0..2 {
        let r = s
            .post(
                &login,
                None,
                json!({"email": "ann@example.com", "password": "wrong password!"}),
            )
            .await;
        assert_eq!(r.code(), "invalid_credentials");
    }
    let r = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.code(), "captcha_required");
    let r = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "captcha_token": "tok-3"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The provider down: closed, not open, and counted.
    provider.stop();
    let r = s
        .post(
            &register,
            None,
            json!({"email": "carl@example.com", "password": PASSWORD, "captcha_token": "tok-4"}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (503, "unavailable"));
    assert!(r.header("retry-after").is_some());
    provider.restart().unwrap();
    provider.set_status(500);
    let r = s
        .post(
            &register,
            None,
            json!({"email": "carl@example.com", "password": PASSWORD, "captcha_token": "tok-5"}),
        )
        .await;
    assert_eq!(r.status, 503);
    let users = s
        .get(
            &format!("/v1/apps/{app}/users?email=carl@example.com"),
            Some(&key),
        )
        .await;
    assert_eq!(users.json()["users"], json!([]), "nothing created");
    let metrics = s.get("/metrics", None).await.body;
    assert!(
        metrics.contains(
            "portcullis_captcha_checks_total{provider=\"turnstile\",outcome=\"unavailable\"} 2"
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("captcha"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!metrics.contains("captcha-secret-1") && !metrics.contains("tok-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_url_cannot_reach_private_addresses() {
    let provider = HttpSink::start().await.unwrap();
    provider.set_body(&json!({"success": true}));
    let s = Stack::start().await;
    let (owner, app, _) = s.owner_with_app().await;
    for url in [
        provider.url("/siteverify"),
        "http://localhost:9/siteverify".to_owned(),
    ] {
        let captcha = json!({"captcha": {"provider": "hcaptcha", "secret": "captcha-secret-2", "verify_url": url}});
        let r = s
            .call(
                "PUT",
                &format!("/v1/apps/{app}/settings"),
                Some(&owner),
                Some(captcha),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = s
            .post(
                &format!("/v1/apps/{app}/register"),
                None,
                json!({"email": "ann@example.com", "password": PASSWORD, "captcha_token": format!("tok-{url}")}),
            )
            .await;
        assert_eq!((r.status, r.code().as_str()), (503, "unavailable"), "{url}");
    }
    assert!(
        provider.requests().is_empty(),
        "nothing reached the loopback endpoint"
    );
}
