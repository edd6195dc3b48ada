//! Newtypes and records shared by every crate that talks about partitions and offsets.

use std::collections::BTreeMap;
use std::fmt;

/// A record's position in its partition: 0, 1, 2, … with no gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset `n` records further on.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The lease generation of a partition. It grows each time a lease is acquired and never on
/// renewal, so a commit carrying an older epoch comes from a leader that has been replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaseEpoch(pub i64);

impl fmt::Display for LeaseEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition number inside a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PartitionId(pub i32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: PartitionId,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition: PartitionId(partition),
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The stable identity of an agent (kept across restarts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub String);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A topic as the metadata store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    /// Kafka's topic id (a UUID), reported in Metadata responses.
    pub id: uuid::Uuid,
    pub partitions: i32,
    /// Topic configs as given at creation (validated by the caller).
    pub configs: BTreeMap<String, String>,
    pub created_at_ms: i64,
}

/// A partition's committed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub tp: TopicPartition,
    /// One past the last committed offset: the next offset to assign.
    pub high_watermark: Offset,
    /// The first offset still readable.
    pub log_start_offset: Offset,
    /// Who leads the partition, if anyone holds an unexpired lease.
    pub lease: Option<Lease>,
}

/// A partition lease: `holder` may append to `tp` while it holds `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tp: TopicPartition,
    pub holder: AgentId,
    pub epoch: LeaseEpoch,
    /// Expiry time on the metadata store's clock, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// What an agent tells the store about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRegistration {
    pub id: AgentId,
    /// host:port that Kafka clients should connect to.
    pub advertised_addr: String,
    pub group: String,
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: AgentId,
    /// The Kafka broker id this agent answers as; assigned once and kept across restarts.
    pub node_id: i32,
    pub advertised_addr: String,
    pub group: String,
    pub last_heartbeat_ms: i64,
}

/// One contiguous offset range of one partition stored in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub tp: TopicPartition,
    pub base_offset: Offset,
    /// One past the last offset in this entry.
    pub end_offset: Offset,
    pub object_key: String,
    pub byte_start: u64,
    pub byte_len: u64,
    /// The largest record timestamp in the range (for ListOffsets by time).
    pub max_timestamp: i64,
}

/// One partition's share of a flush, committed together with the others of the same object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    pub holder: AgentId,
    pub epoch: LeaseEpoch,
    /// The high watermark the agent believes is committed; the commit is refused otherwise.
    pub expected_high_watermark: Offset,
    /// The range appended; `entry.base_offset` must equal `expected_high_watermark`
    /// and `entry.end_offset` becomes the new high watermark.
    pub entry: IndexEntry,
    /// The new state of every idempotent producer that appended in this range, stored in the
    /// same transaction as the data so that a retry is recognized even after a restart.
    pub producers: Vec<ProducerState>,
}

/// An object written by a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    pub key: String,
    pub size_bytes: u64,
    pub writer: AgentId,
}

/// An index entry as compaction sees it: with the lease epoch it was committed under (kept
/// by compaction, for OffsetForLeaderEpoch), when its object was committed (store clock) and
/// how large that object is. The last two are read from the store and ignored when an entry
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub entry: IndexEntry,
    pub leader_epoch: LeaseEpoch,
    pub committed_at_ms: i64,
    pub object_bytes: u64,
}

/// What a compaction swap ([`crate::MetadataStore::replace_entries`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The old entries were replaced by the new ones.
    Replaced,
    /// The old entries are no longer exactly what the index holds (retention, a topic
    /// deletion or another compaction got there first); nothing was changed.
    Changed,
}

/// Why one partition's share of a commit was refused. The other partitions of the same
/// commit are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRejection {
    #[error("partition {0} does not exist")]
    UnknownPartition(TopicPartition),
    #[error("lease on {tp} is held by {holder:?} at epoch {epoch}, not by the committer")]
    Fenced {
        tp: TopicPartition,
        holder: Option<AgentId>,
        epoch: LeaseEpoch,
    },
    #[error("high watermark of {tp} is {actual}, the committer expected {expected}")]
    OffsetMismatch {
        tp: TopicPartition,
        expected: Offset,
        actual: Offset,
    },
    #[error("commit for {0} does not start at its expected high watermark")]
    InvalidRange(TopicPartition),
}

/// An offset a consumer group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub tp: TopicPartition,
    /// The next offset the group will consume.
    pub offset: Offset,
    /// The leader epoch of the last consumed record, or -1.
    pub leader_epoch: i32,
    /// Free-form metadata the client stored with the commit.
    pub metadata: Option<String>,
    /// When the commit was made (store clock, ms since the Unix epoch); set by the store.
    pub commit_timestamp_ms: i64,
}

/// An idempotent producer's id, handed out by InitProducerId and never handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProducerId(pub i64);

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A producer id's epoch. A new epoch fences the batches of older incarnations of the same
/// producer id and restarts its sequence numbers at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProducerEpoch(pub i16);

impl fmt::Display for ProducerEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many of a producer's latest batches each partition remembers: Kafka's limit of 5
/// in-flight requests per connection with idempotence, so every retry of an in-flight
/// batch is still recognized.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// One batch an idempotent producer appended, remembered to answer its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    /// The offset the batch was appended at: what a retry is answered with.
    pub base_offset: Offset,
}

/// What one partition knows about one idempotent producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    /// The sequence number of the last record appended (at `producer_epoch`).
    pub last_sequence: i32,
    /// The latest batches of `producer_epoch`, oldest first, at most
    /// [`PRODUCER_BATCHES_KEPT`].
    pub batches: Vec<ProducerBatch>,
}

/// The outcome of bumping a producer id's epoch (InitProducerId with a known id, KIP-360).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochBump {
    /// The id now has this epoch.
    Bumped(ProducerEpoch),
    /// The id has moved past the epoch the caller claims: the caller is a fenced incarnation.
    Fenced { current: ProducerEpoch },
    /// No such producer id was ever handed out.
    Unknown,
    /// The epoch cannot grow any more; the caller should get a new producer id.
    Exhausted,
}
