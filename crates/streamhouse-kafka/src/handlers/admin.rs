//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords, and
//! DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterResponse, TopicName,
};
use streamhouse_agent::{Agent, AgentError};
use streamhouse_metadata::{validate_topic_name, TopicConfig};

use crate::errors::{error_code, message};
use crate::handlers::str_bytes;

pub(crate) async fn create_topics(
    agent: &Arc<Agent>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let partitions = if topic.num_partitions == -1 && topic.assignments.is_empty() {
            agent.config().default_partitions
        } else if !topic.assignments.is_empty() {
            i32::try_from(topic.assignments.len()).unwrap_or(i32::MAX)
        } else {
            topic.num_partitions
        };
        let configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
            })
            .collect();
        let outcome = if topic.replication_factor == 0 || topic.replication_factor < -1 {
            // Durability comes from the object store, so any positive factor is accepted
            // and one replica (the leader) is reported.
            Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor must be -1 or positive, not {}",
                    topic.replication_factor
                ),
            ))
        } else if request.validate_only {
            validate_topic_name(&name)
                .map_err(|m| (ResponseError::InvalidTopicException, m))
                .and_then(|()| {
                    if partitions < 1 {
                        Err((
                            ResponseError::InvalidPartitions,
                            format!("invalid partition count {partitions}"),
                        ))
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| {
                    TopicConfig::parse(&configs)
                        .map(|_| ())
                        .map_err(|m| (ResponseError::InvalidConfig, m))
                })
                .map(|()| None)
        } else {
            agent
                .create_topic(&name, partitions, &configs)
                .await
                .map(Some)
                .map_err(|e: AgentError| (error_code(&e), message(&e)))
        };
        results.push(match outcome {
            Ok(created) => {
                let config = TopicConfig::parse(&configs).unwrap_or_default();
                let described: Vec<CreatableTopicConfigs> = config
                    .entries()
                    .into_iter()
                    .map(|(k, v)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v.clone())))
                            .with_config_source(if configs.contains_key(k) { 1 } else { 5 })
                    })
                    .collect();
                result
                    .with_topic_id(created.map(|t| t.id).unwrap_or_default())
                    .with_num_partitions(partitions)
                    .with_replication_factor(1)
                    .with_configs(Some(described))
            }
            Err((code, msg)) => result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub(crate) async fn delete_topics(
    agent: &Arc<Agent>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v0–v5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil()))
        .collect();
    if version >= 6 {
        wanted = request
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.as_str().to_string()),
                    t.topic_id,
                )
            })
            .collect();
    }
    let mut results = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let name = match name {
            Some(name) => Some(name),
            None => match agent.metadata().list_topics().await {
                Ok(all) => all.into_iter().find(|t| t.id == id).map(|t| t.name),
                Err(_) => None,
            },
        };
        let result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(id);
        let Some(name) = name else {
            results.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        results.push(match agent.delete_topic(&name).await {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(error_code(&e).code())
                .with_error_message(Some(str_bytes(message(&e)))),
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

pub(crate) async fn create_partitions(
    agent: &Arc<Agent>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let outcome = if request.validate_only {
            match agent.metadata().get_topic(&name).await {
                Ok(Some(t)) if topic.count > t.partitions => Ok(()),
                Ok(Some(t)) => Err((
                    ResponseError::InvalidPartitions,
                    format!(
                        "topic has {} partitions; {} is not more",
                        t.partitions, topic.count
                    ),
                )),
                Ok(None) => Err((
                    ResponseError::UnknownTopicOrPartition,
                    format!("unknown topic {name:?}"),
                )),
                Err(e) => {
                    let e = AgentError::Metadata(e);
                    Err((error_code(&e), message(&e)))
                }
            }
        } else {
            agent
                .create_partitions(&name, topic.count)
                .await
                .map_err(|e| (error_code(&e), message(&e)))
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match outcome {
            Ok(()) => result,
            Err((code, msg)) => result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(msg))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub(crate) async fn delete_records(
    agent: &Arc<Agent>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let tp =
                streamhouse_metadata::TopicPartition::new(topic.name.0.as_str(), p.partition_index);
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match agent.delete_records(&tp, p.offset).await {
                Ok(low) => result.with_low_watermark(low.0),
                Err(e) => result
                    .with_low_watermark(-1)
                    .with_error_code(error_code(&e).code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

pub(crate) async fn describe_cluster(agent: &Arc<Agent>) -> DescribeClusterResponse {
    // The live agents of this agent's group (as of its last balance round), with the group
    // as their rack.
    let brokers = agent
        .group_agents()
        .iter()
        .map(|a| {
            let (host, port) = crate::handlers::metadata::split_addr(&a.advertised_addr);
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(a.node_id))
                .with_host(str_bytes(host))
                .with_port(port)
                .with_rack(Some(str_bytes(a.group.clone())))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(crate::handlers::metadata::CLUSTER_ID))
        .with_controller_id(BrokerId(agent.info().node_id))
        .with_brokers(brokers)
}
