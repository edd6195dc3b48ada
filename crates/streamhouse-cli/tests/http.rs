//! The HTTP side of `streamhouse serve`: every REST endpoint with its bad-input cases, REST
//! produce interleaved with Kafka produce on one partition, the OpenAPI document, /metrics,
//! /healthz and /readyz, and the embedded console's files.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use streamhouse_client::{
    AutoOffsetReset, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};
use streamhouse_testing::{temp_dir, S3Server, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(server: &ServerProcess) -> Api {
        Api {
            base: format!("http://{}", server.http_addr),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        decode(resp).await
    }

    async fn text(&self, path: &str) -> (StatusCode, String, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            resp.status(),
            content_type,
            resp.text().await.expect("body"),
        )
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        decode(resp).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        decode(resp).await
    }

    async fn delete(&self, path: &str) -> StatusCode {
        self.http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .expect("DELETE")
            .status()
    }
}

/// The JSON body of a response (every answer of the API is JSON, errors included).
async fn decode(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.bytes().await.expect("body");
    if body.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// Asserts an error answer: status, `error.code`, and a message.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "answer: {}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "answer: {}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message in {}",
        answer.1
    );
}

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProcess) {
    let dir = temp_dir();
    let mut args = vec!["--group-initial-rebalance-delay-ms", "0"];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(BIN.as_ref(), &dir.path().join("data"), &args);
    (dir, server)
}

