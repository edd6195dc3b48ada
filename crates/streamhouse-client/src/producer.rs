//! The producer: per-partition batching, pipelined Produce requests, real per-record offsets.
//!
//! Records go into a per-partition batch (the accumulator). A batch is closed when it
//! reaches `batch_size` bytes or is `linger` old; a background sender task groups closed
//! batches by partition leader, puts the batches of many partitions into one
//! ProduceRequest, and keeps up to `max_in_flight` requests outstanding per broker. When
//! the response arrives, each record's [`DeliveryHandle`] resolves with
//! `base_offset + index in batch`.
//!
//! Idempotence (`enable_idempotence`, on by default, as in Kafka 3+): the producer gets a
//! producer id and epoch with InitProducerId when it is created. When a batch is first
//! drained for sending it gets the partition's next base sequence (record `i` carries
//! `base_sequence + i`), and it is encoded once: a retry resends the same bytes, so the
//! broker recognizes a batch it already wrote (say, after a lost response) and answers with
//! the original offset instead of writing it twice. Per partition at most
//! [`MAX_IN_FLIGHT_IDEMPOTENT`] batches are unacknowledged; a batch that fails retriably is
//! resent only once every earlier batch of its partition has completed, and no new batch of
//! that partition is sent while it waits, so records land in send order even with retries.
//! OUT_OF_ORDER_SEQUENCE_NUMBER for a batch behind an unacknowledged one means an earlier
//! batch failed, so it is retried in order; for the oldest batch it means a gap that cannot
//! close (an earlier batch was given up on), and its handles fail. INVALID_PRODUCER_EPOCH,
//! PRODUCER_FENCED and UNKNOWN_PRODUCER_ID fail the affected handles.
//!
//! A batch that had a sequence and failed for good (its delivery timeout passed, or the
//! broker refused it) leaves a gap no later batch of its partition can close. As in KIP-360
//! the producer then bumps its epoch: it holds new batches back, lets the batches already
//! sent finish, asks InitProducerId for the next epoch of its producer id (a new id if the
//! broker will not bump it), and starts every partition's sequence at 0 again; the held
//! batches then go out under the new epoch.
//!
//! Without idempotence: requests to one broker are written in order, so without retries
//! the records of a partition land in send order. A retried batch is sent again after newer
//! batches of the same partition may already have been written, so with retries and
//! `max_in_flight > 1` order within a partition can change, and a request that timed out
//! but was applied is written again when retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::records::Record;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admin::topic_name;
use crate::cluster::Cluster;
use crate::connection::{Connection, PendingResponse};
use crate::error::{is_metadata_error, is_retriable_code, ClientError};
use crate::partitioner::Partitioner;
use crate::records::{encode_batch, to_wire_record, ProducerRecord};

/// Produce versions this client builds: v13 names topics by id, which we do not track.
const PRODUCE_VERSIONS: VersionRange = VersionRange { min: 3, max: 12 };

/// Soft cap on the record bytes of one ProduceRequest.
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// Most batches of one partition an idempotent producer has unacknowledged: the broker
/// remembers a producer's last 5 batches per partition, so a retry of an older one could
/// not be recognized (Kafka's `max.in.flight.requests.per.connection` limit).
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// Kafka error codes the idempotent producer handles specially.
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const PRODUCER_FENCED: i16 = 90;

/// Producer settings. `ProducerConfig::default()` matches the Kafka Java client's spirit.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// 0 = fire and forget (no response, no offsets), 1 = leader, -1 = all in-sync replicas.
    pub acks: i16,
    /// How long a batch may wait for more records before it is sent.
    pub linger: Duration,
    /// Close a partition's batch once it holds this many bytes.
    pub batch_size: usize,
    /// Produce requests in flight per broker connection.
    pub max_in_flight: usize,
    /// How long to wait for one Produce response (also the broker-side `timeout_ms`), and
    /// how long `send` waits for a topic's metadata.
    pub request_timeout: Duration,
    /// Upper bound on the time from `send` to success or failure, retries included
    /// (default 120 s, like Kafka's `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Maximum retries of a batch; `None` retries until `delivery_timeout`.
    pub retries: Option<u32>,
    /// Wait before resending a batch that failed with a retriable error.
    pub retry_backoff: Duration,
    /// Total bytes of records waiting to be acknowledged; `send` waits for space beyond it.
    pub buffer_memory: usize,
    /// Idempotent producer: every batch carries a producer id, epoch and sequence, so the
    /// broker writes a retried batch at most once and keeps each partition in send order.
    /// Requires `acks = -1` and `max_in_flight <= 5`.
    pub enable_idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_size: 1 << 20,
            max_in_flight: 5,
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
            retries: None,
            retry_backoff: Duration::from_millis(100),
            buffer_memory: 64 << 20,
            enable_idempotence: true,
        }
    }
}

impl ProducerConfig {
    /// Rejects settings the producer cannot honour.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |message: String| Err(ClientError::InvalidInput { message });
        if !matches!(self.acks, -1..=1) {
            return invalid(format!("acks must be -1, 0 or 1, got {}", self.acks));
        }
        if self.max_in_flight == 0 || self.batch_size == 0 {
            return invalid("max_in_flight and batch_size must be positive".to_owned());
        }
        if self.enable_idempotence && self.acks != -1 {
            return invalid(format!(
                "an idempotent producer needs acks = -1 (all), got {}; set enable_idempotence = false to use other acks",
                self.acks
            ));
        }
        if self.enable_idempotence && self.max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
            return invalid(format!(
                "an idempotent producer allows at most {MAX_IN_FLIGHT_IDEMPOTENT} requests in flight, got {}",
                self.max_in_flight
            ));
        }
        Ok(())
    }
}

