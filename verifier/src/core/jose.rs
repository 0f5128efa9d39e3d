//! The compact JWS form, split and decoded by borrowing: segment slices, strict base64url
//! into fixed buffers, and the JOSE header and JWT claims read with [`super::json`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::json::{self, JsonError, JsonStr, Value};

/// Longest token accepted, checked before anything is parsed. Portcullis tokens are about
/// 600 bytes; foreign RS256 tokens with many claims stay well under this.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest decoded JOSE header.
pub const MAX_HEADER_LEN: usize = 1024;
/// Longest decoded payload (a bound implied by [`MAX_TOKEN_LEN`]).
pub const MAX_PAYLOAD_LEN: usize = MAX_TOKEN_LEN * 3 / 4;
/// Longest signature: RSA-4096.
pub const MAX_SIGNATURE_LEN: usize = 512;

/// Why a token's form was refused (all map to `invalid_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormError {
    TooLong,
    Segments,
    Base64,
    Json(JsonError),
    Header(&'static str),
    Claims(&'static str),
}

impl From<JsonError> for FormError {
    fn from(e: JsonError) -> Self {
        FormError::Json(e)
    }
}

/// The three segments of a compact JWS, borrowed from the token.
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    pub header: &'a [u8],
    pub payload: &'a [u8],
    pub signature: &'a [u8],
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
}

/// Splits a compact JWS into exactly three non-empty segments.
pub fn split(token: &[u8]) -> Result<Segments<'_>, FormError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(FormError::TooLong);
    }
    let mut dots = memchr::memchr_iter(b'.', token);
    let (Some(a), Some(b), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(FormError::Segments);
    };
    let seg = Segments {
        header: &token[..a],
        payload: &token[a + 1..b],
        signature: &token[b + 1..],
        signing_input: &token[..b],
    };
    if seg.header.is_empty() || seg.payload.is_empty() || seg.signature.is_empty() {
        return Err(FormError::Segments);
    }
    Ok(seg)
}

/// Strict base64url (RFC 7515 §2): no padding, no whitespace, canonical trailing bits.
/// Returns the decoded prefix of `out`.
pub fn b64_decode<'o>(input: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], FormError> {
    // URL_SAFE_NO_PAD refuses padding and non-zero trailing bits (non-canonical encodings).
    let n = URL_SAFE_NO_PAD
        .decode_slice(input, out)
        .map_err(|_| FormError::Base64)?;
    Ok(&out[..n])
}

/// The JOSE header members the verifier acts on.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub alg: JsonStr<'a>,
    pub kid: Option<JsonStr<'a>>,
    pub typ: Option<JsonStr<'a>>,
}

/// Reads a decoded JOSE header. `jku`, `x5u`, `jwk` and `x5c` are read past and never
/// acted on; `crit` (we understand no extension), `cty` (nested tokens), `zip`/`enc` (JWE)
/// and `b64` (RFC 7797 unencoded payloads) are refused.
pub fn parse_header(doc: &[u8]) -> Result<Header<'_>, FormError> {
    let mut alg = None;
    let mut kid = None;
    let mut typ = None;
    json::for_each_member(doc, |name, value| {
        match name {
            "alg" => alg = value.as_str(),
            "kid" => kid = Some(value.as_str().ok_or(JsonError::Syntax)?),
            "typ" => typ = Some(value.as_str().ok_or(JsonError::Syntax)?),
            "crit" | "cty" | "zip" | "enc" | "b64" => return Err(JsonError::Syntax),
            _ => {}
        }
        Ok(())
    })
    .map_err(|e| match e {
        JsonError::Syntax => FormError::Header("refused or malformed header member"),
        other => FormError::Json(other),
    })?;
    let alg = alg.ok_or(FormError::Header("alg missing or not a string"))?;
    Ok(Header { alg, kid, typ })
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Clone, Copy, Debug)]
pub enum Audience<'a> {
    One(JsonStr<'a>),
    Many(Value<'a>),
}

impl Audience<'_> {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(s) => s.eq_str(wanted),
            Audience::Many(v) => v
                .strings()
                .is_some_and(|mut it| it.any(|s| s.eq_str(wanted))),
        }
    }
}

/// The claims the verifier checks or passes on, borrowed from the decoded payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Claims<'a> {
    pub iss: Option<JsonStr<'a>>,
    pub sub: Option<JsonStr<'a>>,
    pub aud: Option<Audience<'a>>,
    pub client_id: Option<JsonStr<'a>>,
    pub sid: Option<JsonStr<'a>>,
    pub jti: Option<JsonStr<'a>>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// The `roles` array (strings only).
    pub roles: Option<Value<'a>>,
    pub scope: Option<JsonStr<'a>>,
    pub guest: bool,
    /// `cnf.jkt` (RFC 9449 §6.1): the thumbprint of the DPoP key the token is bound to.
    pub jkt: Option<JsonStr<'a>>,
}

impl<'a> Claims<'a> {
    /// Role names, empty when the claim is absent.
    pub fn roles(&self) -> impl Iterator<Item = JsonStr<'a>> + 'a {
        self.roles.and_then(|r| r.strings()).into_iter().flatten()
    }

    /// Scope tokens (space separated, RFC 8693 §4.2).
    pub fn scopes(&self) -> impl Iterator<Item = &'a str> + 'a {
        // Scope values are plain ASCII; an escaped scope string is treated as empty.
        self.scope
            .and_then(|s| s.as_plain())
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
    }
}

