//! Client tests against the in-process fake broker (`fake_broker` module).
//!
//! The fake's partition logs start at a fixed, non-zero base, so the tests can check that
//! producer handles resolve to `base_offset + index`, that retriable errors are retried,
//! non-retriable ones surface, and the consumer reads the batches back.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataRequest, ProduceRequest, ResponseHeader,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use streamhouse_client::fake_broker::{log_start, FakeBroker};
use streamhouse_client::{
    Admin, ClientError, Connection, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Topics of the fake: name → partition count.
const TOPICS: &[(&str, i32)] = &[("t", 3), ("flaky", 1), ("bad", 1)];

async fn start_fake() -> Result<FakeBroker> {
    Ok(FakeBroker::start(TOPICS).await?)
}

/// A response frame, for the hand-rolled broker of `disconnect_fails_waiters`.
fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, key.response_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

fn config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(20),
        delivery_timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(20),
        ..ProducerConfig::default()
    }
}

fn record(topic: &str, partition: i32, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("value-{i}")).with_partition(partition)
}

#[tokio::test]
async fn connection_negotiates_and_pipelines() -> Result<()> {
    let fake = start_fake().await?;
    let conn = Connection::connect(&fake.addr).await?;
    assert_eq!(conn.version_for::<MetadataRequest>()?, 12);
    assert_eq!(conn.version_for::<ProduceRequest>()?, 9);
    let sends = (0..50).map(|_| {
        let conn = conn.clone();
        async move {
            conn.send(MetadataRequest::default().with_topics(None))
                .await
        }
    });
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp?.topics.len(), TOPICS.len());
    }
    Ok(())
}

#[tokio::test]
async fn disconnect_fails_waiters() -> Result<()> {
    // A "broker" that answers ApiVersions, then closes on the next request.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let Ok(len) = sock.read_i32().await else {
            return;
        };
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if sock.read_exact(&mut buf).await.is_err() {
            return;
        }
        let mut buf = Bytes::from(buf);
        let Ok(h) = decode_request_header_from_buffer(&mut buf) else {
            return;
        };
        let resp = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::Metadata as i16)
            .with_max_version(12)]);
        if let Ok(f) = frame(
            ApiKey::ApiVersions,
            h.request_api_version,
            h.correlation_id,
            &resp,
        ) {
            let _ = sock.write_all(&f).await;
        }
        let _ = sock.read_i32().await;
        // Drop the socket without answering.
    });
    let conn = Connection::connect(&addr).await?;
    let err = conn
        .send(MetadataRequest::default().with_topics(None))
        .await
        .expect_err("must fail");
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
    assert!(conn.is_closed());
    Ok(())
}

#[tokio::test]
async fn producer_offsets_are_base_plus_index() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push((0, i, producer.send(record("t", 0, i)).await?));
    }
    for i in 0..5 {
        handles.push((1, i, producer.send(record("t", 1, i)).await?));
    }
    producer.flush().await?;
    for (partition, i, h) in handles {
        let meta = h.wait_offset().await?;
        assert_eq!(meta.partition, partition);
        assert_eq!(meta.topic, "t");
        let i = i64::try_from(i)?;
        assert_eq!(
            meta.offset,
            log_start(partition) + i,
            "record {i} of partition {partition}"
        );
    }
    // A second round continues where the first ended.
    let meta = producer.send_and_wait(record("t", 0, 10)).await?;
    assert_eq!(meta.offset, log_start(0) + 10);
    // Both partitions' batches of the first round went out in one request.
    assert!(fake.state().produce_requests <= 2);
    Ok(())
}

#[tokio::test]
async fn keyless_records_get_contiguous_offsets_per_partition() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(
        &fake.addr,
        ProducerConfig {
            batch_size: 200,
            ..config()
        },
    )
    .await?;
    let mut handles = Vec::new();
    for i in 0..100 {
        handles.push(
            producer
                .send(ProducerRecord::new("t", format!("v{i}")))
                .await?,
        );
    }
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for h in handles {
        let m = h.wait_offset().await?;
        by_partition.entry(m.partition).or_default().push(m.offset);
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..i64::try_from(offsets.len())?)
            .map(|i| log_start(p) + i)
            .collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
    Ok(())
}

