//! The idempotent producer over the wire: InitProducerId hands out ids, a batch sent twice
//! is written once and both sends hear the same offset (also across a server restart), and
//! librdkafka with `enable.idempotence=true` produces and consumes correctly.

use std::path::Path;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use streamhouse_client::{Admin, Connection, OffsetSpec};
use streamhouse_testing::{idempotent_record_batch, kcat, temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

/// Sends one partition's records raw; returns the partition's (error code, base offset).
async fn produce_raw(conn: &Connection, topic: &str, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = conn.send(request).await.expect("produce response");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn init_producer_id(
    conn: &Connection,
    current: Option<(i64, i16)>,
    transactional_id: Option<&str>,
) -> InitProducerIdResponse {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_string()))),
        )
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(id.into())
        .with_producer_epoch(epoch);
    conn.send(request).await.expect("InitProducerId response")
}

fn batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let records: Vec<(Option<&[u8]>, &[u8])> =
        values.iter().map(|v| (None, v.as_bytes())).collect();
    idempotent_record_batch(&records, 1_700_000_000_000, pid, epoch, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_is_written_once() {
    let dir = temp_dir();
    let mut server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("idem", 1, &[]).await.unwrap();
    let conn = Connection::connect(&server.kafka_addr).await.unwrap();

    let first = init_producer_id(&conn, None, None).await;
    assert_eq!(first.error_code, 0);
    assert_eq!(first.producer_epoch, 0);
    let pid = first.producer_id.0;
    assert!(pid >= 0);
    let other = init_producer_id(&conn, None, None).await;
    assert_ne!(other.producer_id.0, pid, "producer ids are unique");

    let abc = batch(pid, 0, 0, &["a", "b", "c"]);
    assert_eq!(produce_raw(&conn, "idem", abc.clone()).await, (0, 0));
    assert_eq!(produce_raw(&conn, "idem", abc.clone()).await, (0, 0));
    assert_eq!(
        admin
            .list_offsets("idem", 0, OffsetSpec::Latest)
            .await
            .unwrap(),
        3,
        "the high watermark advanced once"
    );
    assert_eq!(
        produce_raw(&conn, "idem", batch(pid, 0, 3, &["d"])).await,
        (0, 3)
    );

    // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER. A stale epoch: INVALID_PRODUCER_EPOCH.
    assert_eq!(
        produce_raw(&conn, "idem", batch(pid, 0, 9, &["gap"]))
            .await
            .0,
        45
    );
    let bumped = init_producer_id(&conn, Some((pid, 0)), None).await;
    assert_eq!(
        (
            bumped.error_code,
            bumped.producer_id.0,
            bumped.producer_epoch
        ),
        (0, pid, 1)
    );
    assert_eq!(
        produce_raw(&conn, "idem", batch(pid, 1, 0, &["e"])).await,
        (0, 4)
    );
    assert_eq!(
        produce_raw(&conn, "idem", batch(pid, 0, 4, &["zombie"]))
            .await
            .0,
        47
    );
    // The fenced incarnation cannot bump the epoch either (PRODUCER_FENCED from v4).
    assert_eq!(
        init_producer_id(&conn, Some((pid, 0)), None)
            .await
            .error_code,
        90
    );
    // Transactions are not served.
    assert_eq!(
        init_producer_id(&conn, None, Some("tx")).await.error_code,
        53,
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
    );

    // After SIGKILL and restart the retry is still recognized.
    drop(conn);
    server.kill9();
    server.restart();
    let conn = Connection::connect(&server.kafka_addr).await.unwrap();
    assert_eq!(
        produce_raw(&conn, "idem", batch(pid, 1, 0, &["e"])).await,
        (0, 4)
    );
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    assert_eq!(
        admin
            .list_offsets("idem", 0, OffsetSpec::Latest)
            .await
            .unwrap(),
        5
    );
    let next = init_producer_id(&conn, None, None).await;
    assert!(
        next.producer_id.0 > other.producer_id.0,
        "ids are not reused after a restart"
    );
}

#[test]
fn kcat_with_enable_idempotence_produces_and_consumes() {
    let dir = temp_dir();
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &[]);
    let addr = server.kafka_addr.as_str();
    let created = std::process::Command::new(BIN)
        .args([
            "topic",
            "create",
            "idem-kcat",
            "--partitions",
            "1",
            "-b",
            addr,
        ])
        .output()
        .expect("run streamhouse topic create");
    assert!(created.status.success(), "{created:?}");
    let n = 2_000;
    let input: String = (0..n).map(|i| format!("value-{i}\n")).collect();
    kcat(
        &[
            "-P",
            "-b",
            addr,
            "-t",
            "idem-kcat",
            "-p",
            "0",
            "-X",
            "enable.idempotence=true",
            "-X",
            "topic.metadata.refresh.interval.ms=1000",
        ],
        input.as_bytes(),
    );
    let out = kcat(
        &[
            "-C",
            "-b",
            addr,
            "-t",
            "idem-kcat",
            "-p",
            "0",
            "-e",
            "-o",
            "beginning",
            "-f",
            "%o %s\n",
        ],
        b"",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), n, "every record once");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{i} value-{i}"));
    }
    // The stored batches carry librdkafka's producer id: idempotence was really on.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer_ids = rt.block_on(async {
        let conn = Connection::connect(addr).await.unwrap();
        let fetch = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("idem-kcat")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let response = conn.send(fetch).await.unwrap();
        let mut records = response.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default();
        let mut ids = Vec::new();
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            ids.extend(set.records.iter().map(|r| r.producer_id));
        }
        ids
    });
    assert!(!producer_ids.is_empty());
    assert!(producer_ids.iter().all(|id| *id >= 0), "{producer_ids:?}");
    assert!(
        !server.log().contains("UNKNOWN_SERVER_ERROR"),
        "{}",
        server.log()
    );
}
