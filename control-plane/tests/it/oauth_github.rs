//! Social login with the GitHub preset against a loopback stand-in for GitHub's OAuth app
//! flow (`portcullis_tests::github`: GitHub Enterprise's layout under the provider's
//! `issuer`), driven over HTTP as a browser would: sign-up with the primary verified
//! email, a second sign-in as the same user, an unverified primary email (kept off the user), and a wrong
//! client secret.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_tests::github::{GitHubStandIn, GitHubUser};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{Reply, Stack, claims_of, header, query_of, request};

const DONE: &str = "https://app.example/done";
const CLIENT_ID: &str = "Iv1.portcullis";
const CLIENT_SECRET: &str = "gh-client-secret-0123456789";
const OCTOCAT: u64 = 583_231;
const HUBOT: u64 = 7;

/// A stack and an application with provider `gh` (kind `github`) at a GitHub stand-in.
struct World {
    s: Stack,
    gh: GitHubStandIn,
    app: String,
}

async fn world(client_secret: &str) -> World {
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let (owner, app, _) = s.owner_with_app().await;
    let gh = GitHubStandIn::start(
        CLIENT_ID,
        CLIENT_SECRET,
        &[
            GitHubUser::new(
                OCTOCAT,
                "octocat",
                Some("The Octocat"),
                &[
                    ("octocat@users.noreply.example", false, true),
                    ("octocat@example.com", true, true),
                ],
            ),
            GitHubUser::new(
                HUBOT,
                "hubot",
                None,
                &[
                    ("hubot@example.com", true, false),
                    ("hubot-checked@example.com", false, true),
                ],
            ),
        ],
    )
    .unwrap();
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({
                "allowed_redirect_uris": [DONE],
                "oauth_providers": [{
                    "name": "gh", "kind": "github", "issuer": gh.base_url(),
                    "client_id": CLIENT_ID, "client_secret": client_secret,
                }],
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    World { s, gh, app }
}

fn callback_url(w: &World) -> String {
    format!("{}/v1/apps/{}/oauth/gh/callback", w.s.issuer, w.app)
}

/// `GET …/authorize`: the URL at GitHub and the binding cookie (`name=value`).
async fn authorize(w: &World) -> (String, String) {
    let query =
        serde_urlencoded::to_string([("redirect_uri", DONE), ("state", "app-state-1")]).unwrap();
    let r =
        w.s.get(
            &format!("/v1/apps/{}/oauth/gh/authorize?{query}", w.app),
            None,
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let binding = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (header(&r, "location").to_owned(), binding)
}

/// The browser at GitHub, signed in as `user`: where GitHub sends it back.
async fn at_github(w: &World, location: &str, user: u64) -> String {
    w.gh.sign_in_as(user);
    let path = location
        .strip_prefix(&w.gh.base_url())
        .expect("the authorization is at the provider's issuer");
    let r = request(w.gh.addr(), "GET", path, &[], None).await;
    assert_eq!(r.status, 302, "{}", r.body);
    header(&r, "location").to_owned()
}

/// The browser back at our callback with its cookie: the application's redirect, parsed.
async fn back_at_callback(w: &World, url: &str, binding: &str) -> HashMap<String, String> {
    let path = url
        .strip_prefix(&w.s.issuer)
        .expect("GitHub sends the browser to our callback");
    let r = request(w.s.addr, "GET", path, &[("cookie", binding)], None).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to = header(&r, "location");
    assert!(to.starts_with(DONE), "{to}");
    query_of(to)
}

/// A whole sign-in as `user`: the application's redirect, parsed.
async fn sign_in(w: &World, user: u64) -> HashMap<String, String> {
    let (location, binding) = authorize(w).await;
    let back = at_github(w, &location, user).await;
    back_at_callback(w, &back, &binding).await
}

async fn exchange(w: &World, code: &str) -> Reply {
    w.s.post(
        &format!("/v1/apps/{}/oauth/exchange", w.app),
        None,
        json!({ "code": code }),
    )
    .await
}

async fn me(w: &World, access: &str) -> serde_json::Value {
    let r =
        w.s.get(&format!("/v1/apps/{}/me", w.app), Some(access))
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn users(w: &World) -> i64 {
    w.s.sql_value(&format!(
        "SELECT count(*) FROM users WHERE app_id = '{}'",
        w.app
    ))
    .await
    .as_i64()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_then_sign_in_with_pkce_and_the_primary_verified_email() {
    let w = world(CLIENT_SECRET).await;

    // GitHub Enterprise's authorize endpoint under the issuer: PKCE S256, no nonce.
    let (location, binding) = authorize(&w).await;
    let prefix = format!("{}/login/oauth/authorize?", w.gh.base_url());
    assert!(location.starts_with(&prefix), "{location}");
    let sent = query_of(&location);
    assert_eq!(sent["client_id"], CLIENT_ID);
    assert_eq!(sent["redirect_uri"], callback_url(&w));
    assert_eq!(sent["scope"], "read:user user:email");
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["code_challenge"].len(), 43);
    assert_ne!(sent["state"], "app-state-1", "our own state, not the app's");
    assert!(!sent.contains_key("nonce"), "GitHub has no ID token");

    let back = at_github(&w, &location, OCTOCAT).await;
    let answer = back_at_callback(&w, &back, &binding).await;
    assert_eq!(answer["state"], "app-state-1");
    let r = exchange(&w, &answer["code"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["amr"], json!(["oauth"]));

    // The new user: the primary (verified) address, not the other verified one.
    let profile = me(&w, access).await;
    assert_eq!(profile["email"], "octocat@example.com");
    assert_eq!(profile["email_verified"], true);
    assert_eq!(profile["name"], "The Octocat");
    assert_eq!(profile["identities"][0]["provider"], "gh");
    assert_eq!(profile["identities"][0]["subject"], OCTOCAT.to_string());

    // What GitHub was sent: client_secret_post with the PKCE verifier of the challenge,
    // then the user API (Enterprise's /api/v3) with the access token.
    let token_requests = w.gh.requests_to("/login/oauth/access_token");
    assert_eq!(token_requests.len(), 1);
    let token_request = &token_requests[0];
    assert_eq!(token_request.method, "POST");
    assert_eq!(token_request.header("authorization"), None, "no Basic");
    assert_eq!(token_request.header("accept"), Some("application/json"));
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&token_request.body).unwrap();
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(form["redirect_uri"], callback_url(&w));
    assert_eq!(form["code"], query_of(&back)["code"]);
    let verifier = &form["code_verifier"];
    assert_eq!(
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        sent["code_challenge"]
    );
    for path in ["/api/v3/user", "/api/v3/user/emails"] {
        let calls = w.gh.requests_to(path);
        assert_eq!(calls.len(), 1, "{path}");
        let authorization = calls[0].header("authorization").unwrap_or_default();
        assert!(authorization.starts_with("Bearer gho_"), "{authorization}");
        assert!(
            calls[0]
                .header("user-agent")
                .is_some_and(|ua| !ua.is_empty())
        );
    }

    // Again: the same user (by provider and GitHub id), no second account.
    let answer = sign_in(&w, OCTOCAT).await;
    let again = exchange(&w, &answer["code"]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["user_id"], tokens["user_id"]);
    assert_eq!(users(&w).await, 1);
    let profile = me(&w, again.json()["access_token"].as_str().unwrap()).await;
    assert_eq!(profile["identities"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_primary_email_stays_on_the_identity_only() {
    let w = world(CLIENT_SECRET).await;
    let answer = sign_in(&w, HUBOT).await;
    let r = exchange(&w, &answer["code"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let profile = me(&w, r.json()["access_token"].as_str().unwrap()).await;
    // Not the user's address: it would squat it against its real owner.
    assert_eq!(profile["email"], serde_json::Value::Null);
    assert_eq!(profile["email_verified"], false);
    assert_eq!(profile["identities"][0]["subject"], HUBOT.to_string());
    assert_eq!(profile["identities"][0]["email"], "hubot@example.com");
    assert_eq!(profile["identities"][0]["email_verified"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_ends_in_invalid_token_and_creates_nothing() {
    let w = world("not-the-client-secret").await;
    let answer = sign_in(&w, OCTOCAT).await;
    assert_eq!(answer["error"], "invalid_token", "{answer:?}");
    assert_eq!(answer["state"], "app-state-1");
    assert!(!answer.contains_key("code"));
    assert_eq!(users(&w).await, 0);
    // GitHub was asked (and refused with status 200); its user API never was.
    assert_eq!(w.gh.requests_to("/login/oauth/access_token").len(), 1);
    assert!(w.gh.requests_to("/api/v3/user").is_empty());
}
