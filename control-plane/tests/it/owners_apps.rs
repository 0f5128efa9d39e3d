//! Owners and applications (API.md §3 "Owners and applications").

use serde_json::json;

use crate::support::{PASSWORD, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_register_login_and_manage_themselves() {
    let s = Stack::start().await;
    let body = json!({"email": "Ada@Example.com", "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace"});
    let r = s.post("/v1/owners", None, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = r.json();
    assert_eq!(owner["email"], "Ada@Example.com");
    assert!(owner["created_at"].as_str().unwrap().contains('T'));
    assert!(owner.get("password").is_none() && !r.body.contains(PASSWORD));

    // The same address in another case is the same owner.
    let dup = s
        .post(
            "/v1/owners",
            None,
            json!({"email": " ada@example.COM", "password": PASSWORD}),
        )
        .await;
    assert_eq!((dup.status, dup.code().as_str()), (409, "owner_exists"));
    let weak = s
        .post(
            "/v1/owners",
            None,
            json!({"email": "b@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!((weak.status, weak.code().as_str()), (422, "weak_password"));

    let bad = s
        .post(
            "/v1/owners/login",
            None,
            json!({"email": "ada@example.com", "password": "nope nope"}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (401, "invalid_credentials")
    );
    let r = s
        .post(
            "/v1/owners/login",
            None,
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["token_type"], "Bearer");
    assert!(r.json()["expires_in"].as_i64().unwrap() > 0);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();

    let me = s.get("/v1/owners/me", Some(&token)).await;
    assert_eq!(
        (me.status, me.json()["id"].clone()),
        (200, owner["id"].clone())
    );
    assert_eq!(s.get("/v1/owners/me", None).await.code(), "missing_token");

    let r = s
        .call(
            "PATCH",
            "/v1/owners/me",
            Some(&token),
            Some(json!({"first_name": "Augusta"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["first_name"].as_str()),
        (200, Some("Augusta"))
    );
    assert_eq!(r.json()["last_name"], "Lovelace");

    // Email and password changes need the current password: a token alone is not enough.
    let me = "/v1/owners/me";
    let r = s
        .call(
            "PATCH",
            me,
            Some(&token),
            Some(json!({"password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    let r = s
        .call(
            "PATCH",
            me,
            Some(&token),
            Some(json!({"email": "x@example.com", "current_password": "wrong guess!"})),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    // A new password revokes the owner's tokens, this one included.
    let body = json!({"password": "a brand new passphrase", "current_password": PASSWORD});
    let r = s.call("PATCH", me, Some(&token), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.get("/v1/owners/me", Some(&token)).await.code(),
        "token_revoked"
    );
    let old = s
        .post(
            "/v1/owners/login",
            None,
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.status, 401);
    // Signing in again at once (same second as the cutoff) gives a token that works.
    let r = s
        .post(
            "/v1/owners/login",
            None,
            json!({"email": "ada@example.com", "password": "a brand new passphrase"}),
        )
        .await;
    let fresh = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/owners/me", Some(&fresh)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_their_keys_and_settings() {
    let s = Stack::start().await;
    let (owner, app, key) = s.owner_with_app().await;
    assert!(key.len() >= 43, "API keys carry at least 128 random bits");

    let dup = s
        .post("/v1/apps", Some(&owner), json!({"name": "shop"}))
        .await;
    assert_eq!((dup.status, dup.code().as_str()), (409, "app_exists"));
    let other = s
        .post(
            "/v1/apps",
            Some(&owner),
            json!({"name": "blog", "access_token_ttl": 300}),
        )
        .await;
    assert_eq!(other.status, 201);
    assert_eq!(other.json()["access_token_ttl"], 300);
    let bad = s
        .post(
            "/v1/apps",
            Some(&owner),
            json!({"name": "x", "access_token_ttl": 5}),
        )
        .await;
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_request"));

    let list = s.get("/v1/apps", Some(&owner)).await;
    assert_eq!(list.json()["apps"].as_array().unwrap().len(), 2);
    assert!(!list.body.contains(&key), "the API key is shown only once");
    assert_eq!(
        s.get(&format!("/v1/apps/{app}"), Some(&owner)).await.json()["name"],
        "shop"
    );

    // Another owner sees none of it.
    let (stranger, _, _) = s.owner_with_app().await;
    let r = s.get(&format!("/v1/apps/{app}"), Some(&stranger)).await;
    assert_eq!((r.status, r.code().as_str()), (404, "app_not_found"));

    // Settings by API key: defaults, merge, refusal.
    let settings = format!("/v1/apps/{app}/settings");
    let r = s.get(&settings, Some(&key)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["access_token_ttl"], 900);
    assert_eq!(r.json()["refresh_token_reuse_grace_secs"], 0);
    let r = s.call("PUT", &settings, Some(&key), Some(json!({"refresh_token_reuse_grace_secs": 10, "rate_limits": {"per_ip_per_minute": 500}}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["refresh_token_reuse_grace_secs"], 10);
    assert_eq!(
        r.json()["rate_limits"]["per_account_failures_per_hour"],
        100
    );
    let r = s
        .call(
            "PUT",
            &settings,
            Some(&key),
            Some(json!({"access_token_ttl": "long"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        s.get(&settings, Some(&owner)).await.json()["refresh_token_reuse_grace_secs"],
        10
    );
    assert_eq!(
        s.get(&settings, Some("pk_wrong")).await.code(),
        "invalid_credentials"
    );

    // Rotating the key: the old one stops working at once.
    let r = s
        .post(&format!("/v1/apps/{app}/api-keys"), Some(&owner), json!({}))
        .await;
    assert_eq!(r.status, 201);
    let new_key = r.json()["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(s.get(&settings, Some(&key)).await.status, 401);
    assert_eq!(s.get(&settings, Some(&new_key)).await.status, 200);

    // Renaming onto an existing name conflicts; expiry makes the app vanish for users.
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}"),
            Some(&owner),
            Some(json!({"name": "blog"})),
        )
        .await;
    assert_eq!(r.code(), "app_exists");
    s.register(&app, "u@example.com").await;
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}"),
            Some(&owner),
            Some(json!({"expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "u@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "app_not_found"));
    assert_eq!(
        s.get(&settings, Some(&new_key)).await.code(),
        "app_not_found"
    );
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}"),
            Some(&owner),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(r.json()["expires_at"], serde_json::Value::Null);
    assert_eq!(
        s.post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "u@example.com", "password": PASSWORD})
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_cascades_and_revokes() {
    let s = Stack::start().await;
    let v = s.verifier().await;
    let (owner, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);

    // Owner tokens are typed `owner+jwt`: no sidecar takes one for a user's access token.
    assert_eq!(v.status(&owner).await, 401);
    let r = s.call("DELETE", "/v1/owners/me", Some(&owner), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    crate::support::eventually(std::time::Duration::from_secs(5), || async {
        v.status(access).await == 401
    })
    .await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.code(), "app_not_found");
    let r = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 404);
    s.sql("DO $$ BEGIN IF (SELECT count(*) FROM users) + (SELECT count(*) FROM sessions) + (SELECT count(*) FROM apps) <> 0 THEN RAISE 'rows left behind'; END IF; END $$").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_application_cascades_and_revokes() {
    let s = Stack::start().await;
    let v = s.verifier().await;
    let (owner, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);
    let r = s
        .call("DELETE", &format!("/v1/apps/{app}"), Some(&owner), None)
        .await;
    assert_eq!(r.status, 204);
    crate::support::eventually(std::time::Duration::from_secs(5), || async {
        v.status(access).await == 401
    })
    .await;
    assert_eq!(
        s.get(&format!("/v1/apps/{app}"), Some(&owner)).await.code(),
        "app_not_found"
    );
    s.sql("DO $$ BEGIN IF (SELECT count(*) FROM users) <> 0 THEN RAISE 'users left behind'; END IF; END $$").await;
}
