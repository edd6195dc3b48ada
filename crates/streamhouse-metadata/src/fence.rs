//! The commit fence, in one place for every backend: a partition's share of a flush lands
//! only if it starts at the stored high watermark and comes from the holder of the current
//! lease epoch. Backends read the partition's current state (locked, in their transaction)
//! and ask [`check`] before they write.

use std::collections::BTreeMap;

use crate::error::MetadataError;
use crate::types::{
    AgentId, CommitRejection, IndexEntry, LeaseEpoch, Offset, PartitionCommit, ProducerId,
    ProducerState, StoredEntry, TopicPartition, PRODUCER_BATCHES_KEPT,
};

/// A partition's committed state as a backend read it inside its commit transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Current<'a> {
    pub(crate) high_watermark: Offset,
    /// The lease holder, if any; expiry is not considered (see [`check`]).
    pub(crate) holder: Option<&'a str>,
    pub(crate) epoch: LeaseEpoch,
}

/// Whether `commit` may land on a partition whose state is `current` (`None`: no such
/// partition).
///
/// Expiry alone does not fence: until someone else acquires the lease (and bumps the epoch),
/// the holder's appends cannot conflict with anyone's. The expected high watermark check
/// makes every accepted range start exactly where the previous one ended.
pub(crate) fn check(
    commit: &PartitionCommit,
    current: Option<Current<'_>>,
) -> Result<(), CommitRejection> {
    let entry = &commit.entry;
    let tp = &entry.tp;
    if entry.base_offset != commit.expected_high_watermark || entry.end_offset <= entry.base_offset
    {
        return Err(CommitRejection::InvalidRange(tp.clone()));
    }
    let Some(current) = current else {
        return Err(CommitRejection::UnknownPartition(tp.clone()));
    };
    if current.holder != Some(commit.holder.0.as_str()) || current.epoch != commit.epoch {
        return Err(CommitRejection::Fenced {
            tp: tp.clone(),
            holder: current.holder.map(|h| AgentId(h.to_string())),
            epoch: current.epoch,
        });
    }
    if current.high_watermark != commit.expected_high_watermark {
        return Err(CommitRejection::OffsetMismatch {
            tp: tp.clone(),
            expected: commit.expected_high_watermark,
            actual: current.high_watermark,
        });
    }
    Ok(())
}

/// A partition's committed state as a backend read it (locked) in a commit's transaction:
/// what [`plan_commit`] judges the commit's shares against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) high_watermark: Offset,
    pub(crate) holder: Option<String>,
    pub(crate) epoch: LeaseEpoch,
}

/// What a flush commit writes once [`plan_commit`] has judged every partition's share:
/// the rows a backend writes in a handful of statements, one per table, however many
/// partitions the flush holds. (Statement by statement, a flush of six partitions with
/// idempotent producers took some sixty round trips to the store, each waiting its turn on
/// a busy machine, while the commit held SQLite's only writer lock.)
#[derive(Debug, Default)]
pub(crate) struct CommitPlan<'a> {
    /// Per share of the commit, in order: accepted, or why not.
    pub(crate) results: Vec<Result<(), CommitRejection>>,
    /// The accepted index entries, each with the epoch it is committed under.
    pub(crate) entries: Vec<(&'a IndexEntry, LeaseEpoch)>,
    /// The new high watermark of every partition with an accepted share.
    pub(crate) watermarks: BTreeMap<&'a TopicPartition, Offset>,
    /// The new state of every producer that appended in an accepted share, per partition
    /// (a producer in two shares of one partition: the later state).
    pub(crate) producers: BTreeMap<(&'a TopicPartition, ProducerId), &'a ProducerState>,
}

impl CommitPlan<'_> {
    /// Whether any share was accepted (and the flush's object is therefore named).
    pub(crate) fn accepted_any(&self) -> bool {
        !self.entries.is_empty()
    }
}

