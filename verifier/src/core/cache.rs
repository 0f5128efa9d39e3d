//! The verified-token cache: remembers, for a token whose every check passed, what those
//! checks concluded, so that seeing the same token again costs one keyed hash and one slot
//! read: no base64, no JSON, no signature. Expiry and revocation are still checked on
//! every hit, by the caller, from the numbers the slot keeps; a key-set change misses.
//!
//! A slot holds the token's keyed hash, its length and last 32 bytes, the key-set
//! generation it was checked under, the [`Facts`] (times, parsed session and user ids,
//! the DPoP thumbprint) and the rendered [`super::Identity`] text the transports pass upstream.
//!
//! # Why a forged token cannot hit
//!
//! A slot is written only after the full verification of those exact bytes succeeded
//! under key-set generation G (header, key, strict signature, issuer, audience). A hit
//! needs all of:
//! 1. the same 128-bit SipHash-1-3 value of the whole token, under a 128-bit key drawn
//!    from the operating system when the verifier starts and never written anywhere
//!    (not logged, not in metrics, not in any answer). A token differing from a verified
//!    one in any byte collides only by chance, 2^-128 per guess for a pseudo-random
//!    function; an attacker sees at most whether a guess hit (and, through eviction
//!    timing, whether two tokens share a slot: equality of a few output bits, never the
//!    key or an output);
//! 2. the same length and the same last 32 bytes, which are the end of the signature
//!    segment: even a hash collision must reuse a verified token's signature over other
//!    signed bytes, and Ed25519 signatures do not transfer between messages;
//! 3. the current key-set generation: a removed or rotated key misses.
//!
//! Hand-written rather than `moka`: moka allocates per insertion and the verify path
//! makes no allocation at all. This is a fixed direct-mapped table allocated once (zeroed
//! pages, so memory is only touched as slots fill); each slot is a seqlock over atomics,
//! so readers never block or write shared memory (a hot token read by every core causes
//! no cache-line traffic), and a writer that finds a slot busy simply skips caching.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use siphasher::sip128::{Hasher128, SipHasher13};
use zerocopy::FromZeros;

use super::identity::Facts;

/// Words per slot: 512 bytes, eight cache lines.
const SLOT_WORDS: usize = 64;
/// Where the DPoP thumbprint (`cnf.jkt`, 4 words) starts in a slot.
const JKT_WORD: usize = 17;
/// Where the identity text starts in a slot.
const TEXT_WORD: usize = JKT_WORD + 4;
/// Longest identity text a slot holds; a token with a longer one is verified in full each
/// time (roles and scopes of a few hundred bytes fit).
pub const MAX_CACHED_TEXT: usize = (SLOT_WORDS - TEXT_WORD) * 8;
/// Bytes of the token's end kept for confirmation.
const TAIL: usize = 32;

const HAS_NBF: u64 = 1;
const HAS_IAT: u64 = 1 << 1;

type Slot = [AtomicU64; SLOT_WORDS];

/// Where a token lives in the cache: its keyed hash, computed once per verification.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    h1: u64,
    h2: u64,
}

/// A fixed-capacity verified-token cache shared by all threads.
pub struct VerifiedCache {
    slots: Box<[Slot]>,
    mask: usize,
    /// Keyed with the process's secret; copied per hash (it is a few words).
    hasher: SipHasher13,
}

