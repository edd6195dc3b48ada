//! Storage: what goes into objects and how it comes back out.
//!
//! - [`batch`]: Kafka RecordBatch v2 validation and the few header fields the agent sets.
//! - [`records`]: the records inside a batch (decompressed), and a batch rebuilt with some of
//!   its records kept at their offsets (log compaction).
//! - [`object`]: the object layout (one object holds the batches of many partitions).
//! - [`cache`]: an in-memory LRU of recent object bytes.
//! - [`store`]: object store I/O (create-only puts, ranged gets) through the cache, and its
//!   metrics ([`describe_metrics`], called once at start by whoever installs the recorder).

pub mod batch;
pub mod cache;
pub mod error;
pub mod object;
pub mod records;
pub mod store;

pub use batch::{BatchError, BatchHeader};
pub use error::StorageError;
pub use object::{ChunkLocation, ObjectBuilder};
pub use store::{describe_metrics, ObjectStorage, S3Options};
