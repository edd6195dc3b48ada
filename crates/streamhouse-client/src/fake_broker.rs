//! A tiny in-process Kafka broker for tests (feature `fake-broker`): one node, in-memory logs.
//!
//! It answers ApiVersions, Metadata, CreateTopics, Produce, ListOffsets and Fetch just well
//! enough to exercise clients: partition `p`'s log starts at offset `1000 * (p + 1)` so
//! that offsets are never accidentally right; produce to topic `flaky` fails twice with
//! NOT_LEADER_OR_FOLLOWER before succeeding; produce to topic `bad` always fails with
//! MESSAGE_TOO_LARGE; the first produce request to topic `lossy` is applied but never
//! answered (a lost response). InitProducerId hands out ids from 7000; a batch whose
//! producer id and base sequence match one already stored is answered with its original
//! offset and not stored again, as a broker deduplicates idempotent retries. Nothing here is
//! meant for production.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// First offset of partition `p` in the fake's logs.
pub fn log_start(partition: i32) -> i64 {
    1000 * (i64::from(partition) + 1)
}

/// Counters and logs of the fake, for assertions.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Topic name → partition count.
    pub topics: BTreeMap<String, i32>,
    /// (topic, partition) → stored batches (base offset rewritten) and the next offset.
    pub logs: HashMap<(String, i32), (Vec<Bytes>, i64)>,
    /// Metadata requests answered.
    pub metadata_requests: usize,
    /// Produce requests received.
    pub produce_requests: usize,
    /// Produce attempts to `flaky` answered with NOT_LEADER_OR_FOLLOWER.
    pub flaky_failures: usize,
    /// Every produced batch as received: (topic, partition, producer id, epoch, base
    /// sequence, record count), failed and duplicate attempts included.
    pub produced_batches: Vec<(String, i32, i64, i16, i32, i32)>,
    /// Produce requests to `lossy` whose response was dropped.
    pub lost_responses: usize,
    /// Producer ids handed out so far.
    pub producer_ids: i64,
    /// (topic, partition, producer id, base sequence) → base offset of stored batches.
    pub sequences: HashMap<(String, i32, i64, i32), i64>,
}

/// A running fake broker; it stops when the runtime does.
#[derive(Debug, Clone)]
pub struct FakeBroker {
    /// "127.0.0.1:port" to bootstrap from.
    pub addr: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeBroker {
    /// Starts on 127.0.0.1:0 with the given topics (name, partitions) already present.
    pub async fn start(topics: &[(&str, i32)]) -> std::io::Result<FakeBroker> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let state = Arc::new(Mutex::new(FakeState {
            topics: topics.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            ..FakeState::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, st, local.port()).await {
                        tracing::debug!(error = %e, "fake broker connection ended");
                    }
                });
            }
        });
        Ok(FakeBroker {
            addr: local.to_string(),
            state,
        })
    }

    /// The fake's state, for assertions.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock(state: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn frame<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> BoxResult<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, key.response_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn record_count(batches: &Bytes) -> i64 {
    RecordBatchDecoder::decode_batch_info(&mut batches.clone())
        .map(|infos| infos.iter().map(|b| i64::from(b.record_count)).sum())
        .unwrap_or(0)
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<FakeState>>, port: u16) -> BoxResult<()> {
    loop {
        let len = match sock.read_i32().await {
            Ok(n) => usize::try_from(n)?,
            Err(_) => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        sock.read_exact(&mut buf).await?;
        let mut buf = Bytes::from(buf);
        let header = decode_request_header_from_buffer(&mut buf)?;
        let key = ApiKey::try_from(header.request_api_key).map_err(|()| "unknown api key")?;
        let v = header.request_api_version;
        let cid = header.correlation_id;
        let out = match key {
            ApiKey::ApiVersions => Some(frame(key, v, cid, &api_versions())?),
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut buf, v)?;
                Some(frame(key, v, cid, &metadata(&state, req, v, port))?)
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut buf, v)?;
                let mut st = lock(&state);
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let exists = st.topics.contains_key(t.name.as_str());
                        if !exists {
                            st.topics
                                .insert(t.name.as_str().to_owned(), t.num_partitions);
                        }
                        CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(if exists { 36 } else { 0 })
                    })
                    .collect();
                Some(frame(
                    key,
                    v,
                    cid,
                    &CreateTopicsResponse::default().with_topics(topics),
                )?)
            }
            ApiKey::InitProducerId => {
                let _req = InitProducerIdRequest::decode(&mut buf, v)?;
                let mut st = lock(&state);
                let id = 7000 + st.producer_ids;
                st.producer_ids += 1;
                let resp = InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0);
                Some(frame(key, v, cid, &resp)?)
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut buf, v)?;
                let acks = req.acks;
                let lossy = req.topic_data.iter().any(|t| t.name.as_str() == "lossy");
                let resp = produce(&state, req);
                let lose = lossy && {
                    let mut st = lock(&state);
                    st.lost_responses += 1;
                    st.lost_responses == 1
                };
                if acks == 0 || lose {
                    None
                } else {
                    Some(frame(key, v, cid, &resp)?)
                }
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut buf, v)?;
                Some(frame(key, v, cid, &list_offsets(&state, req))?)
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut buf, v)?;
                Some(frame(key, v, cid, &fetch(&state, req))?)
            }
            other => return Err(format!("fake broker does not handle {other:?}").into()),
        };
        if let Some(out) = out {
            sock.write_all(&out).await?;
        }
    }
}

