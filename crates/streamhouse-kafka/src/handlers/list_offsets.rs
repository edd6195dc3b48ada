//! ListOffsets: earliest (-2), latest (-1), or the first offset at or after a timestamp.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use streamhouse_agent::{Agent, OffsetSpec};
use streamhouse_metadata::TopicPartition;

use crate::errors::error_code;
use crate::handlers::str_bytes;

pub(crate) async fn handle(
    agent: &Arc<Agent>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let tp = TopicPartition::new(name.clone(), p.partition_index);
            let response =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let spec = match p.timestamp {
                -1 => Some(OffsetSpec::Latest),
                -2 => Some(OffsetSpec::Earliest),
                t if t >= 0 => Some(OffsetSpec::Timestamp(t)),
                _ => None,
            };
            let Some(spec) = spec else {
                partitions.push(
                    response
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_offset(-1)
                        .with_timestamp(-1),
                );
                continue;
            };
            partitions.push(match agent.list_offset(&tp, spec).await {
                Ok((offset, timestamp)) => response
                    .with_offset(offset.0)
                    .with_timestamp(timestamp)
                    // The leader epoch exists from v4 on; the codec refuses it before.
                    .with_leader_epoch(
                        agent
                            .leader_epoch(&tp)
                            .and_then(|e| i32::try_from(e).ok())
                            .filter(|_| version >= 4)
                            .unwrap_or(-1),
                    ),
                Err(e) => response
                    .with_error_code(error_code(&e).code())
                    .with_offset(-1)
                    .with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(str_bytes(name).into())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
