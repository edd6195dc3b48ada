//! The accept loop: one task per connection, drained on shutdown.

use std::sync::Arc;
use std::time::Duration;

use streamhouse_agent::Agent;
use streamhouse_groups::GroupCoordinator;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection;
use crate::handlers::Handler;

/// Limits of the protocol server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The largest request frame accepted (Kafka's `socket.request.max.bytes`); a larger
    /// one closes the connection.
    pub max_request_bytes: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long shutdown waits for connections to write their last responses.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves Kafka clients on `listener` until `shutdown` is cancelled, then waits for open
/// connections to answer what they have read.
pub async fn run(
    listener: TcpListener,
    agent: Arc<Agent>,
    groups: Arc<GroupCoordinator>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    // Consumer groups are spread over the live agents of the agent group; FindCoordinator
    // names the same agent that accepts the group's requests.
    let placed = agent.clone();
    groups.place_with(Arc::new(move |group: &str| {
        placed.coordinator_for(group).id == placed.info().id
    }));
    let handler = Arc::new(Handler::new(agent, groups));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    info!(addr = ?listener.local_addr().ok(), "kafka listener ready");
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                debug!(%peer, "connection accepted");
                let handler = handler.clone();
                let shutdown = shutdown.clone();
                let max = config.max_request_bytes;
                connections.spawn(async move {
                    connection::serve(stream, peer, handler, max, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("connections still open after the drain timeout; closing them");
        connections.abort_all();
    }
    info!("kafka listener stopped");
}
