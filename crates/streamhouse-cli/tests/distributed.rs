//! Distributed mode end to end: several `streamhouse serve` processes ("agents") on one
//! PostgreSQL metadata store (a schema of their own) and one S3 object store (`s3s-fs`).
//!
//! - A fourth agent joining three gets its fair share by graceful handoff within about one
//!   heartbeat period, while a producer keeps writing and loses nothing.
//! - A leader paused (SIGSTOP) past its lease loses its partitions to the other agent, and
//!   after it resumes it commits nothing under its old lease.
//! - Topics are led only by agents of their agent group, and each group's Metadata shows
//!   only its own agents and topics.
//! - Any agent serves Fetch of committed data, also a long poll on a partition it does not
//!   lead.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{
    Admin, ClientError, Connection, DeliveryHandle, Producer, ProducerConfig, ProducerRecord,
};
use streamhouse_testing::{
    files_under, read_everything, temp_dir, PostgresSchema, S3Server, ServerProcess,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");
const HEARTBEAT_MS: u64 = 1_000;
const LEASE_TTL_MS: u64 = 3_000;
/// The store's statement (and idle-in-transaction) timeout: below the lease TTL, as the
/// metadata store's docs ask.
const STATEMENT_TIMEOUT_MS: u64 = 2_000;
/// The database clock in milliseconds, as the store computes it.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

// ---------------------------------------------------------------------------------------
// The cluster: stores and agents.
// ---------------------------------------------------------------------------------------

/// The shared stores of one test's agents.
struct Stores {
    schema: PostgresSchema,
    s3: S3Server,
    s3_root: TempDir,
}

impl Stores {
    fn start() -> Stores {
        let s3_root = temp_dir();
        let s3 = S3Server::start(s3_root.path(), "bucket");
        Stores {
            schema: PostgresSchema::create(),
            s3,
            s3_root,
        }
    }

    /// Starts an agent `id` of group `group` on these stores (its own data dir).
    fn agent(&self, id: &str, group: &str, extra: &[&str]) -> Agent {
        let dir = temp_dir();
        // Statements, and (so the store sets it) idle time inside a transaction, are
        // bounded well below the lease TTL: an agent paused inside a commit loses its
        // session, and with it the row locks that would block the takeover of its leases.
        let metadata_url = format!(
            "{}&statement_timeout_ms={STATEMENT_TIMEOUT_MS}",
            self.schema.url
        );
        let mut args: Vec<String> = vec![
            "--metadata-url".into(),
            metadata_url,
            "--agent-id".into(),
            id.into(),
            "--agent-group".into(),
            group.into(),
            "--heartbeat-interval-ms".into(),
            HEARTBEAT_MS.to_string(),
            "--lease-ttl-ms".into(),
            LEASE_TTL_MS.to_string(),
        ];
        args.extend(self.s3.serve_args("bucket", "cluster"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ServerProcess::start(Path::new(BIN), dir.path(), &args);
        Agent {
            id: id.to_string(),
            process,
            _dir: dir,
        }
    }

    /// Runs SQL in the test's schema; returns the rows, columns split on `|`.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.schema
            .query(sql)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    /// The database clock now (ms).
    fn db_now_ms(&self) -> i64 {
        self.rows(&format!("SELECT {DB_NOW_MS}"))[0][0]
            .parse()
            .expect("database time")
    }

    /// Live leases (not expired on the database clock): (topic, partition) -> (holder, epoch).
    fn live_leases(&self) -> BTreeMap<(String, i32), (String, i64)> {
        self.rows(&format!(
            "SELECT topic, partition_id, holder, epoch FROM leases \
             WHERE holder IS NOT NULL AND expires_at_ms > {DB_NOW_MS}"
        ))
        .into_iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].parse().expect("partition")),
                (r[2].clone(), r[3].parse().expect("epoch")),
            )
        })
        .collect()
    }

    /// Live leases of `topic`: partition -> (holder, epoch).
    fn topic_leases(&self, topic: &str) -> BTreeMap<i32, (String, i64)> {
        self.live_leases()
            .into_iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), h)| (p, h))
            .collect()
    }

    /// Registered agents: agent id -> (node id, group).
    fn agents(&self) -> HashMap<String, (i32, String)> {
        self.rows("SELECT agent_id, node_id, agent_group FROM agents")
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].parse().expect("node id"), r[2].clone())))
            .collect()
    }

    /// The store's sessions: pid, state, wait event, query (for failure messages).
    fn sessions(&self) -> Vec<Vec<String>> {
        self.rows(&format!(
            "SELECT pid, state, wait_event, left(query, 80) FROM pg_stat_activity \
             WHERE application_name = '{}'",
            self.schema.name
        ))
    }

    /// High watermark per partition of `topic`.
    fn high_watermarks(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.rows(&format!(
            "SELECT partition_id, high_watermark FROM partitions WHERE topic = '{topic}'"
        ))
        .into_iter()
        .map(|r| (r[0].parse().expect("partition"), r[1].parse().expect("hwm")))
        .collect()
    }
}

struct Agent {
    id: String,
    process: ServerProcess,
    _dir: TempDir,
}

impl Agent {
    fn addr(&self) -> &str {
        &self.process.kafka_addr
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.process.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.id);
    }
}

