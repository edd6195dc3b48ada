//! Talking to a group coordinator: FindCoordinator, the JoinGroup/SyncGroup handshake,
//! heartbeats, LeaveGroup and offset commit/fetch. The consumer's membership state machine
//! lives here; `consumer.rs` drives it from `poll`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::task::JoinHandle;

use crate::admin::topic_name;
use crate::assignor::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    AssignmentStrategy, CONSUMER_PROTOCOL_TYPE,
};
use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::error::ClientError;

/// Kafka error codes the group protocol reacts to.
pub(crate) mod codes {
    pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
}

/// FindCoordinator versions this client builds (v4 batches keys, which we do not need).
const FIND_COORDINATOR_MAX_VERSION: i16 = 3;
/// OffsetFetch versions this client builds (v8 batches groups).
const OFFSET_FETCH_MAX_VERSION: i16 = 7;
/// How many times a coordinator-level retriable error is retried before giving up.
const MAX_COORDINATOR_RETRIES: u32 = 20;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Whether `code` means "ask FindCoordinator again".
pub(crate) fn is_coordinator_error(code: i16) -> bool {
    matches!(
        code,
        codes::COORDINATOR_LOAD_IN_PROGRESS
            | codes::COORDINATOR_NOT_AVAILABLE
            | codes::NOT_COORDINATOR
    )
}

/// Whether `code` means the member must rejoin the group.
pub(crate) fn needs_rejoin(code: i16) -> bool {
    matches!(
        code,
        codes::REBALANCE_IN_PROGRESS | codes::ILLEGAL_GENERATION | codes::UNKNOWN_MEMBER_ID
    )
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Looks up `group`'s coordinator and opens a dedicated connection to it.
///
/// The connection's request timeout is `request_timeout`; callers that send JoinGroup pass
/// one longer than the rebalance timeout, since the coordinator holds JoinGroup that long.
pub(crate) async fn find_coordinator(
    cluster: &Cluster,
    group: &str,
    request_timeout: Duration,
) -> Result<Connection, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let conn = cluster.any_connection().await?;
        let req = FindCoordinatorRequest::default()
            .with_key(str_bytes(group))
            .with_key_type(0);
        let resp = conn.send_capped(req, FIND_COORDINATOR_MAX_VERSION).await?;
        if resp.error_code != 0 {
            if is_coordinator_error(resp.error_code) && attempt < MAX_COORDINATOR_RETRIES {
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
            return Err(ClientError::kafka(
                resp.error_code,
                resp.error_message.as_deref().or(Some(group)),
            ));
        }
        let port = u16::try_from(resp.port).map_err(|_| {
            ClientError::corrupt("FindCoordinator response", format!("port {}", resp.port))
        })?;
        let addr = format!("{}:{port}", resp.host.as_str());
        return Connection::connect_with_timeout(&addr, request_timeout).await;
    }
}

/// Commits `offsets` (topic, partition, next offset to read) for `group`.
///
/// `generation` -1 with an empty `member_id` commits as a standalone (non-member) consumer.
/// The first failing partition's error is returned.
pub(crate) async fn offset_commit(
    conn: &Connection,
    group: &str,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
    offsets: &[(String, i32, i64)],
) -> Result<(), ClientError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (topic, partition, offset) in offsets {
        by_topic.entry(topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(instance_id.map(str_bytes))
        .with_retention_time_ms(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let resp = conn.send(req).await?;
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(ClientError::kafka(
                    p.error_code,
                    Some(&format!("commit {}/{}", t.name.as_str(), p.partition_index)),
                ));
            }
        }
    }
    Ok(())
}

