//! DPoP (RFC 9449) at the token-issuing routes beyond `/login` (API.md §3 "DPoP"): a
//! magic link (`/magic-link/verify`), a social sign-in's one-time code (`/oauth/exchange`)
//! and the MFA step (`/login/mfa`). Each binds its tokens to the proof's key, binds the
//! session's refresh tokens to it, and refuses a proof that does not fit the request
//! before spending what it was sent with (the link, the code, the `mfa_token`).

use std::time::Duration;

use portcullis_tests::dpop::{DpopClient, DpopKey};
use portcullis_tests::oidc::OidcAccount;
use serde_json::{Value, json};

use crate::dpop::{World, assert_refused, jkt_of, opts};
use crate::support::{Reply, Stack, claims_of, header, link_in, oathtool, unix_now, with_smtp};

/// Proofs by (or claiming to be by) `key` that do not fit `POST route`, each with why.
async fn misfits(
    w: &World,
    key: &DpopKey,
    other: &DpopKey,
    route: &str,
) -> Vec<(&'static str, String)> {
    let now = unix_now();
    vec![
        ("another path", w.fresh(key, "POST", "/login").await),
        ("another method", w.fresh(key, "GET", route).await),
        (
            "alg none",
            w.proof(key, "POST", route, opts(|o| o.alg = Some("none".into())))
                .await,
        ),
        (
            "too old",
            w.proof(key, "POST", route, opts(|o| o.iat = Some(now - 600)))
                .await,
        ),
        (
            "signed by another key",
            w.proof(
                key,
                "POST",
                route,
                opts(|o| o.signed_by = Some(other.clone())),
            )
            .await,
        ),
    ]
}

/// `POST route` with `proof` as its `DPoP` header.
async fn with_proof(w: &World, route: &str, proof: String, body: &Value) -> Reply {
    w.send("POST", route, &[("dpop", &proof)], body.clone())
        .await
}