/// The identity an idempotent producer's batches carry, from InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// Producer id handed out by the broker.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
}

/// A batch's place in its partition's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSequence {
    /// Drain order within the partition (never wraps); orders retries.
    number: u64,
    /// Sequence of the batch's first record.
    base_sequence: i32,
}

/// Per-partition sequence state of an idempotent producer.
#[derive(Debug, Default)]
struct PartitionSequences {
    /// Base sequence of the next batch.
    next_sequence: i32,
    /// Number the next batch gets.
    next_number: u64,
    /// Numbers of batches with a sequence that have not completed yet.
    unacked: BTreeSet<u64>,
    /// Of those, how many are waiting in the retry queue.
    retrying: usize,
}

/// `sequence + n` wrapping from `i32::MAX` to 0, as Kafka's sequences do.
pub(crate) fn increment_sequence(sequence: i32, n: i32) -> i32 {
    if sequence > i32::MAX - n {
        n - (i32::MAX - sequence) - 1
    } else {
        sequence + n
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The record's offset; -1 with `acks = 0`, where the broker sends no response.
    pub offset: i64,
    /// The record's timestamp (log-append time if the topic uses it, else creation time).
    pub timestamp: i64,
}

/// Resolves once the broker acknowledged (or the producer gave up on) one record.
#[derive(Debug)]
pub struct DeliveryHandle {
    partition: i32,
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl DeliveryHandle {
    /// The partition the record was assigned to.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Waits for the record's offset.
    pub async fn wait_offset(self) -> Result<RecordMetadata, ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

type Waiter = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// Records of one partition sent together.
struct Batch {
    topic: String,
    partition: i32,
    records: Vec<Record>,
    timestamps: Vec<i64>,
    waiters: Vec<Waiter>,
    bytes: usize,
    /// Buffer-memory permits to give back when the batch completes.
    permits: usize,
    created: Instant,
    attempts: u32,
    retry_at: Option<Instant>,
    /// Set when an idempotent producer first drains the batch; kept across retries.
    sequence: Option<BatchSequence>,
    encoded: Option<Bytes>,
}

impl Batch {
    fn new(topic: String, partition: i32, now: Instant) -> Batch {
        Batch {
            topic,
            partition,
            records: Vec::new(),
            timestamps: Vec::new(),
            waiters: Vec::new(),
            bytes: 0,
            permits: 0,
            created: now,
            attempts: 0,
            retry_at: None,
            sequence: None,
            encoded: None,
        }
    }

    fn len(&self) -> usize {
        self.waiters.len()
    }
}

#[derive(Default)]
struct Accumulator {
    partitioner: Partitioner,
    /// topic → partition → open batch.
    open: HashMap<String, BTreeMap<i32, Batch>>,
    /// Closed batches waiting to be sent, oldest first.
    ready: VecDeque<Batch>,
    /// Batches waiting for their retry time.
    retry: Vec<Batch>,
    /// Idempotence: (topic, partition) → sequence state.
    sequences: HashMap<(String, i32), PartitionSequences>,
    /// Producer id and epoch when idempotent.
    identity: Option<ProducerIdentity>,
    /// A batch with a sequence failed for good: bump the epoch before new batches get one.
    bump_wanted: bool,
}

impl Accumulator {
    fn close(&mut self, topic: &str, partition: i32, num_partitions: i32) {
        if let Some(b) = self.open.get_mut(topic).and_then(|m| m.remove(&partition)) {
            self.partitioner
                .batch_closed(topic, partition, num_partitions);
            self.ready.push_back(b);
        }
    }
}

struct Shared {
    config: ProducerConfig,
    cluster: Arc<Cluster>,
    acc: Mutex<Accumulator>,
    wake: Notify,
    buffer: Semaphore,
    buffer_permits: usize,
    /// Records sent but not yet completed; `flush` waits for zero.
    outstanding: watch::Sender<u64>,
    closed: AtomicBool,
}

impl Shared {
    fn acc(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.acc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finished(&self, batch: &Batch) {
        if let Some(seq) = batch.sequence {
            if let Some(st) = self
                .acc()
                .sequences
                .get_mut(&(batch.topic.clone(), batch.partition))
            {
                st.unacked.remove(&seq.number);
            }
            // Held batches of this partition may be sendable now.
            self.wake.notify_one();
        }
        self.buffer.add_permits(batch.permits);
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        self.outstanding.send_if_modified(|o| {
            *o = o.saturating_sub(n);
            *o == 0
        });
    }

    /// Resolves every record of `batch` with its offset `base_offset + index`.
    fn complete(&self, batch: Batch, base_offset: i64, log_append_time: i64) {
        self.finished(&batch);
        for (index, (waiter, ts)) in batch.waiters.into_iter().zip(batch.timestamps).enumerate() {
            let result = offset_of(base_offset, index).map(|offset| RecordMetadata {
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset,
                timestamp: if log_append_time >= 0 {
                    log_append_time
                } else {
                    ts
                },
            });
            // The caller may have dropped its handle; that is fine.
            let _ = waiter.send(result);
        }
    }

    fn fail(&self, batch: Batch, err: &ClientError) {
        tracing::debug!(topic = %batch.topic, partition = batch.partition, error = %err, "produce batch failed");
        if batch.sequence.is_some() {
            // Its sequence numbers may or may not have been written: a gap either way.
            self.acc().bump_wanted = true;
        }
        self.finished(&batch);
        for waiter in batch.waiters {
            let _ = waiter.send(Err(err.clone()));
        }
    }

    fn deadline(&self, batch: &Batch) -> Instant {
        batch.created + self.config.delivery_timeout
    }

    /// Schedules `batch` for another attempt, or fails it if out of retries or time.
    fn retry_or_fail(&self, mut batch: Batch, err: ClientError) {
        let now = Instant::now();
        let out_of_retries = self.config.retries.is_some_and(|r| batch.attempts > r);
        if out_of_retries {
            return self.fail(batch, &err);
        }
        let retry_at = now + self.config.retry_backoff;
        if retry_at >= self.deadline(&batch) {
            let timeout = ClientError::Timeout {
                operation: format!(
                    "delivery to {}/{} (last error: {err})",
                    batch.topic, batch.partition
                ),
            };
            return self.fail(batch, &timeout);
        }
        // The leader may have moved: after a leadership error, and after a lost or silent
        // connection (the leader may be dead or paused), ask for metadata again.
        let transport = matches!(
            err,
            ClientError::Timeout { .. }
                | ClientError::Disconnected
                | ClientError::Io(_)
                | ClientError::Connect { .. }
        );
        if transport || err.kafka_code().is_some_and(is_metadata_error) {
            self.cluster.invalidate(&batch.topic);
        }
        tracing::debug!(topic = %batch.topic, partition = batch.partition, error = %err, attempt = batch.attempts, "retrying produce batch");
        batch.retry_at = Some(retry_at);
        let mut acc = self.acc();
        if batch.sequence.is_some() {
            acc.sequences
                .entry((batch.topic.clone(), batch.partition))
                .or_default()
                .retrying += 1;
        }
        acc.retry.push(batch);
        drop(acc);
        self.wake.notify_one();
    }

    /// Whether `batch` is the oldest unacknowledged batch of its partition (always true
    /// without idempotence).
    fn is_oldest_unacked(&self, batch: &Batch) -> bool {
        let Some(seq) = batch.sequence else {
            return true;
        };
        self.acc()
            .sequences
            .get(&(batch.topic.clone(), batch.partition))
            .and_then(|st| st.unacked.first().copied())
            .is_none_or(|oldest| oldest == seq.number)
    }

    /// The error for a batch the broker rejected for its producer id, epoch or sequence.
    fn idempotence_error(&self, batch: &Batch, code: i16, detail: Option<&str>) -> ClientError {
        let (id, epoch) = self
            .acc()
            .identity
            .map_or((-1, -1), |i| (i.producer_id, i.producer_epoch));
        let seq = batch.sequence.map_or(-1, |s| s.base_sequence);
        let why = match code {
            OUT_OF_ORDER_SEQUENCE_NUMBER => {
                "an earlier batch of this partition was given up on, so the sequence has a gap"
            }
            UNKNOWN_PRODUCER_ID => "the broker no longer knows this producer id",
            _ => "this producer was fenced by a newer epoch of its producer id",
        };
        ClientError::kafka(
            code,
            Some(&format!(
                "idempotent producer {id} epoch {epoch}, {}/{} base sequence {seq}: {why}{}",
                batch.topic,
                batch.partition,
                detail.map(|d| format!(" ({d})")).unwrap_or_default()
            )),
        )
    }

    /// Moves due batches out of the accumulator; returns them, when to look again, and
    /// the batches whose delivery timeout passed.
    ///
    /// An idempotent producer also gives each batch it drains for the first time its
    /// sequence, and holds batches back to keep each partition in order (see the module docs).
    fn collect(&self, now: Instant) -> (Vec<Batch>, Option<Instant>, Vec<Batch>) {
        let linger = self.config.linger;
        let mut guard = self.acc();
        let acc = &mut *guard;
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let mut due: Vec<(String, i32, i32)> = Vec::new();
        for (topic, parts) in &acc.open {
            let n = i32::try_from(parts.len()).unwrap_or(i32::MAX);
            for (p, b) in parts {
                let at = b.created + linger;
                if at <= now {
                    due.push((
                        topic.clone(),
                        *p,
                        self.cluster.partition_count(topic).unwrap_or(n),
                    ));
                } else {
                    soonest(at);
                }
            }
        }
        for (topic, p, n) in due {
            acc.close(&topic, p, n);
        }
        let fresh: Vec<Batch> = acc.ready.drain(..).collect();
        let mut retries = Vec::new();
        for b in std::mem::take(&mut acc.retry) {
            match b.retry_at {
                Some(at) if at > now => {
                    soonest(at);
                    acc.retry.push(b);
                }
                _ => retries.push(b),
            }
        }
        let Some(identity) = acc.identity else {
            drop(guard);
            let (expired, live): (Vec<Batch>, Vec<Batch>) = fresh
                .into_iter()
                .chain(retries)
                .partition(|b| self.deadline(b) <= now);
            return (live, next, expired);
        };

        let mut live = Vec::new();
        let mut expired = Vec::new();
        // A retry goes out only as its partition's oldest unacknowledged batch.
        for b in retries {
            let st = acc
                .sequences
                .entry((b.topic.clone(), b.partition))
                .or_default();
            let oldest = match b.sequence {
                Some(seq) => st.unacked.first() == Some(&seq.number),
                None => true,
            };
            let is_expired = self.deadline(&b) <= now;
            if !oldest && !is_expired {
                acc.retry.push(b);
                continue;
            }
            if b.sequence.is_some() {
                st.retrying = st.retrying.saturating_sub(1);
            }
            if is_expired {
                expired.push(b);
            } else {
                live.push(b);
            }
        }
        // New batches wait while their partition has a retry pending or too many in flight,
        // and all of them while the epoch is to be bumped.
        let bumping = acc.bump_wanted;
        for mut b in fresh {
            if self.deadline(&b) <= now {
                expired.push(b);
                continue;
            }
            let st = acc
                .sequences
                .entry((b.topic.clone(), b.partition))
                .or_default();
            if b.sequence.is_none() {
                if bumping || st.retrying > 0 || st.unacked.len() >= MAX_IN_FLIGHT_IDEMPOTENT {
                    acc.ready.push_back(b);
                    continue;
                }
                let number = st.next_number;
                st.next_number += 1;
                st.unacked.insert(number);
                let base_sequence = st.next_sequence;
                let mut sequence = base_sequence;
                for r in &mut b.records {
                    r.producer_id = identity.producer_id;
                    r.producer_epoch = identity.producer_epoch;
                    r.sequence = sequence;
                    sequence = increment_sequence(sequence, 1);
                }
                st.next_sequence = sequence;
                b.sequence = Some(BatchSequence {
                    number,
                    base_sequence,
                });
            }
            live.push(b);
        }
        (live, next, expired)
    }
}

impl Shared {
    /// Whether the epoch is to be bumped and nothing sent under the current one is still
    /// unacknowledged.
    fn bump_due(&self) -> Option<ProducerIdentity> {
        let acc = self.acc();
        let drained = acc.sequences.values().all(|st| st.unacked.is_empty());
        acc.identity.filter(|_| acc.bump_wanted && drained)
    }

    /// Moves to `identity` (a new epoch, or a new producer id) with every partition's
    /// sequence starting at 0 again.
    fn bumped(&self, identity: ProducerIdentity) {
        let mut acc = self.acc();
        acc.identity = Some(identity);
        acc.bump_wanted = false;
        for st in acc.sequences.values_mut() {
            st.next_sequence = 0;
        }
        drop(acc);
        self.wake.notify_one();
    }
}

/// `base_offset + index`, checked.
pub(crate) fn offset_of(base_offset: i64, index: usize) -> Result<i64, ClientError> {
    i64::try_from(index)
        .ok()
        .and_then(|i| base_offset.checked_add(i))
        .ok_or_else(|| ClientError::corrupt("Produce response", "base offset overflows"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// An asynchronous, batching producer. See the module docs for semantics.
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Connects to `bootstrap` ("host:port" or a comma-separated list) and starts the
    /// background sender.
    ///
    /// An idempotent producer (the default) also asks for its producer id here.
    pub async fn new(bootstrap: &str, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let cluster = Cluster::connect(bootstrap, config.request_timeout).await?;
        let identity = if config.enable_idempotence {
            Some(init_producer_id(&cluster, &config, None).await?)
        } else {
            None
        };
        let buffer_permits = config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS);
        let (outstanding, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            cluster,
            acc: Mutex::new(Accumulator {
                identity,
                ..Accumulator::default()
            }),
            wake: Notify::new(),
            buffer: Semaphore::new(buffer_permits),
            buffer_permits,
            outstanding,
            closed: AtomicBool::new(false),
            config,
        });
        tokio::spawn(run_sender(shared.clone()));
        Ok(Producer { shared })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// The producer id and epoch of an idempotent producer.
    pub fn identity(&self) -> Option<ProducerIdentity> {
        self.shared.acc().identity
    }

    /// Queues `record` and returns a handle to its delivery.
    ///
    /// Returns once the record is in a batch; it waits only for buffer space (see
    /// `buffer_memory`) and, for a topic not seen before, for its metadata.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryHandle, ClientError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        let num_partitions = self.partition_count(&record.topic).await?;
        if let Some(p) = record.partition {
            if !(0..num_partitions).contains(&p) {
                return Err(ClientError::InvalidInput {
                    message: format!(
                        "partition {p} out of range for topic {} with {num_partitions} partitions",
                        record.topic
                    ),
                });
            }
        }
        let size = record.estimated_size();
        let permits = size.clamp(1, self.shared.buffer_permits);
        let permit = self
            .shared
            .buffer
            .acquire_many(u32::try_from(permits).unwrap_or(u32::MAX))
            .await
            .map_err(|_| ClientError::Closed)?;
        permit.forget();

        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let (tx, rx) = oneshot::channel();
        let batch_size = self.shared.config.batch_size;
        let now = Instant::now();
        let (partition, wake) = {
            let mut acc = self.shared.acc();
            let partition = match record.partition {
                Some(p) => p,
                None => {
                    acc.partitioner
                        .partition(&record.topic, record.key.as_deref(), num_partitions)
                }
            };
            let mut wake = false;
            // Close the current batch first if this record would overflow it.
            let overflow = acc
                .open
                .get(&record.topic)
                .and_then(|m| m.get(&partition))
                .is_some_and(|b| b.len() > 0 && b.bytes + size > batch_size);
            if overflow {
                acc.close(&record.topic, partition, num_partitions);
                wake = true;
            }
            let parts = match acc.open.get_mut(&record.topic) {
                Some(m) => m,
                None => acc.open.entry(record.topic.clone()).or_default(),
            };
            let batch = parts.entry(partition).or_insert_with(|| {
                wake = true;
                Batch::new(record.topic.clone(), partition, now)
            });
            let index = i32::try_from(batch.len()).map_err(|_| ClientError::InvalidInput {
                message: "too many records in one batch".to_owned(),
            })?;
            batch
                .records
                .push(to_wire_record(&record, index, timestamp));
            batch.timestamps.push(timestamp);
            batch.waiters.push(tx);
            batch.bytes += size;
            batch.permits += permits;
            let full = batch.bytes >= batch_size;
            if full {
                acc.close(&record.topic, partition, num_partitions);
                wake = true;
            }
            (partition, wake)
        };
        self.shared.outstanding.send_if_modified(|o| {
            *o += 1;
            false
        });
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(DeliveryHandle { partition, rx })
    }

    /// Sends `record` and waits for its offset.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<RecordMetadata, ClientError> {
        self.send(record).await?.wait_offset().await
    }

    /// Sends every open batch now and waits until every record sent so far has completed
    /// (successfully or not; check the handles for the outcome).
    pub async fn flush(&self) -> Result<(), ClientError> {
        {
            let mut acc = self.shared.acc();
            let open: Vec<(String, i32)> = acc
                .open
                .iter()
                .flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p)))
                .collect();
            for (t, p) in open {
                let n = self.shared.cluster.partition_count(&t).unwrap_or(1);
                acc.close(&t, p, n);
            }
        }
        self.shared.wake.notify_one();
        let mut rx = self.shared.outstanding.subscribe();
        rx.wait_for(|n| *n == 0)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }

    /// Flushes, then stops the sender. Later `send`s fail with [`ClientError::Closed`].
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await
        // Drop marks the producer closed.
    }

    /// Partition count of `topic`, waiting (up to `request_timeout`) for it to appear.
    async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        if let Some(n) = self.shared.cluster.partition_count(topic) {
            return Ok(n);
        }
        let deadline = Instant::now() + self.shared.config.request_timeout;
        loop {
            match self.shared.cluster.topic_or_refresh(topic).await {
                Ok(meta) if !meta.leaders.is_empty() => {
                    return i32::try_from(meta.leaders.len()).map_err(|_| {
                        ClientError::corrupt("Metadata response", "too many partitions")
                    })
                }
                Ok(_) => {}
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::kafka(3, Some(topic)));
            }
            self.shared.cluster.invalidate(topic);
            tokio::time::sleep(self.shared.config.retry_backoff).await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The sender drains what is queued, then exits.
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

