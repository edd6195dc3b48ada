//! The metadata store: the single source of truth for topics, partitions, the offset index
//! (which object holds which offset range), agents and partition leases.
//!
//! - [`types`]: newtypes and records shared across crates.
//! - [`error`]: the store's error type.
//! - `fence`: the commit checks every backend applies (lease epoch, expected high watermark).
//! - [`topic_config`]: the topic configs we implement, parsed and validated.
//! - [`sqlite`]: the embedded SQLite backend (one agent, or agents on one machine).
//! - [`postgres`]: the PostgreSQL backend, shared by several agents (row locks in place of
//!   SQLite's single writer).
//!
//! Every backend implements [`MetadataStore`] and passes the same contract suite
//! (`tests/contract.rs`). Times (heartbeats, lease expiry) come from the store's clock, never
//! from an agent's, so agents with skewed clocks still agree on who holds a lease.

pub mod error;
mod fence;
pub mod postgres;
pub mod sqlite;
mod stats;
pub mod topic_config;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use error::MetadataError;
pub use stats::describe_metrics;
pub use topic_config::{
    validate_agent_group, TimestampType, TopicConfig, AGENT_GROUP_CONFIG, DEFAULT_AGENT_GROUP,
};
pub use types::*;

/// Result of a metadata operation.
pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// The operations agents need from the metadata store. Each method is one transaction.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Creates a topic and its partitions (high watermark 0). Fails with
    /// [`MetadataError::AlreadyExists`] if the name is taken.
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<Topic>;

    /// Deletes a topic, its partitions, leases and index entries. Objects are left for
    /// garbage collection. Fails with [`MetadataError::NotFound`] if there is no such topic.
    async fn delete_topic(&self, name: &str) -> Result<()>;

    async fn get_topic(&self, name: &str) -> Result<Option<Topic>>;

    async fn list_topics(&self) -> Result<Vec<Topic>>;

    /// The partitions of a topic in partition order, with their unexpired leases.
    async fn list_partitions(&self, topic: &str) -> Result<Vec<PartitionState>>;

    async fn get_partition(&self, tp: &TopicPartition) -> Result<Option<PartitionState>>;

    /// Every partition of every topic, ordered by topic and partition, with its current
    /// (unexpired) lease: what an agent balances leases over, in one query.
    async fn list_all_partitions(&self) -> Result<Vec<PartitionState>>;

    /// The stored bytes of every partition that has any: the sum of the byte lengths of its
    /// index entries that still hold readable offsets (ending after the log start offset),
    /// ordered by topic and partition.
    async fn partition_sizes(&self) -> Result<Vec<(TopicPartition, u64)>>;

    /// Registers (or re-registers) an agent and records a heartbeat. Returns the agent with
    /// its node id, which stays the same across restarts.
    async fn register_agent(&self, agent: &AgentRegistration) -> Result<AgentInfo>;

    /// Records a heartbeat for a registered agent.
    async fn heartbeat(&self, agent: &AgentId) -> Result<()>;

    async fn list_agents(&self) -> Result<Vec<AgentInfo>>;

    /// The agents whose last heartbeat is at most `within` old on the store's clock (never
    /// an agent's clock), ordered by node id.
    async fn live_agents(&self, within: Duration) -> Result<Vec<AgentInfo>>;

    /// Marks an agent as gone (graceful shutdown): it stops being live at once. It keeps its
    /// node id for when it registers again.
    async fn deregister_agent(&self, agent: &AgentId) -> Result<()>;

    /// Takes the lease on `tp` for `holder` if it is free, expired, or already held by
    /// `holder`. Acquiring always starts a new epoch (previous epoch + 1), so anything the
    /// previous incarnation of a leader still tries to commit is fenced. Returns `None` when
    /// another agent holds an unexpired lease.
    async fn acquire_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Extends a lease without changing its epoch. Returns `None` if `holder` no longer holds
    /// `epoch` (someone else acquired it since).
    async fn renew_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Gives a lease up at once (graceful shutdown or handoff); the epoch is kept so the next
    /// holder gets epoch + 1.
    async fn release_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
    ) -> Result<()>;

    /// The commit of one flush, in ONE transaction: records the object, and for each
    /// partition checks that `holder` holds the lease at `epoch` and that the high watermark
    /// is `expected_high_watermark`, then records the index entry and advances the high
    /// watermark to `entry.end_offset`, and stores its `producers` states. A partition that
    /// fails its checks is refused alone; the result has one element per input, in order.
    async fn commit(
        &self,
        object: &ObjectRecord,
        partitions: &[PartitionCommit],
    ) -> Result<Vec<std::result::Result<(), CommitRejection>>>;

    /// Up to `limit` index entries of `tp` that hold offsets at or after `from`, in offset
    /// order.
    async fn find_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>>;

    /// The first index entry of `tp` (in offset order) whose max timestamp is at or after
    /// `timestamp`: the entry holding the earliest record with such a timestamp.
    async fn find_entry_by_timestamp(
        &self,
        tp: &TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>>;

    /// `retention.bytes`: where `tp` has to start so that its readable index entries hold at
    /// most `max_bytes` (whole entries): the end offset of the newest readable entry that has
    /// to go, or `None` when every readable entry fits.
    async fn start_for_retained_bytes(
        &self,
        tp: &TopicPartition,
        max_bytes: u64,
    ) -> Result<Option<Offset>>;

    /// Up to `limit` index entries of `tp` that hold offsets at or after `from`, in offset
    /// order, with their lease epochs and commit times (for compaction).
    async fn find_stored_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<StoredEntry>>;

    /// The compaction swap, in ONE transaction: checks that the index entries of the
    /// partition in `old`'s offset range are exactly `old` (nothing added, removed or moved
    /// underneath), records `object` (a key any commit or garbage collection already
    /// recorded fails the whole swap), deletes `old` and inserts `new`, which must cover the
    /// same offsets contiguously and name `object`. Readers see the same records at the same
    /// offsets before and after. [`Swap::Changed`] when the check fails. SQLite does not wait
    /// for the swap to be on disk (a power loss may undo it until the next synced commit; a
    /// crash of the process does not): nothing but deleting the objects it unnamed depends
    /// on it, and [`MetadataStore::unreferenced_objects`] hands those out durably.
    async fn replace_entries(
        &self,
        object: &ObjectRecord,
        old: &[IndexEntry],
        new: &[StoredEntry],
    ) -> Result<Swap>;

    /// Claims the cluster-wide maintenance job `job` for `holder` for `ttl` (store clock):
    /// true if it was free, expired, or already `holder`'s (then it is extended).
    async fn claim_job(&self, job: &str, holder: &AgentId, ttl: Duration) -> Result<bool>;

    /// Garbage collection: up to `limit` live objects that no index entry names (nothing can
    /// name them again) and that were marked so at least `grace` ago: the ones that may be
    /// deleted from the object store. SQLite marks an object as its last entry is deleted;
    /// PostgreSQL marks here, checking the live objects against the index (concurrent
    /// transactions deleting the last entries of one object would each still see the
    /// other's, and neither would mark it). What it returns is durable: a power loss cannot
    /// bring back an entry naming one of them.
    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>>;

    /// Forgets objects returned by [`MetadataStore::unreferenced_objects`] once they are
    /// deleted from the object store. Other keys are left alone.
    async fn forget_objects(&self, keys: &[String]) -> Result<()>;

    /// Orphan cleanup: records a tombstone for each of `keys` (found in the object store)
    /// that no commit named, so that no commit can name it from now on, and returns every
    /// key of `keys` that is an orphan (just now or earlier): the ones to delete.
    async fn claim_orphans(&self, keys: &[String], holder: &AgentId) -> Result<Vec<String>>;

    /// Replaces a topic's configs with `configs` (validated by the caller). Fails with
    /// [`MetadataError::NotFound`] if there is no such topic.
    async fn set_topic_configs(&self, name: &str, configs: &BTreeMap<String, String>)
        -> Result<()>;

    /// Grows a topic to `partitions` partitions (new ones start empty). Fails with
    /// [`MetadataError::Invalid`] if that is not more than it has.
    async fn add_partitions(&self, name: &str, partitions: i32) -> Result<()>;

    /// Moves a partition's log start offset forward to `offset` (DeleteRecords, retention):
    /// records below it are no longer readable, and the index entries that end at or below
    /// it are deleted in the same transaction (their objects are left for garbage
    /// collection). Never moves it back; `offset` must not pass the high watermark. Returns
    /// the new log start offset.
    async fn advance_log_start(&self, tp: &TopicPartition, offset: Offset) -> Result<Offset>;

    /// Log compaction's checkpoint for `tp` (Kafka's cleaner offset): records below it were
    /// compacted by key (0 when never). Fails with [`MetadataError::NotFound`] if there is no
    /// such partition.
    async fn clean_offset(&self, tp: &TopicPartition) -> Result<Offset>;

    /// Moves log compaction's checkpoint for `tp` forward to `offset` (never back, never past
    /// the high watermark) once a pass compacted everything below it; returns the
    /// checkpoint. Fails with [`MetadataError::NotFound`] if there is no such partition.
    async fn advance_clean_offset(&self, tp: &TopicPartition, offset: Offset) -> Result<Offset>;

    /// OffsetForLeaderEpoch: the largest lease epoch at or below `epoch` that committed data
    /// to `tp`, and that epoch's end offset (where the next epoch's data starts, or the high
    /// watermark). When only later epochs wrote, `epoch` itself and the first later offset.
    /// `None` when no committed data carries a known epoch.
    async fn epoch_end_offset(
        &self,
        tp: &TopicPartition,
        epoch: LeaseEpoch,
    ) -> Result<Option<(LeaseEpoch, Offset)>>;

    /// Stores a consumer group's committed offsets (replacing earlier commits of the same
    /// partitions), all in one transaction.
    async fn commit_group_offsets(&self, group: &str, offsets: &[GroupOffset]) -> Result<()>;

    /// A consumer group's committed offsets, in topic and partition order.
    async fn fetch_group_offsets(&self, group: &str) -> Result<Vec<GroupOffset>>;

    /// Every group that has committed offsets.
    async fn list_offset_groups(&self) -> Result<Vec<String>>;

    /// Forgets a group's committed offsets; returns whether it had any.
    async fn delete_group_offsets(&self, group: &str) -> Result<bool>;

    /// Hands out a new idempotent producer id (at epoch 0), unique across agents and
    /// restarts: ids come from a counter in the store, advanced in one transaction.
    async fn allocate_producer_id(&self) -> Result<ProducerId>;

    /// Moves a producer id to the epoch after `epoch` (KIP-360). Accepted when `epoch` is at
    /// or past the stored epoch, since idempotent producers may bump their epoch locally
    /// without asking; an `epoch` below the stored one is [`EpochBump::Fenced`].
    async fn bump_producer_epoch(&self, id: ProducerId, epoch: ProducerEpoch) -> Result<EpochBump>;

    /// The committed state of every idempotent producer that appended to `tp` (written by
    /// [`MetadataStore::commit`]), in producer id order.
    async fn load_producer_states(&self, tp: &TopicPartition) -> Result<Vec<ProducerState>>;

    /// Whether the store answers (for readiness checks).
    async fn ping(&self) -> Result<()>;
}

