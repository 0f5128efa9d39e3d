//! Social login against a real OpenID provider (npm `oidc-provider`, certified) on
//! loopback, driven over HTTP as a browser would: sign-up, sign-in, linking and
//! unlinking, and the refusals (state, cookie, replayed code, nonce, redirect URI,
//! unverified email, PKCE downgrade, provider down).

use std::collections::HashMap;

use portcullis_tests::oidc::{OidcAccount, OidcClient, OidcProvider};
use serde_json::json;

use crate::support::{PASSWORD, Reply, Stack, claims_of, header, query_of, request};

const DONE: &str = "https://app.example/done";
const CLIENT_SECRET: &str = "op-client-secret-0123456789";

/// A stack, an application with provider `corp` at a real OpenID provider, and the
/// owner's token.
pub(crate) struct World {
    pub(crate) s: Stack,
    pub(crate) op: OidcProvider,
    pub(crate) app: String,
    pub(crate) owner: String,
}

pub(crate) async fn world(accounts: &[OidcAccount], auto_link: bool) -> World {
    world_with(accounts, auto_link, false).await
}

/// With `default_claims`, the provider keeps the scopes' claims for UserInfo.
async fn world_with(accounts: &[OidcAccount], auto_link: bool, default_claims: bool) -> World {
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let (owner, app, _) = s.owner_with_app().await;
    let callback = format!("{}/v1/apps/{app}/oauth/corp/callback", s.issuer);
    let op = tokio::task::block_in_place(|| {
        let clients = [OidcClient::new("portcullis", CLIENT_SECRET, &[&callback])];
        match default_claims {
            true => OidcProvider::start_with_default_claims(&clients, accounts),
            false => OidcProvider::start(&clients, accounts),
        }
        .unwrap()
    });
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{app}/settings"),
            Some(&owner),
            Some(json!({
                "allowed_redirect_uris": [DONE],
                "oauth_providers": [{
                    "name": "corp", "kind": "oidc", "issuer": op.issuer(),
                    "client_id": "portcullis", "client_secret": CLIENT_SECRET,
                    "auto_link_verified_email": auto_link,
                }],
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    World { s, op, app, owner }
}

/// `GET …/authorize`: the provider URL and the binding cookie (`name=value`).
async fn authorize(w: &World, query: &str) -> (String, String) {
    let r =
        w.s.get(
            &format!("/v1/apps/{}/oauth/corp/authorize?{query}", w.app),
            None,
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let cookie = header(&r, "set-cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
    let binding = cookie.split(';').next().unwrap().to_owned();
    (header(&r, "location").to_owned(), binding)
}

fn start_query() -> String {
    serde_urlencoded::to_string([("redirect_uri", DONE), ("state", "app-state-1")]).unwrap()
}

/// The callback as the browser reaches it (the path of the provider's redirect).
async fn callback(w: &World, callback_url: &str, cookie: Option<&str>) -> Reply {
    let path = callback_url
        .strip_prefix(&w.s.issuer)
        .expect("the provider sends the browser to our callback");
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", *c)).collect();
    request(w.s.addr, "GET", path, &headers, None).await
}

/// A whole sign-in as `sub`: the application's redirect (query parsed).
pub(crate) async fn sign_in(w: &World, sub: &str) -> HashMap<String, String> {
    let (location, binding) = authorize(w, &start_query()).await;
    let back = w.op.sign_in(&location, sub).await.unwrap();
    let r = callback(w, &back, Some(&binding)).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to = header(&r, "location");
    assert!(to.starts_with(DONE), "{to}");
    query_of(to)
}

async fn exchange(w: &World, code: &str) -> Reply {
    w.s.post(
        &format!("/v1/apps/{}/oauth/exchange", w.app),
        None,
        json!({ "code": code }),
    )
    .await
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
async fn sign_up_then_sign_in_with_pkce_state_and_a_one_time_code() {
    let w = world(
        &[
            OidcAccount::new("alice-sub", "alice@example.com", true),
            OidcAccount::new("uma-sub", "uma@example.com", false),
        ],
        false,
    )
    .await;

    // The secret is sealed at rest and masked when read.
    let shown =
        w.s.get(&format!("/v1/apps/{}/settings", w.app), Some(&w.owner))
            .await
            .json();
    assert_eq!(shown["oauth_providers"][0]["client_secret"], "********");
    assert!(
        shown["oauth_providers"][0]
            .get("client_secret_sealed")
            .is_none()
    );
    let stored =
        w.s.sql_value(&format!(
            "SELECT settings::text FROM apps WHERE id = '{}'",
            w.app
        ))
        .await;
    assert!(!stored.as_str().unwrap().contains(CLIENT_SECRET));

    // The authorization request: code flow, PKCE S256, state and nonce.
    let (location, binding) = authorize(&w, &start_query()).await;
    assert!(location.starts_with(&w.op.issuer()), "{location}");
    let sent = query_of(&location);
    assert_eq!(sent["response_type"], "code");
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["code_challenge"].len(), 43);
    assert!(sent["state"].len() >= 43 && sent["nonce"].len() >= 22);
    assert_ne!(sent["state"], "app-state-1", "our own state, not the app's");

    let back = w.op.sign_in(&location, "alice-sub").await.unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to = header(&r, "location").to_owned();
    let answer = query_of(&to);
    assert_eq!(answer["state"], "app-state-1");
    let code = &answer["code"];

    // The code: once, for the usual tokens with amr ["oauth"].
    let r = exchange(&w, code).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["oauth"]));
    assert_eq!(exchange(&w, code).await.code(), "token_expired_or_used");
    // The callback is single use too.
    assert_eq!(
        callback(&w, &back, Some(&binding)).await.code(),
        "invalid_state"
    );

    // The new user: the provider's verified email, no password, the identity in /me.
    let me =
        w.s.get(
            &format!("/v1/apps/{}/me", w.app),
            tokens["access_token"].as_str(),
        )
        .await
        .json();
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["identities"][0]["provider"], "corp");
    assert_eq!(me["identities"][0]["subject"], "alice-sub");
    let r =
        w.s.post(
            &format!("/v1/apps/{}/login", w.app),
            None,
            json!({"email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 401, "no password signs in an OAuth-made user");

    // Again: the same user (by provider and subject), no second account.
    let answer = sign_in(&w, "alice-sub").await;
    let again = exchange(&w, &answer["code"]).await.json();
    assert_eq!(again["user_id"], tokens["user_id"]);
    assert_eq!(users(&w).await, 1, "one user after two sign-ins");

    // The application's own PKCE on the code: without the verifier, or with a wrong one,
    // nothing (and the code survives for the right one).
    let verifier = "app-verifier-0123456789-0123456789-0123456789";
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let query = serde_urlencoded::to_string([
        ("redirect_uri", DONE),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let (location, binding) = authorize(&w, &query).await;
    let back = w.op.sign_in(&location, "alice-sub").await.unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    let code = query_of(header(&r, "location"))["code"].clone();
    let path = format!("/v1/apps/{}/oauth/exchange", w.app);
    assert_eq!(exchange(&w, &code).await.status, 410);
    let wrong =
        w.s.post(
            &path,
            None,
            json!({"code": code, "code_verifier": "not-the-verifier"}),
        )
        .await;
    assert_eq!(wrong.status, 410);
    let right =
        w.s.post(
            &path,
            None,
            json!({"code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(right.status, 200, "{}", right.body);

    // An address the provider did not verify is kept off the user (it would squat it):
    // its owner can still register it.
    let uma = exchange(&w, &sign_in(&w, "uma-sub").await["code"])
        .await
        .json();
    let me =
        w.s.get(
            &format!("/v1/apps/{}/me", w.app),
            uma["access_token"].as_str(),
        )
        .await
        .json();
    assert_eq!(me["email"], json!(null));
    assert_eq!(me["identities"][0]["email"], "uma@example.com");
    w.s.register(&w.app, "uma@example.com").await;

    // The last way to sign in cannot be unlinked.
    let unlink =
        w.s.call(
            "DELETE",
            &format!("/v1/apps/{}/oauth/corp/link", w.app),
            again["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!((unlink.status, unlink.code().as_str()), (403, "forbidden"));

    let events =
        w.s.sql_value(&format!(
            "SELECT string_agg(event, ',' ORDER BY id) FROM audit_events WHERE app_id = '{}'",
            w.app
        ))
        .await;
    let events = events.as_str().unwrap();
    for e in ["user.created", "oauth.linked", "login.succeeded"] {
        assert!(events.contains(e), "{e} in {events}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_cookie_nonce_redirect_and_pkce_are_enforced() {
    let w = world(
        &[OidcAccount::new("bob-sub", "bob@example.com", true)],
        false,
    )
    .await;

    // A redirect URI outside the allowlist, or none.
    let bad = serde_urlencoded::to_string([("redirect_uri", "https://evil.example/")]).unwrap();
    let r =
        w.s.get(
            &format!("/v1/apps/{}/oauth/corp/authorize?{bad}", w.app),
            None,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"));
    let r =
        w.s.get(
            &format!("/v1/apps/{}/oauth/nope/authorize?{}", w.app, start_query()),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    // No cookie, another browser's cookie, a made-up state: invalid_state.
    let (location, binding) = authorize(&w, &start_query()).await;
    let back = w.op.sign_in(&location, "bob-sub").await.unwrap();
    assert_eq!(callback(&w, &back, None).await.code(), "invalid_state");
    let (_, other_binding) = authorize(&w, &start_query()).await;
    assert_eq!(
        callback(&w, &back, Some(&other_binding)).await.code(),
        "invalid_state"
    );
    let forged = back.replace(&query_of(&back)["state"], "forged-state");
    assert_eq!(
        callback(&w, &forged, Some(&binding)).await.code(),
        "invalid_state"
    );
    assert_eq!(users(&w).await, 0, "nothing was created");

    // A nonce the flow did not send (the ID token carries it): refused, nothing created.
    let (location, binding) = authorize(&w, &start_query()).await;
    let nonce = query_of(&location)["nonce"].clone();
    let tampered = location.replace(&nonce, "another-nonce-value-000000");
    let back = w.op.sign_in(&tampered, "bob-sub").await.unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    let answer = query_of(header(&r, "location"));
    assert_eq!(answer["error"], "invalid_token");
    assert!(!answer.contains_key("code"));
    assert_eq!(users(&w).await, 0);

    // A PKCE-less or `plain` request (a downgrade on the way): the provider refuses it,
    // and the error comes back to the application.
    for (from, to) in [
        ("code_challenge_method=S256", "code_challenge_method=plain"),
        ("&code_challenge_method=S256", ""),
    ] {
        let (location, binding) = authorize(&w, &start_query()).await;
        let downgraded = location.replace(from, to);
        let downgraded = if to.is_empty() {
            let challenge = query_of(&location)["code_challenge"].clone();
            downgraded.replace(&format!("&code_challenge={challenge}"), "")
        } else {
            downgraded
        };
        let back = w.op.sign_in(&downgraded, "bob-sub").await.unwrap();
        assert!(back.contains("error=invalid_request"), "{back}");
        let r = callback(&w, &back, Some(&binding)).await;
        let answer = query_of(header(&r, "location"));
        assert_eq!(answer["error"], "access_denied", "{answer:?}");
    }
    assert_eq!(users(&w).await, 0);

    // Denied at the provider: back with an error, nothing created.
    let (location, binding) = authorize(&w, &start_query()).await;
    let back = w.op.sign_in_and_deny(&location, "bob-sub").await.unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    assert_eq!(query_of(header(&r, "location"))["error"], "access_denied");
    assert_eq!(users(&w).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_link_only_when_verified_and_allowed_otherwise_explicitly() {
    let accounts = [
        OidcAccount::new("carol-sub", "carol@example.com", true),
        OidcAccount::new("dave-sub", "dave@example.com", false),
        OidcAccount::new("mallory-sub", "erin@example.com", false),
        OidcAccount::new("erin-sub", "erin-at-op@example.com", true),
    ];
    let w = world(&accounts, false).await;
    for email in ["carol@example.com", "dave@example.com", "erin@example.com"] {
        w.s.register(&w.app, email).await;
    }
    // Verified, but the application does not allow auto-linking: refused.
    assert_eq!(sign_in(&w, "carol-sub").await["error"], "user_exists");
    // An identity claiming someone's address is never matched by email alone.
    assert_eq!(sign_in(&w, "mallory-sub").await["error"], "user_exists");
    let r =
        w.s.call(
            "PUT",
            &format!("/v1/apps/{}/settings", w.app),
            Some(&w.owner),
            Some(json!({"oauth_providers": [{
                "name": "corp", "kind": "oidc", "issuer": w.op.issuer(),
                "client_id": "portcullis", "client_secret": "********",
                "auto_link_verified_email": true,
            }]})),
        )
        .await;
    assert_eq!(r.status, 200, "the masked secret is kept: {}", r.body);
    // The local account never proved its address (anyone could have registered it in
    // advance): still refused.
    assert_eq!(sign_in(&w, "carol-sub").await["error"], "user_exists");
    w.s.sql("UPDATE users SET email_verified = true WHERE email_canonical = 'carol@example.com'")
        .await;
    // Now a verified address links; an unverified one still does not.
    let answer = sign_in(&w, "carol-sub").await;
    let tokens = exchange(&w, &answer["code"]).await.json();
    let carol = w.s.login(&w.app, "carol@example.com").await;
    assert_eq!(
        tokens["user_id"], carol["user_id"],
        "linked to the existing user"
    );
    assert_eq!(sign_in(&w, "dave-sub").await["error"], "user_exists");
    assert_eq!(users(&w).await, 3);

    // Erin links explicitly from her session (signed in just now), then signs in with it.
    let erin = w.s.login(&w.app, "erin@example.com").await;
    let access = erin["access_token"].as_str().unwrap();
    let r =
        w.s.post(
            &format!("/v1/apps/{}/oauth/corp/link", w.app),
            Some(access),
            json!({"redirect_uri": DONE, "state": "linking"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.json()["authorization_url"].as_str().unwrap().to_owned();
    let path = url.strip_prefix(&w.s.issuer).unwrap();
    let r = request(w.s.addr, "GET", path, &[], None).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let binding = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let location = header(&r, "location").to_owned();
    // The ticket is single use.
    assert_eq!(
        request(w.s.addr, "GET", path, &[], None).await.code(),
        "token_expired_or_used"
    );
    assert!(location.contains("prompt=consent"), "{location}");
    let back = w.op.sign_in(&location, "erin-sub").await.unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    let answer = query_of(header(&r, "location"));
    assert_eq!(answer["state"], "linking");
    // Only Erin's own session finishes the link: not another user's, not without one.
    let confirm = format!("/v1/apps/{}/oauth/corp/link/confirm", w.app);
    let link_code = json!({"code": answer["link_code"]});
    let carol_access = carol["access_token"].as_str().unwrap();
    let r =
        w.s.post(&confirm, Some(carol_access), link_code.clone())
            .await;
    assert_eq!(r.status, 410, "{}", r.body);
    assert_eq!(
        w.s.post(&confirm, None, link_code.clone()).await.status,
        401
    );
    let r = w.s.post(&confirm, Some(access), link_code.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        w.s.post(&confirm, Some(access), link_code).await.status,
        410
    );
    let answer = sign_in(&w, "erin-sub").await;
    let tokens = exchange(&w, &answer["code"]).await.json();
    assert_eq!(tokens["user_id"], erin["user_id"]);
    // The same identity cannot be linked to Carol too.
    let r =
        w.s.post(
            &format!("/v1/apps/{}/oauth/corp/link", w.app),
            Some(carol_access),
            json!({"redirect_uri": DONE}),
        )
        .await;
    let url = r.json()["authorization_url"].as_str().unwrap().to_owned();
    let r = request(
        w.s.addr,
        "GET",
        url.strip_prefix(&w.s.issuer).unwrap(),
        &[],
        None,
    )
    .await;
    let binding = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let back =
        w.op.sign_in(header(&r, "location"), "erin-sub")
            .await
            .unwrap();
    let r = callback(&w, &back, Some(&binding)).await;
    assert_eq!(query_of(header(&r, "location"))["error"], "identity_linked");

    // Erin has a password: she may unlink, and /me shows it gone.
    let unlink =
        w.s.call(
            "DELETE",
            &format!("/v1/apps/{}/oauth/corp/link", w.app),
            Some(access),
            None,
        )
        .await;
    assert_eq!(unlink.status, 204, "{}", unlink.body);
    let me =
        w.s.get(&format!("/v1/apps/{}/me", w.app), Some(access))
            .await
            .json();
    assert_eq!(me["identities"], json!([]));
    // Linking needs a session (no bearer: 401).
    let r =
        w.s.post(
            &format!("/v1/apps/{}/oauth/corp/link", w.app),
            None,
            json!({"redirect_uri": DONE}),
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_gives_a_clear_error_and_creates_nothing() {
    let mut w = world(
        &[OidcAccount::new("fay-sub", "fay@example.com", true)],
        false,
    )
    .await;
    // Down after the user signed in there: the code cannot be redeemed.
    let (location, binding) = authorize(&w, &start_query()).await;
    let back = w.op.sign_in(&location, "fay-sub").await.unwrap();
    tokio::task::block_in_place(|| w.op.stop());
    let r = callback(&w, &back, Some(&binding)).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(query_of(header(&r, "location"))["error"], "unavailable");
    assert_eq!(users(&w).await, 0);
    // A provider never reached (discovery fails): 503 at once.
    let r =
        w.s.call(
            "PUT",
            &format!("/v1/apps/{}/settings", w.app),
            Some(&w.owner),
            Some(json!({"oauth_providers": [{
                "name": "corp", "kind": "oidc", "issuer": "http://127.0.0.1:9",
                "client_id": "portcullis", "client_secret": "x",
            }]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r =
        w.s.get(
            &format!("/v1/apps/{}/oauth/corp/authorize?{}", w.app, start_query()),
            None,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (503, "unavailable"));
    // Back up: sign-ins work again.
    tokio::task::block_in_place(|| w.op.restart().unwrap());
    let r =
        w.s.call(
            "PUT",
            &format!("/v1/apps/{}/settings", w.app),
            Some(&w.owner),
            Some(json!({"oauth_providers": [{
                "name": "corp", "kind": "oidc", "issuer": w.op.issuer(),
                "client_id": "portcullis", "client_secret": CLIENT_SECRET,
            }]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = sign_in(&w, "fay-sub").await;
    assert_eq!(exchange(&w, &answer["code"]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_kept_for_userinfo_is_read_from_userinfo() {
    // oidc-provider's own default: the ID token of the code flow carries only `sub`.
    let accounts = [
        OidcAccount::new("carol-sub", "carol@example.com", true),
        OidcAccount::new("bob-sub", "bob@example.com", true),
    ];
    let w = world_with(&accounts, true, true).await;
    w.s.register(&w.app, "carol@example.com").await;
    w.s.sql("UPDATE users SET email_verified = true WHERE email_canonical = 'carol@example.com'")
        .await;
    // The verified address from UserInfo links to the existing account...
    let answer = sign_in(&w, "carol-sub").await;
    let tokens = exchange(&w, &answer["code"]).await.json();
    let carol = w.s.login(&w.app, "carol@example.com").await;
    assert_eq!(tokens["user_id"], carol["user_id"], "{answer:?}");
    // ...and a new user signs up with it, verified.
    let answer = sign_in(&w, "bob-sub").await;
    let tokens = exchange(&w, &answer["code"]).await.json();
    let bob =
        w.s.sql_value(&format!(
            "SELECT email || ' ' || email_verified FROM users WHERE id = '{}'",
            tokens["user_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(bob, "bob@example.com true");
    let identity =
        w.s.sql_value("SELECT email FROM oauth_identities WHERE subject = 'bob-sub'")
            .await;
    assert_eq!(identity, "bob@example.com");
}
