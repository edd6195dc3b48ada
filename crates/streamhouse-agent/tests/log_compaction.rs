//! Log compaction (`cleanup.policy=compact`) on a real agent (SQLite + objects in a local
//! directory): of every key only the latest record stays, at its original offset, in every
//! codec; tombstones go after `delete.retention.ms`; keyless records are refused; ranges left
//! with no records read as gaps; and any interleaving of produce, flush, log compaction,
//! object compaction, garbage collection and fetch only ever loses records a later record
//! of the same key supersedes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use streamhouse_agent::{Agent, AgentError, OffsetSpec};
use streamhouse_metadata::{Offset, TopicConfig, TopicPartition};
use streamhouse_testing::{keyed_record_batch, Compression, KeyValue};

mod common;
use common::{decode_records, read_bytes, Read, Setup};

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Creates a compacted topic of one partition; returns it and its config.
async fn compacted_topic(
    agent: &Agent,
    name: &str,
    extra: &[(&str, &str)],
) -> (TopicPartition, TopicConfig) {
    let mut configs = configs(extra);
    configs.insert("cleanup.policy".into(), "compact".into());
    agent.create_topic(name, 1, &configs).await.unwrap();
    (
        TopicPartition::new(name, 0),
        TopicConfig::parse(&configs).unwrap(),
    )
}

/// (key, value) records to produce; a `None` value is a tombstone.
type Produced = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Appends one batch and flushes it (one index entry); returns its base offset.
async fn produce(
    agent: &Agent,
    tp: &TopicPartition,
    records: &Produced,
    codec: Compression,
) -> i64 {
    let refs: Vec<KeyValue<'_>> = records
        .iter()
        .map(|(k, v)| (Some(&k[..]), v.as_deref()))
        .collect();
    let batch = keyed_record_batch(&refs, 1_700_000_000_000, codec);
    let done = agent.append(tp, batch).await.unwrap();
    agent.flush().await;
    done.await.unwrap().unwrap().base_offset.0
}

/// Produces one record of a key nothing else uses, in an entry of its own: the newest entry
/// of a log is never compacted (Kafka's active segment), so this makes every earlier one
/// compactable. Returns its offset.
async fn produce_marker(agent: &Agent, tp: &TopicPartition) -> i64 {
    produce(
        agent,
        tp,
        &vec![kv("end", Some("marker"))],
        Compression::None,
    )
    .await
}

/// The records `log` holds after compaction: of every key the one at the highest offset.
fn latest_per_key(log: &[Read]) -> Vec<Read> {
    let mut latest: HashMap<&Option<Vec<u8>>, &Read> = HashMap::new();
    for r in log {
        latest.insert(&r.1, r);
    }
    let mut out: Vec<Read> = latest.into_values().cloned().collect();
    out.sort_by_key(|r| r.0);
    out
}

async fn read_all(agent: &Agent, tp: &TopicPartition, from: i64) -> Vec<Read> {
    decode_records(&read_bytes(agent, tp, Offset(from)).await, Offset(from))
}

fn kv(key: &str, value: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        key.as_bytes().to_vec(),
        value.map(|v| v.as_bytes().to_vec()),
    )
}

