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
    /// Object compaction: how often the partitions this agent leads are looked at (zero:
    /// never)…
    pub compaction_interval: Duration,
    /// …merging runs of small index entries (under `compaction_entry_bytes`) into objects of
    /// about this size…
    pub compaction_target_bytes: usize,
    /// …once the run holds that much or its oldest entry is this old.
    pub compaction_window: Duration,
    /// The byte size of the index entries compaction writes, and below which an entry
    /// counts as small: a read fetches at most about this much to reach one record.
    pub compaction_entry_bytes: usize,
    /// Garbage collection (one agent of the cluster at a time): how often it runs (zero:
    /// never)…
    pub gc_interval: Duration,
    /// …how long an object no index entry names is kept before it is deleted (covers reads
    /// that looked the old entries up just before they were replaced)…
    pub gc_grace: Duration,
    /// …and how old an object that no commit named must be before it counts as an orphan.
    pub orphan_grace: Duration,
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
            compaction_interval: Duration::ZERO,
            compaction_target_bytes: 64 << 20,
            compaction_window: Duration::from_secs(600),
            compaction_entry_bytes: 256 << 10,
            gc_interval: Duration::ZERO,
            gc_grace: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(600),
        }
    }
}