/// Committed offsets of `group`: for `partitions` (None = every committed partition).
///
/// Partitions without a committed offset are left out.
pub(crate) async fn offset_fetch(
    conn: &Connection,
    group: &str,
    partitions: Option<&[(String, i32)]>,
) -> Result<Vec<(String, i32, i64)>, ClientError> {
    let topics = partitions.map(|parts| {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in parts {
            by_topic.entry(t).or_default().push(*p);
        }
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(t))
                    .with_partition_indexes(ps)
            })
            .collect()
    });
    let req = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(topics);
    let resp = conn.send_capped(req, OFFSET_FETCH_MAX_VERSION).await?;
    if resp.error_code != 0 {
        return Err(ClientError::kafka(resp.error_code, Some(group)));
    }
    let mut out = Vec::new();
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(ClientError::kafka(
                    p.error_code,
                    Some(&format!("{}/{}", t.name.as_str(), p.partition_index)),
                ));
            }
            if p.committed_offset >= 0 {
                out.push((
                    t.name.as_str().to_owned(),
                    p.partition_index,
                    p.committed_offset,
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Group-membership settings, taken from the consumer's config.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub(crate) group_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) strategies: Vec<AssignmentStrategy>,
}

impl GroupSettings {
    /// JoinGroup may be held by the coordinator for a whole rebalance timeout.
    fn coordinator_timeout(&self) -> Duration {
        self.request_timeout
            .max(self.rebalance_timeout + Duration::from_secs(5))
    }
}

/// Flags the heartbeat task raises for the consumer to act on at its next `poll`.
#[derive(Debug, Default)]
pub(crate) struct HeartbeatSignals {
    /// The group is rebalancing or our generation is stale: rejoin.
    pub(crate) rejoin: AtomicBool,
    /// The coordinator no longer knows our member id: rejoin as a new member.
    pub(crate) reset_member: AtomicBool,
}

/// One generation's outcome of a successful join.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub(crate) generation: i32,
    pub(crate) assignment: Vec<(String, i32)>,
}

/// A consumer's membership in one group.
pub(crate) struct Membership {
    pub(crate) settings: GroupSettings,
    pub(crate) coordinator: Option<Connection>,
    pub(crate) member_id: String,
    /// -1 until the first successful join.
    pub(crate) generation: i32,
    pub(crate) signals: Arc<HeartbeatSignals>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        // A consumer dropped without `close` stops heartbeating (and does not leave), so
        // the coordinator removes it once its session times out.
        self.stop_heartbeat();
    }
}

impl Membership {
    pub(crate) fn new(settings: GroupSettings) -> Membership {
        Membership {
            settings,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
            signals: Arc::default(),
            heartbeat: None,
        }
    }

    /// Whether we are a member of a current generation (as far as we know).
    pub(crate) fn is_joined(&self) -> bool {
        self.generation >= 0 && !self.signals.rejoin.load(Ordering::Relaxed)
    }

    pub(crate) fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// The coordinator connection, found (again) if unknown or closed.
    pub(crate) async fn coordinator(
        &mut self,
        cluster: &Cluster,
    ) -> Result<Connection, ClientError> {
        if let Some(c) = &self.coordinator {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = find_coordinator(
            cluster,
            &self.settings.group_id,
            self.settings.coordinator_timeout(),
        )
        .await?;
        self.coordinator = Some(c.clone());
        Ok(c)
    }

    /// Joins (or rejoins) the group for `topics` and returns this member's assignment.
    ///
    /// Handles MEMBER_ID_REQUIRED, coordinator moves and rebalances that restart the
    /// handshake. When we are the leader the assignment is computed here from every
    /// member's subscription and the topics' partition counts.
    pub(crate) async fn join(
        &mut self,
        cluster: &Cluster,
        topics: &[String],
    ) -> Result<Joined, ClientError> {
        self.stop_heartbeat();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.signals.rejoin.store(false, Ordering::Relaxed);
            if self.signals.reset_member.swap(false, Ordering::Relaxed) {
                self.member_id.clear();
            }
            let result = self.join_once(cluster, topics).await;
            match result {
                Ok(joined) => {
                    self.generation = joined.generation;
                    self.start_heartbeat();
                    return Ok(joined);
                }
                Err(e) => {
                    let code = e.kafka_code();
                    let retry = match code {
                        Some(codes::MEMBER_ID_REQUIRED) => true,
                        Some(codes::UNKNOWN_MEMBER_ID) => {
                            self.member_id.clear();
                            true
                        }
                        Some(c) if needs_rejoin(c) => true,
                        Some(c) if is_coordinator_error(c) => {
                            self.coordinator = None;
                            true
                        }
                        _ if matches!(e, ClientError::Disconnected | ClientError::Io(_)) => {
                            self.coordinator = None;
                            true
                        }
                        _ => false,
                    };
                    if !retry || attempt >= MAX_COORDINATOR_RETRIES {
                        self.generation = -1;
                        return Err(e);
                    }
                    tracing::debug!(group = %self.settings.group_id, error = %e, "rejoining group");
                    if code != Some(codes::MEMBER_ID_REQUIRED) {
                        tokio::time::sleep(RETRY_BACKOFF).await;
                    }
                }
            }
        }
    }

