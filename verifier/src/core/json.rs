//! A strict, borrowing JSON reader for JOSE headers and JWT claims.
//!
//! Hand-written on purpose: the verify path must not allocate, must reject duplicate member
//! names (RFC 7515 §4, RFC 8725 §3.x: duplicates are a known parser-differential attack),
//! and must read arrays (`roles`, `aud`) without building a `Vec`. serde_json allocates for
//! sequences and silently accepts duplicate unknown members, so it cannot serve here.
//!
//! Scope: RFC 8259 objects whose member names contain no escapes (no JOSE or JWT member
//! name needs one; refusing them makes duplicate detection exact), values of any JSON
//! type. Strings are validated (escapes, control characters) but kept raw; [`JsonStr`]
//! compares and decodes them on demand. Nesting is capped at [`MAX_DEPTH`] and objects at
//! [`MAX_MEMBERS`] members so hostile input costs bounded time and stack.

use std::fmt;

/// Deepest nesting accepted anywhere in a document.
pub const MAX_DEPTH: usize = 16;
/// Most members accepted in one object (duplicate detection is quadratic in this).
pub const MAX_MEMBERS: usize = 64;

/// Why a document was refused. Only the verifier's debug logs see these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    Syntax,
    DuplicateMember,
    TooDeep,
    TooManyMembers,
    EscapedMemberName,
}

/// A JSON string value, borrowed from the document without its quotes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl fmt::Debug for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl<'a> JsonStr<'a> {
    /// The string as it appears between the quotes (escapes not decoded).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The string itself when it holds no escape sequence (the common case).
    pub fn as_plain(&self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    /// Compares the decoded value with `other`, without allocating.
    pub fn eq_str(&self, other: &str) -> bool {
        if !self.escaped {
            return self.raw == other;
        }
        let mut want = other.chars();
        for c in self.chars() {
            if want.next() != Some(c) {
                return false;
            }
        }
        want.next().is_none()
    }

    /// Decodes into `buf` and returns the text, or `None` when `buf` is too small.
    pub fn decode_into<'b>(&self, buf: &'b mut [u8]) -> Option<&'b str> {
        let mut len = 0;
        for c in self.chars() {
            let n = c.len_utf8();
            c.encode_utf8(buf.get_mut(len..len + n)?);
            len += n;
        }
        std::str::from_utf8(&buf[..len]).ok()
    }

    /// The decoded characters. The string was validated when the document was read, so
    /// every escape here is well formed.
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        let mut rest = self.raw.chars();
        std::iter::from_fn(move || {
            let c = rest.next()?;
            if c != '\\' {
                return Some(c);
            }
            Some(match rest.next()? {
                'b' => '\u{8}',
                'f' => '\u{c}',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'u' => {
                    let hi = hex4(&mut rest)?;
                    if (0xD800..0xDC00).contains(&hi) {
                        rest.next(); // '\\'
                        rest.next(); // 'u'
                        let lo = hex4(&mut rest)?;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    } else {
                        char::from_u32(hi)?
                    }
                }
                other => other, // '"', '\\', '/'
            })
        })
    }
}

/// memchr2 only stops at a quote or a backslash; any other byte here is a bug, reported
/// as a syntax error rather than a panic.
fn unreachable_byte() -> Result<(), JsonError> {
    Err(JsonError::Syntax)
}

fn hex4(it: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + it.next()?.to_digit(16)?;
    }
    Some(v)
}

/// A JSON value, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Str(JsonStr<'a>),
    /// The number's text, validated against RFC 8259's grammar.
    Num(&'a str),
    Bool(bool),
    Null,
    /// The raw text of an array, brackets included; iterate with [`Value::strings`].
    Array(&'a str),
    /// The raw text of a nested object, braces included.
    Object(&'a str),
}

impl<'a> Value<'a> {
    pub fn as_str(&self) -> Option<JsonStr<'a>> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A NumericDate (RFC 7519 §2): an integer, or a non-integer floored to whole seconds.
    pub fn as_numeric_date(&self) -> Option<i64> {
        let Value::Num(text) = *self else { return None };
        if let Ok(v) = text.parse::<i64>() {
            return Some(v);
        }
        let v = text.parse::<f64>().ok()?.floor();
        // i64::MAX as f64 rounds up to 2^63, so compare strictly below it.
        (v.is_finite() && v >= i64::MIN as f64 && v < i64::MAX as f64).then_some(v as i64)
    }

    /// Whether this is an array whose every element is a string (walks it once).
    pub fn is_string_array(&self) -> bool {
        let Value::Array(raw) = *self else {
            return false;
        };
        let mut items = StrArray {
            reader: Reader::new(raw),
            started: false,
        };
        while let Some(item) = items.next_item() {
            if item.as_str().is_none() {
                return false;
            }
        }
        true
    }

    /// The string elements of an array value (`None` if this is not an array), without
    /// allocating; stops at the first non-string. Claims validate their arrays with
    /// [`Value::is_string_array`] once, when read, so later walks do not repeat it.
    pub fn strings(&self) -> Option<StrArray<'a>> {
        let Value::Array(raw) = *self else {
            return None;
        };
        Some(StrArray {
            reader: Reader::new(raw),
            started: false,
        })
    }
}

/// Iterator over the string elements of a validated array.
#[derive(Clone, Debug)]
pub struct StrArray<'a> {
    reader: Reader<'a>,
    started: bool,
}

