//! A consumer: Fetch from each partition leader, decode, track positions.
//!
//! Partitions come either from [`Consumer::assign`] (manual, no group) or from
//! [`Consumer::subscribe`], which makes the consumer a member of a Kafka consumer group
//! (`ConsumerConfig::group_id`): `poll` then joins the group, heartbeats in the background,
//! follows rebalances, starts from the group's committed offsets and auto-commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::VersionRange;
use tokio::time::Instant;

use crate::admin::{list_offsets, topic_name, OffsetSpec};
use crate::assignor::AssignmentStrategy;
use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::error::{is_metadata_error, is_retriable_code, ClientError};
use crate::group::{
    find_coordinator, needs_rejoin, offset_commit, offset_fetch, GroupSettings, Membership,
};
use crate::records::{batches_end, decode_fetched, ConsumedRecord};

/// Fetch versions this client builds: v13 names topics by id, which we do not track.
const FETCH_VERSIONS: VersionRange = VersionRange { min: 4, max: 12 };

/// Where a group member starts reading a partition the group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    #[default]
    Latest,
}

/// Callbacks around a group rebalance, called from inside [`Consumer::poll`].
pub trait RebalanceListener: Send {
    /// Before rejoining: these partitions are no longer ours (positions were already
    /// committed if auto-commit is on).
    fn on_partitions_revoked(&mut self, partitions: &[(String, i32)]);
    /// After a rebalance: the partitions this member now reads.
    fn on_partitions_assigned(&mut self, partitions: &[(String, i32)]);
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// How long the broker may hold a fetch waiting for `min_bytes`.
    pub max_wait: Duration,
    /// Bytes the broker should gather before answering early.
    pub min_bytes: i32,
    /// Cap on the bytes of one fetch response.
    pub max_bytes: i32,
    /// Cap on the bytes returned per partition.
    pub partition_max_bytes: i32,
    /// Timeout of each request to a broker.
    pub request_timeout: Duration,
    /// The consumer group; required by [`Consumer::subscribe`] and the commit methods.
    pub group_id: Option<String>,
    /// Static membership: a stable id that lets a restarted consumer take back its
    /// place (and partitions) without a rebalance, if it returns within the session timeout.
    pub group_instance_id: Option<String>,
    /// How long the coordinator waits for a heartbeat before removing this member
    /// (the server accepts 6 s and more).
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// How often the background task heartbeats; well below `session_timeout`.
    pub heartbeat_interval: Duration,
    /// Commit positions every `auto_commit_interval` inside `poll`, before a rebalance and
    /// on `close`.
    pub enable_auto_commit: bool,
    /// See `enable_auto_commit`.
    pub auto_commit_interval: Duration,
    /// Where to start a partition the group has no committed offset for.
    pub auto_offset_reset: AutoOffsetReset,
    /// Assignors offered to the group, most preferred first.
    pub assignment_strategies: Vec<AssignmentStrategy>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            group_id: None,
            group_instance_id: None,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: AutoOffsetReset::Latest,
            assignment_strategies: vec![AssignmentStrategy::Range, AssignmentStrategy::RoundRobin],
        }
    }
}

/// What `subscribe` asked for.
struct Subscription {
    topics: Vec<String>,
    listener: Option<Box<dyn RebalanceListener>>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// Offset of the next record to return.
    position: i64,
    /// From the last fetch response; -1 until then.
    high_watermark: i64,
}

/// Reads assigned partitions. Not shareable across tasks (`poll` takes `&mut self`).
///
/// Dropping a group member without [`Consumer::close`] stops its heartbeats without
/// leaving the group (like a crashed process): the coordinator removes it once its session
/// times out and hands its partitions to the others.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    /// topic → partition → state
    assignment: BTreeMap<String, BTreeMap<i32, PartitionState>>,
    /// Present when `config.group_id` is set.
    membership: Option<Membership>,
    subscription: Option<Subscription>,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assignment", &self.assignment)
            .field(
                "subscription",
                &self.subscription.as_ref().map(|s| &s.topics),
            )
            .finish_non_exhaustive()
    }
}

/// What one fetch brought back for one partition.
struct PartitionResult {
    topic: String,
    partition: i32,
    /// The records, the offset after the last whole batch (past records log compaction
    /// removed from its end), and the high watermark.
    outcome: Result<(Vec<ConsumedRecord>, Option<i64>, i64), ClientError>,
}

