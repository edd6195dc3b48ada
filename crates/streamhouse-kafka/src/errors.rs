//! The one place where errors become Kafka error codes, per partition.

use kafka_protocol::error::ResponseError;
use streamhouse_agent::AgentError;
use tracing::warn;

/// The Kafka error for an agent error. Unexpected errors become UNKNOWN_SERVER_ERROR and are
/// logged here, once.
pub fn error_code(e: &AgentError) -> ResponseError {
    match e {
        AgentError::UnknownTopicOrPartition { .. } | AgentError::UnknownTopic { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        AgentError::NotLeader { .. } | AgentError::ShuttingDown => {
            ResponseError::NotLeaderOrFollower
        }
        AgentError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        AgentError::Corrupt { .. } => ResponseError::CorruptMessage,
        AgentError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        AgentError::InvalidTopic { .. } => ResponseError::InvalidTopicException,
        AgentError::TopicAlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        AgentError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        AgentError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        AgentError::Storage(_) | AgentError::Metadata(_) | AgentError::FlushFailed { .. } => {
            ResponseError::KafkaStorageError
        }
        other => {
            warn!(error = %other, "unmapped error answered as UNKNOWN_SERVER_ERROR");
            ResponseError::UnknownServerError
        }
    }
}

/// An error and its sources on one line, for error messages sent to clients.
pub use streamhouse_agent::error_chain as message;
