//! `/healthz` (the process answers) and `/readyz` (the stores answer and the agent has run
//! its first lease round).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use streamhouse_agent::error_chain;
use utoipa::ToSchema;

use crate::error::Json;
use crate::state::Shared;

/// How long each store may take to answer a readiness check. Probes (a load balancer's, a
/// Kubernetes kubelet's) give up after a second or two; a store that needs longer is not
/// ready for traffic either, whatever its retries would eventually say.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a ping answered in time; records what went wrong otherwise.
fn check<E: std::error::Error>(
    store: &str,
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
    problems: &mut Vec<String>,
) -> bool {
    match outcome {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            problems.push(format!("{store}: {}", error_chain(&e)));
            false
        }
        Err(_) => {
            problems.push(format!("{store}: no answer within {PING_TIMEOUT:?}"));
            false
        }
    }
}

/// The outcome of the readiness checks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The metadata store answered.
    pub metadata_store: bool,
    /// The object store answered.
    pub object_store: bool,
    /// The agent has completed its first lease round.
    pub leases: bool,
    /// What failed, for people.
    pub problems: Vec<String>,
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when the stores answer and leases were acquired, else 503.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `problems` says why", body = Readiness),
    )
)]
pub(crate) async fn readyz(State(state): State<Shared>) -> (StatusCode, Json<Readiness>) {
    let mut problems = Vec::new();
    let (metadata, objects) = tokio::join!(
        tokio::time::timeout(PING_TIMEOUT, state.agent.metadata().ping()),
        tokio::time::timeout(PING_TIMEOUT, state.agent.storage().ping()),
    );
    let metadata_store = check("metadata store", metadata, &mut problems);
    let object_store = check("object store", objects, &mut problems);
    let leases = state.agent.is_ready();
    if !leases {
        problems.push("the agent has not completed a lease round yet".to_string());
    }
    let ready = metadata_store && object_store && leases;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            metadata_store,
            object_store,
            leases,
            problems,
        }),
    )
}