/// InitProducerId without a transactional id: a new producer id at epoch 0, or with
/// `current` the next epoch of that id (KIP-360). A broker that will not bump `current`
/// (it does not know the id, the epoch is exhausted, or it is older than InitProducerId v3
/// and cannot be asked) hands out a new id instead.
///
/// Retries retriable errors (coordinator loading or moving included) up to
/// `request_timeout`.
async fn init_producer_id(
    cluster: &Cluster,
    config: &ProducerConfig,
    mut current: Option<ProducerIdentity>,
) -> Result<ProducerIdentity, ClientError> {
    let deadline = Instant::now() + config.request_timeout;
    loop {
        let asked = current;
        let attempt = async {
            let conn = cluster.any_connection().await?;
            let (id, epoch) = asked.map_or((-1, -1), |c| (c.producer_id, c.producer_epoch));
            let req = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch);
            let resp = conn.send(req).await?;
            if resp.error_code != 0 {
                return Err(ClientError::kafka(resp.error_code, Some("InitProducerId")));
            }
            if resp.producer_id.0 < 0 || resp.producer_epoch < 0 {
                return Err(ClientError::corrupt(
                    "InitProducerId response",
                    format!(
                        "producer id {} epoch {}",
                        resp.producer_id.0, resp.producer_epoch
                    ),
                ));
            }
            Ok(ProducerIdentity {
                producer_id: resp.producer_id.0,
                producer_epoch: resp.producer_epoch,
            })
        };
        match attempt.await {
            Ok(identity) => return Ok(identity),
            // Not bumpable here (INVALID_PRODUCER_EPOCH, PRODUCER_FENCED, or a request the
            // broker's version cannot carry): start over with a new producer id.
            Err(e)
                if current.is_some()
                    && (matches!(e, ClientError::Encode { .. })
                        || e.kafka_code().is_some_and(|c| {
                            c == INVALID_PRODUCER_EPOCH || c == PRODUCER_FENCED
                        })) =>
            {
                tracing::debug!(error = %e, "cannot bump the producer epoch; asking for a new producer id");
                current = None;
            }
            Err(e) => {
                // COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR.
                let retriable =
                    e.is_retriable() || e.kafka_code().is_some_and(|c| (14..=16).contains(&c));
                if !retriable || Instant::now() + config.retry_backoff >= deadline {
                    return Err(e);
                }
                tracing::debug!(error = %e, "retrying InitProducerId");
                tokio::time::sleep(config.retry_backoff).await;
            }
        }
    }
}

