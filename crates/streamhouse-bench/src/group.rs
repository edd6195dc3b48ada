//! The group-consume benchmark: N members of one consumer group read a whole topic between
//! them, and every partition's offsets must arrive exactly once and without gaps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use streamhouse_client::{Admin, AutoOffsetReset, ClientError, Consumer, ConsumerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::checker::OffsetChecker;
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::progress;
use crate::report::{latency_histogram, BenchKind, BenchReport};

/// Give up when no record arrived for this long (joining the group included).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One poll's records as (partition, offset, payload bytes).
type Polled = Vec<(i32, i64, u64)>;

/// A group id no earlier run used, so the group starts with no committed offsets.
pub(crate) fn fresh_group_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
}

/// Reads every record `cfg.topic` holds when the run starts with `cfg.consumers` members of
/// one new consumer group (auto offset reset earliest), and checks that, per partition, the
/// offsets from the log start to the high watermark were each read exactly once.
///
/// Throughput is measured from the first record received (after the group formed) to the
/// last; latency is per `poll` round.
pub async fn run_group_consume(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Setup { what, source }
    };
    let admin = Admin::connect(&cfg.bootstrap)
        .await
        .map_err(setup("connect admin"))?;
    let topic = admin
        .describe_topic(&cfg.topic)
        .await
        .map_err(setup("describe topic"))?;
    let mut checker = OffsetChecker::new();
    let mut ends = Vec::new();
    let mut target = 0u64;
    for p in &topic.partitions {
        checker.start(p.partition, p.log_start_offset);
        ends.push((p.partition, p.high_watermark));
        let n = p.high_watermark.saturating_sub(p.log_start_offset).max(0);
        target = target.saturating_add(u64::try_from(n).unwrap_or(0));
    }
    if target == 0 {
        return Err(BenchError::InvalidConfig(format!(
            "topic {} is empty; produce first",
            cfg.topic
        )));
    }

    let group = fresh_group_id("streamhouse-bench-group");
    let done = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Polled>();
    let mut tasks = Vec::with_capacity(cfg.consumers);
    for _ in 0..cfg.consumers {
        let config = ConsumerConfig {
            group_id: Some(group.clone()),
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(&cfg.bootstrap, config)
            .await
            .map_err(setup("connect consumer"))?;
        consumer
            .subscribe(&[&cfg.topic], None)
            .map_err(setup("subscribe"))?;
        tasks.push(tokio::spawn(member(consumer, tx.clone(), done.clone())));
    }
    drop(tx);

    let bar = progress::bar(cfg.progress, target, "group-consume");
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut failure = None;
    while received < target {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(polled)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last_progress = now;
                let n = u64::try_from(polled.len()).unwrap_or(u64::MAX);
                for (partition, offset, len) in polled {
                    checker.record(partition, offset);
                    bytes = bytes.saturating_add(len);
                }
                received = received.saturating_add(n);
                bar.inc(n);
            }
            // Every member stopped: one of them failed.
            Ok(None) => break,
            Err(_) => {
                let idle = last_progress.elapsed();
                if idle >= STALL_TIMEOUT {
                    failure = Some(BenchError::Stalled {
                        read: received,
                        expected: target,
                        idle,
                    });
                    break;
                }
            }
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    done.store(true, Ordering::Relaxed);
    bar.finish_and_clear();

    let mut latency_us = latency_histogram();
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = latency_us.add(&h);
            }
            Ok(Err(source)) => {
                failure.get_or_insert(BenchError::Fetch {
                    read: received,
                    source,
                });
            }
            Err(e) => {
                failure.get_or_insert(BenchError::Task(e.to_string()));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Gaps and duplicates, plus partitions that did not reach their high watermark.
    let short = ends
        .iter()
        .filter(|(p, end)| checker.next_offset(*p).is_none_or(|next| next < *end))
        .count();
    let offset_errors = checker
        .errors()
        .saturating_add(u64::try_from(short).unwrap_or(u64::MAX));
    Ok(BenchReport::new(
        BenchKind::GroupConsume,
        received,
        bytes,
        elapsed,
        &latency_us,
        offset_errors,
    ))
}

/// One group member: polls until told to stop, sends what it read, then leaves the group.
async fn member(
    mut consumer: Consumer,
    tx: mpsc::UnboundedSender<Polled>,
    done: Arc<AtomicBool>,
) -> Result<Histogram<u64>, ClientError> {
    let mut latency_us = latency_histogram();
    while !done.load(Ordering::Relaxed) {
        let polled_at = Instant::now();
        let records = consumer.poll(Duration::from_millis(200)).await?;
        if records.is_empty() {
            continue;
        }
        let us = u64::try_from(polled_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(us.max(1));
        let polled: Polled = records
            .iter()
            .map(|r| {
                let len =
                    r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
                (
                    r.partition,
                    r.offset,
                    u64::try_from(len).unwrap_or(u64::MAX),
                )
            })
            .collect();
        if tx.send(polled).is_err() {
            break;
        }
    }
    // Leaving promptly is a courtesy to the coordinator; the run's numbers are in.
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
    Ok(latency_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_fresh() {
        let a = fresh_group_id("g");
        std::thread::sleep(Duration::from_millis(1));
        let b = fresh_group_id("g");
        assert!(a.starts_with("g-"));
        assert_ne!(a, b);
    }
}
