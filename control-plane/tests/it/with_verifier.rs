//! End to end with the real verifier on the same Redis: logout and reuse rejected within
//! milliseconds, key rotation, Redis flushed and healed, PostgreSQL restarted.

use std::time::Duration;

use serde_json::json;

use crate::support::{ADMIN_TOKEN, Stack, eventually, header_of, unix_now, uuid_like};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_refresh_reuse_reach_the_verifier() {
    let s = Stack::start().await;
    let v = s.verifier().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);
    let r = s
        .post(
            &format!("/v1/apps/{app}/logout"),
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let took = eventually(Duration::from_secs(2), || async {
        v.status(access).await == 401
    })
    .await;
    eprintln!("logout -> verifier 401 after {took:?}");

    let tokens = s.login(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);
    let refresh = format!("/v1/apps/{app}/token/refresh");
    let next = s
        .post(
            &refresh,
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await
        .json();
    let reuse = s
        .post(
            &refresh,
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(reuse.code(), "refresh_token_reused");
    let next_access = next["access_token"].as_str().unwrap();
    eventually(Duration::from_secs(2), || async {
        v.status(next_access).await == 401
    })
    .await;
    assert_eq!(v.status(access).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_end_to_end() {
    let s = Stack::start().await;
    let v = s.verifier().await;
    let (_, app, _) = s.owner_with_app().await;
    let before = s.register(&app, "ann@example.com").await;
    let old_token = before["access_token"].as_str().unwrap().to_owned();
    let old_kid = header_of(&old_token)["kid"].as_str().unwrap().to_owned();

    let keys = s.get("/v1/admin/keys", Some(ADMIN_TOKEN)).await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    let states: Vec<String> = keys.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        states.contains(&"active".into()) && states.contains(&"next".into()),
        "{states:?}"
    );
    let jwks = s.get("/.well-known/jwks.json", None).await.json();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "active and next are published"
    );
    let next_kid = keys.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "next")
        .unwrap()["kid"]
        .clone();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == next_kid),
        "next key published before it signs"
    );
    for k in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            (
                k["kty"].as_str(),
                k["crv"].as_str(),
                k["alg"].as_str(),
                k["use"].as_str()
            ),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
        );
        assert!(k.get("d").is_none());
    }

    assert_eq!(
        s.post("/v1/admin/keys/rotate", None, json!({}))
            .await
            .code(),
        "missing_token"
    );
    assert_eq!(
        s.post(
            "/v1/admin/keys/rotate",
            Some("wrong-operator-token"),
            json!({})
        )
        .await
        .code(),
        "invalid_credentials"
    );
    let r = s
        .post("/v1/admin/keys/rotate", Some(ADMIN_TOKEN), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["kid"], next_kid);

    let after = s.login(&app, "ann@example.com").await;
    let new_token = after["access_token"].as_str().unwrap();
    assert_eq!(
        header_of(new_token)["kid"],
        next_kid,
        "the new key signs after rotation"
    );
    assert_ne!(old_kid, next_kid.as_str().unwrap());
    assert_eq!(v.status(new_token).await, 200);
    assert_eq!(
        v.status(&old_token).await,
        200,
        "tokens of the retired key still verify"
    );
    let jwks = s.get("/.well-known/jwks.json", None).await.json();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        3,
        "retired + active + new next"
    );
    let discovery = s
        .get("/.well-known/openid-configuration", None)
        .await
        .json();
    assert_eq!(discovery["issuer"], s.issuer.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/.well-known/jwks.json", s.issuer)
    );
}

