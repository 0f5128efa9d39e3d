//! The verified-token cache: remembers that a token's signature checked out, so a token
//! seen again skips only the signature check. Expiry, issuer, audience and revocation are
//! still checked on every hit, by the caller.
//!
//! Keyed by the SHA-256 of the whole compact token, never by the signature alone: a forged
//! payload that reuses a valid signature hashes differently and misses. Entries carry the
//! key-set generation, so a key change invalidates all of them at once.
//!
//! Hand-written rather than `moka`: moka allocates per insertion (an `Arc`'d entry) and
//! the verify path must stay allocation-free for uncached tokens too. This is a fixed
//! direct-mapped table allocated once; each slot is a seqlock over atomics, so readers
//! never block or wait, and a writer that finds a slot busy simply skips caching.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use sha2::{Digest, Sha256};

/// A token's cache key: SHA-256 of the whole token.
pub type TokenDigest = [u8; 32];

/// Hashes a token for the cache.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

#[derive(Debug, Default)]
struct Slot {
    /// Even = stable, odd = being written.
    seq: AtomicU64,
    digest: [AtomicU64; 4],
    generation: AtomicU64,
}

/// A fixed-capacity verified-token cache shared by all threads.
#[derive(Debug)]
pub struct VerifiedCache {
    slots: Box<[Slot]>,
    mask: usize,
}

fn words(d: &TokenDigest) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, chunk) in d.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        w[i] = u64::from_le_bytes(b);
    }
    w
}

impl VerifiedCache {
    /// A cache of at least `entries` slots (rounded up to a power of two); 0 disables it.
    pub fn new(entries: usize) -> Self {
        let size = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        let slots: Box<[Slot]> = (0..size).map(|_| Slot::default()).collect();
        Self {
            slots,
            mask: size.saturating_sub(1),
        }
    }

    fn slot(&self, w: &[u64; 4]) -> Option<&Slot> {
        self.slots.get((w[0] as usize) & self.mask)
    }

    /// Whether this exact token was verified under key-set `generation`.
    pub fn contains(&self, d: &TokenDigest, generation: u64) -> bool {
        let w = words(d);
        let Some(slot) = self.slot(&w) else {
            return false;
        };
        let s1 = slot.seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            return false;
        }
        let same = slot
            .digest
            .iter()
            .zip(w)
            .all(|(a, b)| a.load(Ordering::Relaxed) == b)
            && slot.generation.load(Ordering::Relaxed) == generation;
        fence(Ordering::Acquire);
        same && slot.seq.load(Ordering::Relaxed) == s1
    }

    /// Records a verified token. Never waits: a slot being written by another thread is
    /// left alone.
    pub fn insert(&self, d: &TokenDigest, generation: u64) {
        let w = words(d);
        let Some(slot) = self.slot(&w) else { return };
        let s = slot.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || slot
                .seq
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        for (a, b) in slot.digest.iter().zip(w) {
            a.store(b, Ordering::Relaxed);
        }
        slot.generation.store(generation, Ordering::Relaxed);
        slot.seq.store(s + 2, Ordering::Release);
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_needs_same_bytes_and_generation() {
        let cache = VerifiedCache::new(1024);
        let a = digest(b"header.payload.sig");
        let b = digest(b"header.payloaX.sig");
        cache.insert(&a, 7);
        assert!(cache.contains(&a, 7));
        assert!(
            !cache.contains(&b, 7),
            "a forged payload reusing the signature must miss"
        );
        assert!(!cache.contains(&a, 8), "a key change invalidates entries");
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = VerifiedCache::new(0);
        let a = digest(b"t");
        cache.insert(&a, 1);
        assert!(!cache.contains(&a, 1));
    }

    #[test]
    fn concurrent_writers_never_produce_torn_hits() {
        let cache = std::sync::Arc::new(VerifiedCache::new(1));
        let tokens: Vec<TokenDigest> = (0..4u8).map(|i| digest(&[i; 40])).collect();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (cache, tokens) = (cache.clone(), tokens.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        cache.insert(&tokens[(t + i) % 4], 1);
                        // A hit must be for one of the inserted digests, never a mix.
                        let probe = digest(&[9u8; 40]);
                        assert!(!cache.contains(&probe, 1));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().ok();
        }
        assert_eq!(tokens.iter().filter(|d| cache.contains(d, 1)).count(), 1);
    }
}
