//! Durability: an acknowledged record survives SIGKILL at any moment.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use streamhouse_client::{Admin, OffsetSpec, Producer, ProducerConfig, ProducerRecord};
use streamhouse_testing::{read_everything, temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9() {
    let dir = temp_dir();
    let mut server =
        ServerProcess::start(Path::new(BIN), dir.path(), &["--flush-interval-ms", "3"]);
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("durable", 3, &[]).await.unwrap();

    let producer = Producer::new(
        &server.kafka_addr,
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(1),
            retries: Some(0),
            delivery_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let acked: Arc<Mutex<Vec<(i32, i64, Bytes)>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..20_000u32 {
        let value = Bytes::from(format!("record-{i}"));
        let handle = match producer
            .send(ProducerRecord::new("durable", value.clone()))
            .await
        {
            Ok(h) => h,
            Err(_) => break,
        };
        let sink = acked.clone();
        tasks.push(tokio::spawn(async move {
            if let Ok(meta) = handle.wait_offset().await {
                sink.lock()
                    .unwrap()
                    .push((meta.partition, meta.offset, value));
            }
        }));
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
        // Kill the server mid-load, while sends are still in flight.
        if acked.lock().unwrap().len() >= 3_000 {
            server.kill9();
            break;
        }
    }
    if server.is_running() {
        server.kill9();
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("acknowledged before the kill: {}", acked.len());
    assert!(
        acked.len() >= 1_000,
        "the load should have been acknowledged in part: {}",
        acked.len()
    );

    server.restart();
    let stored = read_everything(&server.kafka_addr, "durable", 3).await;
    for (partition, offset, value) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(value),
            "acknowledged record {partition}/{offset} lost or changed"
        );
    }
    // Per partition, what is stored is contiguous from 0, and production continues right after.
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    for partition in 0..3 {
        let high = admin
            .list_offsets("durable", partition, OffsetSpec::Latest)
            .await
            .unwrap();
        let count = stored.keys().filter(|(p, _)| *p == partition).count();
        assert_eq!(
            i64::try_from(count).unwrap(),
            high,
            "partition {partition} has a gap"
        );
        let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
            .await
            .unwrap();
        let meta = producer
            .send_and_wait(
                ProducerRecord::new("durable", Bytes::from_static(b"after"))
                    .with_partition(partition),
            )
            .await
            .unwrap();
        assert_eq!(
            meta.offset, high,
            "next offset after restart in partition {partition}"
        );
    }
}
