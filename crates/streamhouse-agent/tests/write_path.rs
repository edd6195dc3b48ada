//! The write path's invariants, on a real SQLite store and object store: offsets 0,1,2,…
//! per partition with no gap and no duplicate, whatever the interleaving of producers,
//! partitions and flushes; failed flushes use up no offset; stale leaders are fenced; the
//! produce metrics count durable records only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use metrics::{Key, Label, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use proptest::prelude::*;
use streamhouse_agent::{Agent, AgentConfig, AgentError, OffsetSpec, ThroughputTotals};
use streamhouse_metadata::*;
use streamhouse_storage::ObjectStorage;

/// An uncompressed batch of keyless records; record `i` has timestamp `timestamp + i`.
fn batch(values: &[Vec<u8>], timestamp: i64) -> Bytes {
    let records: Vec<(Option<&[u8]>, &[u8])> =
        values.iter().map(|v| (None, v.as_slice())).collect();
    streamhouse_testing::record_batch(&records, timestamp)
}

/// Every record (offset, value, timestamp) in fetched bytes.
fn decode(parts: &[Bytes]) -> Vec<(i64, Vec<u8>, i64)> {
    let mut out = Vec::new();
    for part in parts {
        let mut buf = part.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for r in set.records {
                out.push((r.offset, r.value.unwrap().to_vec(), r.timestamp));
            }
        }
    }
    out
}

/// A metadata store whose commits can be made to fail.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn MetadataStore>,
    fail_commits: AtomicBool,
}

