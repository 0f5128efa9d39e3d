//! Portcullis as an OpenID Provider (API.md §3 "OpenID Provider"), with panva's
//! `openid-client` (OpenID-certified RP, `portcullis_tests::rp`) as the client: code flow
//! with PKCE, ID token checks, refresh, UserInfo, introspection, revocation, logout; SSO
//! and `prompt=none`; the real verifier on the access tokens; and the refusals RFC 6749
//! and RFC 7636 ask for. The sign-in and consent pages are driven over HTTP here (their
//! forms, cookies and CSRF tokens).

use std::collections::HashMap;
use std::time::Duration;

use portcullis_tests::rp::{RelyingParty, RpClient};
use serde_json::{Value, json};

use crate::support::{
    HttpSink, PASSWORD, Reply, Stack, claims_of, eventually, header, oathtool, request, unix_now,
};

/// A browser for the provider's pages: a cookie jar and form posts.
#[derive(Default)]
pub(crate) struct Browser {
    cookies: HashMap<String, String>,
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &Reply) {
        for value in r.headers.get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn call(&mut self, s: &Stack, method: &str, path: &str, form: Option<String>) -> Reply {
        let cookie = self.cookie_header();
        let mut headers = vec![("cookie", cookie.as_str())];
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let r = request(s.addr, method, path, &headers, form).await;
        self.keep(&r);
        r
    }

    /// Opens `url` (absolute, on the stack).
    pub(crate) async fn open(&mut self, s: &Stack, url: &str) -> Reply {
        let path = url.split_once("127.0.0.1").unwrap().1;
        let path = &path[path.find('/').unwrap()..];
        self.call(s, "GET", path, None).await
    }

    /// Submits the page's form whose button says `button`, with `fill`ed inputs.
    async fn submit(
        &mut self,
        s: &Stack,
        page: &Reply,
        button: &str,
        fill: &[(&str, &str)],
    ) -> Reply {
        let forms = forms(&page.body);
        let (action, mut fields) = forms
            .into_iter()
            .find(|(_, _, b)| b == button)
            .map(|(a, f, _)| (a, f))
            .unwrap_or_else(|| panic!("no {button} form in {}", page.body));
        fields.extend(fill.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let body = serde_urlencoded::to_string(&fields).unwrap();
        self.call(s, "POST", &action, Some(body)).await
    }
}

/// A form on a page: where it posts, its hidden fields, its button's text.
type PageForm = (String, Vec<(String, String)>, String);

/// The forms of a page.
fn forms(html: &str) -> Vec<PageForm> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[start..].find('"')? + start;
        Some(unescape(&tag[start..end]))
    };
    html.split("<form")
        .skip(1)
        .map(|form| {
            let form = form.split("</form>").next().unwrap();
            let action = attr(form, "action").unwrap();
            let hidden = form
                .split("<input")
                .skip(1)
                .filter(|i| i.contains("type=\"hidden\""))
                .map(|i| (attr(i, "name").unwrap(), attr(i, "value").unwrap()))
                .collect();
            let button = form
                .split("<button type=\"submit\">")
                .nth(1)
                .and_then(|b| b.split("</button>").next())
                .unwrap_or("")
                .to_owned();
            (action, hidden, button)
        })
        .collect()
}

pub(crate) struct Provider<'a> {
    pub(crate) s: &'a Stack,
    pub(crate) app: String,
    pub(crate) key: String,
    pub(crate) issuer: String,
}

impl<'a> Provider<'a> {
    pub(crate) async fn new(s: &'a Stack) -> Self {
        let (_, app, key) = s.owner_with_app().await;
        let issuer = format!("{}/v1/apps/{app}", s.issuer);
        Self {
            s,
            app,
            key,
            issuer,
        }
    }

