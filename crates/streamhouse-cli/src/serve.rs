//! `streamhouse serve`: wires the metadata store, object store, agent and Kafka listener
//! together and runs them until SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_metadata::AgentId;
use streamhouse_storage::{ObjectStorage, S3Options};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Flags of `streamhouse serve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Directory for the embedded defaults: the SQLite database, local objects, the agent id.
    #[arg(
        long,
        env = "STREAMHOUSE_DATA_DIR",
        default_value = "./streamhouse-data"
    )]
    pub(crate) data_dir: PathBuf,
    /// Metadata store URL [default: sqlite://<data-dir>/metadata.db].
    #[arg(long, env = "STREAMHOUSE_METADATA_URL")]
    pub(crate) metadata_url: Option<String>,
    /// Object store URL [default: file://<data-dir>/objects].
    #[arg(long, env = "STREAMHOUSE_OBJECT_STORE_URL")]
    pub(crate) object_store_url: Option<String>,
    /// Endpoint of an S3-compatible server for s3:// object stores (e.g. http://127.0.0.1:9000)
    /// [default: AWS_ENDPOINT_URL, else AWS S3].
    #[arg(long, env = "STREAMHOUSE_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// Region for s3:// object stores [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "STREAMHOUSE_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Access key id for s3:// object stores [default: AWS_ACCESS_KEY_ID].
    #[arg(long, env = "STREAMHOUSE_S3_ACCESS_KEY_ID")]
    pub(crate) s3_access_key_id: Option<String>,
    /// Secret access key for s3:// object stores [default: AWS_SECRET_ACCESS_KEY]. Never logged.
    #[arg(long, env = "STREAMHOUSE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub(crate) s3_secret_access_key: Option<Secret>,
    /// Allow a plain http:// S3 endpoint (when not given, AWS_ALLOW_HTTP decides).
    #[arg(long, env = "STREAMHOUSE_S3_ALLOW_HTTP", default_value_t = false)]
    pub(crate) s3_allow_http: bool,
    /// Address the Kafka listener binds (port 0 picks a free port).
    #[arg(long, env = "STREAMHOUSE_KAFKA_ADDR", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_addr: String,
    /// Address the HTTP server (REST API, web console, /metrics, /healthz, /readyz) binds
    /// (port 0 picks a free port).
    #[arg(long, env = "STREAMHOUSE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) http_addr: String,
    /// Largest HTTP request body accepted; a larger one is answered 413.
    #[arg(long, env = "STREAMHOUSE_HTTP_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub(crate) http_max_body_bytes: usize,
    /// host:port clients are told to connect to [default: the bound listen address].
    #[arg(long, env = "STREAMHOUSE_ADVERTISED_KAFKA_ADDR")]
    pub(crate) advertised_kafka_addr: Option<String>,
    /// This agent's id, stable across restarts [default: generated once and kept in
    /// <data-dir>/agent-id].
    #[arg(long, env = "STREAMHOUSE_AGENT_ID")]
    pub(crate) agent_id: Option<String>,
    /// The agent group this agent belongs to.
    #[arg(long, env = "STREAMHOUSE_AGENT_GROUP", default_value = "default")]
    pub(crate) agent_group: String,
    /// Flush when the oldest pending batch has waited this long.
    #[arg(long, env = "STREAMHOUSE_FLUSH_INTERVAL_MS", default_value_t = 2)]
    pub(crate) flush_interval_ms: u64,
    /// Flush when this many bytes are pending.
    #[arg(long, env = "STREAMHOUSE_FLUSH_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub(crate) flush_max_bytes: usize,
    /// Producers wait while this many bytes are pending or being flushed.
    #[arg(long, env = "STREAMHOUSE_MAX_PENDING_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) max_pending_bytes: usize,
    /// Size of the in-memory cache of recent objects.
    #[arg(long, env = "STREAMHOUSE_CACHE_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub(crate) cache_max_bytes: usize,
    /// Largest request frame accepted; a larger one closes its connection.
    #[arg(long, env = "STREAMHOUSE_MAX_REQUEST_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub(crate) max_request_bytes: usize,
    /// Create unknown topics when a client's Metadata request asks to.
    #[arg(long, env = "STREAMHOUSE_AUTO_CREATE_TOPICS", default_value_t = false)]
    pub(crate) auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics requests that leave it to us.
    #[arg(long, env = "STREAMHOUSE_DEFAULT_PARTITIONS", default_value_t = 1)]
    pub(crate) default_partitions: i32,
    /// How long the first rebalance of an empty consumer group waits for more members
    /// (Kafka's group.initial.rebalance.delay.ms).
    #[arg(
        long,
        env = "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 3000
    )]
    pub(crate) group_initial_rebalance_delay_ms: u64,
    /// How long a partition lease lasts without renewal.
    #[arg(long, env = "STREAMHOUSE_LEASE_TTL_MS", default_value_t = 30_000)]
    pub(crate) lease_ttl_ms: u64,
    /// How often retention (retention.ms, retention.bytes) is enforced on the partitions this
    /// agent leads (Kafka's log.retention.check.interval.ms; 0: never).
    #[arg(
        long,
        env = "STREAMHOUSE_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub(crate) retention_check_interval_ms: u64,
    /// How often object compaction looks at the partitions this agent leads (0: never).
    #[arg(
        long,
        env = "STREAMHOUSE_COMPACTION_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub(crate) compaction_interval_ms: u64,
    /// Compaction merges a partition's small slices into objects of about this size…
    #[arg(long, env = "STREAMHOUSE_COMPACTION_TARGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) compaction_target_bytes: usize,
    /// …or, short of that, once the oldest slice of a run is this old.
    #[arg(
        long,
        env = "STREAMHOUSE_COMPACTION_WINDOW_MS",
        default_value_t = 600_000
    )]
    pub(crate) compaction_window_ms: u64,
    /// Size of the index entries compaction writes (a read fetches about this much to reach
    /// one record); smaller entries count as small slices.
    #[arg(long, env = "STREAMHOUSE_COMPACTION_ENTRY_BYTES", default_value_t = 256 * 1024)]
    pub(crate) compaction_entry_bytes: usize,
    /// How often garbage collection runs (on one agent of the cluster at a time; 0: never).
    #[arg(long, env = "STREAMHOUSE_GC_INTERVAL_MS", default_value_t = 60_000)]
    pub(crate) gc_interval_ms: u64,
    /// How long an object no index entry names is kept before garbage collection deletes it
    /// (covers reads that looked it up just before it was replaced).
    #[arg(long, env = "STREAMHOUSE_GC_GRACE_MS", default_value_t = 60_000)]
    pub(crate) gc_grace_ms: u64,
    /// How old an object that no commit named must be before garbage collection deletes it
    /// as an orphan.
    #[arg(long, env = "STREAMHOUSE_ORPHAN_GRACE_MS", default_value_t = 600_000)]
    pub(crate) orphan_grace_ms: u64,
    /// How often the agent heartbeats and renews its leases.
    #[arg(
        long,
        env = "STREAMHOUSE_HEARTBEAT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub(crate) heartbeat_interval_ms: u64,
}

impl ServeArgs {
    /// Checks the flags before anything is opened or bound.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.flush_max_bytes == 0 {
            bail!("--flush-max-bytes must be positive");
        }
        if self.max_pending_bytes < self.flush_max_bytes {
            bail!("--max-pending-bytes must be at least --flush-max-bytes");
        }
        if self.compaction_entry_bytes == 0
            || self.compaction_target_bytes < self.compaction_entry_bytes
        {
            bail!("--compaction-target-bytes must be at least --compaction-entry-bytes, which must be positive");
        }
        if self.default_partitions < 1 {
            bail!("--default-partitions must be at least 1");
        }
        if self.heartbeat_interval_ms == 0 || self.lease_ttl_ms <= self.heartbeat_interval_ms {
            bail!("--lease-ttl-ms must be longer than --heartbeat-interval-ms, which must be positive");
        }
        if let Err(reason) = streamhouse_metadata::validate_agent_group(&self.agent_group) {
            bail!("--agent-group: {reason}");
        }
        Ok(())
    }
}

/// A server started in this process.
pub(crate) struct Running {
    pub(crate) agent: Arc<Agent>,
    pub(crate) kafka_addr: std::net::SocketAddr,
    pub(crate) http_addr: std::net::SocketAddr,
    pub(crate) advertised: String,
    shutdown: CancellationToken,
    agent_task: tokio::task::JoinHandle<()>,
    groups_task: tokio::task::JoinHandle<()>,
    server_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until `shutdown` is cancelled and everything has drained.
    pub(crate) async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        info!("shutting down: no new connections; flushing what is pending");
        self.agent_task.await.context("agent task failed")?;
        self.groups_task
            .await
            .context("group coordinator task failed")?;
        self.server_task
            .await
            .context("kafka listener task failed")?;
        self.http_task.await.context("HTTP server task failed")?;
        Ok(())
    }

    /// Stops the server gracefully.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Runs the server until `shutdown` is cancelled (or a signal arrives).
pub(crate) async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = start(&args, shutdown.clone()).await?;
    // One machine-readable line for scripts and tests that start the server on port 0.
    println!(
        "streamhouse ready kafka={} advertised={} http={}",
        running.kafka_addr, running.advertised, running.http_addr
    );
    tokio::spawn(signal_to_cancel(shutdown));
    running.wait().await
}

/// Opens the stores, starts the agent and the Kafka listener, and returns at once.
pub(crate) async fn start(
    args: &ServeArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    args.validate()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("cannot resolve data dir {}", args.data_dir.display()))?;
    let metadata_url = args
        .metadata_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("metadata.db").display()));
    let object_store_url = args
        .object_store_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", data_dir.join("objects").display()));
    let agent_id = match &args.agent_id {
        Some(id) => id.clone(),
        None => stable_agent_id(&data_dir)?,
    };

    let listener = TcpListener::bind(&args.kafka_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.kafka_addr))?;
    let bound = listener.local_addr()?;
    let http_listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let advertised = args
        .advertised_kafka_addr
        .clone()
        .unwrap_or_else(|| bound.to_string());

    let metadata = streamhouse_metadata::open(&metadata_url)
        .await
        .with_context(|| format!("cannot open metadata store {}", redact(&metadata_url)))?;
    let s3 = S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        access_key_id: args.s3_access_key_id.clone(),
        secret_access_key: args.s3_secret_access_key.as_ref().map(|s| s.0.clone()),
        allow_http: args.s3_allow_http.then_some(true),
    };
    let storage = ObjectStorage::open_with(&object_store_url, args.cache_max_bytes, &s3)
        .with_context(|| format!("cannot open object store {object_store_url}"))?;
    let config = AgentConfig {
        agent_id: AgentId(agent_id),
        advertised_addr: advertised.clone(),
        group: args.agent_group.clone(),
        flush_interval: Duration::from_millis(args.flush_interval_ms),
        flush_max_bytes: args.flush_max_bytes,
        max_pending_bytes: args.max_pending_bytes,
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.default_partitions,
        retention_check_interval: Duration::from_millis(args.retention_check_interval_ms),
        compaction_interval: Duration::from_millis(args.compaction_interval_ms),
        compaction_target_bytes: args.compaction_target_bytes,
        compaction_window: Duration::from_millis(args.compaction_window_ms),
        compaction_entry_bytes: args.compaction_entry_bytes,
        gc_interval: Duration::from_millis(args.gc_interval_ms),
        gc_grace: Duration::from_millis(args.gc_grace_ms),
        orphan_grace: Duration::from_millis(args.orphan_grace_ms),
    };
    let agent = Agent::start(config, metadata, storage)
        .await
        .context("cannot start the agent")?;

    let server_config = streamhouse_kafka::ServerConfig {
        max_request_bytes: args.max_request_bytes,
        ..Default::default()
    };
    let groups = streamhouse_groups::GroupCoordinator::new(
        streamhouse_groups::GroupConfig {
            initial_rebalance_delay: Duration::from_millis(args.group_initial_rebalance_delay_ms),
            ..Default::default()
        },
        agent.metadata().clone(),
    );
    let groups_task = tokio::spawn(groups.clone().run(shutdown.clone()));
    let server_task = tokio::spawn(streamhouse_kafka::run(
        listener,
        agent.clone(),
        groups,
        server_config,
        shutdown.clone(),
    ));
    let agent_task = tokio::spawn(agent.clone().run(shutdown.clone()));
    let http_config = streamhouse_http::HttpConfig {
        max_body_bytes: args.http_max_body_bytes,
        kafka_bootstrap: loopback_if_unspecified(bound).to_string(),
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
    };
    let http_task = tokio::spawn(streamhouse_http::run(
        http_listener,
        agent.clone(),
        http_config,
        shutdown.clone(),
    ));
    info!(kafka = %bound, http = %http_addr, advertised = %advertised, metadata = %redact(&metadata_url), objects = %object_store_url, "streamhouse is serving");
    Ok(Running {
        agent,
        kafka_addr: bound,
        http_addr,
        advertised,
        shutdown,
        agent_task,
        groups_task,
        server_task,
        http_task,
    })
}

/// Where this process reaches its own listener: a wildcard bind address (`0.0.0.0`, `::`)
/// is reached on loopback.
fn loopback_if_unspecified(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn signal_to_cancel(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}

/// A secret flag value: usable, but printed as `***` by `Debug`, so that debug output of the
/// flags can never leak it.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// A URL fit for logs: any password in its user info is replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The agent id kept in `<data-dir>/agent-id`, created on first start.
fn stable_agent_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("agent-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_debug_as_stars() {
        assert_eq!(
            format!("{:?}", Some(super::Secret("hunter2".into()))),
            "Some(***)"
        );
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/test?x=1"),
            "postgres://app:***@db:5432/test?x=1"
        );
        assert_eq!(redact("postgres://app@db/test"), "postgres://app@db/test");
        assert_eq!(redact("sqlite:///tmp/m.db"), "sqlite:///tmp/m.db");
    }
}
