//! The HTTP side of an agent, served beside its Kafka listener in the same process.
//!
//! Modules:
//! - `api`: the REST API under `/api/v1` (produce, topics and messages, agents, consumer
//!   groups, cluster overview) and its OpenAPI document at `/api/openapi.json`.
//! - `console`: the web console at `/`, embedded in the binary.
//! - `metrics`: the Prometheus recorder and `/metrics`.
//! - `health`: `/healthz` and `/readyz`.
//! - [`error`]: [`ApiError`], mapped to a status and a JSON error body in one place.
//! - `state`: what the handlers share.
//!
//! REST produce goes through the Kafka protocol to the cluster (the agent's own listener,
//! then whichever agent leads the partition), so it batches with every other producer and
//! answers only once the record is durable.

pub mod api;
mod console;
pub mod error;
pub mod health;
mod metrics;
mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::get;
use axum::Router;
use streamhouse_agent::Agent;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa::OpenApi;

pub use error::ApiError;
pub use metrics::install as install_metrics;
pub use state::HttpConfig;

use crate::state::{AppState, Shared};

/// How long requests still running at shutdown may take before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves HTTP on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    agent: Arc<Agent>,
    config: HttpConfig,
    shutdown: CancellationToken,
) {
    let state = AppState::new(agent, config, metrics::install());
    let sampler = tokio::spawn(state.clone().run_sampler(shutdown.clone()));
    let app = router(state);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => if let Err(e) = result {
            warn!(error = %e, "HTTP server stopped");
        },
        _ = grace => info!("HTTP requests still running at shutdown were dropped"),
    }
    let _ = sampler.await;
}

/// Every route: API, OpenAPI document, console, metrics and health.
fn router(state: Shared) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(api::routes())
        .merge(console::routes())
        .route(
            "/api/openapi.json",
            get(|| async { error::Json(api::ApiDoc::openapi()) }),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|uri: Uri| async move { ApiError::NoRoute(uri.path().to_string()) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