/// `r` is a token answer bound to `key`; the session's refresh tokens need a proof by it
/// (none, or another key's: refused and nothing spent), and the successor stays bound.
async fn assert_bound(w: &World, r: &Reply, key: &DpopKey, other: &DpopKey) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!header(r, "dpop-nonce").is_empty(), "{:?}", r.headers);
    let tokens = r.json();
    assert_eq!(tokens["token_type"], "DPoP", "{}", r.body);
    assert_eq!(jkt_of(&tokens), key.jkt.as_str());

    let refresh = &tokens["refresh_token"];
    assert_refused(&w.refresh(refresh, None).await, "a refresh without a proof");
    let wrong = w.fresh(other, "POST", "/token/refresh").await;
    assert_refused(
        &w.refresh(refresh, Some(&wrong)).await,
        "a refresh by another key",
    );
    let right = w.fresh(key, "POST", "/token/refresh").await;
    let r = w.refresh(refresh, Some(&right)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let next = r.json();
    assert_eq!(next["token_type"], "DPoP", "{}", r.body);
    assert_eq!(jkt_of(&next), key.jkt.as_str());
    assert_eq!(next["session_id"], tokens["session_id"]);
    assert_refused(
        &w.refresh(&next["refresh_token"], None).await,
        "the successor without a proof",
    );
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magic_link_binds_its_tokens_and_a_refused_proof_spends_no_link() {
    let (s, smtp) = with_smtp(&[]).await;
    let (_, app, api_key) = s.owner_with_app().await;
    s.register(&app, "ann@example.com").await;
    let w = World::on(s, app, api_key, DpopClient::start().await.unwrap());
    let (key, other) = (w.key("ES256").await, w.key("EdDSA").await);
    let r = w
        .send(
            "POST",
            "/magic-link",
            &[],
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let (_, token) = link_in(&mail.text);
    let body = json!({ "token": token });
    let verify = |proof| with_proof(&w, "/magic-link/verify", proof, &body);

    // Proofs that do not fit: refused, and the link is not spent.
    let sessions = w.sessions().await;
    for (why, proof) in misfits(&w, &key, &other, "/magic-link/verify").await {
        assert_refused(&verify(proof).await, why);
    }
    // Proofs required and none sent: refused; a nonce not ours: one to use instead.
    w.settings(json!({"dpop": {"required": true}})).await;
    let r = w
        .send("POST", "/magic-link/verify", &[], body.clone())
        .await;
    assert_refused(&r, "required, no proof");
    let made_up = opts(|o| o.nonce = Some("made-up".into()));
    let r = verify(w.proof(&key, "POST", "/magic-link/verify", made_up).await).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "use_dpop_nonce"),
        "{}",
        r.body
    );
    let nonce = header(&r, "dpop-nonce").to_owned();
    assert_eq!(w.sessions().await, sessions, "no sign-in went through");

    // The same link with a proof that fits (and the nonce given): tokens bound to its key.
    let ours = opts(|o| o.nonce = Some(nonce));
    let good = w.proof(&key, "POST", "/magic-link/verify", ours).await;
    let r = verify(good.clone()).await;
    let tokens = assert_bound(&w, &r, &key, &other).await;
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["magic"]));
    // The proof is good once; the link too.
    assert_refused(&verify(good).await, "a replayed proof");
    let again = verify(w.fresh(&key, "POST", "/magic-link/verify").await).await;
    assert_eq!(again.code(), "token_expired_or_used", "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_social_sign_in_code_binds_its_tokens_and_a_refused_proof_spends_no_code() {
    let accounts = [OidcAccount::new("alice-sub", "alice@example.com", true)];
    let social = crate::oauth::world(&accounts, false).await;
    let dpop = DpopClient::start().await.unwrap();
    // The code lives 60 s: the proof client is up before the sign-in at the provider.
    let code = crate::oauth::sign_in(&social, "alice-sub").await["code"].clone();
    let crate::oauth::World { s, app, owner, .. } = social;
    let w = World::on(s, app, owner, dpop);
    let (key, other) = (w.key("EdDSA").await, w.key("ES256").await);
    let body = json!({ "code": code });
    let exchange = |proof| with_proof(&w, "/oauth/exchange", proof, &body);

    let sessions = w.sessions().await;
    for (why, proof) in misfits(&w, &key, &other, "/oauth/exchange").await {
        assert_refused(&exchange(proof).await, why);
    }
    assert_eq!(w.sessions().await, sessions, "no sign-in went through");

    let good = w.fresh(&key, "POST", "/oauth/exchange").await;
    let r = exchange(good.clone()).await;
    let tokens = assert_bound(&w, &r, &key, &other).await;
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["oauth"]));
    assert_refused(&exchange(good).await, "a replayed proof");
    let again = exchange(w.fresh(&key, "POST", "/oauth/exchange").await).await;
    assert_eq!(again.code(), "token_expired_or_used", "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mfa_step_binds_its_tokens_and_a_refused_proof_spends_no_mfa_token() {
    let s = Stack::start().await;
    let (_, app, api_key) = s.owner_with_app().await;
    let registered = s.register(&app, "ann@example.com").await;
    let access = registered["access_token"].as_str().unwrap();
    let (secret, _, enrolled_step) = crate::mfa::enrol_totp(&s, &app, access).await;
    let w = World::on(s, app, api_key, DpopClient::start().await.unwrap());
    let (key, other) = (w.key("ES256").await, w.key("EdDSA").await);

    // The password step, with a proof: no tokens yet, a step-up.
    let r = w.login(Some(&w.fresh(&key, "POST", "/login").await)).await;
    let challenge = r.json();
    assert_eq!(challenge["mfa_required"], true, "{}", r.body);
    assert!(challenge.get("access_token").is_none());
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_owned();
    // One step past the enrolment's code (spent): inside the window, once.
    let code = oathtool(&secret, (enrolled_step + 1) * 30);
    let body = json!({"mfa_token": mfa_token, "method": "totp", "code": code});
    let second = |proof| with_proof(&w, "/login/mfa", proof, &body);

    // Refused proofs spend neither the mfa_token nor the code, nor count as wrong codes
    // (five of those would end the step-up).
    let sessions = w.sessions().await;
    for (why, proof) in misfits(&w, &key, &other, "/login/mfa").await {
        assert_refused(&second(proof).await, why);
    }
    // The step-up is bound to the first step's key: another key's proof, or none, cannot
    // finish it (and spends nothing either).
    assert_refused(
        &second(w.fresh(&other, "POST", "/login/mfa").await).await,
        "another key than the first step's",
    );
    let bare = w.send("POST", "/login/mfa", &[], body.clone()).await;
    assert_refused(&bare, "no proof after a first step with one");
    assert_eq!(w.sessions().await, sessions, "no sign-in went through");

    let good = w.fresh(&key, "POST", "/login/mfa").await;
    let r = second(good.clone()).await;
    let tokens = assert_bound(&w, &r, &key, &other).await;
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]));
    assert_refused(&second(good).await, "a replayed proof");
    let again = second(w.fresh(&key, "POST", "/login/mfa").await).await;
    assert_eq!(again.code(), "invalid_mfa_token", "{}", again.body);
}
