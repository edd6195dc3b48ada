//! `streamhouse bench`: produce, consume, group-consume and end-to-end throughput and
//! latency, against a running server or (by default) an embedded one started in this process
//! on a temporary data dir, where object PUTs per second are measured too.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use streamhouse_bench::{BenchConfig, BenchReport};
use tokio_util::sync::CancellationToken;

use crate::serve::{self, ServeArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Produce `--records` records.
    Produce,
    /// Read the topic from the beginning with one assigned consumer.
    Consume,
    /// Produce, then consume.
    Both,
    /// `--consumers` members of one group read the whole topic (embedded: produce first).
    GroupConsume,
    /// Produce at `--rate` for `--duration-secs` while a group member reads: latency.
    EndToEnd,
    /// Produce through the REST API: `--producers` HTTP clients, `--rest-batch` records per
    /// request, each waiting for its answer (the server at `--http`, or the embedded one).
    RestProduce,
}

/// Flags of `streamhouse bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(long, env = "STREAMHOUSE_BENCH_WORKLOAD", value_enum, default_value_t = Workload::Both)]
    workload: Workload,
    /// A running server; without it an embedded server is started in this process.
    #[arg(long, short = 'b', env = "STREAMHOUSE_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Rest-produce: a running server's HTTP address (host:port); without it (and without
    /// -b) the embedded server's.
    #[arg(long, env = "STREAMHOUSE_BENCH_HTTP")]
    http: Option<String>,
    /// Rest-produce: records per request (1 posts to /api/v1/produce, more to its batch form).
    #[arg(long, env = "STREAMHOUSE_BENCH_REST_BATCH", default_value_t = 1)]
    rest_batch: usize,
    /// Topic (created if missing).
    #[arg(
        long,
        env = "STREAMHOUSE_BENCH_TOPIC",
        default_value = "streamhouse-bench"
    )]
    topic: String,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, env = "STREAMHOUSE_BENCH_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Value size of each record in bytes.
    #[arg(long, env = "STREAMHOUSE_BENCH_RECORD_SIZE", default_value_t = 1024)]
    record_size: usize,
    /// Records to produce (and then consume).
    #[arg(long, env = "STREAMHOUSE_BENCH_RECORDS", default_value_t = 200_000)]
    records: u64,
    /// Idempotent producers (the client's default); other acks than -1 need `false`.
    #[arg(long, env = "STREAMHOUSE_BENCH_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    idempotence: bool,
    /// Group-consume: members of the consumer group.
    #[arg(long, env = "STREAMHOUSE_BENCH_CONSUMERS", default_value_t = 3)]
    consumers: usize,
    /// End-to-end: records per second the producer sends (open loop).
    #[arg(long, env = "STREAMHOUSE_BENCH_RATE", default_value_t = 10_000)]
    rate: u64,
    /// End-to-end: how long to send; the run sends `rate × duration` records.
    #[arg(long, env = "STREAMHOUSE_BENCH_DURATION_SECS", default_value_t = 10)]
    duration_secs: u64,
    /// Producer acks: -1 (all), 1 or 0.
    #[arg(long, env = "STREAMHOUSE_BENCH_ACKS", default_value_t = -1, allow_hyphen_values = true)]
    acks: i16,
    /// Concurrent producers, each with its own connection.
    #[arg(long, env = "STREAMHOUSE_BENCH_PRODUCERS", default_value_t = 2)]
    producers: usize,
    /// Producer linger.
    #[arg(long, env = "STREAMHOUSE_BENCH_LINGER_MS", default_value_t = 2)]
    linger_ms: u64,
    /// Producer batch size per partition, bytes.
    #[arg(long, env = "STREAMHOUSE_BENCH_BATCH_SIZE", default_value_t = 256 * 1024)]
    batch_size: usize,
    /// Produce requests in flight per connection.
    #[arg(long, env = "STREAMHOUSE_BENCH_MAX_IN_FLIGHT", default_value_t = 5)]
    max_in_flight: usize,
    /// Unacknowledged bytes per producer (bounds queueing latency).
    #[arg(long, env = "STREAMHOUSE_BENCH_BUFFER_MEMORY", default_value_t = 768 * 1024)]
    buffer_memory: usize,
    /// Embedded server: flush interval (the server's default).
    #[arg(long, env = "STREAMHOUSE_BENCH_FLUSH_INTERVAL_MS", default_value_t = 2)]
    flush_interval_ms: u64,
    /// Embedded server: flush size.
    #[arg(long, env = "STREAMHOUSE_BENCH_FLUSH_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    flush_max_bytes: usize,
    /// Embedded server: how often object compaction runs (0: never; the server's default).
    #[arg(
        long,
        env = "STREAMHOUSE_BENCH_COMPACTION_INTERVAL_MS",
        default_value_t = 30_000
    )]
    compaction_interval_ms: u64,
    /// Embedded server: compaction window (0: merge short runs at once).
    #[arg(
        long,
        env = "STREAMHOUSE_BENCH_COMPACTION_WINDOW_MS",
        default_value_t = 600_000
    )]
    compaction_window_ms: u64,
    /// Embedded server: data dir [default: a new temporary directory].
    #[arg(long, env = "STREAMHOUSE_BENCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write the reports as JSON lines to this file.
    #[arg(long, env = "STREAMHOUSE_BENCH_JSON")]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, env = "STREAMHOUSE_BENCH_NO_PROGRESS")]
    no_progress: bool,
}

