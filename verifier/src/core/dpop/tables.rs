//! Precomputed tables for the Ed25519 keys that prove most (see [`KeyTables`]).

use std::sync::{PoisonError, RwLock};

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable};
use curve25519_dalek::traits::BasepointTable;

use crate::core::keys::strict;

/// Precomputed tables for the Ed25519 keys that prove most: a client proves with the same
/// key on every request, so after its second valid proof its key gets a radix-16 table of
/// `-A`, and its later proofs are checked as the verifier checks tokens (`[S]B - [k]A` as
/// two fixed-base multiplications, [`super::keys::Ed25519Key::verify_strict`]): about a
/// third less than the variable-base check a key used once needs.
///
/// Fixed size, allocated once: direct-mapped slots of 30 KiB, each under a read-write lock
/// (a hit takes a read lock; learning a key takes the write lock only if it is free, and
/// never waits). A key is learned only after it made a valid signature, and only on its
/// second sighting in its slot, so one-off keys (and a flood of them) never cost a table
/// build; a key pushed out by another one just takes the slow path again. The slot is
/// chosen by the key's own bytes: a client grinding keys into another's slot only makes
/// that client's proofs slower, never accepted or refused differently.
pub struct KeyTables {
    slots: Box<[RwLock<TableSlot>]>,
}

struct TableSlot {
    /// The key whose table this is (all zero: none; no valid key encodes as that).
    key: [u8; 32],
    /// The last key seen here without a table: the next sighting builds one.
    seen: [u8; 32],
    minus_a: EdwardsBasepointTable,
}

impl std::fmt::Debug for KeyTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTables")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl KeyTables {
    /// `slots` tables (at least one), 30 KiB each.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1))
                .map(|_| {
                    RwLock::new(TableSlot {
                        key: [0; 32],
                        seen: [0; 32],
                        minus_a: ED25519_BASEPOINT_TABLE.clone(),
                    })
                })
                .collect(),
        }
    }

    fn slot(&self, key: &[u8; 32]) -> &RwLock<TableSlot> {
        let mut index = [0u8; 8];
        index.copy_from_slice(&key[..8]);
        let index = u64::from_le_bytes(index) as usize % self.slots.len();
        &self.slots[index]
    }

    /// The strict verdict over `key`'s table, when it has one.
    pub(super) fn verify(
        &self,
        key: &[u8; 32],
        message: &[u8],
        signature: &[u8; 64],
    ) -> Option<bool> {
        let slot = self
            .slot(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.key != *key {
            return None;
        }
        Some(strict(key, message, signature, |k, s| {
            ED25519_BASEPOINT_TABLE * s + slot.minus_a.mul_base(k)
        }))
    }

    /// `key` just made a valid signature: remember it, and build its table the second time.
    pub(super) fn learn(&self, key: &[u8; 32]) {
        let Ok(mut slot) = self.slot(key).try_write() else {
            return;
        };
        if slot.key == *key {
            return;
        }
        if slot.seen != *key {
            slot.seen = *key;
            return;
        }
        // It verified a signature, so it decompresses and is not of small order.
        let Some(a) = CompressedEdwardsY(*key).decompress() else {
            return;
        };
        slot.minus_a = EdwardsBasepointTable::create(&-a);
        slot.key = *key;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::ProofKey;
    use super::*;

    /// With tables, the verdict is the same as without, for the key learned and others,
    /// valid signatures and corrupted ones.
    #[test]
    fn key_tables_change_no_verdict() {
        use ed25519_dalek::Signer;
        let tables = KeyTables::new(2);
        let keys: Vec<_> = (1..=3u8)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
            .collect();
        for round in 0..4 {
            for (i, sk) in keys.iter().enumerate() {
                let public = sk.verifying_key().to_bytes();
                let message = format!("message {round} {i}");
                let good = sk.sign(message.as_bytes()).to_bytes();
                let mut bad = good;
                bad[40] ^= 1;
                let key = ProofKey::Ed25519 {
                    x: "",
                    point: public,
                };
                assert!(key.verifies(message.as_bytes(), &good, Some(&tables)));
                assert!(!key.verifies(message.as_bytes(), &bad, Some(&tables)));
                assert!(!key.verifies(b"another message", &good, Some(&tables)));
            }
        }
        // Keys 1 and 3 share a slot or not; either way some key got a table by now.
        assert!(
            tables
                .slots
                .iter()
                .any(|s| s.read().unwrap().key != [0; 32])
        );
    }
}