/// Reads a decoded claims set. Registered claims of the wrong type are refused rather
/// than ignored, so a token cannot dodge a check by mistyping a claim.
pub fn parse_claims(doc: &[u8]) -> Result<Claims<'_>, FormError> {
    let doc = std::str::from_utf8(doc).map_err(|_| FormError::Claims("claims are not UTF-8"))?;
    parse_claims_str(doc)
}

/// [`parse_claims`] on a payload already validated as UTF-8.
pub fn parse_claims_str(doc: &str) -> Result<Claims<'_>, FormError> {
    let mut c = Claims::default();
    let mut cnf = false;
    json::for_each_member_str(doc, |name, value| {
        let string = || value.as_str().ok_or(JsonError::Syntax);
        let date = || value.as_numeric_date().ok_or(JsonError::Syntax);
        match name {
            "iss" => c.iss = Some(string()?),
            "sub" => c.sub = Some(string()?),
            "client_id" => c.client_id = Some(string()?),
            "sid" => c.sid = Some(string()?),
            "jti" => c.jti = Some(string()?),
            "scope" => c.scope = Some(string()?),
            "exp" => c.exp = Some(date()?),
            "nbf" => c.nbf = Some(date()?),
            "iat" => c.iat = Some(date()?),
            "aud" => {
                c.aud = Some(match value {
                    Value::Str(s) => Audience::One(s),
                    Value::Array(_) if value.is_string_array() => Audience::Many(value),
                    _ => return Err(JsonError::Syntax),
                })
            }
            "roles" => {
                if !value.is_string_array() {
                    return Err(JsonError::Syntax);
                }
                c.roles = Some(value);
            }
            "guest" => c.guest = value == Value::Bool(true),
            "cnf" => {
                let Value::Object(raw) = value else {
                    return Err(JsonError::Syntax);
                };
                cnf = true;
                json::for_each_member_str(raw, |name, value| {
                    if name == "jkt" {
                        c.jkt = Some(value.as_str().ok_or(JsonError::Syntax)?);
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })
    .map_err(|e| match e {
        JsonError::Syntax => FormError::Claims("malformed or mistyped claim"),
        other => FormError::Json(other),
    })?;
    // A binding this verifier cannot check (mTLS `x5t#S256`, …) is refused, not ignored.
    if cnf && c.jkt.is_none() {
        return Err(FormError::Claims(
            "cnf binds the token to something other than a DPoP key",
        ));
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splits_exactly_three_segments() {
        assert!(split(b"a.b.c").is_ok());
        for bad in [
            &b"a.b"[..],
            b"a.b.c.d",
            b"a.b.c.d.e",
            b"abc",
            b".b.c",
            b"a..c",
            b"a.b.",
        ] {
            assert_eq!(split(bad).unwrap_err(), FormError::Segments, "{bad:?}");
        }
        assert_eq!(
            split(&[b'a'; MAX_TOKEN_LEN + 1]).unwrap_err(),
            FormError::TooLong
        );
    }

    #[test]
    fn base64url_is_strict() {
        let mut out = [0u8; 16];
        assert_eq!(b64_decode(b"AQI", &mut out).unwrap(), [1, 2]);
        for bad in [&b"AQI="[..], b"AQ+", b"AQ/", b"AQJ", b"A", b"AQ I", b"AQ\n"] {
            assert!(b64_decode(bad, &mut out).is_err(), "{bad:?}");
        }
        assert!(b64_decode(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA", &mut [0u8; 4]).is_err());
    }

    #[test]
    fn header_refusals() {
        assert!(
            parse_header(br#"{"alg":"EdDSA","kid":"k","typ":"at+jwt","jku":"http://x"}"#).is_ok()
        );
        for bad in [
            r#"{"kid":"k"}"#,
            r#"{"alg":1}"#,
            r#"{"alg":"EdDSA","crit":["exp"]}"#,
            r#"{"alg":"EdDSA","crit":[]}"#,
            r#"{"alg":"EdDSA","cty":"JWT"}"#,
            r#"{"alg":"EdDSA","b64":false}"#,
            r#"{"alg":"EdDSA","alg":"none"}"#,
            r#"{"alg":"EdDSA","kid":7}"#,
        ] {
            assert!(parse_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_types_are_enforced() {
        let c =
            parse_claims(br#"{"sub":"u","aud":["a","b"],"exp":10,"roles":["r"],"scope":"x y"}"#)
                .unwrap();
        assert!(c.aud.unwrap().contains("b") && !c.aud.unwrap().contains("c"));
        assert_eq!(c.scopes().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(c.roles().map(|r| r.raw()).collect::<Vec<_>>(), ["r"]);
        let c = parse_claims(br#"{"cnf":{"jkt":"t","x5t#S256":"x"}}"#).unwrap();
        assert_eq!(c.jkt.map(|j| j.raw()), Some("t"));
        for bad in [
            r#"{"exp":"10"}"#,
            r#"{"iss":["a"]}"#,
            r#"{"aud":5}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"roles":"admin"}"#,
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"cnf":"k"}"#,
            r#"{"cnf":{"jkt":1}}"#,
            r#"{"cnf":{"x5t#S256":"abc"}}"#,
            r#"{"cnf":{"jkt":"a","jkt":"b"}}"#,
        ] {
            assert!(parse_claims(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
