//! `--object-store-url s3://bucket/prefix` against a real S3 server: `s3s-fs` (from
//! crates.io; `scripts/test` installs it when missing).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use streamhouse_client::{Admin, OffsetSpec, Producer, ProducerConfig, ProducerRecord};
use streamhouse_testing::{
    files_under, read_everything, temp_dir, S3Server, ServerProcess, S3_ACCESS_KEY, S3_SECRET_KEY,
};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");
const ACCESS_KEY: &str = S3_ACCESS_KEY;
const SECRET_KEY: &str = S3_SECRET_KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_s3_and_survive_kill_9() {
    let s3_root = temp_dir();
    let s3 = S3Server::start(s3_root.path(), "bucket");
    let s3_args = s3.serve_args("bucket", "prefix");
    let s3_args: Vec<&str> = s3_args.iter().map(String::as_str).collect();

    let dir = temp_dir();
    let mut server = ServerProcess::start(Path::new(BIN), dir.path(), &s3_args);
    assert!(
        !server.log().contains(SECRET_KEY),
        "the S3 secret reached the log"
    );
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic("s3topic", 2, &[]).await.unwrap();
    let producer = Producer::new(
        &server.kafka_addr,
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut acked = Vec::new();
    for round in 0..5 {
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let value = Bytes::from(format!("s3-record-{round}-{i}"));
            let handle = producer
                .send(ProducerRecord::new("s3topic", value.clone()))
                .await
                .unwrap();
            handles.push((handle, value));
        }
        for (handle, value) in handles {
            let meta = handle.wait_offset().await.unwrap();
            acked.push((meta.partition, meta.offset, value));
        }
    }
    assert_eq!(acked.len(), 1_000);

    let check = |stored: &HashMap<(i32, i64), Bytes>, when: &str| {
        assert_eq!(stored.len(), acked.len(), "records read back {when}");
        for (partition, offset, value) in &acked {
            assert_eq!(
                stored.get(&(*partition, *offset)),
                Some(value),
                "acknowledged record {partition}/{offset} lost or changed {when}"
            );
        }
    };
    check(
        &read_everything(&server.kafka_addr, "s3topic", 2).await,
        "before the kill",
    );

    // The objects are files of the bucket directory, under the prefix.
    let objects = files_under(&s3_root.path().join("bucket/prefix/data"));
    let object_files: Vec<_> = objects
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sho"))
        .collect();
    assert!(
        !object_files.is_empty(),
        "no objects under bucket/prefix/data: {objects:?}"
    );
    assert!(
        files_under(&dir.path().join("objects")).is_empty(),
        "objects were written locally instead of to S3"
    );

    // After kill -9 and a restart without a cache every read is a ranged GET from S3.
    server.kill9();
    let mut args = s3_args.clone();
    args.extend(["--cache-max-bytes", "0"]);
    let server = ServerProcess::start(Path::new(BIN), dir.path(), &args);
    check(
        &read_everything(&server.kafka_addr, "s3topic", 2).await,
        "after kill -9 and restart",
    );
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    let mut total = 0;
    for partition in 0..2 {
        total += admin
            .list_offsets("s3topic", partition, OffsetSpec::Latest)
            .await
            .unwrap();
    }
    assert_eq!(total, 1_000, "high watermarks after restart");
}

/// Create-only puts hold on S3 too (`If-None-Match: *`), and ranged gets read back.
#[tokio::test]
async fn s3_objects_are_create_only() {
    use streamhouse_storage::{ObjectStorage, S3Options, StorageError};
    let s3_root = temp_dir();
    let s3 = S3Server::start(s3_root.path(), "bucket");
    let options = S3Options {
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        allow_http: Some(true),
    };
    assert!(!format!("{options:?}").contains(SECRET_KEY));
    let storage = ObjectStorage::open_with("s3://bucket/some/prefix", 0, &options).unwrap();
    storage
        .put_new("a/b.obj", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(s3_root.path().join("bucket/some/prefix/a/b.obj")).unwrap(),
        b"hello world"
    );
    assert!(matches!(
        storage
            .put_new("a/b.obj", Bytes::from_static(b"other"))
            .await,
        Err(StorageError::AlreadyExists { .. })
    ));
    assert_eq!(
        storage.read_range("a/b.obj", 6..11).await.unwrap(),
        Bytes::from_static(b"world")
    );
    assert!(matches!(
        storage.read_range("missing", 0..1).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        ObjectStorage::open_with("s3://", 0, &options),
        Err(StorageError::UnsupportedUrl { .. })
    ));
}
