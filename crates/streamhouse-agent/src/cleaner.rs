//! Log compaction (`cleanup.policy=compact`), Kafka's log cleaner: of every key, only the
//! latest record stays, at its original offset; tombstones (null values) go once they have
//! been kept `delete.retention.ms` after the first compaction that saw them.
//!
//! A pass over one partition (run by its leader, at the object compaction interval):
//!
//! 1. The *cleanable* part is the log from its start up to, not including, the newest index
//!    entry (Kafka never cleans its active segment; here the newest flush stays as written, so
//!    the log always ends with records and a consumer reaches the high watermark) and the
//!    entries committed less than `min.compaction.lag.ms` ago. Below the checkpoint
//!    ([`MetadataStore::clean_offset`]) it was compacted before; above it is *dirty*.
//! 2. The pass runs when the dirty part is at least `min.cleanable.dirty.ratio` of the
//!    cleanable bytes, when its oldest entry is `max.compaction.lag.ms` old, or when a kept
//!    tombstone's delete horizon has passed (after a lease move: at the first round).
//! 3. Read the dirty part and map each key to its latest offset there.
//! 4. Read the whole cleanable part and keep a record when no later record of its key is in
//!    the map, it has a key (Kafka drops keyless records from compacted logs), and it is not
//!    a tombstone whose batch's delete horizon has passed. A batch that keeps a tombstone
//!    and has no horizon gets one: now + `delete.retention.ms` (KIP-534, in the batch
//!    header). Batches are rebuilt with their base offset and last offset delta unchanged;
//!    batches that keep nothing go.
//! 5. Runs of changed entries are written to new per-partition objects and swapped in
//!    ([`Agent::write_and_swap`], one transaction that is refused if the index changed). The
//!    new entries hold the same offsets as the old ones, with gaps where records went, or no
//!    bytes at all when nothing of a range is left. Unchanged entries stay where they are.
//! 6. Once every swap landed, the checkpoint moves to the end of the cleaned part.
//!
//! Offsets never change and never repeat: a record is either where it was or gone. The
//! decision to drop a record only depends on records at higher offsets, which are never
//! dropped before it, so two cleaners racing during a lease handoff can only both be
//! right (and the second swap is refused anyway).
//!
//! [`MetadataStore::clean_offset`]: streamhouse_metadata::MetadataStore::clean_offset

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use streamhouse_metadata::{
    IndexEntry, LeaseEpoch, StoredEntry, Swap, TopicConfig, TopicPartition,
};
use streamhouse_storage::batch;
use streamhouse_storage::records::Records;
use streamhouse_storage::ObjectBuilder;
use tracing::{debug, info};

use crate::agent::{now_ms, Agent};
use crate::compaction::{check_slice, chunk_bounds, MAX_RUN_ENTRIES};
use crate::error::AgentError;
use crate::stats;

/// Index entries looked up at a time.
const ENTRIES_PER_LOOKUP: usize = 1000;
/// Most distinct keys one pass maps (about 100 bytes of memory each with short keys, like
/// Kafka's `log.cleaner.dedupe.buffer.size`); a dirty part with more is cleaned in several
/// passes, each up to where its map filled.
const MAX_MAP_KEYS: usize = 2_000_000;

/// What log compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Partitions compacted by key (a pass ran through).
    pub partitions: usize,
    /// Objects written and swapped in.
    pub objects: usize,
    /// Index entries replaced…
    pub entries_in: usize,
    /// …by this many.
    pub entries_out: usize,
    /// Record batch bytes read in the cleanable parts, and what was written instead of the
    /// changed ones.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Records dropped because a later record has the same key.
    pub superseded: u64,
    /// Tombstones dropped after their delete horizon.
    pub tombstones: u64,
    /// Records without a key, dropped (written before the topic compacted).
    pub keyless: u64,
    /// Swaps that found the index changed (the pass stopped there; the next one retries).
    pub conflicts: usize,
}

impl CleanStats {
    fn add(&mut self, o: CleanStats) {
        self.partitions += o.partitions;
        self.objects += o.objects;
        self.entries_in += o.entries_in;
        self.entries_out += o.entries_out;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.superseded += o.superseded;
        self.tombstones += o.tombstones;
        self.keyless += o.keyless;
        self.conflicts += o.conflicts;
    }
}

