//! REST produce: JSON records into the same Kafka produce path as every other producer,
//! answered with the real partition and offset once the record is durable.

use std::collections::HashMap;

use axum::extract::State;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streamhouse_client::ProducerRecord;
use streamhouse_metadata::Topic;
use utoipa::ToSchema;

use crate::api::topics::agent_group;
use crate::error::{ApiError, ErrorBody, ErrorDetail, Json};
use crate::state::Shared;

/// Most records one batch request may carry.
pub(crate) const MAX_BATCH_RECORDS: usize = 10_000;

/// How keys, values and header values of a produce request are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The string's UTF-8 bytes (the default).
    #[default]
    Utf8,
    /// Standard base64 (with padding) of the bytes.
    Base64,
}

impl Encoding {
    fn decode(self, field: &str, text: &str) -> Result<Bytes, ApiError> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Bytes::from)
                .map_err(|e| ApiError::BadRequest(format!("{field} is not valid base64: {e}"))),
        }
    }
}

/// A record header.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderIn {
    pub key: String,
    /// `null` for a header without value.
    pub value: Option<String>,
}

/// One record to produce.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub topic: String,
    /// Picks the partition (Kafka's murmur2 partitioner) unless `partition` is given.
    #[serde(default)]
    pub key: Option<String>,
    /// Required; `null` produces a tombstone.
    #[serde(deserialize_with = "required_nullable")]
    #[schema(required = true)]
    pub value: Option<String>,
    /// An explicit partition.
    #[serde(default, deserialize_with = "crate::api::integral::opt_i32")]
    #[schema(minimum = 0)]
    pub partition: Option<i32>,
    #[serde(default)]
    pub headers: Vec<HeaderIn>,
    /// How `key`, `value` and header values are written.
    #[serde(default)]
    pub encoding: Encoding,
    /// Creation time (ms since the Unix epoch); now when absent. Topics with
    /// `message.timestamp.type=LogAppendTime` use the append time instead.
    #[serde(default, deserialize_with = "crate::api::integral::opt_i64")]
    #[schema(minimum = 0)]
    pub timestamp: Option<i64>,
}

/// A field that must be present but may be `null` (serde lets a plain `Option` be absent).
fn required_nullable<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(deserializer)
}

/// Where a record was stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ProduceResult {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (its creation time, or the append time for LogAppendTime
    /// topics).
    pub timestamp: i64,
}

/// Many records, each to its own topic and partition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceBatchRequest {
    /// At most 10,000 records.
    #[schema(max_items = 10000)]
    pub records: Vec<ProduceRequest>,
}

/// The outcome of one record of a batch: either where it was stored, or why not.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ProduceBatchItem {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub timestamp: Option<i64>,
    pub error: Option<ErrorDetail>,
}

/// The outcomes of a batch, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceBatchResponse {
    pub results: Vec<ProduceBatchItem>,
}

/// Produce one record.
#[utoipa::path(
    post, path = "/api/v1/produce", tag = "produce",
    request_body = ProduceRequest,
    responses(
        (status = 200, description = "The record is durable at this offset", body = ProduceResult),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 413, description = "Body or record too large", body = ErrorBody),
        (status = 503, description = "A store is unavailable; retry", body = ErrorBody),
        (status = 504, description = "Not durable within the delivery timeout", body = ErrorBody),
    )
)]
pub(crate) async fn produce(
    State(state): State<Shared>,
    Json(request): Json<ProduceRequest>,
) -> Result<Json<ProduceResult>, ApiError> {
    let record = decode(request)?;
    let topic = state.agent.metadata().get_topic(&record.topic).await?;
    check_topic(&state, topic.as_ref(), &record)?;
    let producer = state.producer().await?;
    let metadata = producer.send(record).await?.wait_offset().await?;
    Ok(Json(ProduceResult {
        topic: metadata.topic,
        partition: metadata.partition,
        offset: metadata.offset,
        timestamp: metadata.timestamp,
    }))
}

