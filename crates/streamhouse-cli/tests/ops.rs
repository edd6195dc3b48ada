//! `streamhouse agents list` and `streamhouse partitions` against agents sharing one
//! PostgreSQL schema and one object directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhouse_client::{Producer, ProducerConfig, ProducerRecord};
use streamhouse_testing::{temp_dir, PostgresSchema, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run streamhouse")
}

fn cli(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "streamhouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A table printed by the CLI: checks the header, returns the rows' fields.
fn table(out: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(first, header, "table header in:\n{out}");
    lines
        .map(|l| {
            let fields: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            assert_eq!(fields.len(), header.len(), "row {l:?} in:\n{out}");
            fields
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentRow {
    node_id: i32,
    address: String,
    group: String,
    leaders: usize,
}

fn agents_list(bootstrap: &str) -> Vec<AgentRow> {
    let out = cli(&["agents", "list", "-b", bootstrap]);
    table(&out, &["node-id", "address", "group", "leaders"])
        .into_iter()
        .map(|f| AgentRow {
            node_id: f[0].parse().expect("node id"),
            address: f[1].clone(),
            group: f[2].clone(),
            leaders: f[3].parse().expect("leader count"),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionRow {
    topic: String,
    partition: i32,
    leader: i32,
    epoch: i32,
    log_start: i64,
    high_watermark: i64,
}

fn partitions(bootstrap: &str, topics: &[&str]) -> Vec<PartitionRow> {
    partitions_and_notes(bootstrap, topics).0
}

/// The rows of `streamhouse partitions`, and what it said on stderr.
fn partitions_and_notes(bootstrap: &str, topics: &[&str]) -> (Vec<PartitionRow>, String) {
    let mut args = vec!["partitions", "-b", bootstrap];
    args.extend_from_slice(topics);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "streamhouse {args:?}: {stderr}");
    let rows = table(
        &String::from_utf8_lossy(&out.stdout),
        &[
            "topic",
            "partition",
            "leader",
            "epoch",
            "log-start",
            "high-watermark",
        ],
    )
    .into_iter()
    .map(|f| PartitionRow {
        topic: f[0].clone(),
        partition: f[1].parse().expect("partition"),
        leader: f[2].parse().expect("leader"),
        epoch: f[3].parse().expect("epoch"),
        log_start: f[4].parse().expect("log start"),
        high_watermark: f[5].parse().expect("high watermark"),
    })
    .collect();
    (rows, stderr)
}

/// Polls `check` until it returns `Some`, failing with `what` and the last value after 20 s.
fn wait_for<T, R: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> R,
    check: impl Fn(&R) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = probe();
        if let Some(done) = check(&value) {
            return done;
        }
        assert!(Instant::now() < deadline, "{what}; last seen: {value:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Leader counts per node id in `rows`.
fn led_by(rows: &[PartitionRow]) -> BTreeMap<i32, usize> {
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(r.leader).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_and_partitions_show_a_group_of_agents() {
    let schema = PostgresSchema::create();
    let objects = temp_dir();
    let object_url = format!("file://{}", objects.path().display());
    let common = [
        "--metadata-url",
        schema.url.as_str(),
        "--object-store-url",
        object_url.as_str(),
        "--heartbeat-interval-ms",
        "1000",
        "--lease-ttl-ms",
        "3000",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut args = common.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let (dir1, dir2, dir3) = (temp_dir(), temp_dir(), temp_dir());
    let a1 = ServerProcess::start(
        Path::new(BIN),
        dir1.path(),
        &with(&["--agent-id", "ops-a1"]),
    );
    let mut a2 = ServerProcess::start(
        Path::new(BIN),
        dir2.path(),
        &with(&["--agent-id", "ops-a2"]),
    );
    // An agent of another group: neither listed by the first two nor leading their topics.
    let other = ServerProcess::start(
        Path::new(BIN),
        dir3.path(),
        &with(&["--agent-id", "ops-other", "--agent-group", "analytics"]),
    );

    cli(&["topic", "create", "orders", "-p", "4", "-b", &a1.kafka_addr]);
    cli(&["topic", "create", "audit", "-p", "2", "-b", &a2.kafka_addr]);

    // Both agents are listed, from either of them, and share the 6 partitions 3 + 3.
    let agents = wait_for(
        "both agents listed, leading 3 partitions each",
        || agents_list(&a2.kafka_addr),
        |rows| (rows.len() == 2 && rows.iter().all(|r| r.leaders == 3)).then(|| rows.clone()),
    );
    let mut addresses: Vec<&str> = agents.iter().map(|a| a.address.as_str()).collect();
    addresses.sort_unstable();
    let mut expected = vec![a1.kafka_addr.as_str(), a2.kafka_addr.as_str()];
    expected.sort_unstable();
    assert_eq!(addresses, expected, "addresses in {agents:#?}");
    assert!(agents.iter().all(|a| a.group == "default"), "{agents:#?}");
    assert_ne!(agents[0].node_id, agents[1].node_id, "{agents:#?}");
    assert!(
        agents[0].node_id < agents[1].node_id,
        "rows sorted by node id"
    );
    assert_eq!(agents_list(&a1.kafka_addr), agents, "the same from agent 1");

    // The other group sees only itself, leading nothing (the topics are not its group's).
    let others = agents_list(&other.kafka_addr);
    assert_eq!(others.len(), 1, "{others:#?}");
    assert_eq!(others[0].address, other.kafka_addr);
    assert_eq!(others[0].group, "analytics");
    assert_eq!(others[0].leaders, 0);
    assert!(
        partitions(&other.kafka_addr, &[]).is_empty(),
        "another group's topics are hidden"
    );

    // Produce p + 1 records to partition p of "orders".
    let producer = Producer::new(&a1.kafka_addr, ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..4 {
        for i in 0..=p {
            let record =
                ProducerRecord::new("orders", Bytes::from(format!("v-{p}-{i}"))).with_partition(p);
            producer
                .send(record)
                .await
                .unwrap()
                .wait_offset()
                .await
                .unwrap();
        }
    }
    producer.close().await.unwrap();

    let node_ids: Vec<i32> = agents.iter().map(|a| a.node_id).collect();
    let rows = partitions(&a2.kafka_addr, &[]);
    assert_eq!(rows.len(), 6, "{rows:#?}");
    let topics: Vec<(&str, i32)> = rows
        .iter()
        .map(|r| (r.topic.as_str(), r.partition))
        .collect();
    assert_eq!(
        topics,
        [
            ("audit", 0),
            ("audit", 1),
            ("orders", 0),
            ("orders", 1),
            ("orders", 2),
            ("orders", 3)
        ],
        "every partition once, sorted by topic"
    );
    for r in &rows {
        assert!(node_ids.contains(&r.leader), "leader of {r:?}");
        assert!(r.epoch >= 1, "epoch of {r:?}");
        assert_eq!(r.log_start, 0, "{r:?}");
        let expected_high = if r.topic == "orders" {
            i64::from(r.partition) + 1
        } else {
            0
        };
        assert_eq!(r.high_watermark, expected_high, "{r:?}");
    }
    // Agree with `agents list` (no rebalance happens while the membership stays put).
    let counts: BTreeMap<i32, usize> = agents.iter().map(|a| (a.node_id, a.leaders)).collect();
    assert_eq!(led_by(&rows), counts, "{rows:#?}");

    // Only the named topics, in the order given.
    let only: Vec<PartitionRow> = partitions(&a1.kafka_addr, &["orders"]);
    assert_eq!(only.len(), 4, "{only:#?}");
    assert!(only.iter().all(|r| r.topic == "orders"), "{only:#?}");
    let named = partitions(&a1.kafka_addr, &["orders", "audit"]);
    assert_eq!(named.len(), 6);
    assert_eq!(named[0].topic, "orders");
    assert_eq!(named[5].topic, "audit");

    // An unknown topic is an error, not an empty table.
    let missing = run(&["partitions", "-b", &a1.kafka_addr, "no-such-topic"]);
    assert!(!missing.status.success(), "partitions of an unknown topic");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-topic"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // A graceful stop hands everything to the remaining agent at once, with new epochs.
    let a2_node = agents
        .iter()
        .find(|a| a.address == a2.kafka_addr)
        .map(|a| a.node_id)
        .unwrap();
    let before = rows.clone();
    assert!(a2.terminate(Duration::from_secs(20)).success());
    let alone = wait_for(
        "agent 1 alone, leading all 6 partitions",
        || agents_list(&a1.kafka_addr),
        |rows| (rows.len() == 1 && rows[0].leaders == 6).then(|| rows.clone()),
    );
    assert_eq!(alone[0].address, a1.kafka_addr);
    let after = partitions(&a1.kafka_addr, &[]);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.leader, alone[0].node_id, "{new:?}");
        if old.leader == a2_node {
            assert!(new.epoch > old.epoch, "{old:?} -> {new:?}");
        } else {
            assert_eq!(new.epoch, old.epoch, "{old:?} -> {new:?}");
        }
        assert_eq!(new.high_watermark, old.high_watermark, "{old:?} -> {new:?}");
    }

    // Agent 2 comes back (on a new port) and gets its share again, handed off by agent 1.
    a2.restart();
    let back = wait_for(
        "agent 2 back, leading 3 partitions",
        || agents_list(&a1.kafka_addr),
        |rows| (rows.len() == 2 && rows.iter().all(|r| r.leaders == 3)).then(|| rows.clone()),
    );
    let a2_node = back
        .iter()
        .find(|a| a.address == a2.kafka_addr)
        .map(|a| a.node_id)
        .unwrap_or_else(|| panic!("agent 2 at {} in {back:#?}", a2.kafka_addr));

    // After kill -9 its partitions keep it as leader until their leases expire; `partitions`
    // still shows every offset (asked of the bootstrap agent instead of the dead leader).
    let before = partitions(&a1.kafka_addr, &[]);
    a2.kill9();
    let (during, notes) = partitions_and_notes(&a1.kafka_addr, &[]);
    assert_eq!(
        during.iter().filter(|r| r.leader == a2_node).count(),
        3,
        "the dead agent's leases have not expired yet: {during:#?}"
    );
    assert!(notes.contains("note:"), "stderr: {notes}");
    for (old, new) in before.iter().zip(&during) {
        assert_eq!(
            (new.log_start, new.high_watermark),
            (old.log_start, old.high_watermark),
            "{old:?} -> {new:?}"
        );
    }
    // Then agent 1 takes them over, with new epochs.
    let alone = wait_for(
        "agent 1 alone again after kill -9, leading all 6 partitions",
        || agents_list(&a1.kafka_addr),
        |rows| (rows.len() == 1 && rows[0].leaders == 6).then(|| rows.clone()),
    );
    let after = partitions(&a1.kafka_addr, &[]);
    for (old, new) in during.iter().zip(&after) {
        assert_eq!(new.leader, alone[0].node_id, "{new:?}");
        if old.leader == a2_node {
            assert!(new.epoch > old.epoch, "{old:?} -> {new:?}");
        }
        assert_eq!(new.high_watermark, old.high_watermark, "{old:?} -> {new:?}");
    }
}