/// Each key of the dirty part and the offset of its latest record there.
type LatestOffsets = HashMap<Box<[u8]>, i64>;

/// One index entry after filtering.
#[derive(Debug)]
struct Filtered {
    stored: StoredEntry,
    /// The batches kept, in order: the original bytes of unchanged ones.
    batches: Vec<Bytes>,
    /// Whether any batch was dropped or rebuilt.
    changed: bool,
    /// The newest timestamp kept (-1: nothing kept).
    max_timestamp: i64,
    /// The earliest delete horizon of the tombstones kept.
    next_horizon: Option<i64>,
    removed: CleanStats,
}

impl Filtered {
    fn len(&self) -> u64 {
        self.batches.iter().map(|b| b.len() as u64).sum()
    }
}

impl Agent {
    /// One log compaction pass over the partitions this agent leads whose topic compacts,
    /// each only if it is due (see the module docs).
    pub async fn clean(&self) -> Result<CleanStats, AgentError> {
        let due: Vec<(TopicPartition, Arc<TopicConfig>, i64)> = self
            .lock()
            .led
            .iter()
            .filter(|(_, led)| !led.draining && led.config.compacts())
            .map(|(tp, led)| (tp.clone(), led.config.clone(), led.clean_due_ms))
            .collect();
        let mut total = CleanStats::default();
        for (tp, config, due_ms) in due {
            total.add(
                self.clean_partition(&tp, &config, now_ms() >= due_ms)
                    .await?,
            );
        }
        Ok(total)
    }

    /// Compacts one partition by key when it is due, or whenever it has something to clean
    /// when `force` is set (a tombstone horizon passed, or tests).
    pub async fn clean_partition(
        &self,
        tp: &TopicPartition,
        config: &TopicConfig,
        force: bool,
    ) -> Result<CleanStats, AgentError> {
        let started = Instant::now();
        let now = now_ms();
        let (_, log_start) = self.partition_offsets(tp).await?;
        let checkpoint = self.metadata.clean_offset(tp).await?.max(log_start);
        let mut entries = Vec::new();
        let mut position = log_start;
        loop {
            let found = self
                .metadata
                .find_stored_entries(tp, position, ENTRIES_PER_LOOKUP)
                .await?;
            let Some(last) = found.last() else { break };
            position = last.entry.end_offset;
            entries.extend(found);
        }
        // Never the newest entry, nor entries younger than min.compaction.lag.ms.
        let mut cleanable = entries.len().saturating_sub(1);
        if let Some(young) = entries[..cleanable]
            .iter()
            .position(|e| now.saturating_sub(e.committed_at_ms) < config.min_compaction_lag_ms)
        {
            cleanable = young;
        }
        entries.truncate(cleanable);
        let first_dirty = entries
            .iter()
            .position(|e| e.entry.end_offset > checkpoint)
            .unwrap_or(entries.len());
        let total_bytes: u64 = entries.iter().map(|e| e.entry.byte_len).sum();
        let dirty_bytes: u64 = entries[first_dirty..]
            .iter()
            .map(|e| e.entry.byte_len)
            .sum();
        let dirty_share = dirty_bytes as f64 / total_bytes.max(1) as f64;
        let overdue = entries[first_dirty..]
            .iter()
            .any(|e| now.saturating_sub(e.committed_at_ms) >= config.max_compaction_lag_ms);
        let has_dirty = first_dirty < entries.len();
        let due = (has_dirty && (dirty_share >= config.min_cleanable_dirty_ratio || overdue))
            || (force && !entries.is_empty());
        if !due {
            return Ok(CleanStats::default());
        }

        // The latest offset of every key in the dirty part, up to where the map fills.
        let mut latest = LatestOffsets::new();
        let mut end = entries.len();
        let mut reads = self.read_entries(&entries[first_dirty..]);
        let mut at = first_dirty;
        while let Some(read) = reads.next().await {
            let (stored, slice) = read?;
            latest = tokio::task::spawn_blocking(move || {
                add_latest(&mut latest, &stored.entry, &slice).map(|()| latest)
            })
            .await
            .map_err(|e| task_failed(&e))??;
            at += 1;
            if latest.len() >= MAX_MAP_KEYS {
                end = at;
                break;
            }
        }
        drop(reads);
        let entries = &entries[..end];
        let clean_end = entries.last().map(|e| e.entry.end_offset);

        // Filter the whole cleanable part; swap runs of changed entries.
        let latest = Arc::new(latest);
        let delete_retention_ms = config.delete_retention_ms;
        let target = u64::try_from(self.config.compaction_target_bytes).unwrap_or(u64::MAX);
        let mut stats = CleanStats::default();
        let mut next_horizon: Option<i64> = None;
        let mut run: Vec<Filtered> = Vec::new();
        let mut run_bytes = 0u64;
        let mut reads = self.read_entries(entries);
        while let Some(read) = reads.next().await {
            let (stored, slice) = read?;
            stats.bytes_read += slice.len() as u64;
            let latest = latest.clone();
            let filtered = tokio::task::spawn_blocking(move || {
                filter_entry(stored, &slice, &latest, now, delete_retention_ms)
            })
            .await
            .map_err(|e| task_failed(&e))??;
            if let Some(h) = filtered.next_horizon {
                next_horizon = Some(next_horizon.map_or(h, |n| n.min(h)));
            }
            stats.add(filtered.removed);
            if !filtered.changed {
                if !self.swap_run(tp, &mut run, &mut stats).await? {
                    return Ok(stats);
                }
                run_bytes = 0;
                continue;
            }
            run_bytes += filtered.len();
            run.push(filtered);
            if run_bytes >= target || run.len() >= MAX_RUN_ENTRIES {
                if !self.swap_run(tp, &mut run, &mut stats).await? {
                    return Ok(stats);
                }
                run_bytes = 0;
            }
        }
        if !self.swap_run(tp, &mut run, &mut stats).await? {
            return Ok(stats);
        }
        crate::failpoints::crash_point("log-compaction-before-checkpoint");
        if let Some(clean_end) = clean_end {
            self.metadata.advance_clean_offset(tp, clean_end).await?;
        }
        if let Some(led) = self.lock().led.get_mut(tp) {
            led.clean_due_ms = next_horizon.unwrap_or(i64::MAX);
        }
        stats.partitions = 1;
        let elapsed = started.elapsed();
        stats::log_compaction_done(&stats, elapsed);
        info!(%tp, ?clean_end, superseded = stats.superseded, tombstones = stats.tombstones,
              keyless = stats.keyless, bytes_read = stats.bytes_read,
              bytes_written = stats.bytes_written, objects = stats.objects, ?elapsed,
              "log compaction pass done");
        Ok(stats)
    }

