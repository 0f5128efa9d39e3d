//! The HTTP surface itself: problem documents, request ids, body limits, rate limits,
//! OpenAPI coverage, health, metrics, and the binary's configuration errors.

use std::process::Command;

use serde_json::json;

use crate::support::{PASSWORD, Stack, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_request_ids_and_limits() {
    let s = Stack::start().await;
    let (_, app, _) = s.owner_with_app().await;
    let register = format!("/v1/apps/{app}/register");

    let r = request(
        s.addr,
        "POST",
        &register,
        &[("x-request-id", "req-123")],
        Some("{not json".into()),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"));
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let problem = r.json();
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(problem.get(field).is_some(), "{field}");
    }
    let r = s.get("/nowhere", None).await;
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));

    let big = json!({"email": "a@example.com", "password": "x".repeat(70 * 1024)}).to_string();
    let r = request(s.addr, "POST", &register, &[], Some(big)).await;
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    let r = request(
        s.addr,
        "POST",
        &register,
        &[("content-type", "text/plain")],
        Some("{}".into()),
    )
    .await;
    assert_eq!(r.status, 400);

    // The wrong password of a failed login never shows up in the answer.
    let r = s
        .post(
            &format!("/v1/apps/{app}/login"),
            None,
            json!({"email": "x@example.com", "password": "hunter2-secret"}),
        )
        .await;
    assert!(!r.body.contains("hunter2"));

    let r = s
        .post(
            "/v1/apps/00000000-0000-0000-0000-000000000000/login",
            None,
            json!({"email": "a@b.c", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "app_not_found"));
    let r = s
        .post(
            "/v1/apps/nonsense/login",
            None,
            json!({"email": "a@b.c", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.code(), "app_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_ip_and_per_account() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let settings = format!("/v1/apps/{app}/settings");
    let r = s
        .call("PUT", &settings, Some(&key), Some(json!({"rate_limits": {"per_ip_per_minute": 1000, "per_account_failures_per_hour": 3}})))
        .await;
    assert_eq!(r.status, 200);
    let login = format!("/v1/apps/{app}/login");
    for _ in 0..3 {
        let r = s
            .post(
                &login,
                None,
                json!({"email": "ann@example.com", "password": "wrong password"}),
            )
            .await;
        assert_eq!(r.code(), "invalid_credentials");
    }
    // The account is slowed down, even for the right password, until the window passes.
    let r = s
        .post(
            &login,
            None,
            json!({"email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry));
    // Other accounts are unaffected; the window is not forever (its key expires).
    s.register(&app, "bob@example.com").await;
    s.login(&app, "bob@example.com").await;
    let mut redis = s.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("portcullis:rl:*login-failures*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains("ann"), "no address in Redis keys");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=3600).contains(&ttl));
    let () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    s.login(&app, "ann@example.com").await;

    // Per IP, per route.
    s.call(
        "PUT",
        &settings,
        Some(&key),
        Some(json!({"rate_limits": {"per_ip_per_minute": 3}})),
    )
    .await;
    let guest = format!("/v1/apps/{app}/guest");
    for _ in 0..3 {
        assert_eq!(s.post(&guest, None, json!({})).await.status, 201);
    }
    let r = s.post(&guest, None, json!({})).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_health_and_metrics() {
    let s = Stack::start().await;
    let r = s.get("/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    // The published document is part of the contract: a change to it shows up here (and in
    // review) as a change to the snapshot. `UPDATE_OPENAPI=1` rewrites it.
    // The directory at run time (not `env!`): a shared target directory may have been
    // built from another checkout.
    let snapshot = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("tests/openapi.json");
    let rendered = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&snapshot, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&snapshot).unwrap();
    assert!(
        rendered == expected,
        "/openapi.json differs from {}; if the change is meant, rerun with UPDATE_OPENAPI=1",
        snapshot.display()
    );
    // Valid OpenAPI 3.1 by an independent validator (which also refuses a repeated
    // operationId), and every operation named once, readably.
    let file = std::env::temp_dir().join(format!("portcullis-openapi-{}.json", std::process::id()));
    std::fs::write(&file, &rendered).unwrap();
    let python = portcullis_tests::pypi::python().unwrap();
    let out = Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.len() > 4 && id.chars().all(|c| c.is_ascii_alphanumeric())),
        "{ids:?}"
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/v1/owners", "post"),
        ("/v1/owners/login", "post"),
        ("/v1/owners/me", "get"),
        ("/v1/owners/me", "patch"),
        ("/v1/owners/me", "delete"),
        ("/v1/apps", "post"),
        ("/v1/apps", "get"),
        ("/v1/apps/{app}", "get"),
        ("/v1/apps/{app}", "patch"),
        ("/v1/apps/{app}", "delete"),
        ("/v1/apps/{app}/api-keys", "post"),
        ("/v1/apps/{app}/settings", "get"),
        ("/v1/apps/{app}/settings", "put"),
        ("/v1/apps/{app}/register", "post"),
        ("/v1/apps/{app}/login", "post"),
        ("/v1/apps/{app}/guest", "post"),
        ("/v1/apps/{app}/token/refresh", "post"),
        ("/v1/apps/{app}/logout", "post"),
        ("/v1/apps/{app}/verify", "post"),
        ("/v1/apps/{app}/me", "get"),
        ("/v1/apps/{app}/me", "patch"),
        ("/v1/apps/{app}/me", "delete"),
        ("/v1/apps/{app}/password/change", "post"),
        ("/v1/apps/{app}/sessions", "get"),
        ("/v1/apps/{app}/sessions", "delete"),
        ("/v1/apps/{app}/sessions/{sid}", "delete"),
        ("/v1/apps/{app}/login/mfa", "post"),
        ("/v1/apps/{app}/password/forgot", "post"),
        ("/v1/apps/{app}/password/reset/{token}", "get"),
        ("/v1/apps/{app}/password/reset", "get"),
        ("/v1/apps/{app}/password/reset", "post"),
        ("/v1/apps/{app}/email/verify/send", "post"),
        ("/v1/apps/{app}/email/verify", "get"),
        ("/v1/apps/{app}/email/verify", "post"),
        ("/v1/apps/{app}/magic-link", "post"),
        ("/v1/apps/{app}/magic-link/verify", "get"),
        ("/v1/apps/{app}/magic-link/verify", "post"),
        ("/v1/apps/{app}/mfa", "get"),
        ("/v1/apps/{app}/mfa/totp/setup", "post"),
        ("/v1/apps/{app}/mfa/totp/verify", "post"),
        ("/v1/apps/{app}/mfa/{factor}", "delete"),
        ("/v1/apps/{app}/mfa/otp/send", "post"),
        ("/v1/apps/{app}/mfa/otp/verify", "post"),
        ("/v1/apps/{app}/mfa/recovery-codes", "post"),
        ("/v1/apps/{app}/audit", "get"),
        ("/v1/apps/{app}/roles", "get"),
        ("/v1/apps/{app}/roles", "post"),
        ("/v1/apps/{app}/roles/{name}", "put"),
        ("/v1/apps/{app}/roles/{name}", "delete"),
        ("/v1/apps/{app}/webhooks", "get"),
        ("/v1/apps/{app}/webhooks", "post"),
        ("/v1/apps/{app}/webhooks/{id}", "put"),
        ("/v1/apps/{app}/webhooks/{id}", "delete"),
        ("/v1/apps/{app}/webhooks/{id}/deliveries", "get"),
        (
            "/v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/replay",
            "post",
        ),
        ("/v1/apps/{app}/users", "get"),
        ("/v1/apps/{app}/users", "post"),
        ("/v1/apps/{app}/users/{id}", "get"),
        ("/v1/apps/{app}/users/{id}", "patch"),
        ("/v1/apps/{app}/users/{id}", "delete"),
        ("/v1/admin/keys/rotate", "post"),
        ("/v1/admin/keys", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/.well-known/jwks.json", "get"),
        ("/.well-known/openid-configuration", "get"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from OpenAPI"
        );
    }
    assert_eq!(s.get("/healthz", None).await.status, 200);
    let ready = s.get("/readyz", None).await.json();
    assert_eq!(
        ready,
        json!({"ready": true, "postgres": true, "redis": true})
    );
    let (_, app, _) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let metrics = s.get("/metrics", None).await.body;
    assert!(
        metrics.contains("portcullis_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/apps/{app}/register\""));
    assert!(!metrics.contains("ann@example.com") && !metrics.contains(PASSWORD));
    // Graceful shutdown: `run` returns once the shutdown future resolves.
    s.shutdown().await;
}

#[test]
fn the_binary_refuses_bad_settings_with_exit_64() {
    let bin = env!("CARGO_BIN_EXE_portcullis-control-plane");
    let out = Command::new(bin).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PORTCULLIS_DATABASE_URL"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = Command::new(bin)
        .env_clear()
        .env("PORTCULLIS_DATABASE_URL", "postgres://u@127.0.0.1:1/db")
        .env("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:1")
        .env("PORTCULLIS_ISSUER", "http://localhost:8080")
        .env("PORTCULLIS_ADMIN_TOKEN", "0123456789abcdef0123")
        .env("PORTCULLIS_KEY_ENCRYPTION_KEY", "dG9vIHNob3J0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORTCULLIS_KEY_ENCRYPTION_KEY"));
}

#[test]
fn migrate_subcommand_applies_the_schema_once() {
    let pg = portcullis_tests::PostgresServer::start().unwrap();
    let db = pg.create_database("migrations").unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis-control-plane");
    let env = crate::support::env(&db, "redis://127.0.0.1:1", "http://localhost:8080", &[]);
    for _ in 0..2 {
        let out = Command::new(bin)
            .arg("migrate")
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(portcullis_tests::find_binary("psql").unwrap())
        .args([
            "-X",
            "-At",
            "-d",
            &db,
            "-c",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1,2,3,4,5,6,7,8,9,10"
    );
    let out = Command::new(bin)
        .arg("frobnicate")
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn publisher_key_subcommand_prints_a_key_and_its_trust_setting() {
    use base64::Engine as _;
    let bin = env!("CARGO_BIN_EXE_portcullis-control-plane");
    let out = Command::new(bin)
        .arg("publisher-key")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(value("PORTCULLIS_JWKS_PUBLISHER_KEY"))
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let trust = portcullis_common::signed_jwks::TrustKeys::from_jwks(&value(
        "PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS",
    ))
    .unwrap();
    let sealed = portcullis_common::signed_jwks::seal(&key, r#"{"keys":[]}"#, 1, 0).unwrap();
    assert!(portcullis_common::signed_jwks::open(&sealed, &trust).is_ok());
}
