//! The stand-in against GitHub's documented behaviour.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::http::{Reply, request};

/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const CALLBACK: &str = "http://app.test/cb?x=1";

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn stand_in() -> GitHubStandIn {
    GitHubStandIn::start(
        "Iv1.client",
        "s3cret",
        &[
            GitHubUser::new(
                583231,
                "octocat",
                Some("The Octocat"),
                &[
                    ("old@example.com", false, true),
                    ("octocat@example.com", true, true),
                ],
            ),
            GitHubUser::new(2, "nameless", None, &[("n@example.com", true, false)]),
        ],
    )
    .unwrap()
}

async fn authorize(gh: &GitHubStandIn, pairs: &[(&str, &str)]) -> Reply {
    let path = format!("/login/oauth/authorize?{}", form(pairs));
    request(gh.addr(), "GET", &path, &[], None).await
}

/// A code for `login` (scopes `scope`), from a good authorize request.
async fn code_for(gh: &GitHubStandIn, login: &str, scope: &str) -> String {
    let r = authorize(
        gh,
        &[
            ("client_id", "Iv1.client"),
            ("redirect_uri", CALLBACK),
            ("scope", scope),
            ("state", "st 1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("login", login),
        ],
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let location = r.header("location").unwrap();
    let query = location.strip_prefix("http://app.test/cb?").unwrap();
    let answer = parse_form(query);
    assert_eq!(answer["x"], "1");
    assert_eq!(answer["state"], "st 1");
    answer["code"].clone()
}

async fn redeem(gh: &GitHubStandIn, pairs: &[(&str, &str)], accept: &str) -> Reply {
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", accept),
    ];
    let path = "/login/oauth/access_token";
    request(gh.addr(), "POST", path, &headers, Some(form(pairs))).await
}

fn token_form<'a>(code: &'a str, secret: &'a str, verifier: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", "Iv1.client"),
        ("client_secret", secret),
        ("code", code),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier),
    ]
}

async fn api(gh: &GitHubStandIn, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(gh.addr(), "GET", path, headers, None).await
}

#[test]
fn challenges_are_rfc_7636_s256() {
    assert_eq!(challenge_of(VERIFIER), CHALLENGE);
}

#[test]
fn forms_decode() {
    let parsed = parse_form("a=1&b=x+y%2Fz&a=2&empty&c=%zz%4");
    assert_eq!(parsed["a"], "1", "the first wins");
    assert_eq!(parsed["b"], "x y/z");
    assert_eq!(parsed["empty"], "");
    assert_eq!(parsed["c"], "%zz%4");
    assert_eq!(bearer("Bearer gho_x"), Some("gho_x"));
    assert_eq!(bearer("token gho_x"), Some("gho_x"));
    assert_eq!(bearer("Basic abc"), None);
    assert_eq!(bearer("Bearer "), None);
}

#[tokio::test]
async fn authorize_refuses_unknown_clients_and_missing_pkce() {
    let gh = stand_in();
    let good = [
        ("client_id", "Iv1.client"),
        ("redirect_uri", CALLBACK),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|&(k, v)| (k.to_owned(), if k == name { value } else { v }.to_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    };
    for (name, value) in [
        ("client_id", "Iv1.other"),
        ("client_id", ""),
        ("code_challenge_method", "plain"),
        ("code_challenge_method", ""),
        ("code_challenge", ""),
        ("code_challenge", "short"),
        ("redirect_uri", ""),
    ] {
        let pairs = with(name, value);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = authorize(&gh, &pairs).await;
        assert_eq!(r.status, 400, "{name}={value:?}: {}", r.body);
    }
    // Nobody signed in and no login: nothing to authorize.
    assert_eq!(authorize(&gh, &good).await.status, 400);
    gh.sign_in_as(2);
    let r = authorize(&gh, &good).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("http://app.test/cb?x=1&code=")
    );
    assert!(
        !r.header("location").unwrap().contains("state="),
        "none sent"
    );
    assert_eq!(gh.requests_to("/login/oauth/authorize").len(), 9);
}

