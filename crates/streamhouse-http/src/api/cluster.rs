//! Agents with their leases, consumer groups with their lag, and the cluster overview with
//! this agent's throughput.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::State;
use serde::{Deserialize, Serialize};
use streamhouse_metadata::{PartitionState, TopicPartition};
use utoipa::ToSchema;

use crate::api::topics::{records_of, sizes};
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::{now_ms, Sample, Shared, SAMPLE_INTERVAL};

/// A partition whose lease an agent holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LeaseView {
    pub topic: String,
    pub partition: i32,
    pub epoch: i64,
}

/// A registered agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub agent_id: String,
    pub node_id: i32,
    pub address: String,
    pub group: String,
    /// Whether its last heartbeat is within the lease TTL (on the metadata store's clock).
    pub live: bool,
    /// Milliseconds since its last heartbeat, by this agent's clock.
    pub last_heartbeat_age_ms: i64,
    /// How many partition leases it holds.
    pub leases: usize,
    pub partitions: Vec<LeaseView>,
}

/// A consumer group in the list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupSummary {
    pub group_id: String,
    /// `Empty`, `Stable`, `PreparingRebalance`, `CompletingRebalance`, or `Dead` when only
    /// its committed offsets are left.
    pub state: String,
    pub protocol_type: String,
    pub members: usize,
    /// Records between the committed offsets and the high watermarks.
    pub total_lag: i64,
}

/// A (topic, partition) assigned to a member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Assigned {
    pub topic: String,
    pub partition: i32,
}

/// A member of a consumer group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub assignment: Vec<Assigned>,
}

/// A committed offset and how far behind it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GroupOffsetView {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub high_watermark: i64,
    pub lag: i64,
}

/// A consumer group with members and lag.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupDetail {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor chosen for the current generation, empty between generations.
    pub protocol: String,
    pub members: Vec<MemberView>,
    pub offsets: Vec<GroupOffsetView>,
    pub total_lag: i64,
}

/// Counts across the cluster, and this agent's throughput.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterOverview {
    /// The agent answering.
    pub agent_id: String,
    pub agent_group: String,
    /// Registered agents.
    pub agents: usize,
    pub live_agents: usize,
    pub topics: usize,
    pub partitions: usize,
    /// Readable records of every partition.
    pub records: i64,
    /// Stored bytes of every partition.
    pub bytes: u64,
    pub consumer_groups: usize,
    /// This agent's durable produce rate over the last 10 s.
    pub produce_records_per_sec: f64,
    pub produce_bytes_per_sec: f64,
    /// This agent's fetch rate over the last 10 s.
    pub fetch_records_per_sec: f64,
    pub fetch_bytes_per_sec: f64,
}

/// One point of the throughput history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ThroughputSample {
    pub time_ms: i64,
    pub produce_records_per_sec: f64,
    pub produce_bytes_per_sec: f64,
    pub fetch_records_per_sec: f64,
    pub fetch_bytes_per_sec: f64,
}

/// This agent's throughput over the last minutes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ThroughputSeries {
    pub interval_ms: u64,
    /// Oldest first.
    pub samples: Vec<ThroughputSample>,
}

