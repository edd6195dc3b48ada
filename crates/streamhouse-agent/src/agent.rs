//! The agent: append (validate and buffer), flush (one object, one commit), and the topic
//! admin and read entry points the protocol server calls.
//!
//! Offsets are assigned in exactly one place, [`Agent::flush`], from the partition's
//! committed high watermark, and the in-memory high watermark moves only after the metadata
//! commit that makes those offsets durable has succeeded. A failed flush therefore uses up
//! no offset, and a commit can only land where the previous one ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use streamhouse_metadata::{
    validate_topic_name, AgentInfo, AgentRegistration, CommitRejection, IndexEntry, MetadataError,
    MetadataStore, ObjectRecord, Offset, PartitionCommit, ProducerId, ProducerState, TimestampType,
    Topic, TopicConfig, TopicPartition, AGENT_GROUP_CONFIG,
};
use streamhouse_storage::batch::{self, BatchSpan};
use streamhouse_storage::records::Records;
use streamhouse_storage::{ObjectBuilder, ObjectStorage};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::leases::Led;
use crate::producers::{self, BatchIds, Verdict};
use crate::stats::{self, FlushStage, Throughput};

/// What a producer learns once its batch is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The offset of the first record of the first batch appended.
    pub base_offset: Offset,
    /// The append time when the topic uses LogAppendTime.
    pub log_append_time: Option<i64>,
    pub log_start_offset: Offset,
}

/// Which offset ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The earliest offset whose record timestamp is at or after this time (ms).
    Timestamp(i64),
}

/// Committed record batches of one partition, from a read.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole record batches, the first one holding the requested offset.
    pub records: Vec<Bytes>,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    /// Records in `records`, from the batch headers.
    pub record_count: u64,
}

impl ReadResult {
    pub fn len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Appended, AgentError>>;

/// One producer's record set for one partition, waiting for a flush.
struct PendingBatch {
    tp: TopicPartition,
    data: BytesMut,
    spans: Vec<BatchSpan>,
    reply: Reply,
    /// For an idempotent producer's batch: its sequence numbers and its id among the
    /// partition's pending batches.
    idem: Option<(BatchIds, u64)>,
    _permit: OwnedSemaphorePermit,
}

/// A batch with its assigned base offset and, for LogAppendTime topics, its append time.
type Assigned = (PendingBatch, Offset, Option<i64>);

/// One partition's share of a flush: its batches with their offsets, and the retries found
/// among them at flush time (the base offset of the batch they repeat, and the retry).
type Waiting = (TopicPartition, Vec<Assigned>, Vec<(Offset, PendingBatch)>);

#[derive(Default)]
struct Pending {
    batches: Vec<PendingBatch>,
    bytes: usize,
    oldest: Option<Instant>,
}

pub(crate) struct State {
    pub(crate) led: HashMap<TopicPartition, Led>,
    pending: Pending,
    /// The id of the next idempotent batch appended (see [`PendingBatch::idem`]).
    next_batch_id: u64,
    /// Whether the last balance round found no other live agent in this agent's group
    /// (then partitions are also acquired on demand). True until the first round.
    pub(crate) alone_in_group: bool,
    /// The live agents of this agent's group (itself included), from the last balance round.
    pub(crate) group_agents: Vec<AgentInfo>,
    /// Partitions of the group seen free by balance rounds, since when.
    pub(crate) free_since: HashMap<TopicPartition, Instant>,
}

impl State {
    /// Answers a batch and the retries attached to it. A failed idempotent batch also
    /// undoes what was accepted after it from the same producer on that partition: those
    /// batches no longer continue the producer's sequence, so the ones still buffered are
    /// answered with a retriable error now, and the producer's retry of the failed batch is
    /// accepted at once.
    fn settle(&mut self, b: PendingBatch, result: Result<Appended, AgentError>) {
        if let Some((ids, id)) = &b.idem {
            if let Some(led) = self.led.get_mut(&b.tp) {
                match &result {
                    Ok(appended) => {
                        for w in led.producers.committed_pending(ids.producer_id, *id) {
                            let _ = w.send(Ok(*appended));
                        }
                    }
                    Err(e) => {
                        let mut later = Vec::new();
                        for p in led.producers.failed_pending(ids.producer_id, *id) {
                            if p.id != *id {
                                later.push(p.id);
                            }
                            for w in p.into_waiters() {
                                let _ = w.send(Err(producers::copy_error(e)));
                            }
                        }
                        if !later.is_empty() {
                            let chained = || AgentError::FlushFailed {
                                reason: format!(
                                    "an earlier batch of producer {} failed: {}",
                                    ids.producer_id,
                                    error_chain(e)
                                ),
                            };
                            let (failed, kept): (Vec<_>, Vec<_>) =
                                std::mem::take(&mut self.pending.batches)
                                    .into_iter()
                                    .partition(|p| {
                                        p.tp == b.tp
                                            && p.idem
                                                .as_ref()
                                                .is_some_and(|(_, i)| later.contains(i))
                                    });
                            self.pending.batches = kept;
                            for f in failed {
                                self.pending.bytes =
                                    self.pending.bytes.saturating_sub(f.data.len());
                                let _ = f.reply.send(Err(chained()));
                            }
                            if self.pending.batches.is_empty() {
                                self.pending.oldest = None;
                            }
                        }
                    }
                }
            }
        }
        let _ = b.reply.send(result);
    }

