//! Where the background jobs run: retention, log compaction, object compaction and garbage
//! collection share a Tokio runtime of their own, on threads with a lower CPU priority (nice
//! 10). Their work is bulk copying and checking that may wait a little; on a machine with few
//! cores it would otherwise take the CPU from the flushes and fetches that producers and
//! consumers are waiting for (on 2 cores, compaction bursts tripled the produce p99). The
//! lower priority shares the CPU rather than starving the jobs (nice 10 still gets about a
//! tenth of a busy core), so compaction keeps up under load, only more slowly. The runtime
//! outlives the jobs (see [`Agent::run_maintenance`]).

use std::sync::Arc;

use thread_priority::{ThreadPriority, ThreadPriorityValue};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agent::{error_chain, Agent};

/// Nice 10 (the crate maps 0..=99 onto nice 19..=-20).
const BACKGROUND_PRIORITY: u8 = 22;

fn lower_priority() {
    let lowered = ThreadPriorityValue::try_from(BACKGROUND_PRIORITY)
        .map_err(|e| e.to_string())
        .and_then(|value| {
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value))
                .map_err(|e| e.to_string())
        });
    if let Err(reason) = lowered {
        debug!(%reason, "background thread keeps its priority");
    }
}

impl Agent {
    /// Runs the background jobs until `shutdown`, on their own runtime and threads of lower
    /// priority (on this task's runtime if those cannot be started).
    pub(crate) async fn run_maintenance(self: Arc<Self>, shutdown: CancellationToken) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let agent = self.clone();
        let token = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("streamhouse-maintenance".into())
            .spawn(move || {
                lower_priority();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("streamhouse-maintenance")
                    .on_thread_start(lower_priority)
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(agent.maintenance_loops(&token));
                        drop(agent);
                        let _ = done.send(true);
                        // Connections the jobs opened (PostgreSQL, S3) are pooled and used by
                        // the rest of the agent, and their sockets are registered with this
                        // runtime's I/O driver: keep driving it for as long as the process
                        // lives (parked, it costs nothing).
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        warn!(error = %error_chain(&e), "cannot start the maintenance runtime");
                        let _ = done.send(false);
                    }
                }
            });
        let ran = match spawned {
            Ok(_) => finished.await.unwrap_or(false),
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot start the maintenance thread");
                false
            }
        };
        if !ran && !shutdown.is_cancelled() {
            self.maintenance_loops(&shutdown).await;
        }
    }

    async fn maintenance_loops(&self, shutdown: &CancellationToken) {
        tokio::join!(
            self.retention_loop(shutdown),
            self.compaction_loop(shutdown),
            self.gc_loop(shutdown)
        );
    }
}
