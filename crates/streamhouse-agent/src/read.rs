//! Reads of committed data: fetches, ListOffsets and OffsetForLeaderEpoch.

use bytes::Bytes;
use streamhouse_metadata::{LeaseEpoch, Offset, TopicPartition};
use streamhouse_storage::records::Records;
use streamhouse_storage::{batch, StorageError};

use crate::agent::{Agent, OffsetSpec, ReadResult};
use crate::error::AgentError;

/// Index entries looked up per read; more are read only if these do not fill `max_bytes`.
const ENTRIES_PER_LOOKUP: usize = 16;
/// Fresh lookups a read makes when an entry's object has gone (replaced and deleted).
const MAX_LOOKUPS_AFTER_MISSING: usize = 3;

impl Agent {
    /// Reads committed record batches of `tp` starting at the batch that holds `offset`,
    /// whole batches only, up to about `max_bytes`. When `at_least_one` is set the first batch
    /// is returned even if it alone exceeds `max_bytes`, so a consumer always progresses.
    /// Nothing is counted here: a long-polling Fetch reads again and again and answers only
    /// with its last read, so the caller counts what it hands out with
    /// [`Agent::count_fetched`].
    pub async fn read(
        &self,
        tp: &TopicPartition,
        offset: Offset,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<ReadResult, AgentError> {
        let (high_watermark, log_start_offset) = self.partition_offsets(tp).await?;
        let mut result = ReadResult {
            records: Vec::new(),
            high_watermark,
            log_start_offset,
            record_count: 0,
        };
        if offset < log_start_offset || offset > high_watermark {
            return Err(AgentError::OffsetOutOfRange {
                tp: tp.clone(),
                offset,
                log_start_offset,
                high_watermark,
            });
        }
        let mut position = offset;
        let mut size = 0usize;
        let mut lookups_left = MAX_LOOKUPS_AFTER_MISSING;
        'entries: while position < high_watermark {
            let entries = self
                .metadata
                .find_entries(tp, position, ENTRIES_PER_LOOKUP)
                .await?;
            if entries.is_empty() {
                break;
            }
            // The last GET's bytes: (object, where they start in it, bytes). Entries stored
            // one after another in one object (compacted ones) come with one GET.
            let mut fetched: Option<(&str, u64, Bytes)> = None;
            for (i, entry) in entries.iter().enumerate() {
                // Only what the high watermark we report covers (a commit may land meanwhile).
                if entry.base_offset >= high_watermark {
                    break 'entries;
                }
                if entry.base_offset > position {
                    // The entries before this one were deleted meanwhile: retention moved
                    // the log start past `position`.
                    if result.records.is_empty() {
                        let (high_watermark, log_start_offset) =
                            self.fresh_partition_offsets(tp).await?;
                        return Err(AgentError::OffsetOutOfRange {
                            tp: tp.clone(),
                            offset,
                            log_start_offset,
                            high_watermark,
                        });
                    }
                    break 'entries;
                }
                if entry.byte_len == 0 {
                    // Log compaction removed every record of this range.
                    position = entry.end_offset;
                    continue;
                }
                let end_byte = entry.byte_start + entry.byte_len;
                let held = fetched.as_ref().and_then(|(key, at, bytes)| {
                    let inside = *key == entry.object_key
                        && *at <= entry.byte_start
                        && end_byte <= at + bytes.len() as u64;
                    if !inside {
                        return None;
                    }
                    let from = usize::try_from(entry.byte_start - at).ok()?;
                    let to = usize::try_from(end_byte - at).ok()?;
                    Some(bytes.slice(from..to))
                });
                let chunk = match held {
                    Some(chunk) => chunk,
                    None => {
                        // This entry and those right after it in the same object, up to
                        // what the read may still return.
                        let budget = u64::try_from(max_bytes.saturating_sub(size)).unwrap_or(0);
                        let mut until = end_byte;
                        for next in &entries[i + 1..] {
                            if next.object_key != entry.object_key
                                || next.byte_start != until
                                || next.base_offset >= high_watermark
                                || until - entry.byte_start >= budget
                            {
                                break;
                            }
                            until = next.byte_start + next.byte_len;
                        }
                        let range = entry.byte_start..until;
                        match self.storage().read_range(&entry.object_key, range).await {
                            Ok(bytes) => {
                                let own = usize::try_from(entry.byte_len).unwrap_or(usize::MAX);
                                let chunk = bytes.slice(..own.min(bytes.len()));
                                fetched = Some((&entry.object_key, entry.byte_start, bytes));
                                chunk
                            }
                            // Compaction replaced the entry and garbage collection deleted
                            // its old object after the lookup: look the entries up again.
                            Err(StorageError::NotFound { .. }) if lookups_left > 0 => {
                                lookups_left -= 1;
                                continue 'entries;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                };
                let Trimmed {
                    start,
                    end,
                    records: in_range,
                    complete,
                } = trim_chunk(
                    &chunk,
                    position,
                    max_bytes.saturating_sub(size),
                    at_least_one && size == 0,
                );
                if start < end {
                    size += end - start;
                    result.record_count += in_range;
                    result.records.push(chunk.slice(start..end));
                }
                if !complete || size >= max_bytes {
                    break 'entries;
                }
                position = entry.end_offset;
            }
        }
        Ok(result)
    }

    /// Counts a read handed to a client in the fetch totals of [`Agent::throughput`] and the
    /// `streamhouse_fetch_*` metrics.
    pub fn count_fetched(&self, tp: &TopicPartition, read: &ReadResult) {
        if !read.is_empty() {
            let bytes = u64::try_from(read.len()).unwrap_or(u64::MAX);
            self.throughput.fetched(&tp.topic, read.record_count, bytes);
        }
    }

    /// ListOffsets: the earliest offset, the latest (the high watermark), or the earliest
    /// offset whose timestamp is at or after a time, with that record's timestamp.
    pub async fn list_offset(
        &self,
        tp: &TopicPartition,
        spec: OffsetSpec,
    ) -> Result<(Offset, i64), AgentError> {
        let (high_watermark, log_start_offset) = self.partition_offsets(tp).await?;
        let timestamp = match spec {
            OffsetSpec::Earliest => return Ok((log_start_offset, -1)),
            OffsetSpec::Latest => return Ok((high_watermark, -1)),
            OffsetSpec::Timestamp(t) => t,
        };
        let Some(entry) = self.metadata.find_entry_by_timestamp(tp, timestamp).await? else {
            return Ok((Offset(-1), -1));
        };
        let range = entry.byte_start..entry.byte_start + entry.byte_len;
        let chunk = self.storage().read_range(&entry.object_key, range).await?;
        for span in batch::walk(&chunk) {
            let header = span.header;
            if header.max_timestamp < timestamp || header.last_offset() < log_start_offset.0 {
                continue;
            }
            // The exact record (compressed batches are decompressed for it); a batch that
            // does not parse answers its first offset, with its max timestamp.
            let exact = Records::parse(&chunk[span.range.clone()])
                .ok()
                .and_then(|batch| {
                    batch
                        .records
                        .iter()
                        .map(|r| (batch.offset(r), batch.timestamp(r)))
                        .find(|(offset, ts)| *ts >= timestamp && *offset >= log_start_offset.0)
                        .map(|(offset, ts)| (Offset(offset), ts))
                });
            return Ok(exact.unwrap_or((
                Offset(header.base_offset.max(log_start_offset.0)),
                header.max_timestamp,
            )));
        }
        Ok((Offset(-1), -1))
    }
}

impl Agent {
    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` that wrote to `tp`, and
    /// where it ended. `current_leader_epoch` (-1: unchecked) must be this agent's epoch.
    /// `None` answers "undefined" (no data carries a known epoch).
    pub async fn offset_for_leader_epoch(
        &self,
        tp: &TopicPartition,
        current_leader_epoch: i32,
        epoch: i32,
    ) -> Result<Option<(i32, Offset)>, AgentError> {
        let mine = self.leader_epoch(tp);
        if current_leader_epoch >= 0 {
            match mine {
                None => return Err(AgentError::NotLeader { tp: tp.clone() }),
                Some(m) if i64::from(current_leader_epoch) < m => {
                    return Err(AgentError::FencedLeaderEpoch { tp: tp.clone() })
                }
                Some(m) if i64::from(current_leader_epoch) > m => {
                    return Err(AgentError::UnknownLeaderEpoch { tp: tp.clone() })
                }
                Some(_) => {}
            }
        }
        // The current epoch ends at the high watermark, whether or not it wrote yet.
        if let Some(m) = mine.filter(|m| *m <= i64::from(epoch)) {
            let (high_watermark, _) = self.partition_offsets(tp).await?;
            return Ok(Some((i32::try_from(m).unwrap_or(i32::MAX), high_watermark)));
        }
        let found = self
            .metadata
            .epoch_end_offset(tp, LeaseEpoch(i64::from(epoch)))
            .await
            .map_err(|e| match e {
                streamhouse_metadata::MetadataError::NotFound { .. } => {
                    AgentError::UnknownTopicOrPartition { tp: tp.clone() }
                }
                e => AgentError::Metadata(e),
            })?;
        Ok(found.map(|(e, offset)| (i32::try_from(e.0).unwrap_or(i32::MAX), offset)))
    }
}

/// The part of a chunk a read returns.
#[derive(Debug)]
struct Trimmed {
    start: usize,
    end: usize,
    /// The records of the whole batches in `start..end`, from their headers.
    records: u64,
    /// Whether every batch at or after the offset was taken (the budget did not stop it).
    complete: bool,
}

/// The byte range of `chunk` to return: from the first batch that ends at or after `offset`
/// (the one holding it, or after a gap log compaction left the next one), whole batches up
/// to `budget` bytes (at least one batch if `at_least_one`).
fn trim_chunk(chunk: &Bytes, offset: Offset, budget: usize, at_least_one: bool) -> Trimmed {
    let mut start = None;
    let mut end = 0;
    let mut records = 0u64;
    let mut complete = true;
    for span in batch::walk(chunk) {
        if span.header.last_offset() < offset.0 {
            continue;
        }
        let begin = *start.get_or_insert(span.range.start);
        let taken = span.range.end - begin;
        if taken > budget && !(at_least_one && end == 0) {
            complete = false;
            break;
        }
        end = span.range.end;
        records += u64::try_from(span.header.record_count).unwrap_or(0);
    }
    match start {
        Some(start) if end > start => Trimmed {
            start,
            end,
            records,
            complete,
        },
        _ => Trimmed {
            start: 0,
            end: 0,
            records: 0,
            complete,
        },
    }
}
