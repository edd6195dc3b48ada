//! Bad input gets its error (or its connection closed) and everyone else keeps working.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{Admin, Connection, Producer, ProducerConfig, ProducerRecord};
use streamhouse_testing::{record_batch, temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

/// Sends one partition's records raw and returns the partition's error code.
async fn produce_raw(conn: &Connection, topic: &str, partition: i32, records: Bytes) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let response = conn.send(request).await.expect("produce response");
    response.responses[0].partition_responses[0].error_code
}

/// Proves the server still serves a well-behaved client.
async fn still_serving(producer: &Producer, expected_offset: i64) {
    let meta = producer
        .send_and_wait(ProducerRecord::new("good", Bytes::from_static(b"ok")).with_partition(0))
        .await
        .expect("a good client keeps working");
    assert_eq!(meta.offset, expected_offset);
}

fn closed_by_server(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_others_keep_working() {
    let dir = temp_dir();
    let mut server = ServerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--max-request-bytes", "2097152"],
    );
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin.create_topic("good", 1, &[]).await.unwrap();
    admin
        .create_topic(
            "small",
            1,
            &[("max.message.bytes".to_string(), "1000".to_string())],
        )
        .await
        .unwrap();
    let producer = Producer::new(&addr, ProducerConfig::default())
        .await
        .unwrap();
    still_serving(&producer, 0).await;

    let conn = Connection::connect(&addr).await.unwrap();
    let batch = record_batch(&[(None, b"v")], 1);

    // Unknown topic and partition.
    assert_eq!(
        produce_raw(&conn, "missing", 0, batch.clone()).await,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(
        produce_raw(&conn, "good", 7, batch.clone()).await,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    still_serving(&producer, 1).await;

    // Oversized records: above the topic's limit, and above the default 1 MiB one.
    let big = record_batch(&[(None, &[7u8; 4000])], 1);
    assert_eq!(
        produce_raw(&conn, "small", 0, big).await,
        10,
        "MESSAGE_TOO_LARGE"
    );
    let huge = record_batch(&[(None, &vec![7u8; 1_200_000])], 1);
    assert_eq!(
        produce_raw(&conn, "good", 0, huge).await,
        10,
        "MESSAGE_TOO_LARGE"
    );
    still_serving(&producer, 2).await;

    // A batch whose CRC does not match.
    let mut corrupt = batch.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce_raw(&conn, "good", 0, Bytes::from(corrupt)).await,
        2,
        "CORRUPT_MESSAGE"
    );
    // Bytes that are no record batch at all.
    assert_eq!(
        produce_raw(&conn, "good", 0, Bytes::from_static(b"not a record batch")).await,
        2,
        "CORRUPT_MESSAGE"
    );
    still_serving(&producer, 3).await;
    // None of the refused records used up an offset.
    assert_eq!(
        admin
            .list_offsets("good", 0, streamhouse_client::OffsetSpec::Latest)
            .await
            .unwrap(),
        4
    );

    // Garbage on the socket: the server closes that connection only.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        closed_by_server(garbage),
        "garbage frame closes the connection"
    );
    // A frame longer than --max-request-bytes.
    let mut oversized = TcpStream::connect(&addr).unwrap();
    oversized.write_all(&(3_000_000i32).to_be_bytes()).unwrap();
    assert!(
        closed_by_server(oversized),
        "oversized frame closes the connection"
    );
    // A well-framed request with an unknown API key.
    let mut unknown = TcpStream::connect(&addr).unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&12i32.to_be_bytes());
    frame.extend_from_slice(&999i16.to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes());
    unknown.write_all(&frame).unwrap();
    assert!(
        closed_by_server(unknown),
        "unknown API closes the connection"
    );
    // A truncated produce request body.
    let mut truncated = TcpStream::connect(&addr).unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&14i32.to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes()); // Produce
    frame.extend_from_slice(&7i16.to_be_bytes());
    frame.extend_from_slice(&2i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.extend_from_slice(&[0xff, 0xff, 0, 0]);
    truncated.write_all(&frame).unwrap();
    assert!(
        closed_by_server(truncated),
        "undecodable request closes the connection"
    );

    // The earlier connections and the process are unaffected.
    assert_eq!(produce_raw(&conn, "good", 0, batch.clone()).await, 0);
    still_serving(&producer, 5).await;
    assert!(server.is_running());
    let log = server.log();
    assert!(
        log.contains("closing connection"),
        "the reason is logged:\n{log}"
    );
}
