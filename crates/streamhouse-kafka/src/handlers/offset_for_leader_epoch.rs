//! OffsetForLeaderEpoch: where a leader epoch's data ends, so a consumer can check after a
//! leader change that nothing it read was truncated (in StreamHouse committed data never is).

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use streamhouse_agent::Agent;
use streamhouse_metadata::TopicPartition;

use crate::errors::error_code;

pub(crate) async fn handle(
    agent: &Arc<Agent>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.as_str(), p.partition);
            let result = EpochEndOffset::default().with_partition(p.partition);
            partitions.push(
                match agent
                    .offset_for_leader_epoch(&tp, p.current_leader_epoch, p.leader_epoch)
                    .await
                {
                    Ok(Some((epoch, end))) => {
                        result.with_leader_epoch(epoch).with_end_offset(end.0)
                    }
                    // Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
                    Ok(None) => result.with_leader_epoch(-1).with_end_offset(-1),
                    Err(e) => result
                        .with_error_code(error_code(&e).code())
                        .with_leader_epoch(-1)
                        .with_end_offset(-1),
                },
            );
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
