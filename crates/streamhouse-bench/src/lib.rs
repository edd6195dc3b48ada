//! Produce and consume benchmarks for StreamHouse (or any Kafka-compatible broker).
//!
//! Modules:
//! - [`config`]: [`BenchConfig`], what to run.
//! - [`produce`]: [`run_produce`], pipelined producers with per-record latency and offset checks.
//! - [`consume`]: [`run_consume`], reads a topic from the beginning.
//! - [`group`]: [`run_group_consume`], a consumer group reads a whole topic exactly once.
//! - [`end_to_end`]: [`run_end_to_end`], open-loop producer at a fixed rate plus a group
//!   consumer; send-to-receive latency.
//! - [`rest`]: [`run_rest_produce`], concurrent HTTP clients through the REST API.
//! - [`report`]: [`BenchReport`], rendered as a text table or JSON.
//! - [`checker`]: [`OffsetChecker`], verifies offsets per partition are gap-free and unique.
//! - [`error`]: the error type, [`BenchError`].
//! - `progress` (private): the optional progress bar.

pub mod checker;
pub mod config;
pub mod consume;
pub mod end_to_end;
pub mod error;
pub mod group;
pub mod produce;
mod progress;
pub mod report;
pub mod rest;

pub use checker::OffsetChecker;
pub use config::BenchConfig;
pub use consume::run_consume;
pub use end_to_end::{run_end_to_end, EndToEndReports};
pub use error::BenchError;
pub use group::run_group_consume;
pub use produce::run_produce;
pub use report::{BenchKind, BenchReport};
pub use rest::run_rest_produce;