fn api_versions() -> ApiVersionsResponse {
    let keys = [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::InitProducerId, 0, 5),
    ];
    ApiVersionsResponse::default().with_api_keys(
        keys.iter()
            .map(|(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

fn metadata(state: &Mutex<FakeState>, req: MetadataRequest, v: i16, port: u16) -> MetadataResponse {
    let mut st = lock(state);
    st.metadata_requests += 1;
    let wanted: Option<Vec<String>> = req.topics.map(|ts| {
        ts.into_iter()
            .filter_map(|t| t.name.map(|n| n.as_str().to_owned()))
            .collect()
    });
    let names: Vec<String> = match wanted {
        Some(w) if !w.is_empty() || v > 0 => w,
        _ => st.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|n| match st.topics.get(&n) {
            Some(count) => MetadataResponseTopic::default()
                .with_name(Some(name(&n)))
                .with_partitions(
                    (0..*count)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(1))
                                .with_replica_nodes(vec![BrokerId(1)])
                                .with_isr_nodes(vec![BrokerId(1)])
                        })
                        .collect(),
                ),
            None => MetadataResponseTopic::default()
                .with_name(Some(name(&n)))
                .with_error_code(3),
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(i32::from(port))])
        .with_controller_id(BrokerId(1))
        .with_topics(topics)
}

fn produce(state: &Mutex<FakeState>, req: ProduceRequest) -> ProduceResponse {
    let mut st = lock(state);
    st.produce_requests += 1;
    let mut topics = Vec::new();
    for t in req.topic_data {
        let topic = t.name.as_str().to_owned();
        let mut parts = Vec::new();
        for p in t.partition_data {
            let resp = PartitionProduceResponse::default().with_index(p.index);
            let known = st
                .topics
                .get(&topic)
                .is_some_and(|n| (0..*n).contains(&p.index));
            if !known {
                parts.push(resp.with_error_code(3));
                continue;
            }
            let info =
                RecordBatchDecoder::decode_batch_info(&mut p.records.clone().unwrap_or_default())
                    .ok()
                    .and_then(|infos| infos.first().cloned());
            let (producer_id, epoch, base_sequence) = info.as_ref().map_or((-1, -1, -1), |i| {
                (i.producer_id, i.producer_epoch, i.base_sequence)
            });
            st.produced_batches.push((
                topic.clone(),
                p.index,
                producer_id,
                epoch,
                base_sequence,
                info.as_ref().map_or(0, |i| i.record_count),
            ));
            if topic == "flaky" && st.flaky_failures < 2 {
                st.flaky_failures += 1;
                parts.push(resp.with_error_code(6));
                continue;
            }
            if topic == "bad" {
                parts.push(resp.with_error_code(10));
                continue;
            }
            let Some(records) = p.records else {
                parts.push(resp.with_error_code(2));
                continue;
            };
            let count = record_count(&records);
            let key = (topic.clone(), p.index, producer_id, base_sequence);
            if producer_id >= 0 {
                if let Some(base) = st.sequences.get(&key) {
                    parts.push(resp.with_base_offset(*base));
                    continue;
                }
            }
            let log = st
                .logs
                .entry((topic.clone(), p.index))
                .or_insert_with(|| (Vec::new(), log_start(p.index)));
            let base = log.1;
            let mut stored = BytesMut::from(&records[..]);
            if stored.len() >= 8 {
                stored[0..8].copy_from_slice(&base.to_be_bytes());
            }
            log.0.push(stored.freeze());
            log.1 += count;
            if producer_id >= 0 {
                st.sequences.insert(key, base);
            }
            parts.push(resp.with_base_offset(base));
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_partition_responses(parts),
        );
    }
    ProduceResponse::default().with_responses(topics)
}

fn list_offsets(state: &Mutex<FakeState>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let st = lock(state);
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let start = log_start(p.partition_index);
                    let end = st
                        .logs
                        .get(&(t.name.as_str().to_owned(), p.partition_index))
                        .map_or(start, |l| l.1);
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_offset(if p.timestamp == -2 { start } else { end })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn fetch(state: &Mutex<FakeState>, req: FetchRequest) -> FetchResponse {
    let st = lock(state);
    let responses = req
        .topics
        .into_iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let (batches, hw) = st
                        .logs
                        .get(&(t.topic.as_str().to_owned(), p.partition))
                        .cloned()
                        .unwrap_or((Vec::new(), log_start(p.partition)));
                    let limit = usize::try_from(p.partition_max_bytes).unwrap_or(0).max(1);
                    let mut data = BytesMut::new();
                    for b in batches {
                        let base = if b.len() >= 8 { (&b[..]).get_i64() } else { 0 };
                        // Whole batches that reach the fetch offset, at least one.
                        if base + record_count(&b) > p.fetch_offset {
                            if !data.is_empty() && data.len() + b.len() > limit {
                                break;
                            }
                            data.put_slice(&b);
                        }
                    }
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(hw)
                        .with_records(Some(data.freeze()))
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(t.topic)
                .with_partitions(parts)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}