/// Opens the store named by a URL: `sqlite://path/to/file.db` (created if missing), or
/// `postgres://user@host:port/db` / `postgresql://…` (see [`postgres`] for its parameters).
/// Either is migrated to the current schema.
pub async fn open(url: &str) -> Result<Arc<dyn MetadataStore>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else {
        Err(MetadataError::UnsupportedUrl {
            url: url.to_string(),
        })
    }
}

/// [`MetadataStore::partition_sizes`]: the same SQL in both dialects.
pub(crate) const PARTITION_SIZES_SQL: &str =
    "SELECT e.topic, e.partition_id, CAST(SUM(e.byte_len) AS BIGINT) AS bytes FROM index_entries e \
     JOIN partitions p ON p.topic = e.topic AND p.partition_id = e.partition_id \
     WHERE e.end_offset > p.log_start_offset \
     GROUP BY e.topic, e.partition_id ORDER BY e.topic, e.partition_id";

/// Kafka's topic name rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be {name:?}"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = first_illegal_char(name) {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// The first character of `name` outside Kafka's name alphabet `[A-Za-z0-9._-]` (topic and
/// agent group names).
pub(crate) fn first_illegal_char(name: &str) -> Option<char> {
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
}

/// Starts a transaction on `pool` from a task of its own, so that a caller that gives up
/// while waiting for it (a client that disconnects, a timeout) cannot leave one open. When
/// the caller's future is dropped, sqlx's SQLite worker rolls back a `BEGIN` whose answer
/// could not be delivered, but not one whose answer was delivered and never read: that
/// transaction has no owner, the connection goes back to the pool inside it, holding the only
/// writer lock for good, and every later write fails ("database is locked", "begin_with at
/// non-zero transaction depth": seen in CI after schemathesis gave up on slow requests).
/// Spawned, the begin runs to its end and its answer is always read; a transaction nobody
/// waits for any more is dropped in the task, which rolls it back.
pub(crate) async fn begin_detached<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
) -> std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .unwrap_or(Err(sqlx::Error::WorkerCrashed))
}

#[cfg(test)]
mod tests {
    use super::validate_topic_name;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name("é").is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