/// A leaked key: withdrawn at once, everything it signed refused at the verifier (and at
/// the control plane), the next key signing immediately, the event audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_rotation_withdraws_the_key_and_refuses_its_tokens() {
    // A long publish lead: a planned rotation would be refused; an emergency is not.
    let s = Stack::start_with(&[("PORTCULLIS_KEY_PUBLISH_LEAD_SECS", "3600")]).await;
    let v = s.verifier().await;
    let (_, app, _) = s.owner_with_app().await;
    let ann = s.register(&app, "ann@example.com").await;
    let leaked = ann["access_token"].as_str().unwrap().to_owned();
    let leaked_kid = header_of(&leaked)["kid"].as_str().unwrap().to_owned();
    assert_eq!(v.status(&leaked).await, 200);

    let rotate = "/v1/admin/keys/rotate";
    let planned = s.post(rotate, Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(planned.code(), "rate_limited", "{}", planned.body);
    for bad in [
        json!({"emergency": true}),
        json!({"emergency": true, "reason": " "}),
    ] {
        let r = s.post(rotate, Some(ADMIN_TOKEN), bad.clone()).await;
        assert_eq!(r.code(), "invalid_request", "{bad}");
    }
    let reason = "the signing host was compromised";
    let r = s
        .post(
            rotate,
            Some(ADMIN_TOKEN),
            json!({"emergency": true, "reason": reason}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new_kid = r.json()["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, leaked_kid);

    // Gone from the published set, and refused everywhere within the sync latency.
    let jwks = s.get("/.well-known/jwks.json", None).await.json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(!kids.contains(&leaked_kid.as_str()), "{kids:?}");
    assert!(kids.contains(&new_kid.as_str()), "{kids:?}");
    eventually(Duration::from_secs(10), || async {
        v.status(&leaked).await == 401
    })
    .await;
    assert_eq!(
        s.get(&format!("/v1/apps/{app}/me"), Some(&leaked))
            .await
            .status,
        401
    );
    // The new key signs at once, and its tokens verify.
    let fresh = s.login(&app, "ann@example.com").await;
    let token = fresh["access_token"].as_str().unwrap();
    assert_eq!(header_of(token)["kid"], new_kid.as_str());
    assert_eq!(v.status(token).await, 200);

    let keys = s.get("/v1/admin/keys", Some(ADMIN_TOKEN)).await.json();
    let state_of = |kid: &str| {
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of(&leaked_kid).as_deref(), Some("withdrawn"));
    assert_eq!(state_of(&new_kid).as_deref(), Some("active"));
    let audited = s
        .sql_value(
            "SELECT details::text FROM audit_events WHERE event = 'keys.rotated' \
             ORDER BY id DESC LIMIT 1",
        )
        .await;
    let details: serde_json::Value = serde_json::from_str(audited.as_str().unwrap()).unwrap();
    assert_eq!(details["emergency"], true);
    assert_eq!(details["withdrawn"], leaked_kid.as_str());
    assert_eq!(details["reason"], reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_redis_is_healed_by_the_reconciler() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let r = s
        .post(
            &format!("/v1/apps/{app}/logout"),
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut redis = s.redis().await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    // A verifier started on the empty Redis becomes ready once the reconciler rewrote it,
    // and then refuses the logged-out session's token.
    let v = s.verifier().await;
    assert_eq!(
        v.status(tokens["access_token"].as_str().unwrap()).await,
        401
    );
    let sid = tokens["session_id"].as_str().unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("portcullis:revoked:sessions")
        .arg(sid)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(score.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_gives_503_then_recovers() {
    let mut s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    tokio::task::block_in_place(|| s.pg.stop());
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "ann@example.com", "password": crate::support::PASSWORD}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "unavailable"),
        "{}",
        r.body
    );
    assert!(r.header("retry-after").is_some());
    let ready = s.get("/readyz", None).await;
    assert_eq!(
        (ready.status, ready.json()["postgres"].as_bool()),
        (503, Some(false))
    );
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "bob@example.com", "password": crate::support::PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 503);
    tokio::task::block_in_place(|| s.pg.restart()).unwrap();
    eventually(Duration::from_secs(20), || async {
        s.get("/readyz", None).await.status == 200
    })
    .await;
    s.login(&app, "ann@example.com").await;
    // Nothing half-written: the registration refused during the outage left no user.
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "bob@example.com", "password": crate::support::PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_signs_only_after_its_publish_lead() {
    let s = Stack::start_with(&[("PORTCULLIS_KEY_PUBLISH_LEAD_SECS", "3600")]).await;
    let r = s
        .post("/v1/admin/keys/rotate", Some(ADMIN_TOKEN), json!({}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "{}",
        r.body
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 3000, "{wait}");
    let keys = s.get("/v1/admin/keys", Some(ADMIN_TOKEN)).await.json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "nothing rotated");
}

#[tokio::test]
async fn verifiers_that_trust_only_the_publisher_key_refuse_a_planted_key() {
    use base64::Engine as _;
    use portcullis_common::signed_jwks::public_jwk;
    let seed = [7u8; 32];
    let encoded = base64::engine::general_purpose::STANDARD.encode(seed);
    let s = Stack::start_with(&[
        ("PORTCULLIS_JWKS_PUBLISHER_KEY", encoded.as_str()),
        ("PORTCULLIS_KEY_PUBLISH_LEAD_SECS", "3600"),
    ])
    .await;
    let public = public_jwk(&ed25519_dalek::SigningKey::from_bytes(&seed));
    let trust = json!({ "keys": [public] }).to_string();
    let v = s
        .verifier_with(&[("PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS", trust.as_str())])
        .await;
    let (_, app, _) = s.owner_with_app().await;
    let ann = s.register(&app, "ann@example.com").await;
    let token = ann["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        v.status(&token).await,
        200,
        "the signed set reached the verifier"
    );

    // Whoever can write to Redis plants a key in the plain JWKS and announces it.
    let planted = portcullis_tests::tokens::Minter::new(
        portcullis_tests::tokens::signing_key(99),
        &s.issuer,
        &app,
    );
    let forged = planted.sign(&planted.claims(unix_now(), 600, &uuid_like(), &uuid_like()));
    let mut redis = s.redis().await;
    let planted_jwks = portcullis_tests::tokens::jwks_json(&[planted.verifying_key()]);
    let _: () = redis::AsyncCommands::set(&mut redis, "portcullis:jwks", planted_jwks)
        .await
        .unwrap();
    let version: u64 = redis::AsyncCommands::incr(&mut redis, "portcullis:version", 1)
        .await
        .unwrap();
    let event = format!(r#"{{"kind":"jwks","version":{version}}}"#);
    let _: i64 = redis::AsyncCommands::publish(&mut redis, "portcullis:events", event)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(v.check("GET", "/", &forged).await, 401);
    assert_eq!(v.status(&token).await, 200);

    // An emergency rotation reaches it signed: the new key's tokens pass, the old fail.
    let r = s
        .post(
            "/v1/admin/keys/rotate",
            Some(ADMIN_TOKEN),
            json!({"emergency": true, "reason": "drill"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(Duration::from_secs(10), || async {
        v.status(&token).await == 401
    })
    .await;
    let fresh = s.login(&app, "ann@example.com").await;
    assert_eq!(v.status(fresh["access_token"].as_str().unwrap()).await, 200);
}
