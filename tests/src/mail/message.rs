//! Received messages parsed for tests: headers, MIME parts, transfer and header encodings.

use super::*;

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// A received message, parsed for tests. Line breaks in the decoded fields are `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The message as stored. aiosmtpd adds `X-Peer`, `X-MailFrom` and `X-RcptTo`
    /// headers; the last two hold the SMTP envelope (see [`header`](Self::header)).
    pub raw: String,
    /// The addresses of the `To` header (display names dropped).
    pub to: Vec<String>,
    /// The address of the `From` header (display name dropped); empty when missing.
    pub from: String,
    /// The `Subject` header, unfolded and with encoded words decoded.
    pub subject: String,
    /// The first `text/plain` part (or the body of a non-multipart plain message),
    /// decoded; empty when there is none.
    pub text: String,
    /// The first `text/html` part, decoded.
    pub html: Option<String>,
}

impl Mail {
    /// Parses a message (CRLF or LF line endings). Never fails: what cannot be parsed is
    /// left empty or undecoded.
    pub fn parse(raw: &str) -> Mail {
        let normalized = raw.replace("\r\n", "\n");
        let (headers, body) = split_message(&normalized);
        let mut text = None;
        let mut html = None;
        collect_bodies(&headers, body, &mut text, &mut html);
        Mail {
            raw: raw.to_owned(),
            to: find_header(&headers, "to")
                .map(addresses)
                .unwrap_or_default(),
            from: find_header(&headers, "from")
                .and_then(|from| addresses(from).into_iter().next())
                .unwrap_or_default(),
            subject: find_header(&headers, "subject")
                .map(decode_encoded_words)
                .unwrap_or_default(),
            text: text.unwrap_or_default(),
            html,
        }
    }

    /// The first top-level header called `name` (any case), unfolded and with encoded
    /// words decoded; e.g. `header("x-rcptto")` for the envelope recipients.
    pub fn header(&self, name: &str) -> Option<String> {
        let normalized = self.raw.replace("\r\n", "\n");
        let (headers, _) = split_message(&normalized);
        find_header(&headers, name).map(decode_encoded_words)
    }
}

/// Header fields (lower-case names, unfolded values) and the body after the blank line.
pub(super) fn split_message(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut offset = 0;
    let mut body = "";
    for line in text.split_inclusive('\n') {
        offset += line.len();
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            body = &text[offset..];
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Unfolding removes the line break only, keeping the whitespace.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((
                name.trim().to_ascii_lowercase(),
                value.trim_start().to_owned(),
            ));
        }
    }
    for (_, value) in &mut headers {
        value.truncate(value.trim_end().len());
    }
    (headers, body)
}

pub(super) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Fills `text` and `html` with the first plain and HTML bodies, descending into
/// `multipart/*` parts; attachments are skipped.
pub(super) fn collect_bodies(
    headers: &[(String, String)],
    body: &str,
    text: &mut Option<String>,
    html: &mut Option<String>,
) {
    let content_type = find_header(headers, "content-type").unwrap_or("text/plain");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("multipart/") {
        if let Some(boundary) = param(content_type, "boundary") {
            for part in split_multipart(body, &boundary) {
                let (part_headers, part_body) = split_message(part);
                collect_bodies(&part_headers, part_body, text, html);
            }
        }
        return;
    }
    let attachment = find_header(headers, "content-disposition").is_some_and(|disposition| {
        disposition
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment")
    });
    let slot = match mime.as_str() {
        _ if attachment => return,
        "text/plain" | "" => text,
        "text/html" => html,
        _ => return,
    };
    if slot.is_none() {
        *slot = Some(decode_body(headers, body));
    }
}