/// Produce many records; each gets its own outcome.
#[utoipa::path(
    post, path = "/api/v1/produce/batch", tag = "produce",
    request_body = ProduceBatchRequest,
    responses(
        (status = 200, description = "One outcome per record, in order", body = ProduceBatchResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "The cluster cannot be reached", body = ErrorBody),
    )
)]
pub(crate) async fn produce_batch(
    State(state): State<Shared>,
    Json(request): Json<ProduceBatchRequest>,
) -> Result<Json<ProduceBatchResponse>, ApiError> {
    if request.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::BadRequest(format!(
            "a batch holds at most {MAX_BATCH_RECORDS} records, got {}",
            request.records.len()
        )));
    }
    // A malformed record makes the whole request malformed (400); what depends on the
    // cluster (unknown topics, sizes, store outages) is each record's own outcome.
    let records = request
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| decode(r).map_err(|e| ApiError::BadRequest(format!("records[{i}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let producer = state.producer().await?;
    // Send everything first, so that the records share batches; then wait for each.
    let mut pending = Vec::with_capacity(records.len());
    // Each topic is looked up once per request, not once per record.
    let mut topics: HashMap<String, Option<Topic>> = HashMap::new();
    for record in records {
        let name = record.topic.clone();
        let topic = match topics.get(&name) {
            Some(topic) => Ok(topic.as_ref()),
            None => match state.agent.metadata().get_topic(&name).await {
                Ok(found) => Ok(topics.entry(name.clone()).or_insert(found).as_ref()),
                Err(e) => Err(ApiError::from(e)),
            },
        };
        let handle = match topic.and_then(|t| check_topic(&state, t, &record)) {
            Ok(()) => producer.send(record).await.map_err(ApiError::from),
            Err(e) => Err(e),
        };
        pending.push((name, handle));
    }
    let mut results = Vec::with_capacity(pending.len());
    for (topic, handle) in pending {
        let outcome = match handle {
            Ok(handle) => handle.wait_offset().await.map_err(ApiError::from),
            Err(e) => Err(e),
        };
        results.push(match outcome {
            Ok(m) => ProduceBatchItem {
                topic,
                partition: Some(m.partition),
                offset: Some(m.offset),
                timestamp: Some(m.timestamp),
                error: None,
            },
            Err(e) => ProduceBatchItem {
                topic,
                partition: None,
                offset: None,
                timestamp: None,
                error: Some(e.body().error),
            },
        });
    }
    Ok(Json(ProduceBatchResponse { results }))
}

/// Turns a request into a producer record, refusing what is malformed in itself.
fn decode(request: ProduceRequest) -> Result<ProducerRecord, ApiError> {
    if let Some(partition) = request.partition {
        if partition < 0 {
            return Err(ApiError::BadRequest(format!(
                "partition must not be negative, got {partition}"
            )));
        }
    }
    if let Some(timestamp) = request.timestamp {
        if timestamp < 0 {
            return Err(ApiError::BadRequest(format!(
                "timestamp must not be negative, got {timestamp}"
            )));
        }
    }
    let encoding = request.encoding;
    let key = request
        .key
        .map(|k| encoding.decode("key", &k))
        .transpose()?;
    let value = request
        .value
        .map(|v| encoding.decode("value", &v))
        .transpose()?;
    let headers = request
        .headers
        .into_iter()
        .map(|h| {
            let value = h
                .value
                .map(|v| encoding.decode("header value", &v))
                .transpose()?;
            Ok((h.key, value))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(ProducerRecord {
        topic: request.topic,
        partition: request.partition,
        key,
        value,
        headers,
        timestamp: request.timestamp,
    })
}

/// Checks a record against its topic (`None`: no such topic): unknown topics and
/// partitions are refused here, at once, rather than left to the producer's metadata wait.
fn check_topic(
    state: &Shared,
    topic: Option<&Topic>,
    record: &ProducerRecord,
) -> Result<(), ApiError> {
    let topic = topic.ok_or_else(|| ApiError::UnknownTopic {
        topic: record.topic.clone(),
    })?;
    let group = agent_group(topic);
    if group != state.agent.config().group {
        return Err(ApiError::BadRequest(format!(
            "topic {:?} belongs to agent group {group:?}; produce through one of its agents (this one is in {:?})",
            topic.name,
            state.agent.config().group
        )));
    }
    match record.partition {
        Some(partition) if partition >= topic.partitions => Err(ApiError::UnknownPartition {
            topic: topic.name.clone(),
            partition,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_decode_or_refuse() {
        assert_eq!(
            Encoding::Utf8.decode("value", "héllo").unwrap(),
            Bytes::from("héllo")
        );
        assert_eq!(
            Encoding::Base64.decode("value", "AP8=").unwrap(),
            Bytes::from_static(&[0, 255])
        );
        let e = Encoding::Base64.decode("key", "not base64!").unwrap_err();
        assert_eq!(e.status_and_code().1, "bad_request");
        assert!(e.to_string().starts_with("key is not valid base64"));
    }

    #[test]
    fn requests_parse_with_defaults_and_refuse_unknown_fields() {
        let r: ProduceRequest = serde_json::from_str(r#"{"topic":"t","value":"v"}"#).unwrap();
        assert_eq!(r.encoding, Encoding::Utf8);
        assert!(r.key.is_none() && r.partition.is_none() && r.headers.is_empty());
        let tombstone: ProduceRequest =
            serde_json::from_str(r#"{"topic":"t","value":null}"#).unwrap();
        assert!(tombstone.value.is_none());
        assert!(
            serde_json::from_str::<ProduceRequest>(r#"{"topic":"t","value":"v","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<ProduceRequest>(r#"{"topic":"t"}"#).is_err());
    }
}
