//! The protocol server's metrics, recorded by a debugging recorder while a client connects,
//! produces and fetches through a real listener on loopback.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use metrics::{Key, Label, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_groups::{GroupConfig, GroupCoordinator};
use streamhouse_storage::ObjectStorage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Recorded = HashMap<CompositeKey, (Option<Unit>, Option<SharedString>, DebugValue)>;

/// The value the recorder holds for one metric, if it was touched.
fn value<'a>(
    recorded: &'a Recorded,
    kind: MetricKind,
    name: &'static str,
    labels: &[(&'static str, &'static str)],
) -> Option<&'a DebugValue> {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    let key = CompositeKey::new(kind, Key::from_parts(name, labels));
    recorded.get(&key).map(|(_, _, value)| value)
}

fn counter(
    recorded: &Recorded,
    name: &'static str,
    labels: &[(&'static str, &'static str)],
) -> u64 {
    match value(recorded, MetricKind::Counter, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        _ => 0,
    }
}

/// The connections gauge's change since the last snapshot (snapshots reset gauges to 0).
fn connections(snapshotter: &Snapshotter) -> f64 {
    let recorded = snapshotter.snapshot().into_hashmap();
    match value(
        &recorded,
        MetricKind::Gauge,
        "streamhouse_kafka_connections",
        &[],
    ) {
        Some(DebugValue::Gauge(g)) => g.0,
        _ => 0.0,
    }
}

#[tokio::test]
async fn requests_topics_latency_and_connections_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/metadata.db", dir.path().display());
    let metadata = streamhouse_metadata::open(&url).await.unwrap();
    let storage = ObjectStorage::open("memory://", 1 << 20).unwrap();
    let config = AgentConfig::for_tests("a", "127.0.0.1:9092");
    let agent = Agent::start(config, metadata.clone(), storage)
        .await
        .unwrap();
    agent.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
    let groups = GroupCoordinator::new(GroupConfig::default(), metadata);
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let agent_task = tokio::spawn(agent.clone().run(shutdown.clone()));
    let server = tokio::spawn(streamhouse_kafka::run(
        listener,
        agent,
        groups,
        streamhouse_kafka::ServerConfig::default(),
        shutdown.clone(),
    ));

    let conn = streamhouse_client::Connection::connect(&addr)
        .await
        .unwrap();
    let topic = || TopicName(StrBytes::from_static_str("t"));
    let records = streamhouse_testing::record_batch(&[(None, b"a"), (None, b"b")], 1);
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = conn.send(produce).await.unwrap();
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response = conn.send(fetch).await.unwrap();
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    // A long poll whose min_bytes is never met reads the partition again when it expires;
    // only the read it answers with counts.
    let long_poll = FetchRequest::default()
        .with_max_wait_ms(300)
        .with_min_bytes(1 << 20)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response = conn.send(long_poll).await.unwrap();
    assert!(response.responses[0].partitions[0]
        .records
        .as_ref()
        .is_some_and(|r| !r.is_empty()));

    let recorded = snapshotter.snapshot().into_hashmap();
    assert_eq!(
        counter(
            &recorded,
            "streamhouse_fetch_records_total",
            &[("topic", "t")]
        ),
        4,
        "two fetches of the two records, each counted once"
    );
    let requests = "streamhouse_kafka_requests_total";
    assert_eq!(counter(&recorded, requests, &[("api", "ApiVersions")]), 1);
    assert_eq!(counter(&recorded, requests, &[("api", "Produce")]), 1);
    assert_eq!(counter(&recorded, requests, &[("api", "Fetch")]), 2);
    let topic_t = [("topic", "t")];
    let produces = "streamhouse_produce_requests_total";
    assert_eq!(counter(&recorded, produces, &topic_t), 1);
    assert_eq!(
        counter(&recorded, "streamhouse_fetch_requests_total", &topic_t),
        2
    );
    let latency = "streamhouse_produce_latency_seconds";
    match value(&recorded, MetricKind::Histogram, latency, &[]) {
        // The response waited for a flush, and is timed from the request being read.
        Some(DebugValue::Histogram(seconds)) => {
            assert_eq!(seconds.len(), 1);
            assert!(seconds[0].0 > 0.0 && seconds[0].0 < 10.0, "{seconds:?}");
        }
        other => panic!("no produce latency: {other:?}"),
    }
    match value(
        &recorded,
        MetricKind::Gauge,
        "streamhouse_kafka_connections",
        &[],
    ) {
        Some(DebugValue::Gauge(open)) => assert_eq!(open.0, 1.0),
        other => panic!("no connections gauge: {other:?}"),
    }

    // Closing the connection takes it off the gauge once the server has seen it go.
    conn.close();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections(&snapshotter) != -1.0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    server.await.unwrap();
    agent_task.await.unwrap();
}
