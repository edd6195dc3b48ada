//! The group coordinator's state machine, after Kafka's classic protocol:
//!
//! ```text
//! Empty ──join──► PreparingRebalance ──all joined / timeout──► CompletingRebalance
//!   ▲                   ▲                                          │ leader syncs
//!   └── last member ────┴──── join, leave, session expiry ◄── Stable ◄┘
//! ```
//!
//! A rebalance waits until every known member has rejoined (or the rebalance timeout has
//! passed, removing those that did not), bumps the generation, picks the protocol every
//! member supports, and answers all joins at once; the leader receives the members'
//! subscriptions and hands out the assignment at sync. Membership is in memory; committed
//! offsets are in the metadata store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use streamhouse_metadata::{GroupOffset, MetadataStore};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::GroupError;

/// Coordinator settings (Kafka's `group.*` broker configs).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// How long the first rebalance of an empty group waits for more members.
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// How often session expiry and rebalance deadlines are checked.
    pub tick: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            tick: Duration::from_millis(100),
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty on a member's first join.
    pub member_id: String,
    /// Static membership (KIP-345).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// -1 (JoinGroup v0) means "the session timeout".
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (protocol name, member metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED with its id (KIP-394).
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in the JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A successful JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// All members, for the leader only; empty for the others.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup request.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The leader's assignment per member id; empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// Kafka's state names: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

type JoinWaiter = oneshot::Sender<Result<JoinResponse, GroupError>>;
type SyncWaiter = oneshot::Sender<Result<Bytes, GroupError>>;

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Joined in the current rebalance round.
    joined: bool,
    /// Join order, to pick a leader deterministically.
    order: u64,
    join_waiter: Option<JoinWaiter>,
    sync_waiter: Option<SyncWaiter>,
}

impl Member {
    fn fail(&mut self, error: impl Fn() -> GroupError) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(Err(error()));
        }
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(Err(error()));
        }
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    id: String,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until the instant given.
    pending: HashMap<String, Instant>,
    /// A rebalance completes at this instant at the latest…
    rebalance_deadline: Option<Instant>,
    /// …and not before this one (the initial delay of an empty group).
    not_before: Option<Instant>,
    next_order: u64,
}

impl Group {
    fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            not_before: None,
            next_order: 0,
        }
    }

    fn member_for_instance(&self, instance: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone())
    }

    fn remove_member(&mut self, member_id: &str, error: impl Fn() -> GroupError) {
        if let Some(mut m) = self.members.remove(member_id) {
            m.fail(error);
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    /// Starts a rebalance: every member must join again.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == State::CompletingRebalance {
            let id = self.id.clone();
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::RebalanceInProgress { group: id.clone() }));
                }
            }
        }
        let max_rebalance = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        if self.state == State::Empty {
            let delay = initial_delay.min(max_rebalance.max(Duration::from_millis(1)));
            self.not_before = Some(now + delay);
            self.rebalance_deadline = Some(now + max_rebalance.max(delay));
        } else {
            self.not_before = None;
            self.rebalance_deadline = Some(now + max_rebalance);
        }
        for m in self.members.values_mut() {
            m.joined = false;
        }
        debug!(group = %self.id, generation = self.generation, "rebalance started");
        self.state = State::PreparingRebalance;
    }

    /// Completes the join phase if every member has rejoined (after the initial delay) or
    /// the deadline has passed.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.joined);
        let delay_over = self.not_before.is_none_or(|t| now >= t);
        let deadline_passed = self.rebalance_deadline.is_some_and(|t| now >= t);
        if (all_joined && delay_over) || deadline_passed {
            self.complete_join();
        }
    }

    fn complete_join(&mut self) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.joined)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let group = self.id.clone();
            let member = id.clone();
            self.remove_member(&id, || GroupError::UnknownMember {
                group: group.clone(),
                member_id: member.clone(),
            });
        }
        self.generation = self.generation.wrapping_add(1);
        self.rebalance_deadline = None;
        self.not_before = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol = self.select_protocol();
        let protocol = self.protocol.clone().unwrap_or_default();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.order)
                .map(|(id, _)| id.clone());
        }
        let leader = self.leader.clone().unwrap_or_default();
        let mut everyone: Vec<(u64, JoinedMember)> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    m.order,
                    JoinedMember {
                        member_id: id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    },
                )
            })
            .collect();
        everyone.sort_by_key(|(order, _)| *order);
        let everyone: Vec<JoinedMember> = everyone.into_iter().map(|(_, m)| m).collect();
        self.state = State::CompletingRebalance;
        info!(group = %self.id, generation = self.generation, members = self.members.len(), %protocol, %leader, "rebalance completed");
        for (id, m) in self.members.iter_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(Ok(JoinResponse {
                    generation_id: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Option<Vec<String>> = None;
        for m in self.members.values() {
            let names: Vec<String> = m.protocols.iter().map(|(n, _)| n.clone()).collect();
            candidates = Some(match candidates {
                None => names,
                Some(c) => c.into_iter().filter(|n| names.contains(n)).collect(),
            });
        }
        let candidates = candidates.unwrap_or_default();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        // Ties go to the earliest candidate, so the choice is deterministic.
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(c.as_str()).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .cloned()
    }

    /// Whether `protocols` could join: same protocol type and one protocol in common.
    fn compatible(
        &self,
        member_id: &str,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .map(|(_, m)| m)
            .collect();
        if others.is_empty() {
            return !protocols.is_empty();
        }
        others.iter().all(|m| m.protocol_type == protocol_type)
            && protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    fn describe(&self) -> GroupDescription {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut members: Vec<(u64, MemberDescription)> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    m.order,
                    MemberDescription {
                        member_id: id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: m.metadata_for(&protocol),
                        assignment: m.assignment.clone(),
                    },
                )
            })
            .collect();
        members.sort_by_key(|(order, _)| *order);
        GroupDescription {
            group_id: self.id.clone(),
            state: self.state.name(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: if self.state == State::Stable {
                protocol
            } else {
                String::new()
            },
            members: members.into_iter().map(|(_, m)| m).collect(),
        }
    }
}

