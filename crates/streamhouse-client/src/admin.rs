//! Cluster administration: create, delete, list and describe topics, read and change topic
//! configs, add partitions, delete records, look up offsets, and list, describe and delete
//! consumer groups and their committed offsets.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteRecordsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeGroupsRequest, GroupId, IncrementalAlterConfigsRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::assignor::{decode_assignment, CONSUMER_PROTOCOL_TYPE};
use crate::cluster::Cluster;
use crate::connection::DEFAULT_REQUEST_TIMEOUT;
use crate::error::{is_metadata_error, ClientError};
use crate::group::{find_coordinator, offset_fetch};

/// Where to start reading, or which offset to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (ListOffsets timestamp -2).
    Earliest,
    /// The high watermark: the offset the next record will get (ListOffsets timestamp -1).
    Latest,
    /// The first offset whose timestamp is at least this many ms since the epoch.
    Timestamp(i64),
}

impl OffsetSpec {
    /// The ListOffsets `timestamp` value for this spec.
    pub fn as_list_offsets_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ts) => ts,
        }
    }
}

/// A topic in [`Admin::list_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
}

/// One partition in a [`TopicDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Partition index.
    pub partition: i32,
    /// Node id of the leader (-1 if none).
    pub leader_node_id: i32,
    /// Offset the next produced record will get.
    pub high_watermark: i64,
    /// First offset still readable.
    pub log_start_offset: i64,
}

/// The result of [`Admin::describe_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Partitions ordered by index.
    pub partitions: Vec<PartitionDescription>,
}

/// A group in [`Admin::list_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// State as the coordinator names it (`Empty`, `Stable`, `PreparingRebalance`, ...);
    /// empty if the broker's ListGroups version does not report states.
    pub state: String,
    /// Protocol type, "consumer" for consumer groups.
    pub protocol_type: String,
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberDescription {
    /// Member id given by the coordinator.
    pub member_id: String,
    /// Static membership id, if the member set one.
    pub group_instance_id: Option<String>,
    /// The member's client id.
    pub client_id: String,
    /// The member's host as the coordinator saw it.
    pub client_host: String,
    /// Assigned (topic, partition) pairs; empty unless the group is a consumer group.
    pub assignment: Vec<(String, i32)>,
}

/// The result of [`Admin::describe_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State (`Empty`, `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Dead`).
    pub state: String,
    /// Protocol type ("consumer").
    pub protocol_type: String,
    /// Chosen assignor ("range", "roundrobin"), empty between generations.
    pub protocol: String,
    /// Members, sorted by member id.
    pub members: Vec<GroupMemberDescription>,
}

/// Kafka's config resource type for topics.
const TOPIC_RESOURCE: i8 = 2;

/// Where a config value comes from (DescribeConfigs `config_source`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (a dynamic topic config).
    DynamicTopic,
    /// A dynamic config of one broker.
    DynamicBroker,
    /// A dynamic default for all brokers.
    DynamicDefaultBroker,
    /// The broker's static configuration.
    StaticBroker,
    /// The built-in default.
    Default,
    /// Anything else, with the raw code (0 is Kafka's UNKNOWN).
    Other(i8),
}

impl ConfigSource {
    /// Maps Kafka's `config_source` code.
    pub fn from_code(code: i8) -> ConfigSource {
        match code {
            1 => ConfigSource::DynamicTopic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            other => ConfigSource::Other(other),
        }
    }
}

/// One config of a topic, from [`Admin::describe_topic_configs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Config name, e.g. `retention.ms`.
    pub name: String,
    /// Current value; `None` for sensitive or unset values.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Whether the config can be changed.
    pub read_only: bool,
    /// The broker's description of the config, if it sent one.
    pub documentation: Option<String>,
}

