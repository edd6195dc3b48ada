//! Produce and consume benchmarks for StreamHouse (or any Kafka-compatible broker).
//!
//! Modules:
//! - [`config`]: [`BenchConfig`], what to run.
//! - [`produce`]: [`run_produce`], pipelined producers with per-record latency and offset checks.
//! - [`consume`]: [`run_consume`], reads a topic from the beginning.
//! - [`report`]: [`BenchReport`], rendered as a text table or JSON.
//! - [`checker`]: [`OffsetChecker`], verifies offsets per partition are gap-free and unique.
//! - [`error`]: the error type, [`BenchError`].
//! - `progress` (private): the optional progress bar.

pub mod checker;
pub mod config;
pub mod consume;
pub mod error;
pub mod produce;
mod progress;
pub mod report;

pub use checker::OffsetChecker;
pub use config::BenchConfig;
pub use consume::run_consume;
pub use error::BenchError;
pub use produce::run_produce;
pub use report::{BenchKind, BenchReport};
