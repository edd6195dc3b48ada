//! `streamhouse agents list` and `streamhouse partitions`: which agents serve the bootstrap
//! agent's group and who leads what, asked over the Kafka protocol (never the database).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, ListOffsetsRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use streamhouse_client::{Admin, ClientError, Connection};

use crate::clients::Bootstrap;

/// `streamhouse agents …`
#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// List the live agents of the bootstrap agent's group: node id, address, group and how
    /// many partitions each leads.
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

/// `streamhouse partitions [TOPIC...]`
#[derive(Debug, Args)]
pub(crate) struct PartitionsArgs {
    /// Topics to show [default: every topic of the bootstrap agent's group].
    pub(crate) topics: Vec<String>,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

/// One agent as the cluster reports it.
struct AgentRow {
    node_id: i32,
    address: String,
    group: String,
}

pub(crate) async fn agents(command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::List { bootstrap } => agents_list(&bootstrap.bootstrap).await,
    }
}

async fn agents_list(bootstrap: &str) -> anyhow::Result<()> {
    let admin = Admin::connect(bootstrap).await?;
    let metadata = admin
        .metadata(None)
        .await
        .context("cannot read the cluster's metadata")?;
    let agents = live_agents(bootstrap, &metadata).await?;

    // Partitions led per node id, over every topic of the group.
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    let mut without_leader = 0usize;
    for topic in metadata.topics.iter().filter(|t| t.error_code == 0) {
        for p in &topic.partitions {
            if p.leader_id.0 < 0 {
                without_leader += 1;
            } else {
                *led.entry(p.leader_id.0).or_default() += 1;
            }
        }
    }

    let address_width = column_width("address", agents.iter().map(|a| a.address.len()));
    let group_width = column_width("group", agents.iter().map(|a| a.group.len()));
    println!(
        "{:>7}  {:<address_width$}  {:<group_width$}  {:>7}",
        "node-id", "address", "group", "leaders"
    );
    for a in &agents {
        println!(
            "{:>7}  {:<address_width$}  {:<group_width$}  {:>7}",
            a.node_id,
            a.address,
            a.group,
            led.get(&a.node_id).copied().unwrap_or(0)
        );
    }
    // Notes go to stderr so that standard output stays one table.
    for (node, count) in &led {
        if !agents.iter().any(|a| a.node_id == *node) {
            eprintln!(
                "note: node {node} is not live but still holds the lease of {count} partition(s) \
                 (until it expires)"
            );
        }
    }
    if without_leader > 0 {
        eprintln!("note: {without_leader} partition(s) have no leader right now");
    }
    Ok(())
}

/// The live agents of the bootstrap agent's group (DescribeCluster), sorted by node id; from
/// the Metadata brokers when the server does not answer DescribeCluster.
async fn live_agents(
    bootstrap: &str,
    metadata: &MetadataResponse,
) -> anyhow::Result<Vec<AgentRow>> {
    let conn = Connection::connect(bootstrap).await?;
    let mut rows: Vec<AgentRow> = if conn.version_for::<DescribeClusterRequest>().is_ok() {
        let resp = conn
            .send(DescribeClusterRequest::default())
            .await
            .context("DescribeCluster failed")?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(
                resp.error_code,
                resp.error_message.as_deref(),
            ))
            .context("DescribeCluster failed");
        }
        resp.brokers
            .iter()
            .map(|b| AgentRow {
                node_id: b.broker_id.0,
                address: host_port(b.host.as_str(), b.port),
                group: group_name(b.rack.as_deref()),
            })
            .collect()
    } else {
        metadata
            .brokers
            .iter()
            .map(|b| AgentRow {
                node_id: b.node_id.0,
                address: host_port(b.host.as_str(), b.port),
                group: group_name(b.rack.as_deref()),
            })
            .collect()
    };
    rows.sort_by_key(|a| a.node_id);
    Ok(rows)
}

