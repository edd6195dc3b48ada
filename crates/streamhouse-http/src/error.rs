//! The API's error type and the one place where failures become HTTP statuses and the JSON
//! error body `{"error": {"code", "message"}}`; extractors whose rejections take that shape
//! too, so that no malformed request ever gets a plain-text answer.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use streamhouse_agent::{error_chain, AgentError};
use streamhouse_client::ClientError;
use streamhouse_metadata::MetadataError;
use tracing::warn;
use utoipa::ToSchema;

/// Why a request failed. Each variant has one status and one stable `code` string.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input (JSON, path, query, field values).
    #[error("{0}")]
    BadRequest(String),
    /// A topic name, partition count or config that Kafka's rules refuse.
    #[error("{0}")]
    InvalidTopic(String),
    #[error("unknown topic {topic:?}")]
    UnknownTopic { topic: String },
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("unknown consumer group {group:?}")]
    UnknownGroup { group: String },
    #[error("no such route: {0}")]
    NoRoute(String),
    #[error("topic {topic:?} already exists")]
    TopicExists { topic: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RecordTooLarge(String),
    #[error("{0}")]
    OffsetOutOfRange(String),
    #[error("{0}")]
    UnsupportedCompression(String),
    /// A store or the cluster cannot serve the request now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    /// Anything else: a bug or an unexpected answer. Logged where it is turned into a
    /// response.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the stable error code of this failure.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidTopic(_) => (StatusCode::BAD_REQUEST, "invalid_topic"),
            ApiError::UnknownTopic { .. } => (StatusCode::NOT_FOUND, "unknown_topic"),
            ApiError::UnknownPartition { .. } => (StatusCode::NOT_FOUND, "unknown_partition"),
            ApiError::UnknownGroup { .. } => (StatusCode::NOT_FOUND, "unknown_group"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TopicExists { .. } => (StatusCode::CONFLICT, "topic_exists"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RecordTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "record_too_large"),
            ApiError::OffsetOutOfRange(_) => (StatusCode::BAD_REQUEST, "offset_out_of_range"),
            ApiError::UnsupportedCompression(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_compression")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.status_and_code().1.to_string(),
                message: self.to_string(),
            },
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// e.g. `unknown_topic`, `bad_request`, `topic_exists`, `payload_too_large`.
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status.is_server_error() {
            warn!(status = status.as_u16(), error = %self, "HTTP request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let message = error_chain(&e);
        match e {
            AgentError::UnknownTopic { topic } => ApiError::UnknownTopic { topic },
            AgentError::UnknownTopicOrPartition { tp } => ApiError::UnknownPartition {
                topic: tp.topic,
                partition: tp.partition.0,
            },
            AgentError::InvalidTopic { .. }
            | AgentError::InvalidPartitions { .. }
            | AgentError::InvalidConfig { .. } => ApiError::InvalidTopic(message),
            AgentError::TopicAlreadyExists { topic } => ApiError::TopicExists { topic },
            AgentError::MessageTooLarge { .. } => ApiError::RecordTooLarge(message),
            AgentError::OffsetOutOfRange { .. } => ApiError::OffsetOutOfRange(message),
            AgentError::Corrupt { .. } | AgentError::InvalidRecord { .. } => {
                ApiError::BadRequest(message)
            }
            e if e.is_retriable() => ApiError::Unavailable(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl From<MetadataError> for ApiError {
    fn from(e: MetadataError) -> Self {
        ApiError::Unavailable(format!("metadata store: {}", error_chain(&e)))
    }
}

/// Kafka error codes the API reports as something more precise than "unavailable".
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const RECORD_LIST_TOO_LARGE: i16 = 18;
const INVALID_RECORD: i16 = 87;
const CORRUPT_MESSAGE: i16 = 2;
const INVALID_TIMESTAMP: i16 = 32;
const GROUP_ID_NOT_FOUND: i16 = 69;

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let message = error_chain(&e);
        match &e {
            ClientError::Kafka { code, .. } => match *code {
                MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE => ApiError::RecordTooLarge(message),
                INVALID_RECORD | CORRUPT_MESSAGE | INVALID_TIMESTAMP => {
                    ApiError::BadRequest(message)
                }
                UNKNOWN_TOPIC_OR_PARTITION => ApiError::Unavailable(message),
                GROUP_ID_NOT_FOUND => ApiError::NoRoute(message),
                _ if e.is_retriable() => ApiError::Unavailable(message),
                _ => ApiError::Internal(message),
            },
            ClientError::InvalidInput { .. } => ApiError::BadRequest(message),
            ClientError::UnsupportedCompression { .. } => ApiError::UnsupportedCompression(message),
            ClientError::Timeout { .. } => ApiError::Timeout(message),
            _ if e.is_retriable() => ApiError::Unavailable(message),
            _ => ApiError::Internal(message),
        }
    }
}

/// A rejection of axum's extractors as an [`ApiError`] (keeping its status: 400, 413, 415,
/// 422), so that every error is JSON.
fn rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
        _ => ApiError::BadRequest(text),
    }
}

/// `axum::Json`, with rejections as [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    rejection(e.status(), e.body_text())
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path`, with rejections as [`ApiError`]s.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(e) => Err(path_rejection(e)),
        }
    }
}

fn path_rejection(e: PathRejection) -> ApiError {
    // A path that matched a route but has a bad parameter is the client's mistake (400),
    // whatever axum's own status for it would be.
    ApiError::BadRequest(e.body_text())
}

/// `axum::extract::Query`, with rejections as [`ApiError`]s.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> ApiError {
    rejection(e.status(), e.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_metadata::TopicPartition;

    #[test]
    fn agent_errors_map_to_client_and_server_statuses() {
        let status = |e: AgentError| ApiError::from(e).status_and_code();
        assert_eq!(
            status(AgentError::UnknownTopic { topic: "t".into() }),
            (StatusCode::NOT_FOUND, "unknown_topic")
        );
        assert_eq!(
            status(AgentError::TopicAlreadyExists { topic: "t".into() }),
            (StatusCode::CONFLICT, "topic_exists")
        );
        assert_eq!(
            status(AgentError::InvalidPartitions { partitions: 0 }),
            (StatusCode::BAD_REQUEST, "invalid_topic")
        );
        assert_eq!(
            status(AgentError::NotLeader {
                tp: TopicPartition::new("t", 0)
            }),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }

    #[test]
    fn client_errors_keep_their_meaning() {
        let status = |e: ClientError| ApiError::from(e).status_and_code().0;
        assert_eq!(
            status(ClientError::kafka(MESSAGE_TOO_LARGE, None)),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(ClientError::kafka(56, None)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ClientError::Timeout {
                operation: "produce".into()
            }),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn the_body_carries_code_and_message() {
        let body = ApiError::UnknownTopic {
            topic: "orders".into(),
        }
        .body();
        assert_eq!(body.error.code, "unknown_topic");
        assert_eq!(body.error.message, "unknown topic \"orders\"");
    }
}
