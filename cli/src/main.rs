//! `aimarket`: the coordinator, the worker and the client commands in one binary.
//!
//! This file parses arguments, sets up logging and signals, and dispatches; the commands live in
//! [`commands`], the NATS client of the coordinator's API in [`client`], output in [`output`].

mod client;
mod commands;
mod output;
mod shutdown;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Coordinate and verify AI inference across many workers over NATS.
#[derive(Debug, Parser)]
#[command(name = "aimarket", version, propagate_version = true)]
pub struct Cli {
    /// NATS server URL, or several comma-separated (the nodes of a cluster: the connection
    /// fails over between them).
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Seconds between pings to the NATS server: a frozen server is left after two unanswered
    /// pings.
    #[arg(long, global = true, env = "AIMARKET_NATS_PING_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    nats_ping_seconds: u64,
    /// Subject prefix shared by the coordinator, its workers and clients.
    #[arg(long, global = true, env = "AIMARKET_PREFIX", default_value = protocol::subject::DEFAULT_PREFIX)]
    prefix: String,
    /// API key: on the coordinator, the accepted keys (comma-separated; setting any turns
    /// authentication on); on clients, the key to present for changes (task add, ops, tokens).
    #[arg(long, global = true, env = "AIMARKET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: the store, the NATS API and the sweeper.
    Coordinator(commands::coordinator::Args),
    /// Run a worker: lease tasks, run a model, submit results. `worker token` manages tokens.
    Worker(commands::worker::WorkerCommand),
    /// Create, list, inspect and wait for tasks.
    #[command(subcommand)]
    Task(commands::task::TaskCommand),
    /// Known-answer (gold) items, mixed into leases to measure each worker's accuracy.
    #[command(subcommand)]
    Gold(commands::gold::GoldCommand),
    /// Workers by points (one per answer in a finalized quorum), with their model, agreement
    /// rate and gold accuracy; `--by-model` shows them per model content and task type.
    Leaderboard {
        /// Agreement with consensus and gold accuracy per model content and task type instead.
        #[arg(long)]
        by_model: bool,
    },
    /// The worker registry: status, model, capabilities, leases, last heartbeat.
    Workers,
    /// The running coordinators (NATS micro service `aimarket-coordinator`) with their counters.
    Coordinators,
    /// Counts of tasks by status, submissions, workers and leases.
    Stats,
    /// Operations on the coordinator's state.
    #[command(subcommand)]
    Ops(commands::ops::OpsCommand),
    /// Measure throughput and latency (starts its own nats-server and coordinator).
    Bench(commands::bench::Args),
    /// Run a model locally on texts (no coordinator): label, confidence, raw scores.
    Infer(commands::models::InferArgs),
    /// A model's accuracy on human-rated sentences.
    Eval(commands::models::EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
    init_logging(if serving {
        "info,async_nats=warn"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let ctx = commands::Ctx {
        nats: cli.nats,
        nats_ping: std::time::Duration::from_secs(cli.nats_ping_seconds),
        prefix: cli.prefix,
        api_key: cli.api_key,
        json: cli.json,
    };
    match cli.command {
        Command::Coordinator(args) => commands::coordinator::run(&ctx, args).await,
        Command::Worker(cmd) => commands::worker::run(&ctx, cmd).await,
        Command::Task(cmd) => commands::task::run(&ctx, cmd).await,
        Command::Gold(cmd) => commands::gold::run(&ctx, cmd).await,
        Command::Leaderboard { by_model: false } => commands::views::leaderboard(&ctx).await,
        Command::Leaderboard { by_model: true } => commands::views::by_model(&ctx).await,
        Command::Workers => commands::views::workers(&ctx).await,
        Command::Coordinators => commands::views::coordinators(&ctx).await,
        Command::Stats => commands::views::stats(&ctx).await,
        Command::Ops(cmd) => commands::ops::run(&ctx, cmd).await,
        Command::Bench(args) => commands::bench::run(&ctx, args).await,
        Command::Infer(args) => commands::models::infer(&ctx, args).await,
        Command::Eval(args) => commands::models::eval(&ctx, args).await,
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
