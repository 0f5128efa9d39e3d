//! Cookie sessions (API.md §3 `set_cookie`): cookies set, read back as credentials by the
//! control plane and the real verifier, rotated, cleared, and guarded against CSRF.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{PASSWORD, Reply, Stack, eventually, request};

/// `name -> (value, attributes)` of every `Set-Cookie`.
fn set_cookies(r: &Reply) -> Vec<(String, String, String)> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned(), attrs.trim().to_owned())
        })
        .collect()
}

async fn with_cookie(
    s: &Stack,
    method: &str,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut headers = vec![("cookie", cookie)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    request(s.addr, method, path, &headers, body.map(|b| b.to_string())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_work_end_to_end_and_refuse_cross_site_use() {
    let s = Stack::start().await;
    let (owner, app, _) = s.owner_with_app().await;
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({"cookies": {"allowed_origins": ["https://shop.example"]}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "options": {"set_cookie": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let (access_name, access, attrs) = &cookies[0];
    assert_eq!(access_name, "portcullis_access");
    assert_eq!(access, r.json()["tokens"]["access_token"].as_str().unwrap());
    assert_eq!(attrs, "Path=/; Max-Age=900; HttpOnly; Secure; SameSite=Lax");
    let (refresh_name, refresh, attrs) = &cookies[1];
    assert_eq!(refresh_name, "portcullis_refresh");
    assert!(
        attrs.starts_with(&format!("Path=/v1/apps/{app}; ")),
        "{attrs}"
    );
    assert!(attrs.ends_with("HttpOnly; Secure; SameSite=Lax"), "{attrs}");
    let access_cookie = format!("portcullis_access={access}");

    // The real verifier reads the access cookie.
    let verifier = s
        .verifier_with(&[("PORTCULLIS_VERIFIER_COOKIE", "portcullis_access")])
        .await;
    let r = request(
        verifier.addr,
        "GET",
        "/v1/verify",
        &[("cookie", &access_cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The control plane too; a state-changing request by cookie needs an allowed Origin.
    let me = format!("/v1/apps/{app}/me");
    assert_eq!(
        with_cookie(&s, "GET", &me, &access_cookie, None, None)
            .await
            .status,
        200
    );
    let patch = Some(json!({"username": "ann"}));
    for origin in [None, Some("https://evil.example"), Some("null")] {
        let r = with_cookie(&s, "PATCH", &me, &access_cookie, origin, patch.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden"),
            "{origin:?}"
        );
    }
    // Neither a percent-encoded application id nor a non-bearer Authorization slips past.
    let encoded = format!("/v1/apps/%{:02X}{}/me", app.as_bytes()[0], &app[1..]);
    let r = with_cookie(
        &s,
        "PATCH",
        &encoded,
        &access_cookie,
        Some("https://shop.example"),
        patch.clone(),
    )
    .await;
    assert_eq!(r.code(), "forbidden", "{encoded}");
    let headers = [
        ("cookie", access_cookie.as_str()),
        ("authorization", "Basic eDp5"),
        ("origin", "https://evil.example"),
    ];
    let r = request(
        s.addr,
        "PATCH",
        &me,
        &headers,
        patch.clone().map(|b| b.to_string()),
    )
    .await;
    assert_eq!(r.code(), "forbidden");
    let unchanged = with_cookie(&s, "GET", &me, &access_cookie, None, None).await;
    assert_eq!(
        unchanged.json()["username"],
        Value::Null,
        "a refused request changes nothing"
    );
    let r = with_cookie(
        &s,
        "PATCH",
        &me,
        &access_cookie,
        Some("https://shop.example"),
        patch.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with_cookie(
        &s,
        "PATCH",
        &me,
        &access_cookie,
        Some(&s.issuer),
        Some(json!({"username": "ann2"})),
    )
    .await;
    assert_eq!(r.status, 200, "the control plane's own origin");
    // A bearer token is no ambient credential: no Origin needed.
    let r = s
        .call(
            "PATCH",
            &me,
            Some(access),
            Some(json!({"username": "ann3"})),
        )
        .await;
    assert_eq!(r.status, 200);

    // Refresh by the refresh cookie: new cookies, the old refresh token used up.
    let refresh_cookie = format!("portcullis_refresh={refresh}");
    let path = format!("/v1/apps/{app}/token/refresh");
    let r = with_cookie(&s, "POST", &path, &refresh_cookie, None, None).await;
    assert_eq!(r.code(), "forbidden", "a cross-site refresh");
    let r = with_cookie(
        &s,
        "POST",
        &path,
        &refresh_cookie,
        Some("https://shop.example"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json().get("refresh_token").is_none(),
        "it stays in its HttpOnly cookie"
    );
    assert!(r.json()["access_token"].is_string());
    let renewed = set_cookies(&r);
    assert_eq!(renewed.len(), 2);
    assert_ne!(&renewed[1].1, refresh);
    let new_access = renewed[0].1.clone();
    let both = format!(
        "portcullis_access={new_access}; portcullis_refresh={}",
        renewed[1].1
    );

    // Logout by cookie clears both and revokes the session at the verifier.
    let logout = format!("/v1/apps/{app}/logout");
    let r = with_cookie(
        &s,
        "POST",
        &logout,
        &both,
        Some("https://shop.example"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cleared = set_cookies(&r);
    assert!(
        cleared
            .iter()
            .all(|(_, v, a)| v.is_empty() && a.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let bearer = format!("Bearer {new_access}");
    eventually(Duration::from_secs(10), || async {
        request(
            verifier.addr,
            "GET",
            "/v1/verify",
            &[("authorization", &bearer)],
            None,
        )
        .await
        .status
            == 401
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_names_and_domain_are_the_applications() {
    let s = Stack::start().await;
    let (owner, app, _) = s.owner_with_app().await;
    let settings = format!("/v1/apps/{app}/settings");
    for bad in [
        json!({"cookies": {"access_name": "has space"}}),
        json!({"cookies": {"access_name": "same", "refresh_name": "same"}}),
        json!({"cookies": {"domain": "a b"}}),
        json!({"cookies": {"allowed_origins": ["https://x.example/path"]}}),
    ] {
        assert_eq!(
            s.call("PUT", &settings, Some(&owner), Some(bad.clone()))
                .await
                .code(),
            "invalid_request",
            "{bad}"
        );
    }
    let r = s
        .call(
            "PUT",
            &settings,
            Some(&owner),
            Some(json!({"cookies": {"access_name": "shop_at", "refresh_name": "shop_rt", "domain": "shop.example"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.register(&app, "ann@example.com").await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD, "options": {"set_cookie": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookies = set_cookies(&r);
    assert_eq!(
        (cookies[0].0.as_str(), cookies[1].0.as_str()),
        ("shop_at", "shop_rt")
    );
    assert!(
        cookies
            .iter()
            .all(|(_, _, a)| a.ends_with("; Domain=shop.example"))
    );
    // Without the option: no cookies.
    let r = s.login(&app, "ann@example.com").await;
    assert!(r["access_token"].is_string());
}
