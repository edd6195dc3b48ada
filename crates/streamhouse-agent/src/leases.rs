//! Partition leases: acquiring (a new epoch), renewing (same epoch), handing off and
//! releasing, and the balance rounds that spread leases over the live agents of a group.
//!
//! A lease the store no longer confirms is dropped at once: batches pending for it are
//! answered NOT_LEADER at the next flush, and even a commit already on its way is refused by
//! the store's epoch check.
//!
//! Balancing is done by every agent on its own, from what the store says (live agents by
//! heartbeat on the store's clock, current leases), with no coordinator: with `n` partitions
//! in the group and `k` live agents, an agent holds between `floor(n/k)` and `ceil(n/k)`.
//! An agent over its share hands partitions off gracefully (stops accepting them, flushes,
//! releases); an agent under it takes free or expired leases. Held leases are never taken
//! away by force, so assignment is sticky, and an acquisition always starts a new epoch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamhouse_metadata::{
    AgentInfo, LeaseEpoch, MetadataError, Offset, PartitionState, TopicConfig, TopicPartition,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{error_chain, Agent, RETRY_PAUSE};
use crate::error::AgentError;
use crate::producers::Producers;

/// A partition this agent leads.
#[derive(Debug)]
pub(crate) struct Led {
    pub(crate) epoch: LeaseEpoch,
    /// The committed high watermark: the next offset to assign.
    pub(crate) next_offset: Offset,
    pub(crate) log_start_offset: Offset,
    pub(crate) config: Arc<TopicConfig>,
    /// Set after an ambiguous commit: reload `next_offset` (and the producers' committed
    /// state) before the next flush.
    pub(crate) stale: bool,
    /// Being handed off: appends are refused (NOT_LEADER) while what is pending is flushed,
    /// then the lease is released.
    pub(crate) draining: bool,
    /// The idempotent producers' sequence state, committed and pending.
    pub(crate) producers: Producers,
    /// Log compaction: when the earliest delete horizon of a kept tombstone passes (0 until
    /// the first pass under this lease, which looks whatever the dirty ratio).
    pub(crate) clean_due_ms: i64,
}

/// What one balance round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Partitions to hand off, because this agent holds more than its share.
    pub(crate) release: Vec<TopicPartition>,
    /// Free partitions to try, in order, until `want` are acquired.
    pub(crate) acquire: Vec<TopicPartition>,
    pub(crate) want: usize,
    pub(crate) share: (usize, usize),
}

