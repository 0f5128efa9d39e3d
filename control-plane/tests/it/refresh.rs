//! Refresh-token rotation (API.md §2): single use, reuse revokes the session, the grace
//! window, one winner under concurrency, the absolute lifetime, logout.

use serde_json::{Value, json};

use crate::support::{Stack, request};

async fn refresh(s: &Stack, app: &str, token: &Value) -> crate::support::Reply {
    s.post(
        &format!("/v1/apps/{app}/token/refresh"),
        None,
        json!({"refresh_token": token}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_reuse_detection() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let first = s.register(&app, "ann@example.com").await;

    let r = refresh(&s, &app, &first["refresh_token"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.json();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["session_id"], first["session_id"]);
    assert_ne!(second["access_token"], first["access_token"]);

    // The bearer form works too.
    let bearer = format!("Bearer {}", second["refresh_token"].as_str().unwrap());
    let r = request(
        s.addr,
        "POST",
        &format!("/v1/apps/{app}/token/refresh"),
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let third = r.json();

    // Presenting a used token again: the whole session is revoked.
    let r = refresh(&s, &app, &first["refresh_token"]).await;
    assert_eq!((r.status, r.code().as_str()), (401, "refresh_token_reused"));
    let r = refresh(&s, &app, &third["refresh_token"]).await;
    assert_eq!(
        r.code(),
        "invalid_refresh_token",
        "the live token died with the session"
    );
    let me = s
        .get(
            &format!("/v1/apps/{app}/me"),
            third["access_token"].as_str(),
        )
        .await;
    assert_eq!(me.code(), "token_revoked");

    for bad in [json!("made-up"), json!(""), json!("x".repeat(10_000))] {
        let r = refresh(&s, &app, &bad).await;
        assert_eq!(r.code(), "invalid_refresh_token");
    }
    // A token of one application is unknown to another, and that attempt spends nothing.
    let live = s.login(&app, "ann@example.com").await;
    let (_, other_app, _) = s.owner_with_app().await;
    assert_eq!(
        refresh(&s, &other_app, &live["refresh_token"]).await.code(),
        "invalid_refresh_token"
    );
    assert_eq!(refresh(&s, &app, &live["refresh_token"]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_refresh_has_one_winner_without_grace() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let replies =
        futures_util::future::join_all((0..8).map(|_| refresh(&s, &app, &tokens["refresh_token"])))
            .await;
    let winners = replies.iter().filter(|r| r.status == 200).count();
    let reused = replies
        .iter()
        .filter(|r| r.code() == "refresh_token_reused")
        .count();
    // The first loser revokes the session; later ones then find no live session at all.
    let refused = replies
        .iter()
        .filter(|r| {
            matches!(
                r.code().as_str(),
                "refresh_token_reused" | "invalid_refresh_token"
            )
        })
        .count();
    assert_eq!((winners, refused), (1, 7), "{replies:?}");
    assert!(reused >= 1, "{replies:?}");
    // Reuse revoked the session, the winner's new token included.
    let winner = replies.iter().find(|r| r.status == 200).unwrap().json();
    assert_eq!(
        refresh(&s, &app, &winner["refresh_token"]).await.code(),
        "invalid_refresh_token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_window_returns_the_same_successor() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&key),
            Some(json!({"refresh_token_reuse_grace_secs": 30})),
        )
        .await;
    assert_eq!(r.status, 200);
    let tokens = s.register(&app, "ann@example.com").await;
    let replies =
        futures_util::future::join_all((0..6).map(|_| refresh(&s, &app, &tokens["refresh_token"])))
            .await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let successor = replies[0].json()["refresh_token"].clone();
    assert!(
        replies
            .iter()
            .all(|r| r.json()["refresh_token"] == successor),
        "one successor for all"
    );

    // Once the successor is used, the original is plain reuse again.
    let next = refresh(&s, &app, &successor).await;
    assert_eq!(next.status, 200);
    let r = refresh(&s, &app, &tokens["refresh_token"]).await;
    assert_eq!(r.code(), "refresh_token_reused");

    // Outside the window, reuse revokes (the window is moved back in the database).
    let tokens = s.login(&app, "ann@example.com").await;
    assert_eq!(
        refresh(&s, &app, &tokens["refresh_token"]).await.status,
        200
    );
    s.sql("UPDATE refresh_tokens SET used_at = used_at - interval '31 seconds' WHERE used_at IS NOT NULL").await;
    assert_eq!(
        refresh(&s, &app, &tokens["refresh_token"]).await.code(),
        "refresh_token_reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_lifetime_and_logout() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    // Rotation does not extend the session's absolute lifetime: move it into the past.
    s.sql("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .await;
    assert_eq!(
        refresh(&s, &app, &tokens["refresh_token"]).await.code(),
        "invalid_refresh_token"
    );

    let tokens = s.login(&app, "ann@example.com").await;
    let logout = format!("/v1/apps/{app}/logout");
    let r = s
        .post(
            &logout,
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"logged_out": true, "session_id": tokens["session_id"]})
    );
    assert_eq!(
        refresh(&s, &app, &tokens["refresh_token"]).await.code(),
        "invalid_refresh_token"
    );
    let r = s
        .post(
            &logout,
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.code(), "invalid_refresh_token");

    // By access token.
    let tokens = s.login(&app, "ann@example.com").await;
    let r = s
        .post(&logout, tokens["access_token"].as_str(), json!({}))
        .await;
    assert_eq!(r.json()["session_id"], tokens["session_id"]);
    let verify = s
        .post(
            &format!("/v1/apps/{app}/verify"),
            tokens["access_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(
        (verify.status, verify.code().as_str()),
        (401, "token_revoked")
    );
    assert_eq!(
        s.post(&logout, None, json!({})).await.code(),
        "missing_token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_user_cannot_refresh_and_keeps_the_token() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    // Expiry passing on its own (no administrator action, so no revocation).
    s.sql("UPDATE users SET expires_at = now() - interval '1 second'")
        .await;
    let r = refresh(&s, &app, &tokens["refresh_token"]).await;
    assert_eq!((r.status, r.code().as_str()), (403, "user_disabled"));
    s.sql("UPDATE users SET expires_at = NULL").await;
    // The refused attempt did not spend the token.
    assert_eq!(
        refresh(&s, &app, &tokens["refresh_token"]).await.status,
        200
    );
}
