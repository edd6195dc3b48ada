//! StreamHouse's Kafka-protocol client, used by the CLI, the benchmark and integration tests.
//!
//! Modules:
//! - [`connection`]: one pipelined TCP connection; framing, version negotiation, correlation.
//! - [`admin`]: create/delete/list/describe topics and look up offsets.
//! - [`producer`]: batching producer that reports each record's real offset.
//! - [`consumer`]: fetches assigned partitions (no consumer groups yet).
//! - [`partitioner`]: Java-compatible murmur2 key partitioning and sticky keyless partitioning.
//! - [`records`]: producer/consumer record types and record-batch encoding/decoding.
//! - [`error`]: [`ClientError`], one variant per failure kind.
//! - `fake_broker` (feature `fake-broker`): an in-process test broker.
//! - `cluster` (private): metadata cache and per-broker connection pool.

pub mod admin;
mod cluster;
pub mod connection;
pub mod consumer;
pub mod error;
#[cfg(any(test, feature = "fake-broker"))]
pub mod fake_broker;
pub mod partitioner;
pub mod producer;
pub mod records;

pub use admin::{Admin, OffsetSpec, PartitionDescription, TopicDescription, TopicSummary};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig};
pub use error::ClientError;
pub use partitioner::{murmur2, Partitioner};
pub use producer::{DeliveryHandle, Producer, ProducerConfig, RecordMetadata};
pub use records::{ConsumedRecord, ProducerRecord};