impl std::fmt::Debug for VerifiedCache {
    // Never prints the hash key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// A cache of at least `entries` slots (rounded up to a power of two); 0 disables it.
    /// `key` must be secret and random (see the module comment).
    pub fn new(entries: usize, key: [u8; 16]) -> Self {
        let size = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        // Zeroed allocation: the pages stay untouched until a slot is written. An
        // allocation failure here is at start-up, where aborting is the right answer.
        let slots = <[Slot]>::new_box_zeroed_with_elems(size)
            .unwrap_or_else(|_| std::alloc::handle_alloc_error(std::alloc::Layout::new::<Slot>()));
        Self {
            slots,
            mask: size.saturating_sub(1),
            hasher: SipHasher13::new_with_key(&key),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The keyed hash of `token`.
    pub fn probe(&self, token: &[u8]) -> Probe {
        let mut h = self.hasher;
        std::hash::Hasher::write(&mut h, token);
        let h = h.finish128();
        Probe { h1: h.h1, h2: h.h2 }
    }

    fn slot(&self, probe: &Probe) -> Option<&Slot> {
        self.slots.get((probe.h1 as usize) & self.mask)
    }

    /// The facts of `token` if it was verified under key-set `generation`; its identity
    /// text is copied to the start of `text`.
    pub fn get(
        &self,
        probe: &Probe,
        token: &[u8],
        generation: u64,
        text: &mut [u8],
    ) -> Option<Facts> {
        let slot = self.slot(probe)?;
        let s1 = slot[0].load(Ordering::Acquire);
        if s1 & 1 == 1
            || slot[1].load(Ordering::Relaxed) != probe.h1
            || slot[2].load(Ordering::Relaxed) != probe.h2
        {
            return None;
        }
        let w = |i: usize| slot[i].load(Ordering::Relaxed);
        let (meta, lens) = (w(3), w(4));
        let tail_ok = tail_words(token)
            .iter()
            .enumerate()
            .all(|(i, t)| w(5 + i) == *t);
        if meta & 0xffff != token.len() as u64 || !tail_ok || w(9) != generation {
            return None;
        }
        let mut jkt = [0u8; 32];
        for (i, chunk) in jkt.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&w(JKT_WORD + i).to_le_bytes());
        }
        let facts = Facts {
            flags: (meta >> 16) as u8,
            lens: [
                lens as u16,
                (lens >> 16) as u16,
                (lens >> 32) as u16,
                (lens >> 48) as u16,
                (meta >> 32) as u16,
            ],
            exp: w(10) as i64,
            nbf: ((meta >> 24) & HAS_NBF != 0).then(|| w(11) as i64),
            iat: ((meta >> 24) & HAS_IAT != 0).then(|| w(12) as i64),
            sid: u128::from(w(13)) << 64 | u128::from(w(14)),
            sub: u128::from(w(15)) << 64 | u128::from(w(16)),
            jkt,
        };
        let len = facts.text_len();
        if len > MAX_CACHED_TEXT || len > text.len() {
            return None;
        }
        for (i, chunk) in text[..len].chunks_mut(8).enumerate() {
            let bytes = w(TEXT_WORD + i).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        fence(Ordering::Acquire);
        (slot[0].load(Ordering::Relaxed) == s1).then_some(facts)
    }

    /// Records a verified token. Never waits: a slot being written by another thread is
    /// left alone; an identity text too long for a slot is not cached.
    pub fn insert(&self, probe: &Probe, token: &[u8], generation: u64, facts: &Facts, text: &[u8]) {
        if text.len() > MAX_CACHED_TEXT || text.len() != facts.text_len() || token.len() > 0xffff {
            return;
        }
        let Some(slot) = self.slot(probe) else { return };
        let s = slot[0].load(Ordering::Relaxed);
        if s & 1 == 1
            || slot[0]
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let put = |i: usize, v: u64| slot[i].store(v, Ordering::Relaxed);
        let l = facts.lens.map(u64::from);
        let opt =
            (u64::from(facts.nbf.is_some()) * HAS_NBF) | (u64::from(facts.iat.is_some()) * HAS_IAT);
        put(1, probe.h1);
        put(2, probe.h2);
        put(
            3,
            token.len() as u64 | u64::from(facts.flags) << 16 | opt << 24 | l[4] << 32,
        );
        put(4, l[0] | l[1] << 16 | l[2] << 32 | l[3] << 48);
        for (i, t) in tail_words(token).into_iter().enumerate() {
            put(5 + i, t);
        }
        put(9, generation);
        put(10, facts.exp as u64);
        put(11, facts.nbf.unwrap_or(0) as u64);
        put(12, facts.iat.unwrap_or(0) as u64);
        put(13, (facts.sid >> 64) as u64);
        put(14, facts.sid as u64);
        put(15, (facts.sub >> 64) as u64);
        put(16, facts.sub as u64);
        for (i, chunk) in facts.jkt.chunks_exact(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            put(JKT_WORD + i, u64::from_le_bytes(bytes));
        }
        for (i, chunk) in text.chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            put(TEXT_WORD + i, u64::from_le_bytes(bytes));
        }
        slot[0].store(s + 2, Ordering::Release);
    }
}

