//! Metadata: brokers (agents), topics, partitions and their leaders.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use streamhouse_agent::{Agent, AgentError};
use streamhouse_metadata::{validate_topic_name, AgentInfo, Topic, TopicConfig, TopicPartition};
use tracing::warn;

use crate::errors::{error_code, message};
use crate::handlers::str_bytes;

/// The cluster id reported to clients.
pub(crate) const CLUSTER_ID: &str = "streamhouse";

pub(crate) async fn handle(
    agent: &Arc<Agent>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let me = agent.info().clone();
    let agents: HashMap<String, AgentInfo> = match agent.metadata().list_agents().await {
        Ok(list) => list.into_iter().map(|a| (a.id.0.clone(), a)).collect(),
        Err(e) => {
            warn!(error = %message(&e), "cannot list agents for a Metadata request");
            HashMap::new()
        }
    };

    // v0 asks for all topics with an empty list; later versions with a null one.
    let requested: Option<Vec<String>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(
            list.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.as_str().to_string()))
                .collect(),
        ),
    };

    let mut topics = Vec::new();
    let mut leaders: Vec<i32> = vec![me.node_id];
    match requested {
        None => match agent.metadata().list_topics().await {
            Ok(all) => {
                // Topics of other agent groups are not this group's clients' business.
                for topic in all.iter().filter(|t| in_my_group(agent, t)) {
                    topics.push(describe(agent, topic, &agents, &mut leaders).await);
                }
            }
            Err(e) => warn!(error = %message(&e), "cannot list topics for a Metadata request"),
        },
        Some(names) => {
            for name in names {
                topics.push(
                    describe_by_name(
                        agent,
                        &name,
                        request.allow_auto_topic_creation,
                        &agents,
                        &mut leaders,
                    )
                    .await,
                );
            }
        }
    }

    // The brokers: the live agents of this agent's group, and any agent still named as a
    // leader (its lease has not expired yet even if its heartbeats stopped).
    let live = agent.group_agents();
    let mut brokers: Vec<MetadataResponseBroker> = Vec::new();
    leaders.sort_unstable();
    leaders.dedup();
    for a in live
        .iter()
        .chain(agents.values())
        .chain(std::iter::once(&me))
    {
        let listed = live.iter().any(|l| l.node_id == a.node_id) || leaders.contains(&a.node_id);
        if listed && !brokers.iter().any(|b| b.node_id.0 == a.node_id) {
            let (host, port) = split_addr(&a.advertised_addr);
            brokers.push(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(a.node_id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_rack(Some(str_bytes(a.group.clone()))),
            );
        }
    }
    brokers.sort_by_key(|b| b.node_id.0);
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(CLUSTER_ID)))
        .with_controller_id(BrokerId(me.node_id))
        .with_topics(topics)
}

async fn describe_by_name(
    agent: &Arc<Agent>,
    name: &str,
    allow_auto_create: bool,
    agents: &HashMap<String, AgentInfo>,
    leaders: &mut Vec<i32>,
) -> MetadataResponseTopic {
    let error = |code: ResponseError| {
        MetadataResponseTopic::default()
            .with_name(Some(str_bytes(name).into()))
            .with_error_code(code.code())
    };
    if validate_topic_name(name).is_err() {
        return error(ResponseError::InvalidTopicException);
    }
    match agent.metadata().get_topic(name).await {
        Ok(Some(topic)) if !in_my_group(agent, &topic) => {
            // Led by another agent group: clients of this group are not routed there.
            error(ResponseError::UnknownTopicOrPartition)
        }
        Ok(Some(topic)) => describe(agent, &topic, agents, leaders).await,
        Ok(None) if allow_auto_create && agent.config().auto_create_topics => {
            match agent
                .create_topic(name, agent.config().default_partitions, &Default::default())
                .await
            {
                Ok(topic) => describe(agent, &topic, agents, leaders).await,
                Err(AgentError::TopicAlreadyExists { .. }) => {
                    // Created concurrently by another request: describe what is there.
                    match agent.metadata().get_topic(name).await {
                        Ok(Some(topic)) => describe(agent, &topic, agents, leaders).await,
                        _ => error(ResponseError::LeaderNotAvailable),
                    }
                }
                Err(e) => error(error_code(&e)),
            }
        }
        Ok(None) => error(ResponseError::UnknownTopicOrPartition),
        Err(e) => {
            warn!(topic = name, error = %message(&e), "cannot read topic for a Metadata request");
            error(ResponseError::KafkaStorageError)
        }
    }
}

