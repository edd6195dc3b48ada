//! Idempotent producers: InitProducerId, and the per-partition sequence checks that make a
//! retried batch land exactly once.
//!
//! Each partition remembers, per producer id, its epoch, its last sequence number and its
//! latest [`PRODUCER_BATCHES_KEPT`] batches with their offsets, the same rules as Kafka's:
//!
//! - a batch identical (epoch, first and last sequence) to a remembered one is a retry: it is
//!   answered with the original's base offset and nothing is written;
//! - an epoch older than the known one is refused (INVALID_PRODUCER_EPOCH);
//! - a newer epoch must start at sequence 0; within an epoch each batch must start right
//!   after the previous one (wrapping at `i32::MAX`), else OUT_OF_ORDER_SEQUENCE_NUMBER;
//! - a producer the partition has never seen is accepted at any sequence, as Kafka ≥ 2.5
//!   does (KIP-360): state is never expired here, so this only happens for a producer whose
//!   earlier batches went to a deleted incarnation of the topic, and refusing it
//!   (UNKNOWN_PRODUCER_ID) would only make the client bump its epoch and resend.
//!
//! The committed state changes only with the metadata commit that stores the data (and the
//! state with it). On top of it the agent tracks the batches that are accepted but not yet
//! committed (buffered or in flight), so that a retry arriving meanwhile waits for the
//! original's outcome instead of being written twice, and a batch that continues a pending
//! one is accepted. The check is made twice: at append, against committed plus pending, and
//! at flush, against the committed state alone, which is authoritative.

use std::collections::HashMap;

use streamhouse_metadata::{
    EpochBump, Offset, ProducerBatch, ProducerEpoch, ProducerId, ProducerState, TopicPartition,
    PRODUCER_BATCHES_KEPT,
};
use streamhouse_storage::batch::BatchSpan;
use streamhouse_storage::BatchError;

use crate::agent::{error_chain, Agent, Reply};
use crate::error::AgentError;

/// Who sent an idempotent batch and which sequence numbers it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchIds {
    pub(crate) producer_id: ProducerId,
    pub(crate) epoch: ProducerEpoch,
    pub(crate) first_sequence: i32,
    pub(crate) last_sequence: i32,
}

/// The idempotence identity of a producer's record set for `tp`: `None` for a plain
/// (non-idempotent) producer. An idempotent record set must be a single batch, as Kafka
/// requires of every Produce v3+, because a retry is recognized batch by batch.
pub(crate) fn identify(
    tp: &TopicPartition,
    spans: &[BatchSpan],
) -> Result<Option<BatchIds>, AgentError> {
    let invalid = |at: usize, reason: String| AgentError::Corrupt {
        tp: tp.clone(),
        source: BatchError::Invalid { at, reason },
    };
    let Some(first) = spans.iter().find(|s| s.header.producer_id >= 0) else {
        return Ok(None);
    };
    if spans.len() != 1 {
        return Err(invalid(
            first.range.start,
            format!(
                "an idempotent producer must send one record batch per partition, not {}",
                spans.len()
            ),
        ));
    }
    let h = &first.header;
    if h.producer_epoch < 0 || h.base_sequence < 0 {
        return Err(invalid(
            first.range.start,
            format!(
                "producer id {} with epoch {} and base sequence {}",
                h.producer_id, h.producer_epoch, h.base_sequence
            ),
        ));
    }
    Ok(Some(BatchIds {
        producer_id: ProducerId(h.producer_id),
        epoch: ProducerEpoch(h.producer_epoch),
        first_sequence: h.base_sequence,
        last_sequence: add_sequence(h.base_sequence, h.last_offset_delta),
    }))
}

/// `sequence + n`, wrapping past `i32::MAX` to 0 as Kafka's sequence numbers do.
fn add_sequence(sequence: i32, n: i32) -> i32 {
    let sum = i64::from(sequence) + i64::from(n);
    let span = i64::from(i32::MAX) + 1;
    // `rem_euclid` keeps the result in 0..=i32::MAX, so the conversion cannot fail.
    i32::try_from(sum.rem_euclid(span)).unwrap_or(0)
}

/// What to do with an idempotent batch.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// It continues its producer's sequence: append it.
    Append,
    /// A retry of a committed batch: answer with the original's base offset.
    Duplicate(Offset),
    /// A retry of a batch not committed yet (its id): wait for the original's outcome.
    DuplicateOfPending(u64),
    Reject(AgentError),
}

