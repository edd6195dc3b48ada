//! Topic administration beyond create and delete: configs, partition increases, and
//! DeleteRecords. Each change goes to the metadata store first and is then applied to the
//! partitions this agent leads, so what the agent enforces is what the store reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use streamhouse_metadata::{MetadataError, Offset, TopicConfig, TopicPartition};
use tracing::{info, warn};

use crate::agent::Agent;
use crate::error::AgentError;

fn not_found(topic: &str) -> impl Fn(MetadataError) -> AgentError + '_ {
    move |e| match e {
        MetadataError::NotFound { .. } => AgentError::UnknownTopic {
            topic: topic.to_string(),
        },
        e => AgentError::Metadata(e),
    }
}

impl Agent {
    /// Replaces a topic's configs after validating them; the partitions this agent leads
    /// enforce the new values from the next append on.
    pub async fn set_topic_configs(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, AgentError> {
        let parsed =
            TopicConfig::parse(configs).map_err(|reason| AgentError::InvalidConfig { reason })?;
        self.metadata
            .set_topic_configs(topic, configs)
            .await
            .map_err(not_found(topic))?;
        let shared = Arc::new(parsed.clone());
        for (tp, led) in self.lock().led.iter_mut() {
            if tp.topic == topic {
                led.config = shared.clone();
            }
        }
        info!(topic, ?configs, "topic configs changed");
        Ok(parsed)
    }

    /// Grows a topic to `partitions` partitions and leads the new ones.
    pub async fn create_partitions(&self, topic: &str, partitions: i32) -> Result<(), AgentError> {
        let current = self
            .metadata
            .get_topic(topic)
            .await?
            .ok_or_else(|| AgentError::UnknownTopic {
                topic: topic.to_string(),
            })?
            .partitions;
        if partitions <= current || partitions > crate::agent::MAX_PARTITIONS {
            return Err(AgentError::InvalidPartitions { partitions });
        }
        self.metadata
            .add_partitions(topic, partitions)
            .await
            .map_err(|e| match e {
                MetadataError::Invalid { .. } => AgentError::InvalidPartitions { partitions },
                e => not_found(topic)(e),
            })?;
        if let Err(e) = self.balance().await {
            warn!(topic, error = %crate::agent::error_chain(&e), "could not lease new partitions");
        }
        info!(topic, from = current, to = partitions, "partitions added");
        Ok(())
    }

    /// DeleteRecords: makes records below `offset` unreadable by moving the log start
    /// offset (-1 means the high watermark). Returns the new log start offset.
    pub async fn delete_records(
        &self,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<Offset, AgentError> {
        let (high_watermark, log_start_offset) = self.partition_offsets(tp).await?;
        let target = if offset == -1 {
            high_watermark
        } else {
            Offset(offset)
        };
        if target.0 < 0 || target > high_watermark {
            return Err(AgentError::OffsetOutOfRange {
                tp: tp.clone(),
                offset: target,
                log_start_offset,
                high_watermark,
            });
        }
        let new_start = self
            .metadata
            .advance_log_start(tp, target)
            .await
            .map_err(|e| match e {
                MetadataError::NotFound { .. } => {
                    AgentError::UnknownTopicOrPartition { tp: tp.clone() }
                }
                e => AgentError::Metadata(e),
            })?;
        if let Some(led) = self.lock().led.get_mut(tp) {
            led.log_start_offset = led.log_start_offset.max(new_start);
        }
        info!(%tp, log_start_offset = %new_start, "records deleted");
        Ok(new_start)
    }
}
