//! The idempotent producer at the agent: a retried batch lands once and is answered with its
//! original offset, whether the original is committed, still pending, or was committed by
//! an earlier incarnation of the agent; gaps and stale epochs are refused; a failed flush
//! advances no producer's sequence.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use streamhouse_agent::{Agent, AgentConfig, AgentError, Appended};
use streamhouse_metadata::{MetadataStore, Offset, TopicPartition};
use streamhouse_storage::ObjectStorage;
use tokio::sync::oneshot;

const PID: i64 = 42;

struct Setup {
    dir: tempfile::TempDir,
    store: Arc<dyn MetadataStore>,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/metadata.db", dir.path().display());
        let store = streamhouse_metadata::open(&url).await.unwrap();
        Setup { dir, store }
    }

    async fn agent(&self) -> Arc<Agent> {
        let mut config = AgentConfig::for_tests("a", "127.0.0.1:9092");
        config.lease_ttl = Duration::from_secs(60);
        let url = format!("file://{}/objects", self.dir.path().display());
        let storage = ObjectStorage::open(&url, 64 << 20).unwrap();
        Agent::start(config, self.store.clone(), storage)
            .await
            .unwrap()
    }

    /// Makes every object write fail (a file where the object directory should be), until
    /// the returned guard is dropped.
    fn break_object_store(&self) -> BrokenStore {
        let objects = self.dir.path().join("objects/data");
        let moved = self.dir.path().join("moved");
        std::fs::rename(&objects, &moved).unwrap();
        std::fs::write(&objects, b"not a directory").unwrap();
        BrokenStore { objects, moved }
    }
}

struct BrokenStore {
    objects: std::path::PathBuf,
    moved: std::path::PathBuf,
}

impl Drop for BrokenStore {
    fn drop(&mut self) {
        std::fs::remove_file(&self.objects).unwrap();
        std::fs::rename(&self.moved, &self.objects).unwrap();
    }
}

/// An idempotent batch of `values`, the first at sequence `seq`.
fn batch(epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let records: Vec<(Option<&[u8]>, &[u8])> =
        values.iter().map(|v| (None, v.as_bytes())).collect();
    streamhouse_testing::idempotent_record_batch(&records, 1000, PID, epoch, seq)
}

fn plain(value: &str) -> Bytes {
    streamhouse_testing::record_batch(&[(None, value.as_bytes())], 1000)
}

type Receiver = oneshot::Receiver<Result<Appended, AgentError>>;

async fn outcome(rx: Receiver) -> Result<Appended, AgentError> {
    rx.await.expect("every append is answered")
}

async fn offset_of(rx: Receiver) -> i64 {
    outcome(rx).await.expect("appended").base_offset.0
}

/// Every (offset, value) of a partition, read from offset 0.
async fn read_all(agent: &Agent, tp: &TopicPartition) -> Vec<(i64, String)> {
    let read = agent.read(tp, Offset(0), 1 << 20, true).await.unwrap();
    let mut out = Vec::new();
    for part in &read.records {
        let mut buf = part.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for r in set.records {
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                out.push((r.offset, value));
            }
        }
    }
    assert_eq!(
        out.len() as i64,
        read.high_watermark.0,
        "the partition holds exactly the records read"
    );
    out
}

fn values(read: &[(i64, String)]) -> Vec<&str> {
    read.iter().map(|(_, v)| v.as_str()).collect()
}

async fn setup_topic() -> (Setup, Arc<Agent>, TopicPartition) {
    let setup = Setup::new().await;
    let agent = setup.agent().await;
    agent.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
    (setup, agent, TopicPartition::new("t", 0))
}

