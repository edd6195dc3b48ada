//! Object compaction: every flush writes one small object holding a slice of many
//! partitions, so a busy partition's history is spread over thousands of tiny slices (one
//! index entry and one GET each). Compaction merges runs of a partition's small slices into
//! one per-partition object of about `compaction_target_bytes`, with index entries of about
//! `compaction_entry_bytes`, and swaps the index entries in one metadata transaction
//! ([`MetadataStore::replace_entries`]) that is refused if the index changed underneath.
//!
//! Invariants:
//! - Batches are copied byte for byte, in offset order, so readers see the same records at
//!   the same offsets before, during and after: before the swap the old entries name the
//!   old objects, after it the new entries name the new one, and the old objects stay until
//!   garbage collection finds them unnamed for a grace period.
//! - The leader of a partition compacts it (its lease is the claim through the metadata
//!   store). Two agents compacting one partition during a lease handoff are harmless: the
//!   second swap sees a change and its object is deleted unnamed.
//! - New entries end where old ones ended and never span two lease epochs, so
//!   OffsetForLeaderEpoch and retention (whole entries) answer as before.
//! - A crash at any point leaves either the old entries (the new object is an orphan for
//!   garbage collection) or the new ones (the old objects are garbage).
//!
//! Two kinds of runs are merged, never mixed:
//! - *small* entries (under `compaction_entry_bytes`: flush slices) into objects of up to
//!   `compaction_target_bytes` or [`MAX_RUN_ENTRIES`] (25) entries, whichever comes first (a
//!   swap's transaction holds SQLite's writer lock, or on PostgreSQL the partition's row
//!   lock, which the flushes' commits wait for: at most that many entries keep it short);
//! - *medium* entries (larger, in an object under an eighth of the target: large flush slices,
//!   or the objects short small runs became) into objects of up to the target size.
//!
//! Entries in objects of at least an eighth of the target (8 MiB by default) are left alone:
//! rewriting them again would cost more disk and store bandwidth, which flushes compete for,
//! than their fewer objects save. A run is merged once it
//! cannot grow any more (it is full, or an entry of another kind or another epoch follows;
//! small entries after a medium run only end it once it holds an eighth of the target, since they
//! become medium entries themselves) or once its oldest entry was committed
//! `compaction_window` ago, and only if it spans several objects. So a quiet partition still ends up with one object per window instead of
//! one per flush, a busy one with objects of 8 MiB to the target size, and each byte is
//! rewritten at most twice, except in a partition whose flush slices are under about 10 KiB:
//! [`MAX_RUN_ENTRIES`] of them make an object whose entry is small again, so its bytes are
//! rewritten three times, or more when slices are smaller still (little I/O, since such a
//! partition is slow).
//!
//! [`MetadataStore::replace_entries`]: streamhouse_metadata::MetadataStore::replace_entries

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use streamhouse_metadata::{
    IndexEntry, LeaseEpoch, ObjectRecord, StoredEntry, Swap, TopicPartition,
};
use streamhouse_storage::batch;
use streamhouse_storage::ObjectBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{error_chain, every, now_ms, Agent};
use crate::error::AgentError;
use crate::stats;

/// Index entries looked up at a time while planning.
const ENTRIES_PER_LOOKUP: usize = 1000;
/// Most entries one swap replaces, in object and log compaction alike: keeps each swap
/// transaction (and the flush commits waiting for it) short. At 10 MiB/s of produce on a
/// 2-core machine, swaps of 500 entries held SQLite's writer lock 6-10 ms each and the
/// produce p99 rose from 11-15 ms to 25-36 ms during compaction; with 50 (and flush commits
/// going before swaps), swaps held it about 2 ms and the p99 rose by about 33%; with 25 (and
/// swaps not waiting for an fsync), about 1.25 ms and about 13% over the first two passes
/// (docs/architecture.md has the runs, and the steady state's larger rise). With 10 or 15
/// they held it no shorter: about 1 ms of a swap does not depend on its size.
pub(crate) const MAX_RUN_ENTRIES: usize = 25;
/// Slices read at once while merging.
const READ_CONCURRENCY: usize = 16;

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Objects written and swapped in.
    pub objects: usize,
    /// Index entries replaced…
    pub entries_in: usize,
    /// …by this many.
    pub entries_out: usize,
    /// Record batch bytes merged.
    pub bytes: u64,
    /// Runs whose swap found the index changed (their objects were deleted).
    pub conflicts: usize,
}

