//! The agent's metrics (through the `metrics` facade) and its throughput totals since start.
//!
//! Produce totals count records once their flush's metadata commit succeeded for their
//! partition (durable records only); fetch totals count what [`Agent::read`] returned. Each
//! direction has one function that adds to both the atomic totals behind
//! [`Agent::throughput`] and the `metrics` counters, so the two never disagree.
//!
//! Nothing is recorded unless the process installs a `metrics` recorder; [`describe_metrics`]
//! gives every metric below its help text and unit, and is meant to be called once at start,
//! after the recorder is installed.
//!
//! [`Agent::read`]: crate::Agent::read

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};

use crate::agent::Agent;

pub(crate) const PRODUCE_RECORDS: &str = "streamhouse_produce_records_total";
pub(crate) const PRODUCE_BYTES: &str = "streamhouse_produce_bytes_total";
pub(crate) const FETCH_RECORDS: &str = "streamhouse_fetch_records_total";
pub(crate) const FETCH_BYTES: &str = "streamhouse_fetch_bytes_total";
pub(crate) const FLUSH_BYTES: &str = "streamhouse_flush_bytes";
pub(crate) const FLUSH_BATCHES: &str = "streamhouse_flush_batches";
pub(crate) const FLUSH_DURATION: &str = "streamhouse_flush_duration_seconds";
pub(crate) const FLUSH_FAILURES: &str = "streamhouse_flush_failures_total";
pub(crate) const COMMIT_DURATION: &str = "streamhouse_metadata_commit_duration_seconds";
pub(crate) const FLUSH_PUT_DURATION: &str = "streamhouse_flush_put_duration_seconds";
pub(crate) const COMPACTION_BYTES: &str = "streamhouse_compaction_bytes_total";
pub(crate) const COMPACTION_DURATION: &str = "streamhouse_compaction_duration_seconds";
pub(crate) const GC_DELETED: &str = "streamhouse_gc_objects_deleted_total";
pub(crate) const LOG_COMPACTION_REMOVED: &str = "streamhouse_log_compaction_records_removed_total";
pub(crate) const LOG_COMPACTION_DURATION: &str = "streamhouse_log_compaction_duration_seconds";

/// Totals since the agent started, for rate computation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThroughputTotals {
    pub produce_records: u64,
    pub produce_bytes: u64,
    pub fetch_records: u64,
    pub fetch_bytes: u64,
}

/// The atomics behind [`ThroughputTotals`].
#[derive(Debug, Default)]
pub(crate) struct Throughput {
    produce_records: AtomicU64,
    produce_bytes: AtomicU64,
    fetch_records: AtomicU64,
    fetch_bytes: AtomicU64,
}

impl Throughput {
    /// Records made durable for a partition of `topic` by a successful commit.
    pub(crate) fn produced(&self, topic: &str, records: u64, bytes: u64) {
        self.produce_records.fetch_add(records, Ordering::Relaxed);
        self.produce_bytes.fetch_add(bytes, Ordering::Relaxed);
        counter!(PRODUCE_RECORDS, "topic" => topic.to_string()).increment(records);
        counter!(PRODUCE_BYTES, "topic" => topic.to_string()).increment(bytes);
    }

    /// Records returned by one read of a partition of `topic`.
    pub(crate) fn fetched(&self, topic: &str, records: u64, bytes: u64) {
        self.fetch_records.fetch_add(records, Ordering::Relaxed);
        self.fetch_bytes.fetch_add(bytes, Ordering::Relaxed);
        counter!(FETCH_RECORDS, "topic" => topic.to_string()).increment(records);
        counter!(FETCH_BYTES, "topic" => topic.to_string()).increment(bytes);
    }