#[tokio::test]
async fn a_compacted_topic_reads_back_exactly_the_latest_record_per_key_at_its_offset() {
    let setup = Setup::new();
    // Small entries and objects: the pass writes several objects of several entries.
    let agent = setup.small_objects_agent(2_000, 20_000).await;
    let (tp, config) = compacted_topic(&agent, "kv", &[("delete.retention.ms", "3600000")]).await;
    let mut n = 0u64;
    for b in 0..300 {
        let records: Produced = (0..1 + b % 5)
            .map(|_| {
                n += 1;
                let key = format!("k{}", (n * 7919) % 40);
                let value =
                    (n % 10 != 3).then(|| format!("v{n}-{}", "x".repeat((n % 50) as usize)));
                kv(&key, value.as_deref())
            })
            .collect();
        produce(&agent, &tp, &records, CODECS[b % 5]).await;
    }
    produce_marker(&agent, &tp).await;
    let (high_watermark, _) = agent.partition_offsets(&tp).await.unwrap();
    let all = read_all(&agent, &tp, 0).await;
    assert_eq!(all.len() as i64, high_watermark.0);
    let expected = latest_per_key(&all);
    assert!(expected.len() <= 41);

    let done = agent.clean_partition(&tp, &config, true).await.unwrap();
    assert_eq!(done.partitions, 1, "{done:?}");
    assert_eq!(done.conflicts, 0);
    assert!(done.objects > 1, "{done:?}");
    assert_eq!(done.superseded as usize, all.len() - expected.len());
    assert_eq!(done.tombstones + done.keyless, 0);
    assert_eq!(read_all(&agent, &tp, 0).await, expected);
    // Offsets stay: same high watermark, same log start.
    assert_eq!(
        agent.partition_offsets(&tp).await.unwrap().0,
        high_watermark
    );
    assert_eq!(
        agent
            .list_offset(&tp, OffsetSpec::Earliest)
            .await
            .unwrap()
            .0,
        Offset(0)
    );
    // A read from any offset, even one whose record is gone, starts at the next record kept.
    for from in (0..high_watermark.0).step_by(7) {
        let tail: Vec<Read> = expected.iter().filter(|r| r.0 >= from).cloned().collect();
        assert_eq!(read_all(&agent, &tp, from).await, tail, "from {from}");
    }
    // Compressed batches stay compressed with their codec.
    let codecs: std::collections::BTreeSet<i16> = read_bytes(&agent, &tp, Offset(0))
        .await
        .iter()
        .flat_map(|b| streamhouse_storage::batch::walk(b))
        .map(|s| s.header.compression())
        .collect();
    assert_eq!(codecs.len(), 5, "{codecs:?}");
    // Nothing more to remove: a second pass rewrites nothing.
    let again = agent.clean_partition(&tp, &config, true).await.unwrap();
    assert_eq!((again.objects, again.superseded), (0, 0), "{again:?}");
    // Garbage collection deletes the replaced objects; the records stay.
    agent.collect_garbage().await.unwrap();
    assert_eq!(read_all(&agent, &tp, 0).await, expected);
}

#[tokio::test]
async fn tombstones_go_after_delete_retention_and_keyless_records_are_refused() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    let (tp, config) = compacted_topic(&agent, "t", &[("delete.retention.ms", "400")]).await;
    for records in [
        vec![kv("k1", Some("v1"))],
        vec![kv("k2", Some("v2"))],
        vec![kv("k1", None)],
        vec![kv("k3", Some("v3"))],
        vec![kv("end", Some("marker"))],
    ] {
        produce(&agent, &tp, &records, Compression::None).await;
    }
    let first = agent.clean_partition(&tp, &config, false).await.unwrap();
    assert_eq!((first.superseded, first.tombstones), (1, 0), "{first:?}");
    let key = |s: &str| Some(s.as_bytes().to_vec());
    assert_eq!(
        read_all(&agent, &tp, 0).await,
        vec![
            (1, key("k2"), key("v2")),
            (2, key("k1"), None),
            (3, key("k3"), key("v3")),
            (4, key("end"), key("marker")),
        ],
        "the tombstone stays for delete.retention.ms"
    );
    // Not due yet: nothing dirty and the tombstone's horizon is ahead.
    assert_eq!(agent.clean().await.unwrap().partitions, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = agent.clean().await.unwrap();
    assert_eq!((later.partitions, later.tombstones), (1, 1), "{later:?}");
    assert_eq!(
        read_all(&agent, &tp, 0).await,
        vec![
            (1, key("k2"), key("v2")),
            (3, key("k3"), key("v3")),
            (4, key("end"), key("marker")),
        ]
    );

    // Keyless records are refused, compressed or not, and use no offset.
    for codec in [Compression::None, Compression::Zstd] {
        let batch = keyed_record_batch(
            &[(Some(b"k"), Some(b"v")), (None, Some(b"no key"))],
            0,
            codec,
        );
        let err = agent.append(&tp, batch).await.unwrap_err();
        assert!(matches!(err, AgentError::InvalidRecord { .. }), "{err}");
        assert!(!err.is_retriable());
    }
    assert_eq!(agent.partition_offsets(&tp).await.unwrap().0, Offset(5));
}

#[tokio::test]
async fn keyless_records_from_before_the_policy_change_are_dropped() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    agent.create_topic("d", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("d", 0);
    let batch = keyed_record_batch(
        &[(None, Some(b"loose")), (Some(b"a"), Some(b"1"))],
        0,
        Compression::Lz4,
    );
    let done = agent.append(&tp, batch).await.unwrap();
    agent.flush().await;
    done.await.unwrap().unwrap();
    produce(&agent, &tp, &vec![kv("a", Some("2"))], Compression::None).await;
    produce_marker(&agent, &tp).await;
    let config = TopicConfig::parse(&configs(&[("cleanup.policy", "compact")])).unwrap();
    let done = agent.clean_partition(&tp, &config, false).await.unwrap();
    assert_eq!((done.keyless, done.superseded), (1, 1), "{done:?}");
    let key = |s: &str| Some(s.as_bytes().to_vec());
    assert_eq!(
        read_all(&agent, &tp, 0).await,
        vec![(2, key("a"), key("2")), (3, key("end"), key("marker"))]
    );
}

