//! What an accepted token says about its caller, decoded once and laid out the way the
//! transports pass it upstream: the texts of `x-auth-user-id`, `x-auth-session-id`,
//! `x-auth-app-id`, `x-auth-roles` and `x-auth-scope`, plus the few numbers a later check
//! needs (times, and the session and user ids parsed for the revocation sets).
//!
//! The uncached path renders an [`Identity`] from the [`Claims`] into a caller-owned
//! buffer; the verified-token cache stores exactly those bytes and [`Facts`], and a hit
//! copies them back. Both paths therefore hand the transports the same value, and a hit
//! does no base64 or JSON work.
//!
//! Roles are joined with `,` (the header's separator). A role that itself contains a comma
//! cannot travel in that header without ambiguity and is dropped, from the header and from
//! the route policy alike: dropping a role can only take a permission away. Portcullis'
//! control plane refuses such role names. Scope values are the space-separated tokens of a
//! plain `scope` string; an escaped `scope` counts as empty (as it always has).

use super::jose::{Audience, Claims};
use super::json::JsonStr;
use super::revocations::{Id, parse_uuid};

/// Longest rendered identity: never more than the decoded payload it comes from.
pub const MAX_IDENTITY_LEN: usize = super::jose::MAX_PAYLOAD_LEN;

const HAS_SUB: u8 = 1;
const HAS_SID: u8 = 1 << 1;
const HAS_APP: u8 = 1 << 2;
const SUB_UUID: u8 = 1 << 3;
const SID_UUID: u8 = 1 << 4;
const HAS_JKT: u8 = 1 << 5;

/// The fixed-size part of an identity: text lengths, presence flags, times and the ids
/// parsed for the revocation lookups. Stored in a cache slot as a few machine words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub(crate) flags: u8,
    /// Byte lengths of sub, sid, app, roles and scope, in that order in the text.
    pub(crate) lens: [u16; 5],
    pub(crate) exp: i64,
    pub(crate) nbf: Option<i64>,
    pub(crate) iat: Option<i64>,
    /// `sid` and `sub` as 128-bit values when they are UUIDs (flags say which).
    pub(crate) sid: u128,
    pub(crate) sub: u128,
    /// `cnf.jkt` decoded (flags say whether there is one).
    pub(crate) jkt: [u8; 32],
}

impl Facts {
    /// Total length of the identity text.
    pub fn text_len(&self) -> usize {
        self.lens.iter().map(|l| *l as usize).sum()
    }

    pub fn exp(&self) -> i64 {
        self.exp
    }

    pub fn nbf(&self) -> Option<i64> {
        self.nbf
    }

