//! The `streamhouse` binary: `serve` runs an agent; `topic`, `produce`, `consume` and
//! `bench` are clients that talk to a running server over the Kafka protocol, as are `agents`
//! and `partitions`, which show who leads what in a group of agents.

mod bench;
mod clients;
mod ops;
mod serve;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// StreamHouse: Kafka-compatible event streaming on object storage.
#[derive(Debug, Parser)]
#[command(name = "streamhouse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent: the Kafka listener, the write path and the read path.
    Serve(serve::ServeArgs),
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(clients::TopicCommand),
    /// List, describe (members, partitions, lag) or delete consumer groups.
    #[command(subcommand)]
    Group(clients::GroupCommand),
    /// Send records (arguments, or one per line of standard input) and print their offsets.
    Produce(clients::ProduceArgs),
    /// Read records and print them.
    Consume(clients::ConsumeArgs),
    /// Measure produce and consume throughput and latency.
    Bench(bench::BenchArgs),
    /// List the live agents of a group and how many partitions each leads.
    #[command(subcommand)]
    Agents(ops::AgentsCommand),
    /// Show every partition (of all topics, or the given ones) with its leader, leader
    /// epoch, log start and high watermark.
    Partitions(ops::PartitionsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Crash points for the crash tests (FAILPOINTS=<name>=return); inert without it.
    let _failpoints = streamhouse_agent::failpoints::setup();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args, CancellationToken::new()).await,
            Command::Topic(command) => clients::topic(command).await,
            Command::Group(command) => clients::group(command).await,
            Command::Produce(args) => clients::produce(args).await,
            Command::Consume(args) => clients::consume(args).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Agents(command) => ops::agents(command).await,
            Command::Partitions(args) => ops::partitions(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
