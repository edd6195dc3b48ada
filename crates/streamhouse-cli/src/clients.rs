//! `streamhouse topic|produce|consume`: clients of a running server over the Kafka protocol
//! (never its database).

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use streamhouse_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord,
};

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub(crate) struct Bootstrap {
    /// A StreamHouse agent's Kafka address.
    #[arg(
        long,
        short = 'b',
        env = "STREAMHOUSE_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub(crate) bootstrap: String,
}

/// `streamhouse topic …`
#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', env = "STREAMHOUSE_PARTITIONS", default_value_t = 1)]
        partitions: i32,
        /// Topic config as NAME=VALUE (repeatable), e.g. max.message.bytes=2097152.
        #[arg(long = "config", short = 'c', env = "STREAMHOUSE_CONFIG", value_delimiter = ',', value_parser = parse_config)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// List topics.
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Show a topic's partitions with leader, log start and high watermark.
    Describe {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Delete a topic.
    Delete {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

/// `streamhouse group …`
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List consumer groups with their state.
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Show a group's members, their partitions, and the committed offsets with lag.
    Describe {
        group: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Delete a group without members, and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

pub(crate) async fn group(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List { bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            for g in admin.list_groups().await? {
                println!("{}\t{}\t{}", g.group_id, g.state, g.protocol_type);
            }
        }
        GroupCommand::Describe { group, bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            let d = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("cannot describe group {group:?}"))?;
            println!(
                "group {} ({}, protocol {:?})",
                d.group_id, d.state, d.protocol
            );
            for m in &d.members {
                let partitions: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect();
                println!(
                    "  member {} ({} {}): {}",
                    m.member_id,
                    m.client_id,
                    m.client_host,
                    partitions.join(" ")
                );
            }
            println!(
                "{:>24}  {:>9}  {:>12}  {:>14}  {:>8}",
                "topic", "partition", "committed", "high-watermark", "lag"
            );
            for (topic, partition, committed) in admin.list_group_offsets(&group).await? {
                let high = admin
                    .list_offsets(&topic, partition, OffsetSpec::Latest)
                    .await?;
                println!(
                    "{topic:>24}  {partition:>9}  {committed:>12}  {high:>14}  {:>8}",
                    (high - committed).max(0)
                );
            }
        }
        GroupCommand::Delete { group, bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            admin
                .delete_group(&group)
                .await
                .with_context(|| format!("cannot delete group {group:?}"))?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

pub(crate) async fn topic(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
            bootstrap,
        } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            admin
                .create_topic(&name, partitions, &configs)
                .await
                .with_context(|| format!("cannot create topic {name:?}"))?;
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::List { bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            let mut topics = admin.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                println!("{}\t{} partition(s)", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name, bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            let d = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("cannot describe topic {name:?}"))?;
            println!("topic {}", d.name);
            println!(
                "{:>9}  {:>6}  {:>16}  {:>16}",
                "partition", "leader", "log-start", "high-watermark"
            );
            for p in d.partitions {
                println!(
                    "{:>9}  {:>6}  {:>16}  {:>16}",
                    p.partition, p.leader_node_id, p.log_start_offset, p.high_watermark
                );
            }
        }
        TopicCommand::Delete { name, bootstrap } => {
            let admin = Admin::connect(&bootstrap.bootstrap).await?;
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("cannot delete topic {name:?}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// `streamhouse produce`: values from the arguments, or one per line of standard input.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    pub(crate) topic: String,
    /// Values to send; without any, each line of standard input is one record.
    pub(crate) values: Vec<String>,
    /// Key for every record (otherwise see --key-separator).
    #[arg(long, short = 'k', env = "STREAMHOUSE_KEY")]
    pub(crate) key: Option<String>,
    /// Split each input line into KEY<SEP>VALUE at the first SEP (like kcat -K).
    #[arg(long, short = 'K', env = "STREAMHOUSE_KEY_SEPARATOR")]
    pub(crate) key_separator: Option<String>,
    /// Header as NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', env = "STREAMHOUSE_HEADER", value_delimiter = ',', value_parser = parse_config)]
    pub(crate) headers: Vec<(String, String)>,
    /// Partition to write to (otherwise by key hash, or sticky for keyless records).
    #[arg(long, short = 'p', env = "STREAMHOUSE_PARTITION")]
    pub(crate) partition: Option<i32>,
    /// -1 (all), 1 or 0. Both 1 and -1 mean "durable in the object store".
    #[arg(long, env = "STREAMHOUSE_ACKS", default_value_t = -1, allow_hyphen_values = true)]
    pub(crate) acks: i16,
    /// Print nothing per record.
    #[arg(long, short = 'q', env = "STREAMHOUSE_QUIET")]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

pub(crate) async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let config = ProducerConfig {
        acks: args.acks,
        // Idempotence (the default) needs acks=all; with fewer acks the user chose speed.
        enable_idempotence: args.acks == -1,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&args.bootstrap.bootstrap, config).await?;
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if args.values.is_empty() {
        Box::new(std::io::stdin().lock().lines())
    } else {
        Box::new(args.values.clone().into_iter().map(Ok))
    };
    let mut handles = Vec::new();
    for line in lines {
        let line = line.context("cannot read standard input")?;
        let (key, value) = match (&args.key_separator, &args.key) {
            (Some(sep), _) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => (None, line),
            },
            (None, Some(k)) => (Some(k.clone()), line),
            (None, None) => (None, line),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value));
        if let Some(k) = key {
            record = record.with_key(Bytes::from(k));
        }
        if let Some(p) = args.partition {
            record = record.with_partition(p);
        }
        record.headers = args
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
            .collect();
        handles.push(producer.send(record).await?);
        if handles.len() >= 10_000 {
            report(std::mem::take(&mut handles), args.quiet, args.acks).await?;
        }
    }
    report(handles, args.quiet, args.acks).await?;
    producer.close().await?;
    Ok(())
}

async fn report(
    handles: Vec<streamhouse_client::DeliveryHandle>,
    quiet: bool,
    acks: i16,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for h in handles {
        let meta = h.wait_offset().await.context("record not delivered")?;
        if !quiet {
            if acks == 0 {
                writeln!(
                    out,
                    "{}/{} (acks=0: offset unknown)",
                    meta.topic, meta.partition
                )?;
            } else {
                writeln!(out, "{}/{}@{}", meta.topic, meta.partition, meta.offset)?;
            }
        }
    }
    Ok(())
}

/// `streamhouse consume`
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    pub(crate) topic: String,
    /// Partition to read (repeatable); all partitions if none is given.
    #[arg(
        long,
        short = 'p',
        env = "STREAMHOUSE_PARTITION",
        value_delimiter = ','
    )]
    pub(crate) partition: Vec<i32>,
    /// Where to start: "beginning", "end", or an offset.
    #[arg(
        long,
        short = 'o',
        env = "STREAMHOUSE_FROM",
        default_value = "beginning"
    )]
    pub(crate) from: String,
    /// Start at the first record at or after this time (ms since the Unix epoch).
    #[arg(long, env = "STREAMHOUSE_FROM_TIME")]
    pub(crate) from_time: Option<i64>,
    /// Stop after this many records.
    #[arg(long, short = 'n', env = "STREAMHOUSE_MAX_MESSAGES")]
    pub(crate) max_messages: Option<u64>,
    /// Stop once every partition has been read up to its high watermark.
    #[arg(long, short = 'e', env = "STREAMHOUSE_EXIT_AT_END")]
    pub(crate) exit_at_end: bool,
    /// Consume as a member of this consumer group: partitions are shared with the group's
    /// other members and progress is committed (then --partition and --from only apply
    /// when the group has no committed offset: "beginning" or "end").
    #[arg(long, short = 'g', env = "STREAMHOUSE_GROUP")]
    pub(crate) group: Option<String>,
    /// Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp,
    /// %h headers.
    #[arg(long, short = 'f', env = "STREAMHOUSE_FORMAT", default_value = "%s")]
    pub(crate) format: String,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