    /// Registers a client; returns its registration answer (with the secret).
    pub(crate) async fn client(&self, fields: Value) -> Value {
        let r = self
            .s
            .post(
                &format!("/v1/apps/{}/oauth-clients", self.app),
                Some(&self.key),
                fields,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    async fn rp(&self, registered: &Value, redirect_uri: &str) -> RelyingParty {
        let secret = registered["client_secret"].as_str().map(str::to_owned);
        let auth_method = if secret.is_some() {
            "client_secret_basic"
        } else {
            "none"
        };
        let client = RpClient {
            client_id: registered["id"].as_str().unwrap().to_owned(),
            client_secret: secret,
            redirect_uri: redirect_uri.to_owned(),
            auth_method: auth_method.to_owned(),
        };
        RelyingParty::start(&self.issuer, &client).await.unwrap()
    }

    /// A token request straight to the endpoint, form-encoded.
    pub(crate) async fn token(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Reply {
        use base64::Engine as _;
        let body = serde_urlencoded::to_string(form).unwrap();
        let auth = basic.map(|(id, secret)| {
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            format!("Basic {pair}")
        });
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let path = format!("/v1/apps/{}/oauth2/token", self.app);
        request(self.s.addr, "POST", &path, &headers, Some(body)).await
    }
}

pub(crate) const REDIRECT: &str = "http://127.0.0.1:9/cb";

pub(crate) fn fields(name: &str, first_party: bool) -> Value {
    json!({
        "name": name,
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": ["http://127.0.0.1:9/bye"],
        "first_party": first_party,
    })
}

/// Signs in on the page `url` leads to (password, then consent if asked): the redirect
/// back to the client.
pub(crate) async fn sign_in(s: &Stack, browser: &mut Browser, url: &str, consent: bool) -> String {
    let page = browser.open(s, url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Sign in to shop"), "{}", page.body);
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    let fill = [("login", "ann@example.com"), ("password", PASSWORD)];
    let mut r = browser.submit(s, &page, "Sign in", &fill).await;
    if consent {
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains("asks to use your shop account"),
            "{}",
            r.body
        );
        r = browser.submit(s, &r, "Allow", &[]).await;
    }
    assert_eq!(r.status, 303, "{}", r.body);
    header(&r, "location").to_owned()
}

#[tokio::test]
async fn a_certified_relying_party_signs_in_refreshes_and_logs_out() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    let verifier = s.verifier().await;
    s.register(&p.app, "ann@example.com").await;
    let registered = p.client(fields("Orders", false)).await;
    assert_eq!(registered["confidential"], true);
    let mut rp = p.rp(&registered, REDIRECT).await;
    assert_eq!(rp.metadata()["issuer"], p.issuer.as_str());

    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    let back = sign_in(&s, &mut browser, &request.url, true).await;
    assert!(
        back.starts_with(REDIRECT) && back.contains("iss="),
        "{back}"
    );
    let tokens = rp.callback(&back, &request).await.unwrap();
    assert!(tokens["error"].is_null(), "{tokens}");
    let claims = &tokens["claims"];
    assert_eq!(claims["email"], "ann@example.com");
    assert_eq!(claims["amr"], json!(["pwd"]));
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let at = claims_of(&access);
    assert_eq!(at["client_id"], registered["id"]);
    assert_eq!(at["aud"], p.app.as_str());
    assert_eq!(at["sub"], claims["sub"]);
    assert_eq!(verifier.status(&access).await, 200, "the verifier takes it");
    // A client's token is for the application's services, not the account routes.
    let me = s
        .get(&format!("/v1/apps/{}/me", p.app), Some(&access))
        .await;
    assert_eq!(me.json()["code"], "invalid_token", "{}", me.body);

    let info = rp
        .userinfo(&access, claims["sub"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(info["email"], "ann@example.com", "{info}");
    let seen = rp.introspect(&access).await.unwrap();
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], registered["id"]);

    // Refresh rotates; the old refresh token again is reuse: the session ends.
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let renewed = rp.refresh(&refresh).await.unwrap();
    assert!(renewed["access_token"].is_string(), "{renewed}");
    let again = rp.refresh(&refresh).await.unwrap();
    assert_eq!(again["error"]["error"], "invalid_grant", "{again}");
    let renewed_access = renewed["access_token"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        verifier.status(renewed_access).await == 401
    })
    .await;

    // A new sign-in needs no password (SSO); revocation ends its session.
    let request = rp.authorization_url(json!({})).await.unwrap();
    let r = browser.open(&s, &request.url).await;
    assert_eq!(r.status, 303, "signed in already: {}", r.body);
    let tokens = rp.callback(header(&r, "location"), &request).await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert!(
        rp.revoke(tokens["refresh_token"].as_str().unwrap())
            .await
            .unwrap()["error"]
            .is_null()
    );
    assert_eq!(rp.introspect(&access).await.unwrap()["active"], false);

    // Logout at the provider: the browser's sessions end, at the verifier too.
    let request = rp.authorization_url(json!({})).await.unwrap();
    let r = browser.open(&s, &request.url).await;
    let tokens = rp.callback(header(&r, "location"), &request).await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(verifier.status(&access).await, 200);
    let logout = rp
        .end_session_url(json!({
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": "http://127.0.0.1:9/bye",
            "state": "s1",
        }))
        .await
        .unwrap();
    let r = browser.open(&s, &logout).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(header(&r, "location"), "http://127.0.0.1:9/bye?state=s1");
    eventually(Duration::from_secs(5), || async {
        verifier.status(&access).await == 401
    })
    .await;
    // Signed out: prompt=none is refused with login_required.
    let request = rp
        .authorization_url(json!({"prompt": "none"}))
        .await
        .unwrap();
    let r = browser.open(&s, &request.url).await;
    let answer = rp.callback(header(&r, "location"), &request).await.unwrap();
    assert_eq!(answer["error"]["error"], "login_required", "{answer}");
}

#[tokio::test]
async fn first_party_clients_skip_consent_and_machines_get_their_own_tokens() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    let verifier = s.verifier().await;
    s.register(&p.app, "ann@example.com").await;
    let mut spa_fields = fields("Shop SPA", true);
    spa_fields["confidential"] = json!(false);
    let spa = p.client(spa_fields).await;
    assert!(spa["client_secret"].is_null());
    // The application's look on the pages: its logo (https only) and colour.
    let settings = format!("/v1/apps/{}/settings", p.app);
    let bad = json!({"branding": {"primary_color": "red; background:url(x)"}});
    let r = s.call("PUT", &settings, Some(&p.key), Some(bad)).await;
    assert_eq!(r.json()["code"], "invalid_request", "{}", r.body);
    let look = json!({"branding": {"logo_url": "https://cdn.example.com/logo.png",
                                    "primary_color": "#1a73e8"}});
    assert_eq!(
        s.call("PUT", &settings, Some(&p.key), Some(look))
            .await
            .status,
        200
    );
    let mut rp = p.rp(&spa, REDIRECT).await;
    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    assert!(request.url.contains("code_challenge_method=S256"));
    let page = browser.open(&s, &request.url).await;
    assert!(
        page.body
            .contains(r#"<img src="https://cdn.example.com/logo.png""#),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("button{background:#1a73e8"),
        "{}",
        page.body
    );
    assert!(header(&page, "content-security-policy").contains("img-src https:;"));
    let back = sign_in(&s, &mut browser, &request.url, false).await;
    let tokens = rp.callback(&back, &request).await.unwrap();
    assert!(tokens["access_token"].is_string(), "{tokens}");

    let machine = p
        .client(json!({
            "name": "Nightly job", "redirect_uris": [], "grant_types": ["client_credentials"],
            "scopes": ["orders:read", "orders:write"],
        }))
        .await;
    let mut job = p.rp(&machine, REDIRECT).await;
    let token = job.client_credentials("orders:read").await.unwrap();
    let access = token["access_token"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["sub"], machine["id"]);
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(verifier.status(access).await, 200);
    let wider = job.client_credentials("orders:read admin").await.unwrap();
    assert_eq!(wider["error"]["error"], "invalid_scope", "{wider}");
}

#[tokio::test]
async fn refusals_follow_rfc_6749_and_7636() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    let verifier = s.verifier().await;
    s.register(&p.app, "ann@example.com").await;
    let registered = p.client(fields("Orders", true)).await;
    let (id, secret) = (
        registered["id"].as_str().unwrap(),
        registered["client_secret"].as_str().unwrap(),
    );
    let mut rp = p.rp(&registered, REDIRECT).await;
    let mut browser = Browser::default();

