//! Topic administration over the wire: configs (described, altered, enforced), partition
//! increases, DeleteRecords, DescribeCluster.

use std::path::Path;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, DeleteRecordsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{
    Admin, ClientError, Connection, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
};
use streamhouse_testing::{temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

async fn describe(conn: &Connection, topic: &str) -> Vec<(String, String, i8)> {
    let response = conn
        .send(DescribeConfigsRequest::default().with_resources(
            vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configuration_keys(None)],
        ))
        .await
        .unwrap();
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    result
        .configs
        .iter()
        .map(|c| {
            (
                c.name.as_str().to_string(),
                c.value
                    .as_ref()
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                c.config_source,
            )
        })
        .collect()
}

async fn alter(conn: &Connection, topic: &str, ops: &[(&str, i8, &str)]) -> i16 {
    let response = conn
        .send(IncrementalAlterConfigsRequest::default().with_resources(
            vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configs(
                ops.iter()
                    .map(|(name, op, value)| {
                        AlterableConfig::default()
                            .with_name(s(name))
                            .with_config_operation(*op)
                            .with_value(Some(s(value)))
                    })
                    .collect(),
            )],
        ))
        .await
        .unwrap();
    response.responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_partitions_and_delete_records() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin
        .create_topic(
            "t",
            1,
            &[("max.message.bytes".to_string(), "5000".to_string())],
        )
        .await
        .unwrap();
    let conn = Connection::connect(&addr).await.unwrap();

    // Described: the explicit config as dynamic (1), the rest as defaults (5).
    let configs = describe(&conn, "t").await;
    assert!(configs.contains(&("max.message.bytes".into(), "5000".into(), 1)));
    assert!(configs.contains(&("message.timestamp.type".into(), "CreateTime".into(), 5)));

    // Altered, and enforced at once: a 3000-byte record fits 5000 but not 2000.
    let producer = Producer::new(&addr, ProducerConfig::default())
        .await
        .unwrap();
    let big = || ProducerRecord::new("t", Bytes::from(vec![b'x'; 3000])).with_partition(0);
    producer.send_and_wait(big()).await.unwrap();
    assert_eq!(
        alter(&conn, "t", &[("max.message.bytes", 0, "2000")]).await,
        0
    );
    assert!(describe(&conn, "t")
        .await
        .contains(&("max.message.bytes".into(), "2000".into(), 1)));
    let refused = producer.send_and_wait(big()).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Kafka { code: 10, .. }),
        "{refused:?}"
    );
    assert_eq!(
        alter(&conn, "t", &[("segment.bytes", 0, "1")]).await,
        40,
        "INVALID_CONFIG"
    );
    assert_eq!(
        alter(&conn, "t", &[("max.message.bytes", 0, "lots")]).await,
        40
    );
    assert_eq!(
        alter(&conn, "missing", &[("max.message.bytes", 0, "1")]).await,
        3
    );
    // Deleting a config goes back to the default.
    assert_eq!(alter(&conn, "t", &[("max.message.bytes", 1, "")]).await, 0);
    assert!(describe(&conn, "t").await.contains(&(
        "max.message.bytes".into(),
        "1048588".into(),
        5
    )));

    // More partitions, led and writable at once.
    let response = conn
        .send(
            CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_count(3)]),
        )
        .await
        .unwrap();
    assert_eq!(response.results[0].error_code, 0);
    // (A fresh producer: the first one cached the old partition count.)
    let producer = Producer::new(&addr, ProducerConfig::default())
        .await
        .unwrap();
    let meta = producer
        .send_and_wait(ProducerRecord::new("t", Bytes::from_static(b"new")).with_partition(2))
        .await
        .unwrap();
    assert_eq!((meta.partition, meta.offset), (2, 0));
    let response = conn
        .send(
            CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_count(2)]),
        )
        .await
        .unwrap();
    assert_eq!(response.results[0].error_code, 37, "INVALID_PARTITIONS");

    // DeleteRecords moves the log start; earlier offsets are out of range.
    for i in 0..4 {
        producer
            .send_and_wait(ProducerRecord::new("t", Bytes::from(format!("r{i}"))).with_partition(0))
            .await
            .unwrap();
    }
    let delete = |offset: i64| {
        DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(offset)])])
    };
    let response = conn.send(delete(3)).await.unwrap();
    let result = &response.topics[0].partitions[0];
    assert_eq!((result.error_code, result.low_watermark), (0, 3));
    assert_eq!(
        admin
            .list_offsets("t", 0, OffsetSpec::Earliest)
            .await
            .unwrap(),
        3
    );
    let response = conn.send(delete(99)).await.unwrap();
    assert_eq!(
        response.topics[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE"
    );
    let response = conn.send(delete(-1)).await.unwrap();
    assert_eq!(
        response.topics[0].partitions[0].low_watermark, 5,
        "-1 means the high watermark"
    );

    let cluster = conn.send(DescribeClusterRequest::default()).await.unwrap();
    assert_eq!(cluster.cluster_id.as_str(), "streamhouse");
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(
        format!(
            "{}:{}",
            cluster.brokers[0].host.as_str(),
            cluster.brokers[0].port
        ),
        addr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_reports_where_each_lease_epoch_ended() {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::OffsetForLeaderEpochRequest;

    let dir = temp_dir();
    let mut server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    Admin::connect(&server.kafka_addr)
        .await
        .unwrap()
        .create_topic("t", 1, &[])
        .await
        .unwrap();
    let produce = |addr: String, n: usize| async move {
        let producer = Producer::new(&addr, ProducerConfig::default())
            .await
            .unwrap();
        for i in 0..n {
            producer
                .send_and_wait(
                    ProducerRecord::new("t", Bytes::from(format!("v{i}"))).with_partition(0),
                )
                .await
                .unwrap();
        }
    };
    let ask = |addr: String, current: i32, epoch: i32| async move {
        let conn = Connection::connect(&addr).await.unwrap();
        let response = conn
            .send(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id((-1).into())
                    .with_topics(vec![OffsetForLeaderTopic::default()
                        .with_topic(TopicName(s("t")))
                        .with_partitions(vec![OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(current)
                            .with_leader_epoch(epoch)])]),
            )
            .await
            .unwrap();
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    // First incarnation leads at epoch 1 and writes 0..3.
    produce(server.kafka_addr.clone(), 3).await;
    assert_eq!(ask(server.kafka_addr.clone(), 1, 1).await, (0, 1, 3));
    assert_eq!(
        ask(server.kafka_addr.clone(), 0, 1).await.0,
        74,
        "FENCED_LEADER_EPOCH"
    );
    assert_eq!(
        ask(server.kafka_addr.clone(), 9, 1).await.0,
        75,
        "UNKNOWN_LEADER_EPOCH"
    );
    // A restart acquires the lease again at epoch 2, which writes 3..5.
    server.kill9();
    server.restart();
    produce(server.kafka_addr.clone(), 2).await;
    assert_eq!(
        ask(server.kafka_addr.clone(), -1, 1).await,
        (0, 1, 3),
        "epoch 1 ended at 3"
    );
    assert_eq!(ask(server.kafka_addr.clone(), -1, 2).await, (0, 2, 5));
    assert_eq!(
        ask(server.kafka_addr.clone(), -1, 7).await,
        (0, 2, 5),
        "later epochs: the current one"
    );
}

/// Every Metadata and DescribeCluster version encodes: fields a version lacks (the broker's
/// rack before Metadata v1) are left out rather than breaking the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metadata_and_describe_cluster_version_answers() {
    use kafka_protocol::messages::MetadataRequest;
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &["--agent-group", "east"]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("versions", 2, &[]).await.unwrap();
    let conn = Connection::connect(&server.kafka_addr).await.unwrap();
    for version in 0..=12 {
        // v0 asks for every topic with an empty list, later versions with none.
        let request = MetadataRequest::default().with_topics((version == 0).then(Vec::new));
        let response = conn
            .send_capped(request, version)
            .await
            .unwrap_or_else(|e| panic!("Metadata v{version}: {e}"));
        assert_eq!(response.brokers.len(), 1, "v{version}");
        let rack = response.brokers[0].rack.as_ref().map(|r| r.to_string());
        assert_eq!(
            rack,
            (version >= 1).then(|| "east".to_string()),
            "v{version}"
        );
        let topic = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == "versions"))
            .unwrap_or_else(|| panic!("Metadata v{version} lists the topic"));
        assert_eq!(topic.partitions.len(), 2, "v{version}");
    }
    for version in 0..=1 {
        let response = conn
            .send_capped(DescribeClusterRequest::default(), version)
            .await
            .unwrap_or_else(|e| panic!("DescribeCluster v{version}: {e}"));
        assert_eq!(response.brokers.len(), 1);
        let rack = response.brokers[0].rack.as_ref().map(|r| r.to_string());
        assert_eq!(rack.as_deref(), Some("east"));
    }
}