    /// Writes a run of changed entries into one object and swaps it in; empties the run.
    /// False when the swap found the index changed (the pass stops; the next one retries).
    async fn swap_run(
        &self,
        tp: &TopicPartition,
        run: &mut Vec<Filtered>,
        stats: &mut CleanStats,
    ) -> Result<bool, AgentError> {
        if run.is_empty() {
            return Ok(true);
        }
        let run = std::mem::take(run);
        let entry_bytes = u64::try_from(self.config.compaction_entry_bytes).unwrap_or(u64::MAX);
        let total: u64 = run.iter().map(Filtered::len).sum();
        let mut builder = ObjectBuilder::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut epochs: Vec<LeaseEpoch> = Vec::new();
        // New entries end where old ones ended, never span two lease epochs, and hold about
        // `entry_bytes` each.
        let sizes: Vec<(u64, LeaseEpoch)> = run
            .iter()
            .map(|f| (f.len(), f.stored.leader_epoch))
            .collect();
        for chunk in chunk_bounds(&sizes, entry_bytes) {
            let covered = &run[chunk];
            let max_timestamp = covered.iter().map(|f| f.max_timestamp).max().unwrap_or(-1);
            builder.add_chunk(
                tp.clone(),
                covered[0].stored.entry.base_offset,
                covered[covered.len() - 1].stored.entry.end_offset,
                max_timestamp,
                covered
                    .iter()
                    .flat_map(|f| f.batches.iter().map(|b| &b[..])),
            );
            epochs.push(covered[0].stored.leader_epoch);
        }
        let old: Vec<IndexEntry> = run.into_iter().map(|f| f.stored.entry).collect();
        let (swap, entries_out) = self.write_and_swap(tp, builder, &epochs, &old).await?;
        match swap {
            Swap::Replaced => {
                debug!(%tp, entries_in = old.len(), entries_out, bytes = total,
                       "log compaction swapped a run in");
                stats.objects += 1;
                stats.entries_in += old.len();
                stats.entries_out += entries_out;
                stats.bytes_written += total;
                Ok(true)
            }
            Swap::Changed => {
                stats.conflicts += 1;
                Ok(false)
            }
        }
    }
}