pub(crate) async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let records = if args.workload == Workload::EndToEnd {
        args.rate.saturating_mul(args.duration_secs)
    } else {
        args.records
    };
    let mut config = BenchConfig {
        // Replaced by the embedded server's address when no server is given.
        bootstrap: args
            .bootstrap
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".into()),
        http: args.http.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
        rest_batch: args.rest_batch,
        topic: args.topic.clone(),
        partitions: args.partitions,
        record_size: args.record_size,
        records,
        acks: args.acks,
        producers: args.producers,
        linger: Duration::from_millis(args.linger_ms),
        batch_size: args.batch_size,
        max_in_flight: args.max_in_flight,
        buffer_memory: args.buffer_memory,
        idempotence: args.idempotence,
        consumers: args.consumers,
        rate: args.rate,
        consume: matches!(args.workload, Workload::Consume | Workload::Both),
        progress: !args.no_progress,
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reports: Vec<(String, BenchReport)> = Vec::new();
    let mut notes = Vec::new();

    let produces = matches!(args.workload, Workload::Produce | Workload::Both);
    let consumes = matches!(args.workload, Workload::Consume | Workload::Both);
    if args.workload == Workload::RestProduce && (args.http.is_some() || args.bootstrap.is_some()) {
        run_rest_produce(&config, &mut reports, &mut notes).await?;
    } else if args.bootstrap.is_some() {
        if produces {
            reports.push((
                "produce".into(),
                streamhouse_bench::run_produce(&config).await?,
            ));
        }
        if consumes {
            reports.push((
                "consume".into(),
                streamhouse_bench::run_consume(&config).await?,
            ));
        }
        run_group_workloads(args.workload, &config, &mut reports, &mut notes).await?;
    } else {
        let temp = tempfile::tempdir().context("cannot create a temporary data dir")?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().to_path_buf());
        let serve_args = |cache_max_bytes: usize| ServeArgs {
            data_dir: data_dir.clone(),
            metadata_url: None,
            object_store_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            kafka_addr: "127.0.0.1:0".into(),
            http_addr: "127.0.0.1:0".into(),
            http_max_body_bytes: 16 << 20,
            advertised_kafka_addr: None,
            agent_id: Some("bench".into()),
            agent_group: "default".into(),
            flush_interval_ms: args.flush_interval_ms,
            flush_max_bytes: args.flush_max_bytes,
            max_pending_bytes: (64 << 20).max(args.flush_max_bytes),
            cache_max_bytes,
            max_request_bytes: 100 << 20,
            auto_create_topics: false,
            default_partitions: 1,
            group_initial_rebalance_delay_ms: 3000,
            lease_ttl_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            retention_check_interval_ms: 300_000,
            compaction_interval_ms: args.compaction_interval_ms,
            compaction_target_bytes: 64 << 20,
            compaction_window_ms: args.compaction_window_ms,
            compaction_entry_bytes: 256 << 10,
            gc_interval_ms: 60_000,
            gc_grace_ms: 60_000,
            orphan_grace_ms: 600_000,
        };

        // Phase 1: produce, then consume with the data still in the cache.
        let server = serve::start(&serve_args(1 << 30), CancellationToken::new()).await?;
        config.bootstrap = server.kafka_addr.to_string();
        config.http = server.http_addr.to_string();
        let samples: std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>> = Default::default();
        let sampler = tokio::spawn(sample_object_count(server.agent.clone(), samples.clone()));
        if args.workload == Workload::RestProduce {
            run_rest_produce(&config, &mut reports, &mut notes).await?;
        }
        if produces || args.workload == Workload::GroupConsume {
            let stats = server.agent.storage().stats();
            let puts_before = stats.puts.load(Ordering::Relaxed);
            let report = streamhouse_bench::run_produce(&config).await?;
            let puts = stats.puts.load(Ordering::Relaxed) - puts_before;
            notes.push(format!(
                "object PUTs during produce: {puts} in {:.2} s = {:.1} PUT/s ({} partitions, flush interval {} ms, flush max {} bytes)",
                report.elapsed.as_secs_f64(),
                puts as f64 / report.elapsed.as_secs_f64().max(1e-9),
                args.partitions,
                args.flush_interval_ms,
                args.flush_max_bytes
            ));
            reports.push(("produce".into(), report));
        }
        if consumes {
            reports.push((
                "consume (cache)".into(),
                streamhouse_bench::run_consume(&config).await?,
            ));
        }
        run_group_workloads(args.workload, &config, &mut reports, &mut notes).await?;
        sampler.abort();
        let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !samples.is_empty() {
            let list: Vec<String> = samples.iter().map(|(t, n)| format!("{t}s:{n}")).collect();
            notes.push(format!(
                "objects in the store every 10 s: {}",
                list.join(" ")
            ));
        }
        if args.compaction_interval_ms > 0 {
            compaction_notes(&server.agent, &mut notes).await?;
        }
        server.stop().await?;

        // Phase 2: a fresh server with no cache reads everything with ranged GETs.
        if consumes {
            let server = serve::start(&serve_args(0), CancellationToken::new()).await?;
            config.bootstrap = server.kafka_addr.to_string();
            let stats = server.agent.storage().stats();
            let report = streamhouse_bench::run_consume(&config).await?;
            notes.push(format!(
                "object GETs during uncached consume: {} ({} MiB)",
                stats.gets.load(Ordering::Relaxed),
                stats.get_bytes.load(Ordering::Relaxed) >> 20
            ));
            reports.push(("consume (object store)".into(), report));
            server.stop().await?;
        }
    }

    println!();
    for (name, report) in &reports {
        println!("== {name}");
        println!("{}", report.render_table());
    }
    for note in &notes {
        println!("{note}");
    }
    if let Some(path) = &args.json {
        let lines: Vec<String> = reports.iter().map(|(_, r)| r.to_json()).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if reports.iter().any(|(_, r)| r.offset_errors > 0) {
        anyhow::bail!("offset errors were seen: offsets were not contiguous");
    }
    Ok(())
}

