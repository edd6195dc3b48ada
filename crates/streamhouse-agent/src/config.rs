//! The agent's settings.

use std::time::Duration;

use streamhouse_metadata::AgentId;

/// How an agent identifies itself and when it flushes.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: AgentId,
    /// host:port that Kafka clients are told to connect to.
    pub advertised_addr: String,
    pub group: String,
    /// A flush starts when this much time has passed since the oldest pending batch…
    pub flush_interval: Duration,
    /// …or when this many bytes are pending, whichever comes first.
    pub flush_max_bytes: usize,
    /// Appends wait (backpressure) while this many bytes are pending or being flushed.
    pub max_pending_bytes: usize,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often the agent heartbeats and renews its leases.
    pub heartbeat_interval: Duration,
    /// Whether Metadata requests for unknown topics create them.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics.
    pub default_partitions: i32,
    /// How often retention (`retention.ms`, `retention.bytes`) is enforced on the partitions
    /// this agent leads.
    pub retention_check_interval: Duration,
}

impl AgentConfig {
    /// Settings for tests and examples: a fast flush, short leases.
    pub fn for_tests(agent_id: &str, advertised_addr: &str) -> AgentConfig {
        AgentConfig {
            agent_id: AgentId(agent_id.to_string()),
            advertised_addr: advertised_addr.to_string(),
            group: "default".to_string(),
            flush_interval: Duration::from_millis(5),
            flush_max_bytes: 4 << 20,
            max_pending_bytes: 64 << 20,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            auto_create_topics: false,
            default_partitions: 1,
            retention_check_interval: Duration::from_secs(300),
        }
    }
}
