//! Prometheus metrics: the exporter installed as the process's `metrics` recorder, and
//! `/metrics`, which first sets the gauges that are read at scrape time (leases held,
//! consumer group lag).

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tracing::{debug, warn};

use crate::api::cluster::{high_watermarks, lag};
use crate::state::Shared;

/// Histogram buckets for durations (seconds): 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for sizes (bytes): 1 KiB to 64 MiB.
const BYTES_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];
/// Histogram buckets for counts (batches per flush).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A gauge not set for this long (a deleted group's lag) leaves the output.
const GAUGE_IDLE: Duration = Duration::from_secs(300);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process (a process may start several servers,
/// as the in-process benchmark does) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full("streamhouse_flush_bytes".into()),
                            BYTES_BUCKETS,
                        )
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full("streamhouse_flush_batches".into()),
                            COUNT_BUCKETS,
                        )
                    })
            };
            let handle = match builder().map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => {
                    // Another recorder owns the process (a test harness): /metrics still
                    // answers, from a recorder nothing records into.
                    warn!(error = %e, "cannot install the Prometheus recorder; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
                Err(e) => {
                    warn!(error = %e, "bad histogram buckets; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            streamhouse_kafka::describe_metrics();
            streamhouse_agent::describe_metrics();
            streamhouse_storage::describe_metrics();
            streamhouse_metadata::describe_metrics();
            metrics::describe_gauge!(
                "streamhouse_leases_held",
                "Partition leases this agent holds"
            );
            metrics::describe_gauge!(
                "streamhouse_consumer_group_lag",
                "Records between a group's committed offset and the high watermark"
            );
            handle
        })
        .clone()
}

/// Prometheus metrics of this agent.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    metrics::gauge!("streamhouse_leases_held").set(state.agent.led_count() as f64);
    if let Err(e) = set_group_lag(&state).await {
        debug!(error = %e, "consumer group lag left out of this scrape");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Sets `streamhouse_consumer_group_lag{group, topic, partition}` for every committed
/// offset, from the metadata store.
async fn set_group_lag(state: &Shared) -> Result<(), streamhouse_metadata::MetadataError> {
    let metadata = state.agent.metadata();
    let watermarks = high_watermarks(&metadata.list_all_partitions().await?);
    for group in metadata.list_offset_groups().await? {
        for offset in metadata.fetch_group_offsets(&group).await? {
            let value = lag(offset.offset.0, watermarks.get(&offset.tp).copied());
            metrics::gauge!(
                "streamhouse_consumer_group_lag",
                "group" => group.clone(),
                "topic" => offset.tp.topic.clone(),
                "partition" => offset.tp.partition.0.to_string(),
            )
            .set(value as f64);
        }
    }
    Ok(())
}