/// Whether `topic` belongs to this agent's group.
fn in_my_group(agent: &Agent, topic: &Topic) -> bool {
    TopicConfig::parse(&topic.configs)
        .map(|c| c.agent_group == agent.config().group)
        .unwrap_or(true)
}

async fn describe(
    agent: &Arc<Agent>,
    topic: &Topic,
    agents: &HashMap<String, AgentInfo>,
    leaders: &mut Vec<i32>,
) -> MetadataResponseTopic {
    let base = MetadataResponseTopic::default()
        .with_name(Some(str_bytes(topic.name.clone()).into()))
        .with_topic_id(topic.id);
    let states = match agent.metadata().list_partitions(&topic.name).await {
        Ok(states) => states,
        Err(e) => {
            warn!(topic = %topic.name, error = %message(&e), "cannot list partitions");
            return base.with_error_code(ResponseError::KafkaStorageError.code());
        }
    };
    let mut partitions = Vec::with_capacity(states.len());
    for state in states {
        let mut lease = state.lease.clone();
        if lease.is_none() {
            // Nobody leads it: a lone agent takes it now rather than make the client wait
            // for the next lease round; otherwise a balance round is asked for.
            let tp: &TopicPartition = &state.tp;
            if agent.ensure_led(tp).await.is_ok() {
                lease = agent
                    .leader_epoch(tp)
                    .map(|epoch| streamhouse_metadata::Lease {
                        tp: tp.clone(),
                        holder: agent.info().id.clone(),
                        epoch: streamhouse_metadata::LeaseEpoch(epoch),
                        expires_at_ms: 0,
                    });
            }
        }
        let leader = lease.as_ref().and_then(|l| {
            if l.holder == agent.info().id {
                Some(agent.info().node_id)
            } else {
                agents.get(&l.holder.0).map(|a| a.node_id)
            }
        });
        let partition =
            MetadataResponsePartition::default().with_partition_index(state.tp.partition.0);
        partitions.push(match (leader, lease) {
            (Some(node), Some(lease)) => {
                leaders.push(node);
                partition
                    .with_leader_id(BrokerId(node))
                    .with_leader_epoch(i32::try_from(lease.epoch.0).unwrap_or(-1))
                    .with_replica_nodes(vec![BrokerId(node)])
                    .with_isr_nodes(vec![BrokerId(node)])
            }
            _ => partition
                .with_error_code(ResponseError::LeaderNotAvailable.code())
                .with_leader_id(BrokerId(-1))
                .with_leader_epoch(-1),
        });
    }
    base.with_partitions(partitions)
}

/// Splits "host:port" (IPv6 hosts in brackets); a missing or bad port gives 9092.
pub(crate) fn split_addr(addr: &str) -> (String, i32) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(9092),
        ),
        None => (addr.to_string(), 9092),
    }
}

#[cfg(test)]
mod tests {
    use super::split_addr;

    #[test]
    fn splits_addresses() {
        assert_eq!(
            split_addr("127.0.0.1:9093"),
            ("127.0.0.1".to_string(), 9093)
        );
        assert_eq!(split_addr("[::1]:1"), ("::1".to_string(), 1));
        assert_eq!(split_addr("host"), ("host".to_string(), 9092));
    }
}
