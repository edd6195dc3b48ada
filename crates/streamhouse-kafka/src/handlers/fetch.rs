//! Fetch: committed batches only, within max_bytes and partition_max_bytes; waits up to
//! max_wait_ms for min_bytes, woken by this agent's commits. Any agent serves a Fetch,
//! straight from the metadata and object stores; for partitions another agent leads, whose
//! commits this agent does not hear of, the wait polls the store instead.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use streamhouse_agent::{Agent, AgentError};
use streamhouse_metadata::{Offset, TopicPartition};
use tokio::time::Instant;
use tracing::debug;

use crate::errors::error_code;
use crate::stats;

/// How often a waiting Fetch re-reads partitions that another agent leads.
const FOLLOWER_POLL: Duration = Duration::from_millis(100);

pub(crate) async fn handle(agent: &Arc<Agent>, request: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes)
        .ok()
        .filter(|m| *m > 0)
        .unwrap_or(usize::MAX);
    for topic in &request.topics {
        stats::fetch_request(topic.topic.0.as_str());
    }
    let mut commits = agent.commits();
    let led_elsewhere = request.topics.iter().any(|t| {
        t.partitions.iter().any(|p| {
            let tp = TopicPartition::new(t.topic.as_str(), p.partition);
            agent.leader_epoch(&tp).is_none()
        })
    });
    loop {
        // Mark the current commit as seen before reading, so a commit that lands during the
        // read wakes the wait below.
        commits.borrow_and_update();
        let (responses, total, failed, reads) = collect(agent, &request, max_bytes).await;
        let expired = Instant::now() >= deadline;
        // Only the read that is answered counts as fetched, not the ones a wait discards.
        let answer = |responses| {
            for (tp, read) in &reads {
                agent.count_fetched(tp, read);
            }
            FetchResponse::default().with_responses(responses)
        };
        if total >= min_bytes || failed || expired {
            return answer(responses);
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return answer(responses);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = tokio::time::sleep(FOLLOWER_POLL), if led_elsewhere => {}
        }
    }
}

/// What one round of reads gathered: the responses, their bytes, whether any partition
/// failed (an error answers at once, without waiting), and the reads that returned records.
type Collected = (
    Vec<FetchableTopicResponse>,
    usize,
    bool,
    Vec<(TopicPartition, streamhouse_agent::ReadResult)>,
);

/// Reads every requested partition once.
async fn collect(agent: &Arc<Agent>, request: &FetchRequest, max_bytes: usize) -> Collected {
    let mut reads = Vec::new();
    let mut total = 0usize;
    let mut failed = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.as_str();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let tp = TopicPartition::new(name, p.partition);
            let partition_max = usize::try_from(p.partition_max_bytes).unwrap_or(0);
            let budget = partition_max.min(max_bytes.saturating_sub(total));
            let response = PartitionData::default()
                .with_partition_index(p.partition)
                .with_preferred_read_replica((-1).into());
            let read = if budget == 0 && total > 0 {
                // The response is full: report offsets only.
                agent
                    .partition_offsets(&tp)
                    .await
                    .map(|(hw, ls)| streamhouse_agent::ReadResult {
                        records: Vec::new(),
                        high_watermark: hw,
                        log_start_offset: ls,
                        record_count: 0,
                    })
            } else {
                agent
                    .read(&tp, Offset(p.fetch_offset), budget, total == 0)
                    .await
            };
            partitions.push(match read {
                Ok(mut read) => {
                    total += read.len();
                    let records = concat(std::mem::take(&mut read.records));
                    let response = response
                        .with_high_watermark(read.high_watermark.0)
                        .with_last_stable_offset(read.high_watermark.0)
                        .with_log_start_offset(read.log_start_offset.0)
                        .with_records(Some(records.clone()));
                    if !records.is_empty() {
                        read.records = vec![records];
                        reads.push((tp, read));
                    }
                    response
                }
                Err(e) => {
                    failed = true;
                    debug!(%tp, offset = p.fetch_offset, error = %e, "fetch refused");
                    let (hw, ls) = match &e {
                        AgentError::OffsetOutOfRange {
                            high_watermark,
                            log_start_offset,
                            ..
                        } => (high_watermark.0, log_start_offset.0),
                        _ => (-1, -1),
                    };
                    response
                        .with_error_code(error_code(&e).code())
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(ls)
                        .with_records(Some(Bytes::new()))
                }
            });
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    (topics, total, failed, reads)
}

fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}
