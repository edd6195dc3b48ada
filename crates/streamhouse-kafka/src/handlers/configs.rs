//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics.
//!
//! Only the configs StreamHouse implements exist (`TopicConfig::KNOWN`); anything else is
//! INVALID_CONFIG. Configs that are stored but not yet enforced say so in their
//! documentation field, so what is reported is never mistaken for what is enforced.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use streamhouse_agent::{Agent, AgentError};
use streamhouse_metadata::TopicConfig;

use crate::errors::{error_code, message};
use crate::handlers::str_bytes;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's ConfigSource values.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

/// Kafka's ConfigType of each config we implement, and whether it is enforced.
fn describe_entry(name: &str) -> (i8, Option<&'static str>) {
    match name {
        "message.timestamp.type" => (2, None),
        "max.message.bytes" => (3, None),
        "retention.ms" => (
            5,
            Some("Records whose index entry's newest record is older than this are deleted (the log start offset moves past them) at the next retention check; -1 keeps them."),
        ),
        "retention.bytes" => (
            5,
            Some("The oldest index entries are deleted once the partition holds more than this many bytes; -1 means no limit."),
        ),
        "cleanup.policy" => (
            7,
            Some(
                "delete: retention.ms and retention.bytes trim the log; compact: log compaction keeps the latest record of every key (at its offset) and drops tombstones after delete.retention.ms; compact,delete: both.",
            ),
        ),
        "delete.retention.ms" => (
            5,
            Some("Log compaction keeps a tombstone this long after the first compaction that saw it."),
        ),
        "min.compaction.lag.ms" => (
            5,
            Some("Records committed less than this long ago are not compacted yet."),
        ),
        "max.compaction.lag.ms" => (
            5,
            Some("Records left uncompacted this long are compacted whatever the dirty ratio."),
        ),
        "min.cleanable.dirty.ratio" => (
            6,
            Some("Log compaction runs once the records not compacted yet are at least this share of the compactable bytes."),
        ),
        streamhouse_metadata::AGENT_GROUP_CONFIG => (
            2,
            Some("The agent group whose agents lead this topic's partitions."),
        ),
        _ => (2, None),
    }
}

/// A failure for one resource: its Kafka code and message.
type Refusal = (ResponseError, String);

fn refusal(e: &AgentError) -> Refusal {
    (error_code(e), message(e))
}

async fn topic_configs(
    agent: &Arc<Agent>,
    topic: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    match agent.metadata().get_topic(topic).await {
        Ok(Some(t)) => Ok(t.configs),
        Ok(None) => Err((
            ResponseError::UnknownTopicOrPartition,
            format!("unknown topic {topic:?}"),
        )),
        Err(e) => Err(refusal(&AgentError::Metadata(e))),
    }
}

pub(crate) async fn describe_configs(
    agent: &Arc<Agent>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for resource in req.resources {
        let name = resource.resource_name.as_str().to_string();
        let result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let wanted: Option<Vec<String>> = resource
            .configuration_keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| k.as_str().to_string()).collect());
        let described = match resource.resource_type {
            TOPIC => topic_configs(agent, &name).await.map(|explicit| {
                let effective = TopicConfig::parse(&explicit).unwrap_or_default();
                effective
                    .entries()
                    .into_iter()
                    .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == k)))
                    .map(|(k, v)| {
                        let (config_type, documentation) = describe_entry(k);
                        let source = if explicit.contains_key(k) {
                            DYNAMIC_TOPIC_CONFIG
                        } else {
                            DEFAULT_CONFIG
                        };
                        let entry = DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                            .with_config_source(source);
                        if version >= 3 {
                            entry
                                .with_config_type(config_type)
                                .with_documentation(documentation.map(str_bytes))
                        } else {
                            entry
                        }
                    })
                    .collect()
            }),
            // Broker settings are process flags, not dynamic configs: none are reported.
            BROKER => Ok(Vec::new()),
            other => Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} is not supported"),
            )),
        };
        results.push(match described {
            Ok(configs) => result.with_configs(configs),
            Err((code, msg)) => result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// Validates and (unless `validate_only`) applies a topic's new full config set.
async fn apply(
    agent: &Arc<Agent>,
    resource_type: i8,
    topic: &str,
    new_configs: impl FnOnce(BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Refusal>,
    validate_only: bool,
) -> Result<(), Refusal> {
    if resource_type != TOPIC {
        return Err((
            ResponseError::InvalidRequest,
            "only topic configs can be altered".to_string(),
        ));
    }
    let current = topic_configs(agent, topic).await?;
    let configs = new_configs(current)?;
    TopicConfig::parse(&configs).map_err(|m| (ResponseError::InvalidConfig, m))?;
    if validate_only {
        return Ok(());
    }
    agent
        .set_topic_configs(topic, &configs)
        .await
        .map(|_| ())
        .map_err(|e| refusal(&e))
}

pub(crate) async fn alter_configs(
    agent: &Arc<Agent>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for resource in req.resources {
        let topic = resource.resource_name.as_str().to_string();
        // AlterConfigs replaces the whole set: what is not named goes back to its default.
        let replacement: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
            })
            .collect();
        let outcome = apply(
            agent,
            resource.resource_type,
            &topic,
            |_| Ok(replacement),
            req.validate_only,
        )
        .await;
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, msg)) => response
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg))),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub(crate) async fn incremental_alter_configs(
    agent: &Arc<Agent>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for resource in req.resources {
        let topic = resource.resource_name.as_str().to_string();
        let ops: Vec<(String, i8, Option<String>)> = resource
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect();
        let edit = move |mut configs: BTreeMap<String, String>| {
            for (name, op, value) in ops {
                match (op, value) {
                    (0, Some(v)) => {
                        configs.insert(name, v);
                    }
                    (1, _) => {
                        configs.remove(&name);
                    }
                    // APPEND / SUBTRACT: for list configs (cleanup.policy).
                    (2, Some(v)) | (3, Some(v)) if name == "cleanup.policy" => {
                        let effective = TopicConfig::parse(&configs)
                            .unwrap_or_default()
                            .cleanup_policy;
                        let mut items: Vec<String> =
                            effective.split(',').map(str::to_string).collect();
                        if op == 2 {
                            if !items.contains(&v) {
                                items.push(v);
                            }
                        } else {
                            items.retain(|i| *i != v);
                        }
                        configs.insert(name, items.join(","));
                    }
                    (op, _) => {
                        return Err((
                            ResponseError::InvalidConfig,
                            format!("operation {op} is not valid for {name}"),
                        ))
                    }
                }
            }
            Ok(configs)
        };
        let outcome = apply(
            agent,
            resource.resource_type,
            &topic,
            edit,
            req.validate_only,
        )
        .await;
        let response = IncrementalResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, msg)) => response
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg))),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