pub(crate) async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    // Where to start: an offset spec, or an exact offset to seek to after assignment.
    let (spec, exact) = match (args.from_time, args.from.as_str()) {
        (Some(t), _) => (OffsetSpec::Timestamp(t), None),
        (None, "beginning") => (OffsetSpec::Earliest, None),
        (None, "end") => (OffsetSpec::Latest, None),
        (None, other) => {
            let offset: i64 = other.parse().with_context(|| {
                format!("--from must be beginning, end or an offset, not {other:?}")
            })?;
            if offset < 0 {
                bail!("--from offset must not be negative");
            }
            (OffsetSpec::Earliest, Some(offset))
        }
    };
    if let Some(group) = &args.group {
        return consume_group(&args, group).await;
    }
    let mut consumer = Consumer::new(&args.bootstrap.bootstrap, ConsumerConfig::default()).await?;
    let partitions = if args.partition.is_empty() {
        consumer.assign_all(&args.topic, spec).await?
    } else {
        consumer
            .assign(&args.topic, args.partition.clone(), spec)
            .await?;
        args.partition.clone()
    };
    if let Some(offset) = exact {
        for p in &partitions {
            consumer.seek(&args.topic, *p, offset);
        }
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        for r in &records {
            writeln!(out, "{}", format_record(&args.format, r))?;
            seen += 1;
            if args.max_messages.is_some_and(|max| seen >= max) {
                return Ok(());
            }
        }
        out.flush()?;
        if args.exit_at_end
            && records.is_empty()
            && partitions.iter().all(|p| {
                match (
                    consumer.position(&args.topic, *p),
                    consumer.high_watermark(&args.topic, *p),
                ) {
                    (Some(pos), Some(hw)) => pos >= hw,
                    _ => false,
                }
            })
        {
            return Ok(());
        }
    }
}