impl CompactionStats {
    fn add(&mut self, other: CompactionStats) {
        self.objects += other.objects;
        self.entries_in += other.entries_in;
        self.entries_out += other.entries_out;
        self.bytes += other.bytes;
        self.conflicts += other.conflicts;
    }
}

/// What object compaction does with an index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A slice under `compaction_entry_bytes`: merged into a per-partition object.
    Small,
    /// A larger slice in an object under an eighth of the target size: merged into one of
    /// about the target size.
    Medium,
    /// In an object of at least an eighth of the target size: left alone.
    Large,
}

fn kind(e: &StoredEntry, small: u64, target: u64) -> Kind {
    if e.entry.byte_len < small {
        Kind::Small
    } else if e.object_bytes < target / 8 {
        Kind::Medium
    } else {
        Kind::Large
    }
}

/// A run of consecutive entries of one kind of one partition, under one epoch.
#[derive(Debug)]
struct Run {
    kind: Kind,
    entries: Vec<StoredEntry>,
    bytes: u64,
}

impl Run {
    fn new(kind: Kind) -> Run {
        Run {
            kind,
            entries: Vec::new(),
            bytes: 0,
        }
    }

    fn can_take(&self, e: &StoredEntry, kind: Kind, target: u64) -> bool {
        let max_entries = match self.kind {
            Kind::Small => MAX_RUN_ENTRIES,
            _ => usize::MAX,
        };
        match self.entries.last() {
            None => self.kind == kind,
            Some(last) => {
                self.kind == kind
                    && last.leader_epoch == e.leader_epoch
                    && last.entry.end_offset == e.entry.base_offset
                    && self.bytes + e.entry.byte_len <= target
                    && self.entries.len() < max_entries
            }
        }
    }

    fn push(&mut self, e: StoredEntry) {
        self.bytes += e.entry.byte_len;
        self.entries.push(e);
    }

    /// Whether merging the run makes fewer objects: it spans more than one.
    fn worth_merging(&self) -> bool {
        self.entries.first().is_some_and(|first| {
            self.entries
                .iter()
                .any(|e| e.entry.object_key != first.entry.object_key)
        })
    }

    /// Whether the run's oldest entry was committed at least `window_ms` ago.
    fn older_than(&self, window_ms: i64) -> bool {
        let oldest = self
            .entries
            .iter()
            .map(|e| e.committed_at_ms)
            .min()
            .unwrap_or(i64::MAX);
        now_ms().saturating_sub(oldest) >= window_ms
    }
}

