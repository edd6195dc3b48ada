//! Store outages under load: two agents on one PostgreSQL schema and one S3 server keep
//! serving while the database drops every connection (`pg_terminate_backend`, several times
//! over) and while the S3 server is down and then back. Produce hears only retriable errors
//! meanwhile and never hangs, succeeds again afterwards without any agent being restarted
//! (same processes, same leases), and no acknowledged record is lost, moved or written twice.
//!
//! The load is twofold:
//! - one raw idempotent producer per partition, which sends one batch at a time and resends
//!   the very same batch (same producer id and sequence) after any failure, so that every
//!   error code the agents answer is seen and counted, and a retry of a batch that did land
//!   is recognized instead of written again;
//! - the client library's [`Producer`] (acks = -1, idempotent, internal retries), which must
//!   ride through both outages without a single failed delivery.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    InitProducerIdRequest, MetadataRequest, ProduceRequest, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::error::{is_retriable_code, kafka_error_name};
use streamhouse_client::{
    Admin, ClientError, Connection, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
};
use streamhouse_testing::{
    idempotent_record_batch, read_everything, temp_dir, PostgresSchema, S3Server, ServerProcess,
};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");
const TOPIC: &str = "outages";
const PARTITIONS: i32 = 4;
/// Records per raw batch.
const RAW_BATCH: i32 = 5;
/// Records per round of the client producer.
const CLIENT_ROUND: usize = 20;
/// Longest a single produce attempt may take before the test calls it hung.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(20);
/// How long produce may take to succeed again on every partition after the S3 restart.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// How long produce may keep waiting (rather than failing) while S3 is down.
const S3_FAILURE_LIMIT: Duration = Duration::from_secs(20);

/// What the load is going through, for tagging errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Normal = 0,
    PostgresDrops = 1,
    S3Down = 2,
    Recovering = 3,
    Draining = 4,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Normal,
            1 => Phase::PostgresDrops,
            2 => Phase::S3Down,
            3 => Phase::Recovering,
            _ => Phase::Draining,
        }
    }
}

#[derive(Debug, Clone)]
struct Ack {
    partition: i32,
    offset: i64,
    value: Bytes,
    /// When the successful attempt was sent, and when its answer came.
    sent: Instant,
    acked: Instant,
    raw: bool,
}

#[derive(Debug, Clone)]
struct Failure {
    partition: i32,
    /// The Kafka error code, or `None` for a client-side failure (connection, timeout).
    code: Option<i16>,
    what: String,
    retriable: bool,
    phase: Phase,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// Failed raw produce attempts (each one was retried with the same batch).
    failures: Vec<Failure>,
    /// Failed metadata look-ups of the raw producers (retried).
    lookup_failures: usize,
    /// Deliveries the client producer gave up on: there must be none.
    client_failures: Vec<String>,
    longest_attempt: Duration,
}

struct Shared {
    log: Mutex<Log>,
    phase: AtomicU8,
    stop: AtomicBool,
    /// Agents' Kafka addresses, for bootstrapping.
    agents: Vec<String>,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn fail(&self, partition: i32, code: Option<i16>, what: String, retriable: bool) {
        let phase = self.phase();
        self.log().failures.push(Failure {
            partition,
            code,
            what,
            retriable,
            phase,
        });
    }
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_string(TOPIC.to_string()))
}

/// The address of the current leader of `partition`, asked of the agents in turn.
async fn leader_of(shared: &Shared, partition: i32) -> Option<String> {
    for addr in &shared.agents {
        let Ok(conn) = Connection::connect_with_timeout(addr, Duration::from_secs(5)).await else {
            continue;
        };
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name())),
        ]));
        let Ok(response) = conn.send(request).await else {
            continue;
        };
        let leader = response
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition && p.error_code == 0)
            .map(|p| p.leader_id);
        let Some(leader) = leader.filter(|l| l.0 >= 0) else {
            continue;
        };
        if let Some(b) = response.brokers.iter().find(|b| b.node_id == leader) {
            return Some(format!("{}:{}", b.host.as_str(), b.port));
        }
    }
    None
}

async fn init_producer_id(addr: &str) -> (i64, i16) {
    let conn = Connection::connect(addr).await.expect("connect");
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = conn.send(request).await.expect("InitProducerId");
    assert_eq!(response.error_code, 0, "InitProducerId failed");
    (response.producer_id.0, response.producer_epoch)
}

