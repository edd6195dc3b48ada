//! The Kafka protocol server: accepts connections, frames requests, dispatches each API to
//! its handler and writes responses back in request order.
//!
//! - [`server`]: the accept loop and graceful drain.
//! - [`connection`]: framing, ordered pipelined responses, malformed-input handling.
//! - [`handlers`]: one module per Kafka API.
//! - [`errors`]: the one place where agent errors become Kafka error codes.

pub mod connection;
pub mod errors;
pub mod handlers;
pub mod server;

pub use server::{run, ServerConfig};