/// Checks a batch against what the partition last knew of its producer, `last` being the
/// latest accepted batch when it is more recent than `known` (a pending batch).
fn check(
    tp: &TopicPartition,
    known: Option<&ProducerState>,
    last: Option<&BatchIds>,
    b: &BatchIds,
) -> Verdict {
    if let Some(state) = known.filter(|s| s.producer_epoch == b.epoch) {
        if let Some(dup) = state
            .batches
            .iter()
            .find(|d| d.first_sequence == b.first_sequence && d.last_sequence == b.last_sequence)
        {
            return Verdict::Duplicate(dup.base_offset);
        }
    }
    let (epoch, last_sequence) = match (last, known) {
        (Some(l), _) => (l.epoch, l.last_sequence),
        (None, Some(k)) => (k.producer_epoch, k.last_sequence),
        (None, None) => return Verdict::Append,
    };
    let expected = if b.epoch > epoch {
        0
    } else if b.epoch < epoch {
        return Verdict::Reject(AgentError::InvalidProducerEpoch {
            tp: tp.clone(),
            producer_id: b.producer_id,
            epoch: b.epoch,
            current: epoch,
        });
    } else {
        add_sequence(last_sequence, 1)
    };
    if b.first_sequence != expected {
        return Verdict::Reject(AgentError::OutOfOrderSequence {
            tp: tp.clone(),
            producer_id: b.producer_id,
            expected,
            got: b.first_sequence,
        });
    }
    Verdict::Append
}

/// The flush-time check, against the committed state alone (or the state of this flush's
/// earlier batches).
pub(crate) fn check_committed(
    tp: &TopicPartition,
    known: Option<&ProducerState>,
    b: &BatchIds,
) -> Verdict {
    check(tp, known, None, b)
}

/// The producer's state after appending `b` at `base_offset`.
pub(crate) fn apply(
    known: Option<ProducerState>,
    b: &BatchIds,
    base_offset: Offset,
) -> ProducerState {
    let mut state = match known {
        Some(s) if s.producer_epoch == b.epoch => s,
        // A new producer or a new epoch: the batches of older epochs can no longer be retried.
        _ => ProducerState {
            producer_id: b.producer_id,
            producer_epoch: b.epoch,
            last_sequence: b.last_sequence,
            batches: Vec::new(),
        },
    };
    state.last_sequence = b.last_sequence;
    state.batches.push(ProducerBatch {
        first_sequence: b.first_sequence,
        last_sequence: b.last_sequence,
        base_offset,
    });
    let excess = state.batches.len().saturating_sub(PRODUCER_BATCHES_KEPT);
    state.batches.drain(..excess);
    state
}

/// An accepted batch that is not committed yet.
#[derive(Debug)]
pub(crate) struct PendingIds {
    /// The agent-wide id of the buffered batch.
    pub(crate) id: u64,
    ids: BatchIds,
    /// Retries of this batch that arrived while it was pending; they get its outcome.
    waiters: Vec<Reply>,
}

/// What one partition knows about its idempotent producers.
#[derive(Debug, Default)]
pub(crate) struct Producers {
    /// As committed to the metadata store.
    committed: HashMap<ProducerId, ProducerState>,
    /// Accepted, not yet committed, in append order.
    pending: HashMap<ProducerId, Vec<PendingIds>>,
}

impl Producers {
    pub(crate) fn new(states: Vec<ProducerState>) -> Producers {
        let mut producers = Producers::default();
        producers.replace_committed(states);
        producers
    }

    /// Replaces the committed state with what the store holds (after an ambiguous commit).
    pub(crate) fn replace_committed(&mut self, states: Vec<ProducerState>) {
        self.committed = states.into_iter().map(|s| (s.producer_id, s)).collect();
    }

    pub(crate) fn committed(&self, id: ProducerId) -> Option<&ProducerState> {
        self.committed.get(&id)
    }

    /// Takes the states a commit stored.
    pub(crate) fn commit(&mut self, states: &[ProducerState]) {
        for s in states {
            self.committed.insert(s.producer_id, s.clone());
        }
    }

