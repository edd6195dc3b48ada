//! The agent's error type. Kafka error codes are chosen at the protocol edge, not here.

use streamhouse_metadata::{MetadataError, Offset, ProducerEpoch, ProducerId, TopicPartition};
use streamhouse_storage::{BatchError, StorageError};

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("unknown topic or partition {tp}")]
    UnknownTopicOrPartition { tp: TopicPartition },
    #[error("unknown topic {topic:?}")]
    UnknownTopic { topic: String },
    #[error("this agent does not lead {tp}")]
    NotLeader { tp: TopicPartition },
    #[error("record batch of {size} bytes for {tp} exceeds max.message.bytes {max}")]
    MessageTooLarge {
        tp: TopicPartition,
        size: usize,
        max: usize,
    },
    #[error("corrupt record batch for {tp}")]
    Corrupt {
        tp: TopicPartition,
        #[source]
        source: BatchError,
    },
    /// A record the topic's configs do not allow (a keyless record in a compacted topic).
    #[error("invalid record for {tp}: {reason}")]
    InvalidRecord { tp: TopicPartition, reason: String },
    #[error("offset {offset} of {tp} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        tp: TopicPartition,
        offset: Offset,
        log_start_offset: Offset,
        high_watermark: Offset,
    },
    #[error("invalid topic: {reason}")]
    InvalidTopic { reason: String },
    #[error("topic {topic:?} already exists")]
    TopicAlreadyExists { topic: String },
    #[error("invalid partition count {partitions} (a topic has 1 to 10000 partitions)")]
    InvalidPartitions { partitions: i32 },
    #[error("invalid topic config: {reason}")]
    InvalidConfig { reason: String },
    #[error("object store unavailable")]
    Storage(#[source] StorageError),
    #[error("metadata store unavailable")]
    Metadata(#[source] MetadataError),
    #[error("the client's leader epoch for {tp} is older than this leader's")]
    FencedLeaderEpoch { tp: TopicPartition },
    #[error("the client's leader epoch for {tp} is newer than this leader's")]
    UnknownLeaderEpoch { tp: TopicPartition },
    #[error("stored data is corrupt: {reason}")]
    CorruptData { reason: String },
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The flush carrying the batch failed (object write or metadata commit); nothing of it
    /// became visible and no offset was used. The cause is logged once by the flusher.
    #[error("flush failed: {reason}")]
    FlushFailed { reason: String },
    /// An idempotent batch carries an epoch older than one this partition has seen for the
    /// producer: it comes from a fenced incarnation.
    #[error("producer {producer_id} on {tp} sent epoch {epoch}, but epoch {current} is current")]
    InvalidProducerEpoch {
        tp: TopicPartition,
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        current: ProducerEpoch,
    },
    /// An idempotent batch does not continue its producer's sequence on this partition (a
    /// batch before it is missing, or it is older than the batches remembered).
    #[error("producer {producer_id} on {tp} sent sequence {got}, expected {expected}")]
    OutOfOrderSequence {
        tp: TopicPartition,
        producer_id: ProducerId,
        expected: i32,
        got: i32,
    },
    /// InitProducerId from an incarnation whose epoch was bumped since.
    #[error("producer {producer_id} claims epoch {epoch}, but epoch {current} is current")]
    ProducerFenced {
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        current: ProducerEpoch,
    },
    /// A transactional id was given: only idempotent (non-transactional) producers are served.
    #[error("transactions are not supported")]
    TransactionsUnsupported,
}

impl AgentError {
    /// Whether a client may retry the same request and expect it to work later.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            AgentError::NotLeader { .. }
                | AgentError::Storage(_)
                | AgentError::Metadata(_)
                | AgentError::ShuttingDown
                | AgentError::FlushFailed { .. }
        )
    }
}

impl From<MetadataError> for AgentError {
    fn from(e: MetadataError) -> Self {
        AgentError::Metadata(e)
    }
}

impl From<StorageError> for AgentError {
    fn from(e: StorageError) -> Self {
        AgentError::Storage(e)
    }
}
