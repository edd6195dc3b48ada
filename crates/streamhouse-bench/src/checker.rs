//! Checks, as acknowledgements arrive, that each partition's offsets are gap-free and unique.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct PartitionCheck {
    /// The next offset that would extend the contiguous run.
    next: i64,
    /// Offsets seen above `next` (acknowledgements can arrive out of order).
    ahead: BTreeSet<i64>,
    duplicates: u64,
}

/// Verifies that the offsets acknowledged for each partition form one contiguous range,
/// starting where the partition's log ended before the run.
///
/// Out-of-order acknowledgements are fine; duplicates and gaps are errors. Memory is
/// bounded by how far acknowledgements run ahead of the contiguous prefix. Another writer
/// on the same topic during the run shows up as gaps.
#[derive(Debug, Default)]
pub struct OffsetChecker {
    partitions: HashMap<i32, PartitionCheck>,
}

impl OffsetChecker {
    /// An empty checker; call [`OffsetChecker::start`] per partition before recording.
    pub fn new() -> OffsetChecker {
        OffsetChecker::default()
    }

    /// Declares that `partition`'s first offset in this run will be `first_offset`.
    pub fn start(&mut self, partition: i32, first_offset: i64) {
        self.partitions.insert(
            partition,
            PartitionCheck {
                next: first_offset,
                ..PartitionCheck::default()
            },
        );
    }

    /// Records one acknowledged offset. Partitions never `start`ed begin at their first offset.
    pub fn record(&mut self, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionCheck {
                next: offset,
                ..PartitionCheck::default()
            });
        if offset < p.next || !p.ahead.insert(offset) {
            p.duplicates += 1;
            return;
        }
        while p.ahead.remove(&p.next) {
            p.next += 1;
        }
    }

    /// Errors so far: duplicates plus the gaps that are still open. A gap that later fills
    /// (an out-of-order acknowledgement) stops counting, so call this after the run.
    pub fn errors(&self) -> u64 {
        self.partitions
            .values()
            .map(|p| {
                // Each run of offsets beyond the contiguous prefix is preceded by one gap.
                let mut gaps = 0u64;
                let mut expect = p.next;
                for &o in &p.ahead {
                    if o != expect {
                        gaps += 1;
                    }
                    expect = o + 1;
                }
                p.duplicates + gaps
            })
            .sum()
    }

    /// The end of `partition`'s contiguous run: the next offset that would extend it.
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).map(|p| p.next)
    }

    /// Number of partitions seen.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_in_any_order_is_clean() {
        let mut c = OffsetChecker::new();
        c.start(0, 100);
        for o in [101, 100, 103, 102, 104] {
            c.record(0, o);
        }
        c.start(1, 0);
        for o in 0..10 {
            c.record(1, o);
        }
        assert_eq!(c.errors(), 0);
        assert_eq!(c.partitions(), 2);
    }

    #[test]
    fn duplicates_and_gaps_count() {
        let mut c = OffsetChecker::new();
        c.start(0, 0);
        for o in [0, 1, 1, 3, 4, 7] {
            c.record(0, o);
        }
        // duplicate 1, gap before 3, gap before 7
        assert_eq!(c.errors(), 3);
        c.record(0, 0); // below the prefix: duplicate
        assert_eq!(c.errors(), 4);
        c.record(0, 2); // fills the first gap
        assert_eq!(c.errors(), 3);
    }

    #[test]
    fn missing_first_offset_is_a_gap() {
        let mut c = OffsetChecker::new();
        c.start(3, 50);
        c.record(3, 51);
        assert_eq!(c.errors(), 1);
    }

    #[test]
    fn unstarted_partition_begins_at_first_ack() {
        let mut c = OffsetChecker::new();
        c.record(2, 10);
        c.record(2, 11);
        assert_eq!(c.errors(), 0);
    }
}
