//! The security event log (API.md §3 `GET /audit`): what each flow records, filters and
//! pagination, who may read it, retention, and that no row carries a secret.

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, PASSWORD, Stack};

fn names(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_security_event_is_recorded_without_a_secret() {
    let s = Stack::start().await;
    let (owner, app, key) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let user = tokens["user_id"].as_str().unwrap().to_owned();
    let login = format!("/v1/apps/{app}/login");
    let wrong = "not the password at all";
    let r = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": wrong}),
        )
        .await;
    assert_eq!(r.status, 401);
    s.post(
        &login,
        None,
        json!({"email": "nobody@example.com", "password": wrong}),
    )
    .await;
    let signed_in = s.login(&app, "ann@example.com").await;
    let refresh = signed_in["refresh_token"].as_str().unwrap();
    let refreshed = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(refreshed.status, 200);
    let reuse = s
        .post(
            &format!("/v1/apps/{app}/token/refresh"),
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(reuse.code(), "refresh_token_reused");
    let access = tokens["access_token"].as_str().unwrap();
    let new_password = "another long passphrase";
    let r = s
        .post(
            &format!("/v1/apps/{app}/password/change"),
            Some(access),
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .post(
            &format!("/v1/apps/{app}/logout"),
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .post(
            &format!("/v1/apps/{app}/users"),
            Some(&key),
            json!({"email": "bob@example.com"}),
        )
        .await;
    let bob = r.json()["id"].as_str().unwrap().to_owned();
    let bob_path = format!("/v1/apps/{app}/users/{bob}");
    s.call(
        "PATCH",
        &bob_path,
        Some(&key),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(
        s.call("DELETE", &bob_path, Some(&owner), None).await.status,
        204
    );
    let r = s
        .post("/v1/admin/keys/rotate", Some(ADMIN_TOKEN), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let audit = format!("/v1/apps/{app}/audit");
    let page = s.get(&audit, Some(&key)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let events = names(&page.json());
    for expected in [
        "login.succeeded",
        "login.failed",
        "refresh_token.reused",
        "password.changed",
        "session.revoked",
        "user.created",
        "user.updated",
        "user.deleted",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} in {events:?}"
        );
    }
    // Newest first: bob's deletion is the last thing that happened in the application.
    assert_eq!(events[0], "user.deleted");
    let all_events = page.json()["events"].as_array().unwrap().clone();
    let failed: Vec<&Value> = all_events
        .iter()
        .filter(|e| e["event"] == "login.failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(
        failed[0]["user_id"],
        Value::Null,
        "the unknown address names no one"
    );
    assert_eq!(failed[1]["user_id"], user.as_str());
    assert_eq!(failed[1]["actor"], "anonymous");
    let first = &page.json()["events"][0];
    assert_eq!(first["actor"], "admin");
    for field in ["id", "ip", "request_id", "created_at", "details"] {
        assert!(!first[field].is_null(), "{field}");
    }
    // The operator's rotation is recorded outside any application.
    let rotated = s
        .sql_value("SELECT actor FROM audit_events WHERE event = 'keys.rotated' AND app_id IS NULL")
        .await;
    assert_eq!(rotated, json!("operator"));

    // No secret in any row: passwords tried or set, tokens, the API key.
    let all = s
        .sql_value("SELECT string_agg(t::text, ' ') FROM audit_events t")
        .await;
    let all = all.as_str().unwrap();
    for secret in [
        PASSWORD,
        wrong,
        new_password,
        refresh,
        access,
        &key,
        refreshed.json()["refresh_token"].as_str().unwrap(),
    ] {
        assert!(!all.contains(secret), "a secret in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pages_access_and_retention() {
    let s = Stack::start().await;
    let (owner, app, key) = s.owner_with_app().await;
    let ann = s.register(&app, "ann@example.com").await["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.register(&app, "bob@example.com").await;
    for _ in 0..3 {
        s.login(&app, "ann@example.com").await;
    }
    let audit = format!("/v1/apps/{app}/audit");
    let r = s
        .get(
            &format!("{audit}?user_id={ann}&event=login.succeeded&limit=2"),
            Some(&key),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(names(&r.json()), ["login.succeeded", "login.succeeded"]);
    let cursor = r.json()["next_cursor"].as_str().unwrap().to_owned();
    let older = s
        .get(
            &format!("{audit}?user_id={ann}&event=login.succeeded&limit=2&cursor={cursor}"),
            Some(&owner),
        )
        .await;
    assert_eq!(names(&older.json()), ["login.succeeded", "login.succeeded"]);
    assert!(
        older.json()["next_cursor"].is_null(),
        "four sessions in all"
    );
    let ids = |p: &Value| -> Vec<String> {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        ids(&r.json())
            .iter()
            .all(|id| !ids(&older.json()).contains(id))
    );
    assert!(
        ids(&r.json())[1] > ids(&older.json())[0],
        "newest first across pages"
    );
    let r = s
        .get(&format!("{audit}?until=2000-01-01T00:00:00Z"), Some(&key))
        .await;
    assert_eq!(r.json()["events"], json!([]));
    let r = s
        .get(
            &format!("{audit}?since=2000-01-01T00:00:00Z&limit=200"),
            Some(&key),
        )
        .await;
    // Two registrations (user.created + login.succeeded each) and three sign-ins.
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 7);

    for bad in [
        "limit=0",
        "limit=201",
        "since=yesterday",
        "cursor=nope",
        "user_id=42",
    ] {
        let r = s.get(&format!("{audit}?{bad}"), Some(&key)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    assert_eq!(s.get(&audit, None).await.code(), "missing_token");
    let (_, _, other_key) = s.owner_with_app().await;
    assert_eq!(
        s.get(&audit, Some(&other_key)).await.status,
        401,
        "another app's key"
    );
    let user_token = s.login(&app, "bob@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.get(&audit, Some(&user_token)).await.status,
        401,
        "a user's token"
    );

    // Retention: rows older than the application's setting go at the next sweep.
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({"audit_retention_days": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({"audit_retention_days": 0})),
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    s.sql("UPDATE audit_events SET created_at = now() - interval '2 days' WHERE event = 'user.created'")
        .await;
    let pool = portcullis_control_plane::infra::store::pool(&s.db_url, 1).unwrap();
    let client = pool.get().await.unwrap();
    let pruned = portcullis_control_plane::domain::audit::prune(&client)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    let left = s
        .sql_value("SELECT count(*) FROM audit_events WHERE event = 'user.created'")
        .await;
    assert_eq!(left, json!(0));
}
