//! Roles and permissions (API.md §3 `/roles`, §4 route policy): defined by the API key,
//! carried by tokens as `roles` and `scope`, enforced by the real verifier.

use std::time::Duration;

use serde_json::json;

use crate::support::{Stack, claims_of, eventually};

const POLICY: &str = r#"
[[rule]]
prefix = "/orders"
methods = ["POST"]
all_scopes = ["orders:write"]

[[rule]]
prefix = "/admin"
any_role = ["admin"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_grants_and_denies_at_the_verifier() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    let roles = format!("/v1/apps/{app}/roles");
    let r = s
        .post(&roles, Some(&key), json!({"name": "clerk", "permissions": ["orders:write", "orders:read", "orders:write"]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json()["permissions"],
        json!(["orders:read", "orders:write"])
    );
    let r = s.post(&roles, Some(&key), json!({"name": "clerk"})).await;
    assert_eq!((r.status, r.code().as_str()), (409, "role_exists"));
    for bad in [
        json!({"name": "a,b"}),
        json!({"name": "x", "permissions": ["has space"]}),
    ] {
        let r = s.post(&roles, Some(&key), bad).await;
        assert_eq!(r.code(), "invalid_request");
    }
    assert_eq!(s.get(&roles, None).await.code(), "missing_token");
    assert_eq!(
        s.get(&roles, Some(&key)).await.json()["roles"][0]["name"],
        "clerk"
    );

    let dir =
        std::env::temp_dir().join(format!("portcullis-policy-{}", crate::support::uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let verifier = s
        .verifier_with(&[("PORTCULLIS_VERIFIER_POLICY_FILE", policy.to_str().unwrap())])
        .await;

    let tokens = s.register(&app, "ann@example.com").await;
    let user = tokens["user_id"].as_str().unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert!(
        claims_of(access)["scope"].is_null(),
        "no permissions, no scope"
    );
    assert_eq!(verifier.check("POST", "/orders", access).await, 403);
    assert_eq!(verifier.check("GET", "/orders", access).await, 200);

    // A role takes effect at the next refresh.
    let r = s
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/users/{user}"),
            Some(&key),
            Some(json!({"roles": ["clerk"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh = |token: String| {
        let s = &s;
        let app = app.clone();
        async move {
            let r = s
                .post(
                    &format!("/v1/apps/{app}/token/refresh"),
                    None,
                    json!({"refresh_token": token}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    let fresh = refresh(tokens["refresh_token"].as_str().unwrap().to_owned()).await;
    let access = fresh["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&access);
    assert_eq!(
        (claims["roles"].clone(), claims["scope"].clone()),
        (json!(["clerk"]), json!("orders:read orders:write"))
    );
    assert_eq!(fresh["roles"], json!(["clerk"]));
    assert_eq!(verifier.check("POST", "/orders", &access).await, 200);
    assert_eq!(verifier.check("GET", "/admin/users", &access).await, 403);

    // An undefined role grants no permission, but a policy on role names still sees it.
    s.call(
        "PATCH",
        &format!("/v1/apps/{app}/users/{user}"),
        Some(&key),
        Some(json!({"roles": ["clerk", "admin"]})),
    )
    .await;
    let fresh = refresh(fresh["refresh_token"].as_str().unwrap().to_owned()).await;
    let access = fresh["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&access)["scope"], "orders:read orders:write");
    assert_eq!(verifier.check("GET", "/admin/users", &access).await, 200);

    // A permission taken away with revoke_tokens stops working now, not at the next refresh.
    let r = s
        .call(
            "PUT",
            &format!("{roles}/clerk?revoke_tokens=true"),
            Some(&key),
            Some(json!({"permissions": ["orders:read"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(Duration::from_secs(10), || async {
        verifier.check("GET", "/orders", &access).await == 401
    })
    .await;
    let again = s.login(&app, "ann@example.com").await;
    let access = again["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&access)["scope"], "orders:read");
    assert_eq!(verifier.check("POST", "/orders", &access).await, 403);

    // Deleting a role takes it from its holders.
    let r = s
        .call("DELETE", &format!("{roles}/clerk"), Some(&key), None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        s.call("DELETE", &format!("{roles}/clerk"), Some(&key), None)
            .await
            .status,
        404
    );
    let user_view = s
        .get(&format!("/v1/apps/{app}/users/{user}"), Some(&key))
        .await;
    assert_eq!(user_view.json()["roles"], json!(["admin"]));
    let events = s
        .get(
            &format!("/v1/apps/{app}/audit?event=role.deleted"),
            Some(&key),
        )
        .await;
    assert_eq!(events.json()["events"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}
