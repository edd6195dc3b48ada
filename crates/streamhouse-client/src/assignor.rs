//! Consumer-group partition assignment: the "range" and "roundrobin" assignors and the
//! ConsumerProtocol subscription/assignment encodings that carry them through the coordinator.
//!
//! Both encodings are a big-endian `i16` version followed by the message body at that
//! version (Kafka's `ConsumerProtocol`). Every version shares the v0 layout as a prefix, so a
//! newer version than we know is decoded with the highest one we do.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartition;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::admin::topic_name;
use crate::error::{boxed, ClientError};

/// The protocol type of Kafka consumer groups in JoinGroup.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The subscription version this client writes (v1 adds owned partitions).
const SUBSCRIPTION_VERSION: i16 = 1;

/// The assignment version this client writes (all versions share one layout).
const ASSIGNMENT_VERSION: i16 = 1;

/// A partition assignment strategy, offered to the group in preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// Per topic, consecutive partition ranges to members sorted by member id (Kafka's default).
    Range,
    /// All partitions of all topics dealt out one by one to the members in turn.
    RoundRobin,
}

impl AssignmentStrategy {
    /// The protocol name in JoinGroup ("range", "roundrobin").
    pub fn protocol_name(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
        }
    }

    /// The strategy named `name`, if this client implements it.
    pub fn from_protocol_name(name: &str) -> Option<AssignmentStrategy> {
        match name {
            "range" => Some(AssignmentStrategy::Range),
            "roundrobin" => Some(AssignmentStrategy::RoundRobin),
            _ => None,
        }
    }

    /// Assigns partitions to members.
    ///
    /// `members` are (member id, subscribed topics); `partition_counts` gives each known
    /// topic's partition count (topics missing from it are skipped). Every member appears in
    /// the result, possibly with nothing assigned.
    pub fn assign(
        self,
        members: &[(String, Vec<String>)],
        partition_counts: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<(String, i32)>> {
        match self {
            AssignmentStrategy::Range => range_assign(members, partition_counts),
            AssignmentStrategy::RoundRobin => round_robin_assign(members, partition_counts),
        }
    }
}

fn empty_result(members: &[(String, Vec<String>)]) -> BTreeMap<String, Vec<(String, i32)>> {
    members
        .iter()
        .map(|(id, _)| (id.clone(), Vec::new()))
        .collect()
}

/// Kafka's RangeAssignor: for each topic, the subscribed members sorted by id each get a
/// consecutive run of partitions; the first `partitions % members` get one extra.
fn range_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut out = empty_result(members);
    for (topic, &count) in partition_counts {
        let mut subscribed: Vec<&str> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(id, _)| id.as_str())
            .collect();
        subscribed.sort_unstable();
        subscribed.dedup();
        let Ok(n) = i32::try_from(subscribed.len()) else {
            continue;
        };
        if n == 0 || count <= 0 {
            continue;
        }
        let per_member = count / n;
        let extra = count % n;
        for (i, member) in (0..n).zip(subscribed) {
            let start = per_member * i + i.min(extra);
            let len = per_member + i32::from(i < extra);
            if let Some(assigned) = out.get_mut(member) {
                assigned.extend((start..start + len).map(|p| (topic.clone(), p)));
            }
        }
    }
    out
}

/// Kafka's RoundRobinAssignor: every (topic, partition) in sorted order goes to the next
/// member (sorted by id, cycling) that subscribes to its topic.
fn round_robin_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut out = empty_result(members);
    let mut sorted: Vec<&(String, Vec<String>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if sorted.is_empty() {
        return out;
    }
    let mut next = 0usize;
    for (topic, &count) in partition_counts {
        if !sorted.iter().any(|(_, topics)| topics.contains(topic)) {
            continue;
        }
        for partition in 0..count.max(0) {
            // Some member subscribes to the topic, so this finds one within a full cycle.
            for _ in 0..sorted.len() {
                let (id, topics) = sorted[next % sorted.len()];
                next = next.wrapping_add(1);
                if topics.contains(topic) {
                    if let Some(assigned) = out.get_mut(id) {
                        assigned.push((topic.clone(), partition));
                    }
                    break;
                }
            }
        }
    }
    out
}

/// Encodes a ConsumerProtocol subscription (version prefix + v1 body) for JoinGroup.
pub fn encode_subscription(topics: &[String]) -> Result<Bytes, ClientError> {
    let msg = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    encode_versioned(&msg, SUBSCRIPTION_VERSION, "consumer subscription")
}