#[tokio::test]
async fn the_code_buys_one_token_with_the_right_secret_redirect_and_verifier() {
    let gh = stand_in();
    let json = "application/json";
    let error = |r: &Reply| r.json()["error"].as_str().unwrap_or("").to_owned();

    // A wrong secret does not consume the code.
    let code = code_for(&gh, "octocat", "read:user user:email").await;
    let r = redeem(&gh, &token_form(&code, "wrong", VERIFIER), json).await;
    assert_eq!(
        (r.status, error(&r)),
        (200, "incorrect_client_credentials".into())
    );
    // A wrong verifier does, and fails.
    let r = redeem(&gh, &token_form(&code, "s3cret", CHALLENGE), json).await;
    assert_eq!(error(&r), "bad_verification_code");
    let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
    assert_eq!(error(&r), "bad_verification_code", "used");

    // Another redirect URI than at authorize.
    let code = code_for(&gh, "octocat", "read:user user:email").await;
    let mut pairs = token_form(&code, "s3cret", VERIFIER);
    pairs[3].1 = "http://app.test/cb";
    assert_eq!(
        error(&redeem(&gh, &pairs, json).await),
        "redirect_uri_mismatch"
    );

    // All right: a token, once.
    let code = code_for(&gh, "octocat", "read:user user:email").await;
    let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
    assert_eq!(r.status, 200);
    let answer = r.json();
    assert_eq!(answer["token_type"], "bearer");
    assert_eq!(answer["scope"], "read:user,user:email");
    let token = answer["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("gho_") && token.len() == 40, "{token}");
    let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), json).await;
    assert_eq!(error(&r), "bad_verification_code");
    let recorded = gh.requests_to("/login/oauth/access_token");
    assert_eq!(recorded.len(), 6);
    let sent = parse_form(&String::from_utf8_lossy(&recorded[4].body));
    assert_eq!(sent["code_verifier"], VERIFIER);

    // Without Accept: application/json, GitHub answers a form.
    let code = code_for(&gh, "octocat", "read:user").await;
    let r = redeem(&gh, &token_form(&code, "s3cret", VERIFIER), "*/*").await;
    let content_type = r.header("content-type").unwrap();
    assert!(content_type.starts_with("application/x-www-form-urlencoded"));
    let answer = parse_form(&r.body);
    assert_eq!(answer["token_type"], "bearer");
    assert_eq!(answer["scope"], "read:user");
    assert!(answer["access_token"].starts_with("gho_"));
}

#[tokio::test]
async fn the_user_api_wants_a_user_agent_a_token_and_user_email_for_addresses() {
    let gh = stand_in();
    let token_for = async |scope: &str| {
        let code = code_for(&gh, "octocat", scope).await;
        let form = token_form(&code, "s3cret", VERIFIER);
        let answer = redeem(&gh, &form, "application/json").await.json();
        answer["access_token"].as_str().unwrap().to_owned()
    };
    let full = format!("Bearer {}", token_for("read:user user:email").await);
    let narrow = format!("token {}", token_for("read:user").await);
    let ua = ("user-agent", "test");
    let get = async |path: &str, headers: &[(&str, &str)]| api(&gh, path, headers).await;

    let r = get("/api/v3/user", &[("authorization", &full)]).await;
    assert_eq!(r.status, 403, "no User-Agent");
    let r = get("/api/v3/user", &[ua]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Requires authentication");
    let r = get("/api/v3/user", &[ua, ("authorization", "Bearer gho_nope")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Bad credentials");

    let r = get("/api/v3/user", &[ua, ("authorization", &full)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let user = r.json();
    assert_eq!(user["id"], 583231);
    assert_eq!(user["login"], "octocat");
    assert_eq!(user["name"], "The Octocat");
    assert_eq!(user["email"], Value::Null, "kept private");
    assert_eq!(r.header("x-oauth-scopes"), Some("read:user, user:email"));
    let r = get("/api/v3/user/emails", &[ua, ("authorization", &full)]).await;
    let emails = r.json();
    assert_eq!(
        emails[0],
        json!({"email": "old@example.com", "primary": false, "verified": true,
               "visibility": null})
    );
    assert_eq!(
        emails[1],
        json!({"email": "octocat@example.com", "primary": true, "verified": true,
               "visibility": "private"})
    );
    assert_eq!(emails.as_array().unwrap().len(), 2);

    // Without user:email the addresses are hidden; the profile is not.
    let r = get("/api/v3/user/emails", &[ua, ("authorization", &narrow)]).await;
    assert_eq!(r.status, 404);
    let r = get("/api/v3/user", &[ua, ("authorization", &narrow)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(get("/api/v3/elsewhere", &[ua]).await.status, 404);
}

#[tokio::test]
async fn a_dropped_stand_in_closes_its_port() {
    let gh = stand_in();
    let addr = gh.addr();
    assert_eq!(gh.base_url(), format!("http://127.0.0.1:{}", addr.port()));
    drop(gh);
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