/// One partition's raw idempotent producer: batch after batch of unique values, each batch
/// resent unchanged until it is acknowledged. Stops after the batch in hand once `stop` is
/// set.
async fn raw_producer(shared: Arc<Shared>, partition: i32, producer: (i64, i16)) {
    let (producer_id, producer_epoch) = producer;
    let mut sequence = 0i32;
    let mut conn: Option<Connection> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let values: Vec<String> = (0..RAW_BATCH)
            .map(|i| format!("raw-{partition}-{}", sequence + i))
            .collect();
        let records: Vec<(Option<&[u8]>, &[u8])> =
            values.iter().map(|v| (None, v.as_bytes())).collect();
        let batch = idempotent_record_batch(
            &records,
            1_700_000_000_000,
            producer_id,
            producer_epoch,
            sequence,
        );
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        loop {
            let c = match &conn {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let leader = leader_of(&shared, partition).await;
                    match leader {
                        Some(addr) => match Connection::connect(&addr).await {
                            Ok(c) => {
                                conn = Some(c.clone());
                                c
                            }
                            Err(_) => {
                                shared.log().lookup_failures += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                        None => {
                            shared.log().lookup_failures += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
            };
            let sent = Instant::now();
            let outcome =
                tokio::time::timeout(ATTEMPT_LIMIT, c.send_capped(request.clone(), 12)).await;
            let took = sent.elapsed();
            {
                let mut log = shared.log();
                log.longest_attempt = log.longest_attempt.max(took);
            }
            let response = match outcome {
                Err(_) => {
                    shared.fail(
                        partition,
                        None,
                        format!("no answer within {ATTEMPT_LIMIT:?}"),
                        false,
                    );
                    conn = None;
                    continue;
                }
                Ok(Err(e)) => {
                    shared.fail(partition, None, client_error_kind(&e), e.is_retriable());
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let Some(p) = response
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == partition)
            else {
                shared.fail(
                    partition,
                    None,
                    "no partition in the response".into(),
                    false,
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if p.error_code == 0 {
                let acked = Instant::now();
                let mut log = shared.log();
                for (i, value) in values.iter().enumerate() {
                    log.acks.push(Ack {
                        partition,
                        offset: p.base_offset + i64::try_from(i).expect("small"),
                        value: Bytes::from(value.clone()),
                        sent,
                        acked,
                        raw: true,
                    });
                }
                break;
            }
            shared.fail(
                partition,
                Some(p.error_code),
                kafka_error_name(p.error_code),
                is_retriable_code(p.error_code),
            );
            if matches!(p.error_code, 3 | 5 | 6) {
                // Leadership moved (or is unknown): look the leader up again.
                conn = None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sequence += RAW_BATCH;
    }
}

fn client_error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io(_) => "i/o".into(),
        ClientError::Disconnected => "disconnected".into(),
        ClientError::Timeout { .. } => "request timeout".into(),
        other => format!("client error: {other}"),
    }
}

/// The client library's producer: rounds of keyless records, each round waited for. Every
/// delivery must succeed (the producer retries through the outages by itself).
async fn client_producer(shared: Arc<Shared>) {
    let producer = Producer::new(
        &shared.agents[0],
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(2),
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(45),
            ..ProducerConfig::default()
        },
    )
    .await
    .expect("client producer");
    let mut round = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let mut handles = Vec::with_capacity(CLIENT_ROUND);
        let sent = Instant::now();
        for i in 0..CLIENT_ROUND {
            let value = Bytes::from(format!("client-{round}-{i}"));
            match producer
                .send(ProducerRecord::new(TOPIC, value.clone()))
                .await
            {
                Ok(handle) => handles.push((handle, value)),
                Err(e) => shared.log().client_failures.push(format!("send: {e}")),
            }
        }
        for (handle, value) in handles {
            match handle.wait_offset().await {
                Ok(meta) => shared.log().acks.push(Ack {
                    partition: meta.partition,
                    offset: meta.offset,
                    value,
                    sent,
                    acked: Instant::now(),
                    raw: false,
                }),
                Err(e) => shared
                    .log()
                    .client_failures
                    .push(format!("{}: {e}", String::from_utf8_lossy(&value))),
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (topic, partition) → (holder, epoch), from the leases table.
fn leases(schema: &PostgresSchema) -> BTreeMap<i32, (String, i64)> {
    schema
        .query(&format!(
            "SELECT partition_id, coalesce(holder, ''), epoch FROM leases WHERE topic = '{TOPIC}' \
             ORDER BY partition_id"
        ))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('|');
            let p = cols.next().and_then(|c| c.parse().ok()).expect("partition");
            let holder = cols.next().expect("holder").to_string();
            let epoch = cols.next().and_then(|c| c.parse().ok()).expect("epoch");
            (p, (holder, epoch))
        })
        .collect()
}

/// Whether every partition of the raw load has an acknowledgement of an attempt sent after
/// `since`.
fn every_partition_acked_after(shared: &Shared, since: Instant) -> bool {
    let log = shared.log();
    let fresh: HashSet<i32> = log
        .acks
        .iter()
        .filter(|a| a.raw && a.sent >= since)
        .map(|a| a.partition)
        .collect();
    (0..PARTITIONS).all(|p| fresh.contains(&p))
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_object_store_outages_lose_nothing() {
    let test_started = Instant::now();
    let s3_root = temp_dir();
    let mut s3 = S3Server::start(s3_root.path(), "bucket");
    let schema = PostgresSchema::create();
    let metadata_url = schema.url.clone();
    let mut args: Vec<String> = vec![
        "--metadata-url".into(),
        metadata_url,
        "--heartbeat-interval-ms".into(),
        "1000".into(),
        // Long enough for a held lease to outlive a short outage of either store: the agents
        // must come through with the leases they had.
        "--lease-ttl-ms".into(),
        "6000".into(),
    ];
    args.extend(s3.serve_args("bucket", "outages"));
    let dirs = [temp_dir(), temp_dir()];
    let mut agents: Vec<ServerProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mut a = args.clone();
            a.extend(["--agent-id".to_string(), format!("agent-{i}")]);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            ServerProcess::start(Path::new(BIN), dir.path(), &a)
        })
        .collect();
    let pids: Vec<u32> = agents.iter().map(ServerProcess::pid).collect();

    let admin = Admin::connect(&agents[0].kafka_addr).await.expect("admin");
    admin
        .create_topic(TOPIC, PARTITIONS, &[])
        .await
        .expect("create topic");
    // Wait until the two agents share the partitions two and two.
    wait_for(
        "leases balanced over both agents",
        Duration::from_secs(15),
        || {
            let leases = tokio::task::block_in_place(|| leases(&schema));
            let mut per_holder: HashMap<String, usize> = HashMap::new();
            for (holder, _) in leases.values() {
                *per_holder.entry(holder.clone()).or_default() += 1;
            }
            leases.len() == 4 && per_holder.len() == 2 && per_holder.values().all(|n| *n == 2)
        },
    )
    .await;
    let leases_before = tokio::task::block_in_place(|| leases(&schema));

    let shared = Arc::new(Shared {
        log: Mutex::default(),
        phase: AtomicU8::new(Phase::Normal as u8),
        stop: AtomicBool::new(false),
        agents: agents.iter().map(|a| a.kafka_addr.clone()).collect(),
    });
    let producer = init_producer_id(&agents[0].kafka_addr).await;
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        tasks.push(tokio::spawn(raw_producer(shared.clone(), p, producer)));
    }
    tasks.push(tokio::spawn(client_producer(shared.clone())));

    // (1) Normal load.
    wait_for(
        "first acknowledgements on every partition",
        Duration::from_secs(10),
        || every_partition_acked_after(&shared, test_started),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_normal = shared.log().acks.len();

    // (2) PostgreSQL drops every connection of the store, five times over a second.
    shared.set_phase(Phase::PostgresDrops);
    let mut terminated = Vec::new();
    for _ in 0..5 {
        terminated.push(tokio::task::block_in_place(|| {
            schema.terminate_connections()
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        terminated.iter().sum::<usize>() > 0,
        "no store session was terminated: {terminated:?}"
    );
    let pg_done = Instant::now();
    wait_for(
        "produce on every partition after the connection drops",
        RECOVERY_LIMIT,
        || every_partition_acked_after(&shared, pg_done),
    )
    .await;
    let pg_recovery = pg_done.elapsed();
    let acked_after_pg = shared.log().acks.len();

    // (3) The S3 server goes away for two seconds while the load goes on.
    shared.set_phase(Phase::S3Down);
    tokio::task::block_in_place(|| s3.stop());
    let s3_stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The agents' object store client retries a refused connection a few times before a
    // flush gives up: keep the server down until produce has failed on every partition.
    let failing_after = wait_for(
        "produce fails on every partition while S3 is down",
        S3_FAILURE_LIMIT,
        || {
            let log = shared.log();
            let failed: HashSet<i32> = log
                .failures
                .iter()
                .filter(|f| f.phase == Phase::S3Down)
                .map(|f| f.partition)
                .collect();
            (0..PARTITIONS).all(|p| failed.contains(&p))
        },
    )
    .await;
    let s3_outage = s3_stopped.elapsed();
    let s3_restarting = Instant::now();
    tokio::task::block_in_place(|| s3.restart());
    let s3_restarted = Instant::now();
    shared.set_phase(Phase::Recovering);

    // (4) Produce succeeds again on every partition, with the same agent processes.
    let recovery = wait_for(
        "produce on every partition after the S3 restart",
        RECOVERY_LIMIT,
        || every_partition_acked_after(&shared, s3_restarted),
    )
    .await;
    wait_for(
        "the client producer acknowledged after the S3 restart",
        RECOVERY_LIMIT,
        || {
            shared
                .log()
                .acks
                .iter()
                .any(|a| !a.raw && a.sent >= s3_restarted)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.set_phase(Phase::Draining);
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load stops once its last batches are acknowledged")
            .expect("load task");
    }
    for (agent, pid) in agents.iter_mut().zip(&pids) {
        assert!(agent.is_running(), "agent {pid} died:\n{}", agent.log());
        assert_eq!(agent.pid(), *pid, "agent restarted");
    }
    let leases_after = tokio::task::block_in_place(|| leases(&schema));

    let log = std::mem::take(&mut *shared.log());
    // Sent after the S3 server stopped and answered before it was back: impossible if the
    // outage was real.
    let acked_during_s3 = log
        .acks
        .iter()
        .filter(|a| a.sent >= s3_stopped && a.acked < s3_restarting)
        .count();
    let client_acks = log.acks.iter().filter(|a| !a.raw).count();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for f in &log.failures {
        let what = match f.code {
            Some(code) => format!("{}({code})", f.what),
            None => f.what.clone(),
        };
        *by_code.entry(format!("{:?}/{what}", f.phase)).or_default() += 1;
    }
    eprintln!(
        "acked: {} records ({client_acks} from the client producer): {acked_normal} under \
         normal load, {} more by the end of the connection drops, {acked_during_s3} while S3 \
         was down",
        log.acks.len(),
        acked_after_pg - acked_normal,
    );
    eprintln!(
        "sessions terminated: {terminated:?}; produce on every partition again \
         {pg_recovery:?} after the last drop"
    );
    eprintln!(
        "S3 down for {s3_outage:?} (produce failed on every partition {failing_after:?} after \
         the first 2 s); produce on every partition again {recovery:?} after the restart"
    );
    eprintln!(
        "longest produce attempt {:?}; leader look-up failures {}; failed attempts by \
         phase/error: {by_code:?}",
        log.longest_attempt, log.lookup_failures,
    );
    eprintln!("leases before {leases_before:?} after {leases_after:?}");

    // Errors: only retriable ones, and nothing hung.
    let fatal: Vec<&Failure> = log.failures.iter().filter(|f| !f.retriable).collect();
    assert!(
        fatal.is_empty(),
        "non-retriable produce failures: {fatal:?}"
    );
    assert!(
        log.client_failures.is_empty(),
        "the client producer gave up on deliveries: {:?}",
        log.client_failures
    );
    assert_eq!(
        acked_during_s3, 0,
        "records were acknowledged while the object store was down"
    );

    // Nothing lost, moved or duplicated: per partition the acknowledged offsets are exactly
    // 0..high watermark, and reading the topic back gives exactly the acknowledged records.
    let mut acked: HashMap<(i32, i64), Bytes> = HashMap::new();
    let mut values = HashSet::new();
    for a in &log.acks {
        assert!(
            acked
                .insert((a.partition, a.offset), a.value.clone())
                .is_none(),
            "offset {}/{} acknowledged twice",
            a.partition,
            a.offset
        );
        assert!(
            values.insert(a.value.clone()),
            "value {:?} acknowledged twice",
            a.value
        );
    }
    for p in 0..PARTITIONS {
        let n = acked.keys().filter(|(q, _)| *q == p).count();
        let n = i64::try_from(n).expect("count");
        for offset in 0..n {
            assert!(
                acked.contains_key(&(p, offset)),
                "partition {p}: offset {offset} of 0..{n} acknowledged to nobody"
            );
        }
        let hw = admin
            .list_offsets(TOPIC, p, OffsetSpec::Latest)
            .await
            .expect("high watermark");
        assert_eq!(
            hw, n,
            "partition {p}: high watermark vs acknowledged records"
        );
    }
    let stored = read_everything(&agents[1].kafka_addr, TOPIC, PARTITIONS).await;
    assert_eq!(stored.len(), acked.len(), "records read back");
    for (key, value) in &acked {
        assert_eq!(
            stored.get(key),
            Some(value),
            "acknowledged record {}/{} lost or changed",
            key.0,
            key.1
        );
    }
    assert_eq!(
        leases_after, leases_before,
        "the agents lost or moved leases during the outages"
    );
    for (i, agent) in agents.iter().enumerate() {
        let log = agent.log();
        let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
        eprintln!(
            "agent-{i}: {} failed flushes, {} failed heartbeats",
            count("flush failed"),
            count("heartbeat failed"),
        );
    }
    eprintln!("test took {:?}", test_started.elapsed());
}
