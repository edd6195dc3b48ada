//! Picks a partition for each record: Java-compatible murmur2 for keys, sticky for keyless records.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Kafka's `Utils.murmur2` (the Java client), bit for bit, as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java uses an int length; keys longer than 2 GiB do not exist in practice.
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h: u32 = SEED ^ length;

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// Java's `Utils.toPositive`: clears the sign bit.
pub fn to_positive(h: i32) -> i32 {
    h & 0x7fff_ffff
}

/// The partition the Java client's default partitioner picks for `key`.
///
/// `num_partitions` must be positive.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    to_positive(murmur2(key)) % num_partitions.max(1)
}

/// Chooses partitions: keyed records by murmur2, keyless ones sticky per topic.
///
/// A keyless record goes to the topic's current sticky partition; once a batch for that
/// partition is closed, [`Partitioner::batch_closed`] moves the topic to another partition.
/// This fills batches quickly (fewer, bigger requests) while still spreading load.
#[derive(Debug)]
pub struct Partitioner {
    sticky: HashMap<String, i32>,
    rng: u64,
}

impl Default for Partitioner {
    fn default() -> Self {
        Self::new()
    }
}

impl Partitioner {
    /// A partitioner with a randomly seeded sticky choice.
    pub fn new() -> Partitioner {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Partitioner {
            sticky: HashMap::new(),
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading partitions.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn random_partition(&mut self, num_partitions: i32, avoid: Option<i32>) -> i32 {
        let n = u64::try_from(num_partitions.max(1)).unwrap_or(1);
        loop {
            let p = i32::try_from(self.next_random() % n).unwrap_or(0);
            if n == 1 || Some(p) != avoid {
                return p;
            }
        }
    }

    /// The partition for a record of `topic` with optional `key`.
    pub fn partition(&mut self, topic: &str, key: Option<&[u8]>, num_partitions: i32) -> i32 {
        if let Some(key) = key {
            return partition_for_key(key, num_partitions);
        }
        match self.sticky.get(topic) {
            Some(&p) if p < num_partitions => p,
            _ => {
                let p = self.random_partition(num_partitions, None);
                self.sticky.insert(topic.to_owned(), p);
                p
            }
        }
    }

    /// Tells the partitioner a batch of `topic`/`partition` was closed; if that was the
    /// sticky partition, keyless records move on to another one.
    pub fn batch_closed(&mut self, topic: &str, partition: i32, num_partitions: i32) {
        if self.sticky.get(topic) == Some(&partition) {
            let p = self.random_partition(num_partitions, Some(partition));
            self.sticky.insert(topic.to_owned(), p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_java() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn keyed_partition_is_positive_modulo() {
        // to_positive(-973932308) = 1173551340; % 3 = 0
        assert_eq!(partition_for_key(b"21", 3), 1_173_551_340 % 3);
        for n in 1..20 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn keyless_records_stick_until_batch_closes() {
        let mut part = Partitioner::new();
        let first = part.partition("t", None, 8);
        for _ in 0..100 {
            assert_eq!(part.partition("t", None, 8), first);
        }
        part.batch_closed("t", first, 8);
        let second = part.partition("t", None, 8);
        assert_ne!(first, second);
        // Closing a batch of another partition does not move the sticky choice.
        part.batch_closed("t", (second + 1) % 8, 8);
        assert_eq!(part.partition("t", None, 8), second);
        // Single-partition topics always use partition 0.
        assert_eq!(part.partition("one", None, 1), 0);
        part.batch_closed("one", 0, 1);
        assert_eq!(part.partition("one", None, 1), 0);
    }
}
