//! Process lifecycle and read-path behaviour: graceful shutdown, restart, long-poll.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{Admin, Connection, OffsetSpec, Producer, ProducerConfig, ProducerRecord};
use streamhouse_testing::{temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

/// A Fetch of partition 0 of `topic` from `offset`, waiting up to `max_wait_ms` for 1 byte.
fn fetch_request(topic: &'static str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_pending_produces_releases_leases_and_exits_0() {
    let dir = temp_dir();
    // A long flush interval: records are still pending when SIGTERM arrives.
    let mut server =
        ServerProcess::start(Path::new(BIN), dir.path(), &["--flush-interval-ms", "3000"]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("t", 2, &[]).await.unwrap();
    let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..100 {
        let record = ProducerRecord::new("t", Bytes::from(format!("v{i}"))).with_partition(i % 2);
        handles.push(producer.send(record).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown flushed without waiting for the interval"
    );
    let mut offsets = [Vec::new(), Vec::new()];
    for h in handles {
        let meta = h
            .wait_offset()
            .await
            .expect("pending produce answered before exit");
        offsets[usize::try_from(meta.partition).unwrap()].push(meta.offset);
    }
    for o in &mut offsets {
        o.sort_unstable();
        assert_eq!(*o, (0..50).collect::<Vec<i64>>());
    }

    // Leases were released, not left to expire.
    let url = format!("sqlite://{}/metadata.db", dir.path().display());
    let store = streamhouse_metadata::open(&url).await.unwrap();
    for p in store.list_partitions("t").await.unwrap() {
        assert!(
            p.lease.is_none(),
            "lease of {} still held after shutdown",
            p.tp
        );
        assert_eq!(p.high_watermark.0, 50);
    }
    drop(store);

    server.restart();
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    assert_eq!(
        admin
            .list_offsets("t", 1, OffsetSpec::Latest)
            .await
            .unwrap(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_commit_not_on_timeout() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("t", 1, &[]).await.unwrap();
    let conn = Connection::connect(&server.kafka_addr).await.unwrap();
    let fetch = fetch_request("t", 0, 10_000);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { conn.send(fetch).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
        .await
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", Bytes::from_static(b"wake")))
        .await
        .unwrap();
    let response = waiting.await.unwrap().unwrap();
    let elapsed = started.elapsed();
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 1);
    assert!(partition.records.as_ref().is_some_and(|r| !r.is_empty()));
    assert!(
        elapsed < Duration::from_secs(2),
        "fetch returned after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(400),
        "fetch waited for data: {elapsed:?}"
    );

    // With nothing new it waits max_wait_ms and returns empty.
    let conn = Connection::connect(&server.kafka_addr).await.unwrap();
    let started = Instant::now();
    let response = conn.send(fetch_request("t", 1, 300)).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
    let records = response.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    assert!(records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_answers_with_kafka_error_codes() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("orders", 3, &[]).await.unwrap();
    let code = |r: Result<(), streamhouse_client::ClientError>| r.unwrap_err().kafka_code();
    assert_eq!(
        code(admin.create_topic("orders", 1, &[]).await),
        Some(36),
        "TOPIC_ALREADY_EXISTS"
    );
    assert_eq!(
        code(admin.create_topic("bad name", 1, &[]).await),
        Some(17),
        "INVALID_TOPIC_EXCEPTION"
    );
    // (A partition count below 1 is refused by the client before it is sent; the agent's
    // own check is covered in the agent's tests.)
    let bad_config = [("segment.bytes".to_string(), "1".to_string())];
    assert_eq!(
        code(admin.create_topic("cfg", 1, &bad_config).await),
        Some(40),
        "INVALID_CONFIG"
    );
    assert_eq!(
        code(admin.delete_topic("missing").await),
        Some(3),
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let described = admin.describe_topic("orders").await.unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert!(described
        .partitions
        .iter()
        .all(|p| p.leader_node_id >= 0 && p.high_watermark == 0));
    admin.delete_topic("orders").await.unwrap();
    assert!(admin
        .list_topics()
        .await
        .unwrap()
        .iter()
        .all(|t| t.name != "orders"));
    // A topic created again under the same name starts at offset 0.
    admin.create_topic("orders", 1, &[]).await.unwrap();
    let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
        .await
        .unwrap();
    let meta = producer
        .send_and_wait(ProducerRecord::new("orders", Bytes::from_static(b"again")))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0);
}