#[tokio::test]
async fn ranges_left_without_records_keep_their_offsets_and_reads_skip_them() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    let (tp, config) = compacted_topic(&agent, "z", &[("delete.retention.ms", "0")]).await;
    for i in 0..5 {
        produce(
            &agent,
            &tp,
            &vec![kv("k", Some(&format!("v{i}")))],
            Compression::Gzip,
        )
        .await;
    }
    produce(&agent, &tp, &vec![kv("k", None)], Compression::None).await;
    produce_marker(&agent, &tp).await;
    // The first pass drops the values and gives the tombstone its horizon (now + 0 ms); the
    // second drops the tombstone.
    agent.clean_partition(&tp, &config, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = agent.clean_partition(&tp, &config, true).await.unwrap();
    assert_eq!(second.tombstones, 1, "{second:?}");
    let entries = agent
        .metadata()
        .find_entries(&tp, Offset(0), 100)
        .await
        .unwrap();
    assert_eq!(entries.first().map(|e| e.base_offset), Some(Offset(0)));
    assert!(entries
        .windows(2)
        .all(|w| w[0].end_offset == w[1].base_offset));
    assert!(
        entries[..entries.len() - 1].iter().all(|e| e.byte_len == 0),
        "{entries:?}"
    );
    let key = |s: &str| Some(s.as_bytes().to_vec());
    for from in 0..7 {
        assert_eq!(
            read_all(&agent, &tp, from).await,
            vec![(6, key("end"), key("marker"))],
            "from {from}"
        );
    }
    // Object compaction and garbage collection take such entries in their stride.
    agent.compact().await.unwrap();
    agent.collect_garbage().await.unwrap();
    assert_eq!(
        read_all(&agent, &tp, 0).await,
        vec![(6, key("end"), key("marker"))]
    );
}

#[tokio::test]
async fn the_dirty_ratio_and_the_compaction_lags_decide_when_a_pass_runs() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    let (tp, _) = compacted_topic(&agent, "r", &[]).await;
    for i in 0..20 {
        produce(
            &agent,
            &tp,
            &vec![kv(&format!("k{i}"), Some("value"))],
            Compression::None,
        )
        .await;
    }
    produce_marker(&agent, &tp).await;
    // The first round under a lease looks at the whole log.
    let first = agent.clean().await.unwrap();
    assert_eq!(first.partitions, 1, "{first:?}");
    assert_eq!(
        agent.metadata().clean_offset(&tp).await.unwrap(),
        Offset(20),
        "compacted up to the newest entry"
    );
    // Two more records are under half of what could be compacted: not yet.
    for i in 0..2 {
        produce(
            &agent,
            &tp,
            &vec![kv(&format!("k{i}"), Some("newer"))],
            Compression::None,
        )
        .await;
    }
    assert_eq!(agent.clean().await.unwrap().partitions, 0);
    // Enough of them: the pass runs and drops what they supersede.
    for i in 2..25 {
        produce(
            &agent,
            &tp,
            &vec![kv(&format!("k{i}"), Some("newer"))],
            Compression::None,
        )
        .await;
    }
    let due = agent.clean().await.unwrap();
    assert_eq!((due.partitions, due.superseded), (1, 20), "{due:?}");

    // min.compaction.lag.ms holds young records back; max.compaction.lag.ms forces old ones.
    let (young, young_config) =
        compacted_topic(&agent, "young", &[("min.compaction.lag.ms", "3600000")]).await;
    for _ in 0..3 {
        produce(&agent, &young, &vec![kv("k", Some("v"))], Compression::None).await;
    }
    let held = agent
        .clean_partition(&young, &young_config, true)
        .await
        .unwrap();
    assert_eq!(held.superseded, 0, "{held:?}");
    let (old, old_config) = compacted_topic(
        &agent,
        "old",
        &[
            ("min.cleanable.dirty.ratio", "1"),
            ("max.compaction.lag.ms", "1"),
        ],
    )
    .await;
    produce(&agent, &old, &vec![kv("k", Some("v"))], Compression::None).await;
    agent
        .clean_partition(&old, &old_config, true)
        .await
        .unwrap();
    produce(&agent, &old, &vec![kv("k", Some("w"))], Compression::None).await;
    produce_marker(&agent, &old).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let forced = agent
        .clean_partition(&old, &old_config, false)
        .await
        .unwrap();
    assert_eq!(forced.superseded, 1, "{forced:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Produce { keys: Vec<(u8, bool)>, codec: usize },
    Flush,
    Clean,
    Compact,
    Gc,
    Fetch { fraction: f64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (prop::collection::vec((0..6u8, prop::bool::weighted(0.2)), 1..5), 0..5usize)
            .prop_map(|(keys, codec)| Op::Produce { keys, codec }),
        3 => Just(Op::Flush),
        2 => Just(Op::Clean),
        1 => Just(Op::Compact),
        1 => Just(Op::Gc),
        2 => (0.0..1.0f64).prop_map(|fraction| Op::Fetch { fraction }),
    ]
}

