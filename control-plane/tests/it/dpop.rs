//! DPoP (RFC 9449) at the control plane, with proofs from an independent client (panva's
//! `dpop` through `portcullis_tests::dpop`, and its hand-built attacks): tokens bound to
//! the proof's key (`cnf.jkt`, `token_type: DPoP`), refresh tokens that only their key
//! can use, first use of every proof, nonces (§8), the `dpop` settings, the account
//! routes with a bound token, and the OpenID Provider's token endpoint and UserInfo.

use std::time::Duration;

use portcullis_tests::dpop::{DpopClient, DpopKey, ProofOpts};
use serde_json::{Value, json};

use crate::provider::{Browser, Provider, REDIRECT, fields, sign_in};
use crate::support::{Reply, Stack, claims_of, eventually, header, request, unix_now};

/// A stack with one application, one user (`ann@example.com`, for [`World::login`]) and
/// the proof client.
pub(crate) struct World {
    s: Stack,
    app: String,
    api_key: String,
    dpop: DpopClient,
}

impl World {
    async fn start() -> Self {
        let s = Stack::start().await;
        let (_, app, api_key) = s.owner_with_app().await;
        s.register(&app, "ann@example.com").await;
        Self::on(s, app, api_key, DpopClient::start().await.unwrap())
    }

    /// A stack set up elsewhere, with its application `app` and the proof client.
    pub(crate) fn on(s: Stack, app: String, api_key: String, dpop: DpopClient) -> Self {
        Self {
            s,
            app,
            api_key,
            dpop,
        }
    }

    pub(crate) fn path(&self, route: &str) -> String {
        format!("/v1/apps/{}{route}", self.app)
    }

    /// The URL a proof names for `route` (the control plane's public URL is its issuer).
    pub(crate) fn htu(&self, route: &str) -> String {
        format!("{}{}", self.s.issuer, self.path(route))
    }

    pub(crate) async fn key(&self, alg: &str) -> DpopKey {
        self.dpop.key(alg).await.unwrap()
    }

    /// A proof by `key` for `method route`, made by the package.
    pub(crate) async fn fresh(&self, key: &DpopKey, method: &str, route: &str) -> String {
        self.proof(key, method, route, ProofOpts::default()).await
    }

    /// A proof by `key` for `method route`.
    pub(crate) async fn proof(
        &self,
        key: &DpopKey,
        method: &str,
        route: &str,
        opts: ProofOpts,
    ) -> String {
        let htu = self.htu(route);
        self.dpop.proof(key, method, &htu, &opts).await.unwrap()
    }

    pub(crate) async fn settings(&self, patch: Value) {
        let path = self.path("/settings");
        let r = self
            .s
            .call("PUT", &path, Some(&self.api_key), Some(patch))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// A JSON request to `route` with these headers.
    pub(crate) async fn send(
        &self,
        method: &str,
        route: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let body = (method != "GET").then(|| body.to_string());
        request(self.s.addr, method, &self.path(route), headers, body).await
    }

    /// `POST /login` as ann, with `proof` when given.
    pub(crate) async fn login(&self, proof: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = proof.iter().map(|p| ("dpop", *p)).collect();
        let body = json!({"email": "ann@example.com", "password": crate::support::PASSWORD});
        self.send("POST", "/login", &headers, body).await
    }

    pub(crate) async fn refresh(&self, refresh_token: &Value, proof: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = proof.iter().map(|p| ("dpop", *p)).collect();
        let body = json!({ "refresh_token": refresh_token });
        self.send("POST", "/token/refresh", &headers, body).await
    }

    pub(crate) async fn sessions(&self) -> i64 {
        let n = self.s.sql_value("SELECT count(*) FROM sessions").await;
        n.as_i64().unwrap()
    }
}

/// A refusal of the proof: `401 invalid_dpop_proof` with the DPoP challenge.
pub(crate) fn assert_refused(r: &Reply, why: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "invalid_dpop_proof"),
        "{why}: {}",
        r.body
    );
    let challenge = header(r, "www-authenticate");
    assert!(
        challenge.starts_with("DPoP error=\"invalid_dpop_proof\"") && challenge.contains("ES256"),
        "{why}: {challenge}"
    );
}

/// The `cnf.jkt` of the access token of a token answer.
pub(crate) fn jkt_of(tokens: &Value) -> Value {
    claims_of(tokens["access_token"].as_str().unwrap())["cnf"]["jkt"].clone()
}

