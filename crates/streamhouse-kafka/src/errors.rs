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
        AgentError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        AgentError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        AgentError::Corrupt { .. } => ResponseError::CorruptMessage,
        AgentError::InvalidRecord { .. } => ResponseError::InvalidRecord,
        AgentError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        AgentError::InvalidTopic { .. } => ResponseError::InvalidTopicException,
        AgentError::TopicAlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        AgentError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        AgentError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        AgentError::Storage(_)
        | AgentError::Metadata(_)
        | AgentError::FlushFailed { .. }
        | AgentError::CorruptData { .. } => ResponseError::KafkaStorageError,
        AgentError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        AgentError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        AgentError::ProducerFenced { .. } => ResponseError::ProducerFenced,
        AgentError::TransactionsUnsupported => ResponseError::TransactionalIdAuthorizationFailed,
        other => {
            warn!(error = %other, "unmapped error answered as UNKNOWN_SERVER_ERROR");
            ResponseError::UnknownServerError
        }
    }
}

/// The Kafka error for a refused InitProducerId: PRODUCER_FENCED exists from v4 on; older
/// clients hear INVALID_PRODUCER_EPOCH for it, as Kafka answers them.
pub fn init_producer_id_error_code(e: &AgentError, version: i16) -> ResponseError {
    match error_code(e) {
        ResponseError::ProducerFenced if version < 4 => ResponseError::InvalidProducerEpoch,
        code => code,
    }
}

/// An error and its sources on one line, for error messages sent to clients.
pub use streamhouse_agent::error_chain as message;

/// The Kafka error for a refused group request.
pub fn group_error_code(e: &streamhouse_groups::GroupError) -> ResponseError {
    use streamhouse_groups::GroupError;
    match e {
        GroupError::MemberIdRequired { .. } => ResponseError::MemberIdRequired,
        GroupError::UnknownMember { .. } => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration { .. } => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress { .. } => ResponseError::RebalanceInProgress,
        GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        GroupError::InconsistentProtocol { .. } => ResponseError::InconsistentGroupProtocol,
        GroupError::FencedInstance { .. } => ResponseError::FencedInstanceId,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::NonEmptyGroup { .. } => ResponseError::NonEmptyGroup,
        GroupError::GroupNotFound { .. } => ResponseError::GroupIdNotFound,
        GroupError::NotCoordinator { .. } => ResponseError::NotCoordinator,
        GroupError::ShuttingDown | GroupError::Metadata(_) => {
            ResponseError::CoordinatorNotAvailable
        }
        other => {
            warn!(error = %other, "unmapped group error answered as UNKNOWN_SERVER_ERROR");
            ResponseError::UnknownServerError
        }
    }
}