/// Judges each share of a flush commit with [`check`], in order, against the partitions'
/// `committed` state (keyed by partition; a partition missing is unknown); an accepted share
/// moves its partition's high watermark for the shares after it. Fails as a whole if a share
/// carries more producer batches than a partition remembers.
pub(crate) fn plan_commit(
    partitions: &[PartitionCommit],
    mut committed: BTreeMap<TopicPartition, Committed>,
) -> Result<CommitPlan<'_>, MetadataError> {
    let mut plan = CommitPlan::default();
    for commit in partitions {
        let entry = &commit.entry;
        let tp = &entry.tp;
        let state = committed.get_mut(tp);
        let current = state.as_ref().map(|state| Current {
            high_watermark: state.high_watermark,
            holder: state.holder.as_deref(),
            epoch: state.epoch,
        });
        if let Err(rejection) = check(commit, current) {
            plan.results.push(Err(rejection));
            continue;
        }
        if let Some(p) = commit
            .producers
            .iter()
            .find(|p| p.batches.len() > PRODUCER_BATCHES_KEPT)
        {
            return Err(MetadataError::Invalid {
                message: format!(
                    "{} batches for producer {} of {tp}; at most {PRODUCER_BATCHES_KEPT} are kept",
                    p.batches.len(),
                    p.producer_id
                ),
            });
        }
        if let Some(state) = state {
            state.high_watermark = entry.end_offset;
        }
        plan.entries.push((entry, commit.epoch));
        plan.watermarks.insert(tp, entry.end_offset);
        for p in &commit.producers {
            plan.producers.insert((tp, p.producer_id), p);
        }
        plan.results.push(Ok(()));
    }
    Ok(plan)
}

/// The distinct partitions of a commit, in order: what a backend reads (and locks) first.
pub(crate) fn commit_partitions(partitions: &[PartitionCommit]) -> Vec<&TopicPartition> {
    let mut tps: Vec<&TopicPartition> = partitions.iter().map(|c| &c.entry.tp).collect();
    tps.sort();
    tps.dedup();
    tps
}