    async fn join_once(
        &mut self,
        cluster: &Cluster,
        topics: &[String],
    ) -> Result<Joined, ClientError> {
        let conn = self.coordinator(cluster).await?;
        let metadata = encode_subscription(topics)?;
        let s = &self.settings;
        let req = JoinGroupRequest::default()
            .with_group_id(group_id(&s.group_id))
            .with_session_timeout_ms(millis(s.session_timeout))
            .with_rebalance_timeout_ms(millis(s.rebalance_timeout))
            .with_member_id(str_bytes(&self.member_id))
            .with_group_instance_id(s.instance_id.as_deref().map(str_bytes))
            .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
            .with_protocols(
                s.strategies
                    .iter()
                    .map(|st| {
                        JoinGroupRequestProtocol::default()
                            .with_name(StrBytes::from_static_str(st.protocol_name()))
                            .with_metadata(metadata.clone())
                    })
                    .collect(),
            );
        let resp = conn.send(req).await?;
        if resp.error_code != 0 {
            if resp.error_code == codes::MEMBER_ID_REQUIRED {
                self.member_id = resp.member_id.as_str().to_owned();
            }
            return Err(ClientError::kafka(
                resp.error_code,
                Some(&format!("JoinGroup {}", s.group_id)),
            ));
        }
        self.member_id = resp.member_id.as_str().to_owned();
        let generation = resp.generation_id;
        let protocol = resp
            .protocol_name
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let assignments = if resp.leader.as_str() == self.member_id {
            let strategy = AssignmentStrategy::from_protocol_name(&protocol).ok_or_else(|| {
                ClientError::corrupt(
                    "JoinGroup response",
                    format!("unknown protocol {protocol:?}"),
                )
            })?;
            let mut members = Vec::with_capacity(resp.members.len());
            for m in &resp.members {
                members.push((
                    m.member_id.as_str().to_owned(),
                    decode_subscription(&m.metadata)?,
                ));
            }
            let plan = leader_assign(cluster, strategy, &members).await?;
            tracing::debug!(group = %s.group_id, generation, ?plan, "computed assignment as leader");
            let mut out = Vec::with_capacity(plan.len());
            for (member, parts) in plan {
                out.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(encode_assignment(&parts)?),
                );
            }
            out
        } else {
            Vec::new()
        };
        let req = SyncGroupRequest::default()
            .with_group_id(group_id(&s.group_id))
            .with_generation_id(generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_group_instance_id(s.instance_id.as_deref().map(str_bytes))
            .with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
            .with_protocol_name(Some(str_bytes(&protocol)))
            .with_assignments(assignments);
        let resp = conn.send(req).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(
                resp.error_code,
                Some(&format!("SyncGroup {}", s.group_id)),
            ));
        }
        let assignment = decode_assignment(&resp.assignment)?
            .into_iter()
            .filter(|(t, _)| topics.contains(t))
            .collect();
        tracing::debug!(group = %s.group_id, member = %self.member_id, generation, ?assignment, "joined group");
        Ok(Joined {
            generation,
            assignment,
        })
    }

    fn start_heartbeat(&mut self) {
        self.stop_heartbeat();
        let Some(conn) = self.coordinator.clone() else {
            return;
        };
        let task = heartbeat_loop(
            conn,
            self.settings.clone(),
            self.member_id.clone(),
            self.generation,
            self.signals.clone(),
        );
        self.heartbeat = Some(tokio::spawn(task));
    }

    /// Sends LeaveGroup (dynamic members only: a static member keeps its place until its
    /// session times out, as in Kafka) and forgets the membership.
    pub(crate) async fn leave(&mut self, cluster: &Cluster) -> Result<(), ClientError> {
        self.stop_heartbeat();
        if self.member_id.is_empty() || self.settings.instance_id.is_some() {
            return Ok(());
        }
        let conn = self.coordinator(cluster).await?;
        let version = conn.version_for::<LeaveGroupRequest>()?;
        let mut req = LeaveGroupRequest::default().with_group_id(group_id(&self.settings.group_id));
        if version >= 3 {
            req.members =
                vec![MemberIdentity::default().with_member_id(str_bytes(&self.member_id))];
        } else {
            req.member_id = str_bytes(&self.member_id);
        }
        let resp = conn.send_versioned(req, version).await?;
        self.generation = -1;
        let member_id = std::mem::take(&mut self.member_id);
        let code = if resp.error_code != 0 {
            resp.error_code
        } else {
            resp.members
                .iter()
                .map(|m| m.error_code)
                .find(|c| *c != 0)
                .unwrap_or(0)
        };
        if code != 0 {
            return Err(ClientError::kafka(
                code,
                Some(&format!("LeaveGroup {member_id}")),
            ));
        }
        Ok(())
    }
}