impl Consumer {
    /// Connects to `bootstrap` ("host:port" or a comma-separated list).
    pub async fn new(bootstrap: &str, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        let membership = match &config.group_id {
            Some(group) if group.is_empty() => {
                return Err(ClientError::InvalidInput {
                    message: "group_id must not be empty".to_owned(),
                })
            }
            Some(group) => Some(Membership::new(GroupSettings {
                group_id: group.clone(),
                instance_id: config.group_instance_id.clone(),
                session_timeout: config.session_timeout,
                rebalance_timeout: config.rebalance_timeout,
                heartbeat_interval: config.heartbeat_interval,
                request_timeout: config.request_timeout,
                strategies: config.assignment_strategies.clone(),
            })),
            None => None,
        };
        if membership.is_some() && config.assignment_strategies.is_empty() {
            return Err(ClientError::InvalidInput {
                message: "assignment_strategies must not be empty".to_owned(),
            });
        }
        let cluster = Cluster::connect(bootstrap, config.request_timeout).await?;
        Ok(Consumer {
            cluster,
            config,
            assignment: BTreeMap::new(),
            membership,
            subscription: None,
            last_auto_commit: Instant::now(),
        })
    }

    /// Adds `partitions` of `topic` to the assignment, starting at `start` (resolved now
    /// with ListOffsets; a timestamp later than every record resolves to the end).
    /// Re-assigning a partition resets its position.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Vec<i32>,
        start: OffsetSpec,
    ) -> Result<(), ClientError> {
        self.check_not_subscribed()?;
        for partition in partitions {
            let mut offset = list_offsets(&self.cluster, topic, partition, start).await?;
            if offset < 0 && matches!(start, OffsetSpec::Timestamp(_)) {
                // No record at or after the timestamp: start at the end.
                offset = list_offsets(&self.cluster, topic, partition, OffsetSpec::Latest).await?;
            }
            if offset < 0 {
                return Err(ClientError::NotFound {
                    what: format!("offset for {start:?} in {topic}/{partition}"),
                });
            }
            self.seek(topic, partition, offset);
        }
        Ok(())
    }

    /// Assigns every partition of `topic`, starting at `start`.
    pub async fn assign_all(
        &mut self,
        topic: &str,
        start: OffsetSpec,
    ) -> Result<Vec<i32>, ClientError> {
        self.check_not_subscribed()?;
        self.cluster.invalidate(topic);
        let meta = self.cluster.topic_or_refresh(topic).await?;
        let partitions: Vec<i32> = meta.leaders.keys().copied().collect();
        self.assign(topic, partitions.clone(), start).await?;
        Ok(partitions)
    }

    /// Sets the next offset to read from `topic`/`partition` (assigning it if needed).
    ///
    /// When subscribed to a group, only partitions currently assigned by the group can be
    /// moved; seeking another one is ignored (and logged).
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        if self.subscription.is_some() && self.state(topic, partition).is_none() {
            tracing::warn!(
                topic,
                partition,
                "seek on a partition the group did not assign; ignored"
            );
            return;
        }
        self.assignment.entry(topic.to_owned()).or_default().insert(
            partition,
            PartitionState {
                position: offset,
                high_watermark: -1,
            },
        );
    }

    /// Removes `topic`/`partition` from the assignment.
    pub fn unassign(&mut self, topic: &str, partition: i32) {
        if let Some(m) = self.assignment.get_mut(topic) {
            m.remove(&partition);
            if m.is_empty() {
                self.assignment.remove(topic);
            }
        }
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p)))
            .collect()
    }

    /// The offset of the next record `poll` will return for `topic`/`partition`.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.state(topic, partition).map(|s| s.position)
    }

    /// The high watermark reported by the last fetch of `topic`/`partition` (-1 before any).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.state(topic, partition).map(|s| s.high_watermark)
    }

    fn state(&self, topic: &str, partition: i32) -> Option<&PartitionState> {
        self.assignment.get(topic).and_then(|m| m.get(&partition))
    }

    /// Fetches until some records arrive or `timeout` passes (then returns an empty vec).
    ///
    /// Stale leadership is handled by refreshing metadata and trying again;
    /// OFFSET_OUT_OF_RANGE and other non-retriable codes are returned as
    /// [`ClientError::Kafka`].
    ///
    /// When subscribed, `poll` also drives the group: it joins (blocking through the
    /// rebalance, which may outlast `timeout`), rejoins when the heartbeat task reports a
    /// rebalance (committing and revoking first), auto-commits, and returns records only
    /// from the partitions currently assigned.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.assignment.is_empty() && self.subscription.is_none() {
            return Err(ClientError::InvalidInput {
                message: "poll without any assigned partition".to_owned(),
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.subscription.is_some() {
                self.ensure_joined().await?;
            }
            self.maybe_auto_commit().await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if self.assignment.is_empty() {
                // A member with nothing assigned waits for the next rebalance.
                tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
            let records = self.fetch_once(remaining.min(self.config.max_wait)).await?;
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    fn check_not_subscribed(&self) -> Result<(), ClientError> {
        if self.subscription.is_some() {
            return Err(ClientError::InvalidInput {
                message: "assign is not allowed while subscribed to a group".to_owned(),
            });
        }
        Ok(())
    }

    fn membership(&self) -> Result<&Membership, ClientError> {
        self.membership
            .as_ref()
            .ok_or_else(|| ClientError::InvalidInput {
                message: "this needs ConsumerConfig::group_id".to_owned(),
            })
    }

    /// Subscribes to `topics` as a member of `ConsumerConfig::group_id`.
    ///
    /// Nothing is sent yet: the next [`Consumer::poll`] joins the group. Subscribing again
    /// replaces the topic list (and rebalances). `listener` hears about revocations and
    /// assignments. Fails if partitions were assigned manually or no group id is set.
    pub fn subscribe(
        &mut self,
        topics: &[&str],
        listener: Option<Box<dyn RebalanceListener>>,
    ) -> Result<(), ClientError> {
        let membership = self.membership()?;
        if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
            return Err(ClientError::InvalidInput {
                message: "subscribe needs at least one non-empty topic name".to_owned(),
            });
        }
        if self.subscription.is_none() && !self.assignment.is_empty() {
            return Err(ClientError::InvalidInput {
                message: "subscribe is not allowed after assign; unassign first".to_owned(),
            });
        }
        if membership.generation >= 0 {
            membership.signals.rejoin.store(true, Ordering::Relaxed);
        }
        let mut topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();
        self.subscription = Some(Subscription { topics, listener });
        Ok(())
    }

    /// Leaves the group (committing first if auto-commit is on) and drops the assignment.
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        if self.subscription.is_none() {
            return Ok(());
        }
        let result = self.revoke_and_leave().await;
        self.subscription = None;
        result
    }

    /// The subscribed topics (empty when not subscribed).
    pub fn subscription(&self) -> Vec<String> {
        self.subscription
            .as_ref()
            .map(|s| s.topics.clone())
            .unwrap_or_default()
    }

    /// The member id the coordinator gave us, once joined.
    pub fn member_id(&self) -> Option<&str> {
        self.membership
            .as_ref()
            .map(|m| m.member_id.as_str())
            .filter(|m| !m.is_empty())
    }

    /// The group generation we last joined, if any.
    pub fn generation(&self) -> Option<i32> {
        self.membership
            .as_ref()
            .map(|m| m.generation)
            .filter(|g| *g >= 0)
    }

    /// Joins the group if we are not (or no longer) a member of its current generation.
    async fn ensure_joined(&mut self) -> Result<(), ClientError> {
        let Some(membership) = self.membership.as_ref() else {
            return Ok(());
        };
        if membership.is_joined() {
            return Ok(());
        }
        if membership.generation >= 0 {
            self.revoke().await;
        }
        let topics = self.subscription();
        let cluster = self.cluster.clone();
        let Some(membership) = self.membership.as_mut() else {
            return Ok(());
        };
        let joined = membership.join(&cluster, &topics).await?;
        if let Err(e) = self.start_assignment(&joined.assignment).await {
            // Try the whole join again at the next poll.
            if let Some(m) = &self.membership {
                m.signals.rejoin.store(true, Ordering::Relaxed);
            }
            return Err(e);
        }
        if let Some(listener) = self.subscription.as_mut().and_then(|s| s.listener.as_mut()) {
            listener.on_partitions_assigned(&joined.assignment);
        }
        Ok(())
    }

    /// Positions for a fresh assignment: committed offsets, else `auto_offset_reset`.
    async fn start_assignment(&mut self, partitions: &[(String, i32)]) -> Result<(), ClientError> {
        self.assignment.clear();
        self.last_auto_commit = Instant::now();
        if partitions.is_empty() {
            return Ok(());
        }
        let conn = self.coordinator().await?;
        let group = self.membership()?.settings.group_id.clone();
        let committed = offset_fetch(&conn, &group, Some(partitions)).await?;
        let committed: HashMap<(&str, i32), i64> = committed
            .iter()
            .map(|(t, p, o)| ((t.as_str(), *p), *o))
            .collect();
        let reset = match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
        };
        let mut positions = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            let position = match committed.get(&(topic.as_str(), *partition)) {
                Some(o) => *o,
                None => list_offsets(&self.cluster, topic, *partition, reset).await?,
            };
            positions.push((topic, *partition, position));
        }
        for (topic, partition, position) in positions {
            self.assignment.entry(topic.clone()).or_default().insert(
                partition,
                PartitionState {
                    position,
                    high_watermark: -1,
                },
            );
        }
        Ok(())
    }

    /// Before rejoining: commit (if auto-commit), tell the listener, drop the assignment.
    async fn revoke(&mut self) {
        if self.config.enable_auto_commit {
            if let Err(e) = self.commit_positions().await {
                tracing::warn!(error = %e, "commit before rebalance failed");
            }
        }
        let revoked = self.assignment();
        if let Some(listener) = self.subscription.as_mut().and_then(|s| s.listener.as_mut()) {
            listener.on_partitions_revoked(&revoked);
        }
        self.assignment.clear();
    }

    async fn revoke_and_leave(&mut self) -> Result<(), ClientError> {
        if self.membership.as_ref().is_some_and(|m| m.generation >= 0) {
            self.revoke().await;
        }
        self.assignment.clear();
        let cluster = self.cluster.clone();
        match self.membership.as_mut() {
            Some(m) => m.leave(&cluster).await,
            None => Ok(()),
        }
    }

    /// The coordinator connection (found if unknown).
    async fn coordinator(&mut self) -> Result<Connection, ClientError> {
        let cluster = self.cluster.clone();
        match self.membership.as_mut() {
            Some(m) => m.coordinator(&cluster).await,
            None => Err(ClientError::InvalidInput {
                message: "this needs ConsumerConfig::group_id".to_owned(),
            }),
        }
    }

    /// Positions of every assigned partition, as (topic, partition, next offset).
    fn positions(&self) -> Vec<(String, i32, i64)> {
        self.assignment
            .iter()
            .flat_map(|(t, m)| m.iter().map(move |(p, st)| (t.clone(), *p, st.position)))
            .collect()
    }

    /// Commits `offsets` as this member (or as a standalone consumer when not in a group).
    async fn commit(&mut self, offsets: &[(String, i32, i64)]) -> Result<(), ClientError> {
        let conn = self.coordinator().await?;
        let m = self.membership()?;
        let (generation, member_id) = if m.generation >= 0 {
            (m.generation, m.member_id.clone())
        } else {
            (-1, String::new())
        };
        let result = offset_commit(
            &conn,
            &m.settings.group_id,
            generation,
            &member_id,
            m.settings.instance_id.as_deref(),
            offsets,
        )
        .await;
        if let Err(e) = &result {
            match e.kafka_code() {
                Some(c) if needs_rejoin(c) => m.signals.rejoin.store(true, Ordering::Relaxed),
                Some(c) if crate::group::is_coordinator_error(c) => {
                    if let Some(m) = self.membership.as_mut() {
                        m.coordinator = None;
                    }
                }
                _ => {}
            }
        }
        result
    }

    async fn commit_positions(&mut self) -> Result<(), ClientError> {
        let positions = self.positions();
        self.commit(&positions).await
    }

    async fn maybe_auto_commit(&mut self) {
        if !self.config.enable_auto_commit
            || self.membership.is_none()
            || self.assignment.is_empty()
            || self.last_auto_commit.elapsed() < self.config.auto_commit_interval
        {
            return;
        }
        if self.subscription.is_some()
            && !self.membership.as_ref().is_some_and(Membership::is_joined)
        {
            return;
        }
        self.last_auto_commit = Instant::now();
        if let Err(e) = self.commit_positions().await {
            tracing::warn!(error = %e, "auto-commit failed");
        }
    }

    /// Commits the position of every assigned partition and waits for the result.
    ///
    /// A rebalance in progress fails the commit with REBALANCE_IN_PROGRESS (27) or
    /// ILLEGAL_GENERATION (22); the next `poll` rejoins.
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        self.membership()?;
        self.commit_positions().await
    }

    /// Commits the position of every assigned partition in a background task; failures
    /// are logged, not returned.
    pub fn commit_async(&mut self) {
        let Some(m) = self.membership.as_ref() else {
            tracing::warn!("commit_async without a group id; nothing committed");
            return;
        };
        let offsets = self.positions();
        let conn = m.coordinator.clone();
        let cluster = self.cluster.clone();
        let settings = m.settings.clone();
        let (generation, member_id) = if m.generation >= 0 {
            (m.generation, m.member_id.clone())
        } else {
            (-1, String::new())
        };
        let timeout = self.config.request_timeout;
        tokio::spawn(async move {
            let result = async {
                let conn = match conn.filter(|c| !c.is_closed()) {
                    Some(c) => c,
                    None => find_coordinator(&cluster, &settings.group_id, timeout).await?,
                };
                offset_commit(
                    &conn,
                    &settings.group_id,
                    generation,
                    &member_id,
                    settings.instance_id.as_deref(),
                    &offsets,
                )
                .await
            }
            .await;
            match result {
                Ok(()) => tracing::debug!(group = %settings.group_id, "async commit done"),
                Err(e) => {
                    tracing::warn!(group = %settings.group_id, error = %e, "async commit failed")
                }
            }
        });
    }

    /// Commits the given (topic, partition, next offset to read) triples.
    pub async fn commit_offsets_sync(
        &mut self,
        offsets: &[(&str, i32, i64)],
    ) -> Result<(), ClientError> {
        self.membership()?;
        let offsets: Vec<(String, i32, i64)> = offsets
            .iter()
            .map(|(t, p, o)| ((*t).to_owned(), *p, *o))
            .collect();
        self.commit(&offsets).await
    }

    /// The group's committed offset for `topic`/`partition`, if any.
    pub async fn committed(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, ClientError> {
        self.membership()?;
        let conn = self.coordinator().await?;
        let group = self.membership()?.settings.group_id.clone();
        let found = offset_fetch(&conn, &group, Some(&[(topic.to_owned(), partition)])).await?;
        Ok(found
            .into_iter()
            .find(|(t, p, _)| t == topic && *p == partition)
            .map(|(_, _, o)| o))
    }

    /// Commits (if auto-commit is on), leaves the group and stops heartbeating.
    ///
    /// A static member (`group_instance_id`) does not send LeaveGroup, so a restart within
    /// the session timeout keeps its partitions without a rebalance.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.subscription.is_some() {
            return self.revoke_and_leave().await;
        }
        if self.membership.is_some()
            && self.config.enable_auto_commit
            && !self.assignment.is_empty()
        {
            return self.commit_positions().await;
        }
        Ok(())
    }

    /// Moves `topic`/`partition` to the first offset whose timestamp is at least `timestamp`
    /// (ms since the epoch), or to the end if there is none.
    pub async fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(), ClientError> {
        let mut offset = list_offsets(
            &self.cluster,
            topic,
            partition,
            OffsetSpec::Timestamp(timestamp),
        )
        .await?;
        if offset < 0 {
            offset = list_offsets(&self.cluster, topic, partition, OffsetSpec::Latest).await?;
        }
        self.seek(topic, partition, offset);
        Ok(())
    }

    /// For each (topic, partition, timestamp): the first offset whose timestamp is at least
    /// `timestamp`, or `None` if every record is older.
    pub async fn offsets_for_times(
        &self,
        query: &[(&str, i32, i64)],
    ) -> Result<Vec<(String, i32, Option<i64>)>, ClientError> {
        let mut out = Vec::with_capacity(query.len());
        for (topic, partition, ts) in query {
            let offset =
                list_offsets(&self.cluster, topic, *partition, OffsetSpec::Timestamp(*ts)).await?;
            out.push((
                (*topic).to_owned(),
                *partition,
                (offset >= 0).then_some(offset),
            ));
        }
        Ok(out)
    }

    /// One round of Fetch requests, one per leader, in parallel.
    async fn fetch_once(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let mut by_leader: BTreeMap<i32, Vec<(String, i32, i64)>> = BTreeMap::new();
        let mut leaderless = false;
        for (topic, parts) in &self.assignment {
            for (partition, st) in parts {
                match self.cluster.leader(topic, *partition).await {
                    Ok(l) if l >= 0 => by_leader.entry(l).or_default().push((
                        topic.clone(),
                        *partition,
                        st.position,
                    )),
                    Ok(_) => leaderless = true,
                    Err(e) if e.is_retriable() => {
                        self.cluster.invalidate(topic);
                        leaderless = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if by_leader.is_empty() {
            if leaderless {
                tokio::time::sleep(max_wait.min(Duration::from_millis(100))).await;
            }
            return Ok(Vec::new());
        }
        let fetches = by_leader.into_iter().map(|(leader, parts)| {
            let cluster = self.cluster.clone();
            let config = self.config.clone();
            async move {
                match cluster.broker(leader).await {
                    Ok(conn) => fetch_from(&conn, &config, max_wait, parts).await,
                    Err(e) => Err((e, parts)),
                }
            }
        });
        let mut out = Vec::new();
        let mut first_error = None;
        for result in join_all(fetches).await {
            let results = match result {
                Ok(r) => r,
                Err((e, parts)) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed; refreshing metadata");
                    for (topic, _, _) in parts {
                        self.cluster.invalidate(&topic);
                    }
                    continue;
                }
                Err((e, _)) => return Err(e),
            };
            for r in results {
                match r.outcome {
                    Ok((records, end, high_watermark)) => {
                        let Some(st) = self
                            .assignment
                            .get_mut(&r.topic)
                            .and_then(|m| m.get_mut(&r.partition))
                        else {
                            continue;
                        };
                        st.high_watermark = high_watermark;
                        for rec in records {
                            // A batch may start before the position; skip what we had.
                            if rec.offset < st.position {
                                continue;
                            }
                            st.position = rec.offset.saturating_add(1);
                            out.push(rec);
                        }
                        // A compacted batch may end past its last record: continue after it,
                        // as Kafka's consumers do, not inside it.
                        if let Some(end) = end {
                            st.position = st.position.max(end);
                        }
                    }
                    Err(e) => {
                        let code = e.kafka_code();
                        if code.is_some_and(|c| is_metadata_error(c) || is_retriable_code(c)) {
                            self.cluster.invalidate(&r.topic);
                        } else if first_error.is_none() {
                            first_error = Some(e);
                        }
                    }
                }
            }
        }
        match first_error {
            // Hand back what we got; the error repeats on the next poll.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

/// Sends one Fetch to `conn` for `parts` and decodes each partition's records.
async fn fetch_from(
    conn: &Connection,
    config: &ConsumerConfig,
    max_wait: Duration,
    parts: Vec<(String, i32, i64)>,
) -> Result<Vec<PartitionResult>, (ClientError, Vec<(String, i32, i64)>)> {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (topic, partition, position) in &parts {
        topics.entry(topic).or_default().push(
            FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(*position)
                .with_partition_max_bytes(config.partition_max_bytes),
        );
    }
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(config.min_bytes)
        .with_max_bytes(config.max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let resp: FetchResponse = match conn.send_capped(req, FETCH_VERSIONS.max).await {
        Ok(r) => r,
        Err(e) => return Err((e, parts)),
    };
    if resp.error_code != 0 {
        return Err((ClientError::kafka(resp.error_code, Some("Fetch")), parts));
    }
    let wanted: HashMap<(&str, i32), ()> = parts
        .iter()
        .map(|(t, p, _)| ((t.as_str(), *p), ()))
        .collect();
    let mut results = Vec::new();
    for t in resp.responses {
        let topic = t.topic.as_str().to_owned();
        for p in t.partitions {
            if !wanted.contains_key(&(topic.as_str(), p.partition_index)) {
                continue;
            }
            let outcome = if p.error_code != 0 {
                Err(ClientError::kafka(
                    p.error_code,
                    Some(&format!("{topic}/{}", p.partition_index)),
                ))
            } else {
                match p.records {
                    Some(bytes) => {
                        let end = batches_end(&bytes);
                        decode_fetched(&topic, p.partition_index, bytes)
                            .map(|recs| (recs, end, p.high_watermark))
                    }
                    None => Ok((Vec::new(), None, p.high_watermark)),
                }
            };
            results.push(PartitionResult {
                topic: topic.clone(),
                partition: p.partition_index,
                outcome,
            });
        }
    }
    Ok(results)
}
