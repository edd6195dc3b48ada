//! StreamHouse's Kafka-protocol client, used by the CLI, the benchmark and integration tests.
//!
//! Modules:
//! - [`connection`]: one pipelined TCP connection; framing, version negotiation, correlation.
//! - [`admin`]: create/delete/list/describe topics and groups, topic configs, partitions,
//!   record deletion, offset look-ups.
//! - [`producer`]: batching, idempotent (by default) producer that reports each record's
//!   real offset.
//! - [`consumer`]: fetches assigned partitions, or subscribes as a consumer-group member.
//! - [`assignor`]: range/roundrobin assignors and the ConsumerProtocol encodings.
//! - `group` (private): coordinator requests and the membership state machine.
//! - [`partitioner`]: Java-compatible murmur2 key partitioning and sticky keyless partitioning.
//! - [`records`]: producer/consumer record types and record-batch encoding/decoding.
//! - [`error`]: [`ClientError`], one variant per failure kind.
//! - `fake_broker` (feature `fake-broker`): an in-process test broker.
//! - `cluster` (private): metadata cache and per-broker connection pool.

pub mod admin;
pub mod assignor;
mod cluster;
pub mod connection;
pub mod consumer;
pub mod error;
#[cfg(any(test, feature = "fake-broker"))]
pub mod fake_broker;
mod group;
pub mod partitioner;
pub mod producer;
pub mod records;

pub use admin::{
    Admin, ConfigEntry, ConfigSource, GroupDescription, GroupListing, GroupMemberDescription,
    OffsetSpec, PartitionDescription, TopicDescription, TopicSummary,
};
pub use assignor::AssignmentStrategy;
pub use connection::Connection;
pub use consumer::{AutoOffsetReset, Consumer, ConsumerConfig, RebalanceListener};
pub use error::ClientError;
pub use partitioner::{murmur2, Partitioner};
pub use producer::{
    DeliveryHandle, Producer, ProducerConfig, ProducerIdentity, RecordMetadata,
    MAX_IN_FLIGHT_IDEMPOTENT,
};
pub use records::{ConsumedRecord, ProducerRecord};
