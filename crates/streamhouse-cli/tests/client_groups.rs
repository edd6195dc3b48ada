//! Consumer groups through the Rust client against the real server: disjoint covering
//! assignments, rebalances on leave and on session expiry, exactly-once consumption across
//! the group, commits that a new member resumes from, and the group admin calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhouse_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord, RebalanceListener,
};
use streamhouse_testing::{temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");
const TOPIC: &str = "events";
const PARTITIONS: i32 = 6;
const ROUND: Duration = Duration::from_millis(200);

fn start_server(dir: &Path) -> ServerProcess {
    ServerProcess::start(
        Path::new(BIN),
        dir,
        &["--group-initial-rebalance-delay-ms", "200"],
    )
}

fn group_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_owned()),
        session_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        rebalance_timeout: Duration::from_secs(20),
        auto_offset_reset: AutoOffsetReset::Earliest,
        auto_commit_interval: Duration::from_millis(500),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    }
}

/// Produces `count` keyed records whose values are `{prefix}-{i}`; returns the values.
async fn produce(addr: &str, prefix: &str, count: usize) -> BTreeSet<String> {
    let producer = Producer::new(
        addr,
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    let mut values = BTreeSet::new();
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let record = ProducerRecord::new(TOPIC, Bytes::from(value.clone()))
            .with_key(Bytes::from(format!("key-{i}")));
        handles.push(producer.send(record).await.unwrap());
        values.insert(value);
    }
    for h in handles {
        h.wait_offset().await.unwrap();
    }
    producer.close().await.unwrap();
    values
}

/// Every record seen so far, (partition, offset) → (value, times seen).
type Seen = HashMap<(i32, i64), (String, u32)>;

/// Polls every consumer once, concurrently (group rebalances need all members to rejoin).
async fn poll_round(consumers: &mut Vec<Consumer>, seen: &mut Seen) {
    let tasks: Vec<_> = std::mem::take(consumers)
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let records = c.poll(ROUND).await;
                (c, records)
            })
        })
        .collect();
    for task in tasks {
        let (c, records) = task.await.unwrap();
        consumers.push(c);
        for r in records.unwrap() {
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            seen.entry((r.partition, r.offset))
                .or_insert_with(|| (value, 0))
                .1 += 1;
        }
    }
}

/// Whether the consumers' assignments are disjoint and cover every partition.
fn covers_all(consumers: &[Consumer]) -> bool {
    let all: Vec<(String, i32)> = consumers.iter().flat_map(|c| c.assignment()).collect();
    let distinct: BTreeSet<&(String, i32)> = all.iter().collect();
    let expected: BTreeSet<(String, i32)> =
        (0..PARTITIONS).map(|p| (TOPIC.to_owned(), p)).collect();
    all.len() == distinct.len()
        && distinct.into_iter().cloned().collect::<BTreeSet<_>>() == expected
}

/// Polls until the group is stable with these consumers covering every partition, and the
/// coordinator's description agrees member by member.
async fn until_balanced(
    admin: &Admin,
    group: &str,
    consumers: &mut Vec<Consumer>,
    seen: &mut Seen,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "group {group} never balanced");
        poll_round(consumers, seen).await;
        if !covers_all(consumers) {
            continue;
        }
        let generations: BTreeSet<Option<i32>> = consumers.iter().map(|c| c.generation()).collect();
        if generations.len() != 1 {
            continue;
        }
        let d = admin.describe_group(group).await.unwrap();
        if d.state != "Stable" || d.members.len() != consumers.len() {
            continue;
        }
        assert_eq!(d.protocol_type, "consumer");
        assert_eq!(d.protocol, "range");
        for c in consumers.iter() {
            let member = d
                .members
                .iter()
                .find(|m| Some(m.member_id.as_str()) == c.member_id())
                .unwrap_or_else(|| panic!("{:?} not in {d:?}", c.member_id()));
            let mut described = member.assignment.clone();
            described.sort();
            assert_eq!(described, c.assignment(), "describe vs consumer");
        }
        return;
    }
}