#[async_trait::async_trait]
impl MetadataStore for Faulty {
    async fn create_topic(&self, n: &str, p: i32, c: &BTreeMap<String, String>) -> Result<Topic> {
        self.inner.create_topic(n, p, c).await
    }
    async fn delete_topic(&self, n: &str) -> Result<()> {
        self.inner.delete_topic(n).await
    }
    async fn get_topic(&self, n: &str) -> Result<Option<Topic>> {
        self.inner.get_topic(n).await
    }
    async fn list_topics(&self) -> Result<Vec<Topic>> {
        self.inner.list_topics().await
    }
    async fn list_partitions(&self, t: &str) -> Result<Vec<PartitionState>> {
        self.inner.list_partitions(t).await
    }
    async fn get_partition(&self, tp: &TopicPartition) -> Result<Option<PartitionState>> {
        self.inner.get_partition(tp).await
    }
    async fn register_agent(&self, a: &AgentRegistration) -> Result<AgentInfo> {
        self.inner.register_agent(a).await
    }
    async fn heartbeat(&self, a: &AgentId) -> Result<()> {
        self.inner.heartbeat(a).await
    }
    async fn list_agents(&self) -> Result<Vec<AgentInfo>> {
        self.inner.list_agents().await
    }
    async fn live_agents(&self, within: Duration) -> Result<Vec<AgentInfo>> {
        self.inner.live_agents(within).await
    }
    async fn deregister_agent(&self, a: &AgentId) -> Result<()> {
        self.inner.deregister_agent(a).await
    }
    async fn list_all_partitions(&self) -> Result<Vec<PartitionState>> {
        self.inner.list_all_partitions().await
    }
    async fn partition_sizes(&self) -> Result<Vec<(TopicPartition, u64)>> {
        self.inner.partition_sizes().await
    }
    async fn acquire_lease(
        &self,
        tp: &TopicPartition,
        h: &AgentId,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        self.inner.acquire_lease(tp, h, ttl).await
    }
    async fn renew_lease(
        &self,
        tp: &TopicPartition,
        h: &AgentId,
        e: LeaseEpoch,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        self.inner.renew_lease(tp, h, e, ttl).await
    }
    async fn release_lease(&self, tp: &TopicPartition, h: &AgentId, e: LeaseEpoch) -> Result<()> {
        self.inner.release_lease(tp, h, e).await
    }
    async fn commit(
        &self,
        o: &ObjectRecord,
        p: &[PartitionCommit],
    ) -> Result<Vec<std::result::Result<(), CommitRejection>>> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(MetadataError::Invalid {
                message: "injected commit failure".into(),
            });
        }
        self.inner.commit(o, p).await
    }
    async fn find_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.inner.find_entries(tp, from, limit).await
    }
    async fn start_for_retained_bytes(
        &self,
        tp: &TopicPartition,
        max_bytes: u64,
    ) -> Result<Option<Offset>> {
        self.inner.start_for_retained_bytes(tp, max_bytes).await
    }
    async fn find_entry_by_timestamp(
        &self,
        tp: &TopicPartition,
        t: i64,
    ) -> Result<Option<IndexEntry>> {
        self.inner.find_entry_by_timestamp(tp, t).await
    }
    async fn set_topic_configs(&self, n: &str, c: &BTreeMap<String, String>) -> Result<()> {
        self.inner.set_topic_configs(n, c).await
    }
    async fn add_partitions(&self, n: &str, p: i32) -> Result<()> {
        self.inner.add_partitions(n, p).await
    }
    async fn advance_log_start(&self, tp: &TopicPartition, o: Offset) -> Result<Offset> {
        self.inner.advance_log_start(tp, o).await
    }
    async fn clean_offset(&self, tp: &TopicPartition) -> Result<Offset> {
        self.inner.clean_offset(tp).await
    }
    async fn advance_clean_offset(&self, tp: &TopicPartition, o: Offset) -> Result<Offset> {
        self.inner.advance_clean_offset(tp, o).await
    }
    async fn epoch_end_offset(
        &self,
        tp: &TopicPartition,
        e: LeaseEpoch,
    ) -> Result<Option<(LeaseEpoch, Offset)>> {
        self.inner.epoch_end_offset(tp, e).await
    }
    async fn commit_group_offsets(&self, g: &str, o: &[GroupOffset]) -> Result<()> {
        self.inner.commit_group_offsets(g, o).await
    }
    async fn fetch_group_offsets(&self, g: &str) -> Result<Vec<GroupOffset>> {
        self.inner.fetch_group_offsets(g).await
    }
    async fn list_offset_groups(&self) -> Result<Vec<String>> {
        self.inner.list_offset_groups().await
    }
    async fn delete_group_offsets(&self, g: &str) -> Result<bool> {
        self.inner.delete_group_offsets(g).await
    }
    async fn allocate_producer_id(&self) -> Result<ProducerId> {
        self.inner.allocate_producer_id().await
    }
    async fn bump_producer_epoch(&self, id: ProducerId, e: ProducerEpoch) -> Result<EpochBump> {
        self.inner.bump_producer_epoch(id, e).await
    }
    async fn load_producer_states(&self, tp: &TopicPartition) -> Result<Vec<ProducerState>> {
        self.inner.load_producer_states(tp).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn find_stored_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<StoredEntry>> {
        self.inner.find_stored_entries(tp, from, limit).await
    }
    async fn replace_entries(
        &self,
        o: &ObjectRecord,
        old: &[IndexEntry],
        new: &[StoredEntry],
    ) -> Result<Swap> {
        self.inner.replace_entries(o, old, new).await
    }
    async fn claim_job(&self, j: &str, h: &AgentId, ttl: Duration) -> Result<bool> {
        self.inner.claim_job(j, h, ttl).await
    }
    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>> {
        self.inner.unreferenced_objects(grace, limit).await
    }
    async fn forget_objects(&self, keys: &[String]) -> Result<()> {
        self.inner.forget_objects(keys).await
    }
    async fn claim_orphans(&self, keys: &[String], h: &AgentId) -> Result<Vec<String>> {
        self.inner.claim_orphans(keys, h).await
    }
}

struct Setup {
    dir: tempfile::TempDir,
    faulty: Arc<Faulty>,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/metadata.db", dir.path().display());
        let inner = streamhouse_metadata::open(&url).await.unwrap();
        Setup {
            dir,
            faulty: Arc::new(Faulty {
                inner,
                fail_commits: AtomicBool::new(false),
            }),
        }
    }

    fn objects_url(&self) -> String {
        format!("file://{}/objects", self.dir.path().display())
    }

    async fn agent(&self, id: &str, ttl: Duration) -> Arc<Agent> {
        let mut config = AgentConfig::for_tests(id, "127.0.0.1:9092");
        config.lease_ttl = ttl;
        let storage = ObjectStorage::open(&self.objects_url(), 64 << 20).unwrap();
        Agent::start(config, self.faulty.clone(), storage)
            .await
            .unwrap()
    }
}