/// Counts the objects in the store every 10 s into `samples` (seconds since start, count).
async fn sample_object_count(
    agent: std::sync::Arc<streamhouse_agent::Agent>,
    samples: std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
) {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        if let Ok(objects) = agent.storage().list(streamhouse_agent::DATA_PREFIX).await {
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((started.elapsed().as_secs(), objects.len()));
        }
    }
}

/// What compaction did in the background, then one more pass run now (timed: compaction
/// throughput), and the objects left.
async fn compaction_notes(
    agent: &streamhouse_agent::Agent,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (background, busy) = agent.compaction_totals();
    notes.push(format!(
        "background compaction: {} objects written from {} index entries ({} entries out), {:.1} MiB merged in {:.2} s of compaction work = {:.1} MiB/s",
        background.objects,
        background.entries_in,
        background.entries_out,
        background.bytes as f64 / 1048576.0,
        busy.as_secs_f64(),
        background.bytes as f64 / 1048576.0 / busy.as_secs_f64().max(1e-9)
    ));
    let started = std::time::Instant::now();
    let done = agent.compact().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let objects = agent
        .storage()
        .list(streamhouse_agent::DATA_PREFIX)
        .await?
        .len();
    notes.push(format!(
        "final compaction pass: {} objects written from {} index entries ({} entries out), {:.1} MiB in {:.2} s = {:.1} MiB/s; {objects} objects in the store after it (unnamed ones wait {} ms for garbage collection)",
        done.objects,
        done.entries_in,
        done.entries_out,
        done.bytes as f64 / 1048576.0,
        elapsed,
        done.bytes as f64 / 1048576.0 / elapsed.max(1e-9),
        agent.config().gc_grace.as_millis()
    ));
    Ok(())
}

/// The REST produce run.
async fn run_rest_produce(
    config: &BenchConfig,
    reports: &mut Vec<(String, BenchReport)>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let report = streamhouse_bench::run_rest_produce(config).await?;
    notes.push(format!(
        "rest-produce: {} HTTP clients, {} record(s) per request, each waiting for its answer; latency per request",
        config.producers, config.rest_batch
    ));
    reports.push(("rest-produce".into(), report));
    Ok(())
}

/// The group-consume and end-to-end runs (nothing for the other workloads).
async fn run_group_workloads(
    workload: Workload,
    config: &BenchConfig,
    reports: &mut Vec<(String, BenchReport)>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    match workload {
        Workload::GroupConsume => {
            let report = streamhouse_bench::run_group_consume(config).await?;
            notes.push(format!(
                "group-consume: {} consumers in one group; throughput from the first record received",
                config.consumers
            ));
            reports.push(("group-consume".into(), report));
        }
        Workload::EndToEnd => {
            let reports_of_run = streamhouse_bench::run_end_to_end(config).await?;
            notes.push(format!(
                "end-to-end: {} records/s offered for {} records; latency = consumer receive - scheduled send",
                config.rate, config.records
            ));
            notes.push(
                "produce (end-to-end run): latency = acknowledgement - scheduled send".into(),
            );
            reports.push(("produce".into(), reports_of_run.produce));
            reports.push(("end-to-end".into(), reports_of_run.end_to_end));
        }
        Workload::Produce | Workload::Consume | Workload::Both | Workload::RestProduce => {}
    }
    Ok(())
}