#[tokio::test]
async fn health_readiness_openapi_and_console() {
    let (_dir, server) = start(&[]);
    let api = Api::new(&server);

    let (status, _, body) = api.text("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api.get("/readyz").await;
        if status == StatusCode::OK {
            assert_eq!(body["ready"], true);
            assert_eq!(body["metadata_store"], true);
            assert_eq!(body["object_store"], true);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    for path in [
        "/api/v1/produce",
        "/api/v1/produce/batch",
        "/api/v1/topics",
        "/api/v1/topics/{topic}",
        "/api/v1/topics/{topic}/partitions/{partition}/messages",
        "/api/v1/agents",
        "/api/v1/groups",
        "/api/v1/groups/{group}",
        "/api/v1/cluster",
        "/api/v1/cluster/throughput",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the doc"
        );
    }
    assert!(doc["components"]["schemas"]["ProduceResult"].is_object());

    let (status, content_type, html) = api.text("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(html.contains("/assets/app.js") && html.contains("/assets/app.css"));
    let (status, content_type, js) = api.text("/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert!(js.contains("/api/v1"));
    let (status, content_type, _) = api.text("/assets/app.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/css"), "{content_type}");

    assert_error(
        &api.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn topics_are_created_described_and_deleted() {
    let (_dir, server) = start(&[]);
    let api = Api::new(&server);

    let (status, created) = api
        .post(
            "/api/v1/topics",
            &json!({"name": "orders", "partitions": 3, "configs": {"retention.ms": "3600000"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "orders");
    assert_eq!(created["agent_group"], "default");
    assert_eq!(created["configs"]["retention.ms"], "3600000");
    assert_eq!(created["partitions"].as_array().map(Vec::len), Some(3));

    assert_error(
        &api.post("/api/v1/topics", &json!({"name": "orders"})).await,
        StatusCode::CONFLICT,
        "topic_exists",
    );
    for bad in [
        json!({"name": "bad name!"}),
        json!({"name": ""}),
        json!({"name": "ok", "partitions": 0}),
        json!({"name": "ok", "partitions": 10_001}),
        json!({"name": "ok", "configs": {"no.such.config": "1"}}),
    ] {
        assert_error(
            &api.post("/api/v1/topics", &bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_topic",
        );
    }
    for malformed in [
        json!({"partitions": 1}),
        json!({"name": "ok", "partitions": "three"}),
        json!({"name": "ok", "extra": true}),
        json!([1, 2]),
    ] {
        assert_error(
            &api.post("/api/v1/topics", &malformed).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_error(
        &api.post_raw("/api/v1/topics", b"{not json".to_vec()).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // The leases were taken when the topic was created.
    let (status, topic) = api.get("/api/v1/topics/orders").await;
    assert_eq!(status, StatusCode::OK);
    for (i, p) in topic["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .enumerate()
    {
        assert_eq!(p["partition"], i);
        assert_eq!(p["high_watermark"], 0);
        assert_eq!(p["log_start_offset"], 0);
        assert!(p["leader"]["node_id"].as_i64().is_some(), "{p}");
        assert!(p["leader_epoch"].as_i64().is_some_and(|e| e >= 1), "{p}");
    }
    let (status, list) = api.get("/api/v1/topics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(list[0]["partitions"], 3);
    assert_error(
        &api.get("/api/v1/topics/nope").await,
        StatusCode::NOT_FOUND,
        "unknown_topic",
    );

    let (status, agents) = api.get("/api/v1/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agents.as_array().map(Vec::len), Some(1), "{agents}");
    assert_eq!(agents[0]["live"], true);
    assert_eq!(agents[0]["leases"], 3);
    assert_eq!(agents[0]["address"], server.kafka_addr.as_str());
    assert!(agents[0]["last_heartbeat_age_ms"]
        .as_i64()
        .is_some_and(|a| a < 15_000));

    assert_eq!(
        api.delete("/api/v1/topics/orders").await,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.get("/api/v1/topics/orders").await,
        StatusCode::NOT_FOUND,
        "unknown_topic",
    );
    assert_eq!(
        api.delete("/api/v1/topics/orders").await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn produce_then_browse_messages() {
    let (_dir, server) = start(&["--http-max-body-bytes", "65536"]);
    let api = Api::new(&server);
    let (status, _) = api
        .post(
            "/api/v1/topics",
            &json!({"name": "t", "partitions": 2, "configs": {"max.message.bytes": "2000"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, first) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "t", "partition": 1, "key": "alice", "value": "héllo",
                    "headers": [{"key": "source", "value": "web"}, {"key": "empty", "value": null}],
                    "timestamp": 1_700_000_000_000_i64}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first,
        json!({"topic": "t", "partition": 1, "offset": 0, "timestamp": 1_700_000_000_000_i64})
    );
    // Binary data as base64, and a tombstone.
    let (status, second) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "t", "partition": 1, "key": "AP8=", "value": "/wA=", "encoding": "base64"}),
        )
        .await;
    assert_eq!(
        (status, second["offset"].as_i64()),
        (StatusCode::OK, Some(1))
    );
    let (status, third) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "t", "partition": 1, "key": "alice", "value": null}),
        )
        .await;
    assert_eq!(
        (status, third["offset"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    // Without a partition, the key picks one the same way every time.
    let (_, a) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "t", "key": "k1", "value": "1"}),
        )
        .await;
    let (_, b) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "t", "key": "k1", "value": "2"}),
        )
        .await;
    assert_eq!(a["partition"], b["partition"]);
    assert_eq!(b["offset"].as_i64(), a["offset"].as_i64().map(|o| o + 1));

    let (status, page) = api
        .get("/api/v1/topics/t/partitions/1/messages?offset=0&limit=10")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["offset"], 0);
    assert_eq!(messages[0]["key"], "alice");
    assert_eq!(messages[0]["value"], "héllo");
    assert_eq!(messages[0]["timestamp"], 1_700_000_000_000_i64);
    assert_eq!(
        messages[0]["headers"],
        json!([{"key": "source", "value": "web", "encoding": "utf8"},
               {"key": "empty", "value": null, "encoding": "utf8"}])
    );
    assert_eq!(messages[1]["offset"], 1);
    assert_eq!(
        (&messages[1]["key"], &messages[1]["key_encoding"]),
        (&json!("AP8="), &json!("base64"))
    );
    assert_eq!(messages[1]["value"], "/wA=");
    assert_eq!(messages[2]["offset"], 2);
    assert_eq!(messages[2]["value"], Value::Null);
    let hw = page["high_watermark"].as_i64().expect("high watermark");
    assert_eq!(page["next_offset"], hw);
    assert_eq!(messages.len() as i64, hw);

    // Paging and starting by time.
    let (_, page) = api
        .get("/api/v1/topics/t/partitions/1/messages?offset=1&limit=1")
        .await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["messages"][0]["offset"], 1);
    assert_eq!(page["next_offset"], 2);
    let (_, page) = api
        .get("/api/v1/topics/t/partitions/1/messages?timestamp=1700000000001")
        .await;
    assert_eq!(page["messages"][0]["offset"], 1, "{page}");
    // Both: whichever starts later.
    let (_, page) = api
        .get("/api/v1/topics/t/partitions/1/messages?offset=0&timestamp=1700000000001")
        .await;
    assert_eq!(page["messages"][0]["offset"], 1, "{page}");
    let (_, page) = api
        .get("/api/v1/topics/t/partitions/1/messages?offset=2&timestamp=1700000000001")
        .await;
    assert_eq!(page["messages"][0]["offset"], 2, "{page}");

    // Bad input: each a clear error, nothing stored.
    let bad_produce = [
        (
            json!({"topic": "nope", "value": "v"}),
            StatusCode::NOT_FOUND,
            "unknown_topic",
        ),
        (
            json!({"topic": "t", "partition": 9, "value": "v"}),
            StatusCode::NOT_FOUND,
            "unknown_partition",
        ),
        (
            json!({"topic": "t", "partition": -1, "value": "v"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"topic": "t"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"topic": "t", "value": "%%", "encoding": "base64"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"topic": "t", "value": "v", "encoding": "rot13"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"topic": "t", "partition": 0, "value": "x".repeat(5000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "record_too_large",
        ),
    ];
    for (body, status, code) in bad_produce {
        assert_error(&api.post("/api/v1/produce", &body).await, status, code);
    }
    assert_error(
        &api.post_raw("/api/v1/produce", vec![b'x'; 100_000]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let bad_reads = [
        (
            "/api/v1/topics/t/partitions/1/messages?offset=99",
            StatusCode::BAD_REQUEST,
            "offset_out_of_range",
        ),
        (
            "/api/v1/topics/t/partitions/1/messages?limit=0",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/topics/t/partitions/1/messages?limit=abc",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/topics/t/partitions/7/messages",
            StatusCode::NOT_FOUND,
            "unknown_partition",
        ),
        (
            "/api/v1/topics/t/partitions/x/messages",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/topics/nope/partitions/0/messages",
            StatusCode::NOT_FOUND,
            "unknown_topic",
        ),
    ];
    for (path, status, code) in bad_reads {
        assert_error(&api.get(path).await, status, code);
    }
    let (_, page) = api.get("/api/v1/topics/t/partitions/1/messages").await;
    assert_eq!(
        page["high_watermark"], hw,
        "a refused record used an offset"
    );

    // A malformed record refuses the whole batch, before anything is sent.
    let (_, before) = api.get("/api/v1/topics/t").await;
    assert_error(
        &api.post(
            "/api/v1/produce/batch",
            &json!({"records": [{"topic": "t", "partition": 0, "value": "ok"},
                                {"topic": "t", "value": "%%", "encoding": "base64"}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let (_, after) = api.get("/api/v1/topics/t").await;
    assert_eq!(before["records"], after["records"]);

    // The batch form: contiguous offsets in order, and a per-record error.
    let mut records: Vec<Value> = (0..50)
        .map(|i| json!({"topic": "t", "partition": 0, "value": format!("b{i}")}))
        .collect();
    records.insert(10, json!({"topic": "nope", "value": "lost"}));
    let (status, batch) = api
        .post("/api/v1/produce/batch", &json!({"records": records}))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 51);
    assert_eq!(results[10]["error"]["code"], "unknown_topic");
    assert_eq!(results[10]["offset"], Value::Null);
    let offsets: Vec<i64> = results
        .iter()
        .filter(|r| r["error"].is_null())
        .map(|r| r["offset"].as_i64().expect("offset"))
        .collect();
    let p0_start = offsets[0];
    assert_eq!(offsets, (p0_start..p0_start + 50).collect::<Vec<_>>());
    let (_, page) = api
        .get(&format!(
            "/api/v1/topics/t/partitions/0/messages?offset={p0_start}&limit=50"
        ))
        .await;
    let values: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["value"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(values, (0..50).map(|i| format!("b{i}")).collect::<Vec<_>>());

    // The overview counts the records and shows the produce rate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, overview) = api.get("/api/v1/cluster").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(overview["topics"], 1);
    assert_eq!(overview["partitions"], 2);
    assert_eq!(overview["agents"], 1);
    assert_eq!(overview["live_agents"], 1);
    let (_, topic) = api.get("/api/v1/topics/t").await;
    assert_eq!(overview["records"], topic["records"]);
    assert_eq!(topic["records"], 5 + 50);
    assert!(topic["bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(
        overview["produce_records_per_sec"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{overview}"
    );
    let (_, series) = api.get("/api/v1/cluster/throughput").await;
    let produced: f64 = series["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s["produce_records_per_sec"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(produced > 0.0, "{series}");
}

/// REST produce and Kafka produce to one partition at once: one gap-free sequence of
/// offsets, and every caller's offset holds its own record.
#[tokio::test]
async fn rest_and_kafka_produce_interleave_on_one_partition() {
    let (_dir, server) = start(&[]);
    let api = std::sync::Arc::new(Api::new(&server));
    let (status, _) = api
        .post("/api/v1/topics", &json!({"name": "mix", "partitions": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut tasks = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..40 {
                let value = format!("rest-{w}-{i}");
                let (status, r) = api
                    .post("/api/v1/produce", &json!({"topic": "mix", "value": value}))
                    .await;
                assert_eq!(status, StatusCode::OK, "{r}");
                got.push((r["offset"].as_i64().expect("offset"), value));
            }
            got
        }));
    }
    let kafka = server.kafka_addr.clone();
    tasks.push(tokio::spawn(async move {
        let producer = Producer::new(&kafka, ProducerConfig::default())
            .await
            .expect("producer");
        let mut handles = Vec::new();
        for i in 0..200 {
            let value = format!("kafka-{i}");
            let handle = producer
                .send(ProducerRecord::new("mix", Bytes::from(value.clone())))
                .await
                .expect("send");
            handles.push((handle, value));
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut got = Vec::new();
        for (handle, value) in handles {
            got.push((handle.wait_offset().await.expect("ack").offset, value));
        }
        got
    }));
    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    for task in tasks {
        for (offset, value) in task.await.expect("producer task") {
            assert!(
                acked.insert(offset, value).is_none(),
                "offset {offset} given twice"
            );
        }
    }
    assert_eq!(acked.len(), 4 * 40 + 200);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (0..360).collect::<Vec<_>>(),
        "offsets are not 0..360 without gaps"
    );
    let mut stored = BTreeMap::new();
    let mut offset = 0;
    while offset < 360 {
        let (status, page) = api
            .get(&format!(
                "/api/v1/topics/mix/partitions/0/messages?offset={offset}&limit=1000"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        for m in page["messages"].as_array().expect("messages") {
            stored.insert(
                m["offset"].as_i64().expect("offset"),
                m["value"].as_str().expect("value").to_string(),
            );
        }
        offset = page["next_offset"].as_i64().expect("next offset");
    }
    assert_eq!(
        stored, acked,
        "some offset does not hold the record acknowledged at it"
    );
}

#[tokio::test]
async fn groups_show_members_and_lag_and_metrics_move() {
    let (_dir, server) = start(&[]);
    let api = Api::new(&server);
    let (status, _) = api
        .post("/api/v1/topics", &json!({"name": "g", "partitions": 2}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (_, _, before) = api.text("/metrics").await;
    let records_before = metric(
        &before,
        "streamhouse_produce_records_total",
        &[("topic", "g")],
    );
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"topic": "g", "partition": i % 2, "value": format!("v{i}")}))
        .collect();
    let (status, _) = api
        .post("/api/v1/produce/batch", &json!({"records": records}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut consumer = Consumer::new(
        &server.kafka_addr,
        ConsumerConfig {
            group_id: Some("readers".into()),
            auto_offset_reset: AutoOffsetReset::Earliest,
            enable_auto_commit: false,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    )
    .await
    .expect("consumer");
    consumer.subscribe(&["g"], None).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < 10 {
        assert!(Instant::now() < deadline, "consumed only {seen} of 10");
        seen += consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
            .len();
    }
    // Partition 0 fully read, partition 1 two records behind.
    consumer
        .commit_offsets_sync(&[("g", 0, 5), ("g", 1, 3)])
        .await
        .expect("commit");

    let (status, groups) = api.get("/api/v1/groups").await;
    assert_eq!(status, StatusCode::OK, "{groups}");
    let readers = groups
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group_id"] == "readers"))
        .unwrap_or_else(|| panic!("readers missing from {groups}"));
    assert_eq!(readers["total_lag"], 2);
    assert_eq!(readers["members"], 1);
    assert_eq!(readers["state"], "Stable");

    let (status, group) = api.get("/api/v1/groups/readers").await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(group["state"], "Stable");
    assert_eq!(group["members"].as_array().map(Vec::len), Some(1));
    let assigned: BTreeSet<i64> = group["members"][0]["assignment"]
        .as_array()
        .expect("assignment")
        .iter()
        .map(|a| a["partition"].as_i64().expect("partition"))
        .collect();
    assert_eq!(assigned, BTreeSet::from([0, 1]));
    assert_eq!(
        group["offsets"],
        json!([
            {"topic": "g", "partition": 0, "committed_offset": 5, "high_watermark": 5, "lag": 0},
            {"topic": "g", "partition": 1, "committed_offset": 3, "high_watermark": 5, "lag": 2},
        ])
    );
    assert_eq!(group["total_lag"], 2);
    assert_error(
        &api.get("/api/v1/groups/nobody").await,
        StatusCode::NOT_FOUND,
        "unknown_group",
    );

    // /metrics: Prometheus text whose counters moved with the produce.
    let (status, content_type, text) = api.text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    check_prometheus_text(&text);
    let records_after = metric(
        &text,
        "streamhouse_produce_records_total",
        &[("topic", "g")],
    );
    assert_eq!(records_after - records_before, 10.0, "{text}");
    assert!(metric(&text, "streamhouse_fetch_records_total", &[("topic", "g")]) >= 10.0);
    assert!(
        metric(
            &text,
            "streamhouse_object_store_requests_total",
            &[("op", "put")]
        ) >= 1.0
    );
    assert!(metric(&text, "streamhouse_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(
        metric(
            &text,
            "streamhouse_metadata_commit_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(metric(&text, "streamhouse_produce_latency_seconds_count", &[]) >= 1.0);
    assert_eq!(metric(&text, "streamhouse_leases_held", &[]), 2.0);
    assert_eq!(
        metric(
            &text,
            "streamhouse_consumer_group_lag",
            &[("group", "readers"), ("topic", "g"), ("partition", "1")]
        ),
        2.0
    );
    consumer.close().await.expect("close");
}

/// Checks every line of a Prometheus text exposition: comments are HELP or TYPE lines with a
/// known type, samples are `name{labels} value` with a valid name and a number.
fn check_prometheus_text(text: &str) {
    assert!(!text.trim().is_empty(), "no metrics at all");
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some("HELP") => assert!(words.next().is_some(), "{line}"),
                Some("TYPE") => {
                    assert!(words.next().is_some(), "{line}");
                    let kind = words.next().unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                }
                _ => panic!("unexpected comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
    }
}

/// The value of the sample `name{labels…}` (labels given must all match; others may be
/// present), 0 when absent.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// With the object store down, /readyz says so at once, REST produce answers with a JSON
/// error (retriable: 503, or 504 once the delivery timeout passed) and the rest of the API
/// keeps answering; once the store is back, produce goes on and nothing acknowledged is
/// lost, nothing is stored twice, and the offsets have no gap.
#[tokio::test]
async fn an_object_store_outage_is_reported_and_loses_nothing() {
    let s3_root = temp_dir();
    let mut s3 = S3Server::start(s3_root.path(), "bucket");
    let args = s3.serve_args("bucket", "http");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_dir, server) = start(&args);
    let api = Api::new(&server);
    let (status, _) = api
        .post("/api/v1/topics", &json!({"name": "o", "partitions": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, first) = api
        .post("/api/v1/produce", &json!({"topic": "o", "value": "before"}))
        .await;
    assert_eq!(
        (status, first["offset"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{first}"
    );

    s3.stop();
    let asked = Instant::now();
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        (&ready["object_store"], &ready["metadata_store"]),
        (&json!(false), &json!(true))
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "readyz took {:?}",
        asked.elapsed()
    );

    let during_body = json!({"topic": "o", "value": "during"});
    let during = api.post("/api/v1/produce", &during_body);
    let others = async {
        // Meanwhile the API answers what needs no object store.
        let (status, topics) = api.get("/api/v1/topics").await;
        assert_eq!(status, StatusCode::OK, "{topics}");
        assert_eq!(api.get("/api/v1/agents").await.0, StatusCode::OK);
    };
    let ((status, failed), ()) = tokio::join!(during, others);
    assert!(
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT].contains(&status),
        "{status}: {failed}"
    );
    assert!(["unavailable", "timeout"].contains(&failed["error"]["code"].as_str().unwrap_or("")));

    s3.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (status, body) = api
            .post("/api/v1/produce", &json!({"topic": "o", "value": "after"}))
            .await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no produce after the store came back: {body}"
        );
    };
    let (status, _) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    // The record that got an error may or may not have been written (as with any Kafka
    // producer whose delivery timed out), but at most once, and without a gap.
    let (_, page) = api
        .get("/api/v1/topics/o/partitions/0/messages?offset=0")
        .await;
    let values: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["value"].as_str().expect("value"))
        .collect();
    assert!(
        values == ["before", "after"] || values == ["before", "during", "after"],
        "{values:?}"
    );
    assert_eq!(after["offset"].as_i64(), Some(values.len() as i64 - 1));
}

/// The REST produce benchmark against a real server: every record acknowledged once, at
/// contiguous offsets, one record per request and in batches.
#[tokio::test]
async fn the_rest_produce_benchmark_checks_its_offsets() {
    let (_dir, server) = start(&[]);
    for rest_batch in [1, 50] {
        let cfg = streamhouse_bench::BenchConfig {
            http: server.http_addr.clone(),
            topic: "rest-bench".into(),
            partitions: 3,
            record_size: 100,
            records: 600,
            producers: 4,
            rest_batch,
            progress: false,
            ..streamhouse_bench::BenchConfig::default()
        };
        let report = streamhouse_bench::run_rest_produce(&cfg)
            .await
            .expect("bench");
        assert_eq!(report.records, 600);
        assert_eq!(report.bytes, 60_000);
        assert_eq!(report.offset_errors, 0, "{report:?}");
        assert!(
            report.p50_ms > 0.0 && report.p50_ms <= report.max_ms,
            "{report:?}"
        );
    }
    let api = Api::new(&server);
    let (_, topic) = api.get("/api/v1/topics/rest-bench").await;
    assert_eq!(topic["records"], 1200);
}

/// Retention in a running server: records older than `retention.ms` stop being readable at
/// the next check (the log start moves past them), newer ones stay.
#[tokio::test]
async fn retention_moves_the_log_start_of_a_running_server() {
    let (_dir, server) = start(&["--retention-check-interval-ms", "200"]);
    let api = Api::new(&server);
    let (status, _) = api
        .post(
            "/api/v1/topics",
            &json!({"name": "ret", "partitions": 1, "configs": {"retention.ms": "60000"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let old = json!({"records": [
        {"topic": "ret", "value": "old-1", "timestamp": 1_000_000_000_000_i64},
        {"topic": "ret", "value": "old-2", "timestamp": 1_000_000_000_001_i64},
    ]});
    let (status, _) = api.post("/api/v1/produce/batch", &old).await;
    assert_eq!(status, StatusCode::OK);
    let (status, fresh) = api
        .post(
            "/api/v1/produce",
            &json!({"topic": "ret", "value": "fresh"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let fresh_offset = fresh["offset"].as_i64().expect("offset");
    assert_eq!(fresh_offset, 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topic) = api.get("/api/v1/topics/ret").await;
        if topic["partitions"][0]["log_start_offset"] == fresh_offset {
            assert_eq!(topic["records"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "retention did not run: {topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_error(
        &api.get("/api/v1/topics/ret/partitions/0/messages?offset=0")
            .await,
        StatusCode::BAD_REQUEST,
        "offset_out_of_range",
    );
    let (_, page) = api.get("/api/v1/topics/ret/partitions/0/messages").await;
    assert_eq!(page["messages"][0]["value"], "fresh");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
}
