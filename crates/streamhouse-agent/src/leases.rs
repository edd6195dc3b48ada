//! Partition leases: acquiring (a new epoch), renewing (same epoch), releasing.
//!
//! A lease the store no longer confirms is dropped at once: batches pending for it are
//! answered NOT_LEADER at the next flush, and even a commit already on its way is refused by
//! the store's epoch check.

use std::sync::Arc;

use streamhouse_metadata::{LeaseEpoch, MetadataError, Offset, TopicConfig, TopicPartition};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// The idempotent producers' sequence state, committed and pending.
    pub(crate) producers: Producers,
}

impl Agent {
    /// Makes sure this agent leads `tp`, acquiring its lease if it is free or expired.
    pub async fn ensure_led(&self, tp: &TopicPartition) -> Result<(), AgentError> {
        if self.lock().led.contains_key(tp) {
            return Ok(());
        }
        let _guard = self.acquiring.lock().await;
        if self.lock().led.contains_key(tp) {
            return Ok(());
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
                producers: Producers::new(producers),
            },
        );
        Ok(())
    }

    /// Acquires every partition whose lease is free or expired.
    pub(crate) async fn acquire_free_partitions(&self) -> Result<(), AgentError> {
        for topic in self.metadata.list_topics().await? {
            for p in self.metadata.list_partitions(&topic.name).await? {
                let mine = p
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.holder == self.config.agent_id);
                if (p.lease.is_none() || mine) && !self.lock().led.contains_key(&p.tp) {
                    match self.ensure_led(&p.tp).await {
                        Ok(()) | Err(AgentError::NotLeader { .. }) => {}
                        Err(AgentError::UnknownTopicOrPartition { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Heartbeats, renews held leases and picks up free partitions every heartbeat interval.
    pub(crate) async fn keep_leases(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let pause = match self.keep_leases_once().await {
                Ok(()) => self.config.heartbeat_interval,
                Err(e) => {
                    warn!(error = %error_chain(&e), "lease round failed; retrying");
                    RETRY_PAUSE.min(self.config.heartbeat_interval)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn keep_leases_once(&self) -> Result<(), AgentError> {
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
                warn!(%tp, %epoch, "lease lost");
                let mut state = self.lock();
                if state.led.get(&tp).is_some_and(|led| led.epoch == epoch) {
                    state.led.remove(&tp);
                }
            }
        }
        self.acquire_free_partitions().await
    }

    /// Gives every lease up (graceful shutdown).
    pub(crate) async fn release_all(&self) {
        let held: Vec<(TopicPartition, LeaseEpoch)> = self
            .lock()
            .led
            .drain()
            .map(|(tp, led)| (tp, led.epoch))
            .collect();
        for (tp, epoch) in held {
            if let Err(e) = self
                .metadata
                .release_lease(&tp, &self.config.agent_id, epoch)
                .await
            {
                warn!(%tp, error = %error_chain(&e), "could not release lease; it will expire");
            }
        }
    }
}
