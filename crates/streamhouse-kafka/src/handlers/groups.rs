//! The consumer group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups. The state machine
//! is `streamhouse-groups`; this module only translates requests and responses.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use streamhouse_agent::Agent;
use streamhouse_groups::{GroupCoordinator, GroupError, JoinRequest, SyncRequest};
use streamhouse_metadata::{GroupOffset, Offset, TopicPartition};

use crate::errors::group_error_code;
use crate::handlers::str_bytes;

/// Who sent a request (for DescribeGroups' client id and host).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client_id: String,
    pub(crate) host: String,
}

fn s(b: &StrBytes) -> String {
    b.as_str().to_string()
}

fn opt(b: &Option<StrBytes>) -> Option<String> {
    b.as_ref().map(s)
}

pub(crate) fn find_coordinator(
    agent: &Arc<Agent>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let supported = |key_type: i8| key_type == 0;
    let locate = |key: &str| {
        let a = agent.coordinator_for(key);
        let (host, port) = crate::handlers::metadata::split_addr(&a.advertised_addr);
        (a.node_id, host, port)
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                if supported(req.key_type) {
                    let (node, host, port) = locate(key.as_str());
                    c.with_node_id(BrokerId(node))
                        .with_host(str_bytes(host))
                        .with_port(port)
                } else {
                    c.with_error_code(ResponseError::CoordinatorNotAvailable.code())
                        .with_error_message(Some(str_bytes(
                            "transaction coordinators are not supported",
                        )))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    if !supported(req.key_type) {
        return FindCoordinatorResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1);
    }
    let (node, host, port) = locate(req.key.as_str());
    FindCoordinatorResponse::default()
        .with_node_id(BrokerId(node))
        .with_host(str_bytes(host))
        .with_port(port)
}

pub(crate) async fn join_group(
    groups: &GroupCoordinator,
    req: JoinGroupRequest,
    version: i16,
    caller: &Caller,
) -> JoinGroupResponse {
    let request = JoinRequest {
        group_id: s(&req.group_id.0),
        member_id: s(&req.member_id),
        group_instance_id: opt(&req.group_instance_id),
        client_id: caller.client_id.clone(),
        client_host: caller.host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            -1
        },
        protocol_type: s(&req.protocol_type),
        protocols: req
            .protocols
            .iter()
            .map(|p| (s(&p.name), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    match groups.join(request).await {
        Ok(joined) => {
            let response = JoinGroupResponse::default()
                .with_generation_id(joined.generation_id)
                .with_protocol_name(joined.protocol_name.map(str_bytes))
                .with_leader(str_bytes(joined.leader))
                .with_member_id(str_bytes(joined.member_id))
                .with_members(
                    joined
                        .members
                        .into_iter()
                        .map(|m| {
                            JoinGroupResponseMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                .with_metadata(m.metadata)
                        })
                        .collect(),
                );
            if version >= 7 {
                response.with_protocol_type(joined.protocol_type.map(str_bytes))
            } else {
                response
            }
        }
        Err(e) => {
            let member_id = match &e {
                GroupError::MemberIdRequired { member_id } => member_id.clone(),
                _ => s(&req.member_id),
            };
            JoinGroupResponse::default()
                .with_error_code(group_error_code(&e).code())
                .with_generation_id(-1)
                .with_member_id(str_bytes(member_id))
                .with_protocol_name(if version >= 7 {
                    None
                } else {
                    Some(str_bytes(""))
                })
        }
    }
}

pub(crate) async fn sync_group(
    groups: &GroupCoordinator,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let request = SyncRequest {
        group_id: s(&req.group_id.0),
        generation_id: req.generation_id,
        member_id: s(&req.member_id),
        group_instance_id: opt(&req.group_instance_id),
        assignments: req
            .assignments
            .iter()
            .map(|a| (s(&a.member_id), a.assignment.clone()))
            .collect(),
    };
    let response = match groups.sync(request).await {
        Ok(assignment) => SyncGroupResponse::default().with_assignment(assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(group_error_code(&e).code()),
    };
    if version >= 5 {
        response
            .with_protocol_type(req.protocol_type.clone())
            .with_protocol_name(req.protocol_name.clone())
    } else {
        response
    }
}

pub(crate) fn heartbeat(groups: &GroupCoordinator, req: HeartbeatRequest) -> HeartbeatResponse {
    let result = groups.heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(StrBytes::as_str),
    );
    match result {
        Ok(()) => HeartbeatResponse::default(),
        Err(e) => HeartbeatResponse::default().with_error_code(group_error_code(&e).code()),
    }
}

pub(crate) fn leave_group(
    groups: &GroupCoordinator,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = s(&req.group_id.0);
    if version < 3 {
        let result = groups.leave(&group, &[(s(&req.member_id), None)]);
        return match result.into_iter().next() {
            Some(Err(e)) => {
                LeaveGroupResponse::default().with_error_code(group_error_code(&e).code())
            }
            _ => LeaveGroupResponse::default(),
        };
    }
    let identities: Vec<(String, Option<String>)> = req
        .members
        .iter()
        .map(|m| (s(&m.member_id), opt(&m.group_instance_id)))
        .collect();
    let results = groups.leave(&group, &identities);
    let members = identities
        .into_iter()
        .zip(results)
        .map(|((member_id, instance), result)| {
            let code = match result {
                Ok(()) => 0,
                Err(e) => group_error_code(&e).code(),
            };
            MemberResponse::default()
                .with_member_id(str_bytes(member_id))
                .with_group_instance_id(instance.map(str_bytes))
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub(crate) async fn offset_commit(
    groups: &GroupCoordinator,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            offsets.push(GroupOffset {
                tp: TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                offset: Offset(p.committed_offset),
                leader_epoch: p.committed_leader_epoch,
                metadata: opt(&p.committed_metadata),
                commit_timestamp_ms: 0,
            });
        }
    }
    let result = groups
        .commit_offsets(
            req.group_id.0.as_str(),
            req.generation_id_or_member_epoch,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(StrBytes::as_str),
            &offsets,
        )
        .await;
    let code = match &result {
        Ok(()) => 0,
        Err(e) => group_error_code(e).code(),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets as (topic → partition → offset), for the partitions asked
/// (all committed ones when `wanted` is `None`).
async fn committed(
    groups: &GroupCoordinator,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<BTreeMap<String, Vec<(i32, Option<GroupOffset>)>>, GroupError> {
    let stored = groups.fetch_offsets(group).await?;
    let mut out: BTreeMap<String, Vec<(i32, Option<GroupOffset>)>> = BTreeMap::new();
    match wanted {
        None => {
            for o in stored {
                out.entry(o.tp.topic.clone())
                    .or_default()
                    .push((o.tp.partition.0, Some(o)));
            }
        }
        Some(wanted) => {
            for (topic, partitions) in wanted {
                let entry = out.entry(topic.clone()).or_default();
                for p in partitions {
                    let found = stored
                        .iter()
                        .find(|o| o.tp.topic == topic && o.tp.partition.0 == p)
                        .cloned();
                    entry.push((p, found));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) async fn offset_fetch(
    groups: &GroupCoordinator,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut results = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            let wanted = g.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
                    .collect()
            });
            let result = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            results.push(
                match committed(groups, g.group_id.0.as_str(), wanted).await {
                    Ok(found) => result.with_topics(
                        found
                            .into_iter()
                            .map(|(topic, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(str_bytes(topic)))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(p, o)| {
                                                let (offset, epoch, metadata) = fields(o);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(metadata)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                    Err(e) => result.with_error_code(group_error_code(&e).code()),
                },
            );
        }
        return OffsetFetchResponse::default().with_groups(results);
    }
    let wanted = req.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
            .collect()
    });
    match committed(groups, req.group_id.0.as_str(), wanted).await {
        Ok(found) => OffsetFetchResponse::default().with_topics(
            found
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, o)| {
                                    let (offset, epoch, metadata) = fields(o);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(if version >= 5 {
                                            epoch
                                        } else {
                                            -1
                                        })
                                        .with_metadata(metadata)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) if version >= 2 => {
            OffsetFetchResponse::default().with_error_code(group_error_code(&e).code())
        }
        Err(_) => OffsetFetchResponse::default(),
    }
}

/// (offset, leader epoch, metadata) of a committed offset, or Kafka's "none" (-1, -1, "").
fn fields(o: Option<GroupOffset>) -> (i64, i32, Option<StrBytes>) {
    match o {
        Some(o) => (
            o.offset.0,
            o.leader_epoch,
            Some(str_bytes(o.metadata.unwrap_or_default())),
        ),
        None => (-1, -1, Some(str_bytes(""))),
    }
}

pub(crate) async fn describe_groups(
    groups: &GroupCoordinator,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(req.groups.len());
    for id in &req.groups {
        let base = DescribedGroup::default().with_group_id(id.clone());
        described.push(match groups.describe(id.0.as_str()).await {
            Ok(d) => base
                .with_group_state(str_bytes(d.state))
                .with_protocol_type(str_bytes(d.protocol_type))
                .with_protocol_data(str_bytes(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                .with_client_id(str_bytes(m.client_id))
                                .with_client_host(str_bytes(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
            Err(e) => base.with_error_code(group_error_code(&e).code()),
        });
    }
    DescribeGroupsResponse::default().with_groups(described)
}

pub(crate) async fn list_groups(
    groups: &GroupCoordinator,
    req: ListGroupsRequest,
) -> ListGroupsResponse {
    match groups.list().await {
        Ok(listed) => ListGroupsResponse::default().with_groups(
            listed
                .into_iter()
                .filter(|g| {
                    req.states_filter.is_empty()
                        || req
                            .states_filter
                            .iter()
                            .any(|f| f.as_str().eq_ignore_ascii_case(g.state))
                })
                .map(|g| {
                    ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(g.group_id)))
                        .with_protocol_type(str_bytes(g.protocol_type))
                        .with_group_state(str_bytes(g.state))
                })
                .collect(),
        ),
        Err(e) => ListGroupsResponse::default().with_error_code(group_error_code(&e).code()),
    }
}

pub(crate) async fn delete_groups(
    groups: &GroupCoordinator,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in &req.groups_names {
        let code = match groups.delete(id.0.as_str()).await {
            Ok(()) => 0,
            Err(e) => group_error_code(&e).code(),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