/// Administrative operations against a cluster reached through a bootstrap address.
#[derive(Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Connects to `bootstrap` ("host:port", or a comma-separated list of them).
    pub async fn connect(bootstrap: &str) -> Result<Admin, ClientError> {
        Self::connect_with_timeout(bootstrap, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// Connects with a custom per-request timeout.
    pub async fn connect_with_timeout(
        bootstrap: &str,
        request_timeout: Duration,
    ) -> Result<Admin, ClientError> {
        let cluster = Cluster::connect(bootstrap, request_timeout).await?;
        Ok(Admin {
            cluster,
            request_timeout,
        })
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.request_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Creates `name` with `partitions` partitions and the given topic configs.
    ///
    /// Fails with `ClientError::Kafka { code: 36, .. }` (TOPIC_ALREADY_EXISTS) if it exists.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        if partitions <= 0 {
            return Err(ClientError::InvalidInput {
                message: format!("partition count must be positive, got {partitions}"),
            });
        }
        let conn = self.cluster.controller().await?;
        let version = conn.version_for::<CreateTopicsRequest>()?;
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            // -1 = broker default; brokers before v4 need an explicit factor.
            .with_replication_factor(if version >= 4 { -1 } else { 1 })
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let req = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(self.timeout_ms());
        let resp = conn.send_versioned(req, version).await?;
        let result = resp
            .topics
            .iter()
            .find(|t| t.name.as_str() == name)
            .ok_or_else(|| ClientError::corrupt("CreateTopics response", "topic missing"))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(
                result.error_code,
                result.error_message.as_deref(),
            ));
        }
        self.cluster.invalidate(name);
        Ok(())
    }

    /// Deletes topic `name`.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let conn = self.cluster.controller().await?;
        let version = conn.version_for::<DeleteTopicsRequest>()?;
        let mut req = DeleteTopicsRequest::default().with_timeout_ms(self.timeout_ms());
        if version >= 6 {
            req.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(name)))];
        } else {
            req.topic_names = vec![topic_name(name)];
        }
        let resp = conn.send_versioned(req, version).await?;
        let result = resp
            .responses
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(name))
            .or(resp.responses.first())
            .ok_or_else(|| ClientError::corrupt("DeleteTopics response", "topic missing"))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(
                result.error_code,
                result.error_message.as_deref(),
            ));
        }
        self.cluster.invalidate(name);
        Ok(())
    }

    /// All topics with their partition counts, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        let resp = self.cluster.fetch_metadata(None).await?;
        let mut topics: Vec<TopicSummary> = resp
            .topics
            .iter()
            .filter(|t| t.error_code == 0 && !t.is_internal)
            .filter_map(|t| {
                let name = t.name.as_ref()?.as_str().to_owned();
                let partitions = i32::try_from(t.partitions.len()).ok()?;
                Some(TopicSummary { name, partitions })
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Leader, high watermark and log start offset of every partition of `name`.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let resp = self
            .cluster
            .fetch_metadata(Some(&[name.to_owned()]))
            .await?;
        let topic = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(name))
            .ok_or_else(|| ClientError::kafka(3, Some(name)))?;
        if topic.error_code != 0 {
            return Err(ClientError::kafka(topic.error_code, Some(name)));
        }
        let mut parts: Vec<(i32, i32)> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        parts.sort_unstable();
        let partitions = try_join_all(parts.into_iter().map(|(partition, leader)| async move {
            let log_start_offset = self
                .list_offsets(name, partition, OffsetSpec::Earliest)
                .await?;
            let high_watermark = self
                .list_offsets(name, partition, OffsetSpec::Latest)
                .await?;
            Ok::<_, ClientError>(PartitionDescription {
                partition,
                leader_node_id: leader,
                high_watermark,
                log_start_offset,
            })
        }))
        .await?;
        Ok(TopicDescription {
            name: name.to_owned(),
            partitions,
        })
    }

    /// Looks up one offset of `topic`/`partition` on its leader.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: i32,
        spec: OffsetSpec,
    ) -> Result<i64, ClientError> {
        list_offsets(&self.cluster, topic, partition, spec).await
    }

    /// Every group on every broker, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        self.cluster.refresh(&[]).await?;
        let mut out: Vec<GroupListing> = Vec::new();
        for node in self.cluster.broker_ids() {
            let conn = self.cluster.broker(node).await?;
            let resp = conn.send(ListGroupsRequest::default()).await?;
            if resp.error_code != 0 {
                return Err(ClientError::kafka(resp.error_code, Some("ListGroups")));
            }
            for g in resp.groups {
                let group_id = g.group_id.0.as_str().to_owned();
                if out.iter().any(|l| l.group_id == group_id) {
                    continue;
                }
                out.push(GroupListing {
                    group_id,
                    state: g.group_state.as_str().to_owned(),
                    protocol_type: g.protocol_type.as_str().to_owned(),
                });
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// State, assignor and members (with their decoded assignments) of `group`.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let conn = find_coordinator(&self.cluster, group, self.request_timeout).await?;
        let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let resp = conn.send(req).await?;
        let g = resp
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group)
            .ok_or_else(|| ClientError::corrupt("DescribeGroups response", "group missing"))?;
        if g.error_code != 0 {
            return Err(ClientError::kafka(
                g.error_code,
                g.error_message.as_deref().or(Some(group)),
            ));
        }
        let is_consumer = g.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
        let mut members = Vec::with_capacity(g.members.len());
        for m in g.members {
            let assignment = if is_consumer {
                decode_assignment(&m.member_assignment)?
            } else {
                Vec::new()
            };
            members.push(GroupMemberDescription {
                member_id: m.member_id.as_str().to_owned(),
                group_instance_id: m.group_instance_id.map(|i| i.as_str().to_owned()),
                client_id: m.client_id.as_str().to_owned(),
                client_host: m.client_host.as_str().to_owned(),
                assignment,
            });
        }
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Ok(GroupDescription {
            group_id: group.to_owned(),
            state: g.group_state.as_str().to_owned(),
            protocol_type: g.protocol_type.as_str().to_owned(),
            protocol: g.protocol_data.as_str().to_owned(),
            members,
        })
    }

    /// Deletes `group` and its committed offsets; fails with NON_EMPTY_GROUP (68) while it
    /// has members and GROUP_ID_NOT_FOUND (69) if it does not exist.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let conn = find_coordinator(&self.cluster, group, self.request_timeout).await?;
        let req = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let resp = conn.send(req).await?;
        let result = resp
            .results
            .iter()
            .find(|r| r.group_id.0.as_str() == group)
            .ok_or_else(|| ClientError::corrupt("DeleteGroups response", "group missing"))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(result.error_code, Some(group)));
        }
        Ok(())
    }

    /// Every committed offset of `group` as (topic, partition, offset), sorted.
    pub async fn list_group_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(String, i32, i64)>, ClientError> {
        let conn = find_coordinator(&self.cluster, group, self.request_timeout).await?;
        offset_fetch(&conn, group, None).await
    }

    /// Every config of `topic` with its value, source and documentation, sorted by name.
    pub async fn describe_topic_configs(
        &self,
        topic: &str,
    ) -> Result<Vec<ConfigEntry>, ClientError> {
        let conn = self.cluster.controller().await?;
        let req = DescribeConfigsRequest::default()
            .with_resources(vec![DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configuration_keys(None)])
            .with_include_documentation(true);
        let resp = conn.send(req).await?;
        config_entries(resp, topic)
    }

    /// Sets (`Some(value)`) or deletes back to the default (`None`) configs of `topic` with
    /// IncrementalAlterConfigs; configs not named are left alone.
    pub async fn alter_topic_configs(
        &self,
        topic: &str,
        changes: &[(&str, Option<&str>)],
    ) -> Result<(), ClientError> {
        if changes.is_empty() {
            return Ok(());
        }
        let conn = self.cluster.controller().await?;
        let configs = changes
            .iter()
            .map(|(name, value)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string((*name).to_owned()))
                    // 0 = SET, 1 = DELETE.
                    .with_config_operation(if value.is_some() { 0 } else { 1 })
                    .with_value(value.map(|v| StrBytes::from_string(v.to_owned())))
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configs(configs),
        ]);
        let resp = conn.send(req).await?;
        let result = resp
            .responses
            .iter()
            .find(|r| r.resource_name.as_str() == topic)
            .or(resp.responses.first())
            .ok_or_else(|| {
                ClientError::corrupt("IncrementalAlterConfigs response", "topic missing")
            })?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(
                result.error_code,
                result.error_message.as_deref().or(Some(topic)),
            ));
        }
        Ok(())
    }

    /// Grows `topic` to `total` partitions (CreatePartitions); fails with
    /// INVALID_PARTITIONS (37) if that is not more than it has.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<(), ClientError> {
        if total <= 0 {
            return Err(ClientError::InvalidInput {
                message: format!("partition count must be positive, got {total}"),
            });
        }
        let conn = self.cluster.controller().await?;
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(topic))
                .with_count(total)
                .with_assignments(None)])
            .with_timeout_ms(self.timeout_ms());
        let resp = conn.send(req).await?;
        let result = resp
            .results
            .iter()
            .find(|r| r.name.as_str() == topic)
            .ok_or_else(|| ClientError::corrupt("CreatePartitions response", "topic missing"))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(
                result.error_code,
                result.error_message.as_deref().or(Some(topic)),
            ));
        }
        self.cluster.invalidate(topic);
        Ok(())
    }

    /// Deletes the records of `topic`/`partition` below `before_offset` (DeleteRecords, sent
    /// to the partition's leader); -1 means up to the high watermark. Returns the new
    /// low watermark (log start offset).
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: i32,
        before_offset: i64,
    ) -> Result<i64, ClientError> {
        if before_offset < -1 {
            return Err(ClientError::InvalidInput {
                message: format!("before_offset must be -1 or an offset, got {before_offset}"),
            });
        }
        let where_ = format!("{topic}/{partition}");
        let leader = self.cluster.leader(topic, partition).await?;
        if leader < 0 {
            return Err(ClientError::kafka(5, Some(&where_)));
        }
        let conn = self.cluster.broker(leader).await?;
        let req = DeleteRecordsRequest::default()
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(before_offset)])])
            .with_timeout_ms(self.timeout_ms());
        let resp = conn.send(req).await?;
        let p = resp
            .topics
            .iter()
            .filter(|t| t.name.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::corrupt("DeleteRecords response", "partition missing"))?;
        if p.error_code != 0 {
            if is_metadata_error(p.error_code) {
                self.cluster.invalidate(topic);
            }
            return Err(ClientError::kafka(p.error_code, Some(&where_)));
        }
        Ok(p.low_watermark)
    }

    /// A raw Metadata request: `None` asks for every topic.
    pub async fn metadata(
        &self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, ClientError> {
        self.cluster.fetch_metadata(topics).await
    }
}