/// The token's last [`TAIL`] bytes (zero-padded in front when shorter) as words.
fn tail_words(token: &[u8]) -> [u64; TAIL / 8] {
    let mut tail = [0u8; TAIL];
    let n = token.len().min(TAIL);
    tail[TAIL - n..].copy_from_slice(&token[token.len() - n..]);
    let mut words = [0u64; TAIL / 8];
    for (w, chunk) in words.iter_mut().zip(tail.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(text: &str) -> Facts {
        Facts {
            flags: 0b101,
            lens: [text.len() as u16, 0, 0, 0, 0],
            exp: 100,
            nbf: None,
            iat: Some(7),
            sid: 1 << 100 | 5,
            sub: 9,
            jkt: std::array::from_fn(|i| i as u8),
        }
    }

    fn hit(cache: &VerifiedCache, token: &[u8], generation: u64) -> Option<(Facts, String)> {
        let mut text = [0u8; MAX_CACHED_TEXT];
        let f = cache.get(&cache.probe(token), token, generation, &mut text)?;
        Some((f, String::from_utf8(text[..f.text_len()].to_vec()).unwrap()))
    }

    #[test]
    fn a_hit_returns_what_was_stored() {
        let cache = VerifiedCache::new(1024, [1; 16]);
        let token = b"header.payload.signature-of-some-length";
        cache.insert(&cache.probe(token), token, 7, &facts("user-1"), b"user-1");
        assert_eq!(
            hit(&cache, token, 7),
            Some((facts("user-1"), "user-1".into()))
        );
    }

    #[test]
    fn a_hit_needs_same_bytes_and_generation() {
        let cache = VerifiedCache::new(1024, [1; 16]);
        let a = b"header.payload.sig";
        cache.insert(&cache.probe(a), a, 7, &facts(""), b"");
        assert!(hit(&cache, a, 7).is_some());
        assert!(
            hit(&cache, b"header.payloaX.sig", 7).is_none(),
            "a forged payload reusing the signature must miss"
        );
        assert!(
            hit(&cache, a, 8).is_none(),
            "a key change invalidates entries"
        );
        // Another process (another key) knows nothing of this one's entries.
        let other = VerifiedCache::new(1024, [2; 16]);
        assert!(hit(&other, a, 7).is_none());
    }

    /// Even a slot whose hash matches (as a collision would) must agree on the length and
    /// the signature's end.
    #[test]
    fn a_colliding_hash_still_needs_the_same_tail_and_length() {
        let cache = VerifiedCache::new(1, [1; 16]);
        let a = b"aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccccccccccccccc";
        let probe = cache.probe(a);
        cache.insert(&probe, a, 1, &facts(""), b"");
        let mut text = [0u8; 8];
        let forged =
            b"aaaaaaaaaaaaaaaa.Xbbbbbbbbbbbbbbbbbbbbbbbb.ccccccccccccccccccccccccccccccccX";
        assert!(cache.get(&probe, forged, 1, &mut text).is_none());
        let longer =
            b"aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccccccccccccccc";
        assert!(cache.get(&probe, longer, 1, &mut text).is_none());
        assert!(cache.get(&probe, a, 1, &mut text).is_some());
    }

    #[test]
    fn too_long_an_identity_is_not_cached() {
        let cache = VerifiedCache::new(16, [1; 16]);
        let text = "x".repeat(MAX_CACHED_TEXT + 1);
        cache.insert(&cache.probe(b"t"), b"t", 1, &facts(&text), text.as_bytes());
        assert!(hit(&cache, b"t", 1).is_none());
        let text = "y".repeat(MAX_CACHED_TEXT);
        cache.insert(&cache.probe(b"t"), b"t", 1, &facts(&text), text.as_bytes());
        assert_eq!(hit(&cache, b"t", 1).unwrap().1, text);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = VerifiedCache::new(0, [1; 16]);
        cache.insert(&cache.probe(b"t"), b"t", 1, &facts(""), b"");
        assert!(hit(&cache, b"t", 1).is_none());
    }

    #[test]
    fn concurrent_writers_never_produce_torn_hits() {
        let cache = std::sync::Arc::new(VerifiedCache::new(1, [1; 16]));
        let tokens: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 40]).collect();
        let texts: Vec<String> = (0..4u8)
            .map(|i| char::from(b'a' + i).to_string().repeat(100 + i as usize))
            .collect();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (cache, tokens, texts) = (cache.clone(), tokens.clone(), texts.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let k = (t + i) % 4;
                        let tok = &tokens[k];
                        cache.insert(
                            &cache.probe(tok),
                            tok,
                            1,
                            &facts(&texts[k]),
                            texts[k].as_bytes(),
                        );
                        // A hit is always one whole entry, never a mix of two.
                        let j = (t + i + 1) % 4;
                        if let Some((f, text)) = hit(&cache, &tokens[j], 1) {
                            assert_eq!((f, text.as_str()), (facts(&texts[j]), texts[j].as_str()));
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
