//! Revoked sessions and per-user cutoffs, as an immutable two-level set.
//!
//! A large `base` (rebuilt on every full resync) plus a small `overlay` of the deltas
//! received since. Applying a delta copies only the overlay; when the overlay grows past
//! [`OVERLAY_LIMIT`] it is folded into a new base, so a delta costs amortised O(1) copies
//! even with a million revoked sessions, and readers always see an immutable value.
//!
//! Session and user ids that are UUIDs (all of Portcullis') are stored as `u128`, which
//! keeps a million entries well under the verifier's memory budget; other ids fall back
//! to boxed strings.

use std::collections::HashMap as StdHashMap;
use std::sync::Arc;

/// Deltas kept in the overlay before it is folded into the base.
pub const OVERLAY_LIMIT: usize = 4096;

/// Keys are ids the control plane wrote, never chosen by a token's bearer, so a fast
/// non-DoS-resistant hasher is safe here (lookups with hostile ids only miss).
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::FixedState>;

/// An id as looked up: parsed once (a UUID as its 128-bit value), then probed in every map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id<'t> {
    Uuid(u128),
    Other(&'t str),
}

impl<'t> Id<'t> {
    /// The lookup key of a decoded id.
    pub fn parse(text: &'t str) -> Self {
        match parse_uuid(text) {
            Some(u) => Id::Uuid(u),
            None => Id::Other(text),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct IdMap {
    uuids: HashMap<u128, i64>,
    others: HashMap<Box<str>, i64>,
}

impl IdMap {
    fn insert(&mut self, id: &str, value: i64) {
        // Keep the later deadline when an id is revoked twice.
        let slot = match parse_uuid(id) {
            Some(u) => self.uuids.entry(u).or_insert(value),
            None => self.others.entry(id.into()).or_insert(value),
        };
        *slot = (*slot).max(value);
    }

    fn get(&self, id: Id<'_>) -> Option<i64> {
        match id {
            Id::Uuid(u) if !self.uuids.is_empty() => self.uuids.get(&u).copied(),
            Id::Other(text) if !self.others.is_empty() => self.others.get(text).copied(),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.uuids.is_empty() && self.others.is_empty()
    }

    fn len(&self) -> usize {
        self.uuids.len() + self.others.len()
    }

    fn merged(&self, newer: &IdMap, keep: impl Fn(i64) -> bool) -> IdMap {
        let mut out = IdMap {
            uuids: HashMap::with_capacity_and_hasher(
                self.uuids.len() + newer.uuids.len(),
                Default::default(),
            ),
            others: HashMap::with_capacity_and_hasher(
                self.others.len() + newer.others.len(),
                Default::default(),
            ),
        };
        for (k, v) in self.uuids.iter().chain(&newer.uuids) {
            if keep(*v) {
                let e = out.uuids.entry(*k).or_insert(*v);
                *e = (*e).max(*v);
            }
        }
        for (k, v) in self.others.iter().chain(&newer.others) {
            if keep(*v) {
                let e = out.others.entry(k.clone()).or_insert(*v);
                *e = (*e).max(*v);
            }
        }
        out
    }
}

/// Parses a hyphenated UUID (either case) into its 128-bit value, without allocating.
pub fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut v: u128 = 0;
    for (i, c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        v = (v << 4) | (*c as char).to_digit(16)? as u128;
    }
    Some(v)
}

#[derive(Clone, Debug, Default)]
struct Level {
    /// session id -> time after which the entry may be dropped.
    sessions: IdMap,
    /// user id -> cutoff: tokens with `iat` at or before it are revoked.
    users: IdMap,
}

/// How long a held user cutoff outlives a resync that lacks it: past the longest access
/// token the control plane issues (one day) and any clock leeway, it revokes nothing.
pub const USER_CUTOFF_KEEP_SECS: i64 = 2 * 86_400;

/// Inserts into `into` the entries of `from` it lacks (or holds with an earlier value)
/// that `matter`; returns how many.
fn keep_map(into: &mut IdMap, from: &IdMap, matter: impl Fn(i64) -> bool) -> usize {
    let mut kept = 0;
    for (k, v) in &from.uuids {
        if matter(*v) && into.uuids.get(k).is_none_or(|have| have < v) {
            into.uuids.insert(*k, *v);
            kept += 1;
        }
    }
    for (k, v) in &from.others {
        if matter(*v) && into.others.get(k).is_none_or(|have| have < v) {
            into.others.insert(k.clone(), *v);
            kept += 1;
        }
    }
    kept
}

/// Builds a fresh [`Revocations`] from a full read (resync), entry by entry, so a large
/// set never sits in memory twice.
#[derive(Debug)]
pub struct RevocationsBuilder {
    level: Level,
    now: i64,
}

impl RevocationsBuilder {
    /// Sessions whose entry expires before `now` are dropped.
    pub fn new(now: i64) -> Self {
        Self {
            level: Level::default(),
            now,
        }
    }

    pub fn session(&mut self, sid: &str, until: i64) {
        if until >= self.now {
            self.level.sessions.insert(sid, until);
        }
    }

    pub fn user(&mut self, uid: &str, before: i64) {
        self.level.users.insert(uid, before);
    }

    /// Keeps what `held` (the last snapshot's state) revokes that this read lacks and
    /// that may still matter: a session until its `until` passes, a user cutoff for
    /// [`USER_CUTOFF_KEEP_SECS`]. Revocations only deny, so a resync that lacks one (Redis
    /// flushed, restored from an old dump, or written by someone else) must never
    /// un-revoke: only time does. Returns how many entries were kept.
    pub fn keep(&mut self, held: &Revocations) -> usize {
        let mut kept = 0;
        let (now, new) = (self.now, &mut self.level);
        for level in [&*held.base, &*held.overlay] {
            kept += keep_map(&mut new.sessions, &level.sessions, |until| until >= now);
            kept += keep_map(&mut new.users, &level.users, |before| {
                before >= now - USER_CUTOFF_KEEP_SECS
            });
        }
        kept
    }

    pub fn build(self) -> Revocations {
        Revocations {
            base: Arc::new(self.level),
            overlay: Arc::default(),
        }
    }
}

/// The revocation state of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    base: Arc<Level>,
    overlay: Arc<Level>,
}

impl Revocations {
    /// This state plus a revoked session.
    pub fn with_session(&self, sid: &str, until: i64, now: i64) -> Self {
        self.with_delta(now, |l| l.sessions.insert(sid, until))
    }

    /// This state plus a user cutoff.
    pub fn with_user_cutoff(&self, uid: &str, before: i64, now: i64) -> Self {
        self.with_delta(now, |l| l.users.insert(uid, before))
    }

    fn with_delta(&self, now: i64, apply: impl FnOnce(&mut Level)) -> Self {
        let mut overlay = (*self.overlay).clone();
        apply(&mut overlay);
        if overlay.sessions.len() + overlay.users.len() <= OVERLAY_LIMIT {
            return Self {
                base: self.base.clone(),
                overlay: Arc::new(overlay),
            };
        }
        let base = Level {
            sessions: self
                .base
                .sessions
                .merged(&overlay.sessions, |until| until >= now),
            users: self.base.users.merged(&overlay.users, |_| true),
        };
        Self {
            base: Arc::new(base),
            overlay: Arc::default(),
        }
    }

    /// Whether session `sid` is revoked.
    pub fn session_revoked(&self, sid: Id<'_>) -> bool {
        let (overlay, base) = (&self.overlay.sessions, &self.base.sessions);
        if overlay.is_empty() && base.is_empty() {
            return false;
        }
        overlay.get(sid).is_some() || base.get(sid).is_some()
    }

    /// The user's cutoff, if any (the later of base and overlay).
    pub fn user_cutoff(&self, uid: Id<'_>) -> Option<i64> {
        let (overlay, base) = (&self.overlay.users, &self.base.users);
        if overlay.is_empty() && base.is_empty() {
            return None;
        }
        match (overlay.get(uid), base.get(uid)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn sessions_len(&self) -> usize {
        self.base.sessions.len() + self.overlay.sessions.len()
    }

    pub fn users_len(&self) -> usize {
        self.base.users.len() + self.overlay.users.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn js(text: &str) -> Id<'_> {
        Id::parse(text)
    }

    #[test]
    fn uuid_parse() {
        assert_eq!(parse_uuid("00000000-0000-0000-0000-00000000000a"), Some(10));
        assert_eq!(
            parse_uuid("0190A1B2-0000-7000-8000-000000000000").map(|v| v >> 112),
            Some(0x0190)
        );
        assert_eq!(parse_uuid("0190a1b2000070008000000000000000"), None);
        assert_eq!(parse_uuid("0190a1b2-0000-7000-8000-00000000000g"), None);
    }

    #[test]
    fn deltas_and_folding() {
        let sid = "0190a1b2-0000-7000-8000-000000000001";
        let mut b = RevocationsBuilder::new(10);
        b.session("legacy-sid", 100);
        b.session("expired", 1);
        b.user("u1", 50);
        let r = b.build();
        assert!(r.session_revoked(js("legacy-sid")));
        assert!(
            !r.session_revoked(js("expired")),
            "expired entries are pruned"
        );
        assert!(!r.session_revoked(js(sid)));
        let r2 = r.with_session(sid, 100, 10);
        assert!(r2.session_revoked(js(sid)) && !r.session_revoked(js(sid)));
        assert!(
            r2.session_revoked(js("0190A1B2-0000-7000-8000-000000000001")),
            "uuid case-insensitive"
        );
        let r3 = r2
            .with_user_cutoff("u1", 70, 10)
            .with_user_cutoff("u1", 60, 10);
        assert_eq!(r3.user_cutoff(js("u1")), Some(70));
        let mut big = r3.clone();
        for i in 0..(OVERLAY_LIMIT as u128 + 10) {
            big = big.with_session(
                &format!("{:08x}-0000-7000-8000-000000000000", i + 1000),
                100,
                10,
            );
        }
        assert!(
            big.overlay.sessions.len() < OVERLAY_LIMIT,
            "overlay folded into the base"
        );
        assert!(big.session_revoked(js(sid)) && big.session_revoked(js("legacy-sid")));
        assert_eq!(big.sessions_len(), OVERLAY_LIMIT + 10 + 2);
        assert_eq!(big.user_cutoff(js("u1")), Some(70));
    }

    #[test]
    fn a_resync_never_forgets_what_still_revokes() {
        let now = 1_000_000;
        let sid = "0190a1b2-0000-7000-8000-000000000001";
        let mut b = RevocationsBuilder::new(now);
        b.session(sid, now + 100);
        b.session("other", now + 100);
        b.user("u1", now - 10);
        b.user("ancient", now - USER_CUTOFF_KEEP_SECS - 1);
        let held = b.build().with_session("delta", now + 5, now);
        // A read that lacks them all (a flushed Redis), one that has "other" later.
        let mut read = RevocationsBuilder::new(now);
        read.session("other", now + 200);
        assert_eq!(read.keep(&held), 3, "sid, delta, u1");
        let r = read.build();
        assert!(r.session_revoked(js(sid)) && r.session_revoked(js("delta")));
        assert_eq!(r.user_cutoff(js("u1")), Some(now - 10));
        assert_eq!(
            r.user_cutoff(js("ancient")),
            None,
            "past every token's life"
        );
        // Once its time has passed, an entry is not kept.
        let mut later = RevocationsBuilder::new(now + 101);
        later.keep(&r);
        let r = later.build();
        assert!(!r.session_revoked(js(sid)) && r.session_revoked(js("other")));
    }
}
