//! The Redis source against a real redis-server: snapshot load, events, a lost event
//! healed by resync, a Redis restart, malformed snapshots ignored.

use std::time::Duration;

use portcullis_common::redis_layout::{self as layout, Event};
use portcullis_tests::RedisServer;
use redis::AsyncCommands;

use crate::server::*;
use crate::support::*;

const SECOND: Duration = Duration::from_secs(1);

async fn redis_verifier(redis: &RedisServer, extra: &[(&str, String)]) -> Running {
    let mut vars = vec![("PORTCULLIS_REDIS_URL", redis.url())];
    vars.extend(extra.iter().cloned());
    start(&vars).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_keys_load_then_follows_events() {
    let redis = RedisServer::start().unwrap();
    let v = redis_verifier(&redis, &[]).await;
    let key = signing_key(11);
    let (sid, sub) = (new_id(), new_id());
    let token = live_token(&key, &sid, &sub);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(v.http, "/readyz", &[]).await.status,
        503,
        "no JWKS in Redis yet"
    );
    let r = verify(v.http, &token).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (503, Some("unavailable"))
    );

    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    eventually(5 * SECOND, || ready(v.http)).await;
    let ok = verify(v.http, &token).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["claims"]["sid"], sid.as_str());

    // A session revocation reaches the verifier through pub/sub.
    let until = wall_now() + 900;
    w.revoke_session(&sid, until, true).await;
    eventually(2 * SECOND, || async {
        verify(v.http, &token).await.json()["code"] == "token_revoked"
    })
    .await;

    // A user cutoff revokes that user's older tokens only.
    let (sid2, sub2) = (new_id(), new_id());
    let older = live_token(&key, &sid2, &sub2);
    assert_eq!(verify(v.http, &older).await.status, 200);
    w.revoke_user(&sub2, wall_now()).await;
    eventually(2 * SECOND, || async {
        verify(v.http, &older).await.json()["code"] == "token_revoked"
    })
    .await;
    let mut later = live_claims(&new_id(), &sub2);
    later["iat"] = serde_json::json!(wall_now() + 5);
    assert_eq!(
        verify(v.http, &mint(&key, &header(&key), &later))
            .await
            .status,
        200,
        "issued after the cutoff"
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_is_healed_by_the_next_gap_or_the_timer() {
    let redis = RedisServer::start().unwrap();
    let key = signing_key(12);
    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    let v = redis_verifier(
        &redis,
        &[
            ("PORTCULLIS_VERIFIER_RESYNC_SECS", "1".into()),
            ("PORTCULLIS_VERIFIER_MAX_STALENESS_SECS", "5".into()),
        ],
    )
    .await;
    eventually(5 * SECOND, || ready(v.http)).await;

    // Lost: written and counted, never published. The next event's version shows a gap.
    let (lost_sid, other_sid) = (new_id(), new_id());
    let lost = live_token(&key, &lost_sid, &new_id());
    let other = live_token(&key, &other_sid, &new_id());
    assert_eq!(verify(v.http, &lost).await.status, 200);
    let until = wall_now() + 900;
    w.revoke_session(&lost_sid, until, false).await;
    w.revoke_session(&other_sid, until, true).await;
    eventually(2 * SECOND, || async {
        verify(v.http, &other).await.status == 401
    })
    .await;
    eventually(2 * SECOND, || async {
        verify(v.http, &lost).await.json()["code"] == "token_revoked"
    })
    .await;

    // Lost with nothing after it: the resync timer (1 s here) heals it.
    let quiet_sid = new_id();
    let quiet = live_token(&key, &quiet_sid, &new_id());
    assert_eq!(verify(v.http, &quiet).await.status, 200);
    w.revoke_session(&quiet_sid, until, false).await;
    let took = eventually(4 * SECOND, || async {
        verify(v.http, &quiet).await.status == 401
    })
    .await;
    assert!(took <= Duration::from_millis(2500), "healed after {took:?}");

    // An unparsable message triggers a resync too.
    let junk_sid = new_id();
    let junk = live_token(&key, &junk_sid, &new_id());
    let _: i64 = w
        .conn
        .zadd(layout::REVOKED_SESSIONS, &junk_sid, until)
        .await
        .unwrap();
    let _: i64 = w
        .conn
        .publish(layout::EVENTS_CHANNEL, "{not json")
        .await
        .unwrap();
    eventually(SECOND, || async {
        verify(v.http, &junk).await.status == 401
    })
    .await;
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_verifying_then_readiness_fails_and_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let key = signing_key(13);
    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    let revoked_sid = new_id();
    w.revoke_session(&revoked_sid, wall_now() + 900, true).await;
    let v = redis_verifier(
        &redis,
        &[
            ("PORTCULLIS_VERIFIER_RESYNC_SECS", "1".into()),
            ("PORTCULLIS_VERIFIER_MAX_STALENESS_SECS", "3".into()),
        ],
    )
    .await;
    eventually(5 * SECOND, || ready(v.http)).await;
    let token = live_token(&key, &new_id(), &new_id());
    let revoked = live_token(&key, &revoked_sid, &new_id());
    assert_eq!(verify(v.http, &revoked).await.status, 401);

    redis.stop();
    // Verification goes on with the last good snapshot, revocations included.
    assert_eq!(verify(v.http, &token).await.status, 200);
    assert_eq!(verify(v.http, &revoked).await.status, 401);
    // Past the staleness bound the verifier reports not ready, but still answers.
    eventually(6 * SECOND, || async { !ready(v.http).await }).await;
    let readyz = get(v.http, "/readyz", &[]).await.json();
    assert_eq!(readyz["keys_loaded"], true);
    assert_eq!(verify(v.http, &token).await.status, 200);

    // Redis comes back empty (restarted without persistence); the writer reseeds it.
    redis.restart().unwrap();
    let mut w = Writer::connect(&redis.url()).await;
    let _: () = w.conn.set(layout::JWKS, jwks_of(&[&key])).await.unwrap();
    eventually(10 * SECOND, || ready(v.http)).await;
    let late_sid = new_id();
    let late = live_token(&key, &late_sid, &new_id());
    w.revoke_session(&late_sid, wall_now() + 900, true).await;
    eventually(3 * SECOND, || async {
        verify(v.http, &late).await.status == 401
    })
    .await;
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwks_never_replace_good_keys_and_rotation_works() {
    let redis = RedisServer::start().unwrap();
    let key = signing_key(14);
    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    let v = redis_verifier(&redis, &[]).await;
    eventually(5 * SECOND, || ready(v.http)).await;
    let token = live_token(&key, &new_id(), &new_id());

    let mut private = serde_json::to_value(portcullis_common::jwk::Jwk::ed25519(
        key.verifying_key().as_bytes(),
    ))
    .unwrap();
    private["d"] = serde_json::json!(b64(&[1u8; 32]));
    for bad in [
        "not json".to_owned(),
        r#"{"keys":[]}"#.to_owned(),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.to_owned(),
        serde_json::json!({ "keys": [private] }).to_string(),
    ] {
        w.set_jwks(&bad).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            verify(v.http, &token).await.status,
            200,
            "after bad JWKS {bad}"
        );
        assert!(ready(v.http).await);
    }
    // Missing altogether (a flushed Redis) keeps the keys too.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut w.conn)
        .await
        .unwrap();
    w.publish(&Event::Jwks { version: 1 }).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(verify(v.http, &token).await.status, 200);

    // Rotation: a new key published next to the old one; both verify.
    let next = signing_key(15);
    w.set_jwks(&jwks_of(&[&key, &next])).await;
    let new_token = live_token(&next, &new_id(), &new_id());
    eventually(2 * SECOND, || async {
        verify(v.http, &new_token).await.status == 200
    })
    .await;
    assert_eq!(verify(v.http, &token).await.status, 200);
    // The old key retired: its tokens now name an unknown key.
    w.set_jwks(&jwks_of(&[&next])).await;
    eventually(2 * SECOND, || async {
        verify(v.http, &token).await.json()["code"] == "unknown_key"
    })
    .await;
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_never_un_revokes_a_session_before_its_time() {
    let redis = RedisServer::start().unwrap();
    let key = signing_key(16);
    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    let v = redis_verifier(&redis, &[("PORTCULLIS_VERIFIER_RESYNC_SECS", "1".into())]).await;
    eventually(5 * SECOND, || ready(v.http)).await;
    let (sid, sub) = (new_id(), new_id());
    let token = live_token(&key, &sid, &sub);
    let (sid2, sub2) = (new_id(), new_id());
    let other = live_token(&key, &sid2, &sub2);
    w.revoke_session(&sid, wall_now() + 900, true).await;
    w.revoke_user(&sub2, wall_now()).await;
    eventually(2 * SECOND, || async {
        verify(v.http, &token).await.status == 401 && verify(v.http, &other).await.status == 401
    })
    .await;

    // Whoever can write to Redis deletes the revocations; resyncs follow (timer, version).
    let _: () = redis::cmd("DEL")
        .arg(layout::REVOKED_SESSIONS)
        .arg(layout::REVOKED_USERS)
        .query_async(&mut w.conn)
        .await
        .unwrap();
    let _: i64 = w.conn.incr(layout::VERSION, 10).await.unwrap();
    w.publish(&Event::Jwks { version: 99 }).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(verify(v.http, &token).await.json()["code"], "token_revoked");
    assert_eq!(verify(v.http, &other).await.json()["code"], "token_revoked");
    let metrics = get(v.http, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("portcullis_verifier_revocations_kept_total"),
        "counted"
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trust_keys_only_a_signed_newer_key_set_counts() {
    use portcullis_common::signed_jwks::{public_jwk, seal};
    let redis = RedisServer::start().unwrap();
    let (publisher, next_publisher, stranger) = (signing_key(21), signing_key(22), signing_key(23));
    let trust =
        serde_json::json!({ "keys": [public_jwk(&publisher), public_jwk(&next_publisher)] })
            .to_string();
    let (key, planted, added) = (signing_key(17), signing_key(18), signing_key(19));
    let now = wall_now();
    let mut w = Writer::connect(&redis.url()).await;
    // Whoever can write to Redis plants a key in the plain JWKS: it is not read at all.
    w.set_jwks(&jwks_of(&[&planted])).await;
    let trusted = [("PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS", trust.clone())];
    let v = redis_verifier(&redis, &trusted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ready(v.http).await, "no signed key set yet");

    w.set_signed_jwks(&seal(&publisher, &jwks_of(&[&key]), 5, now).unwrap())
        .await;
    eventually(5 * SECOND, || ready(v.http)).await;
    let good = live_token(&key, &new_id(), &new_id());
    let forged = live_token(&planted, &new_id(), &new_id());
    assert_eq!(verify(v.http, &good).await.status, 200);
    assert_eq!(verify(v.http, &forged).await.json()["code"], "unknown_key");

    // Signed by a key not trusted, replayed (an older seq), stale: all ignored.
    let pause = Duration::from_millis(300);
    for refused in [
        seal(&stranger, &jwks_of(&[&planted]), 6, now).unwrap(),
        seal(&publisher, &jwks_of(&[&planted]), 4, now).unwrap(),
        seal(&publisher, &jwks_of(&[&planted]), 7, now - 2 * 86_400).unwrap(),
        jwks_of(&[&planted]),
    ] {
        w.set_signed_jwks(&refused).await;
        tokio::time::sleep(pause).await;
        assert_eq!(verify(v.http, &forged).await.json()["code"], "unknown_key");
        assert_eq!(verify(v.http, &good).await.status, 200);
        assert!(ready(v.http).await, "the last good keys keep serving");
    }
    // (The metrics are the test process's, shared by every verifier in it: at least 4.)
    let metrics = get(v.http, "/metrics", &[]).await.body;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_verifier_jwks_refused_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 4, "{metrics}");

    // A verifier that starts while Redis holds no good signed set is not ready; once the
    // publisher writes one, it is.
    let second = redis_verifier(&redis, &trusted).await;
    tokio::time::sleep(pause).await;
    assert!(!ready(second.http).await);
    w.set_signed_jwks(&seal(&publisher, &jwks_of(&[&key]), 9, now).unwrap())
        .await;
    eventually(5 * SECOND, || ready(second.http)).await;

    // The publisher key rotated (both trusted meanwhile): both take the set it signs.
    w.set_signed_jwks(&seal(&next_publisher, &jwks_of(&[&key, &added]), 10, now).unwrap())
        .await;
    let newer = live_token(&added, &new_id(), &new_id());
    for running in [&v, &second] {
        eventually(3 * SECOND, || async {
            verify(running.http, &newer).await.status == 200
        })
        .await;
    }
    v.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_keys_must_be_public_ed25519_keys_for_redis() {
    let redis = RedisServer::start().unwrap();
    let mut private =
        serde_json::to_value(portcullis_common::signed_jwks::public_jwk(&signing_key(24))).unwrap();
    private["d"] = serde_json::json!(b64(&[1u8; 32]));
    let refused = serde_json::json!({ "keys": [private] }).to_string();
    let url = redis.url();
    let env: std::collections::HashMap<&str, &str> = [
        ("PORTCULLIS_REDIS_URL", url.as_str()),
        ("PORTCULLIS_VERIFIER_ISSUER", "https://issuer.test"),
        ("PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS", refused.as_str()),
    ]
    .into();
    let config = portcullis_verifier::config::Config::from_env(&env);
    assert!(config.unwrap_err().to_string().contains("private"));
}
