//! The end-to-end benchmark: an open-loop producer sends at a fixed rate while a consumer-group
//! member reads; latency is from each record's scheduled send time to its arrival.
//!
//! Each value starts with a stamp: a run id (so records of other runs are ignored) and the
//! record's scheduled send time in ns since the run's clock started. Stamping the
//! *scheduled* time, not the moment `send` returned, keeps the producer's own falling behind
//! in the figures (no coordinated omission).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use streamhouse_client::{
    Admin, AutoOffsetReset, ClientError, Consumer, ConsumerConfig, DeliveryHandle, Producer,
    ProducerConfig, ProducerRecord,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::checker::OffsetChecker;
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::group::fresh_group_id;
use crate::produce::{ensure_topic, payload};
use crate::progress;
use crate::report::{latency_histogram, BenchKind, BenchReport};

/// Bytes of the stamp at the start of each value: run id (8) and send time in ns (8).
pub const STAMP_LEN: usize = 16;

/// Give up when no record of this run arrived for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the consumer may take to join its group and get positions.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How many records an open-loop sender at `rate` records/s should have sent `elapsed` into
/// the run: `floor(elapsed × rate)`.
pub fn records_due(elapsed: Duration, rate: u64) -> u64 {
    let due = elapsed.as_nanos().saturating_mul(u128::from(rate)) / 1_000_000_000;
    u64::try_from(due).unwrap_or(u64::MAX)
}

/// When record `index` is due at `rate` records/s, from the start of the run:
/// `index / rate` seconds, rounded up to the nanosecond so that
/// `records_due(scheduled_at(i)) >= i` (a sender that sleeps until then has work).
pub fn scheduled_at(index: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::MAX;
    }
    let nanos = u128::from(index)
        .saturating_mul(1_000_000_000)
        .div_ceil(u128::from(rate));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A value of `size` bytes (at least [`STAMP_LEN`]) that starts with the stamp.
pub fn stamped_value(run_id: u64, sent: Duration, filler: &Bytes, size: usize) -> Bytes {
    let size = size.max(STAMP_LEN);
    let mut out = BytesMut::with_capacity(size);
    out.put_u64(run_id);
    out.put_u64(u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX));
    let rest = size - STAMP_LEN;
    out.put_slice(&filler[..rest.min(filler.len())]);
    out.resize(size, 0);
    out.freeze()
}

/// The stamp's (run id, send time) if `value` carries one.
pub fn read_stamp(value: &[u8]) -> Option<(u64, Duration)> {
    let run = value.get(0..8)?.try_into().ok().map(u64::from_be_bytes)?;
    let sent = value.get(8..16)?.try_into().ok().map(u64::from_be_bytes)?;
    Some((run, Duration::from_nanos(sent)))
}

/// End-to-end latency in µs (at least 1): receive time minus send time, both measured from
/// the run's start; 1 if the clock seems to run backwards.
pub fn latency_us(sent: Duration, received: Duration) -> u64 {
    let us = received.saturating_sub(sent).as_micros();
    u64::try_from(us).unwrap_or(u64::MAX).max(1)
}

/// What an end-to-end run measured.
#[derive(Debug, Clone)]
pub struct EndToEndReports {
    /// The producers' side: latency from each record's scheduled send time to its
    /// acknowledgement (its offset known), offsets acknowledged checked for gaps and repeats.
    pub produce: BenchReport,
    /// The consumer's side: latency from each record's scheduled send time to its arrival.
    pub end_to_end: BenchReport,
}

