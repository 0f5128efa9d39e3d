//! Passkeys at the protocol level (API.md §3 "Passkeys"): a software authenticator
//! (webauthn-authenticator-rs's `SoftPasskey`, P-256) answers the ceremonies over HTTP,
//! and the attacks are answers no honest browser sends. A real browser with Chromium's
//! virtual authenticator: `passkeys_browser.rs`.
//!
//! `SoftPasskey` keeps no resident keys, so the tests clear `requireResidentKey` from the
//! creation options they hand it (the server never depends on it); discoverable sign-in is
//! the browser test's.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use webauthn_authenticator_rs::AuthenticatorBackendHashedClientData as _;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{PublicKeyCredential, Url};
use webauthn_rs_proto::{
    AllowCredentials, CreationChallengeResponse, RequestChallengeResponse, ResidentKeyRequirement,
    UserVerificationPolicy,
};

use crate::support::{ADMIN_TOKEN, Reply, Stack, claims_of};

/// One application with passkeys on, served at `http://localhost:PORT`.
struct Site<'a> {
    s: &'a Stack,
    app: String,
    key: String,
    origin: Url,
}

impl<'a> Site<'a> {
    async fn new(s: &'a Stack) -> Self {
        let (_, app, key) = s.owner_with_app().await;
        let origin = Url::parse(&format!("http://localhost:{}", s.addr.port())).unwrap();
        let site = Self {
            s,
            app,
            key,
            origin,
        };
        let passkeys = json!({"passkeys": {"rp_id": "localhost", "origins": [site.origin()]}});
        let r = site.settings(passkeys).await;
        assert_eq!(r.status, 200, "{}", r.body);
        site
    }

    fn origin(&self) -> String {
        self.origin.as_str().trim_end_matches('/').to_owned()
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/apps/{}{rest}", self.app)
    }

    async fn settings(&self, patch: Value) -> Reply {
        let path = self.path("/settings");
        self.s
            .call("PUT", &path, Some(&self.key), Some(patch))
            .await
    }

    async fn post(&self, rest: &str, auth: Option<&str>, body: Value) -> Reply {
        self.s.post(&self.path(rest), auth, body).await
    }

