//! A small browser for the provider's sign-in pages: requests, cookies, forms, page text.

use super::*;

/// A response of the provider, read whole.
pub(super) struct Page {
    pub(super) status: u16,
    pub(super) headers: hyper::HeaderMap,
    pub(super) body: String,
}

/// One request on a fresh connection; a body is sent form-urlencoded.
pub(super) async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    body: Option<String>,
) -> Result<Page> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if !cookie.is_empty() {
            request = request.header(hyper::header::COOKIE, cookie);
        }
        if body.is_some() {
            request = request.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(BROWSER_REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {BROWSER_REQUEST_TIMEOUT:?}"))?
}

/// A browser's cookies for one host: name, value and path, as RFC 6265 matches them
/// (the provider scopes its interaction cookies to `/interaction/UID` and `/auth/UID`).
#[derive(Debug, Default)]
pub(super) struct CookieJar {
    pub(super) cookies: Vec<(String, String, String)>,
}

impl CookieJar {
    /// Takes one `Set-Cookie` value; an expired or emptied cookie is removed.
    pub(super) fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        let mut path = "/".to_owned();
        let mut expired = value.is_empty();
        for attribute in parts {
            let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
            let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
            match key.as_str() {
                "path" if val.starts_with('/') => val.clone_into(&mut path),
                "max-age" => expired |= val.parse::<i64>().is_ok_and(|age| age <= 0),
                // The provider deletes cookies by expiring them at the epoch.
                "expires" => expired |= val.contains("1970"),
                _ => {}
            }
        }
        self.cookies.retain(|(n, _, p)| !(*n == name && *p == path));
        if !expired {
            self.cookies.push((name, value, path));
        }
    }

    /// The `Cookie` header for a request to `path` (with its query): longest paths first.
    pub(super) fn header_for(&self, path: &str) -> String {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let mut matching: Vec<_> = self
            .cookies
            .iter()
            .filter(|(_, _, scope)| path_matches(path, scope))
            .collect();
        matching.sort_by_key(|(_, _, scope)| std::cmp::Reverse(scope.len()));
        let mut header = String::new();
        for (name, value, _) in matching {
            if !header.is_empty() {
                header.push_str("; ");
            }
            let _ = write!(header, "{name}={value}");
        }
        header
    }
}

/// RFC 6265 §5.1.4 path-match.
pub(super) fn path_matches(path: &str, scope: &str) -> bool {
    path == scope
        || (path.starts_with(scope)
            && (scope.ends_with('/') || path.as_bytes().get(scope.len()) == Some(&b'/')))
}

/// A `<form>` of the provider's interaction pages: its `data-prompt` and `action`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Form {
    pub(super) prompt: String,
    pub(super) action: String,
}

/// The forms of a page written by `provider.mjs` (attributes in double quotes).
pub(super) fn forms(html: &str) -> Vec<Form> {
    let attribute = |tag: &str, name: &str| {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(html_unescape(&tag[start..start + len]))
    };
    html.match_indices("<form")
        .filter_map(|(start, _)| {
            let tag = &html[start..start + html[start..].find('>')?];
            Some(Form {
                prompt: attribute(tag, "data-prompt")?,
                action: attribute(tag, "action")?,
            })
        })
        .collect()
}

/// Undoes the numeric and common named entities of `provider.mjs`'s pages.
pub(super) fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(end) = rest.find(';').filter(|&end| end <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix('#')
                .and_then(|code| code.parse::<u32>().ok())
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of an HTML page for an error message: tags dropped, whitespace collapsed.
pub(super) fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    html_unescape(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