/// What a read of the partition from `from` may return, given every record acknowledged
/// (`log`, by offset): records at their offsets with their bytes, in offset order, the latest
/// of every key always, and no record that no later record of its key supersedes missing.
fn check_read(log: &[Read], read: &[Read], from: i64) -> Result<(), TestCaseError> {
    let latest: HashMap<&Option<Vec<u8>>, i64> = log.iter().map(|r| (&r.1, r.0)).collect();
    let mut seen = read.iter().peekable();
    for r in &log[usize::try_from(from).unwrap_or(0)..] {
        let present = seen.peek().is_some_and(|s| s.0 == r.0);
        if present {
            let s = seen.next().unwrap();
            prop_assert_eq!(s, r, "record at {} changed", r.0);
        } else {
            prop_assert!(
                latest[&r.1] > r.0,
                "record {:?} is gone but no later record has its key",
                r
            );
        }
    }
    prop_assert!(
        seen.next().is_none(),
        "a read returned records that were never produced"
    );
    Ok(())
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let setup = Setup::new();
    let agent = setup.small_objects_agent(300, 2000).await;
    let (tp, config) = compacted_topic(&agent, "p", &[("min.cleanable.dirty.ratio", "0")]).await;
    let mut log: Vec<Read> = Vec::new();
    let mut pending = Vec::new();
    let mut counter = 0;
    for op in ops {
        match op {
            Op::Produce { keys, codec } => {
                let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = keys
                    .iter()
                    .map(|(k, tombstone)| {
                        counter += 1;
                        let value = (!tombstone).then(|| format!("v{counter}").into_bytes());
                        (format!("k{k}").into_bytes(), value)
                    })
                    .collect();
                let refs: Vec<KeyValue<'_>> = records
                    .iter()
                    .map(|(k, v)| (Some(&k[..]), v.as_deref()))
                    .collect();
                let batch = keyed_record_batch(&refs, 1_700_000_000_000, CODECS[codec]);
                pending.push((records, agent.append(&tp, batch).await.unwrap()));
            }
            Op::Flush => {
                agent.flush().await;
                for (records, done) in pending.drain(..) {
                    let base = done.await.unwrap().unwrap().base_offset.0;
                    prop_assert_eq!(base, log.len() as i64);
                    for (i, (k, v)) in records.into_iter().enumerate() {
                        log.push((base + i as i64, Some(k), v));
                    }
                }
            }
            Op::Clean => {
                agent.clean_partition(&tp, &config, true).await.unwrap();
            }
            Op::Compact => {
                agent.compact().await.unwrap();
            }
            Op::Gc => {
                agent.collect_garbage().await.unwrap();
            }
            Op::Fetch { fraction } => {
                let from = (log.len() as f64 * fraction) as i64;
                check_read(&log, &read_all(&agent, &tp, from).await, from)?;
            }
        }
    }
    agent.flush().await;
    for (records, done) in pending.drain(..) {
        let base = done.await.unwrap().unwrap().base_offset.0;
        for (i, (k, v)) in records.into_iter().enumerate() {
            log.push((base + i as i64, Some(k), v));
        }
    }
    // Then compact everything.
    let end = produce_marker(&agent, &tp).await;
    log.push((end, Some(b"end".to_vec()), Some(b"marker".to_vec())));
    agent.clean_partition(&tp, &config, true).await.unwrap();
    agent.compact().await.unwrap();
    agent.collect_garbage().await.unwrap();
    let (high_watermark, log_start) = agent.partition_offsets(&tp).await.unwrap();
    prop_assert_eq!((high_watermark.0, log_start.0), (log.len() as i64, 0));
    prop_assert_eq!(read_all(&agent, &tp, 0).await, latest_per_key(&log));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any interleaving: reads only ever miss superseded records, and after a last pass a
    /// full read is exactly the latest record of every key at its offset.
    #[test]
    fn any_interleaving_keeps_the_latest_record_of_every_key_at_its_offset(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_ops(ops))?;
    }
}
