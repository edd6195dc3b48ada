//! The Kafka protocol server: accepts connections, frames requests, dispatches each API to
//! its handler and writes responses back in request order.
//!
//! - [`server`]: the accept loop and graceful drain.
//! - [`connection`]: framing, ordered pipelined responses, malformed-input handling.
//! - [`handlers`]: one module per Kafka API.
//! - [`errors`]: the one place where agent errors become Kafka error codes.
//! - `stats`: the server's metrics; [`describe_metrics`] gives them their help text and is
//!   called once at start by whoever installs the `metrics` recorder.

pub mod connection;
pub mod errors;
pub mod handlers;
pub mod server;
mod stats;

pub use server::{run, ServerConfig};
pub use stats::describe_metrics;