/// Decodes a member's subscription from JoinGroup metadata: its topics.
pub fn decode_subscription(bytes: &Bytes) -> Result<Vec<String>, ClientError> {
    let msg: ConsumerProtocolSubscription = decode_versioned(bytes, "consumer subscription")?;
    Ok(msg.topics.iter().map(|t| t.as_str().to_owned()).collect())
}

/// Encodes a ConsumerProtocol assignment (version prefix + body) for SyncGroup.
pub fn encode_assignment(partitions: &[(String, i32)]) -> Result<Bytes, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let msg = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedPartition::default()
                    .with_topic(topic_name(t))
                    .with_partitions(ps)
            })
            .collect(),
    );
    encode_versioned(&msg, ASSIGNMENT_VERSION, "consumer assignment")
}

/// Decodes a SyncGroup (or DescribeGroups) assignment into (topic, partition) pairs.
///
/// Empty bytes (a member that was given nothing, or a group between generations) decode
/// to an empty assignment.
pub fn decode_assignment(bytes: &Bytes) -> Result<Vec<(String, i32)>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let msg: ConsumerProtocolAssignment = decode_versioned(bytes, "consumer assignment")?;
    Ok(msg
        .assigned_partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| (tp.topic.0.as_str().to_owned(), *p))
        })
        .collect())
}

fn encode_versioned<M: Encodable>(
    msg: &M,
    version: i16,
    what: &'static str,
) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    msg.encode(&mut buf, version)
        .map_err(|e| ClientError::Encode {
            what,
            source: boxed(e),
        })?;
    Ok(buf.freeze())
}