#[tokio::test]
async fn a_retry_of_a_committed_batch_gets_its_original_offset() {
    let (_setup, agent, tp) = setup_topic().await;
    let rx = agent.append(&tp, plain("x")).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 0);
    let rx = agent
        .append(&tp, batch(0, 0, &["a", "b", "c"]))
        .await
        .unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 1);
    let rx = agent.append(&tp, plain("y")).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 4);

    // The retry is answered at once, without a flush, and writes nothing.
    let rx = agent
        .append(&tp, batch(0, 0, &["a", "b", "c"]))
        .await
        .unwrap();
    let appended = outcome(rx).await.unwrap();
    assert_eq!(appended.base_offset, Offset(1));
    agent.flush().await;
    // The sequence continues after the original.
    let rx = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 5);
    assert_eq!(
        values(&read_all(&agent, &tp).await),
        vec!["x", "a", "b", "c", "y", "d"]
    );
}

#[tokio::test]
async fn a_retry_while_the_original_is_pending_shares_its_outcome() {
    let (setup, agent, tp) = setup_topic().await;
    let first = agent.append(&tp, batch(0, 0, &["a", "b"])).await.unwrap();
    let retry = agent.append(&tp, batch(0, 0, &["a", "b"])).await.unwrap();
    let next = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    let retry_of_next = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(first).await, 0);
    assert_eq!(offset_of(retry).await, 0);
    assert_eq!(offset_of(next).await, 2);
    assert_eq!(offset_of(retry_of_next).await, 2);
    assert_eq!(values(&read_all(&agent, &tp).await), vec!["a", "b", "c"]);

    // The original's flush fails: the retry waiting for it fails with it, and nothing of
    // the producer's sequence moved, so the next retry is written, once.
    let original = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap();
    let retry = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap();
    {
        let _broken = setup.break_object_store();
        agent.flush().await;
    }
    for rx in [original, retry] {
        let err = outcome(rx).await.unwrap_err();
        assert!(matches!(err, AgentError::FlushFailed { .. }), "{err}");
        assert!(err.is_retriable());
    }
    let rx = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 3);
    assert_eq!(
        values(&read_all(&agent, &tp).await),
        vec!["a", "b", "c", "d"]
    );
}

#[tokio::test]
async fn a_gap_in_the_sequence_is_refused() {
    let (_setup, agent, tp) = setup_topic().await;
    let rx = agent.append(&tp, batch(0, 0, &["a", "b"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 0);
    let err = agent.append(&tp, batch(0, 5, &["gap"])).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::OutOfOrderSequence {
                expected: 2,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    // A batch older than the remembered ones, or overlapping one, is out of order too.
    let err = agent.append(&tp, batch(0, 1, &["b"])).await.unwrap_err();
    assert!(
        matches!(err, AgentError::OutOfOrderSequence { .. }),
        "{err}"
    );
    // A gap after a pending batch is caught at append as well.
    let rx = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    let err = agent.append(&tp, batch(0, 4, &["e"])).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::OutOfOrderSequence {
                expected: 3,
                got: 4,
                ..
            }
        ),
        "{err}"
    );
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 2);
    assert_eq!(values(&read_all(&agent, &tp).await), vec!["a", "b", "c"]);
}

