//! Helpers shared by the compaction tests: an agent on SQLite and a local directory with no
//! cache (every read of an object is a counted GET), and full reads of a partition.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_metadata::{Offset, TopicPartition};
use streamhouse_storage::ObjectStorage;

pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An agent on this setup's store and directory, compaction and GC run by hand.
    pub async fn agent(&self, tune: impl FnOnce(&mut AgentConfig)) -> Arc<Agent> {
        let url = format!("sqlite://{}/metadata.db", self.dir.path().display());
        let metadata = streamhouse_metadata::open(&url).await.unwrap();
        let objects = format!("file://{}/objects", self.dir.path().display());
        let storage = ObjectStorage::open(&objects, 0).unwrap();
        let mut config = AgentConfig::for_tests("a", "127.0.0.1:9092");
        config.compaction_window = Duration::ZERO;
        config.gc_grace = Duration::ZERO;
        config.orphan_grace = Duration::from_secs(3600);
        tune(&mut config);
        Agent::start(config, metadata, storage).await.unwrap()
    }

    /// An agent whose compactions write index entries of about `entry_bytes` into objects of
    /// about `target_bytes`: small, so that a few records make several of each.
    pub async fn small_objects_agent(&self, entry_bytes: usize, target_bytes: usize) -> Arc<Agent> {
        self.agent(|c| {
            c.compaction_entry_bytes = entry_bytes;
            c.compaction_target_bytes = target_bytes;
        })
        .await
    }
}

/// Reads `tp` from `from` to its high watermark, 1 MiB per read as a consumer would
/// (continuing after the last batch read, past any records compaction removed from its
/// end); returns the bytes of every batch read, in order.
pub async fn read_bytes(agent: &Agent, tp: &TopicPartition, from: Offset) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let read = agent.read(tp, next, 1 << 20, true).await.unwrap();
        if read.records.is_empty() {
            assert_eq!(next, read.high_watermark, "read stopped short");
            return out;
        }
        let last = read
            .records
            .iter()
            .flat_map(|b| streamhouse_storage::batch::walk(b))
            .map(|s| s.header.last_offset())
            .max()
            .unwrap();
        assert!(last >= next.0, "a read returned only batches before {next}");
        next = Offset(last + 1);
        out.extend(read.records);
    }
}

/// One record read back: offset, key, value (`None`: a tombstone).
pub type Read = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record in fetched bytes, from `from` on, with its key and value.
pub fn decode_records(parts: &[Bytes], from: Offset) -> Vec<Read> {
    let mut out = Vec::new();
    for part in parts {
        let mut buf = part.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for r in set.records {
                if r.offset >= from.0 {
                    out.push((
                        r.offset,
                        r.key.map(|k| k.to_vec()),
                        r.value.map(|v| v.to_vec()),
                    ));
                }
            }
        }
    }
    out
}

/// Every record (offset, value) in fetched bytes, from `from` on.
pub fn decode(parts: &[Bytes], from: Offset) -> Vec<(i64, Vec<u8>)> {
    decode_records(parts, from)
        .into_iter()
        .map(|(offset, _, value)| (offset, value.unwrap()))
        .collect()
}
