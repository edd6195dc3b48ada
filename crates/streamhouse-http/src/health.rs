//! `/healthz` (the process answers) and `/readyz` (the stores answer and the agent has run
//! its first lease round).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use streamhouse_agent::error_chain;
use utoipa::ToSchema;

use crate::error::Json;
use crate::state::Shared;

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
    let metadata_store = match state.agent.metadata().ping().await {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("metadata store: {}", error_chain(&e)));
            false
        }
    };
    let object_store = match state.agent.storage().ping().await {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("object store: {}", error_chain(&e)));
            false
        }
    };
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
