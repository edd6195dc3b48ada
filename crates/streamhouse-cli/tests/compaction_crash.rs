//! Crash safety of compaction and garbage collection on a real server process: killed at
//! each crash point of a compaction or garbage collection job (failpoints that abort the
//! process on the spot), and with kill -9 at random moments while compaction and garbage
//! collection run under load. After a restart every acknowledged record reads back once at
//! its offset, and once the grace periods have passed no object is left that no index
//! entry names.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhouse_client::{Admin, Producer, ProducerConfig, ProducerRecord};
use streamhouse_metadata::{Offset, TopicPartition};
use streamhouse_testing::{files_under, read_everything, temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");
const TOPIC: &str = "crashy";
/// A compacted topic (`cleanup.policy=compact`), written with 40 keys.
const KEYED: &str = "keyed";
const KEYS: usize = 40;
const PARTITIONS: i32 = 2;

/// Compaction and garbage collection every 200 ms, with nothing to wait for but a 1 s
/// orphan grace.
const FLAGS: &[&str] = &[
    "--flush-interval-ms",
    "1",
    "--compaction-interval-ms",
    "200",
    "--compaction-window-ms",
    "0",
    "--compaction-entry-bytes",
    "2048",
    "--gc-interval-ms",
    "200",
    "--gc-grace-ms",
    "0",
    "--orphan-grace-ms",
    "1000",
];

async fn create_topic(server: &ServerProcess) {
    let admin = Admin::connect(&server.kafka_addr).await.unwrap();
    admin.create_topic(TOPIC, PARTITIONS, &[]).await.unwrap();
    let compact = [
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("min.cleanable.dirty.ratio".to_string(), "0".to_string()),
    ];
    admin
        .create_topic(KEYED, PARTITIONS, &compact)
        .await
        .unwrap();
}

/// Produces `count` records to `topic` in waves (many small flushes); returns what was
/// acknowledged, by (partition, offset). Records of the compacted topic have the key
/// `k<i mod 40>` and the value `k<i mod 40>:<i>`. Sends fail once the server is gone; those
/// are not acknowledged.
async fn produce_to(
    topic: &str,
    addr: &str,
    from: usize,
    count: usize,
) -> HashMap<(i32, i64), Bytes> {
    let producer = Producer::new(
        addr,
        ProducerConfig {
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut acked = HashMap::new();
    for wave in (from..from + count).collect::<Vec<_>>().chunks(50) {
        let mut handles = Vec::new();
        for i in wave {
            let record = if topic == KEYED {
                let key = format!("k{}", i % KEYS);
                ProducerRecord::new(topic, format!("{key}:{i}")).with_key(key)
            } else {
                ProducerRecord::new(topic, format!("record-{i:06}"))
            };
            let value = record.value.clone().unwrap_or_default();
            match producer.send(record).await {
                Ok(h) => handles.push((h, value)),
                Err(_) => return acked,
            }
        }
        for (h, value) in handles {
            match h.wait_offset().await {
                Ok(meta) => {
                    assert!(acked.insert((meta.partition, meta.offset), value).is_none());
                }
                Err(_) => return acked,
            }
        }
    }
    acked
}

async fn produce(addr: &str, from: usize, count: usize) -> HashMap<(i32, i64), Bytes> {
    produce_to(TOPIC, addr, from, count).await
}

/// The key of a record of the compacted topic (its value starts with it).
fn key_of(value: &Bytes) -> &[u8] {
    value.split(|b| *b == b':').next().unwrap_or_default()
}

/// Log compaction lost nothing it should keep: every acknowledged record of the compacted
/// topic is stored at its offset unless a later record of its key is; every stored record
/// was produced at that offset or committed unacknowledged by a killed server; and, once
/// compaction has caught up, each key is stored once per partition.
async fn check_compacted(server: &ServerProcess, acked: &HashMap<(i32, i64), Bytes>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut markers = 0;
    loop {
        let stored = read_everything(&server.kafka_addr, KEYED, PARTITIONS).await;
        let mut latest: HashMap<(i32, &[u8]), i64> = HashMap::new();
        for ((p, o), v) in stored.iter().chain(acked) {
            let at = latest.entry((*p, key_of(v))).or_insert(*o);
            *at = (*at).max(*o);
        }
        for ((p, o), v) in acked {
            match stored.get(&(*p, *o)) {
                Some(s) => assert_eq!(s, v, "the record at {p}/{o} changed"),
                None => assert!(
                    latest[&(*p, key_of(v))] > *o,
                    "acknowledged {v:?} at {p}/{o} is gone, and no later record has its key"
                ),
            }
        }
        let mut keys = HashMap::new();
        for ((p, _), v) in &stored {
            *keys.entry((*p, key_of(v))).or_insert(0) += 1;
        }
        if keys.values().all(|n| *n == 1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s keys are still stored more than once: {} records for {} keys",
            stored.len(),
            keys.len()
        );
        // The newest entry of a partition is not compacted: write another to each, of a key
        // of its own, to move past it.
        markers += 1;
        let producer = Producer::new(&server.kafka_addr, ProducerConfig::default())
            .await
            .unwrap();
        for p in 0..PARTITIONS {
            let key = format!("marker-{markers}-{p}");
            let mut record = ProducerRecord::new(KEYED, format!("{key}:")).with_key(key);
            record.partition = Some(p);
            producer
                .send(record)
                .await
                .unwrap()
                .wait_offset()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every object file in the data dir (staging files of an interrupted local write, named
/// `…#N`, are not objects: the object store never lists them).
fn object_files(dir: &Path) -> BTreeSet<String> {
    let root = dir.join("objects");
    files_under(&root)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains('#'))
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The objects the index names.
async fn named_objects(dir: &Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}/metadata.db", dir.display());
    let store = streamhouse_metadata::open(&url).await.unwrap();
    let mut named = BTreeSet::new();
    for topic in [TOPIC, KEYED] {
        for p in 0..PARTITIONS {
            let tp = TopicPartition::new(topic, p);
            for e in store.find_entries(&tp, Offset(0), 1_000_000).await.unwrap() {
                named.insert(e.object_key);
            }
        }
    }
    named
}

/// Waits until the objects on disk are exactly those the index names.
async fn wait_no_garbage(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let files = object_files(dir);
        let named = named_objects(dir).await;
        assert!(
            named.is_subset(&files),
            "named objects are missing: {:?}",
            named.difference(&files).collect::<Vec<_>>()
        );
        if files == named {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "objects left that nothing names: {:?}",
            files.difference(&named).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every acknowledged record is stored once at its offset, and each partition's offsets
/// are contiguous from 0.
async fn check_acked(server: &ServerProcess, acked: &HashMap<(i32, i64), Bytes>) {
    let stored = read_everything(&server.kafka_addr, TOPIC, PARTITIONS).await;
    for (at, value) in acked {
        assert_eq!(stored.get(at), Some(value), "acknowledged record at {at:?}");
    }
    for p in 0..PARTITIONS {
        let mut offsets: Vec<i64> = stored.keys().filter(|k| k.0 == p).map(|k| k.1).collect();
        offsets.sort();
        assert!(
            offsets.iter().enumerate().all(|(i, o)| *o == i as i64),
            "partition {p}: offsets are not 0..{}",
            offsets.len()
        );
    }
}

/// Starts a server armed to die at `point`, produces until it does, restarts it unarmed and
/// checks the data and, after the grace periods, the objects.
async fn crash_at(point: &str) {
    let dir = temp_dir();
    // An orphan as a flush that died before its commit leaves it.
    let ghost = dir.path().join("objects/data/ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::write(ghost.join("0000000000001-dead.sho"), b"never committed").unwrap();
    let armed = format!("{point}=return");
    let mut server =
        ServerProcess::start_with_env(Path::new(BIN), dir.path(), FLAGS, &[("FAILPOINTS", &armed)]);
    create_topic(&server).await;
    let mut acked = produce(&server.kafka_addr, 0, 3000).await;
    assert!(
        server.wait_exit(Duration::from_secs(20)),
        "the server did not reach {point}"
    );
    assert!(
        server.log().contains(&format!("failpoint {point}")),
        "died elsewhere:\n{}",
        server.log()
    );
    eprintln!(
        "{point}: {} records acknowledged before the crash",
        acked.len()
    );
    assert!(!acked.is_empty());

    server.restart_with(FLAGS, &[]);
    acked.extend(produce(&server.kafka_addr, 10_000, 500).await);
    check_acked(&server, &acked).await;
    wait_no_garbage(dir.path()).await;
    check_acked(&server, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_compacted_object_is_written_loses_nothing() {
    crash_at("compaction-before-put").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_compacted_put_and_the_swap_leaves_an_orphan_that_is_deleted() {
    crash_at("compaction-after-put").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_swap_leaves_garbage_that_is_deleted() {
    crash_at("compaction-after-swap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_deleting_and_forgetting_objects_is_finished_later() {
    crash_at("gc-after-delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_tombstoning_and_deleting_orphans_is_finished_later() {
    crash_at("gc-after-orphan-claim").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_log_compaction_swaps_and_its_checkpoint_loses_nothing() {
    let dir = temp_dir();
    let armed = "log-compaction-before-checkpoint=return";
    let mut server =
        ServerProcess::start_with_env(Path::new(BIN), dir.path(), FLAGS, &[("FAILPOINTS", armed)]);
    create_topic(&server).await;
    let mut acked = produce_to(KEYED, &server.kafka_addr, 0, 3000).await;
    assert!(
        server.wait_exit(Duration::from_secs(20)),
        "the server did not reach the failpoint"
    );
    assert!(server
        .log()
        .contains("failpoint log-compaction-before-checkpoint"));
    server.restart_with(FLAGS, &[]);
    acked.extend(produce_to(KEYED, &server.kafka_addr, 10_000, 500).await);
    check_compacted(&server, &acked).await;
    wait_no_garbage(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_compaction_and_gc_loses_nothing() {
    let dir = temp_dir();
    let mut server = ServerProcess::start(Path::new(BIN), dir.path(), FLAGS);
    create_topic(&server).await;
    let mut acked = HashMap::new();
    // Pseudo-random kill delays from a fixed seed (reproducible), 50 to 650 ms into the
    // compaction and garbage collection passes that the produced data keeps busy.
    let mut seed: u64 = 0x5eed_1234;
    let mut keyed = HashMap::new();
    for round in 0..6 {
        acked.extend(produce(&server.kafka_addr, round * 1000, 800).await);
        keyed.extend(produce_to(KEYED, &server.kafka_addr, round * 1000, 400).await);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = 50 + (seed >> 33) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        server.restart();
    }
    eprintln!("{} records acknowledged over 6 kills", acked.len());
    check_acked(&server, &acked).await;
    wait_no_garbage(dir.path()).await;
    let log = server.log();
    let passes = log.matches("compaction pass done").count();
    eprintln!("compaction passes that merged something: {passes}");
    assert!(passes > 0, "compaction never ran:\n{log}");
    assert!(
        log.contains("log compaction pass done"),
        "log compaction never ran:\n{log}"
    );
    check_acked(&server, &acked).await;
    check_compacted(&server, &keyed).await;
}
