//! Runs the produce and consume benchmarks end to end against the client's fake broker.

use std::time::Duration;

use anyhow::Result;
use streamhouse_bench::{run_consume, run_produce, BenchConfig, BenchError, BenchKind};
use streamhouse_client::fake_broker::FakeBroker;

fn config(addr: &str, topic: &str) -> BenchConfig {
    BenchConfig {
        bootstrap: addr.to_owned(),
        topic: topic.to_owned(),
        partitions: 4,
        record_size: 100,
        records: 2_003,
        producers: 2,
        linger: Duration::from_millis(2),
        batch_size: 16 * 1024,
        progress: false,
        ..BenchConfig::default()
    }
}

#[tokio::test]
async fn produce_then_consume() -> Result<()> {
    let fake = FakeBroker::start(&[]).await?;
    let cfg = config(&fake.addr, "bench");

    let report = run_produce(&cfg).await?;
    assert_eq!(report.kind, BenchKind::Produce);
    assert_eq!(report.records, 2_003);
    assert_eq!(report.bytes, 200_300);
    assert_eq!(report.offset_errors, 0);
    assert!(report.records_per_sec > 0.0);
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.max_ms);
    assert_eq!(fake.state().topics.get("bench"), Some(&4));

    // A second run on the existing topic continues its offsets without errors.
    let again = run_produce(&BenchConfig {
        records: 500,
        ..cfg.clone()
    })
    .await?;
    assert_eq!(again.offset_errors, 0);

    let consumed = run_consume(&BenchConfig {
        records: 2_503,
        ..cfg
    })
    .await?;
    assert_eq!(consumed.kind, BenchKind::Consume);
    assert_eq!(consumed.records, 2_503);
    assert_eq!(consumed.bytes, 250_300);
    assert!(consumed.to_json().contains("\"kind\":\"consume\""));
    Ok(())
}

#[tokio::test]
async fn acks_zero_skips_offset_checks() -> Result<()> {
    let fake = FakeBroker::start(&[]).await?;
    let cfg = BenchConfig {
        acks: 0,
        idempotence: false,
        producers: 1,
        ..config(&fake.addr, "fire")
    };
    let report = run_produce(&cfg).await?;
    assert_eq!(report.records, 2_003);
    assert_eq!(report.offset_errors, 0);
    Ok(())
}

#[tokio::test]
async fn delivery_failure_stops_the_run() -> Result<()> {
    // The fake rejects every produce to "bad" with MESSAGE_TOO_LARGE.
    let fake = FakeBroker::start(&[("bad", 1)]).await?;
    let err = run_produce(&config(&fake.addr, "bad"))
        .await
        .expect_err("must fail");
    match err {
        BenchError::Delivery { source, .. } => assert_eq!(source.kafka_code(), Some(10)),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let cfg = BenchConfig {
        records: 0,
        ..BenchConfig::default()
    };
    assert!(matches!(
        run_produce(&cfg).await,
        Err(BenchError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn produce_is_idempotent_by_default() -> Result<()> {
    let fake = FakeBroker::start(&[]).await?;
    let report = run_produce(&config(&fake.addr, "idem")).await?;
    assert_eq!(report.offset_errors, 0);
    let st = fake.state();
    assert!(!st.produced_batches.is_empty());
    assert!(st.produced_batches.iter().all(|b| b.2 >= 0), "producer ids");
    assert_eq!(st.producer_ids, 2, "one producer id per producer");
    Ok(())
}

#[test]
fn idempotence_needs_acks_all() {
    let cfg = BenchConfig {
        acks: 1,
        ..BenchConfig::default()
    };
    assert!(matches!(cfg.validate(), Err(BenchError::InvalidConfig(_))));
    let cfg = BenchConfig {
        acks: 1,
        idempotence: false,
        ..BenchConfig::default()
    };
    assert!(cfg.validate().is_ok());
}
