//! A certified OpenID **relying party** for tests of an OpenID Provider: panva's
//! `openid-client` (npm, OpenID-certified, v6 pinned in `tests/rp/package-lock.json`) as
//! the client, so that the control plane's provider is judged by an independent RP rather
//! than by our own reading of the specifications.
//!
//! [`RelyingParty::start`] runs `tests/rp/rp.mjs` under Node.js as one long-lived process
//! per relying party: it discovers the issuer (plain `http` allowed) and is configured for
//! one [`RpClient`]. Each method then sends one JSON command line on the script's stdin
//! and reads one JSON answer line from its stdout (the wire format is documented at the
//! top of `rp.mjs`; the exchange is `node_lines.rs`'s, shared with the DPoP client); each
//! command is bounded by 20 s.
//!
//! The harness never drives a login page: [`RelyingParty::authorization_url`] gives the
//! test a URL (with fresh PKCE S256, `state` and `nonce`), the test signs in by its own
//! means (e.g. [`OidcProvider::sign_in`](crate::oidc::OidcProvider::sign_in), or the
//! control plane's own sign-in) and hands the URL the provider redirected to back to
//! [`RelyingParty::callback`], where openid-client checks the response and redeems the
//! code as a certified RP does.
//!
//! Answers: what openid-client returned, or, when it threw, `{"error": {...}}` with what
//! its exception carries: `name`, `message`, `code` (e.g. `OAUTH_RESPONSE_BODY_ERROR`,
//! `OAUTH_INVALID_RESPONSE`, `OAUTH_WWW_AUTHENTICATE_CHALLENGE`), and where present
//! `error`, `error_description` and `status` (a `ResponseBodyError` from an endpoint, an
//! `AuthorizationResponseError` from the callback, a `WWWAuthenticateChallengeError` with
//! its `challenges` and the first one's `error`); `cause`, the wrapped errors' messages
//! (openid-client's own `ClientError` says only "invalid response encountered" and keeps
//! the precise reason there, e.g. `unexpected "state" response parameter value`); and
//! `expected`, what a failed comparison wanted. A provider's refusal is therefore an
//! `Ok`, so a test can assert the exact OAuth error; `Err` is kept for the harness itself
//! (Node missing, the script dead or silent, a malformed command), and quotes the
//! script's stderr log.
//!
//! What openid-client 6.9 asks of a provider, worth knowing when one fails here
//! (`rp.rs`'s tests show several against `oidc-provider`):
//!
//! - Discovery: `ISSUER/.well-known/openid-configuration`, whose `issuer` must equal the
//!   one given after URL normalisation (`http://h:1` and `http://h:1/` are the same,
//!   `http://localhost:1` and `http://127.0.0.1:1` are not); the ID token's `iss` must
//!   then equal the discovered `issuer` string exactly.
//! - Plain `http` only because this harness opts in (`allowInsecureRequests`, on every
//!   request: discovery, token, JWKS, UserInfo); without it every endpoint must be https.
//! - RFC 9207: when discovery says `authorization_response_iss_parameter_supported`, a
//!   callback without `iss` is refused (`response parameter "iss" (issuer) missing`) and a
//!   wrong `iss` too, before the code is redeemed.
//! - The ID token: signature by a key of `jwks_uri` whose alg is in
//!   `id_token_signing_alg_values_supported` (RS256 when the provider lists none), `iss`,
//!   `aud` (with `azp` when several), `exp`, `iat`, `sub`, the `nonce` sent, `auth_time`
//!   when `max_age` was sent; 30 s of clock tolerance. `token_type` must be `Bearer` or
//!   `DPoP` (any case).
//! - UserInfo: its `sub` must equal the one expected (the ID token's).
//!
//! Not a mock provider nor a browser; nothing is persisted, and nothing here is fit for
//! production (plain http, no key storage).

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use crate::node_lines::{NodeLines, Script};

/// Bound on one command, HTTP exchanges included: openid-client's own per-request timeout
/// is 15 s (set in `rp.mjs`), so a hung provider shows as its error, not as this one.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The script's stderr, in its directory: openid-client's exceptions with their stacks,
/// and harness errors.
const LOG_FILE: &str = "rp.log";
/// `tests/rp/rp.mjs`, with its package.json and package-lock.json.
const SCRIPT: Script = Script {
    name: "rp",
    file: "rp.mjs",
    who: "the relying party",
    log_file: LOG_FILE,
    timeout: COMMAND_TIMEOUT,
};

