//! The consume benchmark: read a topic from the beginning until enough records arrived.

use std::time::Duration;

use streamhouse_client::{Consumer, ConsumerConfig, OffsetSpec};
use tokio::time::Instant;

use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::progress;
use crate::report::{latency_histogram, BenchKind, BenchReport};

/// Give up when no record arrived for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `cfg.records` records of `cfg.topic`, all partitions, from the earliest offset.
///
/// Latency is per fetch round (one `poll`), not per record.
pub async fn run_consume(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Setup { what, source }
    };
    let mut consumer = Consumer::new(&cfg.bootstrap, ConsumerConfig::default())
        .await
        .map_err(setup("connect consumer"))?;
    consumer
        .assign_all(&cfg.topic, OffsetSpec::Earliest)
        .await
        .map_err(setup("assign partitions"))?;

    let bar = progress::bar(cfg.progress, cfg.records, "consume");
    let mut latency_us = latency_histogram();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut last_progress = start;
    while records < cfg.records {
        let polled_at = Instant::now();
        let batch = consumer
            .poll(Duration::from_secs(1))
            .await
            .map_err(|source| BenchError::Fetch {
                read: records,
                source,
            })?;
        let now = Instant::now();
        if batch.is_empty() {
            if now.duration_since(last_progress) >= STALL_TIMEOUT {
                bar.finish_and_clear();
                return Err(BenchError::Stalled {
                    read: records,
                    expected: cfg.records,
                    idle: now.duration_since(last_progress),
                });
            }
            continue;
        }
        last_progress = now;
        let us = u64::try_from(now.duration_since(polled_at).as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(us.max(1));
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        records = records.saturating_add(n);
        for r in &batch {
            let len =
                r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
            bytes = bytes.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        }
        bar.inc(n);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(BenchReport::new(
        BenchKind::Consume,
        records,
        bytes,
        elapsed,
        &latency_us,
        0,
    ))
}
