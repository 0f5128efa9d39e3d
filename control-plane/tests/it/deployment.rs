//! Past one machine: two control-plane replicas with two verifiers, Redis as a Cluster and
//! behind Sentinels (with a failover), TLS to PostgreSQL and Redis and on the listener, and
//! the maintenance pass single-flight across replicas.

use std::time::Duration;

use portcullis_control_plane::MAINTENANCE_LOCK;
use portcullis_control_plane::infra::store;
use portcullis_tests::tls::TestCa;
use portcullis_tests::{PostgresServer, RedisCluster, RedisSentinelGroup, RedisServer, Secured};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Stack, Topology, Verifier, eventually, header_of};

async fn logout(at: std::net::SocketAddr, app: &str, tokens: &Value) {
    let r = crate::support::call_at(
        at,
        "POST",
        &format!("/v1/apps/{app}/logout"),
        None,
        Some(json!({"refresh_token": tokens["refresh_token"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn refused_by_all(verifiers: &[&Verifier], token: &str) {
    for v in verifiers {
        eventually(Duration::from_secs(5), || async {
            v.status(token).await == 401
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_two_verifiers_agree_on_logouts_and_keys() {
    let s = Stack::start().await;
    let b = s.replica().await;
    let (v1, v2) = (s.verifier().await, s.verifier().await);
    let (owner, app, _) = s.owner_with_app().await;
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({"rate_limits": {"per_account_failures_per_hour": 6}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Signed in on replica A, signed out on replica B: both verifiers refuse the token.
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        (v1.status(access).await, v2.status(access).await),
        (200, 200)
    );
    logout(b.addr, &app, &tokens).await;
    refused_by_all(&[&v1, &v2], access).await;

    // A key rotated on A signs on B (within B's 2-second key cache).
    let rotated = s
        .post("/v1/admin/keys/rotate", Some(ADMIN_TOKEN), json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_kid = rotated.json()["kid"].clone();
    let login = json!({"email": "ann@example.com", "password": crate::support::PASSWORD});
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let on_b = loop {
        let r = b
            .post(&format!("/v1/apps/{app}/login"), None, login.clone())
            .await
            .json();
        if header_of(r["access_token"].as_str().unwrap())["kid"] == new_kid {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never signed with the new key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let access = on_b["access_token"].as_str().unwrap();
    assert_eq!(
        (v1.status(access).await, v2.status(access).await),
        (200, 200)
    );

    // And the other way round: signed in on B, out on A.
    logout(s.addr, &app, &on_b).await;
    refused_by_all(&[&v1, &v2], access).await;

    // A rate limit counts across replicas (shared through Redis): wrong passwords spread
    // over both replicas reach the per-account limit together.
    let wrong = json!({"email": "ann@example.com", "password": "not the password at all"});
    let mut limited = None;
    for i in 0..12 {
        let at = if i % 2 == 0 { s.addr } else { b.addr };
        let r = crate::support::call_at(
            at,
            "POST",
            &format!("/v1/apps/{app}/login"),
            None,
            Some(wrong.clone()),
        )
        .await;
        if r.status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // 6 allowed (3 on each replica), the 7th refused.
    assert_eq!(limited, Some(6), "the limit is shared by both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_pass_runs_on_one_replica_at_a_time() {
    let s = Stack::start().await;
    let pool = store::pool(&s.db_url, 4).unwrap();
    let first = store::try_singleton(&pool, MAINTENANCE_LOCK - 1)
        .await
        .unwrap();
    assert!(first.is_some());
    let second = store::try_singleton(&pool, MAINTENANCE_LOCK - 1)
        .await
        .unwrap();
    assert!(second.is_none(), "a second holder while the first lives");
    drop(first);
    // The lock ends with the holder's connection (closed, not returned to the pool).
    eventually(Duration::from_secs(5), || async {
        store::try_singleton(&pool, MAINTENANCE_LOCK - 1)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    // The replica's own pass takes the real lock too: while a holder keeps it, the
    // reconciler skips, so a flushed Redis stays empty until the holder lets go.
    // (The replica's own pass may hold it at this moment: wait for a gap.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let held = loop {
        if let Some(h) = store::try_singleton(&pool, MAINTENANCE_LOCK).await.unwrap() {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut redis = s.redis().await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jwks: Option<String> = redis::cmd("GET")
        .arg("portcullis:jwks")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        jwks.is_none(),
        "reconciled while another session held the lock"
    );
    drop(held);
    eventually(Duration::from_secs(10), || async {
        let jwks: Option<String> = redis::cmd("GET")
            .arg("portcullis:jwks")
            .query_async(&mut redis.clone())
            .await
            .unwrap();
        jwks.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_carries_keys_revocations_and_limits() {
    let (pg, cluster) = tokio::task::spawn_blocking(|| {
        (
            PostgresServer::start().unwrap(),
            RedisCluster::start(3).unwrap(),
        )
    })
    .await
    .unwrap();
    let s = Stack::start_on(pg, Topology::Cluster(cluster), "", &[]).await;
    let v = s.verifier().await;
    let (_, app, _) = s.owner_with_app().await;
    let tokens = s.register(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);
    logout(s.addr, &app, &tokens).await;
    refused_by_all(&[&v], access).await;
    // A user-wide revocation (the HASH, on another slot than the ZSET) too.
    let tokens = s.login(&app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(v.status(access).await, 200);
    // Deleting the account revokes every token of the user (a cutoff in the HASH).
    let r = s
        .call("DELETE", &format!("/v1/apps/{app}/me"), Some(access), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    refused_by_all(&[&v], access).await;
}

/// Sentinels and nodes behind passwords and TLS (the production shape), a failover
/// mid-test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_by_both_binaries() {
    let ca = TestCa::new().unwrap();
    let (node_pw, sentinel_pw) = ("node pass \"quoted\"", "sentinel-pass");
    let (pg, group) = tokio::task::block_in_place(|| {
        let secured = Secured {
            password: Some(node_pw),
            sentinel_password: Some(sentinel_pw),
            tls: Some(&ca),
        };
        (
            PostgresServer::start().unwrap(),
            RedisSentinelGroup::start_secured(secured).unwrap(),
        )
    });
    let topology = Topology::Sentinel(group, Some(node_pw.into()), Some(sentinel_pw.into()));
    let mut s = Stack::start_on(pg, topology, "", &[]).await;
    let v = s.verifier().await;
    let (_, app, _) = s.owner_with_app().await;
    let first = s.register(&app, "ann@example.com").await;
    let second = s.login(&app, "ann@example.com").await;
    let (a1, a2) = (
        first["access_token"].as_str().unwrap(),
        second["access_token"].as_str().unwrap(),
    );
    assert_eq!(v.status(a1).await, 200);
    logout(s.addr, &app, &first).await;
    refused_by_all(&[&v], a1).await;

    let Topology::Sentinel(group, ..) = &mut s.redis else {
        unreachable!()
    };
    let old = tokio::task::block_in_place(|| group.kill_master().unwrap());
    let new =
        tokio::task::block_in_place(|| group.wait_for_failover(Duration::from_secs(30))).unwrap();
    assert_ne!(old, new);
    // The control plane writes to the new master, the verifier follows it there.
    assert_eq!(v.status(a2).await, 200);
    eventually(Duration::from_secs(20), || async {
        s.get("/readyz", None).await.status == 200
    })
    .await;
    logout(s.addr, &app, &second).await;
    refused_by_all(&[&v], a2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_and_redis_and_on_the_listener() {
    let ca = TestCa::new().unwrap();
    let dir = std::env::temp_dir().join(format!("portcullis-cp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca
        .issue_server(&["localhost", "127.0.0.1"])
        .unwrap()
        .write(&dir, "listener")
        .unwrap();
    let ca_file = dir.join("ca.pem");
    ca.write_ca(&ca_file).unwrap();
    let (pg, redis) = tokio::task::block_in_place(|| {
        (
            PostgresServer::start_tls(&ca).unwrap(),
            RedisServer::start_tls(&ca).unwrap(),
        )
    });
    let pg_ca = pg.ca_file().display().to_string();
    let params = format!("sslmode=verify-full&sslrootcert={pg_ca}");
    let cert = cert.display().to_string();
    let key = key.display().to_string();
    let s = Stack::start_on(
        pg,
        Topology::Server(redis),
        &params,
        &[
            ("PORTCULLIS_TLS_CERT_FILE", &cert),
            ("PORTCULLIS_TLS_KEY_FILE", &key),
        ],
    )
    .await;
    let port = s.addr.port();
    let curl = |path: &str, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .expect("curl (apt-get install curl)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca_arg = ca_file.display().to_string();
    // Ready means PostgreSQL (verify-full) and Redis (rediss:// with the CA) both answer.
    eventually(Duration::from_secs(30), || async {
        tokio::task::block_in_place(|| curl("/readyz", &["--cacert", &ca_arg])) == "200"
    })
    .await;
    let other = TestCa::new().unwrap();
    let other_file = dir.join("other.pem");
    other.write_ca(&other_file).unwrap();
    let refused = tokio::task::block_in_place(|| {
        curl("/readyz", &["--cacert", &other_file.display().to_string()])
    });
    assert_eq!(
        refused, "000",
        "a client trusting another CA must fail the handshake"
    );

    // Sign-up, sign-in and logout over HTTPS; the logout reaches a verifier on the same
    // TLS Redis.
    let v = s.verifier().await;
    let https = |method: &str, path: &str, bearer: Option<&str>, body: Value| {
        let auth = bearer.map(|t| format!("authorization: Bearer {t}"));
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "--max-time", "5", "--cacert", &ca_arg, "-X", method])
            .args([
                "-H",
                "content-type: application/json",
                "--data",
                &body.to_string(),
            ]);
        if let Some(auth) = &auth {
            cmd.args(["-H", auth]);
        }
        let out = cmd
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let password = crate::support::PASSWORD;
    let (app, tokens) = tokio::task::block_in_place(|| {
        let owner = json!({"email": "o@example.com", "password": password,
            "first_name": "O", "last_name": "W"});
        https("POST", "/v1/owners", None, owner);
        let login = json!({"email": "o@example.com", "password": password});
        let owner = https("POST", "/v1/owners/login", None, login);
        let owner = owner["access_token"]
            .as_str()
            .expect("owner login over HTTPS");
        let app = https("POST", "/v1/apps", Some(owner), json!({"name": "shop"}));
        let app = app["id"].as_str().expect("an app").to_owned();
        let user = json!({"email": "ann@example.com", "password": password});
        let registered = https("POST", &format!("/v1/apps/{app}/register"), None, user);
        (app, registered["tokens"].clone())
    });
    let access = tokens["access_token"]
        .as_str()
        .expect("registered over HTTPS");
    assert_eq!(v.status(access).await, 200);
    tokio::task::block_in_place(|| {
        let body = json!({"refresh_token": tokens["refresh_token"]});
        let out = https("POST", &format!("/v1/apps/{app}/logout"), None, body);
        assert_eq!(out["logged_out"], true, "{out}");
    });
    refused_by_all(&[&v], access).await;

    // The wrong CA for PostgreSQL is refused by verify-full.
    let base = s.db_url.split('?').next().unwrap();
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_file.display()
    );
    let pool = store::pool(&wrong, 1).unwrap();
    assert!(
        pool.get().await.is_err(),
        "verify-full accepted a foreign CA"
    );
    // And sslmode=disable meets the server's hostnossl reject.
    let plain = format!("{base}?sslmode=disable");
    let pool = store::pool(&plain, 1).unwrap();
    assert!(pool.get().await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
