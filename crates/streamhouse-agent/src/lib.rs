//! The agent: holds partition leases, gathers produce batches of every partition it leads
//! into one buffer, flushes them as ONE object and ONE metadata commit, and serves reads.
//!
//! - [`config`]: the agent's settings.
//! - [`error`]: the agent's error type.
//! - [`agent`]: the [`Agent`] itself: append, flush, read, list offsets, topic admin.
//! - [`leases`]: acquiring, renewing and releasing partition leases.
//! - `producers`: idempotent producers: InitProducerId and per-partition sequence checks.
//! - `admin`: topic configs, partition increases, DeleteRecords.
//! - `retention`: retention.ms / retention.bytes, by moving the log start.
//! - `compaction`: merging a partition's small slices into large per-partition objects.
//! - `cleaner`: log compaction (`cleanup.policy=compact`): the latest record per key.
//! - `gc`: deleting objects no index entry names, and orphans no commit named.
//! - `maintenance`: the background jobs' own runtime, on threads of lower priority.
//! - [`failpoints`]: crash points for the crash tests.
//! - `stats`: the agent's metrics and throughput totals; [`describe_metrics`] gives the
//!   metrics their help text and is called once at start by whoever installs the recorder.
//!
//! The agent keeps no state that the metadata store does not also have: after a crash a new
//! agent reloads high watermarks from the store and continues from them.

mod admin;
pub mod agent;
mod cleaner;
mod compaction;
pub mod config;
pub mod error;
pub mod failpoints;
mod gc;
mod leases;
mod maintenance;
mod producers;
mod read;
mod retention;
mod stats;

pub use agent::{
    error_chain, Agent, Appended, OffsetSpec, ReadResult, DATA_PREFIX, MAX_PARTITIONS,
};
pub use cleaner::CleanStats;
pub use compaction::CompactionStats;
pub use config::AgentConfig;
pub use error::AgentError;
pub use gc::GcStats;
pub use stats::{describe_metrics, ThroughputTotals};