impl Agent {
    /// What compaction swapped in since the agent started, and the time those runs took
    /// (reading, writing and swapping).
    pub fn compaction_totals(&self) -> (CompactionStats, Duration) {
        *self.compacted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One compaction pass over every partition this agent leads.
    pub async fn compact(&self) -> Result<CompactionStats, AgentError> {
        let led: Vec<TopicPartition> = self
            .lock()
            .led
            .iter()
            .filter(|(_, led)| !led.draining)
            .map(|(tp, _)| tp.clone())
            .collect();
        let mut total = CompactionStats::default();
        for tp in led {
            total.add(self.compact_partition(&tp).await?);
        }
        Ok(total)
    }

    /// Compacts one partition: finds its runs of small and medium entries and merges the
    /// ripe ones.
    pub async fn compact_partition(
        &self,
        tp: &TopicPartition,
    ) -> Result<CompactionStats, AgentError> {
        let target = u64::try_from(self.config.compaction_target_bytes).unwrap_or(u64::MAX);
        let small = u64::try_from(self.config.compaction_entry_bytes).unwrap_or(u64::MAX);
        let window_ms =
            i64::try_from(self.config.compaction_window.as_millis()).unwrap_or(i64::MAX);
        let (_, log_start_offset) = self.partition_offsets(tp).await?;
        let mut stats = CompactionStats::default();
        let mut run = Run::new(Kind::Large);
        let mut position = log_start_offset;
        loop {
            let entries = self
                .metadata
                .find_stored_entries(tp, position, ENTRIES_PER_LOOKUP)
                .await?;
            let Some(last) = entries.last() else { break };
            position = last.entry.end_offset;
            for e in entries {
                let kind = kind(&e, small, target);
                if !run.can_take(&e, kind, target) {
                    let ended = std::mem::replace(&mut run, Run::new(kind));
                    // A run that cannot grow any more is merged now. But medium entries
                    // followed by small ones are where the log's end was: those small
                    // entries become medium ones too, so the run waits for them (until it
                    // is large enough to be left alone after, or old enough).
                    let waits = ended.kind == Kind::Medium
                        && kind == Kind::Small
                        && ended.bytes < target / 8
                        && !ended.older_than(window_ms);
                    if ended.kind != Kind::Large && ended.worth_merging() && !waits {
                        stats.add(self.merge_run(tp, ended).await?);
                    }
                }
                run.push(e);
            }
        }
        // The run at the end of the log may still grow: merge it only once it is old enough.
        if run.kind != Kind::Large && run.worth_merging() && run.older_than(window_ms) {
            stats.add(self.merge_run(tp, run).await?);
        }
        Ok(stats)
    }

    /// Writes one run's batches into one new object and swaps the run's entries for the
    /// new object's.
    async fn merge_run(
        &self,
        tp: &TopicPartition,
        run: Run,
    ) -> Result<CompactionStats, AgentError> {
        let started = Instant::now();
        let slices: Vec<Bytes> = self
            .read_entries(&run.entries)
            .map_ok(|(_, slice)| slice)
            .try_collect()
            .await?;
        // Checking and copying up to the target size of bytes is CPU work: off the runtime's
        // workers, which serve produce and fetch requests meanwhile.
        let entry_bytes = u64::try_from(self.config.compaction_entry_bytes).unwrap_or(u64::MAX);
        let merged = run.bytes;
        let owned_tp = tp.clone();
        let entries = run.entries;
        let (entries, builder) = tokio::task::spawn_blocking(move || {
            build_object(&owned_tp, entries, &slices, entry_bytes)
        })
        .await
        .map_err(|e| AgentError::CorruptData {
            reason: format!("the compaction task failed: {e}"),
        })??;
        let epochs = vec![entries[0].leader_epoch; builder.chunk_count()];
        let old: Vec<IndexEntry> = entries.into_iter().map(|s| s.entry).collect();
        let (swap, entries_out) = self.write_and_swap(tp, builder, &epochs, &old).await?;
        match swap {
            Swap::Replaced => {
                let elapsed = started.elapsed();
                stats::compaction_done(merged, elapsed);
                debug!(%tp, entries_in = old.len(), entries_out, bytes = merged, ?elapsed,
                       "compacted");
                let done = CompactionStats {
                    objects: 1,
                    entries_in: old.len(),
                    entries_out,
                    bytes: merged,
                    conflicts: 0,
                };
                let mut totals = self.compacted.lock().unwrap_or_else(|e| e.into_inner());
                totals.0.add(done);
                totals.1 += elapsed;
                Ok(done)
            }
            Swap::Changed => Ok(CompactionStats {
                conflicts: 1,
                ..CompactionStats::default()
            }),
        }
    }

    /// The slices of `entries`, read a few at a time, in order (object and log compaction).
    pub(crate) fn read_entries<'a>(
        &self,
        entries: &'a [StoredEntry],
    ) -> impl futures_util::Stream<Item = Result<(StoredEntry, Bytes), AgentError>> + 'a {
        let storage = self.storage().clone();
        futures_util::stream::iter(entries.iter().cloned())
            .map(move |stored| {
                let storage = storage.clone();
                async move {
                    let e = &stored.entry;
                    let range = e.byte_start..e.byte_start + e.byte_len;
                    let slice = storage.read_range(&e.object_key, range).await?;
                    Ok((stored, slice))
                }
            })
            .buffered(READ_CONCURRENCY)
    }

    /// Writes `builder`'s object under a new key, then swaps `old` for one index entry per
    /// chunk (chunk `i` under lease epoch `epochs[i]`) in one metadata transaction that is
    /// refused if the index changed underneath; an object the swap did not record is
    /// deleted at once. Object compaction and log compaction both end here. Returns the
    /// swap's outcome and how many entries it swapped in.
    pub(crate) async fn write_and_swap(
        &self,
        tp: &TopicPartition,
        builder: ObjectBuilder,
        epochs: &[LeaseEpoch],
        old: &[IndexEntry],
    ) -> Result<(Swap, usize), AgentError> {
        let storage = self.storage();
        let key = self.new_object_key();
        let (object, chunks) = builder.finish();
        let size = object.len() as u64;
        let new: Vec<StoredEntry> = chunks
            .iter()
            .zip(epochs)
            .map(|(c, epoch)| StoredEntry {
                entry: IndexEntry {
                    tp: tp.clone(),
                    base_offset: c.base_offset,
                    end_offset: c.end_offset,
                    object_key: key.clone(),
                    byte_start: c.byte_start,
                    byte_len: c.byte_len,
                    max_timestamp: c.max_timestamp,
                },
                leader_epoch: *epoch,
                committed_at_ms: 0,
                object_bytes: 0,
            })
            .collect();
        crate::failpoints::crash_point("compaction-before-put");
        let put_started = Instant::now();
        storage.put_new_uncached(&key, object).await?;
        let put_elapsed = put_started.elapsed();
        crate::failpoints::crash_point("compaction-after-put");
        let record = ObjectRecord {
            key: key.clone(),
            size_bytes: size,
            writer: self.config.agent_id.clone(),
        };
        // An error here leaves the swap's outcome unknown: the object stays for garbage
        // collection, which deletes it only if no commit recorded it.
        let swap_started = Instant::now();
        let swap = self.metadata.replace_entries(&record, old, &new).await?;
        debug!(%tp, object = %key, bytes = size, entries_in = old.len(), entries_out = new.len(),
               put = ?put_elapsed, swap = ?swap_started.elapsed(), "object written and swapped");
        crate::failpoints::crash_point("compaction-after-swap");
        if swap == Swap::Changed {
            info!(%tp, object = %key, "the index changed under a compaction; its object is deleted");
            // Never recorded: no reader can know its key. One that cannot be deleted now
            // is an orphan for garbage collection.
            self.delete_objects(std::slice::from_ref(&key)).await;
        }
        Ok((swap, new.len()))
    }

    /// Runs a log compaction pass and an object compaction pass every `compaction_interval`
    /// until `shutdown` (never if the interval is zero).
    pub(crate) async fn compaction_loop(&self, shutdown: &CancellationToken) {
        every(self.config.compaction_interval, shutdown, || async {
            // Log compaction first: what it leaves is what object compaction then merges.
            if let Err(e) = self.clean().await {
                warn!(error = %error_chain(&e), "log compaction pass failed; retrying at the next one")
            }
            match self.compact().await {
                Ok(done) if done.objects > 0 => {
                    info!(objects = done.objects, entries_in = done.entries_in,
                          entries_out = done.entries_out, bytes = done.bytes, "compaction pass done")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %error_chain(&e), "compaction pass failed; retrying at the next one")
                }
            }
        })
        .await;
    }
}