/// The background task: collects due batches, routes them to leaders, sends requests.
async fn run_sender(shared: Arc<Shared>) {
    let mut in_flight: HashMap<i32, Arc<Semaphore>> = HashMap::new();
    loop {
        if let Some(current) = shared.bump_due() {
            match init_producer_id(&shared.cluster, &shared.config, Some(current)).await {
                Ok(identity) => {
                    tracing::info!(
                        producer_id = identity.producer_id,
                        epoch = identity.producer_epoch,
                        "idempotent producer moved to a new epoch after a batch was given up on"
                    );
                    shared.bumped(identity);
                }
                Err(e) => {
                    // New batches stay held (and expire at their delivery timeout) until a
                    // bump succeeds.
                    tracing::warn!(error = %e, "cannot bump the idempotent producer's epoch; retrying");
                    tokio::time::sleep(shared.config.retry_backoff).await;
                }
            }
        }
        let now = Instant::now();
        let (batches, next, expired) = shared.collect(now);
        for b in expired {
            let err = ClientError::Timeout {
                operation: format!("delivery to {}/{}", b.topic, b.partition),
            };
            shared.fail(b, &err);
        }
        if batches.is_empty() {
            if shared.closed.load(Ordering::Relaxed) && *shared.outstanding.borrow() == 0 {
                return;
            }
            let sleep_until = next.unwrap_or(now + Duration::from_secs(1));
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
            continue;
        }

        // Route to leaders.
        let mut by_leader: BTreeMap<i32, Vec<Batch>> = BTreeMap::new();
        for b in batches {
            match shared.cluster.leader(&b.topic, b.partition).await {
                Ok(leader) if leader >= 0 => by_leader.entry(leader).or_default().push(b),
                Ok(_) => shared.retry_or_fail(b, ClientError::kafka(5, None)),
                Err(e) if e.is_retriable() => shared.retry_or_fail(b, e),
                Err(e) => shared.fail(b, &e),
            }
        }

        for (leader, group) in by_leader {
            let conn = match shared.cluster.broker(leader).await {
                Ok(c) => c,
                Err(e) => {
                    for b in group {
                        shared.retry_or_fail(b, e.clone());
                    }
                    continue;
                }
            };
            let limit = in_flight
                .entry(leader)
                .or_insert_with(|| Arc::new(Semaphore::new(shared.config.max_in_flight)))
                .clone();
            for request in split_requests(group) {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                send_request(&shared, &conn, request, permit).await;
            }
        }
    }
}