/// Reads a whole partition from offset 0.
async fn read_all(agent: &Agent, tp: &TopicPartition) -> Vec<(i64, Vec<u8>, i64)> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let read = agent.read(tp, Offset(next), 1000, true).await.unwrap();
        let records = decode(&read.records);
        let fresh: Vec<_> = records.into_iter().filter(|r| r.0 >= next).collect();
        if fresh.is_empty() {
            assert_eq!(
                next, read.high_watermark.0,
                "read stopped before the high watermark"
            );
            return out;
        }
        next = fresh.last().unwrap().0 + 1;
        out.extend(fresh);
    }
}

/// An acknowledged batch: its base offset and its record values.
type AckedBatch = (i64, Vec<Vec<u8>>);

/// Checks one partition against what producers were told: the acknowledged ranges tile
/// 0..high_watermark with no gap or overlap, and the partition reads back as exactly those
/// records at exactly those offsets.
async fn check_partition(
    agent: &Agent,
    tp: &TopicPartition,
    mut ranges: Vec<AckedBatch>,
) -> std::result::Result<(), TestCaseError> {
    ranges.sort_by_key(|r| r.0);
    let mut expected = Vec::new();
    let mut next = 0i64;
    for (base, values) in ranges {
        prop_assert_eq!(base, next, "gap or overlap in {}", tp);
        for v in values {
            expected.push((next, v));
            next += 1;
        }
    }
    let (high_watermark, _) = agent.partition_offsets(tp).await.unwrap();
    prop_assert_eq!(high_watermark.0, next);
    let read: Vec<(i64, Vec<u8>)> = read_all(agent, tp)
        .await
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    prop_assert_eq!(read, expected);
    Ok(())
}