/// Checks a run's slices and lays them out in one object, in chunks of about `entry_bytes`
/// that end where old entries ended (each chunk becomes one index entry).
fn build_object(
    tp: &TopicPartition,
    entries: Vec<StoredEntry>,
    slices: &[Bytes],
    entry_bytes: u64,
) -> Result<(Vec<StoredEntry>, ObjectBuilder), AgentError> {
    for (s, slice) in entries.iter().zip(slices) {
        check_slice(&s.entry, slice)?;
    }
    let total: u64 = entries.iter().map(|s| s.entry.byte_len).sum();
    let mut builder = ObjectBuilder::with_capacity(usize::try_from(total).unwrap_or(0));
    let sizes: Vec<(u64, LeaseEpoch)> = entries
        .iter()
        .map(|s| (s.entry.byte_len, s.leader_epoch))
        .collect();
    for chunk in chunk_bounds(&sizes, entry_bytes) {
        let covered = &entries[chunk.clone()];
        let max_timestamp = covered
            .iter()
            .map(|s| s.entry.max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        builder.add_chunk(
            tp.clone(),
            covered[0].entry.base_offset,
            covered[covered.len() - 1].entry.end_offset,
            max_timestamp,
            slices[chunk].iter().map(|b| &b[..]),
        );
    }
    Ok((entries, builder))
}

/// How a compaction lays consecutive old entries (their byte sizes and lease epochs) out as
/// new ones: each new entry covers whole old ones, about `entry_bytes` of them, never two
/// epochs. A short last piece joins the one before it (same epoch), so every entry of a
/// compacted object of more than one entry holds at least `entry_bytes` and the object counts
/// as one of medium entries, not small ones, for the next compaction.
pub(crate) fn chunk_bounds(
    sizes: &[(u64, LeaseEpoch)],
    entry_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut from = 0;
    let mut bytes = 0;
    for (i, (size, epoch)) in sizes.iter().enumerate() {
        bytes += size;
        let last = i + 1 == sizes.len();
        let epoch_ends = !last && sizes[i + 1].1 != *epoch;
        if !(last || epoch_ends || bytes >= entry_bytes) {
            continue;
        }
        let short_tail = last && bytes < entry_bytes;
        match chunks.last_mut() {
            Some(prev) if short_tail && sizes[prev.start].1 == *epoch => prev.end = i + 1,
            _ => chunks.push(from..i + 1),
        }
        from = i + 1;
        bytes = 0;
    }
    chunks
}

/// Checks that a slice read back holds whole batches of its entry's offsets (all of them,
/// or those log compaction kept), before its bytes are copied anywhere.
pub(crate) fn check_slice(entry: &IndexEntry, slice: &[u8]) -> Result<(), AgentError> {
    if slice.is_empty() {
        // Log compaction removed every record of the range; the entry keeps its offsets.
        return Ok(());
    }
    let spans = batch::walk(slice);
    let whole = spans.last().map(|s| s.range.end) == Some(slice.len());
    let first = spans.first().map(|s| s.header.base_offset);
    let last = spans.last().map(|s| s.header.last_offset());
    let in_range = first.is_some_and(|f| f >= entry.base_offset.0)
        && last.is_some_and(|l| l < entry.end_offset.0);
    if whole && in_range {
        return Ok(());
    }
    Err(AgentError::CorruptData {
        reason: format!(
            "the slice [{}, {}) of {} in {} does not hold whole batches of those offsets",
            entry.base_offset, entry.end_offset, entry.tp, entry.object_key
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_whole_entries_within_one_epoch_and_fold_a_short_tail() {
        let e = |n: i64| LeaseEpoch(n);
        let sizes = [(40, e(1)), (70, e(1)), (100, e(1)), (10, e(1))];
        assert_eq!(chunk_bounds(&sizes, 100), vec![0..2, 2..4]);
        let sizes = [(40, e(1)), (70, e(1)), (30, e(2)), (100, e(2)), (10, e(3))];
        assert_eq!(chunk_bounds(&sizes, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunk_bounds(&[(5, e(1))], 100), vec![0..1]);
        assert_eq!(chunk_bounds(&[(0, e(1)), (0, e(1))], 100), vec![0..2]);
        assert!(chunk_bounds(&[], 100).is_empty());
    }
}