/// Splits batches into requests with at most one batch per partition and bounded size,
/// keeping each partition's batches in order.
fn split_requests(group: Vec<Batch>) -> Vec<Vec<Batch>> {
    let mut requests: Vec<(Vec<Batch>, usize)> = Vec::new();
    for b in group {
        // The first request after the last one holding this partition, with room.
        let after = requests
            .iter()
            .rposition(|(r, _)| {
                r.iter()
                    .any(|x| x.partition == b.partition && x.topic == b.topic)
            })
            .map_or(0, |i| i + 1);
        let slot = requests
            .iter()
            .skip(after)
            .position(|(_, bytes)| *bytes + b.bytes <= MAX_REQUEST_BYTES)
            .map(|i| i + after);
        match slot {
            Some(i) => {
                requests[i].1 += b.bytes;
                requests[i].0.push(b);
            }
            None => {
                let bytes = b.bytes;
                requests.push((vec![b], bytes));
            }
        }
    }
    requests.into_iter().map(|(r, _)| r).collect()
}

/// Encodes and writes one ProduceRequest; spawns a task that handles its response.
async fn send_request(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut batches: Vec<Batch>,
    permit: OwnedSemaphorePermit,
) {
    let version = match conn.negotiate(ApiKey::Produce, PRODUCE_VERSIONS) {
        Ok(v) => v,
        Err(e) => {
            for b in batches {
                shared.fail(b, &e);
            }
            return;
        }
    };
    // Encode (once per batch; retries reuse the bytes).
    let mut encoded_ok = Vec::with_capacity(batches.len());
    for mut b in batches.drain(..) {
        if b.encoded.is_none() {
            match encode_batch(&b.records) {
                Ok(bytes) => {
                    b.encoded = Some(bytes);
                    b.records = Vec::new();
                }
                Err(e) => {
                    shared.fail(b, &e);
                    continue;
                }
            }
        }
        b.attempts += 1;
        encoded_ok.push(b);
    }
    let batches = encoded_ok;
    if batches.is_empty() {
        return;
    }
    let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for b in &batches {
        topics.entry(&b.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(b.partition)
                .with_records(b.encoded.clone()),
        );
    }
    let req = ProduceRequest::default()
        .with_acks(shared.config.acks)
        .with_timeout_ms(
            i32::try_from(shared.config.request_timeout.as_millis()).unwrap_or(i32::MAX),
        )
        .with_topic_data(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    TopicProduceData::default()
                        .with_name(topic_name(t))
                        .with_partition_data(parts)
                })
                .collect(),
        );

    if shared.config.acks == 0 {
        let res = conn.send_no_response(&req, version).await;
        drop(permit);
        for b in batches {
            match &res {
                // No response means no offsets: -1 by contract.
                Ok(()) => shared.complete_without_offset(b),
                Err(e) => shared.retry_or_fail(b, e.clone()),
            }
        }
        return;
    }

    match conn.start(&req, version).await {
        Ok(pending) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                handle_response(&shared, pending, batches).await;
                drop(permit);
            });
        }
        Err(e) => {
            for b in batches {
                shared.retry_or_fail(b, e.clone());
            }
        }
    }
}