#[derive(Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl RebalanceListener for Events {
    fn on_partitions_revoked(&mut self, partitions: &[(String, i32)]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("revoked {}", partitions.len()));
    }
    fn on_partitions_assigned(&mut self, partitions: &[(String, i32)]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("assigned {}", partitions.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_shares_partitions_rebalances_and_resumes_from_commits() {
    let dir = temp_dir();
    let server = start_server(dir.path());
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin.create_topic(TOPIC, PARTITIONS, &[]).await.unwrap();
    let first = produce(&addr, "first", 600).await;

    // (a) three members split the six partitions.
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut consumers = Vec::new();
    for i in 0..3 {
        let mut c = Consumer::new(&addr, group_config("g1")).await.unwrap();
        let listener: Option<Box<dyn RebalanceListener>> =
            (i == 0).then(|| Box::new(Events(events.clone())) as Box<dyn RebalanceListener>);
        c.subscribe(&[TOPIC], listener).unwrap();
        consumers.push(c);
    }
    let mut seen = Seen::new();
    until_balanced(&admin, "g1", &mut consumers, &mut seen).await;
    for c in &consumers {
        assert_eq!(c.assignment().len(), 2, "range gives 6/3 each");
    }
    let listed = admin.list_groups().await.unwrap();
    let g1 = listed
        .iter()
        .find(|g| g.group_id == "g1")
        .expect("g1 listed");
    assert_eq!(g1.protocol_type, "consumer");

    // (b) one member leaves; the other two take over all six.
    let leaver = consumers.pop().unwrap();
    let leaver_generation = leaver.generation();
    leaver.close().await.unwrap();
    until_balanced(&admin, "g1", &mut consumers, &mut seen).await;
    assert!(consumers[0].generation() > leaver_generation);
    assert_eq!(
        consumers
            .iter()
            .map(|c| c.assignment().len())
            .sum::<usize>(),
        6
    );
    let log = events.lock().unwrap().clone();
    assert!(
        log.first().is_some_and(|e| e.starts_with("assigned")),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e.starts_with("revoked")), "{log:?}");

    // (c) everything produced so far is read exactly once across the group.
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < first.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {}",
            seen.len(),
            first.len()
        );
        poll_round(&mut consumers, &mut seen).await;
    }
    for _ in 0..3 {
        poll_round(&mut consumers, &mut seen).await;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, (_, n))| *n != 1).collect();
    assert!(duplicates.is_empty(), "read more than once: {duplicates:?}");
    let values: BTreeSet<String> = seen.values().map(|(v, _)| v.clone()).collect();
    assert_eq!(values, first);

    for c in consumers.iter_mut() {
        c.commit_sync().await.unwrap();
    }
    let mut committed = BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = admin
            .list_offsets(TOPIC, p, OffsetSpec::Latest)
            .await
            .unwrap();
        let offset = consumers[0].committed(TOPIC, p).await.unwrap();
        assert_eq!(offset, Some(end), "partition {p} committed at the end");
        committed.insert(p, end);
    }
    let listed: Vec<(String, i32, i64)> = admin.list_group_offsets("g1").await.unwrap();
    assert_eq!(
        listed,
        committed
            .iter()
            .map(|(p, o)| (TOPIC.to_owned(), *p, *o))
            .collect::<Vec<_>>()
    );
    for c in consumers.drain(..) {
        c.close().await.unwrap();
    }

    // A new member of the same group resumes exactly after the commits.
    let second = produce(&addr, "second", 120).await;
    let mut fresh = vec![Consumer::new(&addr, group_config("g1")).await.unwrap()];
    fresh[0].subscribe(&[TOPIC], None).unwrap();
    let mut seen_after = Seen::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen_after.len() < second.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {}",
            seen_after.len(),
            second.len()
        );
        poll_round(&mut fresh, &mut seen_after).await;
    }
    for _ in 0..3 {
        poll_round(&mut fresh, &mut seen_after).await;
    }
    assert_eq!(fresh[0].assignment().len(), 6);
    let values: BTreeSet<String> = seen_after.values().map(|(v, _)| v.clone()).collect();
    assert_eq!(values, second, "no redelivery, no skip");
    for p in 0..PARTITIONS {
        let first_offset = seen_after
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .min();
        if let Some(o) = first_offset {
            assert_eq!(o, committed[&p], "partition {p} resumes at its commit");
        }
    }
    let fresh = fresh.pop().unwrap();
    fresh.close().await.unwrap();

    // An empty group can be deleted, and then it is gone.
    admin.delete_group("g1").await.unwrap();
    let listed = admin.list_groups().await.unwrap();
    assert!(listed.iter().all(|g| g.group_id != "g1"), "{listed:?}");
    assert!(admin.list_group_offsets("g1").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_member_is_expired_and_its_partitions_move() {
    let dir = temp_dir();
    let server = start_server(dir.path());
    let addr = server.kafka_addr.clone();
    let admin = Admin::connect(&addr).await.unwrap();
    admin.create_topic(TOPIC, PARTITIONS, &[]).await.unwrap();

    let mut consumers = Vec::new();
    for _ in 0..2 {
        let mut c = Consumer::new(&addr, group_config("g2")).await.unwrap();
        c.subscribe(&[TOPIC], None).unwrap();
        consumers.push(c);
    }
    let mut seen = Seen::new();
    until_balanced(&admin, "g2", &mut consumers, &mut seen).await;

    // Dropping without close stops the heartbeats and sends no LeaveGroup: a crash.
    let silent = consumers.pop().unwrap();
    let silent_partitions = silent.assignment();
    drop(silent);
    let dropped_at = Instant::now();
    let values = produce(&addr, "late", 60).await;

    until_balanced(&admin, "g2", &mut consumers, &mut seen).await;
    let took = dropped_at.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "rebalanced after {took:?}, before the 6 s session timeout"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let survivor = consumers[0].assignment();
    assert!(silent_partitions.iter().all(|p| survivor.contains(p)));

    // The survivor reads what was produced to every partition, including the dead member's.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: BTreeSet<String> = seen.values().map(|(v, _)| v.clone()).collect();
        if got == values {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "survivor read {} of {}",
            got.len(),
            values.len()
        );
        poll_round(&mut consumers, &mut seen).await;
    }
    for c in consumers {
        c.close().await.unwrap();
    }
}
