//! DPoP (RFC 9449) at the verifier, with proofs from an independent client (panva's `dpop`
//! npm package, and hand-built attack variants from the same Node process): the proof
//! check itself, then bound tokens end to end over HTTP (Envoy and nginx header styles,
//! `/v1/verify`) and gRPC ext_authz.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis_common::ErrorCode;
use portcullis_tests::dpop::{DpopClient, DpopKey, ProofOpts};
use portcullis_verifier::core::dpop::{self, Expect, ProofBuf, Target};
use serde_json::json;

use crate::server::*;
use crate::support::*;

const HOST: &str = "api.example.test";
const URL: &str = "https://api.example.test/orders/7";

fn target() -> Target<'static> {
    Target {
        method: "GET",
        scheme: "https",
        host: HOST,
        path: "/orders/7",
    }
}

/// The check's answer for `proof` against `target()` now, bound to `jkt`, sent with
/// `token`: the accepted proof's thumbprint, or the refusal's reason.
fn checked(proof: &str, jkt: &str, token: &str) -> Result<String, &'static str> {
    let jkt: [u8; 32] = base64_decode(jkt).try_into().unwrap();
    let expect = Expect {
        target: target(),
        access_token: Some(token.as_bytes()),
        jkt: Some(&jkt),
        now: wall_now(),
        max_age_secs: dpop::DEFAULT_MAX_AGE_SECS,
        leeway_secs: 30,
    };
    let mut buf = ProofBuf::new();
    dpop::check(proof.as_bytes(), &expect, &mut buf)
        .map(|p| dpop::jkt_text(&p.jkt))
        .map_err(|r| {
            assert_eq!(r.code, ErrorCode::InvalidDpopProof);
            r.reason
        })
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn with_token(token: &str) -> ProofOpts {
    ProofOpts {
        access_token: Some(token.into()),
        ..ProofOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_from_an_independent_client_are_accepted_and_attacks_refused() {
    let client = DpopClient::start().await.unwrap();
    let token = "header.payload.signature";
    for alg in ["EdDSA", "ES256"] {
        let key = client.key(alg).await.unwrap();
        let other = client.key(alg).await.unwrap();
        let proof = |opts: ProofOpts| {
            let (client, key) = (&client, &key);
            async move { client.proof(key, "GET", URL, &opts).await.unwrap() }
        };
        let good = proof(with_token(token)).await;
        assert_eq!(
            checked(&good, &key.jkt, token),
            Ok(key.jkt.clone()),
            "{alg}"
        );
        // Case of scheme and host, the default port and a query do not matter.
        let loose = client
            .proof(
                &key,
                "GET",
                "HTTPS://API.example.test:443/orders/7?page=2",
                &with_token(token),
            )
            .await
            .unwrap();
        assert!(checked(&loose, &key.jkt, token).is_ok(), "{alg} normalized");
        if alg == "EdDSA" {
            // The package writes `Ed25519` (RFC 9864); the older `EdDSA` label is the same.
            assert_eq!(key.alg, "Ed25519");
            let relabelled = proof(ProofOpts {
                alg: Some("EdDSA".into()),
                ..with_token(token)
            })
            .await;
            assert!(checked(&relabelled, &key.jkt, token).is_ok());
        }

        let now = wall_now();
        let attacks: Vec<(&str, String)> = vec![
            (
                "wrong method",
                client
                    .proof(&key, "POST", URL, &with_token(token))
                    .await
                    .unwrap(),
            ),
            (
                "wrong URI",
                client
                    .proof(
                        &key,
                        "GET",
                        "https://api.example.test/orders/8",
                        &with_token(token),
                    )
                    .await
                    .unwrap(),
            ),
            (
                "wrong host",
                client
                    .proof(
                        &key,
                        "GET",
                        "https://evil.test/orders/7",
                        &with_token(token),
                    )
                    .await
                    .unwrap(),
            ),
            (
                "http for https",
                client
                    .proof(
                        &key,
                        "GET",
                        "http://api.example.test/orders/7",
                        &with_token(token),
                    )
                    .await
                    .unwrap(),
            ),
            (
                "stale iat",
                proof(ProofOpts {
                    iat: Some(now - 600),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "future iat",
                proof(ProofOpts {
                    iat: Some(now + 600),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "another token's ath",
                proof(with_token("another.access.token")).await,
            ),
            ("no ath", proof(ProofOpts::default()).await),
            (
                "malformed ath",
                proof(ProofOpts {
                    ath_override: Some("not-a-hash".into()),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "signed by another key",
                proof(ProofOpts {
                    signed_by: Some(other.clone()),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "alg none",
                proof(ProofOpts {
                    alg: Some("none".into()),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "alg HS256",
                proof(ProofOpts {
                    alg: Some("HS256".into()),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "embedded private key",
                proof(ProofOpts {
                    embed_private_key: true,
                    ..with_token(token)
                })
                .await,
            ),
            (
                "typ JWT",
                proof(ProofOpts {
                    typ: Some("JWT".into()),
                    ..with_token(token)
                })
                .await,
            ),
            (
                "alg of another key type",
                proof(ProofOpts {
                    alg: Some(if alg == "ES256" { "EdDSA" } else { "ES256" }.into()),
                    ..with_token(token)
                })
                .await,
            ),
            ("a token's place", token.to_owned()),
            ("not a JWS", "garbage".to_owned()),
        ];
        for (attack, bad) in &attacks {
            let answer = checked(bad, &key.jkt, token);
            assert!(answer.is_err(), "{alg}: {attack} accepted");
        }
        // The right proof for a token bound to another key.
        assert_eq!(
            checked(&good, &other.jkt, token),
            Err("proof key is not the key the token is bound to")
        );
    }
}

/// A token bound to `key`, valid now.
fn bound_token(signer: &ed25519_dalek::SigningKey, key: &DpopKey, sid: &str, sub: &str) -> String {
    let mut c = live_claims(sid, sub);
    c["cnf"] = json!({"jkt": key.jkt});
    mint(signer, &header(signer), &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_tokens_need_their_proof_at_every_transport() {
    let client = DpopClient::start().await.unwrap();
    let key = client.key("EdDSA").await.unwrap();
    let thief = client.key("ES256").await.unwrap();
    let signer = signing_key(61);
    let files = FileSetup::new(&jwks_of(&[&signer]), "");
    let v = start(&files.vars()).await;
    eventually(Duration::from_secs(5), || ready(v.http)).await;
    let (sid, sub) = (new_id(), new_id());
    let token = bound_token(&signer, &key, &sid, &sub);
    let auth = format!("DPoP {token}");
    let http = v.http;
    // Envoy's HTTP mode: the original path under the prefix, the original Host.
    let envoy = |proof: String| {
        let auth = auth.clone();
        async move {
            get(
                http,
                "/ext_authz/orders/7",
                &[
                    ("authorization", &auth),
                    ("dpop", &proof),
                    ("host", HOST),
                    ("x-forwarded-proto", "https"),
                ],
            )
            .await
        }
    };
    let for_token = with_token(&token);
    let proof = || client.proof(&key, "GET", URL, &for_token);

    let first = proof().await.unwrap();
    let ok = envoy(first.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("x-auth-user-id"), Some(sub.as_str()));
    // The token is now cached; a fresh proof is still required and still enough.
    assert_eq!(envoy(proof().await.unwrap()).await.status, 200);

    let replay = envoy(first).await;
    assert_eq!(
        (replay.status, replay.code()),
        (401, "invalid_dpop_proof".into())
    );
    assert_eq!(
        replay.header("www-authenticate"),
        Some("DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA Ed25519 ES256\"")
    );
    assert!(replay.body.contains("replayed"), "{}", replay.body);

    // The stolen token alone, or with the thief's own proof, is useless.
    let as_bearer = get(
        v.http,
        "/ext_authz/orders/7",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("host", HOST),
        ],
    )
    .await;
    assert_eq!(
        (as_bearer.status, as_bearer.code()),
        (401, "invalid_dpop_proof".into())
    );
    let thiefs = client
        .proof(&thief, "GET", URL, &with_token(&token))
        .await
        .unwrap();
    assert_eq!(envoy(thiefs).await.code(), "invalid_dpop_proof");
    let no_proof = get(
        v.http,
        "/ext_authz/orders/7",
        &[("authorization", &auth), ("host", HOST)],
    )
    .await;
    assert_eq!(no_proof.code(), "invalid_dpop_proof");
    let (p1, p2) = (proof().await.unwrap(), proof().await.unwrap());
    let two = get(
        v.http,
        "/ext_authz/orders/7",
        &[
            ("authorization", &auth),
            ("dpop", &p1),
            ("dpop", &p2),
            ("host", HOST),
        ],
    )
    .await;
    assert!(
        two.body.contains("more than one DPoP header"),
        "{}",
        two.body
    );
    // The proof names the request: another path or host behind the same sidecar fails.
    let elsewhere = get(
        v.http,
        "/ext_authz/orders/8",
        &[
            ("authorization", &auth),
            ("dpop", &proof().await.unwrap()),
            ("host", HOST),
        ],
    )
    .await;
    assert_eq!(elsewhere.code(), "invalid_dpop_proof");
    let other_host = get(
        v.http,
        "/ext_authz/orders/7",
        &[
            ("authorization", &auth),
            ("dpop", &proof().await.unwrap()),
            ("host", "other.test"),
        ],
    )
    .await;
    assert_eq!(other_host.code(), "invalid_dpop_proof");

    // nginx style: the original request in X-Original-*, the host in X-Forwarded-Host.
    let nginx = get(
        v.http,
        "/_portcullis",
        &[
            ("authorization", &auth),
            (
                "dpop",
                &client
                    .proof(&key, "DELETE", URL, &with_token(&token))
                    .await
                    .unwrap(),
            ),
            ("x-original-uri", "/orders/7?confirm=1"),
            ("x-original-method", "DELETE"),
            ("x-forwarded-host", HOST),
            ("host", "127.0.0.1:8081"),
        ],
    )
    .await;
    assert_eq!(nginx.status, 200, "{}", nginx.body);
    // `/v1/verify` checks the proof against the request it describes.
    let verify_url = format!("https://{HOST}/v1/verify");
    let verified = get(
        v.http,
        "/v1/verify",
        &[
            ("authorization", &auth),
            (
                "dpop",
                &client
                    .proof(&key, "GET", &verify_url, &with_token(&token))
                    .await
                    .unwrap(),
            ),
            ("host", HOST),
        ],
    )
    .await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert_eq!(verified.json()["claims"]["cnf"]["jkt"], key.jkt.as_str());

    // An unbound token under the DPoP scheme is refused; as Bearer it works as ever.
    let plain = live_token(&signer, &new_id(), &new_id());
    let unbound = get(
        v.http,
        "/ext_authz/orders/7",
        &[
            ("authorization", &format!("DPoP {plain}")),
            (
                "dpop",
                &client
                    .proof(&key, "GET", URL, &with_token(&plain))
                    .await
                    .unwrap(),
            ),
            ("host", HOST),
        ],
    )
    .await;
    assert_eq!(unbound.code(), "invalid_token");
    let bearer = get(
        v.http,
        "/ext_authz/orders/7",
        &[
            ("authorization", &format!("Bearer {plain}")),
            ("host", HOST),
        ],
    )
    .await;
    assert_eq!(bearer.status, 200);

    // gRPC ext_authz: the request attributes name method, scheme, host and path.
    let mut grpc = AuthorizationClient::connect(format!("http://{}", v.grpc))
        .await
        .unwrap();
    let grpc_proof = client
        .proof(&key, "GET", URL, &with_token(&token))
        .await
        .unwrap();
    let check = |proof: String| {
        let mut request = crate::grpc::check_request(
            "/orders/7",
            &[("authorization", auth.clone()), ("dpop", proof)],
        );
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.scheme = "https".into();
        http.host = HOST.into();
        request
    };
    let ok = grpc
        .check(check(grpc_proof.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.unwrap().code, 0);
    let replayed = grpc.check(check(grpc_proof)).await.unwrap().into_inner();
    assert_eq!(
        replayed.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );
    let Some(HttpResponse::DeniedResponse(denied)) = replayed.http_response else {
        panic!("a denial carries its HTTP response");
    };
    assert!(
        denied.body.contains("invalid_dpop_proof"),
        "{}",
        denied.body
    );
    let challenge = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .map(|h| h.value.clone());
    assert!(challenge.is_some_and(|c| c.starts_with("DPoP ")));
    v.shutdown().await;
}