impl Shared {
    fn complete_without_offset(&self, batch: Batch) {
        self.finished(&batch);
        for (waiter, ts) in batch.waiters.into_iter().zip(batch.timestamps) {
            let _ = waiter.send(Ok(RecordMetadata {
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset: -1,
                timestamp: ts,
            }));
        }
    }
}

async fn handle_response(
    shared: &Shared,
    pending: PendingResponse<ProduceResponse>,
    batches: Vec<Batch>,
) {
    let resp = match pending.wait().await {
        Ok(r) => r,
        Err(e) => {
            for b in batches {
                if e.is_retriable() {
                    shared.retry_or_fail(b, e.clone());
                } else {
                    shared.fail(b, &e);
                }
            }
            return;
        }
    };
    for b in batches {
        let part = resp
            .responses
            .iter()
            .filter(|t| t.name.as_str() == b.topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == b.partition);
        let Some(p) = part else {
            let e = ClientError::corrupt(
                "Produce response",
                format!("no result for {}/{}", b.topic, b.partition),
            );
            shared.fail(b, &e);
            continue;
        };
        if p.error_code == 0 {
            shared.complete(b, p.base_offset, p.log_append_time_ms);
            continue;
        }
        if b.sequence.is_some() {
            match p.error_code {
                // Behind a batch that failed: resend once that one is through.
                OUT_OF_ORDER_SEQUENCE_NUMBER if !shared.is_oldest_unacked(&b) => {
                    let e = ClientError::kafka(p.error_code, p.error_message.as_deref());
                    shared.retry_or_fail(b, e);
                    continue;
                }
                OUT_OF_ORDER_SEQUENCE_NUMBER
                | INVALID_PRODUCER_EPOCH
                | UNKNOWN_PRODUCER_ID
                | PRODUCER_FENCED => {
                    let e = shared.idempotence_error(&b, p.error_code, p.error_message.as_deref());
                    shared.fail(b, &e);
                    continue;
                }
                _ => {}
            }
        }
        let e = ClientError::kafka(p.error_code, p.error_message.as_deref());
        if is_retriable_code(p.error_code) {
            shared.retry_or_fail(b, e);
        } else {
            shared.fail(b, &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_base_plus_index() {
        assert_eq!(offset_of(0, 0).expect("ok"), 0);
        assert_eq!(offset_of(41, 1).expect("ok"), 42);
        assert_eq!(offset_of(1000, 999).expect("ok"), 1999);
        assert!(offset_of(i64::MAX, 1).is_err());
    }

    #[tokio::test]
    async fn complete_resolves_each_handle_with_its_offset() {
        let batch_waiters: Vec<_> = (0..4).map(|_| oneshot::channel()).collect();
        let mut batch = Batch::new("t".into(), 2, Instant::now());
        let mut rxs = Vec::new();
        for (i, (tx, rx)) in batch_waiters.into_iter().enumerate() {
            batch.waiters.push(tx);
            batch
                .timestamps
                .push(100 + i64::try_from(i).expect("small"));
            rxs.push(DeliveryHandle { partition: 2, rx });
        }
        let shared = test_shared().await;
        shared.complete(batch, 500, -1);
        for (i, h) in rxs.into_iter().enumerate() {
            let m = h.wait_offset().await.expect("delivered");
            let i = i64::try_from(i).expect("small");
            assert_eq!(m.offset, 500 + i);
            assert_eq!(m.timestamp, 100 + i);
            assert_eq!(m.partition, 2);
        }
    }

    #[test]
    fn split_keeps_one_batch_per_partition_per_request() {
        let now = Instant::now();
        let group = vec![
            Batch::new("a".into(), 0, now),
            Batch::new("a".into(), 1, now),
            Batch::new("a".into(), 0, now),
            Batch::new("b".into(), 0, now),
            Batch::new("a".into(), 0, now),
        ];
        let reqs = split_requests(group);
        let shape: Vec<Vec<(String, i32)>> = reqs
            .iter()
            .map(|r| r.iter().map(|b| (b.topic.clone(), b.partition)).collect())
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![("a".into(), 0), ("a".into(), 1), ("b".into(), 0)],
                vec![("a".into(), 0)],
                vec![("a".into(), 0)],
            ]
        );
    }

    #[test]
    fn sequences_wrap_to_zero_like_kafka() {
        assert_eq!(increment_sequence(0, 5), 5);
        assert_eq!(increment_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 2, 5), 2);
    }

    /// A closed batch of `n` records, as `send` builds it.
    fn batch_of(partition: i32, n: usize, now: Instant) -> Batch {
        let mut b = Batch::new("t".into(), partition, now);
        for i in 0..n {
            let index = i32::try_from(i).expect("small");
            b.records
                .push(to_wire_record(&ProducerRecord::new("t", "v"), index, 0));
            b.waiters.push(oneshot::channel().0);
            b.timestamps.push(0);
        }
        b
    }

    fn idempotent_shared() -> Shared {
        let shared = test_shared_sync();
        shared.acc().identity = Some(ProducerIdentity {
            producer_id: 42,
            producer_epoch: 3,
        });
        shared
    }

    fn base_sequences(batches: &[Batch]) -> Vec<(i32, i32)> {
        batches
            .iter()
            .map(|b| (b.partition, b.sequence.map_or(-1, |s| s.base_sequence)))
            .collect()
    }

    #[test]
    fn drained_batches_get_consecutive_sequences() {
        let shared = idempotent_shared();
        let now = Instant::now();
        {
            let mut acc = shared.acc();
            for (p, n) in [(0, 2), (0, 3), (1, 4), (0, 1)] {
                acc.ready.push_back(batch_of(p, n, now));
            }
        }
        let (live, _, expired) = shared.collect(now);
        assert!(expired.is_empty());
        assert_eq!(base_sequences(&live), vec![(0, 0), (0, 2), (1, 0), (0, 5)]);
        // Every record carries the producer id, epoch and base + index.
        let b = &live[1];
        let seqs: Vec<i32> = b.records.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert!(b
            .records
            .iter()
            .all(|r| r.producer_id == 42 && r.producer_epoch == 3));
        let encoded = encode_batch(&b.records).expect("encodes");
        let infos =
            kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut encoded.clone())
                .expect("decodes");
        assert_eq!(infos.len(), 1, "one batch on the wire");
        assert_eq!(infos[0].base_sequence, 2);
        assert_eq!(infos[0].producer_id, 42);
    }

    #[test]
    fn at_most_five_batches_per_partition_are_unacknowledged() {
        let shared = idempotent_shared();
        let now = Instant::now();
        {
            let mut acc = shared.acc();
            for _ in 0..7 {
                acc.ready.push_back(batch_of(0, 1, now));
            }
            acc.ready.push_back(batch_of(1, 1, now));
        }
        let (live, _, _) = shared.collect(now);
        assert_eq!(live.len(), MAX_IN_FLIGHT_IDEMPOTENT + 1);
        assert_eq!(shared.acc().ready.len(), 2);
        // Completing the oldest lets one more through, with the next sequence.
        let mut live = live.into_iter();
        let first = live.next().expect("batch");
        shared.complete(first, 0, -1);
        let (more, _, _) = shared.collect(now);
        assert_eq!(base_sequences(&more), vec![(0, 5)]);
    }

    #[test]
    fn retry_waits_for_earlier_batches_and_holds_new_ones() {
        let shared = idempotent_shared();
        let now = Instant::now();
        {
            let mut acc = shared.acc();
            for _ in 0..3 {
                acc.ready.push_back(batch_of(0, 2, now));
            }
        }
        let (live, _, _) = shared.collect(now);
        let mut live = live.into_iter();
        let (b0, b1, b2) = (
            live.next().expect("b0"),
            live.next().expect("b1"),
            live.next().expect("b2"),
        );
        // The second batch fails retriably while the first is still in flight.
        shared.retry_or_fail(b1, ClientError::kafka(56, None));
        shared.acc().ready.push_back(batch_of(0, 1, now));
        let later = now + Duration::from_secs(1);
        let (out, _, _) = shared.collect(later);
        assert!(
            out.is_empty(),
            "retry must wait for batch 0, new batches for the retry"
        );
        // The first completes: the retry goes out with its old sequence; the new batch
        // follows it, after the third.
        shared.complete(b0, 0, -1);
        let (out, _, _) = shared.collect(later);
        assert_eq!(base_sequences(&out), vec![(0, 2), (0, 6)]);
        assert_eq!(out[0].attempts, 0);
        drop(b2);
    }

    #[test]
    fn a_batch_given_up_on_holds_new_batches_until_the_epoch_is_bumped() {
        let shared = idempotent_shared();
        let now = Instant::now();
        shared.acc().ready.push_back(batch_of(0, 2, now));
        shared.acc().ready.push_back(batch_of(1, 3, now));
        let (mut out, _, _) = shared.collect(now);
        assert_eq!(base_sequences(&out), vec![(0, 0), (1, 0)]);
        let p1 = out.pop().expect("batch of partition 1");
        let p0 = out.pop().expect("batch of partition 0");
        // Partition 0's batch is given up on; partition 1's is still in flight.
        shared.fail(p0, &ClientError::kafka(56, None));
        assert_eq!(
            shared.bump_due(),
            None,
            "partition 1 is still unacknowledged"
        );
        shared.acc().ready.push_back(batch_of(0, 1, now));
        let (out, _, _) = shared.collect(now);
        assert!(out.is_empty(), "new batches wait for the bump");
        shared.complete(p1, 0, -1);
        let current = shared
            .bump_due()
            .expect("a bump is due once nothing is in flight");
        assert_eq!(current.producer_epoch, 3);
        shared.bumped(ProducerIdentity {
            producer_id: 42,
            producer_epoch: 4,
        });
        assert_eq!(shared.bump_due(), None);
        let (out, _, _) = shared.collect(now);
        // The held batch goes out under the new epoch, from sequence 0.
        assert_eq!(base_sequences(&out), vec![(0, 0)]);
        assert!(out[0].records.iter().all(|r| r.producer_epoch == 4));
    }

    /// A `Shared` whose cluster is never contacted.
    async fn test_shared() -> Shared {
        test_shared_sync()
    }

    fn test_shared_sync() -> Shared {
        let (outstanding, _) = watch::channel(4u64);
        Shared {
            config: ProducerConfig::default(),
            cluster: Cluster::offline("unused:0"),
            acc: Mutex::default(),
            wake: Notify::new(),
            buffer: Semaphore::new(1),
            buffer_permits: 1,
            outstanding,
            closed: AtomicBool::new(false),
        }
    }
}
