//! `aimarket worker`.

use super::Ctx;
use anyhow::Context;
use protocol::{TaskType, WorkerId};
use std::sync::Arc;
use std::time::Duration;
use worker::WorkerConfig;

/// A worker's identity, model and pacing.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This worker's id (letters, digits, '_' and '-').
    #[arg(long, env = "AIMARKET_WORKER_ID")]
    id: WorkerId,
    /// The model to run.
    #[arg(long, env = "AIMARKET_MODEL", default_value = "lexicon")]
    model: String,
    /// Task types to take (comma-separated); default: all the model can do.
    #[arg(long, value_delimiter = ',')]
    capabilities: Vec<TaskType>,
    /// Leases to ask for at once, run as one batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// How often an idle worker asks for work when nothing is announced, in ms.
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Longest gap between heartbeats, in seconds (shortened to fit the coordinator's TTL).
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let model = worker::model::load(&args.model)?;
    let mut config = WorkerConfig::new(args.id, ctx.nats.clone());
    config.prefix = ctx.prefix.clone();
    config.capabilities = args.capabilities;
    config.batch = args.batch;
    config.poll_interval = Duration::from_millis(args.poll_ms.max(10));
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.max(1));
    let shutdown = crate::shutdown::on_signal(config.shutdown_grace + Duration::from_secs(5));
    worker::run(config, Arc::from(model), shutdown)
        .await
        .context("worker stopped")?;
    Ok(())
}
