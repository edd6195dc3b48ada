//! Why a group request was refused.

use streamhouse_metadata::MetadataError;

/// A refused group request; each variant is one Kafka error code at the protocol edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// First join without a member id (JoinGroup v4+): rejoin with this id.
    #[error("member id required; rejoin with {member_id}")]
    MemberIdRequired { member_id: String },
    #[error("unknown member {member_id} in group {group}")]
    UnknownMember { group: String, member_id: String },
    #[error("generation {got} is not the group's current generation {current}")]
    IllegalGeneration { got: i32, current: i32 },
    #[error("group {group} is rebalancing")]
    RebalanceInProgress { group: String },
    #[error("session timeout {got} ms is outside [{min}, {max}] ms")]
    InvalidSessionTimeout { got: i32, min: u64, max: u64 },
    #[error("the member's protocols are incompatible with group {group}")]
    InconsistentProtocol { group: String },
    #[error("static member {instance_id} was replaced by a newer instance")]
    FencedInstance { instance_id: String },
    #[error("group id must not be empty")]
    InvalidGroupId,
    #[error("group {group} still has members")]
    NonEmptyGroup { group: String },
    #[error("group {group} does not exist")]
    GroupNotFound { group: String },
    #[error("group {group} is coordinated by another agent")]
    NotCoordinator { group: String },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("metadata store unavailable")]
    Metadata(#[from] MetadataError),
}