impl<'a> StrArray<'a> {
    fn next_item(&mut self) -> Option<Value<'a>> {
        let r = &mut self.reader;
        if !self.started {
            self.started = true;
            r.ws();
            r.expect(b'[').ok()?;
            r.ws();
            if r.peek() == Some(b']') {
                return None;
            }
        } else {
            r.ws();
            if r.expect(b',').is_err() {
                return None;
            }
        }
        r.ws();
        r.value(1).ok()
    }
}

impl<'a> Iterator for StrArray<'a> {
    type Item = JsonStr<'a>;
    fn next(&mut self) -> Option<JsonStr<'a>> {
        self.next_item()?.as_str()
    }
}

fn name_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let (first, last) = (
        b.first().copied().unwrap_or(0) as u64,
        b.last().copied().unwrap_or(0) as u64,
    );
    1 << ((b.len() as u64)
        .wrapping_mul(31)
        .wrapping_add(first.wrapping_mul(7))
        .wrapping_add(last)
        % 64)
}

/// Reads a top-level object and calls `member` for each (name, value), in order.
/// Duplicate names, escaped names, trailing data and every syntax error are refused.
pub fn for_each_member<'a>(
    doc: &'a [u8],
    member: impl FnMut(&'a str, Value<'a>) -> Result<(), JsonError>,
) -> Result<(), JsonError> {
    let doc = std::str::from_utf8(doc).map_err(|_| JsonError::Syntax)?;
    for_each_member_str(doc, member)
}