fn task_failed(e: &tokio::task::JoinError) -> AgentError {
    AgentError::CorruptData {
        reason: format!("the log compaction task failed: {e}"),
    }
}

fn corrupt(entry: &IndexEntry, e: &dyn std::error::Error) -> AgentError {
    AgentError::CorruptData {
        reason: format!(
            "a batch of [{}, {}) of {} in {} does not parse: {e}",
            entry.base_offset, entry.end_offset, entry.tp, entry.object_key
        ),
    }
}

/// Records the offset of every keyed record of `slice` in `latest` (later ones win).
fn add_latest(
    latest: &mut LatestOffsets,
    entry: &IndexEntry,
    slice: &[u8],
) -> Result<(), AgentError> {
    check_slice(entry, slice)?;
    for span in batch::walk(slice) {
        let records = Records::parse(&slice[span.range]).map_err(|e| corrupt(entry, &e))?;
        for r in &records.records {
            if let Some(key) = records.key(r) {
                let offset = records.offset(r);
                match latest.get_mut(key) {
                    Some(at) => *at = (*at).max(offset),
                    None => {
                        latest.insert(key.into(), offset);
                    }
                }
            }
        }
    }
    Ok(())
}

/// What log compaction keeps of one entry's slice (see the module docs for the rules).
fn filter_entry(
    stored: StoredEntry,
    slice: &Bytes,
    latest: &LatestOffsets,
    now: i64,
    delete_retention_ms: i64,
) -> Result<Filtered, AgentError> {
    check_slice(&stored.entry, slice)?;
    let mut out = Filtered {
        stored,
        batches: Vec::new(),
        changed: false,
        max_timestamp: -1,
        next_horizon: None,
        removed: CleanStats::default(),
    };
    for span in batch::walk(slice) {
        let bytes = slice.slice(span.range);
        let records = Records::parse(&bytes).map_err(|e| corrupt(&out.stored.entry, &e))?;
        if records.is_transactional_or_control() {
            // Never written here (transactions are not served); kept as they are.
            out.max_timestamp = out.max_timestamp.max(records.header.max_timestamp);
            out.batches.push(bytes);
            continue;
        }
        let horizon = records.delete_horizon();
        let expired = horizon.is_some_and(|h| h <= now);
        let mut keeps_tombstone = false;
        let keep: Vec<bool> = records
            .records
            .iter()
            .map(|r| {
                let Some(key) = records.key(r) else {
                    out.removed.keyless += 1;
                    return false;
                };
                if latest.get(key).is_some_and(|at| *at > records.offset(r)) {
                    out.removed.superseded += 1;
                    return false;
                }
                if r.tombstone {
                    if expired {
                        out.removed.tombstones += 1;
                        return false;
                    }
                    keeps_tombstone = true;
                }
                true
            })
            .collect();
        let new_horizon =
            (keeps_tombstone && horizon.is_none()).then(|| now.saturating_add(delete_retention_ms));
        if keeps_tombstone {
            let h = horizon.or(new_horizon).unwrap_or(i64::MAX);
            out.next_horizon = Some(out.next_horizon.map_or(h, |n| n.min(h)));
        }
        if keep.iter().all(|k| *k) && new_horizon.is_none() {
            out.max_timestamp = out.max_timestamp.max(records.header.max_timestamp);
            out.batches.push(bytes);
            continue;
        }
        out.changed = true;
        if let Some(rebuilt) = records
            .rebuild(&keep, new_horizon)
            .map_err(|e| corrupt(&out.stored.entry, &e))?
        {
            let rebuilt = Bytes::from(rebuilt);
            if let Some(span) = batch::walk(&rebuilt).first() {
                out.max_timestamp = out.max_timestamp.max(span.header.max_timestamp);
            }
            out.batches.push(rebuilt);
        }
    }
    Ok(out)
}
