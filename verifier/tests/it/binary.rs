//! The real `portcullis-verifier` binary: configuration errors, serving behind nginx
//! `auth_request`, and a graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server::*;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-verifier");

/// A verifier process and its HTTP address; killed on drop.
struct Process {
    child: Child,
    http: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(vars: &[(&str, String)]) -> Process {
    spawn_logging(vars, Stdio::null())
}

/// [`spawn`], with stderr (the log) to `log`.
fn spawn_logging(vars: &[(&str, String)], log: Stdio) -> Process {
    let port = portcullis_tests::free_port();
    let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(BIN)
        .env_clear()
        .env("PORTCULLIS_VERIFIER_LISTEN", http.to_string())
        .env(
            "PORTCULLIS_VERIFIER_GRPC_LISTEN",
            format!("127.0.0.1:{}", portcullis_tests::free_port()),
        )
        .env("PORTCULLIS_VERIFIER_ISSUER", ISS)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Process { child, http }
}

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-{kind}-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_settings_exit_64_with_one_line_naming_the_variable() {
    for (vars, var) in [
        (vec![], "PORTCULLIS_REDIS_URL"),
        (
            vec![("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:1")],
            "PORTCULLIS_VERIFIER_ISSUER",
        ),
        (
            vec![
                ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:1"),
                ("PORTCULLIS_VERIFIER_ISSUER", "x"),
                ("PORTCULLIS_VERIFIER_LEEWAY_SECS", "-5"),
            ],
            "PORTCULLIS_VERIFIER_LEEWAY_SECS",
        ),
        (
            vec![
                ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:1"),
                ("PORTCULLIS_VERIFIER_ISSUER", "x"),
                ("PORTCULLIS_VERIFIER_LISTEN", "localhost"),
            ],
            "PORTCULLIS_VERIFIER_LISTEN",
        ),
    ] {
        let out = Command::new(BIN)
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{vars:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = temp_dir("sigterm");
    let key = signing_key(41);
    std::fs::write(dir.join("jwks.json"), jwks_of(&[&key])).unwrap();
    let log = dir.join("verifier.log");
    let mut p = spawn_logging(
        &[(
            "PORTCULLIS_VERIFIER_JWKS_FILE",
            dir.join("jwks.json").display().to_string(),
        )],
        std::fs::File::create(&log).unwrap().into(),
    );
    eventually(Duration::from_secs(10), || ready(p.http)).await;
    assert_eq!(
        verify(p.http, &live_token(&key, &new_id(), &new_id()))
            .await
            .status,
        200
    );
    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = p.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.expect("exited within 5 s").code(), Some(0));
    // A log written to a file is plain text: no colour codes.
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("shutdown requested"), "{written}");
    assert!(!written.contains('\x1b'), "{written:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_allows_and_denies() {
    let dir = temp_dir("nginx");
    let key = signing_key(42);
    std::fs::write(dir.join("jwks.json"), jwks_of(&[&key])).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nprefix = \"/admin\"\nany_role = [\"root\"]\n",
    )
    .unwrap();
    let verifier = spawn(&[
        (
            "PORTCULLIS_VERIFIER_JWKS_FILE",
            dir.join("jwks.json").display().to_string(),
        ),
        (
            "PORTCULLIS_VERIFIER_POLICY_FILE",
            dir.join("policy.toml").display().to_string(),
        ),
    ]);
    eventually(Duration::from_secs(10), || ready(verifier.http)).await;

    let proxy =
        portcullis_tests::nginx::Nginx::in_front_of(verifier.http, "protected content").unwrap();
    let front = proxy.addr;

    let sub = new_id();
    let token = live_token(&key, &new_id(), &sub);
    let auth = format!("Bearer {token}");
    let ok = get(front, "/orders", &[("authorization", &auth)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, "protected content");
    assert_eq!(ok.header("x-user"), Some(sub.as_str()));
    assert_eq!(ok.header("x-roles"), Some("admin,ops"));
    let anonymous = get(front, "/orders", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.body.contains("protected content"));
    assert_eq!(
        get(front, "/orders", &[("authorization", "Bearer a.b.c")])
            .await
            .status,
        401
    );
    assert_eq!(
        get(front, "/admin/panel", &[("authorization", &auth)])
            .await
            .status,
        403,
        "policy sees the original URI"
    );

    // A DPoP-bound token: nginx passes the proof on with the original request's host and
    // scheme, which the proof's `htu` names.
    let client = portcullis_tests::dpop::DpopClient::start().await.unwrap();
    let holder = client.key("ES256").await.unwrap();
    let mut claims = live_claims(&new_id(), &sub);
    claims["cnf"] = serde_json::json!({"jkt": holder.jkt});
    let bound = mint(&key, &header(&key), &claims);
    let opts = portcullis_tests::dpop::ProofOpts {
        access_token: Some(bound.clone()),
        ..Default::default()
    };
    let proof = client
        .proof(&holder, "GET", &format!("http://{front}/orders?x=1"), &opts)
        .await
        .unwrap();
    let dpop_auth = format!("DPoP {bound}");
    let headers = [
        ("authorization", dpop_auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let bound_ok = get(front, "/orders?x=1", &headers).await;
    assert_eq!(bound_ok.status, 200);
    assert_eq!(bound_ok.header("x-user"), Some(sub.as_str()));
    assert_eq!(
        get(front, "/orders?x=1", &headers).await.status,
        401,
        "replayed proof"
    );
    let as_bearer = format!("Bearer {bound}");
    assert_eq!(
        get(front, "/orders", &[("authorization", &as_bearer)])
            .await
            .status,
        401
    );
    let log = proxy.log();
    drop(proxy);
    assert!(!log.contains(&token), "token in nginx log");
    let _ = std::fs::remove_dir_all(&dir);
}