    // An unregistered redirect URI: a page, never a redirect.
    let request = rp
        .authorization_url(json!({"redirect_uri": "http://127.0.0.1:9/evil"}))
        .await
        .unwrap();
    let r = browser.open(&s, &request.url).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.headers.get("location").is_none());

    // A code with the wrong PKCE verifier, then replayed: the first tokens are revoked.
    let request = rp.authorization_url(json!({})).await.unwrap();
    let back = sign_in(&s, &mut browser, &request.url, false).await;
    let code = back
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let wrong = "x".repeat(43);
    let exchange = |verifier: &str| {
        [
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", verifier.to_owned()),
        ]
    };
    let wrong_form = exchange(&wrong);
    let form: Vec<(&str, &str)> = wrong_form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = p.token(&form, Some((id, secret))).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    // (The code is used up by the failed attempt too: a second try is a replay.)
    let right_form = exchange(&request.code_verifier);
    let form: Vec<(&str, &str)> = right_form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = p.token(&form, Some((id, secret))).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);

    let request = rp.authorization_url(json!({})).await.unwrap();
    let r = browser.open(&s, &request.url).await;
    let back = header(&r, "location").to_owned();
    let tokens = rp.callback(&back, &request).await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(verifier.status(&access).await, 200);
    let code = back
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let replay = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", request.code_verifier.as_str()),
    ];
    let r = p.token(&replay, Some((id, secret))).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    eventually(Duration::from_secs(5), || async {
        verifier.status(&access).await == 401
    })
    .await;

    // The wrong secret, and a secret from a public client.
    let r = p.token(&replay, Some((id, "not-the-secret"))).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_client"))
    );
    let mut public = fields("SPA", true);
    public["confidential"] = json!(false);
    let public = p.client(public).await;
    let public_id = public["id"].as_str().unwrap();
    let r = p.token(&replay, Some((public_id, "a-secret"))).await;
    assert_eq!(r.json()["error"], "invalid_client", "{}", r.body);

    // A code for one client presented by another (mixed-up client).
    let request = rp.authorization_url(json!({})).await.unwrap();
    let r = browser.open(&s, &request.url).await;
    let back = header(&r, "location").to_owned();
    let code = back
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let other = p.client(fields("Other", true)).await;
    let mixed = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", request.code_verifier.as_str()),
    ];
    let other_auth = (
        other["id"].as_str().unwrap(),
        other["client_secret"].as_str().unwrap(),
    );
    let r = p.token(&mixed, Some(other_auth)).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);

    // state round-trips; a public client must use PKCE.
    assert!(back.contains(&format!("state={}", request.state)), "{back}");
    let no_pkce = format!(
        "/v1/apps/{}/oauth2/authorize?client_id={public_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=xyz",
        p.app
    );
    let r = browser.call(&s, "GET", &no_pkce, None).await;
    let location = header(&r, "location");
    assert!(
        location.starts_with(REDIRECT)
            && location.contains("error=invalid_request")
            && location.contains("state=xyz"),
        "{location}"
    );

    // A refresh of a revoked session, and an unknown grant type.
    let r = p
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ],
            Some((id, secret)),
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    let r = p
        .token(&[("grant_type", "password")], Some((id, secret)))
        .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type", "{}", r.body);

    // A code past its 60 seconds.
    let request = rp.authorization_url(json!({})).await.unwrap();
    let r = browser.open(&s, &request.url).await;
    s.sql("UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .await;
    let late = rp.callback(header(&r, "location"), &request).await.unwrap();
    assert_eq!(late["error"]["error"], "invalid_grant", "{late}");
}

