//! The Rust client against a real server: the default (idempotent) producer writes batches
//! with a producer id and contiguous offsets, a retry after a lost Produce response is stored
//! once, and the topic-admin calls (configs, partitions, record deletion) work end to end.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{
    Admin, ClientError, ConfigSource, Connection, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use streamhouse_testing::{temp_dir, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

/// Raw Fetch of one partition from offset 0: the stored record-batch bytes.
async fn fetch_raw(addr: &str, topic: &str, partition: i32) -> Bytes {
    let conn = Connection::connect(addr).await.unwrap();
    let fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(16 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(16 << 20)])]);
    let response = conn.send(fetch).await.unwrap();
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default()
}

/// Reads `partitions` of `topic` from the start until nothing new arrives.
async fn read_all(addr: &str, topic: &str, partitions: i32) -> Vec<(i32, i64, Bytes)> {
    let mut consumer = Consumer::new(addr, ConsumerConfig::default())
        .await
        .unwrap();
    consumer
        .assign(topic, (0..partitions).collect(), OffsetSpec::Earliest)
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 3 {
        let records = consumer.poll(Duration::from_millis(300)).await.unwrap();
        if records.is_empty() {
            idle += 1;
        }
        out.extend(
            records
                .into_iter()
                .map(|r| (r.partition, r.offset, r.value.unwrap_or_default())),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_producer_is_idempotent_with_contiguous_offsets() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin.create_topic("idem", 3, &[]).await.unwrap();

    let producer = Producer::new(
        &addr,
        ProducerConfig {
            linger: Duration::from_millis(1),
            batch_size: 2048,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(producer.config().enable_idempotence);
    let identity = producer.identity().expect("idempotent by default");
    assert!(identity.producer_id >= 0);

    let n = 600usize;
    let mut handles = Vec::new();
    for i in 0..n {
        let partition = i32::try_from(i % 3).unwrap();
        let record = ProducerRecord::new("idem", format!("value-{i}")).with_partition(partition);
        handles.push(producer.send(record).await.unwrap());
    }
    let mut offsets: Vec<Vec<i64>> = vec![Vec::new(); 3];
    for h in handles {
        let meta = h.wait_offset().await.unwrap();
        offsets[usize::try_from(meta.partition).unwrap()].push(meta.offset);
    }
    for (p, got) in offsets.iter().enumerate() {
        // Per partition, in send order: 0, 1, 2, ...
        let expected: Vec<i64> = (0..i64::try_from(got.len()).unwrap()).collect();
        assert_eq!(got, &expected, "partition {p}");
    }

    // The stored batches carry our producer id and epoch, and sequences that continue
    // from batch to batch.
    for p in 0..3 {
        let bytes = fetch_raw(&addr, "idem", p).await;
        let spans = streamhouse_storage::batch::validate(&bytes).unwrap();
        assert!(spans.len() > 1, "several batches in partition {p}");
        let mut next_sequence = 0i32;
        let mut next_offset = 0i64;
        for span in spans {
            let h = span.header;
            assert_eq!(h.producer_id, identity.producer_id);
            assert_eq!(h.producer_epoch, identity.producer_epoch);
            assert_eq!(h.base_sequence, next_sequence, "partition {p}");
            assert_eq!(h.base_offset, next_offset, "partition {p}");
            next_sequence += h.last_offset_delta + 1;
            next_offset += i64::from(h.last_offset_delta) + 1;
        }
        assert_eq!(next_offset, 200);
    }
    let read = read_all(&addr, "idem", 3).await;
    assert_eq!(read.len(), n);
}

/// A TCP proxy that forwards everything except the first Produce response it sees.
struct DropFirstProduceResponse {
    addr: String,
    dropped: Arc<AtomicBool>,
}

impl DropFirstProduceResponse {
    /// Listens on a random port now; forwards to `upstream` once it is set.
    async fn bind() -> (DropFirstProduceResponse, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (
            DropFirstProduceResponse {
                addr,
                dropped: Arc::new(AtomicBool::new(false)),
            },
            listener,
        )
    }

    fn run(&self, listener: TcpListener, upstream: String) {
        let dropped = self.dropped.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let dropped = dropped.clone();
                tokio::spawn(proxy_connection(client, server, dropped));
            }
        });
    }
}

/// Reads one length-prefixed frame; `None` at EOF or on error.
async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let len = r.read_i32().await.ok()?;
    let mut frame = vec![0u8; usize::try_from(len).ok()?];
    r.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

async fn proxy_connection(client: TcpStream, server: TcpStream, dropped: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Correlation ids of Produce requests on this connection.
    let produce_ids: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let ids = produce_ids.clone();
    let upstream = tokio::spawn(async move {
        while let Some(frame) = read_frame(&mut client_read).await {
            if frame.len() >= 8 {
                let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                if api_key == ApiKey::Produce as i16 {
                    ids.lock().unwrap().insert(correlation_id);
                }
            }
            let len = i32::try_from(frame.len()).unwrap();
            if server_write.write_all(&len.to_be_bytes()).await.is_err()
                || server_write.write_all(&frame).await.is_err()
            {
                break;
            }
        }
    });
    while let Some(frame) = read_frame(&mut server_read).await {
        if frame.len() >= 4 {
            let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            let is_produce = produce_ids.lock().unwrap().remove(&correlation_id);
            if is_produce && !dropped.swap(true, Ordering::SeqCst) {
                continue; // lost on the way back
            }
        }
        let len = i32::try_from(frame.len()).unwrap();
        if client_write.write_all(&len.to_be_bytes()).await.is_err()
            || client_write.write_all(&frame).await.is_err()
        {
            break;
        }
    }
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_produce_response_is_retried_and_stored_once() {
    let dir = temp_dir();
    let (proxy, listener) = DropFirstProduceResponse::bind().await;
    // The server advertises the proxy, so every client connection goes through it.
    let server = ServerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--advertised-kafka-addr", &proxy.addr],
    );
    proxy.run(listener, server.kafka_addr.clone());
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("lossy", 1, &[]).await.unwrap();

    let producer = Producer::new(
        &proxy.addr,
        ProducerConfig {
            request_timeout: Duration::from_millis(1500),
            retry_backoff: Duration::from_millis(50),
            delivery_timeout: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let meta = producer
        .send_and_wait(ProducerRecord::new("lossy", "only-once").with_partition(0))
        .await
        .unwrap();
    assert!(
        proxy.dropped.load(Ordering::SeqCst),
        "the first response was dropped"
    );
    assert_eq!(meta.offset, 0);
    assert_eq!(
        admin
            .list_offsets("lossy", 0, OffsetSpec::Latest)
            .await
            .unwrap(),
        1,
        "high watermark: the retry was not written again"
    );
    let read = read_all(&server.kafka_addr, "lossy", 1).await;
    assert_eq!(read, vec![(0, 0, Bytes::from_static(b"only-once"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_configs_partitions_and_delete_records() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin
        .create_topic("adm", 1, &[("retention.ms".into(), "86400000".into())])
        .await
        .unwrap();

    // Configs: the one set at creation is a topic config; others are defaults.
    let configs = admin.describe_topic_configs("adm").await.unwrap();
    let get = |configs: &[streamhouse_client::ConfigEntry], name: &str| {
        configs
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {configs:?}"))
    };
    let retention = get(&configs, "retention.ms");
    assert_eq!(retention.value.as_deref(), Some("86400000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let max_bytes = get(&configs, "max.message.bytes");
    assert_eq!(max_bytes.source, ConfigSource::Default);
    assert!(
        retention.documentation.is_some(),
        "documentation requested: {retention:?}"
    );

    admin
        .alter_topic_configs(
            "adm",
            &[("max.message.bytes", Some("2048")), ("retention.ms", None)],
        )
        .await
        .unwrap();
    let configs = admin.describe_topic_configs("adm").await.unwrap();
    let max_bytes = get(&configs, "max.message.bytes");
    assert_eq!(max_bytes.value.as_deref(), Some("2048"));
    assert_eq!(max_bytes.source, ConfigSource::DynamicTopic);
    assert_eq!(get(&configs, "retention.ms").source, ConfigSource::Default);
    let err = admin
        .alter_topic_configs("adm", &[("no.such.config", Some("1"))])
        .await
        .expect_err("unknown config");
    assert!(err.kafka_code().is_some(), "{err:?}");
    let err = admin
        .describe_topic_configs("no-such-topic")
        .await
        .expect_err("unknown topic");
    assert_eq!(err.kafka_code(), Some(3), "{err:?}");

    // Partitions: grow to 3; shrinking is INVALID_PARTITIONS.
    admin.create_partitions("adm", 3).await.unwrap();
    let d = admin.describe_topic("adm").await.unwrap();
    assert_eq!(d.partitions.len(), 3);
    let err = admin
        .create_partitions("adm", 2)
        .await
        .expect_err("cannot shrink");
    assert_eq!(err.kafka_code(), Some(37), "{err:?}");
    assert!(matches!(
        admin.create_partitions("adm", 0).await,
        Err(ClientError::InvalidInput { .. })
    ));

    // Records: write 10 to the new partition 2, delete below 4.
    let producer = Producer::new(&addr, ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("adm", format!("r{i}")).with_partition(2))
            .await
            .unwrap();
    }
    assert_eq!(admin.delete_records("adm", 2, 4).await.unwrap(), 4);
    assert_eq!(
        admin
            .list_offsets("adm", 2, OffsetSpec::Earliest)
            .await
            .unwrap(),
        4
    );
    let read = read_all(&addr, "adm", 3).await;
    let offsets: Vec<i64> = read.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(offsets, (4..10).collect::<Vec<i64>>());
    // -1: everything up to the high watermark.
    assert_eq!(admin.delete_records("adm", 2, -1).await.unwrap(), 10);
    let err = admin
        .delete_records("adm", 2, 11)
        .await
        .expect_err("beyond the high watermark");
    assert_eq!(err.kafka_code(), Some(1), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_group_consume_and_end_to_end() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--group-initial-rebalance-delay-ms", "500"],
    );
    let cfg = streamhouse_bench::BenchConfig {
        bootstrap: server.kafka_addr.clone(),
        topic: "bench-groups".into(),
        partitions: 4,
        record_size: 200,
        records: 3_000,
        producers: 1,
        linger: Duration::from_millis(2),
        batch_size: 32 * 1024,
        consumers: 2,
        rate: 2_000,
        progress: false,
        ..streamhouse_bench::BenchConfig::default()
    };
    let produced = streamhouse_bench::run_produce(&cfg).await.unwrap();
    assert_eq!(produced.offset_errors, 0);
    let group = streamhouse_bench::run_group_consume(&cfg).await.unwrap();
    assert_eq!(group.records, 3_000);
    assert_eq!(group.offset_errors, 0, "every offset exactly once");

    // One second at 2000 records/s.
    let e2e = streamhouse_bench::run_end_to_end(&streamhouse_bench::BenchConfig {
        records: 2_000,
        ..cfg
    })
    .await
    .unwrap();
    let (acked, e2e) = (e2e.produce, e2e.end_to_end);
    assert_eq!(acked.records, 2_000, "{acked:?}");
    assert_eq!(acked.offset_errors, 0);
    assert!(
        acked.p50_ms > 0.0 && acked.p50_ms <= acked.max_ms,
        "{acked:?}"
    );
    assert_eq!(e2e.records, 2_000);
    assert_eq!(e2e.offset_errors, 0);
    assert!(e2e.p50_ms > 0.0 && e2e.p50_ms <= e2e.max_ms, "{e2e:?}");
    assert!(e2e.elapsed >= Duration::from_millis(900), "{e2e:?}");
}

/// A batch the broker refuses for good (here: too large for the topic) leaves a gap in its
/// partition's sequence. The producer bumps its epoch (KIP-360) and goes on: the next
/// records are stored, at the next offsets, under the same producer id and a higher epoch.
#[tokio::test]
async fn a_refused_batch_bumps_the_epoch_and_later_records_are_stored() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin
        .create_topic("bump", 1, &[("max.message.bytes".into(), "1000".into())])
        .await
        .unwrap();
    let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
        .await
        .unwrap();
    let before = producer.identity().expect("idempotent");
    let first = producer
        .send_and_wait(ProducerRecord::new("bump", Bytes::from_static(b"small")))
        .await
        .unwrap();
    assert_eq!(first.offset, 0);
    let refused = producer
        .send_and_wait(ProducerRecord::new("bump", Bytes::from(vec![b'x'; 5000])))
        .await
        .expect_err("too large for the topic");
    assert_eq!(refused.kafka_code(), Some(10), "{refused}");
    for i in 1..4 {
        let meta = producer
            .send_and_wait(ProducerRecord::new(
                "bump",
                Bytes::from(format!("after-{i}")),
            ))
            .await
            .unwrap_or_else(|e| panic!("record {i} after the refused batch: {e}"));
        assert_eq!(meta.offset, i);
    }
    let after = producer.identity().expect("idempotent");
    assert_eq!(after.producer_id, before.producer_id);
    assert_eq!(after.producer_epoch, before.producer_epoch + 1);
}
