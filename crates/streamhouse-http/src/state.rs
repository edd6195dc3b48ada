//! What every handler shares: the agent, Kafka clients of the cluster (connected on first
//! use), the throughput history and the metrics handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use streamhouse_agent::{Agent, ThroughputTotals};
use streamhouse_client::{Admin, Producer, ProducerConfig};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::ApiError;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// Where the API's Kafka clients connect: this agent's own Kafka listener.
    pub kafka_bootstrap: String,
    /// How long an agent stays live without a heartbeat (the agents' lease TTL).
    pub lease_ttl: Duration,
}

/// How often the throughput history takes a sample, and how many it keeps (5 minutes).
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
const SAMPLES_KEPT: usize = 300;

/// One point of the throughput history: this agent's totals at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) time_ms: i64,
    pub(crate) totals: ThroughputTotals,
}

pub(crate) struct AppState {
    pub(crate) agent: Arc<Agent>,
    pub(crate) config: HttpConfig,
    pub(crate) metrics: PrometheusHandle,
    producer: OnceCell<Producer>,
    admin: OnceCell<Admin>,
    history: Mutex<VecDeque<Sample>>,
}

pub(crate) type Shared = Arc<AppState>;

impl AppState {
    pub(crate) fn new(agent: Arc<Agent>, config: HttpConfig, metrics: PrometheusHandle) -> Shared {
        let state = Arc::new(AppState {
            agent,
            config,
            metrics,
            producer: OnceCell::new(),
            admin: OnceCell::new(),
            history: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT + 1)),
        });
        state.sample();
        state
    }

    /// The producer of REST produce requests: one for the whole API, so that concurrent
    /// requests share its batches, talking to the cluster through the Kafka protocol like
    /// every other producer (idempotent, acks=all: an offset is known only once durable).
    pub(crate) async fn producer(&self) -> Result<&Producer, ApiError> {
        self.producer
            .get_or_try_init(|| async {
                let config = ProducerConfig {
                    linger: Duration::from_millis(1),
                    request_timeout: Duration::from_secs(10),
                    delivery_timeout: Duration::from_secs(30),
                    ..ProducerConfig::default()
                };
                Producer::new(&self.config.kafka_bootstrap, config).await
            })
            .await
            .map_err(|e| {
                warn!(error = %e, "REST producer cannot connect");
                ApiError::from(e)
            })
    }

    /// An admin client of the cluster, for consumer groups (whose coordinator may be another
    /// agent).
    pub(crate) async fn admin(&self) -> Result<&Admin, ApiError> {
        self.admin
            .get_or_try_init(|| Admin::connect(&self.config.kafka_bootstrap))
            .await
            .map_err(ApiError::from)
    }

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        // A panic while holding this lock cannot leave the history inconsistent (it is
        // only pushed to and popped from), so a poisoned lock is still usable.
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records this agent's throughput totals now.
    pub(crate) fn sample(&self) {
        let sample = Sample {
            time_ms: now_ms(),
            totals: self.agent.throughput(),
        };
        let mut history = self.history();
        history.push_back(sample);
        while history.len() > SAMPLES_KEPT + 1 {
            history.pop_front();
        }
    }

    /// The samples kept, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.history().iter().copied().collect()
    }

    /// Every [`SAMPLE_INTERVAL`] until `shutdown`: takes a throughput sample, and lets the
    /// Prometheus recorder fold the histogram samples recorded since into its buckets (it
    /// keeps each sample until then, so without this a server nobody scrapes would hold
    /// every produce latency it ever measured).
    pub(crate) async fn run_sampler(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.sample();
                    self.metrics.run_upkeep();
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
