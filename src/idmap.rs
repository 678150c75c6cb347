//! Hash maps and sets keyed by ids (execution ids, span ids, task ids), with a cheap hasher.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A small multiply-rotate hasher for maps keyed by ids that are random already or
/// handed out in sequence (SipHash's protection against chosen keys buys nothing for
/// rows pgc reads itself, and it was the largest cost of rebuilding a big trace and a
/// visible part of the worker's own CPU).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    /// The multiply leaves the low bits (which pick the bucket) depending on the low
    /// bits of the input only, and ids made in a burst (UUID v7) differ mostly in their
    /// middle bytes: the rotation brings the well-mixed high bits down.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// A map keyed by ids.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of ids.
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn ids_made_in_one_burst_spread_over_the_buckets() {
        // UUID v7s made back to back share their time and differ in a counter in their
        // middle bytes; a map picks buckets by the hash's low bits.
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let ids: Vec<(uuid::Uuid, i32)> = (0..1024).map(|_| (uuid::Uuid::now_v7(), 1)).collect();
        let buckets: HashSet<u64> = ids.iter().map(|id| hasher.hash_one(id) & 2047).collect();
        // 1,024 random keys fill about 800 of 2,048 buckets.
        assert!(buckets.len() > 600, "{} buckets", buckets.len());
        let sequential: HashSet<u64> = (1..=1024u64).map(|n| hasher.hash_one(n) & 2047).collect();
        assert!(sequential.len() > 600, "{} buckets", sequential.len());
    }
}