/// List agents.
#[utoipa::path(
    get, path = "/api/v1/agents", tag = "cluster",
    responses(
        (status = 200, description = "Every registered agent, by node id", body = Vec<AgentView>),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_agents(
    State(state): State<Shared>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let metadata = state.agent.metadata();
    let agents = metadata.list_agents().await?;
    let live: BTreeSet<String> = metadata
        .live_agents(state.config.lease_ttl)
        .await?
        .into_iter()
        .map(|a| a.id.0)
        .collect();
    let partitions = metadata.list_all_partitions().await?;
    let now = now_ms();
    let mut out: Vec<AgentView> = agents
        .into_iter()
        .map(|a| {
            let leased: Vec<LeaseView> = partitions
                .iter()
                .filter_map(|p| {
                    let lease = p.lease.as_ref().filter(|l| l.holder == a.id)?;
                    Some(LeaseView {
                        topic: p.tp.topic.clone(),
                        partition: p.tp.partition.0,
                        epoch: lease.epoch.0,
                    })
                })
                .collect();
            AgentView {
                live: live.contains(&a.id.0),
                agent_id: a.id.0,
                node_id: a.node_id,
                address: a.advertised_addr,
                group: a.group,
                last_heartbeat_age_ms: (now - a.last_heartbeat_ms).max(0),
                leases: leased.len(),
                partitions: leased,
            }
        })
        .collect();
    out.sort_by_key(|a| a.node_id);
    Ok(Json(out))
}

/// List consumer groups.
#[utoipa::path(
    get, path = "/api/v1/groups", tag = "groups",
    responses(
        (status = 200, description = "Every group with members or committed offsets, by id", body = Vec<GroupSummary>),
        (status = 503, description = "The cluster or the metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_groups(
    State(state): State<Shared>,
) -> Result<Json<Vec<GroupSummary>>, ApiError> {
    let admin = state.admin().await?;
    let metadata = state.agent.metadata();
    let watermarks = high_watermarks(&metadata.list_all_partitions().await?);
    let mut groups = all_groups(&state).await?;
    for summary in groups.values_mut() {
        let offsets = metadata.fetch_group_offsets(&summary.group_id).await?;
        summary.total_lag = offsets
            .iter()
            .map(|o| lag(o.offset.0, watermarks.get(&o.tp).copied()))
            .sum();
        if summary.state != "Empty" && summary.state != "Dead" {
            // Members live only in the coordinator's memory.
            if let Ok(d) = admin.describe_group(&summary.group_id).await {
                summary.members = d.members.len();
                summary.state = d.state;
            }
        }
    }
    Ok(Json(groups.into_values().collect()))
}

/// Every group the coordinators know (ListGroups to every agent) and every group with
/// committed offsets (those that no member ever joined, or that the coordinators forgot,
/// are listed as `Empty`, as Kafka's tools do), by id.
async fn all_groups(state: &Shared) -> Result<BTreeMap<String, GroupSummary>, ApiError> {
    let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
    for listing in state.admin().await?.list_groups().await? {
        groups.insert(
            listing.group_id.clone(),
            GroupSummary {
                group_id: listing.group_id,
                state: listing.state,
                protocol_type: listing.protocol_type,
                members: 0,
                total_lag: 0,
            },
        );
    }
    for group in state.agent.metadata().list_offset_groups().await? {
        groups.entry(group.clone()).or_insert(GroupSummary {
            group_id: group,
            state: "Empty".to_string(),
            protocol_type: "consumer".to_string(),
            members: 0,
            total_lag: 0,
        });
    }
    Ok(groups)
}

/// Describe a consumer group.
#[utoipa::path(
    get, path = "/api/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "Members, assignments and lag", body = GroupDetail),
        (status = 404, description = "Unknown group", body = ErrorBody),
        (status = 503, description = "The cluster or the metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_group(
    State(state): State<Shared>,
    Path(group): Path<String>,
) -> Result<Json<GroupDetail>, ApiError> {
    if group.is_empty() {
        return Err(ApiError::BadRequest("group id is empty".into()));
    }
    let admin = state.admin().await?;
    let metadata = state.agent.metadata();
    let description = admin.describe_group(&group).await?;
    let offsets = metadata.fetch_group_offsets(&group).await?;
    // DescribeGroups answers `Dead` for a group the coordinator does not know.
    if description.state == "Dead" && offsets.is_empty() {
        return Err(ApiError::UnknownGroup { group });
    }
    let watermarks = high_watermarks(&metadata.list_all_partitions().await?);
    let offsets: Vec<GroupOffsetView> = offsets
        .iter()
        .map(|o| {
            let high_watermark = watermarks.get(&o.tp).copied();
            GroupOffsetView {
                topic: o.tp.topic.clone(),
                partition: o.tp.partition.0,
                committed_offset: o.offset.0,
                high_watermark: high_watermark.unwrap_or(-1),
                lag: lag(o.offset.0, high_watermark),
            }
        })
        .collect();
    let state_name = if description.state == "Dead" {
        "Empty".to_string()
    } else {
        description.state
    };
    Ok(Json(GroupDetail {
        group_id: group,
        state: state_name,
        protocol_type: if description.protocol_type.is_empty() {
            "consumer".to_string()
        } else {
            description.protocol_type
        },
        protocol: description.protocol,
        members: description
            .members
            .into_iter()
            .map(|m| MemberView {
                member_id: m.member_id,
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                assignment: m
                    .assignment
                    .into_iter()
                    .map(|(topic, partition)| Assigned { topic, partition })
                    .collect(),
            })
            .collect(),
        total_lag: offsets.iter().map(|o| o.lag).sum(),
        offsets,
    }))
}

/// The cluster at a glance.
#[utoipa::path(
    get, path = "/api/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Counts and this agent's throughput", body = ClusterOverview),
        (status = 503, description = "The metadata store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn overview(
    State(state): State<Shared>,
) -> Result<Json<ClusterOverview>, ApiError> {
    let metadata = state.agent.metadata();
    let agents = metadata.list_agents().await?;
    let live = metadata.live_agents(state.config.lease_ttl).await?;
    let topics = metadata.list_topics().await?;
    let partitions = metadata.list_all_partitions().await?;
    let sizes = sizes(&state).await?;
    let groups = all_groups(&state).await?;
    let samples = state.samples();
    // Ten seconds back, or as far as the history goes.
    let window = samples.len().saturating_sub(11);
    let rate = samples
        .get(window)
        .zip(samples.last())
        .map(|(a, b)| rates(a, b))
        .unwrap_or(Rates::default());
    Ok(Json(ClusterOverview {
        agent_id: state.agent.config().agent_id.0.clone(),
        agent_group: state.agent.config().group.clone(),
        agents: agents.len(),
        live_agents: live.len(),
        topics: topics.len(),
        partitions: partitions.len(),
        records: partitions.iter().map(records_of).sum(),
        bytes: sizes.values().sum(),
        consumer_groups: groups.len(),
        produce_records_per_sec: rate.produce_records,
        produce_bytes_per_sec: rate.produce_bytes,
        fetch_records_per_sec: rate.fetch_records,
        fetch_bytes_per_sec: rate.fetch_bytes,
    }))
}

/// This agent's throughput, one sample a second.
#[utoipa::path(
    get, path = "/api/v1/cluster/throughput", tag = "cluster",
    responses(
        (status = 200, description = "The last 5 minutes, oldest first", body = ThroughputSeries),
    )
)]
pub(crate) async fn throughput(State(state): State<Shared>) -> Json<ThroughputSeries> {
    let samples = state.samples();
    let points = samples
        .windows(2)
        .map(|w| {
            let r = rates(&w[0], &w[1]);
            ThroughputSample {
                time_ms: w[1].time_ms,
                produce_records_per_sec: r.produce_records,
                produce_bytes_per_sec: r.produce_bytes,
                fetch_records_per_sec: r.fetch_records,
                fetch_bytes_per_sec: r.fetch_bytes,
            }
        })
        .collect();
    Json(ThroughputSeries {
        interval_ms: u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        samples: points,
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Rates {
    produce_records: f64,
    produce_bytes: f64,
    fetch_records: f64,
    fetch_bytes: f64,
}

/// Per-second rates between two samples (zero when no time passed).
fn rates(a: &Sample, b: &Sample) -> Rates {
    let seconds = (b.time_ms - a.time_ms) as f64 / 1000.0;
    if seconds <= 0.0 {
        return Rates::default();
    }
    let per_sec = |x: u64, y: u64| y.saturating_sub(x) as f64 / seconds;
    Rates {
        produce_records: per_sec(a.totals.produce_records, b.totals.produce_records),
        produce_bytes: per_sec(a.totals.produce_bytes, b.totals.produce_bytes),
        fetch_records: per_sec(a.totals.fetch_records, b.totals.fetch_records),
        fetch_bytes: per_sec(a.totals.fetch_bytes, b.totals.fetch_bytes),
    }
}

pub(crate) fn high_watermarks(partitions: &[PartitionState]) -> HashMap<TopicPartition, i64> {
    partitions
        .iter()
        .map(|p| (p.tp.clone(), p.high_watermark.0))
        .collect()
}

/// Records between a committed offset and the high watermark; a partition that is gone
/// has no lag to catch up.
pub(crate) fn lag(committed: i64, high_watermark: Option<i64>) -> i64 {
    high_watermark.map_or(0, |h| (h - committed).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_agent::ThroughputTotals;

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let a = Sample {
            time_ms: 1_000,
            totals: ThroughputTotals {
                produce_records: 10,
                produce_bytes: 1_000,
                fetch_records: 0,
                fetch_bytes: 0,
            },
        };
        let b = Sample {
            time_ms: 3_000,
            totals: ThroughputTotals {
                produce_records: 30,
                produce_bytes: 5_000,
                fetch_records: 4,
                fetch_bytes: 0,
            },
        };
        let r = rates(&a, &b);
        assert_eq!(r.produce_records, 10.0);
        assert_eq!(r.produce_bytes, 2_000.0);
        assert_eq!(r.fetch_records, 2.0);
        assert_eq!(rates(&b, &a), Rates::default());
    }

    #[test]
    fn lag_counts_what_is_left_to_read() {
        assert_eq!(lag(3, Some(10)), 7);
        assert_eq!(lag(12, Some(10)), 0);
        assert_eq!(lag(3, None), 0);
    }
}
