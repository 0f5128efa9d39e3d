//! The credentials a request carries, read one way by both binaries (sans-IO, no
//! allocation): a bearer token from `Authorization` (RFC 6750 §2.1), a DPoP-bound one
//! (`Authorization: DPoP`, RFC 9449 §7.1) and a cookie's value from the `Cookie` header
//! fields (RFC 6265 §5.4).
//!
//! Cookie rules, where the two binaries once read differently:
//! - every `Cookie` field counts, in order (HTTP/2 may split the header, RFC 9113 §8.2.3);
//!   the first pair with the name wins;
//! - names compare exactly (case-sensitive), after trimming whitespace around the pair,
//!   the name and the value;
//! - a value wrapped in one pair of double quotes loses them (RFC 6265 §4.1.1
//!   `cookie-value`); a lone or doubled quote is part of the value;
//! - an empty value is no value.

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive,
/// whitespace around the token ignored).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    with_scheme(value, b"bearer")
}

/// [`bearer`] on text.
pub fn bearer_str(value: &str) -> Option<&str> {
    // The token is a sub-slice of valid UTF-8 cut at ASCII bytes: still UTF-8.
    bearer(value.as_bytes()).and_then(|t| std::str::from_utf8(t).ok())
}

/// The token of an `Authorization: DPoP <token>` value, read as [`bearer`] reads its own.
pub fn dpop(value: &[u8]) -> Option<&[u8]> {
    with_scheme(value, b"dpop")
}

/// [`dpop`] on text.
pub fn dpop_str(value: &str) -> Option<&str> {
    dpop(value.as_bytes()).and_then(|t| std::str::from_utf8(t).ok())
}

fn with_scheme<'v>(value: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(name.len())?;
    if !scheme.eq_ignore_ascii_case(name) || rest.first().is_none_or(|b| *b != b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` in `fields` (the `Cookie` header values, in order).
pub fn cookie<'a>(fields: impl IntoIterator<Item = &'a [u8]>, name: &[u8]) -> Option<&'a [u8]> {
    fields.into_iter().find_map(|field| {
        field.split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            if pair[..eq].trim_ascii() != name {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                other => other,
            };
            (!value.is_empty()).then_some(value)
        })
    })
}

/// [`cookie`] on text fields.
pub fn cookie_str<'a>(fields: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    let value = cookie(fields.into_iter().map(str::as_bytes), name.as_bytes())?;
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"  BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer_str("Bearer é.x"), Some("é.x"));
        assert_eq!(bearer(b"DPoP abc"), None);
    }

    #[test]
    fn dpop_tokens() {
        assert_eq!(dpop(b"DPoP abc"), Some(&b"abc"[..]));
        assert_eq!(dpop_str("dpop  a.b.c "), Some("a.b.c"));
        assert_eq!(dpop(b"DPoPabc"), None);
        assert_eq!(dpop(b"Bearer abc"), None);
        assert_eq!(dpop(b"DPoP"), None);
    }

    #[test]
    fn cookies_by_exact_name_in_every_field() {
        let one = |h: &'static str, n: &str| cookie_str([h], n);
        assert_eq!(one("a=1; at=tok; b=2", "at"), Some("tok"));
        assert_eq!(one("xat=tok", "at"), None);
        assert_eq!(one("AT=tok", "at"), None, "names are case-sensitive");
        assert_eq!(one("at=", "at"), None);
        assert_eq!(
            one("at = tok ", "at"),
            Some("tok"),
            "whitespace around the pair"
        );
        assert_eq!(
            cookie_str(["a=1", "at=second-field"], "at"),
            Some("second-field"),
            "every Cookie field counts (the verifier once read only the first)"
        );
        assert_eq!(cookie_str(["at=first", "at=second"], "at"), Some("first"));
    }

    /// Quotes: one wrapping pair goes; anything else stays (the control plane once
    /// stripped every quote at either end).
    #[test]
    fn quotes_are_removed_only_in_pairs() {
        let one = |h: &'static str| cookie_str([h], "at");
        assert_eq!(one("at=\"tok\""), Some("tok"));
        assert_eq!(one("at=\"tok"), Some("\"tok"));
        assert_eq!(one("at=tok\""), Some("tok\""));
        assert_eq!(one("at=\"\"tok\"\""), Some("\"tok\""));
        assert_eq!(one("at=\"\""), None, "an empty quoted value is no value");
    }
}
