//! The small HTML pages mailed links lead to, and the body extractor their forms post to.
//!
//! A mailed link (`GET …?token=`) only shows a page; the page's form POSTs the token. A mail
//! scanner that follows links therefore never uses a token up. The pages carry no script,
//! are never cached, never framed, and never leak the token in a `Referer`.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::extract::JsonBody;
use crate::domain::messages::escape;
use crate::http::error::ApiError;

/// A body sent as JSON (API clients) or as an HTML form (the pages below). `html` says
/// which, so the handler answers in kind.
#[derive(Debug)]
pub(super) struct Submitted<T> {
    pub body: T,
    pub html: bool,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Submitted<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            let JsonBody(body) = JsonBody::from_request(req, state).await?;
            return Ok(Self { body, html: false });
        }
        // axum's rejection is replaced: it could quote a submitted value.
        let axum::extract::Form(body) = axum::extract::Form::<T>::from_request(req, state)
            .await
            .map_err(|_| ApiError::bad_request("the form is incomplete or too large"))?;
        Ok(Self { body, html: true })
    }
}

/// A form on a page: where it posts, its hidden fields, visible inputs and its button.
#[derive(Debug)]
pub(super) struct Form<'a> {
    pub action: &'a str,
    pub hidden: &'a [(&'a str, &'a str)],
    /// `(name, label, type)` of visible inputs.
    pub inputs: &'a [(&'a str, &'a str, &'a str)],
    pub button: &'a str,
}

/// An HTML page: a title, a message, and optionally a form.
pub(super) fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    form: Option<Form<'_>>,
) -> Response {
    page_scripted(status, title, message, form.as_slice(), Look::default())
}

/// How a page looks beyond its text: one script of this origin (`script`: its path), and
/// an application's branding (a logo from an `https:` URL, the buttons' colour).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Look<'a> {
    pub script: Option<&'a str>,
    pub logo: Option<&'a str>,
    /// `#rrggbb`, checked when the settings were stored.
    pub color: Option<&'a str>,
}

/// A page with forms, as `look` says; the CSP allows its script and requests to this
/// origin, its logo's `https:` image, nothing else.
pub(super) fn page_scripted(
    status: StatusCode,
    title: &str,
    message: &str,
    forms: &[Form<'_>],
    look: Look<'_>,
) -> Response {
    let color = look
        .color
        .filter(|c| {
            c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|c| format!("button{{background:{c};color:#fff;border:0}}"))
        .unwrap_or_default();
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:sans-serif;max-width:28rem;margin:3rem auto;\
         padding:0 1rem}}input,button{{font-size:1rem;padding:.5rem;margin:.25rem 0;width:100%}}\
         img{{max-height:4rem}}{color}</style></head><body>",
        t = escape(title),
    );
    if let Some(logo) = look.logo {
        html.push_str(&format!("<img src=\"{}\" alt=\"\">", escape(logo)));
    }
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p>",
        escape(title),
        escape(message)
    ));
    for form in forms {
        html.push_str(&format!(
            "<form method=\"post\" action=\"{}\">",
            escape(form.action)
        ));
        for (name, value) in form.hidden {
            html.push_str(&format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            ));
        }
        for (name, label, kind) in form.inputs {
            html.push_str(&format!(
                "<label>{}<input name=\"{}\" type=\"{}\" required></label>",
                escape(label),
                escape(name),
                escape(kind)
            ));
        }
        html.push_str(&format!(
            "<button type=\"submit\">{}</button></form>",
            escape(form.button)
        ));
    }
    if let Some(src) = look.script {
        html.push_str(&format!("<script src=\"{}\"></script>", escape(src)));
    }
    html.push_str("</body></html>");
    let mut response = (status, html).into_response();
    let csp = match (look.script.is_some(), look.logo.is_some()) {
        (true, true) => {
            "default-src 'none'; script-src 'self'; connect-src 'self'; img-src https:; \
             style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
        }
        (true, false) => {
            "default-src 'none'; script-src 'self'; connect-src 'self'; \
             style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
        }
        (false, true) => {
            "default-src 'none'; img-src https:; style-src 'unsafe-inline'; base-uri 'none'; \
             frame-ancestors 'none'"
        }
        (false, false) => {
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
        }
    };
    locked_down(&mut response, "text/html; charset=utf-8", csp);
    response
}

/// Headers of every page (and of its script): the content type, the page's CSP, and never
/// framed, cached, sniffed or named in a `Referer`.
pub(super) fn locked_down(response: &mut Response, content_type: &'static str, csp: &'static str) {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The page for a refused form post: the problem's title and detail, its status.
pub(super) fn problem_page(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    page(status, e.code.title(), &e.detail, None)
}

/// The answer to a [`Submitted`] body: JSON for API clients; for a form, the page `done`
/// (title, message) or the problem as a page.
pub(super) fn answer<T: serde::Serialize>(
    html: bool,
    result: Result<T, ApiError>,
    done: (&str, &str),
) -> Response {
    match result {
        Ok(_) if html => page(StatusCode::OK, done.0, done.1, None),
        Ok(body) => axum::Json(body).into_response(),
        Err(e) if html => problem_page(&e),
        Err(e) => e.into_response(),
    }
}
