//! Cookie sessions (API.md §3 `options.set_cookie`): the tokens as `HttpOnly; Secure;
//! SameSite=Lax` cookies, read back as credentials, cleared at logout, and the CSRF guard
//! for state-changing requests they authenticate.
//!
//! The access cookie is `Path=/` (so the application's own pages, and the verifier beside
//! them, receive it); the refresh cookie only reaches this application's routes on the
//! control plane. A cookie-authenticated request that changes state (any method but
//! `GET`, `HEAD` and `OPTIONS`) must come with an `Origin` the application allows (its `cookies.allowed_origins`, or
//! `PORTCULLIS_PUBLIC_URL`'s origin): a cross-site form or script cannot use them.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;

use super::error::ApiError;
use super::extract::{authorization, cookie};
use crate::domain::apps::App;
use crate::domain::tokens::Tokens;
use crate::state::AppState;

/// The path below which the refresh cookie is sent: this application's routes, under
/// `PORTCULLIS_PUBLIC_URL`'s own path (a proxy may serve the control plane below one).
fn app_path(public_url: &str, app: &App) -> String {
    let after_scheme = public_url.split_once("://").map_or(public_url, |(_, r)| r);
    let base = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    format!("{base}/v1/apps/{}", app.id)
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, domain: Option<&str>) -> String {
    let mut cookie =
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Some(domain) = domain {
        cookie.push_str("; Domain=");
        cookie.push_str(domain);
    }
    cookie
}

fn append(response: &mut Response, cookie: String) {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Adds the access and refresh cookies of `tokens` to `response`.
pub(super) fn with_cookies(
    mut response: Response,
    public_url: &str,
    app: &App,
    tokens: &Tokens,
) -> Response {
    let c = &app.settings.cookies;
    let domain = c.domain.as_deref();
    let access = set_cookie(
        &c.access_name,
        &tokens.access_token,
        "/",
        tokens.expires_in,
        domain,
    );
    let refresh = set_cookie(
        &c.refresh_name,
        &tokens.refresh_token,
        &app_path(public_url, app),
        app.settings.refresh_token_ttl,
        domain,
    );
    append(&mut response, access);
    append(&mut response, refresh);
    response
}

/// `response`, with the tokens as cookies when `set_cookie`.
pub(super) fn maybe(
    response: Response,
    set_cookie: bool,
    public_url: &str,
    app: &App,
    tokens: &Tokens,
) -> Response {
    if set_cookie {
        with_cookies(response, public_url, app, tokens)
    } else {
        response
    }
}

/// Adds the headers that remove both cookies.
pub(super) fn cleared(mut response: Response, public_url: &str, app: &App) -> Response {
    let c = &app.settings.cookies;
    let domain = c.domain.as_deref();
    let access = set_cookie(&c.access_name, "", "/", 0, domain);
    let refresh = set_cookie(&c.refresh_name, "", &app_path(public_url, app), 0, domain);
    append(&mut response, access);
    append(&mut response, refresh);
    response
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').map_or(url.len(), |i| scheme.len() + 3 + i);
            &url[..end]
        }
        None => url,
    }
}

/// The CSRF guard (a middleware on every route): an unsafe request to `/v1/apps/{app}/…`
/// that carries none of `Authorization` but one of the application's cookies must come
/// from an allowed `Origin`; otherwise `403 forbidden`.
pub(super) async fn csrf_guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let headers = request.headers();
    // Only an access token (Bearer or DPoP) is no ambient credential: with any other
    // `Authorization` the routes still fall back to the cookie.
    if safe || authorization(headers).is_some() || !headers.contains_key(header::COOKIE) {
        return next.run(request).await;
    }
    let Some(segment) = request
        .uri()
        .path()
        .strip_prefix("/v1/apps/")
        .and_then(|rest| rest.split('/').next())
    else {
        return next.run(request).await;
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let own = |o: &str| o == origin_of(&state.config.public_url);
    let allowed = match state
        .apps
        .live(&state.pool, segment, crate::infra::clock::unix_now())
        .await
    {
        Ok(app) => {
            let c = &app.settings.cookies;
            let carries = cookie(headers, &c.access_name).is_some()
                || cookie(headers, &c.refresh_name).is_some();
            !carries || origin.is_some_and(|o| own(o) || c.allowed_origins.iter().any(|a| a == o))
        }
        // A segment that names no application as written (percent-encoded, say) may still
        // name one once the route decodes it: with cookies, only the control plane's own
        // origin passes.
        Err(_) => origin.is_some_and(own),
    };
    if !allowed {
        metrics::counter!("portcullis_csrf_refused_total").increment(1);
        return ApiError::new(
            ErrorCode::Forbidden,
            "a cookie-authenticated request must come from an allowed Origin",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_paths() {
        assert_eq!(
            origin_of("https://id.example.com/auth"),
            "https://id.example.com"
        );
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        let cookie = set_cookie("n", "v", "/p", 60, Some("example.com"));
        assert_eq!(
            cookie,
            "n=v; Path=/p; Max-Age=60; HttpOnly; Secure; SameSite=Lax; Domain=example.com"
        );
    }
}
