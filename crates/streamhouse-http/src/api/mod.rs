//! The REST API under `/api/v1`, one module per resource, and its OpenAPI document.

pub mod cluster;
pub mod produce;
pub mod topics;

use axum::routing::{get, post};
use axum::Router;
use utoipa::OpenApi;

use crate::state::Shared;

/// JSON Schema counts `3.0` as an integer; serde's integer types refuse it. These accept any
/// JSON number with an integral value that fits, so that the API takes every body its
/// schema allows.
pub(crate) mod integral {
    use serde::{Deserialize, Deserializer};

    fn integral<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
            return Ok(None);
        };
        if let Some(i) = number.as_i64() {
            return Ok(Some(i));
        }
        match number.as_f64() {
            // Exactly representable and in range: the cast cannot truncate.
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            _ => Err(serde::de::Error::custom(format!(
                "{number} is not an integer in range"
            ))),
        }
    }

    /// An optional `i64` field.
    pub(crate) fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        integral(d)
    }

    /// An optional `i32` field.
    pub(crate) fn opt_i32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        integral(d)?
            .map(|i| {
                i32::try_from(i)
                    .map_err(|_| serde::de::Error::custom(format!("{i} is out of range")))
            })
            .transpose()
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "super::opt_i32")]
            n: Option<i32>,
        }

        fn parse(json: &str) -> Result<Option<i32>, serde_json::Error> {
            serde_json::from_str::<T>(json).map(|t| t.n)
        }

        #[test]
        fn integral_numbers_of_any_spelling_are_accepted() {
            assert_eq!(parse(r#"{"n": 3}"#).unwrap(), Some(3));
            assert_eq!(parse(r#"{"n": -3.0}"#).unwrap(), Some(-3));
            assert_eq!(parse(r#"{"n": null}"#).unwrap(), None);
            assert_eq!(parse(r#"{}"#).unwrap(), None);
            assert!(parse(r#"{"n": 3.5}"#).is_err());
            assert!(parse(r#"{"n": 3e12}"#).is_err());
            assert!(parse(r#"{"n": "3"}"#).is_err());
        }
    }
}

/// The OpenAPI document of everything the server answers, generated from the handlers and
/// their types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "StreamHouse",
        description = "REST API of a StreamHouse agent: produce, topics, messages, agents, consumer groups and the cluster overview. Errors are `{\"error\": {\"code\", \"message\"}}`.",
    ),
    paths(
        produce::produce,
        produce::produce_batch,
        topics::list_topics,
        topics::create_topic,
        topics::get_topic,
        topics::delete_topic,
        topics::messages,
        cluster::list_agents,
        cluster::list_groups,
        cluster::get_group,
        cluster::overview,
        cluster::throughput,
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::metrics,
    ),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "produce", description = "Write records; answered once they are durable"),
        (name = "topics", description = "Topics and their records"),
        (name = "groups", description = "Consumer groups and their lag"),
        (name = "cluster", description = "Agents, leases and throughput"),
        (name = "operations", description = "Health, readiness and Prometheus metrics"),
    )
)]
pub(crate) struct ApiDoc;

/// The `/api/v1` routes.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/produce", post(produce::produce))
        .route("/api/v1/produce/batch", post(produce::produce_batch))
        .route(
            "/api/v1/topics",
            get(topics::list_topics).post(topics::create_topic),
        )
        .route(
            "/api/v1/topics/{topic}",
            get(topics::get_topic).delete(topics::delete_topic),
        )
        .route(
            "/api/v1/topics/{topic}/partitions/{partition}/messages",
            get(topics::messages),
        )
        .route("/api/v1/agents", get(cluster::list_agents))
        .route("/api/v1/groups", get(cluster::list_groups))
        .route("/api/v1/groups/{group}", get(cluster::get_group))
        .route("/api/v1/cluster", get(cluster::overview))
        .route("/api/v1/cluster/throughput", get(cluster::throughput))
}