/// The balance decision, a pure function of what the store reported: `group` are the live
/// agents of this agent's group (`me` among them), `partitions` the group's partitions with
/// their current leases, `mine` what this agent leads, `overdue` the partitions that have
/// stayed free for several rounds.
///
/// An overdue partition is taken even beyond the fair share: a live agent under its share
/// would have taken it within a round, so the agents it is waiting for are likely dead
/// (still counted live until their heartbeats age out). Serving it now beats balance; the
/// rounds after hand off the excess once the live agents are known again.
pub(crate) fn plan(
    me: &str,
    group: &[String],
    partitions: &[PartitionState],
    mine: &HashSet<TopicPartition>,
    overdue: &HashSet<TopicPartition>,
) -> Plan {
    let n = partitions.len();
    let k = group.len().max(1);
    let (floor, ceil) = (n / k, n.div_ceil(k));
    let mut counts: HashMap<&str, usize> = group.iter().map(|a| (a.as_str(), 0)).collect();
    for p in partitions {
        if let Some(l) = &p.lease {
            if let Some(c) = counts.get_mut(l.holder.0.as_str()) {
                *c += 1;
            }
        }
    }
    counts.insert(me, mine.len());
    let held = mine.len();
    let mut release_count = 0;
    if held > ceil {
        release_count = held - ceil;
    } else if held > floor {
        // Someone is below the floor while nothing is free for them: the agents above the
        // floor each give up their part of the deficit.
        let free = partitions
            .iter()
            .filter(|p| p.lease.as_ref().is_none_or(|l| l.holder.0 == me))
            .filter(|p| !mine.contains(&p.tp))
            .count();
        let deficit: usize = counts.values().map(|c| floor.saturating_sub(*c)).sum();
        let donors = counts.values().filter(|c| **c > floor).count().max(1);
        if deficit > free {
            release_count = (deficit - free).div_ceil(donors).min(held - floor);
        }
    }
    let mut plan = Plan {
        share: (floor, ceil),
        ..Plan::default()
    };
    if release_count > 0 {
        // Give up partitions of the topics this agent holds most of, last partitions first.
        let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
        for tp in mine {
            *per_topic.entry(tp.topic.as_str()).or_default() += 1;
        }
        let mut candidates: Vec<&TopicPartition> = mine.iter().collect();
        candidates.sort_by(|a, b| {
            per_topic[b.topic.as_str()]
                .cmp(&per_topic[a.topic.as_str()])
                .then_with(|| b.cmp(a))
        });
        plan.release = candidates
            .into_iter()
            .take(release_count)
            .cloned()
            .collect();
        return plan;
    }
    if held < ceil {
        // Free: no live lease, or a lease in this agent's name that it does not lead (an
        // earlier incarnation's, after a restart): acquiring takes it over with epoch + 1.
        let mut free: Vec<TopicPartition> = partitions
            .iter()
            .filter(|p| p.lease.as_ref().is_none_or(|l| l.holder.0 == me))
            .filter(|p| !mine.contains(&p.tp))
            .map(|p| p.tp.clone())
            .collect();
        // Agents start their search at different places, so that agents racing for free
        // partitions mostly try different ones.
        if !free.is_empty() {
            let rank = group.iter().position(|a| a == me).unwrap_or(0);
            let start = (rank * free.len()) / k;
            free.rotate_left(start);
        }
        plan.want = ceil - held;
        plan.acquire = free;
    }
    let mut overdue: Vec<TopicPartition> = overdue
        .iter()
        .filter(|tp| !mine.contains(*tp))
        .cloned()
        .collect();
    if !overdue.is_empty() {
        overdue.sort();
        plan.acquire.retain(|tp| !overdue.contains(tp));
        plan.want += overdue.len();
        overdue.append(&mut plan.acquire);
        plan.acquire = overdue;
    }
    plan
}

impl Agent {
    /// Makes sure this agent leads `tp`. Acquires the lease on demand only while this agent
    /// is alone in its group; otherwise the balance rounds place partitions (and one is asked
    /// for now when `tp` turns out to be free).
    pub async fn ensure_led(&self, tp: &TopicPartition) -> Result<(), AgentError> {
        if self.lock().led.contains_key(tp) {
            return Ok(());
        }
        if !self.lock().alone_in_group {
            self.rebalance_soon();
            return Err(AgentError::NotLeader { tp: tp.clone() });
        }
        let _guard = self.acquiring.lock().await;
        self.acquire(tp).await
    }