    fn totals(&self) -> ThroughputTotals {
        ThroughputTotals {
            produce_records: self.produce_records.load(Ordering::Relaxed),
            produce_bytes: self.produce_bytes.load(Ordering::Relaxed),
            fetch_records: self.fetch_records.load(Ordering::Relaxed),
            fetch_bytes: self.fetch_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where a flush failed, the `stage` label of `streamhouse_flush_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushStage {
    ObjectStore,
    Metadata,
}

impl FlushStage {
    fn label(self) -> &'static str {
        match self {
            FlushStage::ObjectStore => "object_store",
            FlushStage::Metadata => "metadata",
        }
    }
}

/// One flush that wrote an object: its size and record batches, before the PUT.
pub(crate) fn flush_object(bytes: u64, batches: usize) {
    histogram!(FLUSH_BYTES).record(bytes as f64);
    histogram!(FLUSH_BATCHES).record(batches as f64);
}

/// One flush that wrote an object, from offset assignment to the end of its commit.
pub(crate) fn flush_done(elapsed: Duration, failed: Option<FlushStage>) {
    histogram!(FLUSH_DURATION).record(elapsed.as_secs_f64());
    if let Some(stage) = failed {
        counter!(FLUSH_FAILURES, "stage" => stage.label()).increment(1);
    }
}

/// One flush's object PUT, successful or not.
pub(crate) fn put_done(elapsed: Duration) {
    histogram!(FLUSH_PUT_DURATION).record(elapsed.as_secs_f64());
}

/// One `MetadataStore::commit` call, successful or not.
pub(crate) fn commit_done(elapsed: Duration) {
    histogram!(COMMIT_DURATION).record(elapsed.as_secs_f64());
}

/// One compaction run swapped in: the bytes it merged and how long it took.
pub(crate) fn compaction_done(bytes: u64, elapsed: Duration) {
    counter!(COMPACTION_BYTES).increment(bytes);
    histogram!(COMPACTION_DURATION).record(elapsed.as_secs_f64());
}

/// One log compaction pass over a partition went through.
pub(crate) fn log_compaction_done(done: &crate::CleanStats, elapsed: Duration) {
    for (reason, n) in [
        ("superseded", done.superseded),
        ("tombstone", done.tombstones),
        ("keyless", done.keyless),
    ] {
        counter!(LOG_COMPACTION_REMOVED, "reason" => reason).increment(n);
    }
    histogram!(LOG_COMPACTION_DURATION).record(elapsed.as_secs_f64());
}

/// Objects garbage collection deleted: `kind` is `unreferenced` or `orphan`.
pub(crate) fn gc_deleted(kind: &'static str, objects: usize) {
    counter!(GC_DELETED, "kind" => kind).increment(u64::try_from(objects).unwrap_or(u64::MAX));
}

/// Gives the agent's metrics their help text and units. Call once at start, after the
/// `metrics` recorder is installed (a recorder installed later does not see it).
pub fn describe_metrics() {
    describe_counter!(
        GC_DELETED,
        Unit::Count,
        "Objects deleted by garbage collection: kind=unreferenced (no index entry names them) or orphan (no commit named them)."
    );
    describe_counter!(
        LOG_COMPACTION_REMOVED,
        Unit::Count,
        "Records log compaction removed: reason=superseded (a later record has the key), tombstone (past its delete horizon) or keyless."
    );
    describe_histogram!(
        LOG_COMPACTION_DURATION,
        Unit::Seconds,
        "Duration of one log compaction pass over a partition."
    );
    describe_counter!(
        COMPACTION_BYTES,
        Unit::Bytes,
        "Record batch bytes merged by object compaction into per-partition objects."
    );
    describe_histogram!(
        FLUSH_PUT_DURATION,
        Unit::Seconds,
        "Duration of one flush's object PUT (written and, on a local directory, fsynced)."
    );
    describe_histogram!(
        COMPACTION_DURATION,
        Unit::Seconds,
        "Duration of one compaction run, from reading its slices to its index swap."
    );
    describe_counter!(
        PRODUCE_RECORDS,
        Unit::Count,
        "Records made durable (object written and metadata committed), by topic."
    );
    describe_counter!(
        PRODUCE_BYTES,
        Unit::Bytes,
        "Record batch bytes made durable (object written and metadata committed), by topic."
    );
    describe_counter!(
        FETCH_RECORDS,
        Unit::Count,
        "Records returned by reads (whole batches, the first may start below the offset asked for), by topic."
    );
    describe_counter!(
        FETCH_BYTES,
        Unit::Bytes,
        "Record batch bytes returned by reads, by topic."
    );
    describe_histogram!(
        FLUSH_BYTES,
        Unit::Bytes,
        "Size of the object each flush writes."
    );
    describe_histogram!(
        FLUSH_BATCHES,
        Unit::Count,
        "Kafka record batches each flush writes."
    );
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Duration of each flush that writes an object: offset assignment, object PUT and metadata commit."
    );
    describe_counter!(
        FLUSH_FAILURES,
        Unit::Count,
        "Flushes that failed, by stage (object_store: the PUT; metadata: the commit call)."
    );
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Duration of each flush's metadata commit call."
    );
}

impl Agent {
    /// Records and bytes produced (durable) and fetched through this agent since it started.
    pub fn throughput(&self) -> ThroughputTotals {
        self.throughput.totals()
    }
}
