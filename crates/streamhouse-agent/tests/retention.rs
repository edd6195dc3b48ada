//! Retention on a real agent (SQLite + in-memory objects): `retention.ms` and
//! `retention.bytes` move the log start offset past whole index entries, reads and
//! ListOffsets follow it, and nothing young enough or within the size is touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use streamhouse_agent::{Agent, AgentConfig, AgentError, OffsetSpec};
use streamhouse_metadata::{Offset, TopicPartition};
use streamhouse_storage::ObjectStorage;

async fn agent(dir: &tempfile::TempDir) -> Arc<Agent> {
    let url = format!("sqlite://{}/metadata.db", dir.path().display());
    let metadata = streamhouse_metadata::open(&url).await.unwrap();
    let storage = ObjectStorage::open("memory://", 1 << 20).unwrap();
    Agent::start(
        AgentConfig::for_tests("a", "127.0.0.1:9092"),
        metadata,
        storage,
    )
    .await
    .unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Appends one batch of `n` records stamped `timestamp` and flushes it into its own index
/// entry; returns its base offset.
async fn append(agent: &Agent, tp: &TopicPartition, n: usize, timestamp: i64) -> Offset {
    let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
    let records: Vec<(Option<&[u8]>, &[u8])> = values.iter().map(|v| (None, &v[..])).collect();
    let batch = streamhouse_testing::record_batch(&records, timestamp);
    let done = agent.append(tp, batch).await.unwrap();
    agent.flush().await;
    done.await.unwrap().unwrap().base_offset
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn retention_ms_drops_whole_entries_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir).await;
    agent
        .create_topic("t", 1, &configs(&[("retention.ms", "3600000")]))
        .await
        .unwrap();
    let tp = TopicPartition::new("t", 0);
    let day_ago = now_ms() - 86_400_000;
    assert_eq!(append(&agent, &tp, 3, day_ago).await, Offset(0));
    assert_eq!(append(&agent, &tp, 2, day_ago + 10).await, Offset(3));
    let fresh = append(&agent, &tp, 4, now_ms()).await;
    assert_eq!(fresh, Offset(5));
    // An old record after a fresh one stays: retention stops at the first young entry.
    append(&agent, &tp, 1, day_ago).await;

    assert_eq!(agent.enforce_retention().await.unwrap(), 1);
    assert_eq!(
        agent.partition_offsets(&tp).await.unwrap(),
        (Offset(10), Offset(5))
    );
    assert_eq!(
        agent
            .list_offset(&tp, OffsetSpec::Earliest)
            .await
            .unwrap()
            .0,
        Offset(5)
    );
    assert!(matches!(
        agent.read(&tp, Offset(0), 1 << 20, true).await,
        Err(AgentError::OffsetOutOfRange { .. })
    ));
    let read = agent.read(&tp, Offset(5), 1 << 20, true).await.unwrap();
    assert_eq!(read.record_count, 5);
    // Nothing more to do, and nothing moves back.
    assert_eq!(agent.enforce_retention().await.unwrap(), 0);
    assert_eq!(agent.partition_offsets(&tp).await.unwrap().1, Offset(5));
}

#[tokio::test]
async fn retention_bytes_keeps_the_newest_entries_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir).await;
    agent.create_topic("b", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("b", 0);
    let now = now_ms();
    for _ in 0..4 {
        append(&agent, &tp, 2, now).await;
    }
    // Four entries of the same size; allow a little more than two of them.
    let entry = agent.read(&tp, Offset(0), 1, true).await.unwrap().len();
    let limit = (2 * entry + entry / 2).to_string();
    agent
        .set_topic_configs("b", &configs(&[("retention.bytes", &limit)]))
        .await
        .unwrap();
    assert_eq!(agent.enforce_retention().await.unwrap(), 1);
    assert_eq!(
        agent.partition_offsets(&tp).await.unwrap(),
        (Offset(8), Offset(4))
    );
    // Under cleanup.policy=compact, retention deletes nothing (as in Kafka).
    agent
        .set_topic_configs(
            "b",
            &configs(&[("retention.bytes", "0"), ("cleanup.policy", "compact")]),
        )
        .await
        .unwrap();
    assert_eq!(agent.enforce_retention().await.unwrap(), 0);
    assert_eq!(agent.partition_offsets(&tp).await.unwrap().1, Offset(4));
    // With delete back, a limit of 0 leaves nothing readable; new records continue.
    agent
        .set_topic_configs(
            "b",
            &configs(&[("retention.bytes", "0"), ("cleanup.policy", "delete")]),
        )
        .await
        .unwrap();
    assert_eq!(agent.enforce_retention().await.unwrap(), 1);
    assert_eq!(
        agent.partition_offsets(&tp).await.unwrap(),
        (Offset(8), Offset(8))
    );
    assert_eq!(append(&agent, &tp, 1, now).await, Offset(8));
}