/// Polls `check` every 25 ms until it returns `Some`, or panics with `what` and the last
/// state `describe` gives after `timeout`.
async fn poll<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}; last state: {}",
            describe()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Partitions held per agent among `leases`.
fn counts(leases: &BTreeMap<i32, (String, i64)>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (holder, _) in leases.values() {
        *out.entry(holder.clone()).or_default() += 1;
    }
    out
}

/// A raw Metadata request to one agent (`None`: every topic).
async fn metadata(addr: &str, topics: Option<&[&str]>) -> MetadataResponse {
    let conn = Connection::connect(addr)
        .await
        .expect("connect for Metadata");
    let request = MetadataRequest::default().with_topics(topics.map(|names| {
        names
            .iter()
            .map(|n| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(n.to_string()))))
            })
            .collect()
    }));
    conn.send(request).await.expect("Metadata")
}

/// Partition -> leader node id of `topic` in a Metadata response (-1: none).
fn metadata_leaders(resp: &MetadataResponse, topic: &str) -> BTreeMap<i32, i32> {
    resp.topics
        .iter()
        .filter(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect()
}

/// Whether `agent`'s Metadata names, for every partition of `topic`, the holder of its live
/// lease as leader.
async fn metadata_agrees(
    stores: &Stores,
    agent: &Agent,
    topic: &str,
    leases: &BTreeMap<i32, (String, i64)>,
) -> Result<(), String> {
    let nodes = stores.agents();
    let resp = metadata(agent.addr(), Some(&[topic])).await;
    let leaders = metadata_leaders(&resp, topic);
    let expected: BTreeMap<i32, i32> = leases
        .iter()
        .map(|(p, (holder, _))| (*p, nodes.get(holder).map_or(-2, |(node, _)| *node)))
        .collect();
    if leaders == expected {
        Ok(())
    } else {
        Err(format!(
            "Metadata from {} says {leaders:?}, leases say {expected:?}",
            agent.id
        ))
    }
}

/// [`metadata_agrees`], allowing a moment for the leases to settle.
async fn wait_metadata_agrees(
    stores: &Stores,
    agent: &Agent,
    topic: &str,
    leases: &BTreeMap<i32, (String, i64)>,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match metadata_agrees(stores, agent, topic, leases).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// A continuous producer.
// ---------------------------------------------------------------------------------------

/// What a background producer saw.
#[derive(Default)]
struct Outcome {
    /// (partition, offset, value) of every acknowledged record.
    acked: Vec<(i32, i64, Bytes)>,
    /// Every record whose send or delivery failed, with the error.
    failed: Vec<(i32, Bytes, ClientError)>,
}

/// One task per partition, each sending unique values with up to `WINDOW` unacknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Outcome>>,
    /// Acknowledged records per partition index (position in `partitions`).
    acked: Arc<Vec<AtomicUsize>>,
    /// Records handed to `send` per partition index.
    sent: Arc<Vec<AtomicUsize>>,
    partitions: Vec<i32>,
}

const WINDOW: usize = 16;

impl Load {
    fn start(
        producer: Arc<Producer>,
        topic: &str,
        partitions: &[i32],
        tag: &str,
        pace: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicUsize>> =
            Arc::new(partitions.iter().map(|_| AtomicUsize::new(0)).collect());
        let sent: Arc<Vec<AtomicUsize>> =
            Arc::new(partitions.iter().map(|_| AtomicUsize::new(0)).collect());
        let tasks = partitions
            .iter()
            .enumerate()
            .map(|(slot, &p)| {
                let (producer, stop, acked, sent) =
                    (producer.clone(), stop.clone(), acked.clone(), sent.clone());
                let (topic, tag) = (topic.to_string(), tag.to_string());
                tokio::spawn(async move {
                    let mut out = Outcome::default();
                    let mut window = VecDeque::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let value = Bytes::from(format!("{tag}-{p}-{i}"));
                        i += 1;
                        let record =
                            ProducerRecord::new(topic.as_str(), value.clone()).with_partition(p);
                        match producer.send(record).await {
                            Ok(handle) => window.push_back((handle, value)),
                            Err(e) => out.failed.push((p, value, e)),
                        }
                        sent[slot].fetch_add(1, Ordering::Relaxed);
                        while window.len() >= WINDOW {
                            let next = window.pop_front().expect("non-empty window");
                            settle(&mut out, p, &acked[slot], next).await;
                        }
                        tokio::time::sleep(pace).await;
                    }
                    while let Some(next) = window.pop_front() {
                        settle(&mut out, p, &acked[slot], next).await;
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            acked,
            sent,
            partitions: partitions.to_vec(),
        }
    }

    fn acked_on(&self, partition: i32) -> usize {
        let slot = self.slot(partition);
        self.acked[slot].load(Ordering::Relaxed)
    }

    fn acked_total(&self) -> usize {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Records sent to `partition` and not acknowledged (yet, or ever: failures count too;
    /// for reporting).
    fn unacked_on(&self, partition: i32) -> usize {
        let slot = self.slot(partition);
        self.sent[slot]
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked[slot].load(Ordering::Relaxed))
    }

    fn slot(&self, partition: i32) -> usize {
        self.partitions
            .iter()
            .position(|p| *p == partition)
            .expect("a partition of the load")
    }

    /// Waits (up to `timeout`) until `enough` holds for this load.
    async fn wait_until(&self, timeout: Duration, what: &str, enough: impl Fn(&Load) -> bool) {
        let deadline = Instant::now() + timeout;
        while !enough(self) {
            assert!(
                Instant::now() < deadline,
                "producer: {what} not reached within {timeout:?} (acked per partition: {:?})",
                self.partitions
                    .iter()
                    .map(|p| (*p, self.acked_on(*p)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending and waits for every record sent to complete.
    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Outcome::default();
        for task in self.tasks {
            let out = tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("producer tasks finish within the delivery timeout")
                .expect("producer task panicked");
            all.acked.extend(out.acked);
            all.failed.extend(out.failed);
        }
        all
    }
}

/// Waits for one record's delivery and files it under acked or failed.
async fn settle(
    out: &mut Outcome,
    partition: i32,
    acked: &AtomicUsize,
    (handle, value): (DeliveryHandle, Bytes),
) {
    match handle.wait_offset().await {
        Ok(meta) => {
            assert_eq!(meta.partition, partition, "acked on another partition");
            out.acked.push((partition, meta.offset, value));
            acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => out.failed.push((partition, value, e)),
    }
}

/// A producer that retries retriable errors until its delivery timeout (acks = -1,
/// idempotent: the defaults).
/// Two agents (`agent-a`, `agent-b`) and a two-partition `topic`, once each agent leads one
/// partition; returns the agents and the topic's leases.
async fn two_agents_one_partition_each(
    stores: &Stores,
    topic: &str,
    extra: &[&str],
) -> ([Agent; 2], BTreeMap<i32, (String, i64)>) {
    let agents = [
        stores.agent("agent-a", "default", extra),
        stores.agent("agent-b", "default", extra),
    ];
    let admin = Admin::connect(agents[0].addr()).await.expect("admin");
    admin.create_topic(topic, 2, &[]).await.expect("create");
    let leases = poll(
        Duration::from_secs(15),
        "one partition per agent",
        || {
            let l = stores.topic_leases(topic);
            (l.len() == 2 && counts(&l).len() == 2).then_some(l)
        },
        || format!("{:?}", stores.topic_leases(topic)),
    )
    .await;
    (agents, leases)
}

async fn producer(bootstrap: &str) -> Arc<Producer> {
    producer_with_timeout(bootstrap, ProducerConfig::default().request_timeout).await
}

async fn producer_with_timeout(bootstrap: &str, request_timeout: Duration) -> Arc<Producer> {
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        request_timeout,
        ..ProducerConfig::default()
    };
    assert_eq!(config.acks, -1);
    assert!(config.enable_idempotence);
    Arc::new(Producer::new(bootstrap, config).await.expect("producer"))
}

/// Checks what was read back: every acknowledged record at its offset, offsets of each
/// partition exactly `0..high watermark`, no value twice, and nothing that was never sent.
fn check_read_back(
    stored: &HashMap<(i32, i64), Bytes>,
    outcomes: &[&Outcome],
    high_watermarks: &BTreeMap<i32, i64>,
) {
    let mut sent: HashSet<&Bytes> = HashSet::new();
    let mut acked = 0;
    for outcome in outcomes {
        for (p, offset, value) in &outcome.acked {
            assert_eq!(
                stored.get(&(*p, *offset)),
                Some(value),
                "acknowledged record {p}/{offset} lost or changed"
            );
            sent.insert(value);
            acked += 1;
        }
        sent.extend(outcome.failed.iter().map(|(_, v, _)| v));
    }
    for (p, hwm) in high_watermarks {
        let offsets: Vec<i64> = stored
            .keys()
            .filter(|(q, _)| q == p)
            .map(|(_, o)| *o)
            .collect();
        let n = i64::try_from(offsets.len()).expect("count");
        assert_eq!(n, *hwm, "partition {p}: records read vs high watermark");
        assert!(
            offsets.iter().all(|o| (0..*hwm).contains(o)),
            "partition {p}: offsets outside 0..{hwm}"
        );
    }
    assert_eq!(
        stored.len(),
        high_watermarks
            .values()
            .map(|h| usize::try_from(*h).expect("hwm"))
            .sum::<usize>(),
        "records read on partitions without a high watermark"
    );
    let mut seen = HashSet::new();
    for ((p, o), value) in stored {
        assert!(
            seen.insert(value),
            "value {value:?} stored twice (again at {p}/{o})"
        );
        assert!(sent.contains(value), "{p}/{o} holds {value:?}, never sent");
    }
    assert!(stored.len() >= acked);
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_balance_and_a_fourth_gets_its_share_by_handoff() {
    let stores = Stores::start();
    let agents: Vec<Agent> = (1..=3)
        .map(|i| stores.agent(&format!("agent-{i}"), "default", &[]))
        .collect();
    let topic = "balanced";
    let admin = Admin::connect(agents[0].addr()).await.expect("admin");
    admin.create_topic(topic, 12, &[]).await.expect("create");

    // All 12 leased, spread 4/4/4 (max - min <= 1 over the three).
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let balanced = |ids: &[String]| {
        let ids = ids.to_vec();
        let stores = &stores;
        move || {
            let leases = stores.topic_leases(topic);
            let c = counts(&leases);
            let per: Vec<usize> = ids
                .iter()
                .map(|id| c.get(id).copied().unwrap_or(0))
                .collect();
            let (min, max) = (per.iter().min()?, per.iter().max()?);
            (leases.len() == 12 && c.len() == ids.len() && max - min <= 1).then_some(leases)
        }
    };
    let describe = || format!("{:?}", stores.topic_leases(topic));
    let started = Instant::now();
    let before = poll(
        Duration::from_secs(15),
        "12 partitions balanced over 3 agents",
        balanced(&ids),
        describe,
    )
    .await;
    println!(
        "3 agents balanced in {:?}: {:?}",
        started.elapsed(),
        counts(&before)
    );
    // Every agent's Metadata names the lease holders as leaders.
    for agent in &agents {
        wait_metadata_agrees(&stores, agent, topic, &before).await;
    }

    // A continuous producer on all 12 partitions.
    let partitions: Vec<i32> = (0..12).collect();
    let load = Load::start(
        producer(agents[1].addr()).await,
        topic,
        &partitions,
        "bal",
        Duration::from_millis(10),
    );
    load.wait_until(Duration::from_secs(15), "records on every partition", |l| {
        partitions.iter().all(|p| l.acked_on(*p) >= 5)
    })
    .await;

    // A fourth agent joins: three partitions move to it, one from each.
    let joined = Instant::now();
    let fourth = stores.agent("agent-4", "default", &[]);
    let ready = Instant::now();
    let mut all_ids = ids.clone();
    all_ids.push(fourth.id.clone());
    let after = poll(
        Duration::from_secs(15),
        "12 partitions balanced over 4 agents",
        {
            let check = balanced(&all_ids);
            let fourth = fourth.id.clone();
            move || check().filter(|l| counts(l).get(&fourth) == Some(&3))
        },
        describe,
    )
    .await;
    let since_ready = ready.elapsed();
    let since_spawn = joined.elapsed();
    println!(
        "handoff: agent-4 held 3 partitions {since_ready:?} after it was ready \
         ({since_spawn:?} after its process was started); acked so far {}",
        load.acked_total()
    );
    assert!(
        since_ready <= Duration::from_millis(HEARTBEAT_MS + 1_500),
        "the fourth agent got its share only after {since_ready:?}"
    );
    assert_eq!(
        counts(&after).values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3, 3]
    );
    // Partitions that stayed kept their epoch; each moved one got exactly one new epoch
    // (released, then acquired), and one moved from each of the three.
    let mut givers = BTreeMap::new();
    for (p, (holder, epoch)) in &after {
        let (old_holder, old_epoch) = &before[p];
        if holder == old_holder {
            assert_eq!(
                epoch, old_epoch,
                "partition {p} kept by {holder} with a new epoch"
            );
        } else {
            assert_eq!(holder, &fourth.id, "partition {p} moved between old agents");
            assert_eq!(
                *epoch,
                old_epoch + 1,
                "partition {p}: epoch {old_epoch} -> {epoch}"
            );
            *givers.entry(old_holder.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(givers.len(), 3, "each old agent gave one: {givers:?}");
    for agent in agents.iter().chain([&fourth]) {
        wait_metadata_agrees(&stores, agent, topic, &after).await;
    }

    // The producer keeps going through the new leader: the moved partitions get commits
    // from agent-4.
    let moved: Vec<i32> = after
        .iter()
        .filter(|(_, (h, _))| h == &fourth.id)
        .map(|(p, _)| *p)
        .collect();
    let acked_at_handoff: Vec<usize> = moved.iter().map(|p| load.acked_on(*p)).collect();
    load.wait_until(Duration::from_secs(15), "acks after the handoff", |l| {
        moved
            .iter()
            .zip(&acked_at_handoff)
            .all(|(p, n)| l.acked_on(*p) >= n + 20)
    })
    .await;
    let outcome = load.finish().await;
    for p in &moved {
        let by_fourth = stores.rows(&format!(
            "SELECT count(*) FROM index_entries i JOIN objects o ON o.object_key = i.object_key \
             WHERE i.topic = '{topic}' AND i.partition_id = {p} AND o.writer = 'agent-4'"
        ))[0][0]
            .parse::<i64>()
            .expect("count");
        assert!(by_fourth > 0, "agent-4 committed nothing to partition {p}");
    }

    let retriable: Vec<_> = outcome
        .failed
        .iter()
        .filter(|(_, _, e)| e.is_retriable())
        .collect();
    let fatal: Vec<_> = outcome
        .failed
        .iter()
        .filter(|(_, _, e)| !e.is_retriable())
        .map(|(p, v, e)| format!("{p} {v:?}: {e}"))
        .collect();
    println!(
        "producer: {} acked, {} failed retriably, {} failed otherwise",
        outcome.acked.len(),
        retriable.len(),
        fatal.len()
    );
    assert!(fatal.is_empty(), "non-retriable producer errors: {fatal:?}");
    assert!(outcome.acked.len() > 12 * 20);

    let stored = read_everything(fourth.addr(), topic, 12).await;
    check_read_back(&stored, &[&outcome], &stores.high_watermarks(topic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_commits_nothing_after_its_lease_is_taken() {
    let stores = Stores::start();
    // Slow flushes, so that the agent has batches pending when it is paused.
    let extra = ["--flush-interval-ms", "20"];
    let topic = "paused";
    let (agents, leases) = two_agents_one_partition_each(&stores, topic, &extra).await;
    let (victim_partition, (victim_id, victim_epoch)) = leases
        .iter()
        .next()
        .map(|(p, h)| (*p, h.clone()))
        .expect("lease");
    let victim = agents.iter().find(|a| a.id == victim_id).expect("victim");
    let survivor = agents.iter().find(|a| a.id != victim_id).expect("survivor");

    // A producer bootstrapped from the survivor writes to both partitions. Its requests to
    // the paused agent time out after 2 s; it then drops that connection, refreshes
    // metadata and retries on the new leader.
    let load = Load::start(
        producer_with_timeout(survivor.addr(), Duration::from_secs(2)).await,
        topic,
        &[0, 1],
        "before",
        Duration::from_millis(3),
    );
    load.wait_until(Duration::from_secs(15), "records on both partitions", |l| {
        l.acked_on(0) >= 50 && l.acked_on(1) >= 50
    })
    .await;

    // Pause the victim mid-load, then wait until the survivor holds both partitions.
    victim.signal("STOP");
    let stopped = Instant::now();
    let unacked_at_stop = load.unacked_on(victim_partition);
    let acked_at_stop = load.acked_on(victim_partition);
    let taken = poll(
        Duration::from_secs(20),
        "the survivor takes the paused agent's partition",
        || {
            let l = stores.topic_leases(topic);
            (l.len() == 2 && l.values().all(|(h, _)| h == &survivor.id)).then_some(l)
        },
        || {
            format!(
                "{:?}; sessions (pid, state, wait event, query): {:?}; survivor's log:\n{}",
                stores.topic_leases(topic),
                stores.sessions(),
                survivor.process.log()
            )
        },
    )
    .await;
    let takeover = stopped.elapsed();
    let taken_db_ms = stores.db_now_ms();
    let new_epoch = taken[&victim_partition].1;
    println!(
        "takeover: {} held partition {victim_partition} (epoch {victim_epoch} -> {new_epoch}) \
         {takeover:?} after SIGSTOP of {} ({unacked_at_stop} records unacknowledged at the stop)",
        survivor.id, victim.id
    );
    assert!(new_epoch > victim_epoch);
    assert!(
        takeover >= Duration::from_millis(LEASE_TTL_MS - 2 * HEARTBEAT_MS),
        "taken over after {takeover:?}, before the lease could expire"
    );

    // A second producer gets acks for the victim's partition from the new leader.
    let fresh = producer(survivor.addr()).await;
    let hwm_at_takeover = stores.high_watermarks(topic)[&victim_partition];
    let mut after_takeover = Outcome::default();
    let mut handles = Vec::new();
    for i in 0..50 {
        let value = Bytes::from(format!("after-{i}"));
        let record = ProducerRecord::new(topic, value.clone()).with_partition(victim_partition);
        handles.push((fresh.send(record).await.expect("send"), value));
    }
    for (handle, value) in handles {
        let meta = tokio::time::timeout(Duration::from_secs(10), handle.wait_offset())
            .await
            .expect("acknowledged by the new leader in time")
            .expect("acknowledged by the new leader");
        assert!(meta.offset >= hwm_at_takeover);
        after_takeover
            .acked
            .push((victim_partition, meta.offset, value));
    }
    let entries_by_new_leader = stores.rows(&format!(
        "SELECT count(*) FROM index_entries i JOIN objects o ON o.object_key = i.object_key \
         WHERE i.topic = '{topic}' AND i.partition_id = {victim_partition} \
           AND i.leader_epoch = {new_epoch} AND o.writer = '{}'",
        survivor.id
    ))[0][0]
        .parse::<i64>()
        .expect("count");
    assert!(entries_by_new_leader > 0, "no commit under the new epoch");

    // The first producer, still the paused agent's client at the stop, moves on by itself:
    // its records (those pending at the stop included) are acknowledged by the new leader
    // while the old one is still paused.
    load.wait_until(
        Duration::from_secs(20),
        "the first producer's acks resume on the new leader before SIGCONT",
        |l| l.acked_on(victim_partition) >= acked_at_stop + unacked_at_stop + 10,
    )
    .await;
    println!(
        "the first producer's acks on partition {victim_partition} resumed {:?} after SIGSTOP",
        stopped.elapsed()
    );

    // Resume the victim: it learns it lost the lease; whatever it had pending is refused.
    victim.signal("CONT");
    // "flush failed": it was paused inside a commit, whose session the server ended.
    let markers = [
        "lease taken over by another agent",
        "lease lost",
        "commit refused",
        "flush failed",
    ];
    let seen = poll(
        Duration::from_secs(10),
        "the resumed agent notices it lost its lease",
        || {
            let log = victim.process.log();
            let seen: Vec<&str> = markers
                .iter()
                .copied()
                .filter(|m| log.contains(m))
                .collect();
            (!seen.is_empty()).then_some(seen)
        },
        || victim.process.log(),
    )
    .await;
    println!("the resumed agent logged: {seen:?}");
    // The first producer's batches that were stuck on the paused agent go through, and
    // it keeps writing for a while (the agents rebalance to one partition each meanwhile).
    let stuck_at = load.acked_on(victim_partition);
    load.wait_until(Duration::from_secs(35), "acks after the resume", |l| {
        l.acked_on(victim_partition) >= stuck_at + unacked_at_stop + 20
    })
    .await;
    poll(
        Duration::from_secs(15),
        "one partition per agent again",
        || {
            let l = stores.topic_leases(topic);
            (l.len() == 2 && counts(&l).len() == 2).then_some(())
        },
        || format!("{:?}", stores.topic_leases(topic)),
    )
    .await;
    load.wait_until(Duration::from_secs(15), "acks after the rebalance", |l| {
        l.acked_on(0) >= 50 && l.acked_on(1) >= 50
    })
    .await;
    let outcome = load.finish().await;
    println!(
        "producer: {} acked, {} failed ({:?})",
        outcome.acked.len(),
        outcome.failed.len(),
        outcome
            .failed
            .iter()
            .map(|(_, _, e)| e.to_string())
            .collect::<HashSet<_>>()
    );

    // Nothing the victim wrote landed under its old lease once the survivor had taken it
    // (an old-epoch commit can only land before the acquisition, which waits for it): every
    // object it recorded since then carries only entries of epochs newer than those the
    // survivor held at the takeover (the victim gets a partition back, under a new epoch,
    // once the two rebalance).
    let epoch_at_takeover = taken
        .iter()
        .map(|(p, (_, e))| format!("WHEN {p} THEN {e}"))
        .collect::<Vec<_>>()
        .join(" ");
    let late = stores.rows(&format!(
        "SELECT i.partition_id, i.base_offset, i.end_offset, i.leader_epoch, o.created_at_ms \
         FROM index_entries i JOIN objects o ON o.object_key = i.object_key \
         WHERE i.topic = '{topic}' AND o.writer = '{}' AND o.created_at_ms >= {taken_db_ms} \
           AND i.leader_epoch <= CASE i.partition_id {epoch_at_takeover} END",
        victim.id
    ));
    assert!(
        late.is_empty(),
        "the paused agent committed under an old epoch after the takeover: {late:?}"
    );
    // The victim's partition: contiguous entries whose epochs never go back.
    let entries = stores.rows(&format!(
        "SELECT base_offset, end_offset, leader_epoch FROM index_entries \
         WHERE topic = '{topic}' AND partition_id = {victim_partition} ORDER BY base_offset"
    ));
    let mut next = 0i64;
    let mut epoch = i64::MIN;
    for e in &entries {
        let (base, end, ep): (i64, i64, i64) = (
            e[0].parse().expect("base"),
            e[1].parse().expect("end"),
            e[2].parse().expect("epoch"),
        );
        assert_eq!(
            base, next,
            "index entries of partition {victim_partition}: {entries:?}"
        );
        assert!(ep >= epoch, "epoch went back at {base}: {entries:?}");
        if ep == victim_epoch {
            assert!(
                end <= hwm_at_takeover,
                "old epoch past the takeover: {entries:?}"
            );
        }
        next = end;
        epoch = ep;
    }
    assert_eq!(next, stores.high_watermarks(topic)[&victim_partition]);
    // What the victim put into the bucket without any commit naming it: flushes it
    // completed after it resumed, refused by the fence (or cut off by the server).
    let committed: HashSet<String> = stores
        .rows(&format!(
            "SELECT object_key FROM objects WHERE writer = '{}'",
            victim.id
        ))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let data_dir = stores.s3_root.path().join("bucket/cluster");
    let orphans = files_under(&data_dir.join("data").join(&victim.id))
        .into_iter()
        .filter_map(|f| {
            let key = f.strip_prefix(&data_dir).ok()?.to_str()?.to_string();
            (!committed.contains(&key)).then_some(key)
        })
        .count();
    println!(
        "{} committed {} objects; {orphans} objects it wrote are named by no commit",
        victim.id,
        committed.len()
    );

    let stored = read_everything(survivor.addr(), topic, 2).await;
    check_read_back(
        &stored,
        &[&outcome, &after_takeover],
        &stores.high_watermarks(topic),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_stay_within_their_agent_group() {
    let stores = Stores::start();
    let a1 = stores.agent("a-1", "a", &[]);
    let a2 = stores.agent("a-2", "a", &[]);
    let b1 = stores.agent("b-1", "b", &[]);
    Admin::connect(a1.addr())
        .await
        .expect("admin a")
        .create_topic("ta", 6, &[])
        .await
        .expect("create ta");
    Admin::connect(b1.addr())
        .await
        .expect("admin b")
        .create_topic("tb", 4, &[])
        .await
        .expect("create tb");

    // Every partition leased, ta over a-1 and a-2 (3 each), tb all on b-1.
    let leases = poll(
        Duration::from_secs(15),
        "all partitions leased within their groups",
        || {
            let ta = stores.topic_leases("ta");
            let tb = stores.topic_leases("tb");
            let ca = counts(&ta);
            (ta.len() == 6 && tb.len() == 4 && ca.len() == 2 && ca.values().all(|c| *c == 3))
                .then_some((ta, tb))
        },
        || format!("{:?}", stores.live_leases()),
    )
    .await;
    // The leases table joined with the agents: every holder is of the topic's group.
    let by_group = stores.rows(&format!(
        "SELECT l.topic, a.agent_group, count(*) FROM leases l \
         JOIN agents a ON a.agent_id = l.holder \
         WHERE l.expires_at_ms > {DB_NOW_MS} GROUP BY l.topic, a.agent_group ORDER BY 1, 2"
    ));
    assert_eq!(
        by_group,
        vec![
            vec!["ta".to_string(), "a".into(), "6".into()],
            vec!["tb".to_string(), "b".into(), "4".into()],
        ]
    );
    assert!(leases.0.values().all(|(h, _)| h == "a-1" || h == "a-2"));
    assert!(leases.1.values().all(|(h, _)| h == "b-1"));

    // Metadata: a group's agents see only their group's brokers and topics.
    let nodes = stores.agents();
    let node = |id: &str| nodes[id].0;
    let group_view = |agent: &Agent, brokers: Vec<i32>, own: &'static str, other: &'static str| {
        let agent_addr = agent.addr().to_string();
        let id = agent.id.clone();
        let group = nodes[&id].1.clone();
        async move {
            // The agent learns its group's members at its balance rounds: poll briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            let resp = loop {
                let resp = metadata(&agent_addr, None).await;
                let mut listed: Vec<i32> = resp.brokers.iter().map(|b| b.node_id.0).collect();
                listed.sort_unstable();
                if listed == brokers || Instant::now() > deadline {
                    break resp;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut listed: Vec<i32> = resp.brokers.iter().map(|b| b.node_id.0).collect();
            listed.sort_unstable();
            assert_eq!(listed, brokers, "brokers listed by {id}");
            assert!(
                resp.brokers
                    .iter()
                    .all(|b| b.rack.as_ref().map(|r| r.as_str()) == Some(group.as_str())),
                "racks from {id}"
            );
            let names: Vec<&str> = resp
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.as_str()))
                .collect();
            assert_eq!(names, vec![own], "topics listed by {id}");
            let leaders = metadata_leaders(&resp, own);
            assert!(
                leaders.values().all(|l| brokers.contains(l)),
                "{own} leaders from {id}: {leaders:?}"
            );
            let asked = metadata(&agent_addr, Some(&[other])).await;
            assert_eq!(asked.topics.len(), 1);
            assert_eq!(
                asked.topics[0].error_code, 3,
                "{other} asked of {id}: UNKNOWN_TOPIC_OR_PARTITION"
            );
            assert!(asked.topics[0].partitions.is_empty());
        }
    };
    let mut a_nodes = vec![node("a-1"), node("a-2")];
    a_nodes.sort_unstable();
    group_view(&a1, a_nodes.clone(), "ta", "tb").await;
    group_view(&a2, a_nodes, "ta", "tb").await;
    group_view(&b1, vec![node("b-1")], "tb", "ta").await;

    // Produce and consume through each group's agents.
    for (topic, partitions, bootstrap, reader) in [("ta", 6, &a2, &a1), ("tb", 4, &b1, &b1)] {
        let producer = producer(bootstrap.addr()).await;
        let mut handles = Vec::new();
        for i in 0..120 {
            let value = Bytes::from(format!("{topic}-{i}"));
            let record = ProducerRecord::new(topic, value.clone()).with_partition(i % partitions);
            handles.push((producer.send(record).await.expect("send"), value));
        }
        let mut outcome = Outcome::default();
        for (handle, value) in handles {
            let meta = handle.wait_offset().await.expect("acknowledged");
            outcome.acked.push((meta.partition, meta.offset, value));
        }
        let stored = read_everything(reader.addr(), topic, partitions).await;
        assert_eq!(stored.len(), 120, "{topic} read back");
        check_read_back(&stored, &[&outcome], &stores.high_watermarks(topic));
    }

    // A producer of group a cannot reach tb: its agents do not know it.
    let outsider = Producer::new(
        a1.addr(),
        ProducerConfig {
            request_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    )
    .await
    .expect("producer");
    let err = outsider
        .send(ProducerRecord::new("tb", "nope"))
        .await
        .expect_err("tb through group a");
    assert_eq!(err.kafka_code(), Some(3), "{err}");
}

/// A Fetch of `topic`/`partition` from `offset`, sent to `addr` whatever it leads.
async fn fetch_from(
    addr: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> (i16, i64, Vec<Bytes>) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;
    use kafka_protocol::records::RecordBatchDecoder;
    let conn = Connection::connect(addr).await.expect("connect for Fetch");
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let response = conn.send(request).await.expect("Fetch");
    let p = &response.responses[0].partitions[0];
    let mut values = Vec::new();
    if let Some(records) = &p.records {
        let mut buf = records.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched batches") {
            for r in set.records {
                values.push(r.value.unwrap_or_default());
            }
        }
    }
    (p.error_code, p.high_watermark, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_agent_serves_fetches_of_committed_data() {
    let stores = Stores::start();
    let topic = "reads";
    let (agents, leases) = two_agents_one_partition_each(&stores, topic, &[]).await;
    // A bootstrap list, like Kafka's bootstrap.servers; its first address is down.
    let bootstrap = format!("127.0.0.1:1, {},{}", agents[0].addr(), agents[1].addr());
    let producer = producer(&bootstrap).await;
    let mut sent: BTreeMap<i32, Vec<Bytes>> = BTreeMap::new();
    for i in 0..100 {
        let partition = i % 2;
        let value = Bytes::from(format!("value-{i}"));
        let record = ProducerRecord::new(topic, value.clone()).with_partition(partition);
        let meta = producer
            .send(record)
            .await
            .expect("send")
            .wait_offset()
            .await
            .expect("acknowledged");
        let expected = sent.entry(partition).or_default();
        assert_eq!(meta.offset, expected.len() as i64);
        expected.push(value);
    }

    // Both agents serve both partitions, the one they lead and the one they do not.
    for agent in &agents {
        for (partition, values) in &sent {
            let (code, hwm, fetched) = fetch_from(agent.addr(), topic, *partition, 0, 0).await;
            assert_eq!(code, 0, "{} fetching partition {partition}", agent.id);
            assert_eq!(hwm, values.len() as i64);
            assert_eq!(
                &fetched, values,
                "{} fetching partition {partition}",
                agent.id
            );
        }
    }

    // A long poll on the agent that does not lead the partition wakes up for a record the
    // leader commits meanwhile.
    let (leader_id, _) = &leases[&0];
    let follower = agents
        .iter()
        .find(|a| &a.id != leader_id)
        .expect("follower");
    let waiting = {
        let addr = follower.addr().to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = fetch_from(&addr, "reads", 0, 50, 10_000).await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let meta = producer
        .send(ProducerRecord::new(topic, Bytes::from_static(b"late")).with_partition(0))
        .await
        .expect("send")
        .wait_offset()
        .await
        .expect("acknowledged");
    assert_eq!(meta.offset, 50);
    let ((code, hwm, fetched), waited) = waiting.await.expect("long poll");
    assert_eq!(code, 0);
    assert_eq!(hwm, 51);
    assert_eq!(fetched, vec![Bytes::from_static(b"late")]);
    assert!(
        waited < Duration::from_secs(5),
        "the follower's long poll returned after {waited:?}, not when the record was committed"
    );
}

/// GET on an agent's HTTP API, as JSON.
async fn http_get(agent: &Agent, path: &str) -> serde_json::Value {
    let url = format!("http://{}{path}", agent.process.http_addr);
    let resp = reqwest::get(&url).await.expect("GET");
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json().await.expect("JSON body")
}

/// The HTTP API of any agent shows the whole cluster (agents, leases, leaders), and a REST
/// produce through one agent reaches the leader of a partition the other agent leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_of_any_agent_serves_the_whole_cluster() {
    let stores = Stores::start();
    let topic = "web";
    let (agents, leases) = two_agents_one_partition_each(&stores, topic, &[]).await;
    let http = reqwest::Client::new();
    // Everything through agent-a's HTTP API, half of it to agent-b's partition.
    let url = format!("http://{}/api/v1/produce", agents[0].process.http_addr);
    for i in 0..10 {
        let partition = i % 2;
        let resp = http
            .post(&url)
            .json(&serde_json::json!({"topic": topic, "partition": partition, "value": format!("v{i}")}))
            .send()
            .await
            .expect("POST");
        assert!(resp.status().is_success(), "produce: {}", resp.status());
        let body: serde_json::Value = resp.json().await.expect("JSON body");
        assert_eq!(body["partition"], partition);
        assert_eq!(body["offset"], i / 2, "{body}");
    }
    assert_eq!(
        stores.high_watermarks(topic),
        BTreeMap::from([(0, 5), (1, 5)])
    );

    for agent in &agents {
        // Both agents, live, each with its lease.
        let listed = http_get(agent, "/api/v1/agents").await;
        let mut seen = BTreeMap::new();
        for a in listed.as_array().expect("agents") {
            assert_eq!(a["live"], true, "{a}");
            for p in a["partitions"].as_array().expect("partitions") {
                seen.insert(
                    p["partition"].as_i64().expect("partition") as i32,
                    (
                        a["agent_id"].as_str().expect("id").to_string(),
                        p["epoch"].as_i64().expect("epoch"),
                    ),
                );
            }
        }
        assert_eq!(seen, leases, "agents page of {}", agent.id);
        // The topic page names the same leaders and epochs, and the stored records.
        let detail = http_get(agent, &format!("/api/v1/topics/{topic}")).await;
        for p in detail["partitions"].as_array().expect("partitions") {
            let partition = p["partition"].as_i64().expect("partition") as i32;
            assert_eq!(
                p["leader"]["agent_id"],
                leases[&partition].0.as_str(),
                "{p}"
            );
            assert_eq!(p["leader_epoch"], leases[&partition].1, "{p}");
            assert_eq!(p["high_watermark"], 5);
        }
        // Either agent reads either partition.
        for partition in 0..2 {
            let page = http_get(
                agent,
                &format!("/api/v1/topics/{topic}/partitions/{partition}/messages?offset=0"),
            )
            .await;
            let values: Vec<&str> = page["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["value"].as_str().expect("value"))
                .collect();
            let expected: Vec<String> = (0..10)
                .filter(|i| i % 2 == partition)
                .map(|i| format!("v{i}"))
                .collect();
            assert_eq!(
                values, expected,
                "partition {partition} through {}",
                agent.id
            );
        }
        let overview = http_get(agent, "/api/v1/cluster").await;
        assert_eq!(
            (
                overview["agents"].as_i64(),
                overview["live_agents"].as_i64()
            ),
            (Some(2), Some(2))
        );
        assert_eq!(overview["records"], 10);
    }
}