    /// Stops leading `tp`; retries waiting for its pending batches hear NOT_LEADER (the
    /// batches themselves are answered by the flush that finds no lease).
    pub(crate) fn drop_led(&mut self, tp: &TopicPartition) {
        if let Some(mut led) = self.led.remove(tp) {
            for w in led.producers.take_waiters() {
                let _ = w.send(Err(AgentError::NotLeader { tp: tp.clone() }));
            }
        }
    }
}

/// A StreamHouse agent.
pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) metadata: Arc<dyn MetadataStore>,
    storage: ObjectStorage,
    pub(crate) info: AgentInfo,
    pub(crate) state: Mutex<State>,
    /// Wakes the flusher when something is appended.
    flush_wanted: Notify,
    /// Bumped after every commit; long-polling fetches wait on it.
    commits: watch::Sender<u64>,
    /// Bytes that may be pending or in flight, for backpressure.
    capacity: Arc<Semaphore>,
    closed: AtomicBool,
    /// Serializes lease acquisition so two acquisitions of one partition cannot race.
    pub(crate) acquiring: tokio::sync::Mutex<()>,
    /// Serializes flushes (the flush loop's and a handoff's).
    flushing: tokio::sync::Mutex<()>,
    /// Wakes the lease keeper for a balance round.
    pub(crate) rebalance_wanted: Notify,
    /// Set once a balance round has completed successfully (see [`Agent::is_ready`]).
    pub(crate) ready: AtomicBool,
    /// Produce and fetch totals since start (see [`Agent::throughput`]).
    pub(crate) throughput: Throughput,
    /// What compaction did since start, and the time its runs took.
    pub(crate) compacted: Mutex<(crate::compaction::CompactionStats, Duration)>,
    /// When garbage collection last listed the object store for orphans.
    pub(crate) orphans_listed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.config.agent_id)
            .field("node_id", &self.info.node_id)
            .finish()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Agent {
    /// Registers the agent, acquires the leases it can, and returns it. Call
    /// [`Agent::run`] to start flushing and renewing.
    pub async fn start(
        config: AgentConfig,
        metadata: Arc<dyn MetadataStore>,
        storage: ObjectStorage,
    ) -> Result<Arc<Agent>, AgentError> {
        let agent = Agent::register(config, metadata, storage).await?;
        agent.balance().await?;
        info!(agent = %agent.config.agent_id, node_id = agent.info.node_id,
              partitions = agent.lock().led.len(), "agent started");
        Ok(agent)
    }

    /// Registers the agent and returns it, before any balance round.
    pub(crate) async fn register(
        config: AgentConfig,
        metadata: Arc<dyn MetadataStore>,
        storage: ObjectStorage,
    ) -> Result<Arc<Agent>, AgentError> {
        let info = metadata
            .register_agent(&AgentRegistration {
                id: config.agent_id.clone(),
                advertised_addr: config.advertised_addr.clone(),
                group: config.group.clone(),
            })
            .await?;
        let permits = config.max_pending_bytes.min(Semaphore::MAX_PERMITS);
        let agent = Arc::new(Agent {
            capacity: Arc::new(Semaphore::new(permits)),
            config,
            metadata,
            storage,
            info: info.clone(),
            state: Mutex::new(State {
                led: HashMap::new(),
                pending: Pending::default(),
                next_batch_id: 0,
                alone_in_group: true,
                group_agents: vec![info],
                free_since: HashMap::new(),
            }),
            flush_wanted: Notify::new(),
            commits: watch::channel(0).0,
            closed: AtomicBool::new(false),
            acquiring: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            rebalance_wanted: Notify::new(),
            ready: AtomicBool::new(false),
            throughput: Throughput::default(),
            compacted: Mutex::default(),
            orphans_listed: Mutex::default(),
        });
        Ok(agent)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// This agent as registered (with its Kafka node id).
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    pub fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.metadata
    }

    pub fn storage(&self) -> &ObjectStorage {
        &self.storage
    }

    /// A receiver that changes after every commit.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Runs the flusher and the lease keeper until `shutdown` is cancelled; then flushes and
    /// answers what is pending and releases every lease.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let keeper = tokio::spawn(self.clone().keep_leases(shutdown.clone()));
        self.flush_loop(&shutdown).await;
        let _ = keeper.await;
        self.release_all().await;
        info!(agent = %self.config.agent_id, "agent stopped");
    }

    /// Validates a producer's record set for `tp` and queues it for the next flush. The
    /// returned receiver resolves once the data is durable (or the flush failed).
    pub async fn append(
        &self,
        tp: &TopicPartition,
        records: Bytes,
    ) -> Result<oneshot::Receiver<Result<Appended, AgentError>>, AgentError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(AgentError::ShuttingDown);
        }
        let config = match self.led_config(tp) {
            Some(config) => config,
            None => {
                self.ensure_led(tp).await?;
                self.led_config(tp)
                    .ok_or_else(|| AgentError::NotLeader { tp: tp.clone() })?
            }
        };
        let max = usize::try_from(config.max_message_bytes).unwrap_or(0);
        let spans = batch::validate(&records).map_err(|source| AgentError::Corrupt {
            tp: tp.clone(),
            source,
        })?;
        if let Some(too_big) = spans.iter().find(|s| s.range.len() > max) {
            return Err(AgentError::MessageTooLarge {
                tp: tp.clone(),
                size: too_big.range.len(),
                max,
            });
        }
        if config.compacts() {
            // As Kafka: log compaction keeps the latest record per key, so a record without
            // one has no place in a compacted topic.
            for span in &spans {
                let batch = Records::parse(&records[span.range.clone()]).map_err(|source| {
                    AgentError::Corrupt {
                        tp: tp.clone(),
                        source,
                    }
                })?;
                if batch.records.iter().any(|r| batch.key(r).is_none()) {
                    return Err(AgentError::InvalidRecord {
                        tp: tp.clone(),
                        reason: "a compacted topic does not accept records without a key"
                            .to_string(),
                    });
                }
            }
        }
        let idem = producers::identify(tp, &spans)?;
        let size = records.len();
        let wanted = u32::try_from(size.min(self.config.max_pending_bytes)).unwrap_or(u32::MAX);
        let permit = self
            .capacity
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| AgentError::ShuttingDown)?;
        let (reply, receiver) = oneshot::channel();
        let mut state = self.lock();
        // Checked again under the lock: the final flush takes the buffer under this lock
        // after `closed` is set, so nothing can slip in behind it and wait forever.
        if self.closed.load(Ordering::Acquire) {
            return Err(AgentError::ShuttingDown);
        }
        let State {
            led,
            pending,
            next_batch_id,
            ..
        } = &mut *state;
        let Some(led) = led.get_mut(tp).filter(|led| !led.draining) else {
            return Err(AgentError::NotLeader { tp: tp.clone() });
        };
        let idem = match idem {
            None => None,
            Some(ids) => match led.producers.check_append(tp, &ids) {
                Verdict::Append => {
                    let id = *next_batch_id;
                    *next_batch_id += 1;
                    led.producers.push_pending(id, ids);
                    Some((ids, id))
                }
                Verdict::Duplicate(base_offset) => {
                    debug!(%tp, producer = %ids.producer_id, sequence = ids.first_sequence,
                           %base_offset, "retry of a committed batch");
                    let _ = reply.send(Ok(Appended {
                        base_offset,
                        log_append_time: None,
                        log_start_offset: led.log_start_offset,
                    }));
                    return Ok(receiver);
                }
                Verdict::DuplicateOfPending(id) => {
                    debug!(%tp, producer = %ids.producer_id, sequence = ids.first_sequence,
                           "retry of a pending batch; it gets the original's outcome");
                    // Always attaches: the id was just found among the pending batches.
                    if let Some(reply) = led.producers.attach(ids.producer_id, id, reply) {
                        let _ = reply.send(Err(AgentError::NotLeader { tp: tp.clone() }));
                    }
                    return Ok(receiver);
                }
                Verdict::Reject(e) => return Err(e),
            },
        };
        pending.oldest.get_or_insert_with(Instant::now);
        pending.bytes += size;
        pending.batches.push(PendingBatch {
            tp: tp.clone(),
            data: BytesMut::from(records),
            spans,
            reply,
            idem,
            _permit: permit,
        });
        drop(state);
        self.flush_wanted.notify_one();
        Ok(receiver)
    }

    fn led_config(&self, tp: &TopicPartition) -> Option<Arc<TopicConfig>> {
        self.lock().led.get(tp).map(|led| led.config.clone())
    }

    async fn flush_loop(&self, shutdown: &CancellationToken) {
        loop {
            let (bytes, oldest) = {
                let state = self.lock();
                (state.pending.bytes, state.pending.oldest)
            };
            let due = match oldest {
                None => None,
                Some(oldest) if bytes >= self.config.flush_max_bytes => Some(oldest),
                Some(oldest) if oldest.elapsed() >= self.config.flush_interval => Some(oldest),
                Some(oldest) => {
                    let deadline =
                        tokio::time::Instant::from_std(oldest + self.config.flush_interval);
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.flush_wanted.notified() => {}
                        _ = shutdown.cancelled() => {}
                    }
                    if !shutdown.is_cancelled() {
                        continue;
                    }
                    None
                }
            };
            if due.is_some() {
                self.flush().await;
                continue;
            }
            if shutdown.is_cancelled() {
                // Stop taking appends, then answer everything already taken.
                {
                    let _state = self.lock();
                    self.closed.store(true, Ordering::Release);
                }
                self.flush().await;
                return;
            }
            tokio::select! {
                _ = self.flush_wanted.notified() => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Flushes everything pending: assigns offsets, writes ONE object, runs ONE metadata
    /// commit, then answers every batch.
    pub async fn flush(&self) {
        let _flushing = self.flushing.lock().await;
        let stale: Vec<TopicPartition> = {
            let state = self.lock();
            state
                .led
                .iter()
                .filter(|(_, led)| led.stale)
                .map(|(tp, _)| tp.clone())
                .collect()
        };
        for tp in stale {
            self.reload(&tp).await;
        }

        let taken = std::mem::take(&mut self.lock().pending);
        if taken.batches.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut by_partition: BTreeMap<TopicPartition, Vec<PendingBatch>> = BTreeMap::new();
        for b in taken.batches {
            by_partition.entry(b.tp.clone()).or_default().push(b);
        }

        // Assign offsets from each partition's committed high watermark.
        let mut builder = ObjectBuilder::with_capacity(taken.bytes);
        let mut commits = Vec::new();
        let mut waiting: Vec<Waiting> = Vec::new();
        {
            let mut state = self.lock();
            // Batches answered without being written: refused, or retries of committed ones.
            let mut settled: Vec<(PendingBatch, Result<Appended, AgentError>)> = Vec::new();
            let now = now_ms();
            for (tp, batches) in by_partition {
                let Some(led) = state.led.get(&tp) else {
                    for b in batches {
                        settled.push((b, Err(AgentError::NotLeader { tp: tp.clone() })));
                    }
                    continue;
                };
                let base = led.next_offset;
                let mut next = base;
                let mut max_timestamp = i64::MIN;
                let mut answered = Vec::with_capacity(batches.len());
                let mut retries = Vec::new();
                // The producers' state as of each batch of this flush: the authoritative
                // sequence check, against committed state only.
                let mut producers: BTreeMap<ProducerId, ProducerState> = BTreeMap::new();
                let log_append = led.config.timestamp_type == TimestampType::LogAppendTime;
                for mut b in batches {
                    if let Some((ids, _)) = &b.idem {
                        let known = producers
                            .get(&ids.producer_id)
                            .or_else(|| led.producers.committed(ids.producer_id))
                            .cloned();
                        match producers::check_committed(&tp, known.as_ref(), ids) {
                            Verdict::Append => {
                                producers
                                    .insert(ids.producer_id, producers::apply(known, ids, next));
                            }
                            // A retry of a batch earlier in this flush shares its outcome.
                            Verdict::Duplicate(original) if original >= base => {
                                retries.push((original, b));
                                continue;
                            }
                            Verdict::Duplicate(base_offset) => {
                                let appended = Appended {
                                    base_offset,
                                    log_append_time: None,
                                    log_start_offset: led.log_start_offset,
                                };
                                settled.push((b, Ok(appended)));
                                continue;
                            }
                            Verdict::Reject(e) => {
                                settled.push((b, Err(e)));
                                continue;
                            }
                            Verdict::DuplicateOfPending(_) => {
                                // Not produced by the committed-state check; refuse rather
                                // than risk writing a batch twice.
                                let e = AgentError::FlushFailed {
                                    reason: "unexpected pending duplicate".into(),
                                };
                                settled.push((b, Err(e)));
                                continue;
                            }
                        }
                    }
                    let first = next;
                    for span in &b.spans {
                        let bytes = &mut b.data[span.range.clone()];
                        // The leader epoch field is i32 in Kafka; epochs beyond it wrap to -1
                        // ("unknown"), which clients accept.
                        let epoch = i32::try_from(led.epoch.0).unwrap_or(-1);
                        batch::assign_offset(bytes, next.0, epoch);
                        if log_append {
                            batch::stamp_log_append_time(bytes, now);
                            max_timestamp = max_timestamp.max(now);
                        } else {
                            max_timestamp = max_timestamp.max(span.header.max_timestamp);
                        }
                        next = next.plus(i64::from(span.header.record_count));
                    }
                    answered.push((b, first, log_append.then_some(now)));
                }
                if answered.is_empty() {
                    // Everything was refused or answered as a retry: nothing to write.
                    continue;
                }
                let pieces = answered.iter().map(|(b, _, _)| &b.data[..]);
                builder.add_chunk(tp.clone(), base, next, max_timestamp, pieces);
                commits.push(PartitionCommit {
                    holder: self.config.agent_id.clone(),
                    epoch: led.epoch,
                    expected_high_watermark: base,
                    entry: IndexEntry {
                        tp: tp.clone(),
                        base_offset: base,
                        end_offset: next,
                        object_key: String::new(),
                        byte_start: 0,
                        byte_len: 0,
                        max_timestamp,
                    },
                    producers: producers.into_values().collect(),
                });
                waiting.push((tp, answered, retries));
            }
            for (b, result) in settled {
                state.settle(b, result);
            }
        }
        if builder.is_empty() {
            return;
        }

        let key = self.new_object_key();
        let (object, chunks) = builder.finish();
        let size = object.len() as u64;
        for (commit, chunk) in commits.iter_mut().zip(&chunks) {
            commit.entry.object_key = key.clone();
            commit.entry.byte_start = chunk.byte_start;
            commit.entry.byte_len = chunk.byte_len;
        }
        let record_batches = waiting
            .iter()
            .flat_map(|(_, batches, _)| batches)
            .map(|(b, _, _)| b.spans.len())
            .sum();
        stats::flush_object(size, record_batches);

        let putting = Instant::now();
        let put = self.storage.put_new(&key, object).await;
        stats::put_done(putting.elapsed());
        let outcome = match put {
            Err(e) => Err((
                FlushStage::ObjectStore,
                format!("object write failed: {}", error_chain(&e)),
            )),
            Ok(()) => {
                let committing = Instant::now();
                let committed = self
                    .metadata
                    .commit(
                        &ObjectRecord {
                            key: key.clone(),
                            size_bytes: size,
                            writer: self.config.agent_id.clone(),
                        },
                        &commits,
                    )
                    .await;
                stats::commit_done(committing.elapsed());
                if started.elapsed() > Duration::from_millis(30) {
                    debug!(put = ?committing.duration_since(putting), commit = ?committing.elapsed(),
                           total = ?started.elapsed(), "slow flush");
                }
                committed.map_err(|e| {
                    // The commit may or may not have landed: reload the partitions' high
                    // watermarks before their next flush.
                    let mut state = self.lock();
                    for (tp, _, _) in &waiting {
                        if let Some(led) = state.led.get_mut(tp) {
                            led.stale = true;
                        }
                    }
                    (
                        FlushStage::Metadata,
                        format!("metadata commit failed: {}", error_chain(&e)),
                    )
                })
            }
        };

        let results = match outcome {
            Ok(results) => results,
            Err((stage, reason)) => {
                warn!(object = %key, %reason, batches = waiting.iter().map(|w| w.1.len()).sum::<usize>(),
                      "flush failed; its batches are answered with a retriable error");
                // Nothing moved: neither offsets nor any producer's sequence state.
                let mut state = self.lock();
                for (_, batches, retries) in waiting {
                    let failed = batches.into_iter().map(|(b, _, _)| b);
                    for b in failed.chain(retries.into_iter().map(|(_, b)| b)) {
                        let e = AgentError::FlushFailed {
                            reason: reason.clone(),
                        };
                        state.settle(b, Err(e));
                    }
                }
                drop(state);
                stats::flush_done(started.elapsed(), Some(stage));
                return;
            }
        };

        let mut state = self.lock();
        let mut durable = Vec::with_capacity(waiting.len());
        for ((tp, batches, retries), (result, commit)) in
            waiting.into_iter().zip(results.into_iter().zip(&commits))
        {
            match result {
                Ok(()) => {
                    durable.push(commit);
                    let log_start_offset = match state.led.get_mut(&tp) {
                        Some(led) => {
                            led.next_offset = commit.entry.end_offset;
                            led.producers.commit(&commit.producers);
                            led.log_start_offset
                        }
                        None => Offset(0),
                    };
                    let mut outcomes = HashMap::new();
                    for (b, base_offset, log_append_time) in batches {
                        let appended = Appended {
                            base_offset,
                            log_append_time,
                            log_start_offset,
                        };
                        outcomes.insert(base_offset, appended);
                        state.settle(b, Ok(appended));
                    }
                    for (original, b) in retries {
                        let appended = outcomes.get(&original).copied().unwrap_or(Appended {
                            base_offset: original,
                            log_append_time: None,
                            log_start_offset,
                        });
                        state.settle(b, Ok(appended));
                    }
                }
                Err(rejection) => {
                    match &rejection {
                        CommitRejection::OffsetMismatch { .. }
                        | CommitRejection::InvalidRange(_) => {
                            if let Some(led) = state.led.get_mut(&tp) {
                                led.stale = true;
                            }
                        }
                        CommitRejection::Fenced { .. } | CommitRejection::UnknownPartition(_) => {
                            state.drop_led(&tp);
                        }
                    }
                    warn!(%tp, %rejection, "commit refused for partition");
                    let refused = batches.into_iter().map(|(b, _, _)| b);
                    for b in refused.chain(retries.into_iter().map(|(_, b)| b)) {
                        state.settle(b, Err(AgentError::NotLeader { tp: tp.clone() }));
                    }
                }
            }
        }
        drop(state);
        self.commits.send_modify(|n| *n += 1);
        for commit in durable {
            let entry = &commit.entry;
            // The entry's offsets were numbered from the batches' record counts.
            let records = u64::try_from(entry.end_offset.0 - entry.base_offset.0).unwrap_or(0);
            self.throughput
                .produced(&entry.tp.topic, records, entry.byte_len);
        }
        stats::flush_done(started.elapsed(), None);
        debug!(object = %key, bytes = size, elapsed = ?started.elapsed(), "flushed");
    }

    /// A key for a new object (a flush's or a compaction's) that no other writer can pick.
    pub(crate) fn new_object_key(&self) -> String {
        format!(
            "{DATA_PREFIX}/{}/{:013}-{}.sho",
            self.config.agent_id,
            now_ms(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Re-reads a partition's committed high watermark after an ambiguous commit.
    async fn reload(&self, tp: &TopicPartition) {
        let loaded = match self.metadata.get_partition(tp).await {
            Ok(Some(p)) => match self.metadata.load_producer_states(tp).await {
                Ok(producers) => Ok(Some((p, producers))),
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(Some((p, producers))) => {
                if let Some(led) = self.lock().led.get_mut(tp) {
                    led.next_offset = p.high_watermark;
                    led.log_start_offset = p.log_start_offset;
                    led.producers.replace_committed(producers);
                    led.stale = false;
                }
            }
            Ok(None) => {
                self.lock().drop_led(tp);
            }
            Err(e) => warn!(%tp, error = %error_chain(&e), "cannot reload partition state"),
        }
    }

    /// Creates a topic and takes the leases of its partitions.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<Topic, AgentError> {
        validate_topic_name(name).map_err(|reason| AgentError::InvalidTopic { reason })?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(AgentError::InvalidPartitions { partitions });
        }
        TopicConfig::parse(configs).map_err(|reason| AgentError::InvalidConfig { reason })?;
        // A topic belongs to the creating agent's group unless it names one.
        let mut configs = configs.clone();
        configs
            .entry(AGENT_GROUP_CONFIG.to_string())
            .or_insert_with(|| self.config.group.clone());
        let topic = self
            .metadata
            .create_topic(name, partitions, &configs)
            .await
            .map_err(|e| match e {
                MetadataError::AlreadyExists { .. } => AgentError::TopicAlreadyExists {
                    topic: name.to_string(),
                },
                e => AgentError::Metadata(e),
            })?;
        // Take this agent's share now; the group's other agents take theirs at their next
        // balance round.
        if let Err(e) = self.balance().await {
            warn!(topic = name, error = %error_chain(&e), "could not lease partitions of a new topic");
        }
        info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Deletes a topic. Its data objects stay until garbage collection.
    pub async fn delete_topic(&self, name: &str) -> Result<(), AgentError> {
        self.metadata
            .delete_topic(name)
            .await
            .map_err(|e| match e {
                MetadataError::NotFound { .. } => AgentError::UnknownTopic {
                    topic: name.to_string(),
                },
                e => AgentError::Metadata(e),
            })?;
        self.lock().led.retain(|tp, _| tp.topic != name);
        info!(topic = name, "topic deleted");
        Ok(())
    }

    /// The committed high watermark and log start of a partition.
    pub async fn partition_offsets(
        &self,
        tp: &TopicPartition,
    ) -> Result<(Offset, Offset), AgentError> {
        if let Some(led) = self.lock().led.get(tp).filter(|led| !led.stale) {
            return Ok((led.next_offset, led.log_start_offset));
        }
        self.fresh_partition_offsets(tp).await
    }

    /// The committed high watermark and log start of a partition, as the store has them.
    pub(crate) async fn fresh_partition_offsets(
        &self,
        tp: &TopicPartition,
    ) -> Result<(Offset, Offset), AgentError> {
        let p = self
            .metadata
            .get_partition(tp)
            .await?
            .ok_or_else(|| AgentError::UnknownTopicOrPartition { tp: tp.clone() })?;
        Ok((p.high_watermark, p.log_start_offset))
    }

    /// Whether this agent currently leads `tp`, and at which epoch.
    pub fn leader_epoch(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock().led.get(tp).map(|led| led.epoch.0)
    }

    /// How many partitions this agent leads.
    pub fn led_count(&self) -> usize {
        self.lock().led.len()
    }
}

/// An error and its sources on one line, for logs and for error messages sent to clients.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Runs `pass` every `interval` until `shutdown` (the first one after one interval), never
/// if the interval is zero: the loop of each background job (retention, compaction, garbage
/// collection).
pub(crate) async fn every<F, Fut>(interval: Duration, shutdown: &CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        pass().await;
    }
}

/// Where every object's key starts (`data/<agent-id>/…`, see docs/storage-format.md).
pub const DATA_PREFIX: &str = "data";

/// Most partitions one topic may have: a request for a million partitions (a typo, or a
/// fuzzer) would otherwise create a million rows and leases before anyone could stop it.
pub const MAX_PARTITIONS: i32 = 10_000;

/// How long to wait between lease-keeping rounds when a round fails.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(500);
