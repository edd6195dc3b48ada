//! The commit fence, in one place for every backend: a partition's share of a flush lands
//! only if it starts at the stored high watermark and comes from the holder of the current
//! lease epoch. Backends read the partition's current state (locked, in their transaction)
//! and ask [`check`] before they write.

use crate::error::MetadataError;
use crate::types::{
    AgentId, CommitRejection, IndexEntry, LeaseEpoch, Offset, PartitionCommit, StoredEntry,
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
    use crate::types::{IndexEntry, TopicPartition};

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
}