    /// Begins a registration for the user of `access`: (ceremony id, options as
    /// `SoftPasskey` can take them).
    async fn begin_registration(&self, access: &str) -> (String, CreationChallengeResponse) {
        let r = self
            .post("/passkeys/register/begin", Some(access), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let options = &r.json()["options"];
        let selection = &options["publicKey"]["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "required", "{options}");
        assert_eq!(selection["userVerification"], "required", "{options}");
        let mut options: CreationChallengeResponse =
            serde_json::from_value(options.clone()).unwrap();
        let selection = options.public_key.authenticator_selection.as_mut().unwrap();
        selection.require_resident_key = false;
        selection.resident_key = Some(ResidentKeyRequirement::Discouraged);
        (
            r.json()["ceremony_id"].as_str().unwrap().to_owned(),
            options,
        )
    }

    /// A registration begun by the user of `began` and finished, with `key`'s answer, by
    /// the user of `finishes`.
    async fn try_register(
        &self,
        key: &mut SoftPasskey,
        began: &str,
        finishes: &str,
        name: &str,
    ) -> Reply {
        let (ceremony, options) = self.begin_registration(began).await;
        let credential = key.do_registration(self.origin.clone(), options).unwrap();
        let finish = json!({"ceremony_id": ceremony, "credential": credential, "name": name});
        self.post("/passkeys/register/finish", Some(finishes), finish)
            .await
    }

    /// Registers `key` for the user of `access`; the stored passkey as listed.
    async fn register(&self, key: &mut SoftPasskey, access: &str, name: &str) -> Value {
        let r = self.try_register(key, access, access, name).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    /// Begins a sign-in for the account `email`.
    async fn begin_sign_in(&self, email: &str) -> (String, RequestChallengeResponse) {
        let r = self
            .post("/passkeys/login/begin", None, json!({"email": email}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let options = serde_json::from_value(r.json()["options"].clone()).unwrap();
        (
            r.json()["ceremony_id"].as_str().unwrap().to_owned(),
            options,
        )
    }

    async fn finish_sign_in(&self, ceremony: &str, credential: &PublicKeyCredential) -> Reply {
        self.post(
            "/passkeys/login/finish",
            None,
            json!({"ceremony_id": ceremony, "credential": credential, "device_id": 7}),
        )
        .await
    }

    /// A whole sign-in with `key` for `email`.
    async fn sign_in(&self, key: &mut SoftPasskey, email: &str) -> Reply {
        let (ceremony, options) = self.begin_sign_in(email).await;
        let credential = key.do_authentication(self.origin.clone(), options).unwrap();
        self.finish_sign_in(&ceremony, &credential).await
    }

    async fn events(&self, name: &str) -> Vec<Value> {
        let r = self
            .s
            .get(&self.path(&format!("/audit?event={name}")), Some(&self.key))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["events"].as_array().unwrap().clone()
    }
}

/// A software authenticator that claims user verification (as a phone's would after a
/// fingerprint).
fn soft_key() -> SoftPasskey {
    SoftPasskey::new(true)
}

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_passkey_signs_in_steps_up_and_its_tokens_reach_the_verifier() {
    let s = Stack::start().await;
    let site = Site::new(&s).await;
    let verifier = s.verifier().await;
    let tokens = s.register(&site.app, "ada@example.com").await;
    let mut key = soft_key();

    let added = site.register(&mut key, &access(&tokens), "Laptop").await;
    assert_eq!(added["name"], "Laptop");
    assert_eq!(added["backup_eligible"], false);
    assert!(added["credential_id"].as_str().unwrap().len() >= 20);
    assert_eq!(site.events("passkey.registered").await.len(), 1);

    // Sign in with the passkey alone: user verification makes it two factors.
    let r = site.sign_in(&mut key, "ada@example.com").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let signed_in = r.json();
    assert_eq!(claims_of(&access(&signed_in))["amr"], json!(["hwk", "mfa"]));
    assert_eq!(verifier.status(&access(&signed_in)).await, 200);
    let sessions = s
        .get(&site.path("/sessions"), Some(&access(&signed_in)))
        .await;
    assert!(
        sessions.body.contains("\"device_id\":\"7\""),
        "{}",
        sessions.body
    );
    let listed = s
        .get(&site.path("/passkeys"), Some(&access(&signed_in)))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(
        listed.json()[0]["last_used_at"].is_string(),
        "{}",
        listed.body
    );
    assert!(listed.json()[0]["sign_count"].as_u64().unwrap() >= 1);

    // Renamed; then, with a passkey enrolled, a password sign-in asks for it.
    let id = added["id"].as_str().unwrap();
    let r = s
        .call(
            "PATCH",
            &site.path(&format!("/passkeys/{id}")),
            Some(&access(&signed_in)),
            Some(json!({"name": "Work laptop"})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let login = s.login(&site.app, "ada@example.com").await;
    assert_eq!(login["mfa_required"], true, "{login}");
    assert_eq!(login["methods"][0], "webauthn", "{login}");
    let mfa_token = login["mfa_token"].as_str().unwrap();
    let r = site
        .post("/login/mfa/webauthn", None, json!({"mfa_token": mfa_token}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let options: RequestChallengeResponse = serde_json::from_value(r.json()).unwrap();
    let credential = key.do_authentication(site.origin.clone(), options).unwrap();
    let second = json!({"mfa_token": mfa_token, "method": "webauthn", "credential": credential});
    let r = site.post("/login/mfa", None, second.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims_of(&access(&r.json()))["amr"],
        json!(["pwd", "hwk", "mfa"])
    );
    // The step-up was single use.
    let r = site.post("/login/mfa", None, second).await;
    assert_eq!(r.json()["code"], "invalid_mfa_token", "{}", r.body);

    // Deleting the passkey (the password remains) keeps the sessions it opened, and an
    // answer made before is refused after.
    let (ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let made_before = key.do_authentication(site.origin.clone(), options).unwrap();
    let r = s
        .call(
            "DELETE",
            &site.path(&format!("/passkeys/{id}")),
            Some(&access(&signed_in)),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(verifier.status(&access(&signed_in)).await, 200);
    assert!(s.login(&site.app, "ada@example.com").await["access_token"].is_string());
    let r = site.finish_sign_in(&ceremony, &made_before).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);
    assert_eq!(site.events("passkey.removed").await.len(), 1);

    // A new passkey, then the user deleted by the administrator: its tokens are refused.
    let tokens = s.login(&site.app, "ada@example.com").await;
    site.register(&mut key, &access(&tokens), "Phone").await;
    let r = site.sign_in(&mut key, "ada@example.com").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = access(&r.json());
    let user = claims_of(&token)["sub"].as_str().unwrap().to_owned();
    let listed = s
        .get(
            &site.path(&format!("/users/{user}/passkeys")),
            Some(&site.key),
        )
        .await;
    assert_eq!(
        listed.json().as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    let r = s
        .call(
            "DELETE",
            &site.path(&format!("/users/{user}")),
            Some(&site.key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    crate::support::eventually(std::time::Duration::from_secs(5), || async {
        verifier.status(&token).await == 401
    })
    .await;
}

#[tokio::test]
async fn answers_no_honest_browser_sends_are_refused() {
    let s = Stack::start().await;
    let site = Site::new(&s).await;
    let tokens = s.register(&site.app, "ada@example.com").await;
    let mut key = soft_key();
    site.register(&mut key, &access(&tokens), "Laptop").await;

    // A ceremony is single use, and an answer does not fit another ceremony.
    let (ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let answer = key.do_authentication(site.origin.clone(), options).unwrap();
    assert_eq!(site.finish_sign_in(&ceremony, &answer).await.status, 200);
    let r = site.finish_sign_in(&ceremony, &answer).await;
    assert_eq!(r.json()["code"], "invalid_state", "{}", r.body);
    let (other, _) = site.begin_sign_in("ada@example.com").await;
    let r = site.finish_sign_in(&other, &answer).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);

    // Signed for another origin (a phishing page under the same site).
    let (ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let evil = format!("http://evil.localhost:{}", s.addr.port());
    let answer = signed_for(&mut key, &evil, "localhost", options);
    let r = site.finish_sign_in(&ceremony, &answer).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);

    // The right origin in the client data, but signed for another relying party.
    let (ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let answer = signed_for(&mut key, &site.origin(), "evil.localhost", options);
    let r = site.finish_sign_in(&ceremony, &answer).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);

    // Without user verification, although the options require it.
    let (ceremony, mut options) = site.begin_sign_in("ada@example.com").await;
    options.public_key.user_verification = UserVerificationPolicy::Discouraged_DO_NOT_USE;
    let answer = key.do_authentication(site.origin.clone(), options).unwrap();
    let r = site.finish_sign_in(&ceremony, &answer).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);

    // A signature counter that goes backwards: a cloned authenticator. Two answers are
    // made in order and sent in the opposite order.
    let (first_ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let first = key.do_authentication(site.origin.clone(), options).unwrap();
    let (second_ceremony, options) = site.begin_sign_in("ada@example.com").await;
    let second = key.do_authentication(site.origin.clone(), options).unwrap();
    assert_eq!(
        site.finish_sign_in(&second_ceremony, &second).await.status,
        200
    );
    let r = site.finish_sign_in(&first_ceremony, &first).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);
    assert_eq!(site.events("passkey.counter_regression").await.len(), 1);

    // A passkey of another application (unknown here) answering for this account.
    let other_site = Site::new(&s).await;
    let tokens = s.register(&other_site.app, "eve@example.com").await;
    let mut eves = soft_key();
    let theirs = other_site
        .register(&mut eves, &access(&tokens), "Eve's")
        .await;
    let (ceremony, mut options) = site.begin_sign_in("ada@example.com").await;
    let id = base64url(theirs["credential_id"].as_str().unwrap());
    options.public_key.allow_credentials = vec![AllowCredentials {
        type_: "public-key".into(),
        id,
        transports: None,
    }];
    let answer = eves
        .do_authentication(site.origin.clone(), options)
        .unwrap();
    let r = site.finish_sign_in(&ceremony, &answer).await;
    assert_eq!(r.json()["code"], "invalid_credentials", "{}", r.body);

    // Every refusal is a failed sign-in in the audit log, naming no secret.
    let failed = site.events("login.failed").await;
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(failed.iter().all(|e| e["details"]["method"] == "passkey"));

    // An account without passkeys (or none at all) gets decoy credentials, the same
    // each time, so the answer tells nothing.
    let decoy = |email: &'static str| {
        let site = &site;
        async move {
            let r = site
                .post("/passkeys/login/begin", None, json!({"email": email}))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["options"]["publicKey"]["allowCredentials"].clone()
        }
    };
    let nobody = decoy("nobody@example.com").await;
    assert_eq!(nobody, decoy("nobody@example.com").await);
    assert_ne!(nobody, decoy("someone@example.com").await);
}

/// An answer whose client data names `origin` and whose authenticator data is made for
/// `rp_id` (an honest browser never lets the two disagree).
fn signed_for(
    key: &mut SoftPasskey,
    origin: &str,
    rp_id: &str,
    options: RequestChallengeResponse,
) -> PublicKeyCredential {
    let mut request = options.public_key;
    let client_data = json!({
        "type": "webauthn.get",
        "challenge": base64url_encode(request.challenge.as_ref()),
        "origin": origin,
        "crossOrigin": false,
    })
    .to_string();
    request.rp_id = rp_id.to_owned();
    let hash = Sha256::digest(client_data.as_bytes()).to_vec();
    let mut answer = key.perform_auth(hash, request, 60_000).unwrap();
    answer.response.client_data_json = client_data.into_bytes();
    answer
}

fn base64url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn base64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn registration_is_bound_checked_and_never_removes_the_last_way_in() {
    let s = Stack::start().await;
    let site = Site::new(&s).await;

    // Settings: the relying-party id must cover every origin.
    for bad in [
        json!({"rp_id": "example.com", "origins": ["https://example.org"]}),
        json!({"rp_id": "com", "origins": ["https://example.com"]}),
        json!({"rp_id": "localhost", "origins": []}),
    ] {
        let r = site.settings(json!({ "passkeys": bad })).await;
        assert_eq!(r.json()["code"], "invalid_request", "{}", r.body);
    }

    // A ceremony belongs to the user who began it.
    let ada = s.register(&site.app, "ada@example.com").await;
    let bob = s.register(&site.app, "bob@example.com").await;
    let r = site
        .try_register(&mut soft_key(), &access(&bob), &access(&ada), "Bob's")
        .await;
    assert_eq!(r.json()["code"], "invalid_state", "{}", r.body);

    // An allow-list of authenticator models keeps others out.
    let only = json!({"passkeys": {"aaguids": [uuid::Uuid::new_v4()]}});
    assert_eq!(site.settings(only).await.status, 200);
    let r = site
        .try_register(&mut soft_key(), &access(&ada), &access(&ada), "Ada's")
        .await;
    assert_eq!(r.json()["code"], "invalid_request", "{}", r.body);
    assert!(r.body.contains("not allowed"), "{}", r.body);
    assert_eq!(
        site.settings(json!({"passkeys": {"aaguids": []}}))
            .await
            .status,
        200
    );

    // A guest (no password) who adds a passkey cannot delete it: nothing would be left.
    let r = site.post("/guest", None, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let guest = r.json();
    let added = site
        .register(&mut soft_key(), &access(&guest), "Only way in")
        .await;
    let id = added["id"].as_str().unwrap();
    let r = s
        .call(
            "DELETE",
            &site.path(&format!("/passkeys/{id}")),
            Some(&access(&guest)),
            None,
        )
        .await;
    assert_eq!(r.json()["code"], "forbidden", "{}", r.body);
    let user = claims_of(&access(&guest))["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = site.path(&format!("/users/{user}/passkeys/{id}"));
    let r = s.call("DELETE", &path, Some(&site.key), None).await;
    assert_eq!(r.json()["code"], "forbidden", "{}", r.body);
    let r = s.call("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        r.status, 401,
        "the operator is no application administrator"
    );

    // Passkeys off: nothing begins.
    let r = site.settings(json!({"passkeys": null})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = site.post("/passkeys/login/begin", None, json!({})).await;
    assert_eq!(r.json()["code"], "invalid_request", "{}", r.body);
}

#[tokio::test]
async fn passkey_sign_ins_are_limited_per_account_like_passwords() {
    let s = Stack::start().await;
    let site = Site::new(&s).await;
    let limits = json!({"rate_limits": {"per_account_failures_per_hour": 2}});
    assert_eq!(site.settings(limits).await.status, 200);
    let tokens = s.register(&site.app, "ada@example.com").await;
    let mut key = soft_key();
    site.register(&mut key, &access(&tokens), "Laptop").await;
    let evil = format!("http://evil.localhost:{}", s.addr.port());
    let mut codes = Vec::new();
    for _ in 0..3 {
        let (ceremony, options) = site.begin_sign_in("ada@example.com").await;
        let answer = signed_for(&mut key, &evil, "localhost", options);
        codes.push(site.finish_sign_in(&ceremony, &answer).await.json()["code"].clone());
    }
    assert_eq!(
        codes,
        [
            json!("invalid_credentials"),
            json!("invalid_credentials"),
            json!("rate_limited")
        ]
    );
}
