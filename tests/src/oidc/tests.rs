//! The provider started, configured and signed in to, headlessly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::*;
use crate::http::{Reply, request};

const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
// A code verifier and its S256 challenge, the latter computed apart from the provider:
// printf %s VERIFIER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d =
const VERIFIER: &str = "portcullis-oidc-test-code-verifier-0123456789_abcdefghij~XYZ";
const CHALLENGE: &str = "PYO10CY5P5Z8umidIMfvB-rkaFMSNRAKtvZPJgu_24Y";

fn provider() -> OidcProvider {
    OidcProvider::start(
        &[
            OidcClient::new("rp", "rp-secret", &[REDIRECT_URI]),
            OidcClient::new("rp-post", "post-secret", &[REDIRECT_URI])
                .with_auth_method(TokenAuthMethod::ClientSecretPost),
        ],
        &[
            OidcAccount::new("alice", "alice@example.test", true),
            OidcAccount::new("bob", "bob@example.test", false),
        ],
    )
    .unwrap()
}

fn addr(provider: &OidcProvider) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, provider.port()))
}

/// An authorization URL for `client_id`, with `extra` parameters appended.
fn authorize_url(provider: &OidcProvider, client_id: &str, extra: &[(&str, &str)]) -> String {
    let mut url = format!(
        "{}/auth?response_type=code&client_id={client_id}&redirect_uri={}\
         &scope=openid%20email",
        provider.issuer(),
        percent_encode(REDIRECT_URI)
    );
    for (key, value) in extra {
        let _ = write!(url, "&{key}={}", percent_encode(value));
    }
    url
}

fn pkce(state: &'static str, nonce: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

/// The query parameters of a callback URL at [`REDIRECT_URI`].
fn callback_params(location: &str) -> HashMap<String, String> {
    let query = location
        .strip_prefix(REDIRECT_URI)
        .and_then(|rest| rest.strip_prefix('?'))
        .unwrap_or_else(|| panic!("not a callback: {location}"));
    query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Exchanges `code` at the token endpoint as client `rp` (client_secret_basic).
async fn redeem(provider: &OidcProvider, code: &str, verifier: &str) -> Reply {
    let basic = format!("Basic {}", STANDARD.encode("rp:rp-secret"));
    request(
        addr(provider),
        "POST",
        "/token",
        &[
            ("authorization", basic.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some(format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={verifier}",
            percent_encode(code),
            percent_encode(REDIRECT_URI)
        )),
    )
    .await
}

fn jwt_payload(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn discovery_names_the_issuer_and_survives_a_restart() {
    let mut provider = provider();
    let issuer = provider.issuer();
    assert_eq!(issuer, format!("http://127.0.0.1:{}", provider.port()));
    let discovery = request(
        addr(&provider),
        "GET",
        "/.well-known/openid-configuration",
        &[],
        None,
    )
    .await;
    assert_eq!(discovery.status, 200, "{}", discovery.body);
    let doc = discovery.json();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}/auth"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    let jwks = request(addr(&provider), "GET", "/jwks", &[], None)
        .await
        .json();
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert!(jwks["keys"][0].get("d").is_none(), "public keys only");

    let port = provider.port();
    provider.stop();
    provider.stop(); // idempotent
    assert!(std::net::TcpStream::connect(addr(&provider)).is_err());
    provider.restart().unwrap();
    assert_eq!(provider.port(), port);
    let again = request(addr(&provider), "GET", "/jwks", &[], None)
        .await
        .json();
    assert_eq!(again, jwks, "the signing key survives a restart");

    let dir = provider.dir.path.clone();
    drop(provider);
    assert!(!dir.exists(), "drop removes the temp dir");
}

#[tokio::test]
async fn code_flow_with_pkce_issues_an_id_token_once() {
    let provider = provider();
    let url = authorize_url(&provider, "rp", &pkce("st-1", "n-1"));
    let location = provider.sign_in(&url, "alice").await.unwrap();
    let params = callback_params(&location);
    assert_eq!(params["state"], "st-1");
    assert_eq!(params["iss"], provider.issuer(), "RFC 9207 iss");
    let code = &params["code"];

    let wrong = redeem(&provider, code, &format!("{VERIFIER}x")).await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert_eq!(wrong.json()["error"], "invalid_grant");

    // A failed verifier does not use the code up; a replay is refused (and revokes
    // what the code's grant issued).
    let reply = redeem(&provider, code, VERIFIER).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let replayed = redeem(&provider, code, VERIFIER).await;
    assert_eq!(replayed.status, 400, "{}", replayed.body);
    assert_eq!(replayed.json()["error"], "invalid_grant");
    let tokens = reply.json();
    assert_eq!(tokens["token_type"], "Bearer");
    let claims = jwt_payload(tokens["id_token"].as_str().unwrap());
    assert_eq!(claims["iss"], provider.issuer());
    assert_eq!(claims["aud"], "rp");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["email_verified"], true);
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 300, "short-lived: {iat}..{exp}");
}

#[tokio::test]
async fn client_secret_post_and_an_unverified_email() {
    let provider = provider();
    let url = authorize_url(&provider, "rp-post", &pkce("st-2", "n-2"));
    let params = callback_params(&provider.sign_in(&url, "bob").await.unwrap());
    let reply = request(
        addr(&provider),
        "POST",
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}\
             &client_id=rp-post&client_secret=post-secret",
            percent_encode(&params["code"]),
            percent_encode(REDIRECT_URI)
        )),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let claims = jwt_payload(reply.json()["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["email_verified"], false);
}

#[tokio::test]
async fn refusals_come_back_as_errors() {
    let provider = provider();

    // No PKCE, or `plain`: refused by the provider, sent back to the callback.
    for extra in [
        &[("state", "s"), ("nonce", "n")][..],
        &[
            ("state", "s"),
            ("code_challenge", VERIFIER),
            ("code_challenge_method", "plain"),
        ][..],
    ] {
        let url = authorize_url(&provider, "rp", extra);
        let params = callback_params(&provider.sign_in(&url, "alice").await.unwrap());
        assert_eq!(params["error"], "invalid_request", "{params:?}");
        assert!(!params.contains_key("code"));
        assert_eq!(params["state"], "s");
    }

    // The user says no.
    let url = authorize_url(&provider, "rp", &pkce("st-3", "n-3"));
    let params = callback_params(&provider.sign_in_and_deny(&url, "alice").await.unwrap());
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st-3");

    // No account of that name: the sign-in page says so.
    let err = provider.sign_in(&url, "mallory").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("no account with sub mallory"),
        "{err:#}"
    );

    // A redirect_uri the client did not register: an error page, no redirect.
    let bad = url.replace(
        &percent_encode(REDIRECT_URI),
        &percent_encode("http://127.0.0.1:9/elsewhere"),
    );
    let err = provider.sign_in(&bad, "alice").await.unwrap_err();
    assert!(format!("{err:#}").contains("redirect_uri"), "{err:#}");

    // Not the provider at all.
    let err = provider.sign_in(REDIRECT_URI, "alice").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("is not at the provider"),
        "{err:#}"
    );
}

