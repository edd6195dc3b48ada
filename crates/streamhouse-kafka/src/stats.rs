//! The protocol server's metrics, through the `metrics` facade: requests per API, Produce
//! and Fetch requests per topic, Produce latency and open connections.
//!
//! Nothing is recorded unless the process installs a `metrics` recorder; [`describe_metrics`]
//! gives every metric below its help text and unit, and is meant to be called once at start,
//! after the recorder is installed.

use std::sync::OnceLock;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use crate::handlers::SUPPORTED;

const KAFKA_REQUESTS: &str = "streamhouse_kafka_requests_total";
const PRODUCE_REQUESTS: &str = "streamhouse_produce_requests_total";
const FETCH_REQUESTS: &str = "streamhouse_fetch_requests_total";
const PRODUCE_LATENCY: &str = "streamhouse_produce_latency_seconds";
const CONNECTIONS: &str = "streamhouse_kafka_connections";

/// Gives the protocol server's metrics their help text and units. Call once at start, after
/// the `metrics` recorder is installed (a recorder installed later does not see it).
pub fn describe_metrics() {
    describe_counter!(
        KAFKA_REQUESTS,
        Unit::Count,
        "Kafka requests received, by API (api: the API key's name, e.g. Produce)."
    );
    describe_counter!(
        PRODUCE_REQUESTS,
        Unit::Count,
        "Produce requests, by topic (a request naming several topics counts once for each)."
    );
    describe_counter!(
        FETCH_REQUESTS,
        Unit::Count,
        "Fetch requests, by topic (a request naming several topics counts once for each)."
    );
    describe_histogram!(
        PRODUCE_LATENCY,
        Unit::Seconds,
        "Time from a Produce request being read to its response being ready (acks=0 requests get no response and are not timed)."
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "Open Kafka client connections.");
}

/// The name of a served API as Kafka spells it (`Produce`, `ApiVersions`, …), the `api`
/// label: computed once per API, so counting a request allocates nothing.
fn api_name(key: ApiKey) -> &'static str {
    static NAMES: OnceLock<Vec<(ApiKey, &'static str)>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        SUPPORTED
            .iter()
            .map(|(k, _, _)| (*k, &*Box::leak(format!("{k:?}").into_boxed_str())))
            .collect()
    });
    names
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("Unknown", |(_, name)| name)
}

/// One request of a served API.
pub(crate) fn request(key: ApiKey) {
    counter!(KAFKA_REQUESTS, "api" => api_name(key)).increment(1);
}

/// One Produce request naming `topic`.
pub(crate) fn produce_request(topic: &str) {
    counter!(PRODUCE_REQUESTS, "topic" => topic.to_string()).increment(1);
}

/// One Fetch request naming `topic`.
pub(crate) fn fetch_request(topic: &str) {
    counter!(FETCH_REQUESTS, "topic" => topic.to_string()).increment(1);
}

/// One Produce request answered, `elapsed` after it was read.
pub(crate) fn produce_answered(elapsed: Duration) {
    histogram!(PRODUCE_LATENCY).record(elapsed.as_secs_f64());
}

/// Counts one open connection for as long as it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(());

impl OpenConnection {
    pub(crate) fn new() -> OpenConnection {
        gauge!(CONNECTIONS).increment(1.0);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_api_is_labelled_with_its_kafka_name() {
        assert_eq!(api_name(ApiKey::Produce), "Produce");
        assert_eq!(
            api_name(ApiKey::OffsetForLeaderEpoch),
            "OffsetForLeaderEpoch"
        );
        for (key, _, _) in SUPPORTED {
            assert_eq!(api_name(*key), format!("{key:?}"));
        }
    }
}