/// ListOffsets for one partition, sent to its leader; retries once after a metadata refresh.
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    spec: OffsetSpec,
) -> Result<i64, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match list_offsets_once(cluster, topic, partition, spec).await {
            Err(e)
                if attempt < 3
                    && (e.kafka_code().is_some_and(is_metadata_error)
                        || matches!(e, ClientError::Disconnected)) =>
            {
                cluster.invalidate(topic);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn list_offsets_once(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    spec: OffsetSpec,
) -> Result<i64, ClientError> {
    let leader = cluster.leader(topic, partition).await?;
    if leader < 0 {
        return Err(ClientError::kafka(5, Some(&format!("{topic}/{partition}"))));
    }
    let conn = cluster.broker(leader).await?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(spec.as_list_offsets_timestamp())])]);
    let resp = conn.send(req).await?;
    let p = resp
        .topics
        .iter()
        .filter(|t| t.name.as_str() == topic)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| ClientError::corrupt("ListOffsets response", "partition missing"))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(
            p.error_code,
            Some(&format!("{topic}/{partition}")),
        ));
    }
    Ok(p.offset)
}

/// The [`ConfigEntry`]s of `topic` in a DescribeConfigs response, sorted by name.
fn config_entries(
    resp: DescribeConfigsResponse,
    topic: &str,
) -> Result<Vec<ConfigEntry>, ClientError> {
    let result = resp
        .results
        .into_iter()
        .find(|r| r.resource_type == TOPIC_RESOURCE && r.resource_name.as_str() == topic)
        .ok_or_else(|| ClientError::corrupt("DescribeConfigs response", "topic missing"))?;
    if result.error_code != 0 {
        return Err(ClientError::kafka(
            result.error_code,
            result.error_message.as_deref().or(Some(topic)),
        ));
    }
    let mut entries: Vec<ConfigEntry> = result
        .configs
        .into_iter()
        .map(|c| ConfigEntry {
            name: c.name.as_str().to_owned(),
            value: c.value.map(|v| v.as_str().to_owned()),
            source: ConfigSource::from_code(c.config_source),
            read_only: c.read_only,
            documentation: c.documentation.map(|d| d.as_str().to_owned()),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

/// A protocol topic name from a `&str`.
pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}