#[tokio::test]
async fn a_stale_epoch_is_fenced_and_a_new_epoch_starts_at_zero() {
    let (_setup, agent, tp) = setup_topic().await;
    let rx = agent.append(&tp, batch(0, 0, &["a"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 0);
    let err = agent.append(&tp, batch(1, 1, &["b"])).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::OutOfOrderSequence {
                expected: 0,
                got: 1,
                ..
            }
        ),
        "{err}"
    );
    let rx = agent.append(&tp, batch(1, 0, &["b"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 1);
    let err = agent
        .append(&tp, batch(0, 1, &["zombie"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::InvalidProducerEpoch { .. }),
        "{err}"
    );
    // Even a retry of the old epoch's batch: that incarnation is fenced.
    let err = agent.append(&tp, batch(0, 0, &["a"])).await.unwrap_err();
    assert!(
        matches!(err, AgentError::InvalidProducerEpoch { .. }),
        "{err}"
    );
    assert_eq!(values(&read_all(&agent, &tp).await), vec!["a", "b"]);
}

#[tokio::test]
async fn producer_state_survives_an_agent_restart() {
    let setup = Setup::new().await;
    let tp = TopicPartition::new("t", 0);
    {
        let agent = setup.agent().await;
        agent.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        for (seq, value) in [(0, "a"), (1, "b"), (2, "c")] {
            let rx = agent.append(&tp, batch(0, seq, &[value])).await.unwrap();
            agent.flush().await;
            assert_eq!(offset_of(rx).await, i64::from(seq));
        }
        // The agent "dies" without releasing its lease.
    }
    let agent = setup.agent().await;
    assert!(agent.leader_epoch(&tp).is_some());
    for (seq, value) in [(1, "b"), (2, "c")] {
        let rx = agent.append(&tp, batch(0, seq, &[value])).await.unwrap();
        assert_eq!(
            offset_of(rx).await,
            i64::from(seq),
            "retry of sequence {seq}"
        );
    }
    let err = agent.append(&tp, batch(0, 7, &["gap"])).await.unwrap_err();
    assert!(
        matches!(err, AgentError::OutOfOrderSequence { expected: 3, .. }),
        "{err}"
    );
    let rx = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 3);
    assert_eq!(
        values(&read_all(&agent, &tp).await),
        vec!["a", "b", "c", "d"]
    );
}

#[tokio::test]
async fn a_batch_retried_after_a_failed_flush_is_written_once() {
    let (setup, agent, tp) = setup_topic().await;
    let rx = agent.append(&tp, batch(0, 0, &["a"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(rx).await, 0);

    let b = agent.append(&tp, batch(0, 1, &["b"])).await.unwrap();
    let c = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    {
        let _broken = setup.break_object_store();
        agent.flush().await;
    }
    assert!(outcome(b).await.unwrap_err().is_retriable());
    assert!(outcome(c).await.unwrap_err().is_retriable());
    // The failed flush did not advance the sequence: what follows c is still a gap.
    let err = agent.append(&tp, batch(0, 3, &["d"])).await.unwrap_err();
    assert!(
        matches!(err, AgentError::OutOfOrderSequence { expected: 1, .. }),
        "{err}"
    );

    // The producer retries b and c (each twice, as after a lost response).
    let b = agent.append(&tp, batch(0, 1, &["b"])).await.unwrap();
    let c = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    agent.flush().await;
    assert_eq!(offset_of(b).await, 1);
    assert_eq!(offset_of(c).await, 2);
    let b = agent.append(&tp, batch(0, 1, &["b"])).await.unwrap();
    let c = agent.append(&tp, batch(0, 2, &["c"])).await.unwrap();
    assert_eq!(offset_of(b).await, 1);
    assert_eq!(offset_of(c).await, 2);
    agent.flush().await;
    assert_eq!(values(&read_all(&agent, &tp).await), vec!["a", "b", "c"]);
}

#[tokio::test]
async fn an_idempotent_record_set_must_be_one_batch() {
    let (_setup, agent, tp) = setup_topic().await;
    let mut two = batch(0, 0, &["a"]).to_vec();
    two.extend_from_slice(&batch(0, 1, &["b"]));
    let err = agent.append(&tp, Bytes::from(two)).await.unwrap_err();
    assert!(matches!(err, AgentError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn producer_ids_are_unique_and_epochs_bump() {
    let (_setup, agent, _tp) = setup_topic().await;
    let (a, epoch) = agent.init_producer_id(None).await.unwrap();
    assert_eq!(epoch.0, 0);
    let (b, _) = agent.init_producer_id(None).await.unwrap();
    assert_ne!(a, b);
    let (same, bumped) = agent.init_producer_id(Some((a, epoch))).await.unwrap();
    assert_eq!((same, bumped.0), (a, 1));
    let err = agent.init_producer_id(Some((a, epoch))).await.unwrap_err();
    assert!(matches!(err, AgentError::ProducerFenced { .. }), "{err}");
}