#[tokio::test]
async fn retriable_error_is_retried() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    let a = producer.send(record("flaky", 0, 0)).await?;
    let b = producer.send(record("flaky", 0, 1)).await?;
    assert_eq!(a.wait_offset().await?.offset, 1000);
    assert_eq!(b.wait_offset().await?.offset, 1001);
    let st = fake.state();
    assert_eq!(st.flaky_failures, 2);
    // NOT_LEADER_OR_FOLLOWER made the producer refresh metadata.
    assert!(
        st.metadata_requests >= 2,
        "metadata requests: {}",
        st.metadata_requests
    );
    Ok(())
}

#[tokio::test]
async fn non_retriable_error_fails_handles() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    let err = producer
        .send_and_wait(record("bad", 0, 0))
        .await
        .expect_err("must fail");
    match err {
        ClientError::Kafka { code, message } => {
            assert_eq!(code, 10);
            assert!(message.contains("MESSAGE_TOO_LARGE"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn acks_zero_resolves_without_offset() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(
        &fake.addr,
        ProducerConfig {
            acks: 0,
            enable_idempotence: false,
            ..config()
        },
    )
    .await?;
    let meta = producer.send_and_wait(record("t", 2, 0)).await?;
    assert_eq!(meta.offset, -1);
    Ok(())
}

#[tokio::test]
async fn consumer_reads_back_and_skips_before_position() -> Result<()> {
    let fake = start_fake().await?;
    let producer = Producer::new(&fake.addr, config()).await?;
    for i in 0..10 {
        producer.send(record("t", 0, i)).await?;
    }
    producer.flush().await?;

    let mut consumer = Consumer::new(&fake.addr, ConsumerConfig::default()).await?;
    consumer.assign("t", vec![0], OffsetSpec::Earliest).await?;
    assert_eq!(consumer.position("t", 0), Some(1000));
    let recs = consumer.poll(Duration::from_secs(2)).await?;
    let offsets: Vec<i64> = recs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (1000..1010).collect::<Vec<_>>());
    assert_eq!(recs[3].value.as_deref(), Some(&b"value-3"[..]));
    assert_eq!(consumer.position("t", 0), Some(1010));
    assert_eq!(consumer.high_watermark("t", 0), Some(1010));

    // The batch starts at 1000; records before the position are skipped.
    consumer.seek("t", 0, 1005);
    let recs = consumer.poll(Duration::from_secs(2)).await?;
    assert_eq!(recs.first().map(|r| r.offset), Some(1005));
    assert_eq!(recs.len(), 5);

    // Nothing new: poll times out empty.
    let recs = consumer.poll(Duration::from_millis(100)).await?;
    assert!(recs.is_empty());
    Ok(())
}

#[tokio::test]
async fn admin_reports_kafka_errors_and_describes() -> Result<()> {
    let fake = start_fake().await?;
    let admin = Admin::connect(&fake.addr).await?;
    let err = admin.create_topic("t", 3, &[]).await.expect_err("exists");
    assert_eq!(err.kafka_code(), Some(36));
    assert!(err.to_string().contains("TOPIC_ALREADY_EXISTS"));
    admin
        .create_topic("new", 2, &[("retention.ms".into(), "1000".into())])
        .await?;

    let topics = admin.list_topics().await?;
    let names: Vec<(&str, i32)> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.partitions))
        .collect();
    assert_eq!(names, vec![("bad", 1), ("flaky", 1), ("new", 2), ("t", 3)]);

    let d = admin.describe_topic("t").await?;
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(d.partitions[1].partition, 1);
    assert_eq!(d.partitions[1].leader_node_id, 1);
    assert_eq!(d.partitions[1].log_start_offset, 2000);
    assert_eq!(d.partitions[1].high_watermark, 2000);

    let missing = admin.describe_topic("nope").await.expect_err("missing");
    assert_eq!(missing.kafka_code(), Some(3));
    assert_eq!(admin.list_offsets("t", 2, OffsetSpec::Latest).await?, 3000);
    Ok(())
}