pub(crate) async fn partitions(args: PartitionsArgs) -> anyhow::Result<()> {
    let bootstrap = &args.bootstrap.bootstrap;
    let admin = Admin::connect(bootstrap).await?;
    let requested = (!args.topics.is_empty()).then_some(args.topics.as_slice());
    let metadata = admin
        .metadata(requested)
        .await
        .context("cannot read the cluster's metadata")?;

    // Leader and leader epoch come from one Metadata response, so that they match.
    let mut names: Vec<String> = Vec::new();
    let mut leaders: BTreeMap<(String, i32), (i32, i32)> = BTreeMap::new();
    for topic in &metadata.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.as_str().to_owned()) else {
            continue;
        };
        if topic.error_code != 0 {
            if requested.is_some() {
                return Err(ClientError::kafka(topic.error_code, Some(&name)))
                    .with_context(|| format!("cannot describe topic {name:?}"));
            }
            continue;
        }
        if requested.is_none() && topic.is_internal {
            continue;
        }
        for p in &topic.partitions {
            leaders.insert(
                (name.clone(), p.partition_index),
                (p.leader_id.0, p.leader_epoch),
            );
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if requested.is_none() {
        names.sort();
    }

    let mut rows: Vec<Row> = Vec::new();
    for name in &names {
        // Log start and high watermark as `streamhouse topic describe` finds them (from each
        // partition's leader) ...
        let offsets: Vec<(i32, Option<i64>, Option<i64>)> = match admin.describe_topic(name).await {
            Ok(d) => d
                .partitions
                .into_iter()
                .map(|p| {
                    (
                        p.partition,
                        Some(p.log_start_offset),
                        Some(p.high_watermark),
                    )
                })
                .collect(),
            // ... and when a leader cannot be reached (it was just killed, its lease has not
            // expired yet), from the bootstrap agent: any StreamHouse agent answers from the
            // shared metadata store.
            Err(e) => {
                let ids: Vec<i32> = leaders
                    .keys()
                    .filter(|(t, _)| t == name)
                    .map(|(_, p)| *p)
                    .collect();
                eprintln!(
                    "note: {name}: {e:#}; offsets from the bootstrap agent instead of the leaders"
                );
                offsets_from(bootstrap, name, &ids).await
            }
        };
        for (partition, log_start, high_watermark) in offsets {
            let (leader, epoch) = leaders
                .get(&(name.clone(), partition))
                .copied()
                .unwrap_or((-1, -1));
            rows.push(Row {
                topic: name.clone(),
                partition,
                leader,
                epoch,
                log_start,
                high_watermark,
            });
        }
    }

    let topic_width = column_width("topic", rows.iter().map(|r| r.topic.len()));
    println!(
        "{:<topic_width$}  {:>9}  {:>6}  {:>6}  {:>16}  {:>16}",
        "topic", "partition", "leader", "epoch", "log-start", "high-watermark"
    );
    let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for r in rows {
        println!(
            "{:<topic_width$}  {:>9}  {:>6}  {:>6}  {:>16}  {:>16}",
            r.topic,
            r.partition,
            r.leader,
            r.epoch,
            show(r.log_start),
            show(r.high_watermark)
        );
    }
    Ok(())
}

/// A row of `streamhouse partitions`; `None` offsets could not be looked up.
struct Row {
    topic: String,
    partition: i32,
    leader: i32,
    epoch: i32,
    log_start: Option<i64>,
    high_watermark: Option<i64>,
}

/// (partition, log start, high watermark) of `partitions` of `topic`, asked of the agent at
/// `addr` (a StreamHouse agent answers ListOffsets for any partition); `None` where it fails.
async fn offsets_from(
    addr: &str,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i32, Option<i64>, Option<i64>)> {
    let conn = Connection::connect(addr).await.ok();
    let mut out = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let mut found = [None, None];
        if let Some(conn) = &conn {
            for (slot, timestamp) in found.iter_mut().zip([-2, -1]) {
                *slot = list_offset(conn, topic, partition, timestamp).await;
            }
        }
        out.push((partition, found[0], found[1]));
    }
    out
}

/// One ListOffsets lookup (`timestamp` -2 = log start, -1 = high watermark) on `conn`.
async fn list_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Option<i64> {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let resp = conn.send(req).await.ok()?;
    let p = resp
        .topics
        .iter()
        .filter(|t| t.name.as_str() == topic)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)?;
    (p.error_code == 0).then_some(p.offset)
}

/// The width of a column: its header or its widest value.
fn column_width(header: &str, values: impl Iterator<Item = usize>) -> usize {
    values.fold(header.len(), usize::max)
}

/// An agent's group: its rack, "-" if it has none (not a StreamHouse agent).
fn group_name(rack: Option<&str>) -> String {
    match rack {
        Some(r) if !r.is_empty() => r.to_owned(),
        _ => "-".to_owned(),
    }
}

/// "host:port", with an IPv6 host in brackets.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_bracket_ipv6_hosts() {
        assert_eq!(host_port("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(host_port("::1", 9092), "[::1]:9092");
    }

    #[test]
    fn columns_fit_header_and_values() {
        assert_eq!(column_width("topic", [3usize, 9].into_iter()), 9);
        assert_eq!(column_width("topic", std::iter::empty()), 5);
    }
}