#[derive(Debug, Clone)]
struct Op {
    producer: usize,
    partition: i32,
    records: usize,
    flush_after: bool,
    fail_flush: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0..3usize,
        0..3i32,
        1..6usize,
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(producer, partition, records, flush_after, fail_flush)| Op {
                producer,
                partition,
                records,
                flush_after,
                fail_flush,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random producers append to random partitions with flushes at random points (some of
    /// them failing). Every acknowledged batch gets a distinct, contiguous offset range; the
    /// ranges tile 0..high_watermark exactly; every record reads back once, at its offset.
    #[test]
    fn offsets_are_contiguous_and_every_record_reads_back(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let setup = Setup::new().await;
            let agent = setup.agent("a", Duration::from_secs(60)).await;
            agent.create_topic("t", 3, &BTreeMap::new()).await.unwrap();
            let mut acked: HashMap<i32, Vec<AckedBatch>> = HashMap::new();
            let mut waiting = Vec::new();
            let mut seq = 0usize;
            for op in &ops {
                let values: Vec<Vec<u8>> = (0..op.records)
                    .map(|i| { seq += 1; format!("p{}-{}-{}", op.producer, seq, i).into_bytes() })
                    .collect();
                let tp = TopicPartition::new("t", op.partition);
                let rx = agent.append(&tp, batch(&values, 1000)).await.unwrap();
                waiting.push((op.partition, values, rx));
                if op.flush_after {
                    setup.faulty.fail_commits.store(op.fail_flush, Ordering::SeqCst);
                    agent.flush().await;
                    setup.faulty.fail_commits.store(false, Ordering::SeqCst);
                }
            }
            agent.flush().await;
            for (partition, values, rx) in waiting {
                match rx.await.unwrap() {
                    Ok(appended) => acked.entry(partition).or_default().push((appended.base_offset.0, values)),
                    Err(e) => assert!(e.is_retriable(), "non-retriable flush error {e}"),
                }
            }
            for partition in 0..3 {
                let tp = TopicPartition::new("t", partition);
                check_partition(&agent, &tp, acked.remove(&partition).unwrap_or_default()).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

#[tokio::test]
async fn a_failed_object_write_uses_no_offset() {
    let setup = Setup::new().await;
    let agent = setup.agent("a", Duration::from_secs(60)).await;
    agent.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("t", 0);
    let rx = agent.append(&tp, batch(&[b"a".to_vec()], 1)).await.unwrap();
    agent.flush().await;
    assert_eq!(rx.await.unwrap().unwrap().base_offset, Offset(0));

    // A file where the agent's object directory should be makes every object write fail.
    let objects = setup.dir.path().join("objects/data");
    std::fs::rename(&objects, setup.dir.path().join("moved")).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let rx = agent.append(&tp, batch(&[b"b".to_vec()], 2)).await.unwrap();
    agent.flush().await;
    let err = rx.await.unwrap().unwrap_err();
    assert!(matches!(err, AgentError::FlushFailed { .. }), "{err}");
    assert!(err.is_retriable());
    assert_eq!(agent.partition_offsets(&tp).await.unwrap().0, Offset(1));

    std::fs::remove_file(&objects).unwrap();
    std::fs::rename(setup.dir.path().join("moved"), &objects).unwrap();
    let rx = agent.append(&tp, batch(&[b"c".to_vec()], 3)).await.unwrap();
    agent.flush().await;
    assert_eq!(rx.await.unwrap().unwrap().base_offset, Offset(1));
    let values: Vec<Vec<u8>> = read_all(&agent, &tp)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(values, vec![b"a".to_vec(), b"c".to_vec()]);
}

#[tokio::test]
async fn a_zombie_leader_is_fenced_and_the_new_leader_continues() {
    let setup = Setup::new().await;
    let zombie = setup.agent("zombie", Duration::from_millis(200)).await;
    zombie.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
    let tp = TopicPartition::new("t", 0);
    let rx = zombie
        .append(&tp, batch(&[b"1".to_vec(), b"2".to_vec()], 1))
        .await
        .unwrap();
    zombie.flush().await;
    assert_eq!(rx.await.unwrap().unwrap().base_offset, Offset(0));

    // The zombie stops renewing (it never runs its lease keeper); its lease expires and
    // another agent takes the partition over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let successor = setup.agent("successor", Duration::from_secs(60)).await;
    assert!(
        successor.leader_epoch(&tp).is_some(),
        "successor should lead after expiry"
    );

    // The zombie still believes it leads: its append is accepted locally, but the commit is
    // refused by the epoch check and its producer is told NOT_LEADER.
    let rx = zombie
        .append(&tp, batch(&[b"zombie".to_vec()], 2))
        .await
        .unwrap();
    zombie.flush().await;
    assert!(matches!(
        rx.await.unwrap(),
        Err(AgentError::NotLeader { .. })
    ));
    assert!(zombie.leader_epoch(&tp).is_none());

    let rx = successor
        .append(&tp, batch(&[b"3".to_vec()], 3))
        .await
        .unwrap();
    successor.flush().await;
    assert_eq!(rx.await.unwrap().unwrap().base_offset, Offset(2));
    let values: Vec<Vec<u8>> = read_all(&successor, &tp)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
}

#[tokio::test]
async fn a_restarted_agent_continues_at_the_high_watermark() {
    let setup = Setup::new().await;
    let tp = TopicPartition::new("t", 0);
    {
        let agent = setup.agent("a", Duration::from_secs(60)).await;
        agent.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let rx = agent
            .append(&tp, batch(&vec![b"x".to_vec(); 5], 1))
            .await
            .unwrap();
        agent.flush().await;
        rx.await.unwrap().unwrap();
        // A write that is never committed (the process "dies" between PUT and commit).
        setup.faulty.fail_commits.store(true, Ordering::SeqCst);
        let rx = agent
            .append(&tp, batch(&[b"lost".to_vec()], 2))
            .await
            .unwrap();
        agent.flush().await;
        assert!(rx.await.unwrap().is_err());
        setup.faulty.fail_commits.store(false, Ordering::SeqCst);
    }
    let agent = setup.agent("a", Duration::from_secs(60)).await;
    let rx = agent.append(&tp, batch(&[b"y".to_vec()], 3)).await.unwrap();
    agent.flush().await;
    assert_eq!(rx.await.unwrap().unwrap().base_offset, Offset(5));
    let values: Vec<Vec<u8>> = read_all(&agent, &tp)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(values.len(), 6);
    assert_eq!(values[5], b"y".to_vec());
}

#[tokio::test]
async fn appends_are_validated() {
    let setup = Setup::new().await;
    let agent = setup.agent("a", Duration::from_secs(60)).await;
    let mut configs = BTreeMap::new();
    configs.insert("max.message.bytes".to_string(), "200".to_string());
    agent.create_topic("small", 1, &configs).await.unwrap();
    let tp = TopicPartition::new("small", 0);
    let err = agent
        .append(&tp, batch(&[vec![0u8; 300]], 1))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::MessageTooLarge { .. }), "{err}");
    let mut corrupt = batch(&[b"v".to_vec()], 1).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let err = agent.append(&tp, Bytes::from(corrupt)).await.unwrap_err();
    assert!(matches!(err, AgentError::Corrupt { .. }), "{err}");
    let err = agent
        .append(&TopicPartition::new("nope", 0), batch(&[b"v".to_vec()], 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::UnknownTopicOrPartition { .. }),
        "{err}"
    );
    let err = agent
        .append(&TopicPartition::new("small", 1), batch(&[b"v".to_vec()], 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::UnknownTopicOrPartition { .. }),
        "{err}"
    );
    assert!(matches!(
        agent.create_topic("bad name", 1, &BTreeMap::new()).await,
        Err(AgentError::InvalidTopic { .. })
    ));
    assert!(matches!(
        agent.create_topic("small", 1, &BTreeMap::new()).await,
        Err(AgentError::TopicAlreadyExists { .. })
    ));
    assert!(matches!(
        agent.create_topic("zero", 0, &BTreeMap::new()).await,
        Err(AgentError::InvalidPartitions { .. })
    ));
}

#[tokio::test]
async fn log_append_time_and_list_offsets_by_time() {
    let setup = Setup::new().await;
    let agent = setup.agent("a", Duration::from_secs(60)).await;
    let mut configs = BTreeMap::new();
    configs.insert(
        "message.timestamp.type".to_string(),
        "LogAppendTime".to_string(),
    );
    agent.create_topic("lat", 1, &configs).await.unwrap();
    agent.create_topic("ct", 1, &BTreeMap::new()).await.unwrap();

    let lat = TopicPartition::new("lat", 0);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let rx = agent
        .append(&lat, batch(&[b"v".to_vec()], 5))
        .await
        .unwrap();
    agent.flush().await;
    let appended = rx.await.unwrap().unwrap();
    let stamped = appended.log_append_time.unwrap();
    assert!(stamped >= before);
    // Consumers take a LogAppendTime batch's records' time from its header.
    let read = agent.read(&lat, Offset(0), 1 << 20, true).await.unwrap();
    let header = streamhouse_storage::batch::validate(&read.records[0]).unwrap()[0].header;
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, stamped);

    // CreateTime: three batches with timestamps 100.., 200.., 300..
    let ct = TopicPartition::new("ct", 0);
    for ts in [100, 200, 300] {
        let rx = agent
            .append(&ct, batch(&[b"a".to_vec(), b"b".to_vec()], ts))
            .await
            .unwrap();
        agent.flush().await;
        rx.await.unwrap().unwrap();
    }
    assert_eq!(
        agent
            .list_offset(&ct, OffsetSpec::Earliest)
            .await
            .unwrap()
            .0,
        Offset(0)
    );
    assert_eq!(
        agent.list_offset(&ct, OffsetSpec::Latest).await.unwrap().0,
        Offset(6)
    );
    assert_eq!(
        agent
            .list_offset(&ct, OffsetSpec::Timestamp(0))
            .await
            .unwrap(),
        (Offset(0), 100)
    );
    assert_eq!(
        agent
            .list_offset(&ct, OffsetSpec::Timestamp(201))
            .await
            .unwrap(),
        (Offset(3), 201)
    );
    assert_eq!(
        agent
            .list_offset(&ct, OffsetSpec::Timestamp(202))
            .await
            .unwrap(),
        (Offset(4), 300)
    );
    assert_eq!(
        agent
            .list_offset(&ct, OffsetSpec::Timestamp(999))
            .await
            .unwrap()
            .0,
        Offset(-1)
    );

    // Reads respect the byte budget but always return at least one batch.
    let one = agent.read(&ct, Offset(0), 1, true).await.unwrap();
    assert_eq!(decode(&one.records).len(), 2);
    let none = agent.read(&ct, Offset(0), 1, false).await.unwrap();
    assert!(none.is_empty());
    let from_middle = agent.read(&ct, Offset(3), 1 << 20, true).await.unwrap();
    let offsets: Vec<i64> = decode(&from_middle.records).iter().map(|r| r.0).collect();
    assert_eq!(
        offsets,
        vec![2, 3, 4, 5],
        "whole batches from the one holding offset 3"
    );
    assert!(matches!(
        agent.read(&ct, Offset(7), 100, true).await,
        Err(AgentError::OffsetOutOfRange { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Concurrent producers against the real flush loop, with flushes triggered by time and
    /// by size: per partition the offsets tile 0..high_watermark, each producer's batches to
    /// one partition get rising offsets, and everything reads back once at its offset.
    #[test]
    fn concurrent_producers_with_time_and_size_flushes(
        producers in prop::collection::vec(
            prop::collection::vec((0..4i32, 1..8usize), 1..25),
            1..5,
        ),
        flush_interval_ms in 1..6u64,
        flush_max_bytes in 100..4000usize,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let setup = Setup::new().await;
            let mut config = AgentConfig::for_tests("a", "127.0.0.1:9092");
            config.flush_interval = Duration::from_millis(flush_interval_ms);
            config.flush_max_bytes = flush_max_bytes;
            let storage = ObjectStorage::open(&setup.objects_url(), 64 << 20).unwrap();
            let agent = Agent::start(config, setup.faulty.clone(), storage).await.unwrap();
            agent.create_topic("t", 4, &BTreeMap::new()).await.unwrap();
            let shutdown = tokio_util::sync::CancellationToken::new();
            let runner = tokio::spawn(agent.clone().run(shutdown.clone()));

            let mut tasks = Vec::new();
            for (id, batches) in producers.into_iter().enumerate() {
                let agent = agent.clone();
                tasks.push(tokio::spawn(async move {
                    let mut acked: Vec<(i32, i64, Vec<Vec<u8>>)> = Vec::new();
                    for (n, (partition, records)) in batches.into_iter().enumerate() {
                        let values: Vec<Vec<u8>> =
                            (0..records).map(|i| format!("p{id}-b{n}-r{i}").into_bytes()).collect();
                        let tp = TopicPartition::new("t", partition);
                        let rx = agent.append(&tp, batch(&values, 1000)).await.unwrap();
                        let appended = rx.await.unwrap().unwrap();
                        acked.push((partition, appended.base_offset.0, values));
                    }
                    acked
                }));
            }
            let mut by_partition: HashMap<i32, Vec<AckedBatch>> = HashMap::new();
            for t in tasks {
                let acked = t.await.unwrap();
                let mut last: HashMap<i32, i64> = HashMap::new();
                for (partition, base, values) in acked {
                    if let Some(prev) = last.insert(partition, base) {
                        prop_assert!(prev < base, "a producer's batches went backwards");
                    }
                    by_partition.entry(partition).or_default().push((base, values));
                }
            }
            for partition in 0..4 {
                let tp = TopicPartition::new("t", partition);
                check_partition(&agent, &tp, by_partition.remove(&partition).unwrap_or_default()).await?;
            }
            shutdown.cancel();
            runner.await.unwrap();
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// What a debugging recorder saw, by metric.
type Recorded = HashMap<CompositeKey, (Option<Unit>, Option<SharedString>, DebugValue)>;

fn metric(name: &'static str, kind: MetricKind, labels: &[(&'static str, &str)]) -> CompositeKey {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    CompositeKey::new(kind, Key::from_parts(name, labels))
}

/// A counter's value (0 if it was never touched).
fn counter(recorded: &Recorded, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
    match recorded.get(&metric(name, MetricKind::Counter, labels)) {
        Some((_, _, DebugValue::Counter(n))) => *n,
        _ => 0,
    }
}

/// A label-less histogram's values.
fn histogram(recorded: &Recorded, name: &'static str) -> Vec<f64> {
    match recorded.get(&metric(name, MetricKind::Histogram, &[])) {
        Some((_, _, DebugValue::Histogram(values))) => values.iter().map(|v| v.0).collect(),
        _ => Vec::new(),
    }
}

/// Produce metrics count only what a commit made durable; a failed flush counts as a failure
/// of its stage and nothing else; reads count the whole batches they return. The throughput
/// totals agree with the metrics throughout.
#[tokio::test]
async fn metrics_count_durable_records_and_returned_batches() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let setup = Setup::new().await;
    let agent = setup.agent("a", Duration::from_secs(60)).await;
    assert!(agent.is_ready(), "start runs the first balance round");
    agent.create_topic("t", 2, &BTreeMap::new()).await.unwrap();
    let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
    let values = |n: usize| (0..n).map(|i| vec![b'v'; i + 1]).collect::<Vec<_>>();
    let (b1, b2, b3) = (
        batch(&values(3), 1),
        batch(&values(2), 2),
        batch(&values(4), 3),
    );
    let mut waiting = Vec::new();
    for (tp, b) in [(&p0, &b1), (&p0, &b2), (&p1, &b3)] {
        waiting.push(agent.append(tp, b.clone()).await.unwrap());
    }
    agent.flush().await;
    for rx in waiting {
        rx.await.unwrap().unwrap();
    }

    // A failed commit, then a failed object write: nothing more is durable.
    setup.faulty.fail_commits.store(true, Ordering::SeqCst);
    let rx = agent.append(&p0, batch(&values(5), 4)).await.unwrap();
    agent.flush().await;
    assert!(rx.await.unwrap().is_err());
    setup.faulty.fail_commits.store(false, Ordering::SeqCst);
    let objects = setup.dir.path().join("objects/data");
    std::fs::rename(&objects, setup.dir.path().join("moved")).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let rx = agent.append(&p1, batch(&values(6), 5)).await.unwrap();
    agent.flush().await;
    assert!(rx.await.unwrap().is_err());
    std::fs::remove_file(&objects).unwrap();
    std::fs::rename(setup.dir.path().join("moved"), &objects).unwrap();

    let produced_bytes = (b1.len() + b2.len() + b3.len()) as u64;
    let m = snapshotter.snapshot().into_hashmap();
    let topic = [("topic", "t")];
    assert_eq!(counter(&m, "streamhouse_produce_records_total", &topic), 9);
    assert_eq!(
        counter(&m, "streamhouse_produce_bytes_total", &topic),
        produced_bytes
    );
    let failures = "streamhouse_flush_failures_total";
    assert_eq!(counter(&m, failures, &[("stage", "metadata")]), 1);
    assert_eq!(counter(&m, failures, &[("stage", "object_store")]), 1);
    assert_eq!(
        histogram(&m, "streamhouse_flush_batches"),
        vec![3.0, 1.0, 1.0]
    );
    let sizes = histogram(&m, "streamhouse_flush_bytes");
    assert_eq!(sizes.len(), 3);
    assert!(
        sizes[0] > produced_bytes as f64,
        "the object holds the batches and a footer"
    );
    assert_eq!(histogram(&m, "streamhouse_flush_duration_seconds").len(), 3);
    assert_eq!(
        histogram(&m, "streamhouse_flush_put_duration_seconds").len(),
        3,
        "every object write is timed, the failed one too"
    );
    assert_eq!(
        histogram(&m, "streamhouse_metadata_commit_duration_seconds").len(),
        2,
        "the failed object write made no commit"
    );
    assert_eq!(
        agent.throughput(),
        ThroughputTotals {
            produce_records: 9,
            produce_bytes: produced_bytes,
            fetch_records: 0,
            fetch_bytes: 0,
        }
    );

    // Offset 4 is in the second batch of p0 (offsets 3 and 4): that batch alone is returned.
    let read = agent.read(&p0, Offset(4), 1 << 20, true).await.unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.len(), b2.len());
    assert_eq!(read.record_count, 2);
    agent.count_fetched(&p0, &read);
    let read = agent.read(&p1, Offset(0), 1 << 20, true).await.unwrap();
    assert_eq!(read.len(), b3.len());
    agent.count_fetched(&p1, &read);
    // A read that is not handed out counts nothing, and nothing to return counts nothing.
    let _discarded = agent.read(&p0, Offset(0), 1 << 20, true).await.unwrap();
    let read = agent.read(&p1, Offset(4), 1 << 20, true).await.unwrap();
    assert!(read.is_empty());
    agent.count_fetched(&p1, &read);

    let fetched_bytes = (b2.len() + b3.len()) as u64;
    let m = snapshotter.snapshot().into_hashmap();
    assert_eq!(counter(&m, "streamhouse_fetch_records_total", &topic), 6);
    assert_eq!(
        counter(&m, "streamhouse_fetch_bytes_total", &topic),
        fetched_bytes
    );
    assert_eq!(
        counter(&m, "streamhouse_produce_records_total", &topic),
        0,
        "counted once"
    );
    assert_eq!(
        agent.throughput(),
        ThroughputTotals {
            produce_records: 9,
            produce_bytes: produced_bytes,
            fetch_records: 6,
            fetch_bytes: fetched_bytes,
        }
    );
}