/// The client a [`RelyingParty`] acts as, as registered at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpClient {
    pub client_id: String,
    /// `None` for a public client (`auth_method` `"none"`).
    pub client_secret: Option<String>,
    /// Sent in every authorization request; the token request's `redirect_uri` is the
    /// callback URL without its query, as openid-client derives it.
    pub redirect_uri: String,
    /// "client_secret_basic" | "client_secret_post" | "none"
    pub auth_method: String,
}

/// One authorization request, as [`RelyingParty::authorization_url`] made it: what the
/// callback is checked against. `state` or `nonce` is empty when the request was made
/// without one (`extra` set it to `null`); the callback then expects none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The full authorization URL, to open in a browser (or `sign_in`).
    pub url: String,
    pub state: String,
    pub nonce: String,
    /// The PKCE verifier; the URL carries its S256 challenge.
    pub code_verifier: String,
}

/// openid-client configured for one provider and one client, in its own Node.js process.
/// Dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct RelyingParty {
    /// `rp.mjs` under Node.js, in its directory (with [`LOG_FILE`]).
    lines: NodeLines,
    metadata: Value,
}

impl RelyingParty {
    /// Discovery of `issuer` (plain http allowed: openid-client's
    /// `allowInsecureRequests`), configured for `client`. Installs the npm packages first
    /// if this lock file's are not in the cache yet
    /// (`${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-rp/<hash>/`).
    ///
    /// # Errors
    ///
    /// Fails when `node` or `npm` is missing (naming the Debian packages), when the npm
    /// install fails, when `auth_method` is unknown, and when discovery fails: the error
    /// then quotes openid-client's (e.g. `fetch failed` with `connect ECONNREFUSED`, or
    /// `discovered metadata issuer does not match the expected issuer`).
    pub async fn start(issuer: &str, client: &RpClient) -> Result<Self> {
        let mut lines =
            NodeLines::start(SCRIPT, &format!("openid-client relying party of {issuer}")).await?;
        let discovered = lines
            .command(
                "discover",
                json!({
                    "issuer": issuer,
                    "client": {
                        "client_id": client.client_id,
                        "client_secret": client.client_secret,
                        "redirect_uri": client.redirect_uri,
                        "auth_method": client.auth_method,
                    },
                }),
            )
            .await?;
        if let Some(error) = discovered.get("error") {
            bail!("discovery of {issuer} failed; openid-client: {error}");
        }
        Ok(Self {
            metadata: discovered["metadata"].clone(),
            lines,
        })
    }

    /// The discovered metadata (JSON), as openid-client keeps it.
    pub fn metadata(&self) -> &Value {
        &self.metadata
    }