/// The consumer group coordinator of one agent.
pub struct GroupCoordinator {
    config: GroupConfig,
    metadata: Arc<dyn MetadataStore>,
    groups: Mutex<HashMap<String, Group>>,
    /// Which groups this coordinator is responsible for (all, until one is set).
    placement: Mutex<Option<Placement>>,
}

/// Whether this agent coordinates a group: several agents share the groups.
pub type Placement = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("groups", &self.lock().len())
            .finish()
    }
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig, metadata: Arc<dyn MetadataStore>) -> Arc<GroupCoordinator> {
        Arc::new(GroupCoordinator {
            config,
            metadata,
            groups: Mutex::new(HashMap::new()),
            placement: Mutex::new(None),
        })
    }

    /// Shares the groups with other agents: requests for a group `owns` refuses get
    /// NOT_COORDINATOR (the client finds the coordinator again), and what this agent knew of
    /// such a group is dropped, its waiting members told the same.
    pub fn place_with(&self, owns: Placement) {
        *self.placement.lock().unwrap_or_else(|e| e.into_inner()) = Some(owns);
    }

    fn owns(&self, group_id: &str) -> bool {
        let placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        placement.as_ref().is_none_or(|owns| owns(group_id))
    }

    fn check_owned(&self, group_id: &str) -> Result<(), GroupError> {
        if self.owns(group_id) {
            return Ok(());
        }
        let moved = || GroupError::NotCoordinator {
            group: group_id.to_string(),
        };
        if let Some(mut group) = self.lock().remove(group_id) {
            info!(
                group = group_id,
                "group coordinated elsewhere now; dropping its state"
            );
            for m in group.members.values_mut() {
                m.fail(moved);
            }
        }
        Err(moved())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires silent members and overdue rebalances until `shutdown`; then answers every
    /// waiting join and sync so that no request hangs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.tick) => self.tick(Instant::now()),
                _ = shutdown.cancelled() => break,
            }
        }
        let mut groups = self.lock();
        for group in groups.values_mut() {
            for m in group.members.values_mut() {
                m.fail(|| GroupError::ShuttingDown);
            }
        }
    }

    fn tick(&self, now: Instant) {
        let mut groups = self.lock();
        for group in groups.values_mut() {
            group.pending.retain(|_, until| *until > now);
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    info!(group = %group.id, member = %id, "member session expired");
                    let (g, member) = (group.id.clone(), id.clone());
                    group.remove_member(id, || GroupError::UnknownMember {
                        group: g.clone(),
                        member_id: member.clone(),
                    });
                }
                if matches!(group.state, State::Stable | State::CompletingRebalance) {
                    group.prepare_rebalance(now, self.config.initial_rebalance_delay);
                }
            }
            group.try_complete_join(now);
        }
    }

    /// JoinGroup: resolves when the join phase of the rebalance completes.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        self.check_owned(&req.group_id)?;
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let session = u64::try_from(req.session_timeout_ms).unwrap_or(0);
        let (min, max) = (
            self.config.min_session_timeout.as_millis() as u64,
            self.config.max_session_timeout.as_millis() as u64,
        );
        if session < min || session > max {
            return Err(GroupError::InvalidSessionTimeout {
                got: req.session_timeout_ms,
                min,
                max,
            });
        }
        let session_timeout = Duration::from_millis(session);
        let rebalance_timeout = u64::try_from(req.rebalance_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(session_timeout);
        let now = Instant::now();
        let waiting = {
            let mut groups = self.lock();
            let group = groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(&req.group_id));
            if !group.compatible(&req.member_id, &req.protocol_type, &req.protocols) {
                return Err(GroupError::InconsistentProtocol {
                    group: req.group_id.clone(),
                });
            }
            let member_id = if req.member_id.is_empty() {
                let prefix = if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                };
                let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
                if let Some(instance) = &req.group_instance_id {
                    // A static member restarting: its previous incarnation is fenced.
                    if let Some(old) = group.member_for_instance(instance) {
                        let instance = instance.clone();
                        group.remove_member(&old, || GroupError::FencedInstance {
                            instance_id: instance.clone(),
                        });
                    }
                } else if req.require_known_member_id {
                    group.pending.insert(new_id.clone(), now + session_timeout);
                    return Err(GroupError::MemberIdRequired { member_id: new_id });
                }
                new_id
            } else {
                // A replaced static incarnation is fenced before anything else.
                if let Some(instance) = &req.group_instance_id {
                    if group
                        .member_for_instance(instance)
                        .is_some_and(|id| id != req.member_id)
                    {
                        return Err(GroupError::FencedInstance {
                            instance_id: instance.clone(),
                        });
                    }
                }
                let known = group.members.contains_key(&req.member_id)
                    || group.pending.remove(&req.member_id).is_some();
                if !known {
                    return Err(GroupError::UnknownMember {
                        group: req.group_id.clone(),
                        member_id: req.member_id.clone(),
                    });
                }
                req.member_id.clone()
            };

            if group.protocol_type.is_none() || group.members.is_empty() {
                group.protocol_type = Some(req.protocol_type.clone());
            }
            let order = group.next_order;
            group.next_order += 1;
            let (tx, rx) = oneshot::channel();
            let member = group
                .members
                .entry(member_id.clone())
                .or_insert_with(|| Member {
                    instance_id: None,
                    client_id: String::new(),
                    client_host: String::new(),
                    session_timeout,
                    rebalance_timeout,
                    protocol_type: String::new(),
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_seen: now,
                    joined: false,
                    order,
                    join_waiter: None,
                    sync_waiter: None,
                });
            member.instance_id = req.group_instance_id.clone();
            member.client_id = req.client_id.clone();
            member.client_host = req.client_host.clone();
            member.session_timeout = session_timeout;
            member.rebalance_timeout = rebalance_timeout;
            member.protocol_type = req.protocol_type.clone();
            member.protocols = req.protocols.clone();
            member.last_seen = now;
            member.join_waiter = Some(tx);
            // A join always starts (or takes part in) a rebalance.
            if group.state != State::PreparingRebalance {
                group.prepare_rebalance(now, self.config.initial_rebalance_delay);
            }
            if let Some(member) = group.members.get_mut(&member_id) {
                member.joined = true;
            }
            // The deadline covers the slowest member's rebalance timeout.
            let deadline = now + rebalance_timeout;
            if group.rebalance_deadline.is_none_or(|d| d < deadline) && group.not_before.is_none() {
                group.rebalance_deadline = Some(deadline);
            }
            group.try_complete_join(now);
            rx
        };
        waiting.await.map_err(|_| GroupError::ShuttingDown)?
    }

    /// SyncGroup: the leader hands out the assignment; followers wait for it.
    pub async fn sync(&self, req: SyncRequest) -> Result<Bytes, GroupError> {
        self.check_owned(&req.group_id)?;
        let waiting = {
            let mut groups = self.lock();
            let group = groups
                .get_mut(&req.group_id)
                .ok_or_else(|| unknown(&req.group_id, &req.member_id))?;
            check_member(group, &req.member_id, req.group_instance_id.as_deref())?;
            if req.generation_id != group.generation {
                return Err(GroupError::IllegalGeneration {
                    got: req.generation_id,
                    current: group.generation,
                });
            }
            match group.state {
                State::PreparingRebalance => {
                    return Err(GroupError::RebalanceInProgress {
                        group: req.group_id.clone(),
                    })
                }
                State::Empty => return Err(unknown(&req.group_id, &req.member_id)),
                State::Stable => {
                    let member = group
                        .members
                        .get_mut(&req.member_id)
                        .ok_or_else(|| unknown(&req.group_id, &req.member_id))?;
                    member.last_seen = Instant::now();
                    return Ok(member.assignment.clone());
                }
                State::CompletingRebalance => {}
            }
            let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
            let (tx, rx) = oneshot::channel();
            if let Some(member) = group.members.get_mut(&req.member_id) {
                member.last_seen = Instant::now();
                member.sync_waiter = Some(tx);
            }
            if is_leader {
                let assignments: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                for (id, member) in group.members.iter_mut() {
                    member.assignment = assignments.get(id).cloned().unwrap_or_default();
                    if let Some(w) = member.sync_waiter.take() {
                        let _ = w.send(Ok(member.assignment.clone()));
                    }
                }
                group.state = State::Stable;
                info!(group = %group.id, generation = group.generation, "group is stable");
            }
            rx
        };
        waiting.await.map_err(|_| GroupError::ShuttingDown)?
    }

    /// Heartbeat: keeps the member's session alive and tells it about rebalances.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        self.check_owned(group_id)?;
        let mut groups = self.lock();
        let group = groups
            .get_mut(group_id)
            .ok_or_else(|| unknown(group_id, member_id))?;
        check_member(group, member_id, group_instance_id)?;
        if let Some(m) = group.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        if group.state == State::PreparingRebalance {
            return Err(GroupError::RebalanceInProgress {
                group: group_id.to_string(),
            });
        }
        if generation_id != group.generation {
            return Err(GroupError::IllegalGeneration {
                got: generation_id,
                current: group.generation,
            });
        }
        Ok(())
    }

    /// LeaveGroup: removes members (by member id, or by instance id for static members);
    /// one result per member.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        if self.check_owned(group_id).is_err() {
            let moved = || GroupError::NotCoordinator {
                group: group_id.to_string(),
            };
            return members.iter().map(|_| Err(moved())).collect();
        }
        let now = Instant::now();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return members
                .iter()
                .map(|(m, _)| Err(unknown(group_id, m)))
                .collect();
        };
        let mut results = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance) in members {
            let id = match (member_id.is_empty(), instance) {
                (true, Some(instance)) => group.member_for_instance(instance),
                _ => group
                    .members
                    .contains_key(member_id)
                    .then(|| member_id.clone()),
            };
            let Some(id) = id else {
                results.push(Err(unknown(group_id, member_id)));
                continue;
            };
            if let Some(instance) = instance {
                if group
                    .members
                    .get(&id)
                    .and_then(|m| m.instance_id.as_deref())
                    != Some(instance.as_str())
                {
                    results.push(Err(GroupError::FencedInstance {
                        instance_id: instance.clone(),
                    }));
                    continue;
                }
            }
            info!(group = %group_id, member = %id, "member left");
            let (g, m) = (group_id.to_string(), id.clone());
            group.remove_member(&id, || GroupError::UnknownMember {
                group: g.clone(),
                member_id: m.clone(),
            });
            removed = true;
            results.push(Ok(()));
        }
        if removed && matches!(group.state, State::Stable | State::CompletingRebalance) {
            group.prepare_rebalance(now, Duration::ZERO);
        }
        group.try_complete_join(now);
        results
    }

    /// OffsetCommit: by a member of the current generation, or by a standalone consumer
    /// (generation -1, no member id) of a group without members.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: &[GroupOffset],
    ) -> Result<(), GroupError> {
        self.check_owned(group_id)?;
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        {
            let mut groups = self.lock();
            let group = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id));
            if generation_id < 0 && member_id.is_empty() {
                if !group.members.is_empty() {
                    return Err(unknown(group_id, member_id));
                }
            } else {
                check_member(group, member_id, group_instance_id)?;
                if generation_id != group.generation {
                    return Err(GroupError::IllegalGeneration {
                        got: generation_id,
                        current: group.generation,
                    });
                }
                if group.state == State::CompletingRebalance {
                    return Err(GroupError::RebalanceInProgress {
                        group: group_id.to_string(),
                    });
                }
                if let Some(m) = group.members.get_mut(member_id) {
                    m.last_seen = Instant::now();
                }
            }
        }
        self.metadata
            .commit_group_offsets(group_id, offsets)
            .await?;
        Ok(())
    }

    /// OffsetFetch: everything the group committed.
    pub async fn fetch_offsets(&self, group_id: &str) -> Result<Vec<GroupOffset>, GroupError> {
        self.check_owned(group_id)?;
        Ok(self.metadata.fetch_group_offsets(group_id).await?)
    }

    /// DescribeGroups: a group unknown here and without offsets is reported as Dead.
    pub async fn describe(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        self.check_owned(group_id)?;
        if let Some(group) = self.lock().get(group_id) {
            return Ok(group.describe());
        }
        let has_offsets = !self
            .metadata
            .fetch_group_offsets(group_id)
            .await?
            .is_empty();
        Ok(GroupDescription {
            group_id: group_id.to_string(),
            state: if has_offsets { "Empty" } else { "Dead" },
            protocol_type: if has_offsets {
                "consumer".to_string()
            } else {
                String::new()
            },
            protocol: String::new(),
            members: Vec::new(),
        })
    }

    /// ListGroups: groups with members here, and groups that only have committed offsets.
    pub async fn list(&self) -> Result<Vec<GroupListing>, GroupError> {
        let stored = self.metadata.list_offset_groups().await?;
        let groups = self.lock();
        let mut listed: Vec<GroupListing> = groups
            .values()
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g
                    .protocol_type
                    .clone()
                    .unwrap_or_else(|| "consumer".to_string()),
                state: g.state.name(),
            })
            .collect();
        for id in stored {
            if !groups.contains_key(&id) {
                listed.push(GroupListing {
                    group_id: id,
                    protocol_type: "consumer".to_string(),
                    state: State::Empty.name(),
                });
            }
        }
        // Each agent lists the groups it coordinates; clients merge the lists of all agents.
        listed.retain(|g| self.owns(&g.group_id));
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(listed)
    }

    /// DeleteGroups: only groups without members; their committed offsets go too.
    pub async fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        self.check_owned(group_id)?;
        let known_here = {
            let mut groups = self.lock();
            match groups.get(group_id) {
                Some(g) if !g.members.is_empty() => {
                    return Err(GroupError::NonEmptyGroup {
                        group: group_id.to_string(),
                    })
                }
                Some(_) => groups.remove(group_id).is_some(),
                None => false,
            }
        };
        let had_offsets = self.metadata.delete_group_offsets(group_id).await?;
        if known_here || had_offsets {
            Ok(())
        } else {
            Err(GroupError::GroupNotFound {
                group: group_id.to_string(),
            })
        }
    }
}

fn unknown(group: &str, member_id: &str) -> GroupError {
    GroupError::UnknownMember {
        group: group.to_string(),
        member_id: member_id.to_string(),
    }
}

/// A static member whose instance id now belongs to another member id is fenced (checked
/// first, as Kafka does: a replaced incarnation must stop, not rejoin); otherwise the member
/// must exist and present its own instance id.
fn check_member(group: &Group, member_id: &str, instance: Option<&str>) -> Result<(), GroupError> {
    if let Some(instance) = instance {
        if group
            .member_for_instance(instance)
            .is_some_and(|current| current != member_id)
        {
            return Err(GroupError::FencedInstance {
                instance_id: instance.to_string(),
            });
        }
    }
    let member = group
        .members
        .get(member_id)
        .ok_or_else(|| unknown(&group.id, member_id))?;
    if let Some(instance) = instance {
        if member.instance_id.as_deref() != Some(instance) {
            return Err(GroupError::FencedInstance {
                instance_id: instance.to_string(),
            });
        }
    }
    Ok(())
}
