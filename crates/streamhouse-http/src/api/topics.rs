//! Topics (list, create, describe, delete) and the message browser of one partition.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streamhouse_agent::OffsetSpec;
use streamhouse_client::records::decode_fetched;
use streamhouse_metadata::{
    AgentId, AgentInfo, Offset, PartitionState, Topic, TopicConfig, TopicPartition,
};
use streamhouse_storage::batch;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::state::Shared;

/// A topic in the list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: i32,
    /// The agent group whose agents lead its partitions.
    pub agent_group: String,
    /// Readable records: the sum over partitions of high watermark minus log start.
    pub records: i64,
    /// Stored bytes of the readable record batches.
    pub bytes: u64,
}

/// An agent as a partition's leader.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentRef {
    pub agent_id: String,
    /// The broker id Kafka clients see.
    pub node_id: i32,
    pub address: String,
}

/// One partition of a topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionView {
    pub partition: i32,
    /// The agent holding the partition's lease, if any.
    pub leader: Option<AgentRef>,
    /// The lease epoch (Kafka's leader epoch), when led.
    pub leader_epoch: Option<i64>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: i64,
    pub bytes: u64,
}

/// A topic with its partitions and effective configs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicDetail {
    pub name: String,
    pub agent_group: String,
    pub records: i64,
    pub bytes: u64,
    /// Every supported config with its effective value.
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionView>,
}

/// A topic to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopicRequest {
    /// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
    #[schema(pattern = r"^(?!\.{1,2}$)[a-zA-Z0-9._-]{1,249}$")]
    pub name: String,
    /// Partition count (1 to 10,000); the server's `--default-partitions` when absent.
    #[serde(default, deserialize_with = "crate::api::integral::opt_i32")]
    #[schema(minimum = 1, maximum = 10000)]
    pub partitions: Option<i32>,
    /// Topic configs, e.g. `{"retention.ms": "86400000"}`.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// First offset to return (default: the log start).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Start at the first record with this timestamp or later (ms since the Unix epoch);
    /// with `offset` too, at whichever of the two comes later.
    pub timestamp: Option<i64>,
    /// Most messages to return, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// How a key, value or header value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShownAs {
    Utf8,
    Base64,
}

/// A header of a stored record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct HeaderOut {
    pub key: String,
    pub value: Option<String>,
    pub encoding: ShownAs,
}

/// A stored record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Message {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<String>,
    pub key_encoding: ShownAs,
    pub value: Option<String>,
    pub value_encoding: ShownAs,
    pub headers: Vec<HeaderOut>,
}

/// A page of a partition's records.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    pub topic: String,
    pub partition: i32,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Where the next page starts.
    pub next_offset: i64,
    pub messages: Vec<Message>,
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;
/// Bytes asked of one read while filling a page.
const READ_BYTES: usize = 1 << 20;

