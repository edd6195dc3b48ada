//! Object compaction and garbage collection on a real agent (SQLite + objects in a local
//! directory, no cache, so every read of an object is a counted GET): compaction merges
//! small slices into per-partition objects without changing a byte any reader sees, garbage
//! collection deletes what no index entry names (after retention, compaction or a topic
//! deletion) and orphans no commit named, and any interleaving of produce, flush,
//! compaction, retention, garbage collection and fetch keeps every record that retention has
//! not removed at its offset.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use streamhouse_agent::Agent;
use streamhouse_metadata::{Offset, TopicPartition};

mod common;
use common::{decode, read_bytes, Setup};

/// Objects in the object store.
async fn object_count(agent: &Agent) -> usize {
    agent.storage().list("data").await.unwrap().len()
}

/// Index entries of `tp`.
async fn entry_count(agent: &Agent, tp: &TopicPartition) -> usize {
    agent
        .metadata()
        .find_entries(tp, Offset(0), 1_000_000)
        .await
        .unwrap()
        .len()
}

fn gets(agent: &Agent) -> u64 {
    agent.storage().stats().gets.load(Ordering::Relaxed)
}

/// Appends one batch of `values` to `tp` (not flushed); resolves to its base offset.
async fn append(
    agent: &Agent,
    tp: &TopicPartition,
    values: &[Vec<u8>],
) -> tokio::sync::oneshot::Receiver<
    Result<streamhouse_agent::Appended, streamhouse_agent::AgentError>,
> {
    let records: Vec<(Option<&[u8]>, &[u8])> = values.iter().map(|v| (None, &v[..])).collect();
    let batch = streamhouse_testing::record_batch(&records, 1_700_000_000_000);
    agent.append(tp, batch).await.unwrap()
}

#[tokio::test]
async fn compaction_cuts_objects_entries_and_gets_twentyfold_without_changing_a_byte() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    agent
        .create_topic("small", 2, &BTreeMap::new())
        .await
        .unwrap();
    let tps = [
        TopicPartition::new("small", 0),
        TopicPartition::new("small", 1),
    ];
    // 100,000 records of ~40 bytes, 25 per batch, one flush per batch pair: every flush
    // object holds a slice of both partitions.
    let mut n = 0;
    while n < 100_000 {
        let mut waiting = Vec::new();
        for tp in &tps {
            let values: Vec<Vec<u8>> = (0..25)
                .map(|i| format!("record-{:08}", n + i).into_bytes())
                .collect();
            waiting.push(append(&agent, tp, &values).await);
            n += 25;
        }
        agent.flush().await;
        for w in waiting {
            w.await.unwrap().unwrap();
        }
    }
    let objects_before = object_count(&agent).await;
    assert_eq!(objects_before, 2000);
    let mut before = Vec::new();
    for tp in &tps {
        assert_eq!(entry_count(&agent, tp).await, 2000);
        let start = gets(&agent);
        let bytes = read_bytes(&agent, tp, Offset(0)).await;
        let read_gets = gets(&agent) - start;
        assert!(read_gets >= 2000, "{read_gets} GETs for 2000 entries");
        before.push((bytes, read_gets));
    }

    let done = agent.compact().await.unwrap();
    assert_eq!(done.entries_in, 4000, "{done:?}");
    assert_eq!(done.conflicts, 0);
    // Nothing is deleted before garbage collection, and reads see the same bytes.
    assert_eq!(object_count(&agent).await, objects_before + done.objects);
    // Slices this small are merged more than once: the object a run of MAX_RUN_ENTRIES of
    // them becomes holds one small entry again. Passes go on until one merges nothing.
    let mut written = done.objects;
    for pass in 2.. {
        let more = agent.compact().await.unwrap();
        assert_eq!(more.conflicts, 0);
        if more.objects == 0 {
            break;
        }
        written += more.objects;
        assert!(pass < 5, "pass {pass} still merged: {more:?}");
    }
    let gc = agent.collect_garbage().await.unwrap();
    assert!(gc.ran);
    // Every object but those the index names now is gone.
    let objects_after = object_count(&agent).await;
    assert_eq!(
        gc.unreferenced_deleted,
        2000 + written - objects_after,
        "{gc:?}"
    );
    assert!(
        objects_after * 20 <= objects_before,
        "{objects_before} objects became {objects_after}"
    );
    for (tp, (bytes_before, gets_before)) in tps.iter().zip(before.clone()) {
        let entries = entry_count(&agent, tp).await;
        assert!(entries * 20 <= 2000, "{tp}: 2000 entries became {entries}");
        let start = gets(&agent);
        let bytes = read_bytes(&agent, tp, Offset(0)).await;
        let gets_after = gets(&agent) - start;
        assert!(
            gets_after * 20 <= gets_before,
            "{tp}: a full read took {gets_before} GETs before, {gets_after} after"
        );
        assert_eq!(
            bytes.concat(),
            bytes_before.concat(),
            "{tp}: the bytes read changed"
        );
        let records = decode(&bytes, Offset(0));
        assert_eq!(records.len(), 50_000);
        assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    }
}

