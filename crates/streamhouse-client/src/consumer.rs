//! A consumer of manually assigned partitions: Fetch from each leader, decode, track positions.
//!
//! There are no consumer groups yet: the caller assigns partitions and positions are not
//! committed anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::VersionRange;
use tokio::time::Instant;

use crate::admin::{list_offsets, topic_name, OffsetSpec};
use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::error::{is_metadata_error, is_retriable_code, ClientError};
use crate::records::{decode_fetched, ConsumedRecord};

/// Fetch versions this client builds: v13 names topics by id, which we do not track.
const FETCH_VERSIONS: VersionRange = VersionRange { min: 4, max: 12 };

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
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// Offset of the next record to return.
    position: i64,
    /// From the last fetch response; -1 until then.
    high_watermark: i64,
}

/// Reads assigned partitions. Not shareable across tasks (`poll` takes `&mut self`).
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    /// topic → partition → state
    assignment: BTreeMap<String, BTreeMap<i32, PartitionState>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assignment", &self.assignment)
            .finish_non_exhaustive()
    }
}

/// What one fetch brought back for one partition.
struct PartitionResult {
    topic: String,
    partition: i32,
    outcome: Result<(Vec<ConsumedRecord>, i64), ClientError>,
}

impl Consumer {
    /// Connects to `bootstrap`.
    pub async fn new(bootstrap: &str, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        let cluster = Cluster::connect(bootstrap, config.request_timeout).await?;
        Ok(Consumer {
            cluster,
            config,
            assignment: BTreeMap::new(),
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
        self.cluster.invalidate(topic);
        let meta = self.cluster.topic_or_refresh(topic).await?;
        let partitions: Vec<i32> = meta.leaders.keys().copied().collect();
        self.assign(topic, partitions.clone(), start).await?;
        Ok(partitions)
    }

    /// Sets the next offset to read from `topic`/`partition` (assigning it if needed).
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
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
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.assignment.is_empty() {
            return Err(ClientError::InvalidInput {
                message: "poll without any assigned partition".to_owned(),
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let records = self.fetch_once(remaining.min(self.config.max_wait)).await?;
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
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
                    Ok((records, high_watermark)) => {
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
                    Some(bytes) => decode_fetched(&topic, p.partition_index, bytes)
                        .map(|recs| (recs, p.high_watermark)),
                    None => Ok((Vec::new(), p.high_watermark)),
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