/// Proof options: the defaults, changed by `f`.
pub(crate) fn opts(f: impl FnOnce(&mut ProofOpts)) -> ProofOpts {
    let mut opts = ProofOpts::default();
    f(&mut opts);
    opts
}

#[tokio::test]
async fn tokens_are_bound_and_a_bound_refresh_token_needs_its_key() {
    let w = World::start().await;
    let (ed, p256) = (w.key("EdDSA").await, w.key("ES256").await);

    // Without a proof nothing changes: Bearer, no cnf.
    let plain = w.login(None).await.json();
    assert_eq!(plain["token_type"], "Bearer");
    assert!(claims_of(plain["access_token"].as_str().unwrap())["cnf"].is_null());

    // With one, both algorithms: bound to the proof's key, and a nonce for the next.
    let proof = w.fresh(&ed, "POST", "/login").await;
    let r = w.login(Some(&proof)).await;
    assert_eq!(r.status, 200, "{} ({:?})", r.body, w.dpop.versions());
    assert!(!header(&r, "dpop-nonce").is_empty());
    let first = r.json();
    assert_eq!(first["token_type"], "DPoP");
    assert_eq!(jkt_of(&first), ed.jkt.as_str());
    let proof = w.fresh(&p256, "POST", "/login").await;
    let other = w.login(Some(&proof)).await.json();
    assert_eq!(jkt_of(&other), p256.jkt.as_str());
    // A proof is good once, wherever it is sent again.
    let r = w.login(Some(&proof)).await;
    assert_refused(&r, "a replayed login proof");

    // The refresh token is the key's alone: no proof, another key's proof: refused, and
    // nothing changes (the same token still works afterwards).
    let refresh = &first["refresh_token"];
    assert_refused(&w.refresh(refresh, None).await, "no proof");
    let wrong = w.fresh(&p256, "POST", "/token/refresh").await;
    assert_refused(&w.refresh(refresh, Some(&wrong)).await, "another key");
    let right = w.fresh(&ed, "POST", "/token/refresh").await;
    let r = w.refresh(refresh, Some(&right)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.json();
    assert_eq!(second["token_type"], "DPoP");
    assert_eq!(jkt_of(&second), ed.jkt.as_str());
    assert_eq!(second["session_id"], first["session_id"]);

    // The right proof replayed with the successor: refused; the successor still works.
    let successor = &second["refresh_token"];
    assert_refused(
        &w.refresh(successor, Some(&right)).await,
        "a replayed proof",
    );
    // The used token with a stranger's proof: refused as the key's, not treated as reuse
    // (which would end the session).
    let stranger = w.fresh(&p256, "POST", "/token/refresh").await;
    assert_refused(
        &w.refresh(refresh, Some(&stranger)).await,
        "used, other key",
    );
    let right = w.fresh(&ed, "POST", "/token/refresh").await;
    let r = w.refresh(successor, Some(&right)).await;
    assert_eq!(r.status, 200, "the successor stays usable: {}", r.body);
    let third = r.json();
    assert_eq!(jkt_of(&third), ed.jkt.as_str());

    // The used token with its own key is reuse, as always.
    let right = w.fresh(&ed, "POST", "/token/refresh").await;
    let r = w.refresh(refresh, Some(&right)).await;
    assert_eq!(r.code(), "refresh_token_reused", "{}", r.body);

    // An unbound session refreshed with a proof: its access token is bound, its refresh
    // token stays as it was.
    let right = w.fresh(&ed, "POST", "/token/refresh").await;
    let r = w.refresh(&plain["refresh_token"], Some(&right)).await;
    assert_eq!(r.json()["token_type"], "DPoP", "{}", r.body);
    assert_eq!(
        w.refresh(&r.json()["refresh_token"], None).await.status,
        200
    );
}

#[tokio::test]
async fn proofs_that_do_not_fit_the_request_are_refused_and_change_nothing() {
    let w = World::start().await;
    let (key, other) = (w.key("EdDSA").await, w.key("ES256").await);
    let sessions = w.sessions().await;
    let now = unix_now();
    let login = |why: &'static str, opts| (why, "POST", "/login", opts);
    let cases = [
        ("another path", "POST", "/logout", ProofOpts::default()),
        ("another method", "GET", "/login", ProofOpts::default()),
        login("too old", opts(|o| o.iat = Some(now - 600))),
        login("from the future", opts(|o| o.iat = Some(now + 600))),
        login("alg none", opts(|o| o.alg = Some("none".into()))),
        login("alg HS256", opts(|o| o.alg = Some("HS256".into()))),
        login("a private key", opts(|o| o.embed_private_key = true)),
        login("typ JWT", opts(|o| o.typ = Some("JWT".into()))),
        login(
            "by another key",
            opts(|o| o.signed_by = Some(other.clone())),
        ),
    ];
    for (why, method, route, opts) in cases {
        let proof = w.proof(&key, method, route, opts).await;
        assert_refused(&w.login(Some(&proof)).await, why);
    }
    // The public URL names the target: the control plane's address under another scheme
    // or host is another URL.
    let elsewhere = w.htu("/login").replace("http://", "https://");
    let default = ProofOpts::default();
    let proof = w.dpop.proof(&key, "POST", &elsewhere, &default).await;
    let proof = proof.unwrap();
    assert_refused(&w.login(Some(&proof)).await, "another scheme");
    assert_refused(&w.login(Some("not.a-proof.at-all")).await, "garbage");
    let (a, b) = (
        w.fresh(&key, "POST", "/login").await,
        w.fresh(&key, "POST", "/login").await,
    );
    let body = json!({"email": "ann@example.com", "password": crate::support::PASSWORD});
    let r = w
        .send("POST", "/login", &[("dpop", &a), ("dpop", &b)], body)
        .await;
    assert_refused(&r, "two DPoP headers");
    assert_eq!(w.sessions().await, sessions, "no sign-in went through");

    // The same key and times, labelled `EdDSA` as older clients write it: accepted.
    let labelled = opts(|o| o.alg = Some("EdDSA".into()));
    let proof = w.proof(&key, "POST", "/login", labelled).await;
    let r = w.login(Some(&proof)).await;
    assert_eq!(r.json()["token_type"], "DPoP", "{}", r.body);

    // Remembered proofs go once out of their window (the maintenance pass).
    let remembered = "SELECT count(*) FROM dpop_proofs";
    assert!(w.s.sql_value(remembered).await.as_i64().unwrap() > 0);
    w.s.sql("UPDATE dpop_proofs SET expires_at = now() - interval '1 minute'")
        .await;
    eventually(Duration::from_secs(10), || async {
        w.s.sql_value(remembered).await == 0
    })
    .await;
}

#[tokio::test]
async fn the_application_can_require_proofs_and_nonces() {
    let w = World::start().await;
    let key = w.key("EdDSA").await;

    // A nonce in a proof must be one of ours, even when none is required.
    let made_up = opts(|o| o.nonce = Some("made-up".into()));
    let r = w
        .login(Some(&w.proof(&key, "POST", "/login", made_up).await))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "use_dpop_nonce"),
        "{}",
        r.body
    );

    w.settings(json!({"dpop": {"nonce_required": true}})).await;
    let shown = w.s.get(&w.path("/settings"), Some(&w.api_key)).await.json();
    assert_eq!(
        shown["dpop"],
        json!({"required": false, "nonce_required": true})
    );
    // The first proof has no nonce: `use_dpop_nonce`, with one to use.
    let r = w.login(Some(&w.fresh(&key, "POST", "/login").await)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "use_dpop_nonce"),
        "{}",
        r.body
    );
    assert_eq!(
        header(&r, "www-authenticate"),
        "DPoP error=\"use_dpop_nonce\""
    );
    let nonce = header(&r, "dpop-nonce").to_owned();
    assert!(!nonce.is_empty());
    let with = |nonce: &str| ProofOpts {
        nonce: Some(nonce.to_owned()),
        ..Default::default()
    };
    let r = w
        .login(Some(&w.proof(&key, "POST", "/login", with(&nonce)).await))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["token_type"], "DPoP");
    // Each answer brings a fresh nonce; an old one stays good for its five minutes.
    assert!(!header(&r, "dpop-nonce").is_empty());
    let r = w
        .login(Some(&w.proof(&key, "POST", "/login", with(&nonce)).await))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A nonce past its five minutes, or another application's: refused.
    let app = w.app.parse().unwrap();
    let secrets = portcullis_control_plane::infra::crypto::Secrets::new(&[42u8; 32]);
    let old = portcullis_control_plane::domain::dpop::nonce(&secrets, app, unix_now() - 301);
    let r = w
        .login(Some(&w.proof(&key, "POST", "/login", with(&old)).await))
        .await;
    assert_eq!(r.code(), "use_dpop_nonce", "expired: {}", r.body);
    let (_, other_app, _) = w.s.owner_with_app().await;
    let path = format!("/v1/apps/{other_app}/login");
    let probe = w.fresh(&key, "POST", "/login").await;
    let r = request(
        w.s.addr,
        "POST",
        &path,
        &[("dpop", &probe)],
        Some("{}".into()),
    )
    .await;
    let foreign = header(&r, "dpop-nonce").to_owned();
    assert!(!foreign.is_empty(), "{}", r.body);
    let r = w
        .login(Some(&w.proof(&key, "POST", "/login", with(&foreign)).await))
        .await;
    assert_eq!(r.code(), "use_dpop_nonce", "foreign: {}", r.body);
    // Without any proof, a nonce is not asked for.
    assert_eq!(w.login(None).await.json()["token_type"], "Bearer");

    // Required: no token without a proof, and no user or session either.
    w.settings(json!({"dpop": {"required": true, "nonce_required": false}}))
        .await;
    let sessions = w.sessions().await;
    assert_refused(&w.login(None).await, "required");
    let body = json!({"email": "bob@example.com", "password": crate::support::PASSWORD});
    let r = w.send("POST", "/register", &[], body).await;
    assert_refused(&r, "required at registration");
    let guest = w.send("POST", "/guest", &[], json!({})).await;
    assert_refused(&guest, "required for guests");
    let r = w.refresh(&json!("whatever"), None).await;
    assert_refused(&r, "required at refresh");
    assert_eq!(w.sessions().await, sessions);
    let bob =
        w.s.sql_value("SELECT count(*) FROM users WHERE email = 'bob@example.com'");
    assert_eq!(bob.await, 0);
    let r = w.login(Some(&w.fresh(&key, "POST", "/login").await)).await;
    assert_eq!(r.json()["token_type"], "DPoP", "{}", r.body);

    for bad in [json!({"dpop": {"required": "yes"}}), json!({"dpop": 1})] {
        let r =
            w.s.call("PUT", &w.path("/settings"), Some(&w.api_key), Some(bad))
                .await;
        assert_eq!(r.code(), "invalid_request", "{}", r.body);
    }
}

