//! Produce: records enter the agent's buffer at once; the response waits for the commit.

use std::future::Future;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use streamhouse_agent::{Agent, AgentError, Appended};
use streamhouse_metadata::TopicPartition;
use tokio::sync::oneshot;
use tracing::debug;

use crate::errors::{error_code, message};
use crate::handlers::str_bytes;
use crate::stats;

enum Outcome {
    Waiting(oneshot::Receiver<Result<Appended, AgentError>>),
    Failed(AgentError),
    /// Refused before reaching the agent (invalid acks, transactions).
    Refused(ResponseError, &'static str),
}

/// Queues every partition's records, in request order, and returns the future of the
/// response: `None` for acks=0, which gets no response.
pub(crate) async fn submit(
    agent: &Arc<Agent>,
    request: ProduceRequest,
) -> impl Future<Output = Option<ProduceResponse>> + Send + 'static {
    let acks = request.acks;
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.as_str().to_string();
        stats::produce_request(&name);
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let tp = TopicPartition::new(name.clone(), p.index);
            let outcome = if !(-1..=1).contains(&acks) {
                Outcome::Refused(
                    ResponseError::InvalidRequiredAcks,
                    "acks must be -1, 0 or 1",
                )
            } else if request.transactional_id.is_some() {
                Outcome::Refused(
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported",
                )
            } else {
                match p.records {
                    None => Outcome::Failed(AgentError::Corrupt {
                        tp: tp.clone(),
                        source: streamhouse_storage::BatchError::Empty,
                    }),
                    Some(records) => match agent.append(&tp, records).await {
                        Ok(waiting) => Outcome::Waiting(waiting),
                        Err(e) => Outcome::Failed(e),
                    },
                }
            };
            partitions.push((p.index, outcome));
        }
        topics.push((name, partitions));
    }

    async move {
        if acks == 0 {
            // No response is due; the records are flushed all the same.
            return None;
        }
        let mut responses = Vec::with_capacity(topics.len());
        for (name, partitions) in topics {
            let mut partition_responses = Vec::with_capacity(partitions.len());
            for (index, outcome) in partitions {
                let response = PartitionProduceResponse::default().with_index(index);
                let refused = |code: ResponseError, text: String| {
                    PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(code.code())
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(Some(str_bytes(text)))
                };
                let result = match outcome {
                    Outcome::Waiting(waiting) => {
                        waiting.await.unwrap_or(Err(AgentError::ShuttingDown))
                    }
                    Outcome::Failed(e) => Err(e),
                    Outcome::Refused(code, text) => {
                        partition_responses.push(refused(code, text.to_string()));
                        continue;
                    }
                };
                partition_responses.push(match result {
                    Ok(appended) => response
                        .with_base_offset(appended.base_offset.0)
                        .with_log_append_time_ms(appended.log_append_time.unwrap_or(-1))
                        .with_log_start_offset(appended.log_start_offset.0),
                    Err(e) => {
                        debug!(topic = %name, partition = index, error = %e, "produce refused");
                        refused(error_code(&e), message(&e))
                    }
                });
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(str_bytes(name).into())
                    .with_partition_responses(partition_responses),
            );
        }
        Some(ProduceResponse::default().with_responses(responses))
    }
}