#[tokio::test]
async fn the_sign_in_page_asks_for_the_second_factor() {
    let s = Stack::start().await;
    let p = Provider::new(&s).await;
    let tokens = s.register(&p.app, "ann@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let r = s
        .post(
            &format!("/v1/apps/{}/mfa/totp/setup", p.app),
            Some(access),
            json!({}),
        )
        .await;
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = s
        .post(
            &format!("/v1/apps/{}/mfa/totp/verify", p.app),
            Some(access),
            json!({"code": oathtool(&secret, unix_now())}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let registered = p.client(fields("Orders", true)).await;
    let mut rp = p.rp(&registered, REDIRECT).await;
    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    let page = browser.open(&s, &request.url).await;
    let fill = [("login", "ann@example.com"), ("password", PASSWORD)];
    let step = browser.submit(&s, &page, "Sign in", &fill).await;
    assert_eq!(step.status, 200, "{}", step.body);
    assert!(step.body.contains("Second factor"), "{}", step.body);
    // The code of the step that confirmed enrolment is spent: the next one.
    let code = oathtool(&secret, unix_now() + 30);
    let r = browser
        .submit(&s, &step, "Continue", &[("code", &code)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let tokens = rp.callback(header(&r, "location"), &request).await.unwrap();
    assert_eq!(
        tokens["claims"]["amr"],
        json!(["pwd", "otp", "mfa"]),
        "{tokens}"
    );

    // A forged form (no CSRF cookie) is refused.
    let mut stranger = Browser::default();
    let r = stranger.submit(&s, &page, "Sign in", &fill).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn logout_reaches_each_clients_back_channel_with_a_signed_logout_token() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let p = Provider::new(&s).await;
    s.register(&p.app, "ann@example.com").await;
    let sink = HttpSink::start().await.unwrap();
    let mut registered = fields("Orders", true);
    registered["backchannel_logout_uri"] = json!(sink.url("/logout"));
    let registered = p.client(registered).await;
    let mut rp = p.rp(&registered, REDIRECT).await;
    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    let back = sign_in(&s, &mut browser, &request.url, false).await;
    let tokens = rp.callback(&back, &request).await.unwrap();
    let sid = tokens["claims"]["sid"].as_str().unwrap().to_owned();
    let logout = format!("/v1/apps/{}/oauth2/logout", p.app);
    assert_eq!(browser.call(&s, "GET", &logout, None).await.status, 200);

    let delivered = sink.wait_for(1, Duration::from_secs(10)).await;
    let body = String::from_utf8_lossy(&delivered[0].body).into_owned();
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    let token = &form["logout_token"];
    let parts: Vec<&str> = token.split('.').collect();
    let part = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[i]).unwrap()).unwrap()
    };
    let (header, claims) = (part(0), part(1));
    assert_eq!(header["typ"], "logout+jwt");
    assert_eq!(claims["iss"], p.issuer.as_str());
    assert_eq!(claims["aud"], registered["id"]);
    assert_eq!(claims["sid"], sid.as_str());
    assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(claims.get("nonce").is_none());
    // Signed by a key of the published set.
    let jwks = s.get("/.well-known/jwks.json", None).await.json();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's key is published");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(key["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap()
        .try_into()
        .unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    verifying
        .verify_strict(
            signed.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("a valid signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_page_sends_an_email_code_when_the_policy_requires_one() {
    let (s, smtp) = crate::support::with_smtp(&[]).await;
    let p = Provider::new(&s).await;
    let required = json!({"mfa": {"policy": "required"}});
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{}/settings", p.app),
            Some(&p.key),
            Some(required),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.register(&p.app, "ann@example.com").await;
    let registered = p.client(fields("Orders", true)).await;
    let mut rp = p.rp(&registered, REDIRECT).await;
    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    let page = browser.open(&s, &request.url).await;
    let fill = [("login", "ann@example.com"), ("password", PASSWORD)];
    let step = browser.submit(&s, &page, "Sign in", &fill).await;
    assert!(step.body.contains("Send a code by email"), "{}", step.body);
    let sent = browser.submit(&s, &step, "Send a code by email", &[]).await;
    assert!(sent.body.contains("on its way by email"), "{}", sent.body);
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await.remove(0);
    let code = crate::support::code_in(&mail.text);
    // A wrong code: the page again, saying so.
    let wrong = browser
        .submit(&s, &sent, "Continue", &[("code", "000000")])
        .await;
    assert_eq!(wrong.status, 200, "{}", wrong.body);
    assert!(wrong.body.contains("Try again"), "{}", wrong.body);
    let r = browser
        .submit(&s, &wrong, "Continue", &[("code", &code)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let tokens = rp.callback(header(&r, "location"), &request).await.unwrap();
    assert_eq!(
        tokens["claims"]["amr"],
        json!(["pwd", "otp", "mfa"]),
        "{tokens}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_page_offers_the_applications_social_providers() {
    use portcullis_tests::oidc::{OidcAccount, OidcClient, OidcProvider};
    let s = Stack::start_with(&[("PORTCULLIS_EGRESS_ALLOW_PRIVATE", "true")]).await;
    let p = Provider::new(&s).await;
    let callback = format!("{}/v1/apps/{}/oauth/corp/callback", s.issuer, p.app);
    let corp = tokio::task::block_in_place(|| {
        let clients = [OidcClient::new(
            "portcullis",
            "corp-secret-0123456789",
            &[&callback],
        )];
        let accounts = [OidcAccount::new("alice-sub", "alice@example.com", true)];
        OidcProvider::start(&clients, &accounts).unwrap()
    });
    let providers = json!({"oauth_providers": [{
        "name": "corp", "kind": "oidc", "issuer": corp.issuer(),
        "client_id": "portcullis", "client_secret": "corp-secret-0123456789",
    }]});
    let r = s
        .call(
            "PUT",
            &format!("/v1/apps/{}/settings", p.app),
            Some(&p.key),
            Some(providers),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let registered = p.client(fields("Orders", true)).await;
    let mut rp = p.rp(&registered, REDIRECT).await;
    let mut browser = Browser::default();
    let request = rp.authorization_url(json!({})).await.unwrap();
    let page = browser.open(&s, &request.url).await;
    let r = browser.submit(&s, &page, "Sign in with corp", &[]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let start = header(&r, "location").to_owned();
    let r = browser.call(&s, "GET", &start, None).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let back = corp
        .sign_in(header(&r, "location"), "alice-sub")
        .await
        .unwrap();
    let r = browser.open(&s, &back).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let resume = header(&r, "location").to_owned();
    assert!(resume.contains("/oauth2/social?"), "{resume}");
    let r = browser.open(&s, &resume).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let tokens = rp.callback(header(&r, "location"), &request).await.unwrap();
    assert_eq!(tokens["claims"]["amr"], json!(["oauth"]), "{tokens}");
    assert_eq!(tokens["claims"]["email"], "alice@example.com");
    // The way back is single use, and needs the browser that started it.
    let again = Browser::default().open(&s, &resume).await;
    assert_eq!(again.status, 400, "{}", again.body);
}
