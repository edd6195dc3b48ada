//! Idempotent-producer tests against the in-process fake broker: sequence numbering, retries
//! that keep their sequence, a lost response that must not duplicate, and config checks.

use std::time::Duration;

use anyhow::Result;
use streamhouse_client::fake_broker::{log_start, FakeBroker};
use streamhouse_client::{ClientError, Producer, ProducerConfig, ProducerRecord};

/// Topics of the fake: name → partition count.
const TOPICS: &[(&str, i32)] = &[("t", 2), ("flaky", 1), ("lossy", 1)];

fn config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(5),
        delivery_timeout: Duration::from_secs(10),
        retry_backoff: Duration::from_millis(20),
        ..ProducerConfig::default()
    }
}

fn record(topic: &str, partition: i32, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("value-{i}")).with_partition(partition)
}

/// (producer id, epoch, base sequence, record count) of the batches the fake got for a partition.
fn batches_of(fake: &FakeBroker, topic: &str, partition: i32) -> Vec<(i64, i16, i32, i32)> {
    fake.state()
        .produced_batches
        .iter()
        .filter(|b| b.0 == topic && b.1 == partition)
        .map(|b| (b.2, b.3, b.4, b.5))
        .collect()
}

#[tokio::test]
async fn sequences_number_records_per_partition() -> Result<()> {
    let fake = FakeBroker::start(TOPICS).await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    let identity = producer.identity().expect("idempotent by default");
    assert!(identity.producer_id >= 7000);
    assert_eq!(identity.producer_epoch, 0);

    // Three batches of 3, 2 and 4 records to partition 0, one of 2 to partition 1.
    let mut handles = Vec::new();
    for (partition, n) in [(0, 3usize), (0, 2), (1, 2), (0, 4)] {
        for i in 0..n {
            handles.push(producer.send(record("t", partition, i)).await?);
        }
        producer.flush().await?;
    }
    for h in handles {
        h.wait_offset().await?;
    }
    let id = identity.producer_id;
    assert_eq!(
        batches_of(&fake, "t", 0),
        vec![(id, 0, 0, 3), (id, 0, 3, 2), (id, 0, 5, 4)]
    );
    assert_eq!(batches_of(&fake, "t", 1), vec![(id, 0, 0, 2)]);
    Ok(())
}

#[tokio::test]
async fn retried_batch_keeps_its_sequence() -> Result<()> {
    let fake = FakeBroker::start(TOPICS).await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    let id = producer.identity().expect("idempotent").producer_id;
    let first = producer.send_and_wait(record("flaky", 0, 0)).await?;
    let second = producer.send_and_wait(record("flaky", 0, 1)).await?;
    assert_eq!(first.offset, log_start(0));
    assert_eq!(second.offset, log_start(0) + 1);
    // Two NOT_LEADER_OR_FOLLOWER answers, then success: three attempts of one batch, all
    // with sequence 0, then the next batch at sequence 1.
    assert_eq!(
        batches_of(&fake, "flaky", 0),
        vec![(id, 0, 0, 1), (id, 0, 0, 1), (id, 0, 0, 1), (id, 0, 1, 1)]
    );
    Ok(())
}

#[tokio::test]
async fn lost_response_is_retried_without_duplicate() -> Result<()> {
    let fake = FakeBroker::start(TOPICS).await?;
    let producer = Producer::new(
        &fake.addr,
        ProducerConfig {
            request_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await?;
    let meta = producer.send_and_wait(record("lossy", 0, 0)).await?;
    assert_eq!(meta.offset, log_start(0));
    let later = producer.send_and_wait(record("lossy", 0, 1)).await?;
    assert_eq!(later.offset, log_start(0) + 1);
    let st = fake.state();
    assert!(st.lost_responses >= 1);
    let log = st
        .logs
        .get(&("lossy".to_owned(), 0))
        .expect("lossy was written");
    // Two batches stored, although the first was sent twice.
    assert_eq!(log.0.len(), 2);
    assert_eq!(log.1, log_start(0) + 2);
    Ok(())
}

#[tokio::test]
async fn non_idempotent_batches_carry_no_producer_id() -> Result<()> {
    let fake = FakeBroker::start(TOPICS).await?;
    let producer = Producer::new(
        &fake.addr,
        ProducerConfig {
            enable_idempotence: false,
            ..config()
        },
    )
    .await?;
    assert!(producer.identity().is_none());
    producer.send_and_wait(record("t", 1, 0)).await?;
    assert_eq!(batches_of(&fake, "t", 1), vec![(-1, -1, -1, 1)]);
    assert_eq!(fake.state().producer_ids, 0);
    Ok(())
}

#[tokio::test]
async fn idempotence_needs_acks_all_and_few_in_flight() -> Result<()> {
    let fake = FakeBroker::start(TOPICS).await?;
    for (acks, max_in_flight) in [(1, 5), (0, 5), (-1, 6)] {
        let err = Producer::new(
            &fake.addr,
            ProducerConfig {
                acks,
                max_in_flight,
                ..config()
            },
        )
        .await
        .expect_err("must be rejected");
        assert!(matches!(err, ClientError::InvalidInput { .. }), "{err:?}");
        assert!(err.to_string().contains("idempotent"), "{err}");
    }
    // Without idempotence the same settings are fine.
    Producer::new(
        &fake.addr,
        ProducerConfig {
            acks: 1,
            max_in_flight: 6,
            enable_idempotence: false,
            ..config()
        },
    )
    .await?;
    Ok(())
}
