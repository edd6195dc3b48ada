//! What a benchmark run does: target, topic shape, record size and count, producer tuning.

use std::time::Duration;

use crate::error::BenchError;

/// Parameters of a produce or consume benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Broker address, "host:port".
    pub bootstrap: String,
    /// A server's HTTP address, "host:port", for the REST produce benchmark.
    pub http: String,
    /// Records per request of the REST produce benchmark (1: `/produce`, more: its batch form).
    pub rest_batch: usize,
    /// Topic to write to / read from (created by the produce bench if missing).
    pub topic: String,
    /// Partitions of the topic when the bench creates it.
    pub partitions: i32,
    /// Value size of each record in bytes (records have no key).
    pub record_size: usize,
    /// Records to produce (in total, across producers) or to consume.
    pub records: u64,
    /// Producer acks: 0, 1 or -1. With 0 there are no offsets, so no latency or offset check.
    pub acks: i16,
    /// Concurrent producers, each with its own connections.
    pub producers: usize,
    /// Producer linger.
    pub linger: Duration,
    /// Producer batch size in bytes per partition.
    pub batch_size: usize,
    /// Produce requests in flight per broker connection.
    pub max_in_flight: usize,
    /// Bytes a producer may have sent but not yet acknowledged; `send` waits beyond it.
    /// Produce latency includes this queue, so it bounds latency at a given throughput.
    pub buffer_memory: usize,
    /// Idempotent producers (the client's default); needs `acks = -1`.
    pub idempotence: bool,
    /// Group members of the group-consume benchmark.
    pub consumers: usize,
    /// Records per second the end-to-end benchmark's producer sends (open loop).
    pub rate: u64,
    /// Whether the caller also wants a consume run (read by the CLI, not by `run_produce`).
    pub consume: bool,
    /// Show a progress bar on stderr (only if stderr is a terminal).
    pub progress: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            bootstrap: "127.0.0.1:9092".to_owned(),
            http: "127.0.0.1:8080".to_owned(),
            rest_batch: 1,
            topic: "streamhouse-bench".to_owned(),
            partitions: 8,
            record_size: 1024,
            records: 1_000_000,
            acks: -1,
            producers: 1,
            linger: Duration::from_millis(5),
            batch_size: 1 << 20,
            max_in_flight: 5,
            buffer_memory: 64 << 20,
            idempotence: true,
            consumers: 3,
            rate: 10_000,
            consume: false,
            progress: true,
        }
    }
}

impl BenchConfig {
    /// Rejects settings no run can use.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::InvalidConfig(m.to_owned()));
        if self.bootstrap.is_empty() {
            return bad("bootstrap address is empty");
        }
        if self.topic.is_empty() {
            return bad("topic is empty");
        }
        if self.partitions <= 0 {
            return bad("partitions must be positive");
        }
        if self.records == 0 {
            return bad("records must be positive");
        }
        if self.producers == 0 {
            return bad("producers must be positive");
        }
        if self.batch_size == 0 || self.max_in_flight == 0 {
            return bad("batch_size and max_in_flight must be positive");
        }
        if !matches!(self.acks, -1..=1) {
            return bad("acks must be -1, 0 or 1");
        }
        if self.idempotence && self.acks != -1 {
            return bad("idempotence needs acks = -1; turn idempotence off for other acks");
        }
        if self.idempotence && self.max_in_flight > streamhouse_client::MAX_IN_FLIGHT_IDEMPOTENT {
            return bad("idempotence allows at most 5 requests in flight");
        }
        if self.consumers == 0 {
            return bad("consumers must be positive");
        }
        if self.rate == 0 {
            return bad("rate must be positive");
        }
        if !(1..=10_000).contains(&self.rest_batch) {
            return bad("rest batch must be between 1 and 10000 records");
        }
        Ok(())
    }
}
