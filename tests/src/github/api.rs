//! The stand-in's endpoints: authorize, access token, user and emails, as GitHub documents them.

use super::*;

impl State {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not take the stand-in down with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET /login/oauth/authorize`: the user (already signed in, consent given) is sent
    /// back with a code.
    pub(super) fn authorize(&self, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let refuse = |why: &str| answer(StatusCode::BAD_REQUEST, "text/plain", why.to_owned());
        let param = |name: &str| query.get(name).map(String::as_str);
        if param("client_id") != Some(self.client_id.as_str()) {
            return refuse("unknown client_id");
        }
        let Some(redirect_uri) = param("redirect_uri").filter(|uri| !uri.is_empty()) else {
            return refuse("redirect_uri is required (no callback URL is registered)");
        };
        if param("code_challenge_method") != Some("S256") {
            return refuse("code_challenge_method must be S256");
        }
        let Some(challenge) = param("code_challenge").filter(|c| is_challenge(c)) else {
            return refuse("code_challenge must be 43 base64url characters");
        };
        let mut inner = self.lock();
        let user = match param("login") {
            Some(login) => self.users.iter().find(|user| user.login == login),
            None => inner
                .signed_in
                .and_then(|id| self.users.iter().find(|user| user.id == id)),
        };
        let Some(user) = user else {
            return refuse("nobody is signed in (sign_in_as, or a login parameter)");
        };
        let code = random_string(20);
        let mut location = format!(
            "{redirect_uri}{}code={code}",
            if redirect_uri.contains('?') { '&' } else { '?' }
        );
        if let Some(state) = param("state") {
            let _ = write!(location, "&state={}", percent_encode(state));
        }
        let Ok(location) = HeaderValue::from_str(&location) else {
            return refuse("redirect_uri is not a URL");
        };
        inner.grants.insert(
            code,
            Grant {
                user: user.id,
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                scopes: scopes_of(param("scope").unwrap_or("")),
                issued: Instant::now(),
                used: false,
            },
        );
        let mut response = answer(StatusCode::FOUND, "text/html", String::new());
        response.headers_mut().insert(header::LOCATION, location);
        response
    }

    /// `POST /login/oauth/access_token`: the code (with the client's secret and the PKCE
    /// verifier) for an access token.
    pub(super) fn access_token(
        &self,
        form: &HashMap<String, String>,
        json: bool,
    ) -> Response<Full<Bytes>> {
        let param = |name: &str| form.get(name).map(String::as_str);
        let refuse = |error: &str, description: &str| {
            let uri = "https://docs.github.com/apps/managing-oauth-apps/\
                       troubleshooting-oauth-app-access-token-request-errors";
            token_answer(
                json,
                &[
                    ("error", error),
                    ("error_description", description),
                    ("error_uri", uri),
                ],
            )
        };
        if param("client_id") != Some(self.client_id.as_str())
            || param("client_secret") != Some(self.client_secret.as_str())
        {
            return refuse(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            );
        }
        let bad_code = || {
            refuse(
                "bad_verification_code",
                "The code passed is incorrect or expired.",
            )
        };
        let mut inner = self.lock();
        let Some(grant) = param("code").and_then(|code| inner.grants.get_mut(code)) else {
            return bad_code();
        };
        if grant.used || grant.issued.elapsed() > CODE_TTL {
            return bad_code();
        }
        grant.used = true;
        if param("redirect_uri") != Some(grant.redirect_uri.as_str()) {
            return refuse(
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
            );
        }
        let verified = param("code_verifier")
            .is_some_and(|verifier| challenge_of(verifier) == grant.challenge);
        if !verified {
            return bad_code();
        }
        let token = format!("gho_{}", random_string(36));
        let (user, scopes) = (grant.user, grant.scopes.clone());
        let scope = scopes.join(",");
        inner.tokens.insert(token.clone(), (user, scopes));
        token_answer(
            json,
            &[
                ("access_token", &token),
                ("token_type", "bearer"),
                ("scope", &scope),
            ],
        )
    }

    /// `GET /api/v3/user` and `/api/v3/user/emails`.
    pub(super) fn api(&self, path: &str, request: &Recorded) -> Response<Full<Bytes>> {
        let refuse = |status: StatusCode, message: &str| {
            answer(
                status,
                "application/json; charset=utf-8",
                json!({"message": message, "documentation_url": API_DOCS}).to_string(),
            )
        };
        if request.header("user-agent").is_none_or(str::is_empty) {
            // GitHub's own words (it answers them as text).
            return answer(
                StatusCode::FORBIDDEN,
                "text/plain",
                "Request forbidden by administrative rules. Please make sure your request \
                 has a User-Agent header (https://docs.github.com/en/rest/overview/\
                 resources-in-the-rest-api#user-agent-required)."
                    .to_owned(),
            );
        }
        let Some(token) = request.header("authorization").and_then(bearer) else {
            return refuse(StatusCode::UNAUTHORIZED, "Requires authentication");
        };
        let granted = self.lock().tokens.get(token).cloned();
        let Some((id, scopes)) = granted else {
            return refuse(StatusCode::UNAUTHORIZED, "Bad credentials");
        };
        let Some(user) = self.users.iter().find(|user| user.id == id) else {
            return refuse(StatusCode::UNAUTHORIZED, "Bad credentials");
        };
        let body = if path == "/api/v3/user" {
            json!({
                "login": user.login,
                "id": user.id,
                "node_id": format!("U_{}", user.id),
                "type": "User",
                "site_admin": false,
                "name": user.name,
                "email": null,
            })
        } else if scopes.iter().any(|s| s == "user:email" || s == "user") {
            user.emails
                .iter()
                .map(|(email, primary, verified)| {
                    json!({
                        "email": email,
                        "primary": primary,
                        "verified": verified,
                        "visibility": if *primary { json!("private") } else { Value::Null },
                    })
                })
                .collect()
        } else {
            return refuse(StatusCode::NOT_FOUND, "Not Found");
        };
        let mut response = answer(
            StatusCode::OK,
            "application/json; charset=utf-8",
            body.to_string(),
        );
        if let Ok(scopes) = HeaderValue::from_str(&scopes.join(", ")) {
            response.headers_mut().insert("x-oauth-scopes", scopes);
        }
        response
    }
}

pub(super) fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The token endpoint's answer, always 200 (errors too), as JSON or as a form.
pub(super) fn token_answer(json: bool, pairs: &[(&str, &str)]) -> Response<Full<Bytes>> {
    if json {
        let object: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|&(key, value)| (key.to_owned(), json!(value)))
            .collect();
        return answer(
            StatusCode::OK,
            "application/json; charset=utf-8",
            Value::Object(object).to_string(),
        );
    }
    let form: Vec<String> = pairs
        .iter()
        .map(|&(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    answer(
        StatusCode::OK,
        "application/x-www-form-urlencoded; charset=utf-8",
        form.join("&"),
    )
}

/// The token of `Authorization: Bearer <token>` or `token <token>` (scheme in any case).
pub(super) fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    let token = token.trim();
    (known && !token.is_empty()).then_some(token)
}

/// Requested scopes (space separated, as sent; GitHub also takes commas).
pub(super) fn scopes_of(scope: &str) -> Vec<String> {
    scope
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// RFC 7636 §4.2: an S256 challenge is the unpadded base64url of 32 bytes.
pub(super) fn is_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// An `application/x-www-form-urlencoded` string (a query or a form body); the first of
/// repeated names wins, undecodable bytes are replaced.
pub(super) fn parse_form(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(form_decode(name))
            .or_insert_with(|| form_decode(value));
    }
    out
}

pub(super) fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if hex(i + 1).is_some() && hex(i + 2).is_some() => {
                let (high, low) = (hex(i + 1).unwrap_or(0), hex(i + 2).unwrap_or(0));
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
pub(super) fn challenge_of(verifier: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}
