//! The consumer group coordinator (Kafka's classic group protocol): members join, one
//! generation at a time; the leader's assignment is handed out at sync; members that stop
//! heartbeating are removed and the group rebalances. Committed offsets live in the
//! metadata store, so they survive restarts; membership lives here, in memory, in one
//! place ([`GroupCoordinator`]) that a later multi-agent version can hand between agents.
//!
//! - [`coordinator`]: the state machine and its timers.
//! - [`error`]: why a group request was refused (mapped to Kafka codes at the protocol edge).

pub mod coordinator;
pub mod error;

pub use coordinator::{
    GroupConfig, GroupCoordinator, GroupDescription, GroupListing, JoinRequest, JoinResponse,
    JoinedMember, MemberDescription, SyncRequest,
};
pub use error::GroupError;
