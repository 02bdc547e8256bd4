//! `aimarket worker`.

use super::Ctx;
use anyhow::Context;
use protocol::messages::{ApiOp, WorkerTokenReply, WorkerTokenRequest, WorkerTokenRevoked};
use protocol::{TaskType, WorkerId};
use std::sync::Arc;
use std::time::Duration;
use worker::WorkerConfig;

/// `aimarket worker --id ID ...` runs a worker; `aimarket worker token ...` manages tokens.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct WorkerCommand {
    #[command(subcommand)]
    token: Option<TokenCommand>,
    #[command(flatten)]
    args: Args,
}

/// `aimarket worker token`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Worker tokens: a worker presents its token (AIMARKET_WORKER_TOKEN) on every message.
    #[command(subcommand)]
    Token(TokenAction),
}

/// What to do with a token.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenAction {
    /// Issue a token for worker ID (replacing any earlier one). Printed once; the coordinator
    /// keeps only its hash.
    Create {
        /// The worker.
        id: WorkerId,
    },
    /// Revoke worker ID's token.
    Revoke {
        /// The worker.
        id: WorkerId,
    },
}

/// A worker's identity, model and pacing.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// This worker's id (letters, digits, '_' and '-').
    #[arg(long, env = "AIMARKET_WORKER_ID", required = true)]
    id: Option<WorkerId>,
    /// This worker's token, when the coordinator requires one.
    #[arg(long, env = "AIMARKET_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The model to run: auto (distilbert-sst2 when its weights are cached or downloadable, else
    /// lexicon), lexicon, distilbert-sst2, minilm, smollm2, or gguf:PATH (any
    /// llama- or qwen2-architecture chat GGUF file with Q4_1 or Q8_0 weights).
    #[arg(long, env = "AIMARKET_MODEL", default_value = "lexicon")]
    model: String,
    /// Folder with the model's weights in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json or vocab.txt), for transformer models. Default: the Hugging Face cache
    /// (HF_HOME), downloading into it unless HF_HUB_OFFLINE is set.
    #[arg(long, env = "AIMARKET_MODEL_DIR")]
    model_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    engine: super::models::EngineArgs,
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
    /// A pause added to every batch, in ms: a drill that makes any model slower than the lease,
    /// to watch the heartbeats keep its leases alive.
    #[arg(long, default_value_t = 0)]
    extra_latency_ms: u64,
    /// A drill, never for real work: answer wrongly on purpose so verification can be watched
    /// catching a bad worker. `truncate`, `random`, `other-seed`, `echo` spoil generations,
    /// `pass-everything` passes every candidate it scores, `flip` answers label tasks wrongly.
    #[arg(long, value_parser = parse_misbehave)]
    misbehave: Option<worker::misbehave::Misbehave>,
}

fn parse_misbehave(s: &str) -> Result<worker::misbehave::Misbehave, String> {
    worker::misbehave::Misbehave::parse(s).ok_or_else(|| {
        let kinds: Vec<&str> = worker::misbehave::Misbehave::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!("{s:?} is not one of {}", kinds.join(", "))
    })
}

/// Runs a worker until SIGINT/SIGTERM, or a token command.
pub(crate) async fn run(ctx: &Ctx, cmd: WorkerCommand) -> anyhow::Result<()> {
    match cmd.token {
        Some(TokenCommand::Token(action)) => token(ctx, action).await,
        None => serve(ctx, cmd.args).await,
    }
}

async fn token(ctx: &Ctx, action: TokenAction) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    match action {
        TokenAction::Create { id } => {
            let r: WorkerTokenReply = client
                .call(
                    ApiOp::WorkerTokenCreate,
                    &WorkerTokenRequest { worker_id: id },
                )
                .await?;
            if ctx.json {
                return crate::output::json(&r);
            }
            println!("{}", r.token);
            eprintln!(
                "token for worker {} (shown once): start it with AIMARKET_WORKER_TOKEN=<token> aimarket worker --id {}",
                r.worker_id, r.worker_id
            );
        }
        TokenAction::Revoke { id } => {
            let r: WorkerTokenRevoked = client
                .call(
                    ApiOp::WorkerTokenRevoke,
                    &WorkerTokenRequest {
                        worker_id: id.clone(),
                    },
                )
                .await?;
            if ctx.json {
                return crate::output::json(&r);
            }
            if r.revoked {
                println!("revoked the token of worker {id}");
            } else {
                println!("worker {id} had no token");
            }
        }
    }
    Ok(())
}

async fn serve(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let id = args.id.context("--id is required")?;
    let (name, dir) = (args.model.clone(), args.model_dir.clone());
    let engine = args.engine.config();
    let mut model = tokio::task::spawn_blocking(move || {
        worker::model::load_with(&name, dir.as_deref(), &engine)
    })
    .await??;
    if args.extra_latency_ms > 0 {
        let pause = Duration::from_millis(args.extra_latency_ms);
        model = Box::new(worker::model::Delayed::new(model, pause));
    }
    let mut config = WorkerConfig::new(id, ctx.nats.clone());
    config.nats_ping = ctx.nats_ping;
    config.token = args.token;
    config.prefix = ctx.prefix.clone();
    config.capabilities = args.capabilities;
    config.batch = args.batch;
    config.poll_interval = Duration::from_millis(args.poll_ms.max(10));
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds.max(1));
    config.misbehave = args.misbehave;
    if let Some(m) = args.misbehave {
        tracing::warn!(misbehave = ?m, "drill: this worker answers wrongly on purpose");
    }
    let shutdown = crate::shutdown::on_signal(config.shutdown_grace + Duration::from_secs(5));
    worker::run(config, Arc::from(model), shutdown)
        .await
        .context("worker stopped")?;
    Ok(())
}
