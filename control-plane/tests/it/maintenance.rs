//! The background schedule, driven directly through the library: key rotation when due,
//! retired keys removed once their tokens have expired, expired revocations pruned from
//! PostgreSQL and Redis, ended sessions deleted.

use std::time::Duration;

use portcullis_control_plane::domain::keys::KeyRing;
use portcullis_control_plane::domain::sessions;
use portcullis_control_plane::infra::crypto::Secrets;
use portcullis_control_plane::infra::publish::Publisher;
use portcullis_control_plane::infra::{clock, store};
use portcullis_tests::{PostgresServer, RedisServer};

async fn database() -> (PostgresServer, deadpool_postgres::Pool) {
    let pg = tokio::task::spawn_blocking(|| PostgresServer::start().unwrap())
        .await
        .unwrap();
    let url = pg.create_database("maintenance").unwrap();
    let pool = store::pool(&url, 4).unwrap();
    store::migrate(&pool).await.unwrap();
    (pg, pool)
}

fn states(keys: &[portcullis_control_plane::domain::keys::KeyInfo]) -> Vec<String> {
    let mut s: Vec<String> = keys.iter().map(|k| k.state.clone()).collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_when_due_and_retired_keys_leave_the_jwks() {
    let (_pg, pool) = database().await;
    let ring = KeyRing::new(pool.clone(), Secrets::new(&[1; 32]), Duration::ZERO);
    let first = ring.refresh().await.unwrap();

    // Not due: a fresh key stays active.
    assert!(!ring.maintain(Duration::from_secs(86_400)).await.unwrap());
    assert_eq!(ring.refresh().await.unwrap().kid, first.kid);

    // Due: next becomes active, the old one retires but stays published.
    assert!(ring.maintain(Duration::ZERO).await.unwrap());
    let second = ring.refresh().await.unwrap();
    assert_ne!(second.kid, first.kid);
    assert_eq!(
        states(&ring.list().await.unwrap()),
        ["active", "next", "retired"]
    );
    assert!(second.jwks_json.contains(&first.kid));

    // Once every token it signed has expired, the retired key is removed from the JWKS.
    let client = pool.get().await.unwrap();
    client
        .execute(
            "UPDATE signing_keys SET remove_after = now() - interval '1 second' WHERE state = 'retired'",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    ring.maintain(Duration::from_secs(86_400)).await.unwrap();
    let third = ring.refresh().await.unwrap();
    assert_eq!(third.kid, second.kid);
    assert!(!third.jwks_json.contains(&first.kid));
    assert_eq!(
        states(&ring.list().await.unwrap()),
        ["active", "next", "removed"]
    );

    // A key ring with another encryption key cannot open the active key.
    let other = KeyRing::new(pool.clone(), Secrets::new(&[2; 32]), Duration::ZERO);
    assert!(other.refresh().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_prunes_what_has_expired_and_restores_what_is_missing() {
    let (_pg, pool) = database().await;
    let redis_server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let publisher = Publisher::new(
        &portcullis_common::redis_conn::RedisConfig::from_url(&redis_server.url()).unwrap(),
        None,
    )
    .unwrap();
    let keys = KeyRing::new(pool.clone(), Secrets::new(&[1; 32]), Duration::ZERO);
    let mut redis = redis_server.connection().await.unwrap();
    let now = clock::unix_now();
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO revocations (kind, subject, before, until) VALUES
                 ('session', 'live-session', 0, {live}),
                 ('session', 'old-session', 0, {old}),
                 ('user', 'live-user', {now}, {live}),
                 ('user', 'old-user', {now}, {old})",
            live = now + 3600,
            old = now - 10,
        ))
        .await
        .unwrap();
    // Redis holds an expired session and a user PostgreSQL no longer has.
    let () = redis::cmd("ZADD")
        .arg("portcullis:revoked:sessions")
        .arg(now - 10)
        .arg("old-session")
        .query_async(&mut redis)
        .await
        .unwrap();
    let () = redis::cmd("HSET")
        .arg("portcullis:revoked:users")
        .arg("gone-user")
        .arg(now - 100)
        .query_async(&mut redis)
        .await
        .unwrap();

    let repaired =
        portcullis_control_plane::flows::maintenance::reconcile(&publisher, &pool, &keys, now)
            .await
            .unwrap();
    assert!(repaired.any() && repaired.jwks);
    let published: String = redis::cmd("GET")
        .arg("portcullis:jwks")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(published, keys.refresh().await.unwrap().jwks_json);
    let unpublished: i64 = client
        .query_one(
            "SELECT count(*) FROM signing_keys WHERE published_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unpublished, 0,
        "keys are marked published once Redis has them"
    );
    let sessions_in_redis: Vec<String> = redis::cmd("ZRANGE")
        .arg("portcullis:revoked:sessions")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(sessions_in_redis, ["live-session"]);
    let users_in_redis: Vec<String> = redis::cmd("HKEYS")
        .arg("portcullis:revoked:users")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(users_in_redis, ["live-user"]);
    let left: i64 = client
        .query_one("SELECT count(*) FROM revocations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "expired rows pruned from PostgreSQL");
    let version: u64 = redis::cmd("GET")
        .arg("portcullis:version")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        version, 2,
        "a repair bumps the version by two, forcing verifier resyncs"
    );

    // Nothing to repair: nothing published.
    let again =
        portcullis_control_plane::flows::maintenance::reconcile(&publisher, &pool, &keys, now)
            .await
            .unwrap();
    assert!(!again.any(), "{again:?}");

    // Ended sessions older than a day are deleted, with their refresh tokens.
    client
        .batch_execute(
            "INSERT INTO owners (id, email, email_canonical, password_hash)
                 VALUES ('00000000-0000-7000-8000-000000000001', 'o@x.test', 'o@x.test', '!');
             INSERT INTO apps (id, owner_id, name, api_key_hash)
                 VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'a', '\\x01');
             INSERT INTO users (id, app_id, password_hash)
                 VALUES ('00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000002', '!');
             INSERT INTO sessions (id, user_id, app_id, amr, expires_at, revoked_at) VALUES
                 (gen_random_uuid(), '00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000002', '{pwd}', now() + interval '1 day', NULL),
                 (gen_random_uuid(), '00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000002', '{pwd}', now() - interval '2 days', NULL),
                 (gen_random_uuid(), '00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000002', '{pwd}', now() + interval '1 day', now() - interval '2 days');",
        )
        .await
        .unwrap();
    assert_eq!(sessions::prune(&client, now).await.unwrap(), 2);
}
