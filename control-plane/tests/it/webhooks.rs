//! Webhooks (API.md §3 `/webhooks`): signed deliveries to a receiver on loopback, checked
//! with an independent implementation (Python's `hmac`), retries, dead letters and replay,
//! and SSRF targets refused.

use std::time::Duration;

use serde_json::json;

use crate::support::{HttpSink, PASSWORD, Stack, eventually};

/// Checks a Standard Webhooks signature with Python's standard library.
fn python_verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()
expected = "v1," + base64.b64encode(mac).decode()
print("ok" if any(hmac.compare_digest(expected, s) for s in sig.split(" ")) else "bad")
"#;
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret, id, timestamp, signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_retries_dead_letters_and_replay() {
    let mut receiver = HttpSink::start().await.unwrap();
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let (_, app, key) = s.owner_with_app().await;
    let hooks = format!("/v1/apps/{app}/webhooks");
    for bad in [
        json!({"url": receiver.url("/hook"), "events": []}),
        json!({"url": receiver.url("/hook"), "events": ["Not An Event"]}),
        json!({"url": receiver.url("/hook"), "events": ["login.succeded"]}),
        json!({"url": "ftp://x/", "events": ["*"]}),
        json!({"url": receiver.url("/hook"), "events": ["*"], "secret": "whsec_c2hvcnQ="}),
    ] {
        assert_eq!(
            s.post(&hooks, Some(&key), bad.clone()).await.code(),
            "invalid_request",
            "{bad}"
        );
    }
    let r = s
        .post(
            &hooks,
            Some(&key),
            json!({"url": receiver.url("/hook"), "events": ["user.created", "session.revoked"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let hook = r.json()["id"].as_str().unwrap().to_owned();
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed = s.get(&hooks, Some(&key)).await.json();
    assert!(
        listed["webhooks"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    let tokens = s.register(&app, "ann@example.com").await;
    let call = receiver
        .wait_for(1, Duration::from_secs(15))
        .await
        .remove(0);
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/hook")
    );
    let id = call.header("webhook-id").unwrap().to_owned();
    let timestamp = call.header("webhook-timestamp").unwrap().to_owned();
    let signature = call.header("webhook-signature").unwrap().to_owned();
    assert!(id.starts_with("msg_") && signature.starts_with("v1,"));
    assert!(
        python_verifies(&secret, &id, &timestamp, &call.body, &signature),
        "signature"
    );
    assert!(
        !python_verifies(&secret, &id, &timestamp, b"{}", &signature),
        "the check can fail"
    );
    let body = call.json();
    assert_eq!(body["type"], "user.created");
    assert_eq!(body["data"]["user_id"], tokens["user_id"]);
    assert!(
        !call
            .body
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
    );

    // Only subscribed events: a login (login.succeeded) sends nothing, a logout does.
    let login = s.login(&app, "ann@example.com").await;
    let logout = format!("/v1/apps/{app}/logout");
    s.post(
        &logout,
        None,
        json!({"refresh_token": login["refresh_token"]}),
    )
    .await;
    let calls = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(calls[1].json()["type"], "session.revoked");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(receiver.requests().len(), 2);

    // The receiver fails, then is gone: retried with the same webhook-id, then delivered.
    receiver.set_status(500);
    s.post(
        &logout,
        None,
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    let calls = receiver.wait_for(3, Duration::from_secs(15)).await;
    let retried_id = calls[2].header("webhook-id").unwrap().to_owned();
    receiver.stop();
    eventually(Duration::from_secs(15), || async {
        s.sql_value(
            "SELECT max(attempts) FROM outbox WHERE channel = 'webhook' AND state = 'pending'",
        )
        .await
        .as_i64()
            >= Some(2)
    })
    .await;
    receiver.set_status(200);
    receiver.restart().unwrap();
    let calls = receiver.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(
        calls[3].header("webhook-id"),
        Some(retried_id.as_str()),
        "one id across retries"
    );

    // A delivery that fails for a day lands in the dead letters, and can be replayed.
    receiver.set_status(503);
    let again = s.login(&app, "ann@example.com").await;
    s.post(
        &logout,
        None,
        json!({"refresh_token": again["refresh_token"]}),
    )
    .await;
    receiver.wait_for(5, Duration::from_secs(15)).await;
    s.sql(
        "UPDATE outbox SET created_at = now() - interval '2 days', next_attempt_at = now()
           WHERE channel = 'webhook' AND state = 'pending'",
    )
    .await;
    let failed = format!("{hooks}/{hook}/deliveries?state=failed");
    eventually(Duration::from_secs(15), || async {
        s.get(&failed, Some(&key)).await.json()["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    let dead = s.get(&failed, Some(&key)).await.json()["deliveries"][0].clone();
    assert_eq!(dead["event"], "session.revoked");
    assert!(
        dead["last_error"].as_str().unwrap().contains("503"),
        "{dead}"
    );
    receiver.set_status(200);
    let delivery = dead["id"].as_str().unwrap();
    let replay = format!("{hooks}/{hook}/deliveries/{delivery}/replay");
    assert_eq!(s.post(&replay, Some(&key), json!({})).await.status, 202);
    eventually(Duration::from_secs(15), || async {
        receiver
            .requests()
            .last()
            .is_some_and(|r| r.json()["type"] == "session.revoked")
            && s.sql_value(&format!("SELECT state FROM outbox WHERE id = '{delivery}'"))
                .await
                == json!("sent")
    })
    .await;
    assert_eq!(
        s.post(&replay, Some(&key), json!({})).await.status,
        404,
        "only dead letters"
    );

    // Changed and deleted.
    let r = s
        .call(
            "PUT",
            &format!("{hooks}/{hook}"),
            Some(&key),
            Some(json!({"url": receiver.url("/v2"), "events": ["*"]})),
        )
        .await;
    assert_eq!((r.status, r.json()["events"].clone()), (200, json!(["*"])));
    assert_eq!(
        s.call("DELETE", &format!("{hooks}/{hook}"), Some(&key), None)
            .await
            .status,
        204
    );
    assert_eq!(
        s.call("DELETE", &format!("{hooks}/{hook}"), Some(&key), None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_targets_are_refused() {
    let s = Stack::start().await;
    let (_, app, key) = s.owner_with_app().await;
    let hooks = format!("/v1/apps/{app}/webhooks");
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:127.0.0.1]/",
        "https://user:pass@example.com/",
    ] {
        let r = s
            .post(&hooks, Some(&key), json!({"url": url, "events": ["*"]}))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{url}"
        );
    }
    assert_eq!(
        s.get(&hooks, Some(&key)).await.json()["webhooks"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowing_private_targets_never_allows_metadata_ones() {
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let (_, app, key) = s.owner_with_app().await;
    let hooks = format!("/v1/apps/{app}/webhooks");
    let private = s
        .post(
            &hooks,
            Some(&key),
            json!({"url": "http://10.0.0.1/", "events": ["*"]}),
        )
        .await;
    assert_eq!(private.status, 201, "{}", private.body);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let r = s
            .post(&hooks, Some(&key), json!({"url": url, "events": ["*"]}))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{url}"
        );
    }
    // A CAPTCHA provider at the metadata address is unreachable too: the check fails
    // closed, as for any provider that cannot be reached.
    let settings = format!("/v1/apps/{app}/settings");
    let captcha = json!({"captcha": {"provider": "turnstile", "secret": "s",
        "verify_url": "http://169.254.169.254/siteverify"}});
    let put = s.call("PUT", &settings, Some(&key), Some(captcha)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let r = s
        .post(
            &format!("/v1/apps/{app}/register"),
            None,
            json!({"email": "m@example.com", "password": PASSWORD, "captcha_token": "t"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "unavailable"),
        "{}",
        r.body
    );
}