fn decode_versioned<M: Decodable + Message>(
    bytes: &Bytes,
    what: &'static str,
) -> Result<M, ClientError> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Err(ClientError::corrupt(
            what,
            "shorter than its version prefix",
        ));
    }
    let version = buf.get_i16();
    if version < 0 {
        return Err(ClientError::corrupt(what, format!("version {version}")));
    }
    // Newer versions only append fields, so the highest known version reads the prefix.
    let version = version.min(M::VERSIONS.max);
    M::decode(&mut buf, version).map_err(|e| ClientError::corrupt(what, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(id, topics)| {
                (
                    (*id).to_owned(),
                    topics.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn counts(spec: &[(&str, i32)]) -> BTreeMap<String, i32> {
        spec.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_owned(), p)
    }

    #[test]
    fn range_gives_extra_partitions_to_the_first_members() {
        let m = members(&[("c", &["t"]), ("a", &["t"]), ("b", &["t"])]);
        let out = AssignmentStrategy::Range.assign(&m, &counts(&[("t", 7)]));
        assert_eq!(out["a"], vec![tp("t", 0), tp("t", 1), tp("t", 2)]);
        assert_eq!(out["b"], vec![tp("t", 3), tp("t", 4)]);
        assert_eq!(out["c"], vec![tp("t", 5), tp("t", 6)]);
    }

    #[test]
    fn range_is_per_topic_and_respects_subscriptions() {
        let m = members(&[("a", &["x", "y"]), ("b", &["x"])]);
        let out = AssignmentStrategy::Range.assign(&m, &counts(&[("x", 3), ("y", 2)]));
        assert_eq!(
            out["a"],
            vec![tp("x", 0), tp("x", 1), tp("y", 0), tp("y", 1)]
        );
        assert_eq!(out["b"], vec![tp("x", 2)]);
    }

    #[test]
    fn range_with_more_members_than_partitions_leaves_some_empty() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let out = AssignmentStrategy::Range.assign(&m, &counts(&[("t", 2)]));
        assert_eq!(out["a"], vec![tp("t", 0)]);
        assert_eq!(out["b"], vec![tp("t", 1)]);
        assert!(out["c"].is_empty());
    }

    #[test]
    fn range_covers_every_partition_exactly_once() {
        for n_members in 1..6 {
            for n_parts in 0..13 {
                let m: Vec<(String, Vec<String>)> = (0..n_members)
                    .map(|i| (format!("m{i}"), vec!["t".to_owned()]))
                    .collect();
                let out = AssignmentStrategy::Range.assign(&m, &counts(&[("t", n_parts)]));
                let mut all: Vec<i32> = out.values().flatten().map(|(_, p)| *p).collect();
                all.sort_unstable();
                assert_eq!(all, (0..n_parts).collect::<Vec<_>>());
                let sizes: Vec<usize> = out.values().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1));
            }
        }
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let m = members(&[("b", &["x", "y"]), ("a", &["x", "y"])]);
        let out = AssignmentStrategy::RoundRobin.assign(&m, &counts(&[("x", 3), ("y", 2)]));
        assert_eq!(out["a"], vec![tp("x", 0), tp("x", 2), tp("y", 1)]);
        assert_eq!(out["b"], vec![tp("x", 1), tp("y", 0)]);
    }

    #[test]
    fn round_robin_skips_members_not_subscribed() {
        let m = members(&[("a", &["x"]), ("b", &["y"])]);
        let out = AssignmentStrategy::RoundRobin.assign(&m, &counts(&[("x", 2), ("y", 1)]));
        assert_eq!(out["a"], vec![tp("x", 0), tp("x", 1)]);
        assert_eq!(out["b"], vec![tp("y", 0)]);
    }

    #[test]
    fn subscription_round_trips_through_kafka_protocol() {
        let topics = vec!["orders".to_owned(), "payments".to_owned()];
        let bytes = encode_subscription(&topics).expect("encode");
        assert_eq!(decode_subscription(&bytes).expect("decode"), topics);
        let mut buf = bytes.clone();
        assert_eq!(buf.get_i16(), 1);
        let msg = ConsumerProtocolSubscription::decode(&mut buf, 1).expect("decode");
        assert_eq!(msg.topics.len(), 2);
        assert_eq!(msg.user_data, None);
        assert!(msg.owned_partitions.is_empty());
        assert!(!buf.has_remaining());
    }

    #[test]
    fn subscription_has_the_kafka_byte_layout() {
        let bytes = encode_subscription(&["ab".to_owned()]).expect("encode");
        let expected: &[u8] = &[
            0, 1, // version 1
            0, 0, 0, 1, // one topic
            0, 2, b'a', b'b', // "ab"
            0xff, 0xff, 0xff, 0xff, // user data: null
            0, 0, 0, 0, // owned partitions: none
        ];
        assert_eq!(&bytes[..], expected);
    }

    #[test]
    fn subscription_of_newer_and_older_versions_decodes() {
        // v0 from an old client: topics + null user data, nothing else.
        let v0 = Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(decode_subscription(&v0).expect("v0"), vec!["t".to_owned()]);
        // v3 written by kafka-protocol itself (owned partitions, generation, rack).
        let msg = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .with_generation_id(4)
            .with_rack_id(Some(StrBytes::from_static_str("r1")));
        let v3 = encode_versioned(&msg, 3, "test").expect("encode");
        assert_eq!(decode_subscription(&v3).expect("v3"), vec!["t".to_owned()]);
        assert!(matches!(
            decode_subscription(&Bytes::from_static(&[0])),
            Err(ClientError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_subscription(&Bytes::from_static(&[0, 0, 0, 0, 0, 9])),
            Err(ClientError::Corrupt { .. })
        ));
    }

    #[test]
    fn assignment_round_trips_and_groups_by_topic() {
        let parts = vec![tp("b", 1), tp("a", 0), tp("b", 0), tp("a", 5)];
        let bytes = encode_assignment(&parts).expect("encode");
        let decoded = decode_assignment(&bytes).expect("decode");
        assert_eq!(
            decoded,
            vec![tp("a", 0), tp("a", 5), tp("b", 1), tp("b", 0)]
        );
        let mut buf = bytes.clone();
        assert_eq!(buf.get_i16(), 1);
        let msg = ConsumerProtocolAssignment::decode(&mut buf, 1).expect("decode");
        assert_eq!(msg.assigned_partitions.len(), 2);
        assert!(decode_assignment(&Bytes::new()).expect("empty").is_empty());
    }

    #[test]
    fn assignment_has_the_kafka_byte_layout() {
        let bytes = encode_assignment(&[tp("t", 2), tp("t", 7)]).expect("encode");
        let expected: &[u8] = &[
            0, 1, // version 1
            0, 0, 0, 1, // one topic
            0, 1, b't', // "t"
            0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 7, // partitions [2, 7]
            0xff, 0xff, 0xff, 0xff, // user data: null
        ];
        assert_eq!(&bytes[..], expected);
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin] {
            assert_eq!(
                AssignmentStrategy::from_protocol_name(s.protocol_name()),
                Some(s)
            );
        }
        assert_eq!(AssignmentStrategy::from_protocol_name("sticky"), None);
    }
}
