//! Garbage collection of objects, one agent of the cluster at a time (the `gc` maintenance
//! job, claimed through the metadata store; two running at once would only repeat each
//! other's deletes).
//!
//! 1. **Unnamed objects.** Retention (moving the log start), compaction swaps and topic
//!    deletion remove index entries; an object that no entry names any more can never be
//!    named again. The store marks it when it first sees it unnamed, and hands it out once
//!    `gc_grace` has passed since, long enough for a read that looked up the old entries to
//!    finish its GETs. It is deleted from the object store, then forgotten.
//! 2. **Orphans.** Objects in the object store that no commit named: a flush whose commit
//!    failed or was refused, an agent killed between its PUT and its commit, a compaction
//!    that died before its swap (or while writing its object's `.part` to a local
//!    directory). Those older than `orphan_grace` get a tombstone row in the store first
//!    ([`MetadataStore::claim_orphans`]); a commit still in flight that names one
//!    then conflicts with the tombstone and is refused (its producers hear a retriable
//!    error and retry), so an object is never deleted while a commit may still name it.
//!    Tombstones stay: one row per orphan, which crashes and failed commits make rare.
//!
//! [`MetadataStore::claim_orphans`]: streamhouse_metadata::MetadataStore::claim_orphans

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{error_chain, every, now_ms, Agent, DATA_PREFIX};
use crate::error::AgentError;

/// The maintenance job's name in the metadata store.
const GC_JOB: &str = "gc";
/// Objects handed out per call: the store first marks what no index entry names with one scan
/// over the live objects (under SQLite's writer lock, which the flushes' commits wait for), so
/// a pass makes one such call rather than one per batch.
const HAND_OUT: usize = 20_000;
/// Objects deleted and then forgotten in one transaction, and orphans claimed per call.
const BATCH: usize = 200;
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 8;
/// The pause after each batch of unnamed objects: at most 1,000 deletes a second. A flush's
/// fsync waits for the file system's journal, which a burst of thousands of deletes fills
/// (on a local disk), so they are spread out: garbage is never urgent.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// What one garbage collection pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Whether this agent held the job (otherwise it did nothing).
    pub ran: bool,
    /// Objects deleted because no index entry named them any more.
    pub unreferenced_deleted: usize,
    /// Orphans deleted.
    pub orphans_deleted: usize,
}

impl Agent {
    /// One garbage collection pass, if this agent holds (or can take) the job.
    pub async fn collect_garbage(&self) -> Result<GcStats, AgentError> {
        let ttl = (self.config.gc_interval * 3).max(Duration::from_secs(30));
        if !self
            .metadata
            .claim_job(GC_JOB, &self.config.agent_id, ttl)
            .await?
        {
            return Ok(GcStats::default());
        }
        let mut stats = GcStats {
            ran: true,
            ..GcStats::default()
        };
        'unreferenced: loop {
            let due = self
                .metadata
                .unreferenced_objects(self.config.gc_grace, HAND_OUT)
                .await?;
            for batch in due.chunks(BATCH) {
                let deleted = self.delete_objects(batch).await;
                crate::failpoints::crash_point("gc-after-delete");
                self.metadata.forget_objects(&deleted).await?;
                crate::stats::gc_deleted("unreferenced", deleted.len());
                stats.unreferenced_deleted += deleted.len();
                if deleted.len() < batch.len() {
                    break 'unreferenced;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            if due.len() < HAND_OUT {
                break;
            }
        }

        // Listing the whole store is the expensive part of looking for orphans, and none can
        // ripen faster than the orphan grace: at most twice per grace period.
        {
            let mut listed = self
                .orphans_listed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if listed.is_some_and(|at| at.elapsed() < self.config.orphan_grace / 2) {
                return Ok(stats);
            }
            *listed = Some(std::time::Instant::now());
        }

        let cutoff = now_ms().saturating_sub(
            i64::try_from(self.config.orphan_grace.as_millis()).unwrap_or(i64::MAX),
        );
        let old: Vec<String> = self
            .storage()
            .list(DATA_PREFIX)
            .await?
            .into_iter()
            .filter(|(_, modified)| *modified < cutoff)
            .map(|(key, _)| key)
            .collect();
        for keys in old.chunks(BATCH) {
            let orphans = self
                .metadata
                .claim_orphans(keys, &self.config.agent_id)
                .await?;
            crate::failpoints::crash_point("gc-after-orphan-claim");
            let deleted = self.delete_objects(&orphans).await;
            if !deleted.is_empty() {
                info!(orphans = deleted.len(), "deleted objects no commit named");
            }
            crate::stats::gc_deleted("orphan", deleted.len());
            stats.orphans_deleted += deleted.len();
        }
        Ok(stats)
    }

    /// Deletes objects from the object store; returns the keys that are gone (failures are
    /// logged and left for the next pass).
    pub(crate) async fn delete_objects(&self, keys: &[String]) -> Vec<String> {
        let deletes: Vec<_> = keys
            .iter()
            .map(|key| {
                let storage = self.storage().clone();
                let key = key.clone();
                async move {
                    match storage.delete(&key).await {
                        Ok(()) => Some(key),
                        Err(e) => {
                            warn!(object = %key, error = %error_chain(&e), "cannot delete an object; retrying at the next pass");
                            None
                        }
                    }
                }
            })
            .collect();
        let done: Vec<Option<String>> = futures_util::stream::iter(deletes)
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        done.into_iter().flatten().collect()
    }

    /// Runs a garbage collection pass every `gc_interval` until `shutdown` (never if the
    /// interval is zero).
    pub(crate) async fn gc_loop(&self, shutdown: &CancellationToken) {
        every(self.config.gc_interval, shutdown, || async {
            match self.collect_garbage().await {
                Ok(done) => debug!(?done, "garbage collection pass done"),
                Err(e) => {
                    warn!(error = %error_chain(&e), "garbage collection pass failed; retrying at the next one")
                }
            }
        })
        .await;
    }
}