    /// A fresh PKCE verifier (S256), `state` and `nonce`, and the authorization URL
    /// carrying them with `redirect_uri`, `client_id`, `response_type=code` and scope
    /// `openid email profile offline_access`; `extra` (a JSON object) is merged in last:
    /// `scope`, `prompt`, `max_age`, `login_hint`..., numbers written as numbers, `null`
    /// removing a parameter (`{"nonce": null}` sends none).
    ///
    /// # Errors
    ///
    /// Fails when `extra` is not an object, when openid-client refuses to build the URL
    /// (no `authorization_endpoint` in the metadata), and on harness failures.
    pub async fn authorization_url(&mut self, extra: Value) -> Result<AuthRequest> {
        let answer = self
            .command("authorization_url", json!({ "extra": extra }))
            .await?;
        if let Some(error) = answer.get("error") {
            bail!("openid-client built no authorization URL: {error}");
        }
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {name} in the authorization request {answer}"))
        };
        Ok(AuthRequest {
            url: field("url")?,
            state: field("state")?,
            nonce: field("nonce")?,
            code_verifier: field("code_verifier")?,
        })
    }

    /// openid-client's `authorizationCodeGrant` with `callback_url` (where the provider
    /// redirected) and `request`'s verifier, `state` and `nonce`: the callback's `iss`,
    /// `state` and `error` are checked first, then the code is redeemed and the ID token
    /// validated (signature via `jwks_uri`, `iss`, `aud`, `nonce`, `exp`; `auth_time`
    /// when the request had `max_age`, which is read back from `request.url`; an ID token
    /// is required when its scope had `openid`).
    ///
    /// Returns the token response with `"claims"`, the ID token's claims (`null` without
    /// one), or `{"error": {...}}` when openid-client refused (e.g. `code`
    /// `OAUTH_INVALID_RESPONSE` with `cause` `unexpected "state" response parameter
    /// value`; `name` `AuthorizationResponseError` with `error` `access_denied`;
    /// `ResponseBodyError` with `error` `invalid_grant` for a code used twice).
    ///
    /// # Errors
    ///
    /// Only harness failures (a URL that does not parse among them).
    pub async fn callback(&mut self, callback_url: &str, request: &AuthRequest) -> Result<Value> {
        self.command(
            "callback",
            json!({
                "callback_url": callback_url,
                "request": {
                    "url": request.url,
                    "state": request.state,
                    "nonce": request.nonce,
                    "code_verifier": request.code_verifier,
                },
            }),
        )
        .await
    }

    /// openid-client's `refreshTokenGrant`: the token response with `"claims"` (those of a
    /// new ID token, else `null`), or `{"error": {...}}`.
    ///
    /// # Errors
    ///
    /// Only harness failures.
    pub async fn refresh(&mut self, refresh_token: &str) -> Result<Value> {
        self.command("refresh", json!({ "refresh_token": refresh_token }))
            .await
    }

    /// openid-client's `fetchUserInfo`: the claims, or `{"error": {...}}` (a `sub` other
    /// than `expected_sub` is refused; a rejected token is a `WWWAuthenticateChallengeError`
    /// with `status` 401 and the challenge's `error`).
    ///
    /// # Errors
    ///
    /// Only harness failures.
    pub async fn userinfo(&mut self, access_token: &str, expected_sub: &str) -> Result<Value> {
        self.command(
            "userinfo",
            json!({ "access_token": access_token, "expected_sub": expected_sub }),
        )
        .await
    }

    /// openid-client's `tokenIntrospection` (RFC 7662), authenticated as the client: the
    /// introspection response, or `{"error": {...}}` (`OAUTH_MISSING_SERVER_METADATA` when
    /// discovery names no `introspection_endpoint`).
    ///
    /// # Errors
    ///
    /// Only harness failures.
    pub async fn introspect(&mut self, token: &str) -> Result<Value> {
        self.command("introspect", json!({ "token": token })).await
    }

    /// openid-client's `tokenRevocation` (RFC 7009): `{}`, or `{"error": {...}}`
    /// (`OAUTH_MISSING_SERVER_METADATA` when discovery names no `revocation_endpoint`).
    ///
    /// # Errors
    ///
    /// Only harness failures.
    pub async fn revoke(&mut self, token: &str) -> Result<Value> {
        self.command("revoke", json!({ "token": token })).await
    }

    /// openid-client's `clientCredentialsGrant` with `scope` (none sent when empty): the
    /// token response, or `{"error": {...}}`.
    ///
    /// # Errors
    ///
    /// Only harness failures.
    pub async fn client_credentials(&mut self, scope: &str) -> Result<Value> {
        self.command("client_credentials", json!({ "scope": scope }))
            .await
    }

    /// openid-client's `buildEndSessionUrl` with `params` (a JSON object: `id_token_hint`,
    /// `post_logout_redirect_uri`, `state`...; `client_id` added unless given).
    ///
    /// # Errors
    ///
    /// Fails when the metadata has no `end_session_endpoint`, and on harness failures.
    pub async fn end_session_url(&mut self, params: Value) -> Result<String> {
        let answer = self
            .command("end_session_url", json!({ "params": params }))
            .await?;
        if let Some(error) = answer.get("error") {
            bail!("openid-client built no end-session URL: {error}");
        }
        answer["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no url in the end-session answer {answer}"))
    }

    /// Sends `cmd` with `args` (a JSON object) and returns the answer's result.
    async fn command(&mut self, cmd: &str, args: Value) -> Result<Value> {
        self.lines.command(cmd, args).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::free_port;
    use crate::oidc::{OidcAccount, OidcClient, OidcProvider};

    const SECRET: &str = "rp-secret";

    /// A provider with the confidential client `rp` (client_secret_basic) redirecting to
    /// `redirect_uri`, and the account `alice`.
    fn provider(redirect_uri: &str) -> OidcProvider {
        OidcProvider::start(
            &[OidcClient::new("rp", SECRET, &[redirect_uri])],
            &[OidcAccount::new("alice", "alice@example.test", true)],
        )
        .unwrap()
    }

    /// Nothing listens there: `sign_in` returns the redirect without following it.
    fn redirect_uri() -> String {
        format!("http://127.0.0.1:{}/cb", free_port())
    }

    fn confidential(redirect_uri: &str) -> RpClient {
        RpClient {
            client_id: "rp".to_owned(),
            client_secret: Some(SECRET.to_owned()),
            redirect_uri: redirect_uri.to_owned(),
            auth_method: "client_secret_basic".to_owned(),
        }
    }

    /// The decoded query parameters of `url`.
    fn query(url: &str) -> HashMap<String, String> {
        let Some((_, query)) = url.split_once('?') else {
            return HashMap::new();
        };
        query
            .split('&')
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(name), form_decode(value))
            })
            .collect()
    }

    fn form_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    /// The `error` object of an openid-client refusal, or a panic naming the answer.
    fn refusal(answer: &Value) -> &Value {
        answer
            .get("error")
            .unwrap_or_else(|| panic!("expected a refusal, got {answer}"))
    }

    #[tokio::test]
    async fn a_confidential_client_signs_in_and_reads_userinfo() {
        let redirect_uri = redirect_uri();
        let provider = provider(&redirect_uri);
        let issuer = provider.issuer();
        let mut rp = RelyingParty::start(&issuer, &confidential(&redirect_uri))
            .await
            .unwrap();
        assert_eq!(rp.metadata()["issuer"], issuer.as_str());
        assert_eq!(
            rp.metadata()["token_endpoint"],
            format!("{issuer}/token").as_str()
        );

        let request = rp.authorization_url(json!({})).await.unwrap();
        assert!(
            request.url.starts_with(&format!("{issuer}/auth?")),
            "{}",
            request.url
        );
        let sent = query(&request.url);
        assert_eq!(sent["client_id"], "rp");
        assert_eq!(sent["response_type"], "code");
        assert_eq!(sent["redirect_uri"], redirect_uri);
        assert_eq!(sent["scope"], "openid email profile offline_access");
        assert_eq!(sent["state"], request.state);
        assert_eq!(sent["nonce"], request.nonce);
        assert_eq!(sent["code_challenge_method"], "S256");
        assert!(!sent.contains_key("client_secret"));

        let callback = provider.sign_in(&request.url, "alice").await.unwrap();
        assert!(callback.starts_with(&redirect_uri), "{callback}");
        let tokens = rp.callback(&callback, &request).await.unwrap();
        assert!(tokens.get("error").is_none(), "{tokens}");
        let access_token = tokens["access_token"].as_str().unwrap();
        assert!(!access_token.is_empty());
        assert_eq!(
            tokens["token_type"], "bearer",
            "openid-client lower-cases it"
        );
        let claims = &tokens["claims"];
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], issuer.as_str());
        assert_eq!(claims["aud"], "rp");
        assert_eq!(claims["nonce"], request.nonce.as_str());
        // provider.mjs puts the scopes' claims into the ID token too.
        assert_eq!(claims["email"], "alice@example.test");
        // offline_access is not among provider.mjs's scopes: no refresh token.
        assert!(tokens.get("refresh_token").is_none(), "{tokens}");

        let userinfo = rp.userinfo(access_token, "alice").await.unwrap();
        assert_eq!(userinfo["sub"], "alice", "{userinfo}");
        assert_eq!(userinfo["email"], "alice@example.test");
        assert_eq!(userinfo["email_verified"], true);

        // UserInfo's sub must be the ID token's: openid-client checks it.
        let wrong_sub = rp.userinfo(access_token, "bob").await.unwrap();
        let error = refusal(&wrong_sub);
        assert_eq!(
            error["code"], "OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED",
            "{error}"
        );
        assert_eq!(
            error["cause"],
            r#"unexpected "response" body "sub" property value"#
        );
        assert_eq!(error["expected"], "bob", "{error}");

        // A rejected access token: the provider's challenge, as openid-client reads it.
        let bad_token = rp.userinfo("not-a-token", "alice").await.unwrap();
        let error = refusal(&bad_token);
        assert_eq!(error["name"], "WWWAuthenticateChallengeError", "{error}");
        assert_eq!(error["status"], 401);
        assert_eq!(error["error"], "invalid_token");
        assert_eq!(error["challenges"][0]["scheme"], "bearer");

        // A code is redeemed once.
        let replay = rp.callback(&callback, &request).await.unwrap();
        let error = refusal(&replay);
        assert_eq!(error["name"], "ResponseBodyError", "{error}");
        assert_eq!(error["code"], "OAUTH_RESPONSE_BODY_ERROR");
        assert_eq!(error["error"], "invalid_grant");
        assert_eq!(error["status"], 400);

        let id_token = tokens["id_token"].as_str().unwrap();
        let logout = rp
            .end_session_url(json!({
                "id_token_hint": id_token,
                "post_logout_redirect_uri": redirect_uri,
                "state": "bye",
            }))
            .await
            .unwrap();
        assert!(
            logout.starts_with(rp.metadata()["end_session_endpoint"].as_str().unwrap()),
            "{logout}"
        );
        let sent = query(&logout);
        assert_eq!(sent["id_token_hint"], id_token);
        assert_eq!(sent["post_logout_redirect_uri"], redirect_uri);
        assert_eq!(sent["state"], "bye");
        assert_eq!(sent["client_id"], "rp");
    }

    #[tokio::test]
    async fn the_callback_is_checked_before_the_code_is_redeemed() {
        let redirect_uri = redirect_uri();
        let provider = provider(&redirect_uri);
        let issuer = provider.issuer();
        let mut rp = RelyingParty::start(&issuer, &confidential(&redirect_uri))
            .await
            .unwrap();
        assert_eq!(
            rp.metadata()["authorization_response_iss_parameter_supported"],
            true
        );
        let request = rp
            .authorization_url(json!({ "scope": "openid email", "max_age": 300 }))
            .await
            .unwrap();
        let callback = provider.sign_in(&request.url, "alice").await.unwrap();
        let params = query(&callback);
        assert_eq!(params["iss"], issuer, "RFC 9207: {callback}");

        let other_state = AuthRequest {
            state: "another-state".to_owned(),
            ..request.clone()
        };
        let answer = rp.callback(&callback, &other_state).await.unwrap();
        let error = refusal(&answer);
        assert_eq!(error["name"], "ClientError", "{error}");
        assert_eq!(error["code"], "OAUTH_INVALID_RESPONSE");
        assert_eq!(
            error["cause"],
            r#"unexpected "state" response parameter value"#
        );
        assert_eq!(error["expected"], "another-state");

        // The provider advertises RFC 9207: openid-client insists on iss, and on its value.
        let without_iss = without_param(&callback, "iss");
        let answer = rp.callback(&without_iss, &request).await.unwrap();
        let error = refusal(&answer);
        assert_eq!(
            error["cause"], r#"response parameter "iss" (issuer) missing"#,
            "{error}"
        );
        let wrong_iss = format!(
            "{without_iss}&iss={}",
            crate::percent_encode("http://127.0.0.1:1")
        );
        let answer = rp.callback(&wrong_iss, &request).await.unwrap();
        let error = refusal(&answer);
        assert_eq!(
            error["cause"], r#"unexpected "iss" (issuer) response parameter value"#,
            "{error}"
        );
        assert_eq!(error["expected"], issuer.as_str());

        // None of those redeemed the code: the real callback still works, max_age and all.
        let tokens = rp.callback(&callback, &request).await.unwrap();
        assert!(tokens.get("error").is_none(), "{tokens}");
        assert_eq!(tokens["claims"]["sub"], "alice");
        assert!(tokens["claims"]["auth_time"].is_u64(), "{tokens}");

        // The user says no: the provider's error, as openid-client reports it.
        let request = rp.authorization_url(json!({})).await.unwrap();
        let denied = provider
            .sign_in_and_deny(&request.url, "alice")
            .await
            .unwrap();
        let answer = rp.callback(&denied, &request).await.unwrap();
        let error = refusal(&answer);
        assert_eq!(error["name"], "AuthorizationResponseError", "{error}");
        assert_eq!(error["code"], "OAUTH_AUTHORIZATION_RESPONSE_ERROR");
        assert_eq!(error["error"], "access_denied");
    }

    #[tokio::test]
    async fn what_the_provider_does_not_offer_is_refused_exactly() {
        let redirect_uri = redirect_uri();
        let provider = provider(&redirect_uri);
        let mut rp = RelyingParty::start(&provider.issuer(), &confidential(&redirect_uri))
            .await
            .unwrap();
        // provider.mjs: only the authorization_code grant; no introspection, no revocation.
        assert_eq!(
            rp.metadata()["grant_types_supported"],
            json!(["authorization_code"])
        );
        for answer in [
            rp.refresh("no-such-token").await.unwrap(),
            rp.client_credentials("").await.unwrap(),
        ] {
            let error = refusal(&answer);
            assert_eq!(error["name"], "ResponseBodyError", "{error}");
            assert_eq!(error["error"], "unsupported_grant_type");
            assert_eq!(error["status"], 400);
        }
        for answer in [
            rp.introspect("no-such-token").await.unwrap(),
            rp.revoke("no-such-token").await.unwrap(),
        ] {
            let error = refusal(&answer);
            assert_eq!(error["code"], "OAUTH_MISSING_SERVER_METADATA", "{error}");
        }
    }

    #[tokio::test]
    async fn a_public_client_sends_an_s256_challenge() {
        let redirect_uri = redirect_uri();
        let provider = provider(&redirect_uri);
        let public = RpClient {
            client_id: "public-rp".to_owned(),
            client_secret: None,
            redirect_uri: redirect_uri.clone(),
            auth_method: "none".to_owned(),
        };
        let mut rp = RelyingParty::start(&provider.issuer(), &public)
            .await
            .unwrap();
        let request = rp
            .authorization_url(json!({
                "scope": "openid",
                "prompt": "login",
                "max_age": 0,
                "login_hint": "alice@example.test",
                "nonce": null,
            }))
            .await
            .unwrap();
        let sent = query(&request.url);
        assert_eq!(sent["client_id"], "public-rp");
        assert_eq!(sent["code_challenge_method"], "S256");
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(request.code_verifier.as_bytes()));
        assert_eq!(sent["code_challenge"], challenge);
        assert!(request.code_verifier.len() >= 43, "RFC 7636 §4.1");
        assert_eq!(sent["scope"], "openid");
        assert_eq!(sent["prompt"], "login");
        assert_eq!(sent["max_age"], "0");
        assert_eq!(sent["login_hint"], "alice@example.test");
        assert!(!sent.contains_key("nonce"), "{}", request.url);
        assert_eq!(request.nonce, "");
        assert_eq!(sent["state"], request.state);

        // Two requests share nothing.
        let again = rp.authorization_url(json!({})).await.unwrap();
        assert_ne!(again.code_verifier, request.code_verifier);
        assert_ne!(again.state, request.state);
    }

    #[tokio::test]
    async fn discovery_failures_quote_openid_client() {
        let nothing = format!("http://127.0.0.1:{}", free_port());
        let client = confidential(&redirect_uri());
        let err = RelyingParty::start(&nothing, &client).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("discovery of"), "{text}");
        assert!(text.contains("fetch failed"), "{text}");
        assert!(text.contains("ECONNREFUSED"), "{text}");

        let provider = provider(&client.redirect_uri);
        // The issuer is compared after URL normalisation: a trailing slash passes, another
        // name for the same host does not.
        let slash = RelyingParty::start(&format!("{}/", provider.issuer()), &client)
            .await
            .unwrap();
        assert_eq!(slash.metadata()["issuer"], provider.issuer().as_str());
        let localhost = format!("http://localhost:{}", provider.port());
        let err = RelyingParty::start(&localhost, &client).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("discovered metadata issuer does not match the expected issuer"),
            "{text}"
        );

        let unknown = RpClient {
            auth_method: "private_key_jwt".to_owned(),
            ..client
        };
        let err = RelyingParty::start(&provider.issuer(), &unknown)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown auth_method"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn dropping_kills_the_process_and_removes_its_directory() {
        let redirect_uri = redirect_uri();
        let provider = provider(&redirect_uri);
        let mut rp = RelyingParty::start(&provider.issuer(), &confidential(&redirect_uri))
            .await
            .unwrap();
        let err = rp.command("no_such_command", json!({})).await.unwrap_err();
        assert!(format!("{err:#}").contains("unknown command"), "{err:#}");
        // Still usable after a refused command.
        rp.authorization_url(json!({})).await.unwrap();

        let pid = rp.lines.pid().unwrap();
        let dir = rp.lines.dir().to_path_buf();
        assert!(dir.join(LOG_FILE).is_file());
        drop(rp);
        assert!(!dir.exists(), "drop removes the directory");
        crate::eventually(Duration::from_secs(5), || async {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        })
        .await;
    }

    /// `url` without its query parameter `name`.
    fn without_param(url: &str, name: &str) -> String {
        let (base, query) = url.split_once('?').unwrap();
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| pair.split_once('=').map_or(*pair, |(key, _)| key) != name)
            .collect();
        assert_ne!(kept.len(), query.split('&').count(), "no {name} in {url}");
        format!("{base}?{}", kept.join("&"))
    }
}