/// Heartbeats every `heartbeat_interval` until the coordinator asks us to rejoin.
async fn heartbeat_loop(
    conn: Connection,
    settings: GroupSettings,
    member_id: String,
    generation: i32,
    signals: Arc<HeartbeatSignals>,
) {
    let req = HeartbeatRequest::default()
        .with_group_id(group_id(&settings.group_id))
        .with_generation_id(generation)
        .with_member_id(str_bytes(&member_id))
        .with_group_instance_id(settings.instance_id.as_deref().map(str_bytes));
    loop {
        tokio::time::sleep(settings.heartbeat_interval).await;
        let code = match conn.send(req.clone()).await {
            Ok(resp) => resp.error_code,
            Err(e) => {
                // The next poll finds the coordinator again and rejoins.
                tracing::debug!(group = %settings.group_id, error = %e, "heartbeat failed");
                signals.rejoin.store(true, Ordering::Relaxed);
                return;
            }
        };
        match code {
            0 => {}
            c if c == codes::UNKNOWN_MEMBER_ID || c == codes::FENCED_INSTANCE_ID => {
                tracing::info!(group = %settings.group_id, %member_id, code = c, "member no longer in group");
                signals.reset_member.store(true, Ordering::Relaxed);
                signals.rejoin.store(true, Ordering::Relaxed);
                return;
            }
            c if needs_rejoin(c) || is_coordinator_error(c) => {
                tracing::debug!(group = %settings.group_id, code = c, "group needs rejoin");
                signals.rejoin.store(true, Ordering::Relaxed);
                return;
            }
            c => tracing::warn!(group = %settings.group_id, code = c, "unexpected heartbeat error"),
        }
    }
}

/// The leader's assignment: partition counts from fresh metadata, then the strategy.
async fn leader_assign(
    cluster: &Cluster,
    strategy: AssignmentStrategy,
    members: &[(String, Vec<String>)],
) -> Result<BTreeMap<String, Vec<(String, i32)>>, ClientError> {
    let mut all: Vec<String> = members
        .iter()
        .flat_map(|(_, t)| t.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    let resp = cluster.fetch_metadata(Some(&all)).await?;
    let mut counts = BTreeMap::new();
    for t in &resp.topics {
        let Some(name) = t.name.as_ref() else {
            continue;
        };
        if t.error_code != 0 {
            tracing::warn!(topic = %name.as_str(), code = t.error_code, "subscribed topic unavailable; not assigned");
            continue;
        }
        if let Ok(n) = i32::try_from(t.partitions.len()) {
            counts.insert(name.as_str().to_owned(), n);
        }
    }
    Ok(strategy.assign(members, &counts))
}

/// A duration as whole milliseconds in an i32 protocol field (saturating).
pub(crate) fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
