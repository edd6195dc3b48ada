//! The client's error type: one variant per failure kind, plus Kafka error-code naming.

use std::sync::Arc;

use kafka_protocol::ResponseError;

/// A boxed, shareable error used as the `#[source]` of codec failures.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Wraps any error (including the codec's `anyhow::Error`) as a [`BoxError`].
pub(crate) fn boxed(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> BoxError {
    Arc::from(e.into())
}

/// Everything that can go wrong talking to a broker.
///
/// `Clone` so that one failure (say a whole produce batch being rejected) can be
/// handed to every record's [`DeliveryHandle`](crate::DeliveryHandle).
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection to `addr` could not be opened.
    #[error("cannot connect to broker at {addr}")]
    Connect {
        /// The address we dialled.
        addr: String,
        /// Why the connect failed.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// Reading from or writing to an open socket failed.
    #[error("i/o error on broker connection")]
    Io(#[source] Arc<std::io::Error>),

    /// The connection closed (or was closed) before the response arrived.
    #[error("connection to broker closed")]
    Disconnected,

    /// Client and broker share no version of this API.
    #[error("broker supports no version of api key {api_key} that the client speaks ({client_min}..={client_max})")]
    UnsupportedVersion {
        /// Kafka API key.
        api_key: i16,
        /// Lowest version this client can speak.
        client_min: i16,
        /// Highest version this client can speak.
        client_max: i16,
    },

    /// A request could not be encoded (a client bug or an invalid field value).
    #[error("cannot encode {what}")]
    Encode {
        /// What we tried to encode.
        what: &'static str,
        /// The codec's complaint.
        #[source]
        source: BoxError,
    },

    /// The broker sent bytes we could not make sense of.
    #[error("malformed {what} from broker: {detail}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },

    /// A fetched record batch is compressed; this client only handles uncompressed batches.
    #[error("record batch uses {codec} compression, which this client does not support")]
    UnsupportedCompression {
        /// Name of the codec (gzip, snappy, lz4, zstd or an unknown id).
        codec: String,
    },

    /// The broker answered with a Kafka error code.
    #[error("broker error {code}: {message}")]
    Kafka {
        /// The Kafka error code (see the protocol guide).
        code: i16,
        /// The error's Kafka name (e.g. `TOPIC_ALREADY_EXISTS`), plus any message from the broker.
        message: String,
    },

    /// An operation did not complete in time (request timeout or producer delivery timeout).
    #[error("timed out: {operation}")]
    Timeout {
        /// What timed out.
        operation: String,
    },

    /// Something named by the caller does not exist (topic, partition, broker).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up.
        what: String,
    },

    /// The caller passed an invalid argument.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What was wrong.
        message: String,
    },

    /// The producer or consumer was shut down.
    #[error("client is closed")]
    Closed,
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl ClientError {
    /// Builds a [`ClientError::Kafka`] from an error code and the broker's optional message.
    pub fn kafka(code: i16, detail: Option<&str>) -> ClientError {
        let name = kafka_error_name(code);
        let message = match detail {
            Some(d) if !d.is_empty() => format!("{name}: {d}"),
            _ => name,
        };
        ClientError::Kafka { code, message }
    }

    /// Builds a [`ClientError::Corrupt`].
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> ClientError {
        ClientError::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    /// The Kafka error code, if this is a broker-reported error.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => is_retriable_code(*code),
            ClientError::Io(_)
            | ClientError::Disconnected
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// Kafka error codes this client retries (on produce and metadata-driven routing).
///
/// Unlike `ResponseError::is_retriable`, CORRUPT_MESSAGE is *not* retried: resending the
/// same bytes cannot help.
pub fn is_retriable_code(code: i16) -> bool {
    matches!(
        code,
        3  // UNKNOWN_TOPIC_OR_PARTITION
        | 5  // LEADER_NOT_AVAILABLE
        | 6  // NOT_LEADER_OR_FOLLOWER
        | 7  // REQUEST_TIMED_OUT
        | 13 // NETWORK_EXCEPTION
        | 19 // NOT_ENOUGH_REPLICAS
        | 20 // NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | 56 // KAFKA_STORAGE_ERROR
        | 74 // FENCED_LEADER_EPOCH
        | 75 // UNKNOWN_LEADER_EPOCH
    )
}

/// Whether the code means our picture of partition leadership is stale.
pub(crate) fn is_metadata_error(code: i16) -> bool {
    matches!(code, 3 | 5 | 6 | 74 | 75)
}

/// The Kafka name of an error code in SCREAMING_SNAKE_CASE, e.g. 36 → `TOPIC_ALREADY_EXISTS`.
pub fn kafka_error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_owned(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => camel_to_screaming_snake(&e.to_string()),
    }
}

fn camel_to_screaming_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kafka_style() {
        assert_eq!(kafka_error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(kafka_error_name(0), "NONE");
        assert_eq!(kafka_error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn kafka_error_carries_name_and_detail() {
        let e = ClientError::kafka(36, Some("topic 'x' exists"));
        assert_eq!(e.kafka_code(), Some(36));
        assert!(e
            .to_string()
            .contains("TOPIC_ALREADY_EXISTS: topic 'x' exists"));
        assert!(!e.is_retriable());
        assert!(ClientError::kafka(6, None).is_retriable());
        assert!(!ClientError::kafka(2, None).is_retriable());
    }
}