    /// Acquires the lease on `tp` (free, expired or already ours) and loads its state. The
    /// caller holds `self.acquiring`.
    async fn acquire(&self, tp: &TopicPartition) -> Result<(), AgentError> {
        if self.lock().led.contains_key(tp) {
            return Ok(());
        }
        if self.is_closed() {
            return Err(AgentError::ShuttingDown);
        }
        let topic = self
            .metadata
            .get_topic(&tp.topic)
            .await?
            .filter(|t| tp.partition.0 >= 0 && tp.partition.0 < t.partitions)
            .ok_or_else(|| AgentError::UnknownTopicOrPartition { tp: tp.clone() })?;
        let config = TopicConfig::parse(&topic.configs).unwrap_or_else(|reason| {
            warn!(topic = %tp.topic, %reason, "stored topic config is invalid; using defaults");
            TopicConfig::default()
        });
        if config.agent_group != self.config.group {
            // Only the topic's agent group leads it.
            return Err(AgentError::NotLeader { tp: tp.clone() });
        }
        let lease = match self
            .metadata
            .acquire_lease(tp, &self.config.agent_id, self.config.lease_ttl)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return Err(AgentError::NotLeader { tp: tp.clone() }),
            Err(MetadataError::NotFound { .. }) => {
                return Err(AgentError::UnknownTopicOrPartition { tp: tp.clone() })
            }
            Err(e) => return Err(e.into()),
        };
        // Read the high watermark after the lease is ours: no other agent can move it now.
        let partition = self
            .metadata
            .get_partition(tp)
            .await?
            .ok_or_else(|| AgentError::UnknownTopicOrPartition { tp: tp.clone() })?;
        // Likewise the producers' state, committed with the data by earlier leaders, so a
        // retry of a batch they appended is still recognized.
        let producers = self.metadata.load_producer_states(tp).await?;
        info!(%tp, epoch = %lease.epoch, high_watermark = %partition.high_watermark, "lease acquired");
        self.lock().led.insert(
            tp.clone(),
            Led {
                epoch: lease.epoch,
                next_offset: partition.high_watermark,
                log_start_offset: partition.log_start_offset,
                config: Arc::new(config),
                stale: false,
                draining: false,
                producers: Producers::new(producers),
                clean_due_ms: 0,
            },
        );
        Ok(())
    }

    /// One balance round: learns the live agents of this agent's group and the group's
    /// partitions, drops leases another agent has taken, hands off what is over the fair
    /// share, and acquires free partitions up to it. Returns whether this agent is settled
    /// (nothing to release, nothing it wanted left free).
    pub(crate) async fn balance(&self) -> Result<bool, AgentError> {
        let _guard = self.acquiring.lock().await;
        let me = self.config.agent_id.0.clone();
        let mut live: Vec<AgentInfo> = self
            .metadata
            .live_agents(self.config.lease_ttl)
            .await?
            .into_iter()
            .filter(|a| a.group == self.config.group)
            .collect();
        if !live.iter().any(|a| a.id == self.info.id) {
            live.push(self.info.clone());
        }
        let group: Vec<String> = live.iter().map(|a| a.id.0.clone()).collect();
        let groups_of: HashMap<String, String> = self
            .metadata
            .list_topics()
            .await?
            .into_iter()
            .map(|t| {
                let config = TopicConfig::parse(&t.configs).unwrap_or_default();
                (t.name, config.agent_group)
            })
            .collect();
        let partitions: Vec<PartitionState> = self
            .metadata
            .list_all_partitions()
            .await?
            .into_iter()
            .filter(|p| groups_of.get(&p.tp.topic) == Some(&self.config.group))
            .collect();

        // Partitions this agent must stop leading: taken over by another agent (this one
        // was paused past its lease), deleted, or moved to another group.
        let eligible: HashMap<&TopicPartition, &PartitionState> =
            partitions.iter().map(|p| (&p.tp, p)).collect();
        let mut moved = Vec::new();
        let mut mine: HashSet<TopicPartition> = HashSet::new();
        {
            let mut state = self.lock();
            let led: Vec<TopicPartition> = state.led.keys().cloned().collect();
            for tp in led {
                match eligible.get(&tp) {
                    None => moved.push(tp),
                    Some(p) if p.lease.as_ref().is_some_and(|l| l.holder.0 != me) => {
                        warn!(%tp, "lease taken over by another agent");
                        state.drop_led(&tp);
                    }
                    Some(_) => {
                        mine.insert(tp);
                    }
                }
            }
        }

        // Partitions free (no live lease, not ours) since when: overdue after a few rounds.
        let overdue: HashSet<TopicPartition> = {
            let now = Instant::now();
            let patience = 3 * self.balance_tick();
            let mut state = self.lock();
            let free: HashSet<&TopicPartition> = partitions
                .iter()
                .filter(|p| p.lease.is_none() && !mine.contains(&p.tp))
                .map(|p| &p.tp)
                .collect();
            state.free_since.retain(|tp, _| free.contains(tp));
            for tp in free {
                state.free_since.entry(tp.clone()).or_insert(now);
            }
            state
                .free_since
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= patience)
                .map(|(tp, _)| tp.clone())
                .collect()
        };
        let plan = plan(&me, &group, &partitions, &mine, &overdue);
        {
            let mut state = self.lock();
            state.alone_in_group = group.len() == 1;
            state.group_agents = live;
        }
        let mut settled = plan.release.is_empty() && moved.is_empty();
        let mut acquired = 0;
        for tp in &plan.acquire {
            if acquired == plan.want {
                break;
            }
            match self.acquire(tp).await {
                Ok(()) => acquired += 1,
                Err(AgentError::NotLeader { .. } | AgentError::UnknownTopicOrPartition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if acquired < plan.want && plan.acquire.len() > acquired {
            // Free partitions remain that we wanted: another agent won them, or will.
            settled = false;
        }
        if mine.len() + acquired < plan.share.0 {
            settled = false;
        }
        drop(_guard);
        for tp in moved.iter().chain(&plan.release) {
            self.hand_off(tp).await;
        }
        if !plan.release.is_empty() {
            info!(
                released = plan.release.len(),
                floor = plan.share.0,
                ceil = plan.share.1,
                agents = group.len(),
                "handed partitions off to balance the group"
            );
        }
        self.ready.store(true, Ordering::Release);
        Ok(settled)
    }

    /// Whether a balance round (learning the group's live agents and partitions, and taking
    /// this agent's share of the leases) has completed successfully. [`Agent::start`] runs
    /// the first round and fails without it, so an agent it returned is ready; a later round
    /// that fails does not make it unready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Graceful handoff: stop accepting appends for `tp`, flush what is pending, then
    /// release the lease so the next leader acquires it with epoch + 1 at once.
    pub(crate) async fn hand_off(&self, tp: &TopicPartition) {
        match self.lock().led.get_mut(tp) {
            Some(led) => led.draining = true,
            None => return,
        }
        // Flushes are serialized, so this one waits for one in progress and then takes
        // everything appended for `tp` before the flag was set.
        self.flush().await;
        let epoch = {
            let mut state = self.lock();
            let epoch = state.led.get(tp).map(|led| led.epoch);
            state.drop_led(tp);
            epoch
        };
        let Some(epoch) = epoch else { return };
        match self
            .metadata
            .release_lease(tp, &self.config.agent_id, epoch)
            .await
        {
            Ok(()) => info!(%tp, %epoch, "lease handed off"),
            Err(e) => {
                warn!(%tp, error = %error_chain(&e), "could not release lease; it will expire")
            }
        }
    }

    /// The live agents of this agent's group, as of the last balance round.
    pub fn group_agents(&self) -> Vec<AgentInfo> {
        self.lock().group_agents.clone()
    }

    /// The live agent of this group that coordinates `key` (a consumer group id), by
    /// rendezvous hashing over the group's live agents: every agent that sees the same live
    /// agents picks the same one, and when an agent joins or leaves only the keys it wins or
    /// held move.
    pub fn coordinator_for(&self, key: &str) -> AgentInfo {
        let state = self.lock();
        state
            .group_agents
            .iter()
            .max_by_key(|a| (rendezvous_weight(key, &a.id.0), a.node_id))
            .cloned()
            .unwrap_or_else(|| self.info.clone())
    }

    /// How often balance rounds run: a tenth of the heartbeat interval.
    fn balance_tick(&self) -> Duration {
        (self.config.heartbeat_interval / 10).max(Duration::from_millis(50))
    }

    /// Asks the lease keeper for a balance round now.
    pub fn rebalance_soon(&self) {
        self.rebalance_wanted.notify_one();
    }

    /// Heartbeats and renews held leases every heartbeat interval, and balances leases
    /// more often: every tenth of it, so that a joining agent gets its share within one
    /// heartbeat period, and sooner while partitions it wants are still free. The two run
    /// on their own timers, so a balance round slowed by the store (a lock wait, a handoff's
    /// flush) never delays the renewal of the leases already held.
    pub(crate) async fn keep_leases(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::join!(
            self.renew_loop(&shutdown),
            self.balance_loop(&shutdown),
            self.clone().run_maintenance(shutdown.clone())
        );
    }

    async fn renew_loop(&self, shutdown: &CancellationToken) {
        let heartbeat = self.config.heartbeat_interval;
        loop {
            let pause = match self.renew().await {
                Ok(()) => heartbeat,
                Err(e) => {
                    warn!(error = %error_chain(&e), "heartbeat failed; retrying");
                    RETRY_PAUSE.min(self.balance_tick())
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn balance_loop(&self, shutdown: &CancellationToken) {
        let tick = self.balance_tick();
        loop {
            let pause = match self.balance().await {
                Ok(true) => tick,
                Ok(false) => tick.min(Duration::from_millis(50)),
                Err(e) => {
                    debug!(error = %error_chain(&e), "balance round failed; retrying");
                    tick
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.rebalance_wanted.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Heartbeat and lease renewal.
    async fn renew(&self) -> Result<(), AgentError> {
        self.metadata.heartbeat(&self.config.agent_id).await?;
        let held: Vec<(TopicPartition, LeaseEpoch)> = self
            .lock()
            .led
            .iter()
            .map(|(tp, led)| (tp.clone(), led.epoch))
            .collect();
        for (tp, epoch) in held {
            let renewed = self
                .metadata
                .renew_lease(&tp, &self.config.agent_id, epoch, self.config.lease_ttl)
                .await?;
            if renewed.is_none() {
                // (A lease handed off meanwhile is no longer led: nothing to do.)
                let mut state = self.lock();
                if state.led.get(&tp).is_some_and(|led| led.epoch == epoch) {
                    warn!(%tp, %epoch, "lease lost");
                    state.drop_led(&tp);
                }
            }
        }
        Ok(())
    }

    /// Gives every lease up and leaves the group (graceful shutdown).
    pub(crate) async fn release_all(&self) {
        let held: Vec<(TopicPartition, LeaseEpoch)> = {
            let mut state = self.lock();
            let tps: Vec<TopicPartition> = state.led.keys().cloned().collect();
            tps.into_iter()
                .filter_map(|tp| {
                    let epoch = state.led.get(&tp).map(|led| led.epoch);
                    state.drop_led(&tp);
                    epoch.map(|e| (tp, e))
                })
                .collect()
        };
        for (tp, epoch) in held {
            if let Err(e) = self
                .metadata
                .release_lease(&tp, &self.config.agent_id, epoch)
                .await
            {
                warn!(%tp, error = %error_chain(&e), "could not release lease; it will expire");
            }
        }
        if let Err(e) = self.metadata.deregister_agent(&self.config.agent_id).await {
            warn!(error = %error_chain(&e), "could not deregister; the agent will look live until its heartbeat ages");
        }
    }
}

/// The weight of `agent` for `key` in rendezvous hashing: a hash both agents compute alike
/// (CRC-32C is fixed by its spec, unlike std's hasher).
fn rendezvous_weight(key: &str, agent: &str) -> u32 {
    let h = crc32c::crc32c(key.as_bytes());
    let h = crc32c::crc32c_append(h, &[0]);
    crc32c::crc32c_append(h, agent.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_metadata::{AgentId, Lease};

    #[tokio::test]
    async fn an_agent_is_ready_once_a_balance_round_has_completed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/metadata.db", dir.path().display());
        let metadata = streamhouse_metadata::open(&url).await.unwrap();
        let storage = streamhouse_storage::ObjectStorage::open("memory://", 0).unwrap();
        let config = crate::AgentConfig::for_tests("a", "127.0.0.1:9092");
        let agent = Agent::register(config, metadata, storage).await.unwrap();
        assert!(!agent.is_ready(), "registered, but no round yet");
        agent.balance().await.unwrap();
        assert!(agent.is_ready());
    }

    fn partitions(n: i32, holders: &[(i32, &str)]) -> Vec<PartitionState> {
        (0..n)
            .map(|p| {
                let tp = TopicPartition::new("t", p);
                let lease = holders.iter().find(|(q, _)| *q == p).map(|(_, h)| Lease {
                    tp: tp.clone(),
                    holder: AgentId(h.to_string()),
                    epoch: LeaseEpoch(1),
                    expires_at_ms: 0,
                });
                PartitionState {
                    tp,
                    high_watermark: Offset(0),
                    log_start_offset: Offset(0),
                    lease,
                }
            })
            .collect()
    }

    fn group(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn held_by(ps: &[PartitionState], who: &str) -> HashSet<TopicPartition> {
        ps.iter()
            .filter(|p| p.lease.as_ref().is_some_and(|l| l.holder.0 == who))
            .map(|p| p.tp.clone())
            .collect()
    }

    /// Runs agents' rounds one after the other, applying releases and acquisitions to the
    /// lease table, until nothing changes; returns each agent's count.
    fn converge(agents: &[&str], mut ps: Vec<PartitionState>) -> Vec<usize> {
        let g = group(agents);
        for _ in 0..50 {
            let mut changed = false;
            for a in agents {
                let mine = held_by(&ps, a);
                let plan = plan(a, &g, &ps, &mine, &HashSet::new());
                for tp in &plan.release {
                    let p = ps.iter_mut().find(|p| &p.tp == tp).unwrap();
                    p.lease = None;
                    changed = true;
                }
                for tp in plan.acquire.iter().take(plan.want) {
                    let p = ps.iter_mut().find(|p| &p.tp == tp).unwrap();
                    p.lease = Some(Lease {
                        tp: tp.clone(),
                        holder: AgentId(a.to_string()),
                        epoch: LeaseEpoch(2),
                        expires_at_ms: 0,
                    });
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        agents.iter().map(|a| held_by(&ps, a).len()).collect()
    }

    #[test]
    fn a_lone_agent_takes_everything() {
        let ps = partitions(12, &[]);
        let p = plan("a", &group(&["a"]), &ps, &HashSet::new(), &HashSet::new());
        assert_eq!(p.want, 12);
        assert_eq!(p.acquire.len(), 12);
        assert!(p.release.is_empty());
    }

    #[test]
    fn an_agent_over_its_share_hands_off_only_the_excess() {
        let holders: Vec<(i32, &str)> = (0..12)
            .map(|p| (p, ["a", "b", "c"][p as usize % 3]))
            .collect();
        let ps = partitions(12, &holders);
        let mine = held_by(&ps, "a");
        let none = HashSet::new();
        let p = plan("a", &group(&["a", "b", "c", "d"]), &ps, &mine, &none);
        assert_eq!(p.release.len(), 1);
        assert!(p.acquire.is_empty());
        // The newcomer wants three and sees nothing free yet.
        let p = plan("d", &group(&["a", "b", "c", "d"]), &ps, &none, &none);
        assert_eq!(p.want, 3);
        assert!(p.acquire.is_empty());
    }

    #[test]
    fn rounds_converge_to_a_balanced_assignment() {
        let all: Vec<(i32, &str)> = (0..12).map(|p| (p, "a")).collect();
        for (agents, n) in [
            (&["a", "b", "c"][..], 12),
            (&["a", "b", "c", "d"][..], 12),
            (&["a", "b", "c", "d", "e"][..], 12),
            (&["a", "b", "c", "d", "e", "f", "g"][..], 13),
            (&["a", "b"][..], 1),
        ] {
            let counts = converge(agents, partitions(n, &all));
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "{agents:?} over {n}: {counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), n as usize);
        }
        // Starting from an even spread over three, a fourth agent moves exactly three.
        let spread: Vec<(i32, &str)> = (0..12)
            .map(|p| (p, ["a", "b", "c"][p as usize % 3]))
            .collect();
        let before = partitions(12, &spread);
        let counts = converge(&["a", "b", "c", "d"], before);
        assert_eq!(counts, vec![3, 3, 3, 3]);
    }

    #[test]
    fn a_partition_left_free_is_taken_beyond_the_share() {
        // c is dead but still counted live; b stopped and released 4 and 5. a is at its
        // share (3 of 6 for two agents) and takes 5 only once it is overdue.
        let ps = partitions(6, &[(0, "a"), (1, "a"), (2, "a"), (3, "c")]);
        let mine = held_by(&ps, "a");
        let g = group(&["a", "c"]);
        let p = plan("a", &g, &ps, &mine, &HashSet::new());
        assert_eq!(p.want, 0);
        let overdue: HashSet<TopicPartition> = [TopicPartition::new("t", 5)].into();
        let p = plan("a", &g, &ps, &mine, &overdue);
        assert_eq!(p.want, 1);
        assert_eq!(p.acquire, vec![TopicPartition::new("t", 5)]);
    }
}