/// The parts of a multipart body: the text between `--boundary` lines, up to the
/// closing `--boundary--`. The line break before a delimiter belongs to the delimiter.
pub(super) fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let rest = line.trim_end().strip_prefix(delimiter.as_str());
        if let Some(rest @ ("" | "--")) = rest {
            if let Some(start) = start {
                let part: &str = &body[start..offset];
                parts.push(part.strip_suffix('\n').unwrap_or(part));
            }
            if rest == "--" {
                return parts;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    // Not closed: keep what there is.
    if let Some(start) = start {
        parts.push(&body[start..]);
    }
    parts
}

/// A body undone of its `Content-Transfer-Encoding` and charset.
pub(super) fn decode_body(headers: &[(String, String)], body: &str) -> String {
    let encoding = find_header(headers, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => decode_base64(body).unwrap_or_else(|| body.as_bytes().to_vec()),
        _ => body.as_bytes().to_vec(),
    };
    let charset = find_header(headers, "content-type").and_then(|value| param(value, "charset"));
    decode_charset(&bytes, charset.as_deref())
}

/// Quoted-printable (RFC 2045): `=XX` escapes, `=` at a line end is a soft break, and
/// trailing whitespace (added in transport) is dropped. Invalid escapes stay as they are.
pub(super) fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_end_matches([' ', '\t', '\r']);
        let (line, soft_break) = match line.strip_suffix('=') {
            Some(line) => (line, true),
            None => (line, false),
        };
        decode_hex_escapes(line, false, &mut out);
        if !soft_break && lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}

/// Appends `text` to `out` with `=XX` escapes decoded (and `_` as a space when
/// `underscore_is_space`, as in RFC 2047 "Q" encoded words).
pub(super) fn decode_hex_escapes(text: &str, underscore_is_space: bool, out: &mut Vec<u8>) {
    let hex = |byte: u8| {
        char::from(byte)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                if let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            b'_' if underscore_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
}

/// Base64 with the whitespace of line wrapping ignored and padding optional.
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).ok()
}

/// Text from bytes in `charset`: Latin-1 is mapped byte for byte, anything else is read
/// as UTF-8 (invalid sequences replaced).
pub(super) fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    let latin1 = charset.is_some_and(|charset| {
        ["iso-8859-1", "iso_8859-1", "latin1", "latin-1", "l1"]
            .iter()
            .any(|name| charset.eq_ignore_ascii_case(name))
    });
    if latin1 {
        bytes.iter().copied().map(char::from).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in a header value; the
/// whitespace between two adjacent encoded words is dropped, as the RFC says.
pub(super) fn decode_encoded_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        if let Some((decoded, len)) = encoded_word(candidate) {
            if !(after_word && before.trim().is_empty()) {
                out.push_str(before);
            }
            out.push_str(&decoded);
            rest = &candidate[len..];
            after_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &candidate[2..];
            after_word = false;
        }
    }
    out.push_str(rest);
    out
}

/// The encoded word at the start of `text`: its decoded text and its length.
pub(super) fn encoded_word(text: &str) -> Option<(String, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let payload = &inner[..end];
    if [charset, encoding, payload]
        .iter()
        .any(|part| part.contains(char::is_whitespace))
    {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => decode_base64(payload)?,
        "Q" | "q" => {
            let mut bytes = Vec::with_capacity(payload.len());
            decode_hex_escapes(payload, true, &mut bytes);
            bytes
        }
        _ => return None,
    };
    // RFC 2231 lets a language follow the charset: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or_default();
    // `inner` is a suffix of `text`; the word ends after the "?=".
    let len = text.len() - inner.len() + end + 2;
    Some((decode_charset(&bytes, Some(charset)), len))
}

/// The value of parameter `name` (any case) in a header such as `Content-Type`.
pub(super) fn param(value: &str, name: &str) -> Option<String> {
    split_top_level(value, ';')
        .into_iter()
        .skip(1)
        .find_map(|item| {
            let (key, val) = item.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| unquote(val.trim()))
        })
}

/// The addresses in an address-list header: `"Name" <a@b>, c@d` gives `a@b` and `c@d`.
pub(super) fn addresses(value: &str) -> Vec<String> {
    split_top_level(value, ',')
        .into_iter()
        .filter_map(|item| {
            let item = item.trim();
            let address = match (item.rfind('<'), item.rfind('>')) {
                (Some(open), Some(close)) if open < close => &item[open + 1..close],
                _ => item,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

/// Splits `text` at `separator`s outside double quotes and angle brackets.
pub(super) fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            _ if c == separator && !quoted && !angle => {
                items.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// A parameter value without its surrounding quotes and backslash escapes.
pub(super) fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => value.to_owned(),
    }
}
