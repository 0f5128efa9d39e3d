//! gRPC ext_authz v3 through a real tonic client: the same decisions and headers as HTTP,
//! with denials carrying their HTTP status explicitly.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use portcullis_tests::RedisServer;

use crate::server::*;
use crate::support::*;

pub fn check_request(path: &str, headers: &[(&str, String)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

type Client = AuthorizationClient<tonic::transport::Channel>;

async fn check(client: &mut Client, path: &str, headers: &[(&str, String)]) -> CheckResponse {
    client
        .check(check_request(path, headers))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_allows_with_headers_and_denies_with_status() {
    let redis = RedisServer::start().unwrap();
    let key = signing_key(31);
    let mut w = Writer::connect(&redis.url()).await;
    w.set_jwks(&jwks_of(&[&key])).await;
    let dir = std::env::temp_dir().join(format!("portcullis-grpc-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "[[rule]]\nprefix = \"/admin\"\nany_role = [\"root\"]\n",
    )
    .unwrap();
    let v = start(&[
        ("PORTCULLIS_REDIS_URL", redis.url()),
        (
            "PORTCULLIS_VERIFIER_POLICY_FILE",
            dir.join("p.toml").display().to_string(),
        ),
    ])
    .await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", v.grpc))
        .await
        .unwrap();
    let (sid, sub) = (new_id(), new_id());
    let token = live_token(&key, &sid, &sub);

    let ok = check(
        &mut client,
        "/orders",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(okr)) = ok.http_response else {
        panic!("no ok response: {ok:?}")
    };
    let headers: HashMap<String, String> = okr
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert_eq!(headers["x-auth-user-id"], sub);
    assert_eq!(headers["x-auth-session-id"], sid);
    assert_eq!(headers["x-auth-roles"], "admin,ops");
    assert_eq!(headers["x-auth-app-id"], AUD);

    let denied = |resp: CheckResponse| {
        let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
            panic!("not denied: {resp:?}")
        };
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        (
            resp.status.unwrap().code,
            d.status.unwrap().code,
            body["code"].as_str().unwrap().to_owned(),
        )
    };
    let missing = check(&mut client, "/orders", &[]).await;
    assert_eq!(denied(missing), (16, 401, "missing_token".into())); // UNAUTHENTICATED
    let forbidden = check(
        &mut client,
        "/admin",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(denied(forbidden), (7, 403, "forbidden".into())); // PERMISSION_DENIED

    // Revocation reaches gRPC answers too.
    w.revoke_session(&sid, wall_now() + 900, true).await;
    let mut revoked = None;
    for _ in 0..100 {
        let resp = check(
            &mut client,
            "/orders",
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
        if resp.status.as_ref().unwrap().code != 0 {
            revoked = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        denied(revoked.expect("revocation applied")),
        (16, 401, "token_revoked".into())
    );
    let cookie_only = check(&mut client, "/orders", &[("cookie", format!("at={token}"))]).await;
    assert_eq!(denied(cookie_only).1, 401, "no cookie configured");
    let _ = std::fs::remove_dir_all(&dir);
    v.shutdown().await;
}