/// Sends `cfg.records` records at `cfg.rate` records/s (shared by `cfg.producers` producers)
/// to `cfg.topic` while one member of a
/// new consumer group (subscribed before the first send, reading from the latest offset)
/// receives them; reports send-to-receive latency per record and the throughput seen by the
/// consumer, and the producers' acknowledgement latency. Offsets received and acknowledged
/// must be gap-free and unique per partition.
pub async fn run_end_to_end(cfg: &BenchConfig) -> Result<EndToEndReports, BenchError> {
    cfg.validate()?;
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Setup { what, source }
    };
    let admin = Admin::connect(&cfg.bootstrap)
        .await
        .map_err(setup("connect admin"))?;
    let partitions = ensure_topic(&admin, cfg).await?;

    // The consumer first: it must hold every partition, with positions, before we send.
    let mut consumer = Consumer::new(
        &cfg.bootstrap,
        ConsumerConfig {
            group_id: Some(fresh_group_id("streamhouse-bench-e2e")),
            auto_offset_reset: AutoOffsetReset::Latest,
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    )
    .await
    .map_err(setup("connect consumer"))?;
    consumer
        .subscribe(&[&cfg.topic], None)
        .map_err(setup("subscribe"))?;
    let join_deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        consumer
            .poll(Duration::from_millis(100))
            .await
            .map_err(setup("join group"))?;
        let assigned = consumer.assignment();
        let ready = i32::try_from(assigned.len()).is_ok_and(|n| n == partitions)
            && assigned
                .iter()
                .all(|(t, p)| consumer.position(t, *p).is_some());
        if ready {
            break;
        }
        if Instant::now() >= join_deadline {
            return Err(setup("join group")(ClientError::Timeout {
                operation: "consumer group assignment".to_owned(),
            }));
        }
    }

    // Where each partition's log ends: the first offset this run's acknowledgements get.
    let starts: Vec<(i32, i64)> = consumer
        .assignment()
        .iter()
        .filter_map(|(_, p)| Some((*p, consumer.position(&cfg.topic, *p)?)))
        .collect();

    // `cfg.producers` producers share the rate, so that the offered load, not one producer's
    // own ceiling, is what is measured.
    let producer_config = ProducerConfig {
        acks: cfg.acks,
        linger: cfg.linger,
        batch_size: cfg.batch_size,
        max_in_flight: cfg.max_in_flight,
        buffer_memory: cfg.buffer_memory,
        enable_idempotence: cfg.idempotence,
        ..ProducerConfig::default()
    };
    let producer_count = u64::try_from(cfg.producers.max(1)).unwrap_or(1);
    let mut producers = Vec::new();
    for _ in 0..producer_count {
        producers.push(
            Producer::new(&cfg.bootstrap, producer_config.clone())
                .await
                .map_err(setup("create producer"))?,
        );
    }

    let run_id = rand_run_id();
    let filler = payload(cfg.record_size);
    let bar = progress::bar(cfg.progress, cfg.records, "end-to-end");
    let start = Instant::now();

    // Delivery outcomes are checked in the background, as they arrive (a slow partition does
    // not hold up the others' figures); the first failure stops the run. Each record's
    // acknowledgement time minus its scheduled send time is the produce latency.
    let (handles_tx, mut handles_rx) = mpsc::unbounded_channel::<(DeliveryHandle, Duration)>();
    let (acks_tx, acks_rx) = oneshot::channel::<(Histogram<u64>, u64, u64)>();
    let deliveries = tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut acked = latency_histogram();
        let mut acked_offsets = OffsetChecker::new();
        for (partition, first_offset) in starts {
            acked_offsets.start(partition, first_offset);
        }
        let mut delivered = 0u64;
        let mut sending = true;
        loop {
            tokio::select! {
                next = handles_rx.recv(), if sending => match next {
                    Some((handle, sent)) => {
                        pending.push(async move { (handle.wait_offset().await, sent) });
                    }
                    None => sending = false,
                },
                Some((outcome, sent)) = pending.next() => {
                    let meta =
                        outcome.map_err(|source| BenchError::Delivery { delivered, source })?;
                    acked_offsets.record(meta.partition, meta.offset);
                    acked.saturating_record(latency_us(sent, start.elapsed()));
                    delivered += 1;
                }
                else => break,
            }
        }
        let _ = acks_tx.send((acked, acked_offsets.errors(), delivered));
        Ok::<u64, BenchError>(delivered)
    });
    let mut tasks = vec![Some(deliveries)];
    for (k, producer) in (0u64..).zip(producers) {
        // Producer k sends its share of the records at its share of the rate.
        let total = cfg.records / producer_count + u64::from(k < cfg.records % producer_count);
        let rate = (cfg.rate / producer_count).max(1);
        let (topic, filler, size) = (cfg.topic.clone(), filler.clone(), cfg.record_size);
        let handles_tx = handles_tx.clone();
        tasks.push(Some(tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < total {
                let due = records_due(start.elapsed(), rate).min(total);
                while sent < due {
                    let scheduled = scheduled_at(sent, rate);
                    let value = stamped_value(run_id, scheduled, &filler, size);
                    let record = ProducerRecord {
                        topic: topic.clone(),
                        value: Some(value),
                        ..ProducerRecord::default()
                    };
                    let handle =
                        producer
                            .send(record)
                            .await
                            .map_err(|source| BenchError::Delivery {
                                delivered: sent,
                                source,
                            })?;
                    if handles_tx.send((handle, scheduled)).is_err() {
                        return Ok(sent); // a delivery failed; the collector reports it
                    }
                    sent += 1;
                }
                if sent < total {
                    tokio::time::sleep_until(start + scheduled_at(sent, rate)).await;
                }
            }
            drop(handles_tx);
            let _ = producer.flush().await;
            Ok::<u64, BenchError>(sent)
        })));
    }
    drop(handles_tx);

    let mut latency = latency_histogram();
    let mut checker = OffsetChecker::new();
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut last_progress = Instant::now();
    let mut failure = None;
    while received < cfg.records {
        // A task that ended early must have failed: stop the run with its error.
        if let Some(e) = reap_failed(&mut tasks).await {
            failure = Some(e);
            break;
        }
        let records = match consumer.poll(Duration::from_millis(100)).await {
            Ok(r) => r,
            Err(source) => {
                failure = Some(BenchError::Fetch {
                    read: received,
                    source,
                });
                break;
            }
        };
        let now = start.elapsed();
        let mut n = 0u64;
        for r in &records {
            let Some((run, sent)) = r.value.as_deref().and_then(read_stamp) else {
                continue;
            };
            if run != run_id {
                continue;
            }
            latency.saturating_record(latency_us(sent, now));
            checker.record(r.partition, r.offset);
            bytes = bytes.saturating_add(u64::try_from(cfg.record_size).unwrap_or(u64::MAX));
            n += 1;
        }
        if n > 0 {
            received += n;
            bar.inc(n);
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= STALL_TIMEOUT {
            failure = Some(BenchError::Stalled {
                read: received,
                expected: cfg.records,
                idle: last_progress.elapsed(),
            });
            break;
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
    if let Some(e) = failure {
        for t in tasks.into_iter().flatten() {
            t.abort();
        }
        return Err(e);
    }
    for t in tasks.into_iter().flatten() {
        joined(t.await)?;
    }
    // The delivery task may have been reaped already: its figures come this way.
    let (acked, ack_errors, delivered) = acks_rx
        .await
        .map_err(|_| BenchError::Task("the delivery task ended without its figures".into()))?;
    let record_size = u64::try_from(cfg.record_size).unwrap_or(u64::MAX);
    Ok(EndToEndReports {
        produce: BenchReport::new(
            BenchKind::Produce,
            delivered,
            delivered.saturating_mul(record_size),
            elapsed,
            &acked,
            ack_errors,
        ),
        end_to_end: BenchReport::new(
            BenchKind::EndToEnd,
            received,
            bytes,
            elapsed,
            &latency,
            checker.errors(),
        ),
    })
}

type Task = tokio::task::JoinHandle<Result<u64, BenchError>>;

fn joined(r: Result<Result<u64, BenchError>, tokio::task::JoinError>) -> Result<u64, BenchError> {
    r.unwrap_or_else(|e| Err(BenchError::Task(e.to_string())))
}

/// Collects the tasks that have finished; returns the first one's error, if any failed.
async fn reap_failed(tasks: &mut [Option<Task>]) -> Option<BenchError> {
    for slot in tasks.iter_mut() {
        if slot.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = slot.take() {
                if let Err(e) = joined(t.await) {
                    return Some(e);
                }
            }
        }
    }
    None
}

/// A run id: wall-clock nanoseconds are unique enough between runs.
fn rand_run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_records_follow_the_rate() {
        assert_eq!(records_due(Duration::ZERO, 1000), 0);
        assert_eq!(records_due(Duration::from_millis(1), 1000), 1);
        assert_eq!(records_due(Duration::from_micros(999), 1000), 0);
        assert_eq!(records_due(Duration::from_secs(10), 50_000), 500_000);
        assert_eq!(records_due(Duration::from_millis(1500), 3), 4);
        // No overflow at absurd values.
        assert_eq!(records_due(Duration::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn schedule_inverts_due() {
        for rate in [1u64, 7, 1000, 123_457] {
            for i in [0u64, 1, 2, 99, 10_000] {
                let at = scheduled_at(i, rate);
                // Record i is due exactly at its scheduled time, not before.
                assert!(records_due(at, rate) >= i, "rate {rate} index {i}");
                if i > 0 {
                    assert!(
                        records_due(at.saturating_sub(Duration::from_nanos(1)), rate) < i,
                        "rate {rate} index {i}"
                    );
                }
            }
        }
        assert_eq!(scheduled_at(5, 1000), Duration::from_millis(5));
        assert_eq!(scheduled_at(1, 0), Duration::MAX);
    }

    #[test]
    fn stamp_round_trips_and_pads() {
        let filler = payload(100);
        let v = stamped_value(42, Duration::from_nanos(123_456_789), &filler, 64);
        assert_eq!(v.len(), 64);
        assert_eq!(
            read_stamp(&v),
            Some((42, Duration::from_nanos(123_456_789)))
        );
        // Smaller than the stamp: grown to fit it.
        assert_eq!(
            stamped_value(1, Duration::ZERO, &filler, 3).len(),
            STAMP_LEN
        );
        // Larger than the filler: zero-padded.
        assert_eq!(stamped_value(1, Duration::ZERO, &filler, 500).len(), 500);
        assert_eq!(read_stamp(b"short"), None);
    }

    #[test]
    fn latency_is_receive_minus_send() {
        assert_eq!(
            latency_us(Duration::from_millis(10), Duration::from_millis(13)),
            3000
        );
        assert_eq!(
            latency_us(Duration::from_millis(10), Duration::from_millis(9)),
            1
        );
        assert_eq!(latency_us(Duration::ZERO, Duration::from_nanos(10)), 1);
    }
}
