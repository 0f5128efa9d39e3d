//! The HTTP surface: `/v1/verify`, ext_authz answers with identity headers, problem
//! bodies, the cookie source, the route policy (and its reload), health and metrics;
//! keys from a JWKS file and a JWKS URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::server::*;
use crate::support::*;

const POLICY: &str = r#"
[[rule]]
prefix = "/public"
public = true

[[rule]]
prefix = "/admin"
any_role = ["admin"]

[[rule]]
prefix = "/reports"
methods = ["POST"]
all_scopes = ["reports:write"]
"#;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_endpoint_and_problem_bodies() {
    let key = signing_key(21);
    let files = FileSetup::new(&jwks_of(&[&key]), POLICY);
    let v = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let (sid, sub) = (new_id(), new_id());
    let token = live_token(&key, &sid, &sub);

    let ok = get(
        v.http,
        "/v1/verify",
        &[
            ("authorization", &bearer(&token)),
            ("x-request-id", "req-123"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["valid"], true);
    assert_eq!(ok.json()["claims"]["sub"], sub.as_str());
    assert_eq!(ok.header("x-request-id"), Some("req-123"));
    let post = request(
        v.http,
        "POST",
        "/v1/verify",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(request(v.http, "PUT", "/v1/verify", &[]).await.status, 405);
    let huge = "x".repeat(20 * 1024);
    assert_eq!(
        get(v.http, "/v1/verify", &[("x-padding", &huge)])
            .await
            .status,
        431,
        "head over 16 KiB"
    );

    let mut expired = live_claims(&sid, &sub);
    expired["exp"] = json!(wall_now() - 60);
    let mut future = live_claims(&sid, &sub);
    future["nbf"] = json!(wall_now() + 600);
    let mut wrong_aud = live_claims(&sid, &sub);
    wrong_aud["aud"] = json!("another-app");
    let mut wrong_iss = live_claims(&sid, &sub);
    wrong_iss["iss"] = json!("https://evil.test");
    let other = signing_key(22);
    let cases = [
        (None, "missing_token"),
        (Some("Bearer not.a.token".to_owned()), "invalid_token"),
        (
            Some(bearer(&mint(&key, &header(&key), &expired))),
            "token_expired",
        ),
        (
            Some(bearer(&mint(&key, &header(&key), &future))),
            "not_yet_valid",
        ),
        (
            Some(bearer(&mint(&key, &header(&key), &wrong_aud))),
            "invalid_audience",
        ),
        (
            Some(bearer(&mint(&key, &header(&key), &wrong_iss))),
            "invalid_issuer",
        ),
        (Some(bearer(&live_token(&other, &sid, &sub))), "unknown_key"),
        (
            Some(bearer(&mint(
                &other,
                &header(&key),
                &live_claims(&sid, &sub),
            ))),
            "invalid_signature",
        ),
        (
            Some(format!("Basic {}", b64(b"user:pass"))),
            "missing_token",
        ),
    ];
    for (auth, code) in cases {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = get(v.http, "/v1/verify", &headers).await;
        assert_eq!(r.status, 401, "{code}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(r.json()["code"], code);
        assert_eq!(r.json()["status"], 401);
        assert!(r.header("x-request-id").is_some());
        if let Some(a) = &auth {
            assert!(
                !r.body.contains(a.trim_start_matches("Bearer ")),
                "token echoed in the body"
            );
        }
    }
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_headers_policy_cookie_and_reload() {
    let key = signing_key(23);
    let files = FileSetup::new(&jwks_of(&[&key]), POLICY);
    let v = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let (sid, sub) = (new_id(), new_id());
    let admin = live_token(&key, &sid, &sub); // roles admin, ops; scope users:read users:write
    let mut plain = live_claims(&new_id(), &new_id());
    plain["roles"] = json!(["viewer"]);
    let viewer = mint(&key, &header(&key), &plain);

    // Any other path answers as ext_authz: 200 + identity headers, empty body.
    let r = get(
        v.http,
        "/orders/17?x=1",
        &[("authorization", &bearer(&admin))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-auth-user-id"), Some(sub.as_str()));
    assert_eq!(r.header("x-auth-session-id"), Some(sid.as_str()));
    assert_eq!(r.header("x-auth-app-id"), Some(AUD));
    assert_eq!(r.header("x-auth-roles"), Some("admin,ops"));
    assert_eq!(r.header("x-auth-scope"), Some("users:read users:write"));
    assert_eq!(
        request(v.http, "DELETE", "/orders/17", &[]).await.status,
        401,
        "any method"
    );

    // Route policy: roles, scopes, methods, public routes, unnormalized paths.
    assert_eq!(
        get(
            v.http,
            "/admin/users",
            &[("authorization", &bearer(&admin))]
        )
        .await
        .status,
        200
    );
    let denied = get(
        v.http,
        "/admin/users",
        &[("authorization", &bearer(&viewer))],
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["code"], "forbidden");
    assert_eq!(
        denied.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\"")
    );
    assert_eq!(get(v.http, "/public/logo.png", &[]).await.status, 200);
    assert_eq!(
        get(
            v.http,
            "/public/../admin/users",
            &[("authorization", &bearer(&viewer))]
        )
        .await
        .status,
        403
    );
    assert_eq!(
        request(
            v.http,
            "POST",
            "/reports",
            &[("authorization", &bearer(&admin))]
        )
        .await
        .status,
        403
    );
    assert_eq!(
        get(v.http, "/reports", &[("authorization", &bearer(&admin))])
            .await
            .status,
        200
    );
    // nginx-style original URI / method headers and Envoy's path prefix.
    let nginx = [
        ("authorization", bearer(&viewer)),
        ("x-original-uri", "/admin/x".into()),
        ("x-original-method", "GET".into()),
    ];
    let nginx: Vec<(&str, &str)> = nginx.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(get(v.http, "/auth", &nginx).await.status, 403);
    assert_eq!(
        get(
            v.http,
            "/ext_authz/admin/x",
            &[("authorization", &bearer(&viewer))]
        )
        .await
        .status,
        403
    );

    // The configured cookie carries the token when there is no Authorization header.
    let cookie = format!("theme=dark; pc_at={admin}");
    let r = get(v.http, "/orders", &[("cookie", &cookie)]).await;
    assert_eq!(
        (r.status, r.header("x-auth-user-id")),
        (200, Some(sub.as_str()))
    );
    assert_eq!(
        get(v.http, "/orders", &[("cookie", "other=x")])
            .await
            .status,
        401
    );

    // Reload: the policy file changes, the running verifier follows; a broken file is ignored.
    std::fs::write(
        files.dir.join("policy.toml"),
        "[[rule]]\nprefix = \"/orders\"\nany_role = [\"auditor\"]\n",
    )
    .unwrap();
    eventually(Duration::from_secs(6), || async {
        get(v.http, "/orders/1", &[("authorization", &bearer(&admin))])
            .await
            .status
            == 403
    })
    .await;
    std::fs::write(files.dir.join("policy.toml"), "[[rule]]\nprefix = broken").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(v.http, "/orders/1", &[("authorization", &bearer(&admin))])
            .await
            .status,
        403
    );
    assert_eq!(
        get(
            v.http,
            "/admin/users",
            &[("authorization", &bearer(&viewer))]
        )
        .await
        .status,
        200,
        "old rule gone"
    );

    // Health and metrics.
    assert_eq!(get(v.http, "/healthz", &[]).await.status, 200);
    let metrics = get(v.http, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("portcullis_verifier_decisions_total{result=\"allow\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_verifier_decisions_total{result=\"forbidden\"}"));
    assert!(metrics.contains("portcullis_verifier_cache_hits_total"));
    assert!(metrics.contains("portcullis_verifier_request_duration_seconds_bucket"));
    assert!(metrics.contains("portcullis_verifier_keys_loaded 1"));
    assert!(!metrics.contains(&admin), "no token in metrics");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_changes_are_followed() {
    let (a, b) = (signing_key(24), signing_key(25));
    let files = FileSetup::new(&jwks_of(&[&a]), "");
    let v = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let token_b = live_token(&b, &new_id(), &new_id());
    assert_eq!(verify(v.http, &token_b).await.json()["code"], "unknown_key");
    std::fs::write(files.dir.join("jwks.json"), jwks_of(&[&a, &b])).unwrap();
    eventually(Duration::from_secs(6), || async {
        verify(v.http, &token_b).await.status == 200
    })
    .await;
    std::fs::write(files.dir.join("jwks.json"), "{\"keys\": [").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        verify(v.http, &token_b).await.status,
        200,
        "a broken file keeps the last good keys"
    );
    v.shutdown().await;
}

/// A JWKS endpoint with a Cache-Control lifetime; counts fetches.
async fn jwks_server(
    doc: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicUsize>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (doc, fetches) = (doc.clone(), fetches.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().clone();
                    async move {
                        http::Response::builder()
                            .header("cache-control", "public, max-age=3600")
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_honours_cache_control_and_refetches_on_unknown_kid() {
    let (a, b) = (signing_key(26), signing_key(27));
    let doc = Arc::new(std::sync::Mutex::new(jwks_of(&[&a])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let addr = jwks_server(doc.clone(), fetches.clone()).await;
    let v = start(&[
        (
            "PORTCULLIS_VERIFIER_JWKS_URL",
            format!("http://{addr}/jwks.json"),
        ),
        ("PORTCULLIS_VERIFIER_AUDIENCE", AUD.into()),
        ("PORTCULLIS_VERIFIER_MAX_STALENESS_SECS", "5".into()),
    ])
    .await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    assert_eq!(
        verify(v.http, &live_token(&a, &new_id(), &new_id()))
            .await
            .status,
        200
    );
    // max-age=3600 also widens the staleness bound: still ready after 5 s without a fetch.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates; a token with the new kid triggers a refetch (rate limited: at
    // most one per 10 s, however many unknown kids arrive).
    *doc.lock().unwrap() = jwks_of(&[&a, &b]);
    let token_b = live_token(&b, &new_id(), &new_id());
    for _ in 0..20 {
        assert_eq!(verify(v.http, &token_b).await.json()["code"], "unknown_key");
    }
    let took = eventually(Duration::from_secs(15), || async {
        verify(v.http, &token_b).await.status == 200
    })
    .await;
    assert!(
        took > Duration::from_secs(5),
        "refetch waited for the rate limit ({took:?})"
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one refetch for many unknown kids"
    );
    assert!(ready(v.http).await);
    v.shutdown().await;
}
