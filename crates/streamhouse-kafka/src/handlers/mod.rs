//! Request dispatch: decode the header and body, run the API's handler, encode the response.
//!
//! Produce is split in two: its records enter the agent's buffer before the next request of
//! the same connection is read (so per-connection order is kept), and only the wait for
//! durability runs concurrently with later requests.

mod admin;
mod api_versions;
mod configs;
mod fetch;
mod groups;
mod init_producer_id;
mod list_offsets;
pub(crate) mod metadata;
mod offset_for_leader_epoch;
mod produce;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use streamhouse_agent::Agent;
use streamhouse_groups::GroupCoordinator;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::connection::ConnectionError;
use crate::stats;
pub use api_versions::SUPPORTED;

/// Handles every API for one agent.
#[derive(Debug)]
pub struct Handler {
    agent: Arc<Agent>,
    groups: Arc<GroupCoordinator>,
}

impl Handler {
    pub fn new(agent: Arc<Agent>, groups: Arc<GroupCoordinator>) -> Self {
        Handler { agent, groups }
    }

    /// Decodes one request frame and starts handling it. The returned task yields the
    /// response frame (length prefix included), or `None` when no response is due.
    pub async fn dispatch(
        self: &Arc<Self>,
        mut frame: Bytes,
        peer: SocketAddr,
    ) -> Result<JoinHandle<Option<Bytes>>, ConnectionError> {
        let received = Instant::now();
        let malformed = |reason: String| ConnectionError::Malformed { reason };
        let (api_key, version, correlation_id) = match frame.get(..8) {
            Some(h) => (
                i16::from_be_bytes([h[0], h[1]]),
                i16::from_be_bytes([h[2], h[3]]),
                i32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ),
            None => return Err(malformed("frame shorter than a request header".into())),
        };
        let Some(key) = api_versions::supported_key(api_key) else {
            return Err(ConnectionError::Unsupported { api_key, version });
        };
        stats::request(key);
        let range = key.valid_versions();
        let served = api_versions::served_range(key);
        if key == ApiKey::ApiVersions && version > served.1 {
            // KIP-511: answer an ApiVersions we are too old for in v0, with our versions, so
            // the client can pick one we serve.
            let body = api_versions::unsupported_version_response();
            return Ok(tokio::spawn(async move {
                encode(key, 0, correlation_id, ResponseKind::ApiVersions(body))
            }));
        }
        if version < served.0 || version > served.1 || version < range.min || version > range.max {
            return Err(ConnectionError::Unsupported { api_key, version });
        }
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let header = RequestHeader::decode(&mut frame, key.request_header_version(version))?;
            let request = RequestKind::decode(key, &mut frame, version)?;
            // `kafka-protocol` reports decode errors as `anyhow::Error`.
            Ok::<_, anyhow::Error>((header, request))
        }));
        let (header, request) = match decoded {
            Ok(Ok(decoded)) => decoded,
            Ok(Err(e)) => return Err(malformed(format!("{key:?} v{version}: {e}"))),
            Err(_) => return Err(malformed(format!("{key:?} v{version}: decoder panicked"))),
        };
        debug!(api = ?key, version, correlation_id, client = ?header.client_id.as_ref().map(StrBytes::as_str), "request");
        let handler = self.clone();
        let task: JoinHandle<Option<Bytes>> = match request {
            RequestKind::Produce(req) => {
                let pending = produce::submit(&self.agent, req).await;
                tokio::spawn(async move {
                    let response = pending.await?;
                    let frame = encode(
                        key,
                        version,
                        correlation_id,
                        ResponseKind::Produce(response),
                    );
                    stats::produce_answered(received.elapsed());
                    frame
                })
            }
            request => tokio::spawn(async move {
                let caller = groups::Caller {
                    client_id: header
                        .client_id
                        .as_ref()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default(),
                    host: format!("/{}", peer.ip()),
                };
                let response = handler.handle(request, version, &caller).await?;
                encode(key, version, correlation_id, response)
            }),
        };
        Ok(task)
    }

    /// Handles every request but Produce.
    async fn handle(
        &self,
        request: RequestKind,
        version: i16,
        caller: &groups::Caller,
    ) -> Option<ResponseKind> {
        let agent = &self.agent;
        let coordinator = &self.groups;
        Some(match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
            RequestKind::Metadata(req) => {
                ResponseKind::Metadata(metadata::handle(agent, req, version).await)
            }
            RequestKind::Fetch(req) => ResponseKind::Fetch(fetch::handle(agent, req).await),
            RequestKind::ListOffsets(req) => {
                ResponseKind::ListOffsets(list_offsets::handle(agent, req, version).await)
            }
            RequestKind::CreateTopics(req) => {
                ResponseKind::CreateTopics(admin::create_topics(agent, req).await)
            }
            RequestKind::FindCoordinator(req) => {
                ResponseKind::FindCoordinator(groups::find_coordinator(agent, req, version))
            }
            RequestKind::JoinGroup(req) => {
                ResponseKind::JoinGroup(groups::join_group(coordinator, req, version, caller).await)
            }
            RequestKind::SyncGroup(req) => {
                ResponseKind::SyncGroup(groups::sync_group(coordinator, req, version).await)
            }
            RequestKind::Heartbeat(req) => {
                ResponseKind::Heartbeat(groups::heartbeat(coordinator, req))
            }
            RequestKind::LeaveGroup(req) => {
                ResponseKind::LeaveGroup(groups::leave_group(coordinator, req, version))
            }
            RequestKind::OffsetCommit(req) => {
                ResponseKind::OffsetCommit(groups::offset_commit(coordinator, req).await)
            }
            RequestKind::OffsetFetch(req) => {
                ResponseKind::OffsetFetch(groups::offset_fetch(coordinator, req, version).await)
            }
            RequestKind::DescribeGroups(req) => {
                ResponseKind::DescribeGroups(groups::describe_groups(coordinator, req).await)
            }
            RequestKind::ListGroups(req) => {
                ResponseKind::ListGroups(groups::list_groups(coordinator, req).await)
            }
            RequestKind::DeleteGroups(req) => {
                ResponseKind::DeleteGroups(groups::delete_groups(coordinator, req).await)
            }
            RequestKind::DescribeConfigs(req) => {
                ResponseKind::DescribeConfigs(configs::describe_configs(agent, req, version).await)
            }
            RequestKind::AlterConfigs(req) => {
                ResponseKind::AlterConfigs(configs::alter_configs(agent, req).await)
            }
            RequestKind::IncrementalAlterConfigs(req) => ResponseKind::IncrementalAlterConfigs(
                configs::incremental_alter_configs(agent, req).await,
            ),
            RequestKind::CreatePartitions(req) => {
                ResponseKind::CreatePartitions(admin::create_partitions(agent, req).await)
            }
            RequestKind::DeleteRecords(req) => {
                ResponseKind::DeleteRecords(admin::delete_records(agent, req).await)
            }
            RequestKind::OffsetForLeaderEpoch(req) => ResponseKind::OffsetForLeaderEpoch(
                offset_for_leader_epoch::handle(agent, req).await,
            ),
            RequestKind::DescribeCluster(_) => {
                ResponseKind::DescribeCluster(admin::describe_cluster(agent).await)
            }
            RequestKind::InitProducerId(req) => {
                ResponseKind::InitProducerId(init_producer_id::handle(agent, req, version).await)
            }
            RequestKind::DeleteTopics(req) => {
                ResponseKind::DeleteTopics(admin::delete_topics(agent, req, version).await)
            }
            other => {
                // Unreachable: dispatch only decodes the APIs listed in SUPPORTED.
                warn!(request = ?std::mem::discriminant(&other), "no handler; closing the connection");
                return None;
            }
        })
    }
}

/// Encodes a response frame: length prefix, response header, body.
fn encode(key: ApiKey, version: i16, correlation_id: i32, response: ResponseKind) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let result = header
        .encode(&mut buf, key.response_header_version(version))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            response
                .encode(&mut buf, version)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        warn!(api = ?key, version, error = %e, "could not encode a response; closing the connection");
        return None;
    }
    let len = i32::try_from(buf.len() - 4).ok()?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Some(buf.freeze())
}

/// A Kafka string from a Rust one.
pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