#[tokio::test]
async fn young_short_runs_wait_for_the_window_and_large_entries_stay() {
    let setup = Setup::new();
    let agent = setup
        .agent(|c| {
            c.compaction_window = Duration::from_secs(3600);
            c.compaction_entry_bytes = 4096;
            c.compaction_target_bytes = 64 << 10;
        })
        .await;
    agent.create_topic("w", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("w", 0);
    let small: Vec<Vec<u8>> = vec![b"x".repeat(100)];
    let large: Vec<Vec<u8>> = vec![b"y".repeat(5000)];
    for values in [&small, &small, &small, &large, &small, &small] {
        let done = append(&agent, &tp, values).await;
        agent.flush().await;
        done.await.unwrap().unwrap();
    }
    // The three small entries before the large one can never grow: merged now. The two at
    // the end are younger than the window: left alone; the larger one, alone in its object,
    // too.
    let done = agent.compact().await.unwrap();
    assert_eq!(
        (done.objects, done.entries_in, done.entries_out),
        (1, 3, 1),
        "{done:?}"
    );
    assert_eq!(entry_count(&agent, &tp).await, 4);
    assert_eq!(agent.compact().await.unwrap().objects, 0);

    // Many small entries fill the target size: merged although young.
    for _ in 0..700 {
        let done = append(&agent, &tp, &small).await;
        agent.flush().await;
        done.await.unwrap().unwrap();
    }
    let done = agent.compact().await.unwrap();
    assert!(done.objects >= 1, "{done:?}");
    let before = decode(&read_bytes(&agent, &tp, Offset(0)).await, Offset(0));
    assert_eq!(before.len(), 706);
    assert!(before.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
}

#[tokio::test]
async fn small_runs_become_medium_objects_and_medium_runs_become_large_ones_once() {
    let setup = Setup::new();
    // Entries under 1 KiB are small; objects of 8 KiB (an eighth of the target) or more are
    // left alone.
    let agent = setup
        .agent(|c| {
            c.compaction_window = Duration::from_secs(3600);
            c.compaction_entry_bytes = 1024;
            c.compaction_target_bytes = 64 << 10;
        })
        .await;
    agent.create_topic("m", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("m", 0);
    let small: Vec<Vec<u8>> = vec![b"s".repeat(300)];
    let medium: Vec<Vec<u8>> = vec![b"m".repeat(5000)];
    let mut plan = vec![&small; 12];
    plan.push(&medium);
    plan.extend(vec![&small; 12]);
    for values in plan {
        let done = append(&agent, &tp, values).await;
        agent.flush().await;
        done.await.unwrap().unwrap();
    }
    let before = read_bytes(&agent, &tp, Offset(0)).await;
    // The small run before the medium entry cannot grow: it becomes one object of entries
    // of about 1 KiB (medium ones). The small run at the end is young: it waits.
    let first = agent.compact().await.unwrap();
    assert_eq!((first.objects, first.entries_in), (1, 12), "{first:?}");
    // That object and the medium entry (two objects, over an eighth of the target) follow each other
    // and are followed by small entries: merged into one large object.
    let second = agent.compact().await.unwrap();
    assert_eq!(second.objects, 1, "{second:?}");
    assert_eq!(second.entries_in, first.entries_out + 1, "{second:?}");
    // Large objects stay; the young small run still waits.
    assert_eq!(agent.compact().await.unwrap().objects, 0);
    let stored = agent
        .metadata()
        .find_stored_entries(&tp, Offset(0), 100)
        .await
        .unwrap();
    assert!(stored[0].object_bytes >= 8 << 10, "{:?}", stored[0]);
    assert_eq!(stored.len(), second.entries_out + 12);
    assert_eq!(
        read_bytes(&agent, &tp, Offset(0)).await.concat(),
        before.concat()
    );
}

#[tokio::test]
async fn garbage_collection_deletes_what_retention_and_topic_deletion_unname() {
    let setup = Setup::new();
    let agent = setup.agent(|_| {}).await;
    agent.create_topic("r", 1, &BTreeMap::new()).await.unwrap();
    agent
        .create_topic("gone", 1, &BTreeMap::new())
        .await
        .unwrap();
    let tp = TopicPartition::new("r", 0);
    let gone = TopicPartition::new("gone", 0);
    for i in 0..10 {
        let a = append(&agent, &tp, &[format!("r{i}").into_bytes()]).await;
        let b = append(&agent, &gone, &[format!("g{i}").into_bytes()]).await;
        agent.flush().await;
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
    }
    assert_eq!(object_count(&agent).await, 10);
    // Shared objects stay while either partition still names them.
    agent.delete_records(&tp, 6).await.unwrap();
    assert_eq!(entry_count(&agent, &tp).await, 4);
    assert_eq!(
        agent.collect_garbage().await.unwrap().unreferenced_deleted,
        0
    );
    agent.delete_topic("gone").await.unwrap();
    assert_eq!(
        agent.collect_garbage().await.unwrap().unreferenced_deleted,
        6
    );
    assert_eq!(object_count(&agent).await, 4);
    let left = decode(&read_bytes(&agent, &tp, Offset(6)).await, Offset(6));
    let values: Vec<Vec<u8>> = left.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        values,
        vec![
            b"r6".to_vec(),
            b"r7".to_vec(),
            b"r8".to_vec(),
            b"r9".to_vec()
        ]
    );
}

#[tokio::test]
async fn orphans_are_deleted_after_their_grace_and_committed_objects_never() {
    let setup = Setup::new();
    let agent = setup
        .agent(|c| c.orphan_grace = Duration::from_millis(200))
        .await;
    agent.create_topic("o", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("o", 0);
    let done = append(&agent, &tp, &[b"kept".to_vec()]).await;
    agent.flush().await;
    done.await.unwrap().unwrap();
    // What a flush whose commit never happened leaves behind.
    let orphan = "data/dead-agent/0000000000001-abc.sho";
    agent
        .storage()
        .put_new(orphan, Bytes::from_static(b"never committed"))
        .await
        .unwrap();
    assert_eq!(
        agent.collect_garbage().await.unwrap().orphans_deleted,
        0,
        "too young"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gc = agent.collect_garbage().await.unwrap();
    assert_eq!(gc.orphans_deleted, 1, "{gc:?}");
    assert_eq!(object_count(&agent).await, 1);
    // The late writer commits after all (as if it still held the lease): the tombstone
    // refuses the whole commit, and nothing moves.
    let epoch = streamhouse_metadata::LeaseEpoch(agent.leader_epoch(&tp).unwrap());
    let late = agent
        .metadata()
        .commit(
            &streamhouse_metadata::ObjectRecord {
                key: orphan.into(),
                size_bytes: 15,
                writer: streamhouse_metadata::AgentId("a".into()),
            },
            &[streamhouse_metadata::PartitionCommit {
                holder: streamhouse_metadata::AgentId("a".into()),
                epoch,
                expected_high_watermark: Offset(1),
                entry: streamhouse_metadata::IndexEntry {
                    tp: tp.clone(),
                    base_offset: Offset(1),
                    end_offset: Offset(2),
                    object_key: orphan.into(),
                    byte_start: 0,
                    byte_len: 15,
                    max_timestamp: 0,
                },
                producers: Vec::new(),
            }],
        )
        .await;
    assert!(late.is_err(), "{late:?}");
    let stored = agent.metadata().get_partition(&tp).await.unwrap().unwrap();
    assert_eq!(stored.high_watermark, Offset(1));
    let kept = decode(&read_bytes(&agent, &tp, Offset(0)).await, Offset(0));
    assert_eq!(kept, vec![(0, b"kept".to_vec())]);
    assert_eq!(agent.collect_garbage().await.unwrap().orphans_deleted, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Produce {
        partition: usize,
        records: usize,
    },
    Flush,
    Compact,
    /// DeleteRecords at this fraction of the way from the log start to the high watermark.
    Retain {
        partition: usize,
        fraction: f64,
    },
    Gc,
    Fetch {
        partition: usize,
        fraction: f64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..20usize).prop_map(|(partition, records)| Op::Produce { partition, records }),
        3 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => (0..2usize, 0.0..1.0f64).prop_map(|(partition, fraction)| Op::Retain { partition, fraction }),
        2 => Just(Op::Gc),
        2 => (0..2usize, 0.0..1.0f64).prop_map(|(partition, fraction)| Op::Fetch { partition, fraction }),
    ]
}

/// What the test expects of one partition.
#[derive(Debug, Default)]
struct Model {
    /// Every acknowledged record, by offset.
    values: Vec<Vec<u8>>,
    log_start: i64,
    high_watermark: i64,
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let setup = Setup::new();
    let agent = setup.small_objects_agent(300, 2000).await;
    agent.create_topic("p", 2, &BTreeMap::new()).await.unwrap();
    let tps = [TopicPartition::new("p", 0), TopicPartition::new("p", 1)];
    let mut models = [Model::default(), Model::default()];
    let mut pending: Vec<(usize, Vec<Vec<u8>>, _)> = Vec::new();
    let mut counter = 0;
    for op in ops {
        match op {
            Op::Produce { partition, records } => {
                let values: Vec<Vec<u8>> = (0..records)
                    .map(|_| {
                        counter += 1;
                        format!("v{counter}").into_bytes()
                    })
                    .collect();
                let done = append(&agent, &tps[partition], &values).await;
                pending.push((partition, values, done));
            }
            Op::Flush => {
                agent.flush().await;
                for (partition, values, done) in pending.drain(..) {
                    let base = done.await.unwrap().unwrap().base_offset.0;
                    let model = &mut models[partition];
                    prop_assert_eq!(base, model.values.len() as i64);
                    model.values.extend(values);
                    model.high_watermark = model.values.len() as i64;
                }
            }
            Op::Compact => {
                agent.compact().await.unwrap();
            }
            Op::Gc => {
                agent.collect_garbage().await.unwrap();
            }
            Op::Retain {
                partition,
                fraction,
            } => {
                let model = &mut models[partition];
                let to = model.log_start
                    + ((model.high_watermark - model.log_start) as f64 * fraction) as i64;
                agent.delete_records(&tps[partition], to).await.unwrap();
                model.log_start = model.log_start.max(to);
            }
            Op::Fetch {
                partition,
                fraction,
            } => {
                let model = &models[partition];
                let from = model.log_start
                    + ((model.high_watermark - model.log_start) as f64 * fraction) as i64;
                check(&agent, &tps[partition], model, Offset(from)).await?;
            }
        }
    }
    agent.flush().await;
    for (partition, values, done) in pending.drain(..) {
        done.await.unwrap().unwrap();
        models[partition].values.extend(values);
        models[partition].high_watermark = models[partition].values.len() as i64;
    }
    agent.compact().await.unwrap();
    agent.collect_garbage().await.unwrap();
    for (tp, model) in tps.iter().zip(&models) {
        check(&agent, tp, model, Offset(model.log_start)).await?;
    }
    Ok(())
}

/// The partition's offsets are the model's, and it reads from `from` as exactly the model's
/// records at their offsets.
async fn check(
    agent: &Agent,
    tp: &TopicPartition,
    model: &Model,
    from: Offset,
) -> Result<(), TestCaseError> {
    let (high_watermark, log_start) = agent.partition_offsets(tp).await.unwrap();
    prop_assert_eq!(
        high_watermark.0,
        model.high_watermark,
        "high watermark of {}",
        tp
    );
    prop_assert_eq!(log_start.0, model.log_start, "log start of {}", tp);
    let read = decode(&read_bytes(agent, tp, from).await, from);
    let expected: Vec<(i64, Vec<u8>)> = (from.0..model.high_watermark)
        .map(|o| (o, model.values[o as usize].clone()))
        .collect();
    prop_assert_eq!(read, expected, "records of {} from {}", tp, from);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_every_retained_record_at_its_offset(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_ops(ops))?;
    }
}
