//! The produce benchmark: concurrent pipelined producers, per-record latency, offset checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use streamhouse_client::{
    Admin, ClientError, DeliveryHandle, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
    RecordMetadata,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checker::OffsetChecker;
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::progress;
use crate::report::{latency_histogram, BenchKind, BenchReport};

/// Kafka's TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// What one producer task measured.
pub(crate) struct TaskResult {
    pub(crate) latency_us: Histogram<u64>,
    /// partition → acknowledged offsets, in arrival order.
    pub(crate) offsets: HashMap<i32, Vec<i64>>,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

impl TaskResult {
    pub(crate) fn new() -> TaskResult {
        TaskResult {
            latency_us: latency_histogram(),
            offsets: HashMap::new(),
            records: 0,
            bytes: 0,
        }
    }
}

/// The producer tasks' results, merged.
pub(crate) struct Gathered {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// Waits for the tasks in order, merges what they measured and hands their offsets to
/// `checker`. At the first failure the remaining tasks are aborted (no point measuring the
/// rest of a failed run) and that error is returned.
pub(crate) async fn gather(
    tasks: Vec<JoinHandle<Result<TaskResult, BenchError>>>,
    mut checker: Option<&mut OffsetChecker>,
) -> Result<Gathered, BenchError> {
    let mut all = Gathered {
        latency_us: latency_histogram(),
        records: 0,
        bytes: 0,
    };
    let mut tasks = tasks.into_iter();
    while let Some(t) = tasks.next() {
        let failure = match t.await {
            Ok(Ok(r)) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = all.latency_us.add(&r.latency_us);
                all.records += r.records;
                all.bytes += r.bytes;
                if let Some(checker) = checker.as_deref_mut() {
                    for (p, offsets) in r.offsets {
                        for o in offsets {
                            checker.record(p, o);
                        }
                    }
                }
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => BenchError::Task(e.to_string()),
        };
        for rest in tasks {
            rest.abort();
        }
        return Err(failure);
    }
    Ok(all)
}

/// `len` bytes of cheap pseudo-random data (so compression-minded brokers see no zeros).
pub fn payload(len: usize) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Creates the topic unless it exists; returns its partition count.
pub async fn ensure_topic(admin: &Admin, cfg: &BenchConfig) -> Result<i32, BenchError> {
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Setup { what, source }
    };
    match admin.create_topic(&cfg.topic, cfg.partitions, &[]).await {
        Ok(()) => {}
        Err(e) if e.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {}
        Err(e) => return Err(setup("create topic")(e)),
    }
    // A fresh topic may take a moment to show up with leaders.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.describe_topic(&cfg.topic).await {
            Ok(d)
                if !d.partitions.is_empty()
                    && d.partitions.iter().all(|p| p.leader_node_id >= 0) =>
            {
                return i32::try_from(d.partitions.len())
                    .map_err(|_| BenchError::InvalidConfig("too many partitions".to_owned()));
            }
            Ok(_) => {}
            Err(e) if !e.is_retriable() || Instant::now() >= deadline => {
                return Err(setup("describe topic")(e))
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(setup("wait for topic leaders")(ClientError::Timeout {
                operation: format!("leaders of {}", cfg.topic),
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces `cfg.records` records of `cfg.record_size` bytes with `cfg.producers`
/// concurrent producers and reports throughput, per-record latency (send → offset known)
/// and offset errors (per partition, acknowledged offsets must be contiguous and unique;
/// another writer on the topic during the run shows up as errors).
///
/// Stops at the first record that fails to deliver ([`BenchError::Delivery`]).
pub async fn run_produce(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    let admin = Admin::connect(&cfg.bootstrap)
        .await
        .map_err(|source| BenchError::Setup {
            what: format!("connect to {}", cfg.bootstrap),
            source,
        })?;
    let partitions = ensure_topic(&admin, cfg).await?;

    // Where each partition's log ends now: the run's offsets must continue from there.
    let mut checker = OffsetChecker::new();
    let check_offsets = cfg.acks != 0;
    if check_offsets {
        for p in 0..partitions {
            let end = admin
                .list_offsets(&cfg.topic, p, OffsetSpec::Latest)
                .await
                .map_err(|source| BenchError::Setup {
                    what: format!("list offsets of partition {p}"),
                    source,
                })?;
            checker.start(p, end);
        }
    }

    let producer_config = ProducerConfig {
        acks: cfg.acks,
        linger: cfg.linger,
        batch_size: cfg.batch_size,
        max_in_flight: cfg.max_in_flight,
        buffer_memory: cfg.buffer_memory,
        enable_idempotence: cfg.idempotence,
        ..ProducerConfig::default()
    };
    let mut producers = Vec::with_capacity(cfg.producers);
    for _ in 0..cfg.producers {
        let p = Producer::new(&cfg.bootstrap, producer_config.clone())
            .await
            .map_err(|source| BenchError::Setup {
                what: "create producer".to_owned(),
                source,
            })?;
        producers.push(p);
    }

    let value = payload(cfg.record_size);
    let bar = progress::bar(cfg.progress, cfg.records, "produce");
    let producers_u64 = u64::try_from(cfg.producers).unwrap_or(1);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.producers);
    for (i, producer) in producers.into_iter().enumerate() {
        let i = u64::try_from(i).unwrap_or(0);
        // Spread the remainder over the first producers.
        let share = cfg.records / producers_u64 + u64::from(i < cfg.records % producers_u64);
        let topic = cfg.topic.clone();
        let value = value.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let result = produce_task(&producer, topic, value, share, bar).await;
            // Let in-flight requests finish before the producer is dropped.
            let _ = producer.flush().await;
            result
        }));
    }

    let gathered = gather(tasks, check_offsets.then_some(&mut checker)).await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let gathered = gathered?;
    Ok(BenchReport::new(
        BenchKind::Produce,
        gathered.records,
        gathered.bytes,
        elapsed,
        &gathered.latency_us,
        checker.errors(),
    ))
}

/// One producer's loop: send `count` records, collect their offsets as they arrive.
async fn produce_task(
    producer: &Producer,
    topic: String,
    value: Bytes,
    count: u64,
    bar: ProgressBar,
) -> Result<TaskResult, BenchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, DeliveryHandle)>();
    let record_bytes = u64::try_from(value.len()).unwrap_or(u64::MAX);
    let send = async move {
        for _ in 0..count {
            let record = ProducerRecord {
                topic: topic.clone(),
                value: Some(value.clone()),
                ..ProducerRecord::default()
            };
            let sent_at = Instant::now();
            let handle = producer.send(record).await?;
            if tx.send((sent_at, handle)).is_err() {
                break; // the collector stopped on an error
            }
        }
        Ok::<(), ClientError>(())
    };
    let bar = Arc::new(bar);
    // `move`: dropping `rx` when collection stops on an error makes `send` stop too.
    let collect = async move {
        let mut result = TaskResult::new();
        let mut waiting = FuturesUnordered::new();
        let mut open = true;
        while open || !waiting.is_empty() {
            tokio::select! {
                biased;
                Some((sent_at, outcome)) = waiting.next(), if !waiting.is_empty() => {
                    let outcome: Result<RecordMetadata, ClientError> = outcome;
                    let meta = outcome.map_err(|source| BenchError::Delivery {
                        delivered: result.records,
                        source,
                    })?;
                    let us = u64::try_from(Instant::now().duration_since(sent_at).as_micros())
                        .unwrap_or(u64::MAX);
                    result.latency_us.saturating_record(us.max(1));
                    result.offsets.entry(meta.partition).or_default().push(meta.offset);
                    result.records += 1;
                    result.bytes += record_bytes;
                    bar.inc(1);
                }
                msg = rx.recv(), if open => match msg {
                    Some((sent_at, handle)) => waiting.push(async move {
                        (sent_at, handle.wait_offset().await)
                    }),
                    None => open = false,
                },
            }
        }
        Ok::<TaskResult, BenchError>(result)
    };
    let (sent, collected) = tokio::join!(send, collect);
    let result = collected?;
    sent.map_err(|source| BenchError::Delivery {
        delivered: result.records,
        source,
    })?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_requested_size_and_varies() {
        for n in [0usize, 1, 7, 8, 1000] {
            assert_eq!(payload(n).len(), n);
        }
        let p = payload(64);
        assert!(p.iter().any(|b| *b != p[0]));
    }
}
