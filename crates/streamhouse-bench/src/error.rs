//! The benchmark's error type, one variant per failure kind.

use std::time::Duration;

use streamhouse_client::ClientError;

/// Why a benchmark could not run or finish.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The [`BenchConfig`](crate::BenchConfig) is unusable.
    #[error("invalid bench config: {0}")]
    InvalidConfig(String),

    /// Setting up (topic creation, connecting, assigning) failed.
    #[error("bench setup failed: {what}")]
    Setup {
        /// The step that failed.
        what: String,
        /// The client error.
        #[source]
        source: ClientError,
    },

    /// A record could not be delivered; the run was stopped.
    #[error("record delivery failed after {delivered} delivered records")]
    Delivery {
        /// Records acknowledged before the failure.
        delivered: u64,
        /// The error of the first failed record.
        #[source]
        source: ClientError,
    },

    /// Fetching failed.
    #[error("fetch failed after {read} records")]
    Fetch {
        /// Records read before the failure.
        read: u64,
        /// The client error.
        #[source]
        source: ClientError,
    },

    /// The consumer read nothing new for too long.
    #[error("consumer stalled: read {read} of {expected} records, nothing new for {idle:?}")]
    Stalled {
        /// Records read so far.
        read: u64,
        /// Records the run wanted.
        expected: u64,
        /// How long nothing arrived.
        idle: Duration,
    },

    /// A benchmark task panicked or was cancelled.
    /// The REST API refused a request or could not be reached.
    #[error("REST produce failed: {0}")]
    Http(String),

    #[error("bench task failed: {0}")]
    Task(String),
}