#[tokio::test]
async fn account_routes_take_a_bound_token_only_with_its_proof() {
    let w = World::start().await;
    let (key, other) = (w.key("ES256").await, w.key("EdDSA").await);
    let login = w.login(Some(&w.fresh(&key, "POST", "/login").await)).await;
    let tokens = login.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let dpop_auth = format!("DPoP {access}");
    let for_token = |token: &str| ProofOpts {
        access_token: Some(token.to_owned()),
        ..Default::default()
    };

    // As Bearer: refused with the DPoP challenge; as DPoP with its proof: accepted.
    let r = w.s.get(&w.path("/me"), Some(&access)).await;
    assert_refused(&r, "a bound token as Bearer");
    let proof = w.proof(&key, "GET", "/me", for_token(&access)).await;
    let headers = [
        ("authorization", dpop_auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let r = w.send("GET", "/me", &headers, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["email"], "ann@example.com");
    assert!(!header(&r, "dpop-nonce").is_empty());
    // The same proof again: refused.
    assert_refused(
        &w.send("GET", "/me", &headers, Value::Null).await,
        "replayed",
    );

    // Proofs that do not fit this token or request.
    let plain = w.login(None).await.json();
    let unbound = plain["access_token"].as_str().unwrap().to_owned();
    let cases = [
        ("no ath", key.clone(), "GET", "/me", ProofOpts::default()),
        (
            "ath of another token",
            key.clone(),
            "GET",
            "/me",
            for_token(&unbound),
        ),
        (
            "ath made up",
            key.clone(),
            "GET",
            "/me",
            ProofOpts {
                ath_override: Some("x".repeat(43)),
                ..for_token(&access)
            },
        ),
        (
            "another key",
            other.clone(),
            "GET",
            "/me",
            for_token(&access),
        ),
        (
            "another route",
            key.clone(),
            "GET",
            "/sessions",
            for_token(&access),
        ),
        (
            "another method",
            key.clone(),
            "DELETE",
            "/me",
            for_token(&access),
        ),
    ];
    for (why, by, method, route, opts) in cases {
        let proof = w.proof(&by, method, route, opts).await;
        let headers = [
            ("authorization", dpop_auth.as_str()),
            ("dpop", proof.as_str()),
        ];
        assert_refused(&w.send("GET", "/me", &headers, Value::Null).await, why);
    }
    let r = w
        .send("GET", "/me", &[("authorization", &dpop_auth)], Value::Null)
        .await;
    assert_refused(&r, "no proof");

    // An unbound token sent as DPoP is refused as a token; as Bearer it works as before.
    let proof = w.proof(&key, "GET", "/me", for_token(&unbound)).await;
    let unbound_dpop = format!("DPoP {unbound}");
    let headers = [
        ("authorization", unbound_dpop.as_str()),
        ("dpop", proof.as_str()),
    ];
    let r = w.send("GET", "/me", &headers, Value::Null).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "invalid_token"),
        "{}",
        r.body
    );
    assert_eq!(w.s.get(&w.path("/me"), Some(&unbound)).await.status, 200);

    // Logout by the bound access token needs its proof too.
    let proof = w.proof(&key, "POST", "/logout", for_token(&access)).await;
    let headers = [
        ("authorization", dpop_auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let r = w.send("POST", "/logout", &headers, json!({})).await;
    assert_eq!(r.json()["session_id"], tokens["session_id"], "{}", r.body);
}

/// A PKCE pair (verifier, S256 challenge).
fn pkce() -> (String, String) {
    let verifier = portcullis_control_plane::infra::crypto::random_token(32);
    let challenge = portcullis_control_plane::infra::crypto::pkce_challenge(&verifier);
    (verifier, challenge)
}

/// A token request with an optional proof and HTTP Basic client credentials.
async fn token(
    p: &Provider<'_>,
    form: &[(&str, &str)],
    proof: Option<&str>,
    basic: Option<&str>,
) -> Reply {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    if let Some(basic) = basic {
        headers.push(("authorization", basic));
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    let path = format!("/v1/apps/{}/oauth2/token", p.app);
    request(p.s.addr, "POST", &path, &headers, Some(body)).await
}

#[tokio::test]
async fn the_provider_binds_tokens_and_public_clients_refresh_tokens() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    s.register(&p.app, "ann@example.com").await;
    let dpop = DpopClient::start().await.unwrap();
    let (key, other) = (
        dpop.key("EdDSA").await.unwrap(),
        dpop.key("ES256").await.unwrap(),
    );
    let url = |route: &str| format!("{}/oauth2{route}", p.issuer);
    let proof = |by: &DpopKey, method: &str, route: &str, opts: ProofOpts| {
        let (by, method, htu) = (by.clone(), method.to_owned(), url(route));
        let dpop = &dpop;
        async move { dpop.proof(&by, &method, &htu, &opts).await.unwrap() }
    };
    let discovery = format!("/v1/apps/{}/.well-known/openid-configuration", p.app);
    let discovery = s.get(&discovery, None).await.json();
    let algs = &discovery["dpop_signing_alg_values_supported"];
    for alg in ["EdDSA", "ES256"] {
        assert!(algs.as_array().unwrap().contains(&json!(alg)), "{algs}");
    }

    // A public client's code, bound to the key by `dpop_jkt` (RFC 9449 §10).
    let mut spa = fields("Shop SPA", true);
    spa["confidential"] = json!(false);
    let spa = p.client(spa).await;
    let spa_id = spa["id"].as_str().unwrap();
    let (verifier, challenge) = pkce();
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", spa_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid offline_access"),
        ("state", "s1"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("dpop_jkt", &key.jkt),
    ])
    .unwrap();
    let mut browser = Browser::default();
    let back = sign_in(
        &s,
        &mut browser,
        &format!("{}/authorize?{query}", url("")),
        false,
    )
    .await;
    let code = crate::support::query_of(&back)["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", &verifier),
        ("client_id", spa_id),
    ];
    let r = token(
        &p,
        &form,
        Some(&proof(&other, "POST", "/token", ProofOpts::default()).await),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{}",
        r.body
    );
    assert!(
        header(&r, "www-authenticate").starts_with("DPoP "),
        "{:?}",
        r.headers
    );
    // The refusal spent nothing: the key's own proof redeems the code.
    let r = token(
        &p,
        &form,
        Some(&proof(&key, "POST", "/token", ProofOpts::default()).await),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    assert_eq!(tokens["token_type"], "DPoP");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jkt_of(&tokens), key.jkt.as_str());
    assert!(!header(&r, "dpop-nonce").is_empty());

    // Its refresh token is bound: without the key's proof an OAuth error, nothing spent.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", spa_id),
    ];
    let r = token(&p, &form, None, None).await;
    assert_eq!(r.json()["error"], "invalid_dpop_proof", "{}", r.body);
    let r = token(
        &p,
        &form,
        Some(&proof(&other, "POST", "/token", ProofOpts::default()).await),
        None,
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_dpop_proof", "{}", r.body);
    let r = token(
        &p,
        &form,
        Some(&proof(&key, "POST", "/token", ProofOpts::default()).await),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["token_type"], "DPoP");

    // UserInfo: the bound token as Bearer is refused with the DPoP challenge.
    let info = format!("/v1/apps/{}/oauth2/userinfo", p.app);
    let r = request(
        s.addr,
        "GET",
        &info,
        &[("authorization", &format!("Bearer {access}"))],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        header(&r, "www-authenticate").starts_with("DPoP error=\"invalid_dpop_proof\""),
        "{:?}",
        r.headers
    );
    let opts = ProofOpts {
        access_token: Some(access.clone()),
        ..Default::default()
    };
    let p_info = proof(&key, "GET", "/userinfo", opts).await;
    let auth = format!("DPoP {access}");
    let r = request(
        s.addr,
        "GET",
        &info,
        &[("authorization", &auth), ("dpop", &p_info)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.body);
    assert!(r.json()["sub"].is_string());

    // A confidential client (SSO: no second sign-in): its access tokens are bound, its
    // refresh token is not (it authenticates itself, RFC 9449 §5).
    let web = p.client(fields("Shop web", true)).await;
    let basic = {
        use base64::Engine as _;
        let pair = format!(
            "{}:{}",
            web["id"].as_str().unwrap(),
            web["client_secret"].as_str().unwrap()
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", web["id"].as_str().unwrap()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid offline_access"),
        ("state", "s2"),
    ])
    .unwrap();
    let r = browser
        .open(&s, &format!("{}/authorize?{query}", url("")))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let code = crate::support::query_of(header(&r, "location"))["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
    ];
    let r = token(
        &p,
        &form,
        Some(&proof(&key, "POST", "/token", ProofOpts::default()).await),
        Some(&basic),
    )
    .await;
    assert_eq!(r.json()["token_type"], "DPoP", "{}", r.body);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    let r = token(&p, &form, None, Some(&basic)).await;
    assert_eq!(
        (r.status, r.json()["token_type"].as_str()),
        (200, Some("Bearer")),
        "{}",
        r.body
    );

    // Nonces at the token endpoint: asked for in OAuth's form, with the nonce.
    let settings = format!("/v1/apps/{}/settings", p.app);
    let patch = json!({"dpop": {"nonce_required": true}});
    assert_eq!(
        s.call("PUT", &settings, Some(&p.key), Some(patch))
            .await
            .status,
        200
    );
    let form = [("grant_type", "client_credentials")];
    let machine = p
        .client(
            json!({"name": "Job", "redirect_uris": [], "grant_types": ["client_credentials"],
                                   "scopes": ["orders:read"]}),
        )
        .await;
    let basic = {
        use base64::Engine as _;
        let pair = format!(
            "{}:{}",
            machine["id"].as_str().unwrap(),
            machine["client_secret"].as_str().unwrap()
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let r = token(
        &p,
        &form,
        Some(&proof(&key, "POST", "/token", ProofOpts::default()).await),
        Some(&basic),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("use_dpop_nonce")),
        "{}",
        r.body
    );
    assert_eq!(
        header(&r, "www-authenticate"),
        "DPoP error=\"use_dpop_nonce\""
    );
    let nonce = header(&r, "dpop-nonce").to_owned();
    let opts = ProofOpts {
        nonce: Some(nonce),
        ..Default::default()
    };
    let r = token(
        &p,
        &form,
        Some(&proof(&key, "POST", "/token", opts).await),
        Some(&basic),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["token_type"], "DPoP");
    assert_eq!(jkt_of(&r.json()), key.jkt.as_str());
}
