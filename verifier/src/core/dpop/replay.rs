//! The proofs a process has accepted (see [`ReplayTable`]).

use std::sync::{Mutex, PoisonError};

use siphasher::sip128::{Hasher128, SipHasher13};

/// Ways per bucket of the [`ReplayTable`]: one 64-byte cache line of entries.
const WAYS: usize = 8;

/// What the replay table says about a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before; now remembered. `evicted` is true when remembering it pushed out
    /// another proof that was still usable (the table is too small for the traffic).
    First { evicted: bool },
    /// Seen before, and still usable: a replay.
    Again,
}

/// The proofs a process has accepted, remembered until they could no longer be accepted
/// anyway (`iat` past the window), so a replayed `jti` is refused.
///
/// Fixed size, allocated once: buckets of [`WAYS`] entries, each a 32-bit fingerprint of
/// the (key thumbprint, `jti`) pair and the second the proof stops being usable, under a
/// lock held for a few comparisons. The bucket and fingerprint come from SipHash keyed
/// with a secret drawn at start, so a client cannot aim its proofs at one bucket. An
/// expired entry is reused first; a bucket full of live entries gives up the one that
/// expires soonest, and says so ([`Seen::First`] `evicted`), which is what bounds the
/// memory: size it at (proofs per second) × (window) entries. A fingerprint collision
/// can refuse a fresh proof as a replay with odds of about 2^-29 per proof (8 ways ×
/// 2^-32); the client's next proof gets through.
pub struct ReplayTable {
    buckets: Box<[Mutex<[u64; WAYS]>]>,
    mask: usize,
    hasher: SipHasher13,
}

impl std::fmt::Debug for ReplayTable {
    // Never prints the hash key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayTable")
            .field("entries", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl ReplayTable {
    /// A table of at least `entries` entries (rounded up to a power of two, at least one
    /// bucket), keyed with `key`, which must be secret and random.
    pub fn new(entries: usize, key: [u8; 16]) -> Self {
        let buckets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        Self {
            buckets: (0..buckets).map(|_| Mutex::new([0; WAYS])).collect(),
            mask: buckets - 1,
            hasher: SipHasher13::new_with_key(&key),
        }
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Records the proof `jti` made with key `jkt`, usable until `until`, at time `now`;
    /// says whether it was seen before.
    pub fn first_use(&self, jkt: &[u8; 32], jti: &str, until: i64, now: i64) -> Seen {
        let mut h = self.hasher;
        std::hash::Hasher::write(&mut h, jkt);
        std::hash::Hasher::write(&mut h, jti.as_bytes());
        let h = h.finish128();
        // Fingerprint 0 marks an empty way.
        let fingerprint = (h.h2 as u32).max(1);
        let until = until.clamp(now, i64::from(u32::MAX)) as u32;
        let now = now.clamp(0, i64::from(u32::MAX)) as u32;
        let Some(bucket) = self.buckets.get(h.h1 as usize & self.mask) else {
            return Seen::First { evicted: false };
        };
        let mut ways = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let print = |w: u64| (w >> 32) as u32;
        let expiry = |w: u64| w as u32;
        let live = |w: u64| w != 0 && expiry(w) >= now;
        if ways.iter().any(|w| live(*w) && print(*w) == fingerprint) {
            return Seen::Again;
        }
        // The way to take: an empty or expired one, else the one expiring soonest.
        let (slot, evicted) = match ways.iter().position(|w| !live(*w)) {
            Some(i) => (i, false),
            None => {
                let soonest = (0..WAYS).min_by_key(|i| expiry(ways[*i])).unwrap_or(0);
                (soonest, true)
            }
        };
        ways[slot] = u64::from(fingerprint) << 32 | u64::from(until);
        Seen::First { evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_table_remembers_until_expiry() {
        let table = ReplayTable::new(64, [7; 16]);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            table.first_use(&a, "j1", 160, 100),
            Seen::First { evicted: false }
        );
        assert_eq!(table.first_use(&a, "j1", 160, 150), Seen::Again);
        // Another key's jti of the same text is another proof.
        assert_eq!(
            table.first_use(&b, "j1", 160, 150),
            Seen::First { evicted: false }
        );
        // Once the proof could no longer be accepted, its entry may go.
        assert_eq!(
            table.first_use(&a, "j1", 300, 161),
            Seen::First { evicted: false }
        );
    }

    #[test]
    fn a_full_table_evicts_the_soonest_and_says_so() {
        let table = ReplayTable::new(1, [7; 16]);
        assert_eq!(table.capacity(), WAYS);
        let key = [3u8; 32];
        for i in 0..WAYS {
            let jti = format!("j{i}");
            assert_eq!(
                table.first_use(&key, &jti, 200 + i as i64, 100),
                Seen::First { evicted: false }
            );
        }
        assert_eq!(
            table.first_use(&key, "late", 300, 100),
            Seen::First { evicted: true }
        );
        // j0 (expiring soonest) was given up; the others are still remembered.
        assert_eq!(table.first_use(&key, "j1", 300, 100), Seen::Again);
        assert_eq!(table.first_use(&key, "late", 300, 100), Seen::Again);
    }
}