/// Whether a compaction swap is well formed: `old` is a non-empty contiguous run of one
/// partition's entries, and `new` covers exactly the same offsets, contiguously, from
/// `object_key`. Whether `old` is still what the index holds is the backend's check.
pub(crate) fn check_swap(
    object_key: &str,
    old: &[IndexEntry],
    new: &[StoredEntry],
) -> Result<(), MetadataError> {
    let invalid = |message: String| Err(MetadataError::Invalid { message });
    let (Some(first), Some(last)) = (old.first(), old.last()) else {
        return invalid("a compaction swap needs at least one old entry".into());
    };
    let tp = &first.tp;
    let mut at = first.base_offset;
    for e in old {
        if &e.tp != tp || e.base_offset != at || e.end_offset <= e.base_offset {
            return invalid(format!(
                "old entries of {tp} are not one contiguous run at {at}"
            ));
        }
        at = e.end_offset;
    }
    let mut at = first.base_offset;
    for e in new.iter().map(|s| &s.entry) {
        if &e.tp != tp || e.base_offset != at || e.end_offset <= e.base_offset {
            return invalid(format!(
                "new entries of {tp} are not one contiguous run at {at}"
            ));
        }
        if e.object_key != object_key {
            return invalid(format!("new entry at {at} of {tp} names another object"));
        }
        at = e.end_offset;
    }
    if at != last.end_offset {
        return invalid(format!(
            "new entries of {tp} end at {at}, the old ones at {}",
            last.end_offset
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{IndexEntry, ProducerBatch, ProducerEpoch, TopicPartition};

    fn commit(base: i64, end: i64, epoch: i64) -> PartitionCommit {
        PartitionCommit {
            holder: AgentId("a".into()),
            epoch: LeaseEpoch(epoch),
            expected_high_watermark: Offset(base),
            entry: IndexEntry {
                tp: TopicPartition::new("t", 0),
                base_offset: Offset(base),
                end_offset: Offset(end),
                object_key: "o".into(),
                byte_start: 0,
                byte_len: 1,
                max_timestamp: 0,
            },
            producers: Vec::new(),
        }
    }

    fn current(hw: i64, holder: Option<&str>, epoch: i64) -> Option<Current<'_>> {
        Some(Current {
            high_watermark: Offset(hw),
            holder,
            epoch: LeaseEpoch(epoch),
        })
    }

    #[test]
    fn only_the_current_holder_appends_exactly_at_the_high_watermark() {
        assert_eq!(check(&commit(5, 7, 2), current(5, Some("a"), 2)), Ok(()));
        assert!(matches!(
            check(&commit(5, 7, 1), current(5, Some("a"), 2)),
            Err(CommitRejection::Fenced { .. })
        ));
        assert!(matches!(
            check(&commit(5, 7, 2), current(5, Some("b"), 2)),
            Err(CommitRejection::Fenced { .. })
        ));
        assert!(matches!(
            check(&commit(5, 7, 2), current(5, None, 2)),
            Err(CommitRejection::Fenced { .. })
        ));
        assert!(matches!(
            check(&commit(5, 7, 2), current(6, Some("a"), 2)),
            Err(CommitRejection::OffsetMismatch { .. })
        ));
        assert!(matches!(
            check(&commit(5, 5, 2), current(5, Some("a"), 2)),
            Err(CommitRejection::InvalidRange(_))
        ));
        assert!(matches!(
            check(&commit(5, 7, 2), None),
            Err(CommitRejection::UnknownPartition(_))
        ));
    }

    fn producer(id: i64, last_sequence: i32, batches: usize) -> ProducerState {
        ProducerState {
            producer_id: ProducerId(id),
            producer_epoch: ProducerEpoch(0),
            last_sequence,
            batches: (0..batches)
                .map(|i| ProducerBatch {
                    first_sequence: i as i32,
                    last_sequence: i as i32,
                    base_offset: Offset(i as i64),
                })
                .collect(),
        }
    }

    fn committed(hw: i64) -> BTreeMap<TopicPartition, Committed> {
        BTreeMap::from([(
            TopicPartition::new("t", 0),
            Committed {
                high_watermark: Offset(hw),
                holder: Some("a".into()),
                epoch: LeaseEpoch(2),
            },
        )])
    }

    #[test]
    fn a_plan_judges_shares_in_order_and_writes_each_row_once() {
        let mut second = commit(7, 9, 2);
        second.producers = vec![producer(1, 8, 2)];
        let mut first = commit(5, 7, 2);
        first.producers = vec![producer(1, 6, 1), producer(2, 3, 1)];
        // The second share starts where the first ended; the third starts at the old high
        // watermark again and is refused; the fourth comes from a stale epoch.
        let shares = [first, second, commit(5, 6, 2), commit(9, 10, 1)];
        let plan = plan_commit(&shares, committed(5)).unwrap();
        assert_eq!(plan.results[0], Ok(()));
        assert_eq!(plan.results[1], Ok(()));
        assert!(matches!(
            plan.results[2],
            Err(CommitRejection::OffsetMismatch { .. })
        ));
        assert!(matches!(
            plan.results[3],
            Err(CommitRejection::Fenced { .. })
        ));
        assert_eq!(plan.entries.len(), 2);
        let tp = TopicPartition::new("t", 0);
        assert_eq!(plan.watermarks.get(&tp), Some(&Offset(9)));
        assert_eq!(plan.producers.len(), 2);
        assert_eq!(plan.producers[&(&tp, ProducerId(1))].last_sequence, 8);
        assert!(plan.accepted_any());

        let refused = plan_commit(&shares[2..], committed(9)).unwrap();
        assert!(!refused.accepted_any());
        assert!(refused.watermarks.is_empty() && refused.producers.is_empty());
    }

    #[test]
    fn a_share_with_more_batches_than_remembered_fails_the_whole_commit() {
        let mut share = commit(5, 7, 2);
        share.producers = vec![producer(1, 6, PRODUCER_BATCHES_KEPT + 1)];
        assert!(matches!(
            plan_commit(&[share], committed(5)),
            Err(MetadataError::Invalid { .. })
        ));
        assert!(matches!(
            plan_commit(&[commit(5, 7, 2)], BTreeMap::new())
                .unwrap()
                .results[0],
            Err(CommitRejection::UnknownPartition(_))
        ));
    }
}