#[test]
fn cookie_jar_matches_paths_and_forgets_expired_cookies() {
    let mut jar = CookieJar::default();
    jar.store("_interaction=abc; path=/interaction/abc; expires=Tue, 01 Dec 2099 00:00:00 GMT; samesite=lax; httponly");
    jar.store("_session=s1; path=/; samesite=none; httponly");
    jar.store("_resume=r; path=/auth/abc");
    assert_eq!(
        jar.header_for("/interaction/abc/login"),
        "_interaction=abc; _session=s1"
    );
    assert_eq!(jar.header_for("/interaction/abcd"), "_session=s1");
    assert_eq!(jar.header_for("/auth/abc?x=1"), "_resume=r; _session=s1");
    jar.store("_resume=; path=/auth/abc; expires=Thu, 01 Jan 1970 00:00:00 GMT");
    jar.store("_session=s2; path=/");
    assert_eq!(jar.header_for("/auth/abc"), "_session=s2");
    assert!(path_matches("/a/b", "/a/"));
    assert!(!path_matches("/ab", "/a/"));
}

#[test]
fn parses_forms_urls_and_pages() {
    let html = r#"<form method="post" action="/interaction/x&#38;y/login" data-prompt="login"><input name="login"></form>
        <form action="/no-prompt"></form><form method="post" action="/interaction/u/abort" data-prompt="abort">"#;
    assert_eq!(
        forms(html),
        [
            Form {
                prompt: "login".into(),
                action: "/interaction/x&y/login".into()
            },
            Form {
                prompt: "abort".into(),
                action: "/interaction/u/abort".into()
            },
        ]
    );
    assert_eq!(
        page_text("<h1>oops!</h1>\n<pre>error: invalid_request &amp; more</pre>"),
        "oops! error: invalid_request & more"
    );
    let origin = "http://127.0.0.1:4000";
    assert_eq!(on_provider(origin, "/auth/1").as_deref(), Some("/auth/1"));
    assert_eq!(
        on_provider(origin, "http://127.0.0.1:4000/auth?a=1").as_deref(),
        Some("/auth?a=1")
    );
    assert_eq!(
        on_provider(origin, "http://127.0.0.1:4000?a").as_deref(),
        Some("/?a")
    );
    assert_eq!(on_provider(origin, "http://127.0.0.1:40001/cb"), None);
    assert_eq!(on_provider(origin, "//evil.test/"), None);
    assert_eq!(on_provider(origin, "http://127.0.0.1:9/cb"), None);
    assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
}

#[test]
fn missing_node_names_the_packages() {
    assert_eq!(
        missing_node().to_string(),
        "node or npm not found on PATH: install them with 'apt-get install nodejs npm' \
         (or run scripts/ensure-deps)"
    );
}