/// `consume --group`: subscribe, print, commit what was printed, leave on exit.
async fn consume_group(args: &ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let reset = match args.from.as_str() {
        "beginning" => AutoOffsetReset::Earliest,
        "end" => AutoOffsetReset::Latest,
        other => bail!("with --group, --from must be beginning or end, not {other:?}"),
    };
    let config = ConsumerConfig {
        group_id: Some(group.to_string()),
        auto_offset_reset: reset,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(&args.bootstrap.bootstrap, config).await?;
    consumer.subscribe(&[args.topic.as_str()], None)?;
    let mut seen = 0u64;
    let mut idle_polls = 0u32;
    let mut out = std::io::stdout().lock();
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        for r in &records {
            writeln!(out, "{}", format_record(&args.format, r))?;
            seen += 1;
        }
        out.flush()?;
        let done = args.max_messages.is_some_and(|max| seen >= max);
        // --exit-at-end: stop after two empty polls once the group has assigned partitions.
        idle_polls = if records.is_empty() {
            idle_polls + 1
        } else {
            0
        };
        let at_end = args.exit_at_end && idle_polls >= 2 && !consumer.assignment().is_empty();
        if done || at_end {
            consumer
                .commit_sync()
                .await
                .context("cannot commit the group's offsets")?;
            consumer.close().await?;
            return Ok(());
        }
    }
}

fn text(bytes: &Option<Bytes>) -> String {
    match bytes {
        None => String::new(),
        Some(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn format_record(format: &str, r: &streamhouse_client::ConsumedRecord) -> String {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push_str(&r.topic),
            Some('p') => out.push_str(&r.partition.to_string()),
            Some('o') => out.push_str(&r.offset.to_string()),
            Some('k') => out.push_str(&text(&r.key)),
            Some('s') => out.push_str(&text(&r.value)),
            Some('T') => out.push_str(&r.timestamp.to_string()),
            Some('h') => {
                let headers: Vec<String> = r
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect();
                out.push_str(&headers.join(","));
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_records_like_kcat() {
        let r = streamhouse_client::ConsumedRecord {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            timestamp: 5,
        };
        assert_eq!(
            format_record("%k %s %p %o %T %h %t 100%%", &r),
            "k v 2 7 5 h=x t 100%"
        );
    }
}