/// List topics.
#[utoipa::path(
    get, path = "/api/v1/topics", tag = "topics",
    responses(
        (status = 200, description = "Every topic, by name", body = Vec<TopicSummary>),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_topics(
    State(state): State<Shared>,
) -> Result<Json<Vec<TopicSummary>>, ApiError> {
    let metadata = state.agent.metadata();
    let topics = metadata.list_topics().await?;
    let partitions = metadata.list_all_partitions().await?;
    let sizes = sizes(&state).await?;
    // One pass over the partitions, not one per topic.
    let mut totals: HashMap<&str, (i64, u64)> = HashMap::new();
    for p in &partitions {
        let t = totals.entry(p.tp.topic.as_str()).or_default();
        t.0 += records_of(p);
        t.1 += sizes.get(&p.tp).copied().unwrap_or(0);
    }
    let mut out: Vec<TopicSummary> = topics
        .iter()
        .map(|t| {
            let (records, bytes) = totals.get(t.name.as_str()).copied().unwrap_or_default();
            TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions,
                agent_group: agent_group(t),
                records,
                bytes,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

/// Create a topic.
#[utoipa::path(
    post, path = "/api/v1/topics", tag = "topics",
    request_body = CreateTopicRequest,
    responses(
        (status = 201, description = "Created", body = TopicDetail),
        (status = 400, description = "Invalid name, partition count or config", body = ErrorBody),
        (status = 409, description = "The topic exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn create_topic(
    State(state): State<Shared>,
    Json(request): Json<CreateTopicRequest>,
) -> Result<(StatusCode, Json<TopicDetail>), ApiError> {
    let partitions = request
        .partitions
        .unwrap_or(state.agent.config().default_partitions);
    let topic = state
        .agent
        .create_topic(&request.name, partitions, &request.configs)
        .await?;
    Ok((StatusCode::CREATED, Json(detail(&state, &topic).await?)))
}

/// Describe a topic.
#[utoipa::path(
    get, path = "/api/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicDetail),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_topic(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<TopicDetail>, ApiError> {
    let topic = find_topic(&state, &name).await?;
    Ok(Json(detail(&state, &topic).await?))
}

/// Delete a topic.
#[utoipa::path(
    delete, path = "/api/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete_topic(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.agent.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read a partition's records from an offset or a time.
#[utoipa::path(
    get, path = "/api/v1/topics/{topic}/partitions/{partition}/messages", tag = "topics",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = i32, Path, description = "Partition"),
        MessagesQuery,
    ),
    responses(
        (status = 200, description = "Records in offset order", body = MessagePage),
        (status = 400, description = "Bad query, or an offset outside the log", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 422, description = "The records are in a compressed batch", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn messages(
    State(state): State<Shared>,
    Path((name, partition)): Path<(String, i32)>,
    Query(query): Query<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let topic = find_topic(&state, &name).await?;
    if partition < 0 || partition >= topic.partitions {
        return Err(ApiError::UnknownPartition {
            topic: topic.name,
            partition,
        });
    }
    let tp = TopicPartition::new(topic.name.clone(), partition);
    let agent = &state.agent;
    let (high_watermark, log_start_offset) = agent.partition_offsets(&tp).await?;
    let by_time = match query.timestamp {
        None => None,
        Some(timestamp) => match agent
            .list_offset(&tp, OffsetSpec::Timestamp(timestamp))
            .await?
        {
            (Offset(-1), _) => Some(high_watermark.0),
            (offset, _) => Some(offset.0),
        },
    };
    // Both given: from the offset, but nothing older than the time.
    let start = match (query.offset, by_time) {
        (Some(offset), Some(by_time)) => offset.max(by_time),
        (Some(offset), None) => offset,
        (None, Some(by_time)) => by_time,
        (None, None) => log_start_offset.0,
    };
    if start < log_start_offset.0 || start > high_watermark.0 {
        return Err(ApiError::OffsetOutOfRange(format!(
            "offset {start} of {tp} is outside [{log_start_offset}, {high_watermark}]"
        )));
    }

    let mut messages = Vec::new();
    let mut position = start;
    'read: while messages.len() < limit && position < high_watermark.0 {
        let read = agent.read(&tp, Offset(position), READ_BYTES, true).await?;
        if read.records.is_empty() {
            break;
        }
        agent.count_fetched(&tp, &read);
        for chunk in &read.records {
            for span in batch::walk(chunk) {
                let header = span.header;
                if header.last_offset() < position {
                    continue;
                }
                if header.compression() != 0 {
                    if messages.is_empty() {
                        return Err(ApiError::UnsupportedCompression(format!(
                            "offsets {}..={} of {tp} are in a compressed batch, which the browser cannot show yet",
                            header.base_offset,
                            header.last_offset()
                        )));
                    }
                    break 'read;
                }
                let data = chunk.slice(span.range.clone());
                for record in decode_fetched(&tp.topic, partition, data)? {
                    if record.offset >= position && messages.len() < limit {
                        position = record.offset + 1;
                        messages.push(shown(record));
                    }
                }
                if messages.len() >= limit {
                    break 'read;
                }
                // Past the whole batch, also over offsets it no longer holds.
                position = position.max(header.last_offset() + 1);
            }
        }
    }
    Ok(Json(MessagePage {
        topic: tp.topic,
        partition,
        high_watermark: high_watermark.0,
        log_start_offset: log_start_offset.0,
        next_offset: position,
        messages,
    }))
}

pub(crate) async fn find_topic(state: &Shared, name: &str) -> Result<Topic, ApiError> {
    state
        .agent
        .metadata()
        .get_topic(name)
        .await?
        .ok_or_else(|| ApiError::UnknownTopic {
            topic: name.to_string(),
        })
}

async fn detail(state: &Shared, topic: &Topic) -> Result<TopicDetail, ApiError> {
    let metadata = state.agent.metadata();
    let partitions = metadata.list_partitions(&topic.name).await?;
    let agents: HashMap<AgentId, AgentInfo> = metadata
        .list_agents()
        .await?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let sizes = sizes(state).await?;
    let partitions: Vec<PartitionView> = partitions
        .iter()
        .map(|p| PartitionView {
            partition: p.tp.partition.0,
            leader: p.lease.as_ref().map(|l| match agents.get(&l.holder) {
                Some(a) => agent_ref(a),
                None => AgentRef {
                    agent_id: l.holder.0.clone(),
                    node_id: -1,
                    address: String::new(),
                },
            }),
            leader_epoch: p.lease.as_ref().map(|l| l.epoch.0),
            high_watermark: p.high_watermark.0,
            log_start_offset: p.log_start_offset.0,
            records: records_of(p),
            bytes: sizes.get(&p.tp).copied().unwrap_or(0),
        })
        .collect();
    let configs = TopicConfig::parse(&topic.configs)
        .map(|c| {
            c.entries()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .unwrap_or_else(|_| topic.configs.clone());
    Ok(TopicDetail {
        name: topic.name.clone(),
        agent_group: agent_group(topic),
        records: partitions.iter().map(|p| p.records).sum(),
        bytes: partitions.iter().map(|p| p.bytes).sum(),
        configs,
        partitions,
    })
}

pub(crate) fn agent_ref(a: &AgentInfo) -> AgentRef {
    AgentRef {
        agent_id: a.id.0.clone(),
        node_id: a.node_id,
        address: a.advertised_addr.clone(),
    }
}

pub(crate) fn agent_group(topic: &Topic) -> String {
    TopicConfig::parse(&topic.configs)
        .map(|c| c.agent_group)
        .unwrap_or_else(|_| streamhouse_metadata::DEFAULT_AGENT_GROUP.to_string())
}

pub(crate) fn records_of(p: &PartitionState) -> i64 {
    (p.high_watermark.0 - p.log_start_offset.0).max(0)
}

pub(crate) async fn sizes(state: &Shared) -> Result<HashMap<TopicPartition, u64>, ApiError> {
    Ok(state
        .agent
        .metadata()
        .partition_sizes()
        .await?
        .into_iter()
        .collect())
}

/// Bytes as UTF-8 text when they are, else as base64.
fn show(bytes: Option<Bytes>) -> (Option<String>, ShownAs) {
    match bytes {
        None => (None, ShownAs::Utf8),
        Some(b) => match std::str::from_utf8(&b) {
            Ok(text) => (Some(text.to_string()), ShownAs::Utf8),
            Err(_) => (
                Some(base64::engine::general_purpose::STANDARD.encode(&b)),
                ShownAs::Base64,
            ),
        },
    }
}

fn shown(record: streamhouse_client::ConsumedRecord) -> Message {
    let (key, key_encoding) = show(record.key);
    let (value, value_encoding) = show(record.value);
    Message {
        offset: record.offset,
        timestamp: record.timestamp,
        key,
        key_encoding,
        value,
        value_encoding,
        headers: record
            .headers
            .into_iter()
            .map(|(key, value)| {
                let (value, encoding) = show(value);
                HeaderOut {
                    key,
                    value,
                    encoding,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_show_as_text_when_they_are() {
        assert_eq!(
            show(Some(Bytes::from("héllo"))),
            (Some("héllo".to_string()), ShownAs::Utf8)
        );
        assert_eq!(
            show(Some(Bytes::from_static(&[0xff, 0]))),
            (Some("/wA=".to_string()), ShownAs::Base64)
        );
        assert_eq!(show(None), (None, ShownAs::Utf8));
    }
}
