//! Retention: `retention.ms` and `retention.bytes`, enforced by moving the log start offset of
//! the partitions this agent leads (so each partition is handled by exactly one agent, its
//! leader), through the same path as DeleteRecords. Whole index entries go at a time, as
//! Kafka deletes whole segments: an entry goes by time when its newest record is older than
//! `retention.ms`, by size when the entries after it already hold `retention.bytes`. Only
//! topics whose `cleanup.policy` includes `delete` are trimmed, as in Kafka.
//!
//! Moving the log start makes the records unreadable at once (Fetch below it is
//! OFFSET_OUT_OF_RANGE, ListOffsets earliest answers the new start); the index entries and
//! objects that no longer hold readable records are left for garbage collection.

use streamhouse_metadata::{Offset, TopicPartition};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{error_chain, every, now_ms, Agent};
use crate::error::AgentError;

impl Agent {
    /// One retention pass over the partitions this agent leads; returns how many moved
    /// their log start.
    pub async fn enforce_retention(&self) -> Result<usize, AgentError> {
        let led: Vec<(TopicPartition, i64, i64)> = self
            .lock()
            .led
            .iter()
            .filter(|(_, led)| !led.draining)
            // As in Kafka, retention deletes only under cleanup.policy delete (or
            // compact,delete); a compact-only topic keeps its records.
            .filter(|(_, led)| led.config.deletes())
            .filter(|(_, led)| led.config.retention_ms >= 0 || led.config.retention_bytes >= 0)
            .map(|(tp, led)| {
                (
                    tp.clone(),
                    led.config.retention_ms,
                    led.config.retention_bytes,
                )
            })
            .collect();
        let mut moved = 0;
        for (tp, retention_ms, retention_bytes) in led {
            let (target, log_start_offset) = self
                .retention_start(&tp, retention_ms, retention_bytes)
                .await?;
            if target > log_start_offset {
                let start = self.delete_records(&tp, target.0).await?;
                info!(%tp, log_start_offset = %start, "retention moved the log start");
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Where `tp` should start under its retention settings (-1: unlimited), and where it
    /// starts now.
    async fn retention_start(
        &self,
        tp: &TopicPartition,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<(Offset, Offset), AgentError> {
        // Read first: whatever is committed after this has newer records.
        let (high_watermark, log_start_offset) = self.partition_offsets(tp).await?;
        let mut target = log_start_offset;
        if retention_ms >= 0 {
            let cutoff = now_ms().saturating_sub(retention_ms);
            target = match self.metadata.find_entry_by_timestamp(tp, cutoff).await? {
                // The first entry with a record young enough stays, and all after it.
                Some(entry) => target.max(entry.base_offset),
                // Every readable record is older than the cutoff.
                None => target.max(high_watermark),
            };
        }
        if let Ok(max_bytes) = u64::try_from(retention_bytes) {
            if let Some(start) = self
                .metadata
                .start_for_retained_bytes(tp, max_bytes)
                .await?
            {
                target = target.max(start);
            }
        }
        Ok((target.min(high_watermark), log_start_offset))
    }

    /// Runs a retention pass every `retention_check_interval` until `shutdown` (the first
    /// one after one interval, like Kafka's log.retention.check.interval.ms).
    pub(crate) async fn retention_loop(&self, shutdown: &CancellationToken) {
        every(self.config.retention_check_interval, shutdown, || async {
            match self.enforce_retention().await {
                Ok(moved) => debug!(moved, "retention pass done"),
                Err(e) => {
                    warn!(error = %error_chain(&e), "retention pass failed; retrying at the next one")
                }
            }
        })
        .await;
    }
}