    /// The append-time check, against committed plus pending batches.
    pub(crate) fn check_append(&self, tp: &TopicPartition, b: &BatchIds) -> Verdict {
        let pending = self.pending.get(&b.producer_id);
        if let Some(p) = pending.and_then(|p| p.iter().find(|p| p.ids == *b)) {
            return Verdict::DuplicateOfPending(p.id);
        }
        let last = pending.and_then(|p| p.last()).map(|p| &p.ids);
        check(tp, self.committed.get(&b.producer_id), last, b)
    }

    /// Records an accepted batch as pending.
    pub(crate) fn push_pending(&mut self, id: u64, ids: BatchIds) {
        self.pending
            .entry(ids.producer_id)
            .or_default()
            .push(PendingIds {
                id,
                ids,
                waiters: Vec::new(),
            });
    }

    /// Makes a retry wait for the pending batch `id`. Gives the reply back if that batch is
    /// no longer pending.
    pub(crate) fn attach(&mut self, producer: ProducerId, id: u64, reply: Reply) -> Option<Reply> {
        match self
            .pending
            .get_mut(&producer)
            .and_then(|p| p.iter_mut().find(|p| p.id == id))
        {
            Some(p) => {
                p.waiters.push(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// A pending batch was committed: forgets it and returns the retries waiting for it.
    pub(crate) fn committed_pending(&mut self, producer: ProducerId, id: u64) -> Vec<Reply> {
        let Some(list) = self.pending.get_mut(&producer) else {
            return Vec::new();
        };
        let waiters = match list.iter().position(|p| p.id == id) {
            Some(at) => list.remove(at).waiters,
            None => Vec::new(),
        };
        if list.is_empty() {
            self.pending.remove(&producer);
        }
        waiters
    }

    /// A pending batch failed: forgets it and every later pending batch of its producer
    /// (they no longer continue a sequence the partition will have), returning those.
    pub(crate) fn failed_pending(&mut self, producer: ProducerId, id: u64) -> Vec<PendingIds> {
        let Some(list) = self.pending.get_mut(&producer) else {
            return Vec::new();
        };
        let dropped = match list.iter().position(|p| p.id == id) {
            Some(at) => list.split_off(at),
            None => Vec::new(),
        };
        if list.is_empty() {
            self.pending.remove(&producer);
        }
        dropped
    }

    /// Every retry still waiting (the partition is being dropped).
    pub(crate) fn take_waiters(&mut self) -> Vec<Reply> {
        self.pending
            .drain()
            .flat_map(|(_, list)| list.into_iter().flat_map(|p| p.waiters))
            .collect()
    }
}

impl PendingIds {
    pub(crate) fn into_waiters(self) -> Vec<Reply> {
        self.waiters
    }
}

/// The error a retry attached to a failed batch is answered with: the same as the
/// original's where it can be rebuilt, else a retriable flush failure naming it.
pub(crate) fn copy_error(e: &AgentError) -> AgentError {
    match e {
        AgentError::NotLeader { tp } => AgentError::NotLeader { tp: tp.clone() },
        AgentError::FlushFailed { reason } => AgentError::FlushFailed {
            reason: reason.clone(),
        },
        AgentError::InvalidProducerEpoch {
            tp,
            producer_id,
            epoch,
            current,
        } => AgentError::InvalidProducerEpoch {
            tp: tp.clone(),
            producer_id: *producer_id,
            epoch: *epoch,
            current: *current,
        },
        AgentError::OutOfOrderSequence {
            tp,
            producer_id,
            expected,
            got,
        } => AgentError::OutOfOrderSequence {
            tp: tp.clone(),
            producer_id: *producer_id,
            expected: *expected,
            got: *got,
        },
        other => AgentError::FlushFailed {
            reason: error_chain(other),
        },
    }
}

impl Agent {
    /// InitProducerId for a non-transactional producer. Without `current` a new producer id
    /// at epoch 0; with one (KIP-360) the same id at the next epoch, or a new id when the
    /// epoch is exhausted or the id unknown (Kafka hands non-transactional producers a new
    /// id in every case).
    pub async fn init_producer_id(
        &self,
        current: Option<(ProducerId, ProducerEpoch)>,
    ) -> Result<(ProducerId, ProducerEpoch), AgentError> {
        if let Some((id, epoch)) = current {
            match self.metadata.bump_producer_epoch(id, epoch).await? {
                EpochBump::Bumped(next) => return Ok((id, next)),
                EpochBump::Fenced { current } => {
                    return Err(AgentError::ProducerFenced {
                        producer_id: id,
                        epoch,
                        current,
                    })
                }
                EpochBump::Unknown | EpochBump::Exhausted => {}
            }
        }
        let id = self.metadata.allocate_producer_id().await?;
        Ok((id, ProducerEpoch(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    fn ids(epoch: i16, first: i32, last: i32) -> BatchIds {
        BatchIds {
            producer_id: ProducerId(1),
            epoch: ProducerEpoch(epoch),
            first_sequence: first,
            last_sequence: last,
        }
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(add_sequence(5, 3), 8);
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 1, 4), 2);
    }

    #[test]
    fn rules_follow_kafka() {
        let tp = tp();
        // Unknown producers are accepted at any sequence.
        assert!(matches!(
            check_committed(&tp, None, &ids(0, 7, 9)),
            Verdict::Append
        ));
        let state = apply(None, &ids(0, 0, 2), Offset(10));
        let state = apply(Some(state), &ids(0, 3, 4), Offset(20));
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(0, 0, 2)),
            Verdict::Duplicate(Offset(10))
        ));
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(0, 5, 5)),
            Verdict::Append
        ));
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(0, 6, 6)),
            Verdict::Reject(AgentError::OutOfOrderSequence {
                expected: 5,
                got: 6,
                ..
            })
        ));
        // Same first sequence, different length: not a retry, and out of order.
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(0, 0, 1)),
            Verdict::Reject(AgentError::OutOfOrderSequence { .. })
        ));
        // A new epoch starts at 0; older epochs are fenced.
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(1, 0, 0)),
            Verdict::Append
        ));
        assert!(matches!(
            check_committed(&tp, Some(&state), &ids(1, 5, 5)),
            Verdict::Reject(AgentError::OutOfOrderSequence { expected: 0, .. })
        ));
        let bumped = apply(Some(state), &ids(1, 0, 0), Offset(30));
        assert_eq!(
            bumped.batches.len(),
            1,
            "older epochs' batches are forgotten"
        );
        assert!(matches!(
            check_committed(&tp, Some(&bumped), &ids(0, 5, 5)),
            Verdict::Reject(AgentError::InvalidProducerEpoch { .. })
        ));
        // A retry of the old epoch's batch is fenced too, not answered.
        assert!(matches!(
            check_committed(&tp, Some(&bumped), &ids(0, 0, 2)),
            Verdict::Reject(AgentError::InvalidProducerEpoch { .. })
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut state = None;
        for i in 0..7 {
            state = Some(apply(state, &ids(0, i, i), Offset(i64::from(i))));
        }
        let state = state.unwrap();
        assert_eq!(state.batches.len(), PRODUCER_BATCHES_KEPT);
        assert!(matches!(
            check_committed(&tp(), Some(&state), &ids(0, 2, 2)),
            Verdict::Duplicate(Offset(2))
        ));
        assert!(matches!(
            check_committed(&tp(), Some(&state), &ids(0, 1, 1)),
            Verdict::Reject(AgentError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn pending_batches_continue_the_sequence_and_catch_retries() {
        let tp = tp();
        let mut p = Producers::default();
        assert!(matches!(
            p.check_append(&tp, &ids(0, 0, 1)),
            Verdict::Append
        ));
        p.push_pending(1, ids(0, 0, 1));
        assert!(matches!(
            p.check_append(&tp, &ids(0, 0, 1)),
            Verdict::DuplicateOfPending(1)
        ));
        assert!(matches!(
            p.check_append(&tp, &ids(0, 2, 2)),
            Verdict::Append
        ));
        p.push_pending(2, ids(0, 2, 2));
        assert!(matches!(
            p.check_append(&tp, &ids(0, 4, 4)),
            Verdict::Reject(AgentError::OutOfOrderSequence { expected: 3, .. })
        ));
        // The first fails: both are forgotten, and a retry of the first is accepted anew.
        assert_eq!(p.failed_pending(ProducerId(1), 1).len(), 2);
        assert!(matches!(
            p.check_append(&tp, &ids(0, 0, 1)),
            Verdict::Append
        ));
    }
}