/// [`for_each_member`] on a document already known to be UTF-8 (validated once, by the
/// caller, instead of string by string).
pub fn for_each_member_str<'a>(
    doc: &'a str,
    member: impl FnMut(&'a str, Value<'a>) -> Result<(), JsonError>,
) -> Result<(), JsonError> {
    let mut r = Reader::new(doc);
    r.ws();
    r.object(0, member)?;
    r.ws();
    if r.pos != doc.len() {
        return Err(JsonError::Syntax);
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Reader<'a> {
    /// The document, validated as UTF-8 once; `buf` is its bytes.
    doc: &'a str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(doc: &'a str) -> Self {
        Self {
            doc,
            buf: doc.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        if self.next_byte() == Some(b) {
            Ok(())
        } else {
            Err(JsonError::Syntax)
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The text between `start` and the current position. Callers only slice at ASCII
    /// delimiters of a document that is valid UTF-8, so this cannot fail in practice.
    fn text(&self, start: usize) -> Result<&'a str, JsonError> {
        self.doc.get(start..self.pos).ok_or(JsonError::Syntax)
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        match self.peek().ok_or(JsonError::Syntax)? {
            b'"' => self.string().map(Value::Str),
            b'{' => {
                let start = self.pos;
                self.skip_object(depth)?;
                self.text(start).map(Value::Object)
            }
            b'[' => {
                let start = self.pos;
                self.skip_array(depth)?;
                self.text(start).map(Value::Array)
            }
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(JsonError::Syntax),
        }
    }

    fn literal(&mut self, word: &[u8], v: Value<'a>) -> Result<Value<'a>, JsonError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(JsonError::Syntax)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(JsonError::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(JsonError::Syntax);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(JsonError::Syntax);
            }
        }
        self.text(start).map(Value::Num)
    }

    fn string(&mut self) -> Result<JsonStr<'a>, JsonError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            // Jump to the next quote or backslash; the run before it must hold no control
            // character (checked branch-free so the compiler can vectorise it).
            let rest = &self.buf[self.pos..];
            let run = memchr::memchr2(b'"', b'\\', rest).ok_or(JsonError::Syntax)?;
            if rest[..run].iter().fold(false, |bad, &b| bad | (b < 0x20)) {
                return Err(JsonError::Syntax);
            }
            self.pos += run;
            match self.next_byte().ok_or(JsonError::Syntax)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.next_byte().ok_or(JsonError::Syntax)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xDC00..0xE000).contains(&hi) {
                                return Err(JsonError::Syntax); // lone low surrogate
                            }
                            if (0xD800..0xDC00).contains(&hi) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                    return Err(JsonError::Syntax);
                                }
                            }
                        }
                        _ => return Err(JsonError::Syntax),
                    }
                }
                _ => unreachable_byte()?,
            }
        }
        let raw = self.doc.get(start..self.pos - 1).ok_or(JsonError::Syntax)?;
        Ok(JsonStr { raw, escaped })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = (self.next_byte().ok_or(JsonError::Syntax)? as char).to_digit(16);
            v = v * 16 + d.ok_or(JsonError::Syntax)?;
        }
        Ok(v)
    }

    fn skip_array(&mut self, depth: usize) -> Result<(), JsonError> {
        self.expect(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth + 1)?;
            self.ws();
            match self.next_byte() {
                Some(b',') => continue,
                Some(b']') => return Ok(()),
                _ => return Err(JsonError::Syntax),
            }
        }
    }

    /// Reads an object whose members sit at `depth + 1`, calling `member` for each.
    /// Duplicate and escaped member names are refused at every level.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&'a str, Value<'a>) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'{')?;
        let mut names: [&str; MAX_MEMBERS] = [""; MAX_MEMBERS];
        let mut count = 0;
        // A 64-bit Bloom filter over (length, first, last byte): a full comparison with
        // the names seen so far runs only when the filter says the name may be one.
        let mut seen: u64 = 0;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let name = self.string()?;
            if name.escaped {
                return Err(JsonError::EscapedMemberName);
            }
            let bit = name_bit(name.raw);
            if seen & bit != 0 && names[..count].contains(&name.raw) {
                return Err(JsonError::DuplicateMember);
            }
            seen |= bit;
            if count == MAX_MEMBERS {
                return Err(JsonError::TooManyMembers);
            }
            names[count] = name.raw;
            count += 1;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let value = self.value(depth + 1)?;
            member(name.raw, value)?;
            self.ws();
            match self.next_byte() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err(JsonError::Syntax),
            }
        }
    }

    /// Nested objects (rare in claims) are validated, duplicates included, but not kept.
    fn skip_object(&mut self, depth: usize) -> Result<(), JsonError> {
        self.object(depth, |_, _| Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn members(doc: &str) -> Result<Vec<(String, String)>, JsonError> {
        let mut out = Vec::new();
        for_each_member(doc.as_bytes(), |k, v| {
            out.push((k.to_owned(), format!("{v:?}")));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_members_of_every_type() {
        let m =
            members(r#" {"a":"x","b":12,"c":true,"d":null,"e":[1,"y"],"f":{"g":[]}} "#).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[4].1, format!("{:?}", Value::Array("[1,\"y\"]")));
    }

    #[test]
    fn refuses_duplicates_everywhere() {
        assert_eq!(members(r#"{"a":1,"a":2}"#), Err(JsonError::DuplicateMember));
        assert_eq!(
            members(r#"{"x":{"a":1,"a":2}}"#),
            Err(JsonError::DuplicateMember)
        );
        assert_eq!(
            members(r#"{"\u0061":1,"a":2}"#),
            Err(JsonError::EscapedMemberName)
        );
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in [
            "",
            "{",
            "}",
            "[]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":1} x",
            "{\"a\":[1,]}",
            "{\"a\":[,]}",
            "{'a':1}",
            "{\"a\":1}{}",
            "{\"a\":NaN}",
        ] {
            assert!(members(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn caps_depth_and_width() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(members(&deep), Err(JsonError::TooDeep));
        let wide: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("\"k{i}\":0")).collect();
        assert_eq!(
            members(&format!("{{{}}}", wide.join(","))),
            Err(JsonError::TooManyMembers)
        );
    }

    #[test]
    fn strings_compare_and_decode_escapes() {
        let mut got = None;
        for_each_member(br#"{"s":"a\u00e9\n\ud83d\ude00\/"}"#, |_, v| {
            got = v.as_str();
            Ok(())
        })
        .unwrap();
        let s = got.unwrap();
        assert!(s.eq_str("a\u{e9}\n\u{1F600}/"));
        assert!(!s.eq_str("a\u{e9}\n\u{1F600}"));
        let mut buf = [0u8; 32];
        assert_eq!(s.decode_into(&mut buf), Some("a\u{e9}\n\u{1F600}/"));
        assert_eq!(s.decode_into(&mut [0u8; 3]), None);
    }

    #[test]
    fn arrays_of_strings_iterate() {
        let mut v = None;
        for_each_member(br#"{"r":["admin", "ops"]}"#, |_, x| {
            v = Some(x);
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = v.unwrap().strings().unwrap().map(|s| s.raw()).collect();
        assert_eq!(names, ["admin", "ops"]);
        for_each_member(br#"{"r":["a", 1]}"#, |_, x| {
            assert!(!x.is_string_array());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn numeric_dates() {
        let date = |t: &'static str| Value::Num(t).as_numeric_date();
        assert_eq!(date("1700000000"), Some(1_700_000_000));
        assert_eq!(date("1700000000.9"), Some(1_700_000_000));
        assert_eq!(date("-1.5"), Some(-2));
        assert_eq!(date("1e300"), None);
        assert_eq!(Value::Bool(true).as_numeric_date(), None);
    }
}