    pub fn iat(&self) -> Option<i64> {
        self.iat
    }

    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`), if it is bound.
    pub fn jkt(&self) -> Option<&[u8; 32]> {
        (self.flags & HAS_JKT != 0).then_some(&self.jkt)
    }
}

/// An accepted token's caller, borrowed from a [`super::Scratch`].
#[derive(Clone, Copy, Debug)]
pub struct Identity<'s> {
    facts: Facts,
    text: &'s str,
}

impl<'s> Identity<'s> {
    /// `text` must be the rendered text of `facts` (checked: its length, and that every
    /// field boundary falls on a character boundary).
    pub(crate) fn new(facts: Facts, text: &'s str) -> Option<Self> {
        if text.len() != facts.text_len() {
            return None;
        }
        let mut at = 0;
        for len in facts.lens {
            at += len as usize;
            if !text.is_char_boundary(at) {
                return None;
            }
        }
        Some(Self { facts, text })
    }

    /// Renders the identity of `claims` into `buf`; refused when `cnf.jkt` is not a
    /// SHA-256 thumbprint, or when it does not fit (a buffer as long as the payload the
    /// claims were read from always fits). `claims.exp` stands for "no expiry" when
    /// absent: the verifier refuses such tokens before this.
    pub fn from_claims(claims: &Claims<'_>, buf: &'s mut [u8]) -> Result<Self, &'static str> {
        const TOO_LARGE: &str = "claims too large";
        let facts = render(claims, buf).map_err(|e| match e {
            RenderError::TooLarge => TOO_LARGE,
            RenderError::Jkt => "cnf.jkt is not a base64url SHA-256 thumbprint",
        })?;
        let text = std::str::from_utf8(&buf[..facts.text_len()]).map_err(|_| TOO_LARGE)?;
        Self::new(facts, text).ok_or(TOO_LARGE)
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The whole rendered text (what a cache slot stores).
    pub(crate) fn text(&self) -> &'s str {
        self.text
    }

    fn field(&self, index: usize) -> &'s str {
        let start: usize = self.facts.lens[..index].iter().map(|l| *l as usize).sum();
        &self.text[start..start + self.facts.lens[index] as usize]
    }

    fn has(&self, flag: u8) -> bool {
        self.facts.flags & flag != 0
    }

    /// `sub`, decoded.
    pub fn sub(&self) -> Option<&'s str> {
        self.has(HAS_SUB).then(|| self.field(0))
    }

    /// `sid`, decoded.
    pub fn sid(&self) -> Option<&'s str> {
        self.has(HAS_SID).then(|| self.field(1))
    }

    /// The application: `client_id`, else a single-valued `aud`.
    pub fn app(&self) -> Option<&'s str> {
        self.has(HAS_APP).then(|| self.field(2))
    }

    /// The roles joined by commas: the `x-auth-roles` value.
    pub fn roles_header(&self) -> &'s str {
        self.field(3)
    }

    /// Each role name.
    pub fn roles(&self) -> impl Iterator<Item = &'s str> + 's {
        self.field(3).split(',').filter(|r| !r.is_empty())
    }

    /// The scope tokens joined by single spaces: the `x-auth-scope` value.
    pub fn scope(&self) -> &'s str {
        self.field(4)
    }

    /// Each scope token.
    pub fn scopes(&self) -> impl Iterator<Item = &'s str> + 's {
        self.field(4).split(' ').filter(|s| !s.is_empty())
    }

    /// The session id as the revocation sets look it up.
    pub(crate) fn sid_key(&self) -> Option<Id<'s>> {
        self.lookup_key(self.sid(), SID_UUID, self.facts.sid)
    }

    /// The user id as the revocation sets look it up.
    pub(crate) fn sub_key(&self) -> Option<Id<'s>> {
        self.lookup_key(self.sub(), SUB_UUID, self.facts.sub)
    }

    /// The id parsed when the identity was rendered, so a cache hit parses nothing.
    fn lookup_key(&self, text: Option<&'s str>, uuid: u8, value: u128) -> Option<Id<'s>> {
        let text = text?;
        Some(if self.has(uuid) {
            Id::Uuid(value)
        } else {
            Id::Other(text)
        })
    }
}

/// Why an identity could not be rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenderError {
    /// It did not fit the buffer.
    TooLarge,
    /// `cnf.jkt` is not 32 bytes of strict base64url.
    Jkt,
}

/// The identity did not fit the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TooLarge;

impl From<TooLarge> for RenderError {
    fn from(_: TooLarge) -> Self {
        RenderError::TooLarge
    }
}

/// Renders the identity of `claims` into `out`; returns its facts.
fn render(claims: &Claims<'_>, out: &mut [u8]) -> Result<Facts, RenderError> {
    let mut facts = Facts {
        exp: claims.exp.unwrap_or(i64::MAX),
        nbf: claims.nbf,
        iat: claims.iat,
        ..Facts::default()
    };
    if let Some(jkt) = claims.jkt {
        let mut bytes = [0u8; 33];
        let decoded = jkt
            .as_plain()
            .and_then(|j| super::jose::b64_decode(j.as_bytes(), &mut bytes).ok())
            .ok_or(RenderError::Jkt)?;
        facts.jkt = decoded.try_into().map_err(|_| RenderError::Jkt)?;
        facts.flags |= HAS_JKT;
    }
    let mut w = Writer { out, at: 0 };
    let app = claims.client_id.or(match claims.aud {
        Some(Audience::One(s)) => Some(s),
        _ => None,
    });
    let singles = [(claims.sub, HAS_SUB), (claims.sid, HAS_SID), (app, HAS_APP)];
    for (index, (value, flag)) in singles.into_iter().enumerate() {
        let start = w.at;
        if let Some(value) = value {
            w.json_str(value)?;
            facts.flags |= flag;
        }
        facts.lens[index] = len16(w.at - start)?;
    }
    if facts.flags & HAS_SUB != 0
        && let Some(u) = parse_uuid(w.text(0, &facts))
    {
        facts.sub = u;
        facts.flags |= SUB_UUID;
    }
    if facts.flags & HAS_SID != 0
        && let Some(u) = parse_uuid(w.text(1, &facts))
    {
        facts.sid = u;
        facts.flags |= SID_UUID;
    }

    let start = w.at;
    for role in claims.roles() {
        let before = w.at;
        if before > start {
            w.bytes(b",")?;
        }
        let from = w.at;
        w.json_str(role)?;
        if w.out[from..w.at].contains(&b',') {
            // Ambiguous in a comma-separated header: dropped (see the module comment).
            w.at = before;
        }
    }
    facts.lens[3] = len16(w.at - start)?;

    let start = w.at;
    for s in claims.scopes() {
        if w.at > start {
            w.bytes(b" ")?;
        }
        w.bytes(s.as_bytes())?;
    }
    facts.lens[4] = len16(w.at - start)?;
    Ok(facts)
}

fn len16(n: usize) -> Result<u16, TooLarge> {
    u16::try_from(n).map_err(|_| TooLarge)
}

struct Writer<'o> {
    out: &'o mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), TooLarge> {
        let end = self.at + b.len();
        self.out
            .get_mut(self.at..end)
            .ok_or(TooLarge)?
            .copy_from_slice(b);
        self.at = end;
        Ok(())
    }

    fn json_str(&mut self, s: JsonStr<'_>) -> Result<(), TooLarge> {
        if let Some(plain) = s.as_plain() {
            return self.bytes(plain.as_bytes());
        }
        let decoded = s.decode_into(&mut self.out[self.at..]).ok_or(TooLarge)?;
        self.at += decoded.len();
        Ok(())
    }

    /// Field `index` of what has been written so far (only the leading fields, whose
    /// lengths are set). Non-UTF-8 cannot happen (decoded JSON strings); it reads as "".
    fn text(&self, index: usize, facts: &Facts) -> &str {
        let start: usize = facts.lens[..index].iter().map(|l| *l as usize).sum();
        let end = start + facts.lens[index] as usize;
        std::str::from_utf8(&self.out[start..end]).unwrap_or("")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::jose::parse_claims;

    fn rendered(json: &str) -> (Facts, String) {
        let claims = parse_claims(json.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let who = Identity::from_claims(&claims, &mut buf).unwrap();
        (*who.facts(), who.text().to_owned())
    }

    #[test]
    fn renders_the_header_values() {
        let sub = "0190a1b2-0000-7000-8000-0000000000aa";
        let (facts, text) = rendered(&format!(
            r#"{{"sub":"{sub}","sid":"s\u0031","aud":"app","roles":["admin","a,b","\u006fps"],"scope":"x  y","exp":10,"iat":5}}"#
        ));
        let id = Identity::new(facts, &text).unwrap();
        assert_eq!(id.sub(), Some(sub));
        assert_eq!(id.sid(), Some("s1"));
        assert_eq!(id.app(), Some("app"));
        assert_eq!(id.roles_header(), "admin,ops");
        assert_eq!(id.roles().collect::<Vec<_>>(), ["admin", "ops"]);
        assert_eq!(id.scope(), "x y");
        assert_eq!(id.scopes().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!((facts.exp(), facts.iat(), facts.nbf()), (10, Some(5), None));
        assert!(matches!(id.sub_key(), Some(Id::Uuid(_))));
        assert!(matches!(id.sid_key(), Some(Id::Other("s1"))));
    }

    #[test]
    fn absent_claims_are_absent_and_client_id_wins() {
        let (facts, text) =
            rendered(r#"{"aud":["a","b"],"client_id":"c","scope":"\u0078","exp":1}"#);
        let id = Identity::new(facts, &text).unwrap();
        assert_eq!((id.sub(), id.sid(), id.app()), (None, None, Some("c")));
        assert_eq!((id.roles_header(), id.scope()), ("", ""));
        assert!(id.sid_key().is_none() && id.sub_key().is_none());
        let (facts, text) = rendered(r#"{"aud":["a","b"],"exp":1}"#);
        assert_eq!(Identity::new(facts, &text).unwrap().app(), None);
    }

    #[test]
    fn a_role_list_of_only_commas_renders_empty() {
        let (facts, text) = rendered(r#"{"roles":[",","a,"],"exp":1}"#);
        assert_eq!(Identity::new(facts, &text).unwrap().roles_header(), "");
    }

    #[test]
    fn too_small_a_buffer_is_refused() {
        let claims = parse_claims(br#"{"sub":"abcdef","exp":1}"#).unwrap();
        assert_eq!(render(&claims, &mut [0u8; 3]), Err(RenderError::TooLarge));
    }

    #[test]
    fn a_bound_token_keeps_its_thumbprint() {
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let (facts, _) = rendered(&format!(r#"{{"cnf":{{"jkt":"{jkt}"}},"exp":1}}"#));
        assert_eq!(facts.jkt().map(|j| j[0]), Some(0xd1));
        assert_eq!(rendered(r#"{"exp":1}"#).0.jkt(), None);
        for bad in [
            "abc",
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I=",
            "0ZcOCORZNYy",
        ] {
            let json = format!(r#"{{"cnf":{{"jkt":"{bad}"}},"exp":1}}"#);
            let claims = parse_claims(json.as_bytes()).unwrap();
            assert!(
                Identity::from_claims(&claims, &mut [0u8; 64]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn text_must_match_the_facts() {
        let (facts, text) = rendered(r#"{"sub":"é","exp":1}"#);
        assert!(Identity::new(facts, &text).is_some());
        assert!(Identity::new(facts, "x").is_none(), "length");
        let split = Facts {
            lens: [1, 1, 0, 0, 0],
            ..facts
        };
        assert!(
            Identity::new(split, "é").is_none(),
            "field inside a character"
        );
    }
}
