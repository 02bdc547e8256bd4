//! `aimarket coordinator`.

use super::Ctx;
use anyhow::Context;
use coordinator::{Config, Settings};
use protocol::generation::VerifyMode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every tunable is a flag with an env var.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The store: a SQLite database file (created if missing), or a PostgreSQL URL
    /// (`postgres://user@host/db`) that several coordinators share.
    #[arg(long, env = "AIMARKET_DB", default_value = "coordinator.db")]
    db: PathBuf,
    /// PostgreSQL only: a transaction this coordinator leaves idle this long (a frozen
    /// process) is ended by the server, its row locks freed for the other coordinators.
    #[arg(long, env = "AIMARKET_PG_IDLE_SECONDS", default_value_t = 10)]
    pg_idle_seconds: u64,
    /// A worker silent this long is stale and loses its leases.
    #[arg(long, env = "HEARTBEAT_TTL_SECONDS", default_value_t = 45)]
    heartbeat_ttl_seconds: u64,
    /// A lease lasts this long after its grant or its holder's last heartbeat.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = 75)]
    lease_seconds: u64,
    /// How often expired leases and stale workers are swept.
    #[arg(long, env = "REQUEUE_SWEEP_SECONDS", default_value_t = 15)]
    requeue_sweep_seconds: u64,
    /// Attempts (leases ended without a result) a task gets when it names none.
    #[arg(long, env = "MAX_ATTEMPTS_DEFAULT", default_value_t = 5)]
    max_attempts_default: u32,
    /// Largest task text, in bytes.
    #[arg(long, env = "AIMARKET_MAX_TEXT_BYTES", default_value_t = protocol::limits::DEFAULT_MAX_TEXT_BYTES)]
    max_text_bytes: usize,
    /// Address of the HTTP gateway (the original API, /metrics, /dashboard); `off` disables it.
    #[arg(long, env = "AIMARKET_HTTP", default_value = "127.0.0.1:8000", value_parser = parse_http)]
    http: HttpAddr,
    /// Seconds an OpenAI-compatible request (/v1/chat/completions, /v1/embeddings) waits for
    /// its task to be final, unless it says otherwise; past it, a 504 naming the task.
    #[arg(long, env = "AIMARKET_API_WAIT_SECONDS", default_value_t = 120)]
    api_wait_seconds: u64,
    /// Each client key's quota of OpenAI-compatible requests that make tasks (chat
    /// completions, completions, embeddings) per minute, refilled evenly; past it, 429 with
    /// Retry-After. Without client keys every request shares one quota. 0: no quota.
    #[arg(long, env = "AIMARKET_API_REQUESTS_PER_MINUTE", default_value_t = 0)]
    api_requests_per_minute: u32,
    /// Most leases one worker may hold at once.
    #[arg(long, env = "AIMARKET_MAX_LEASES_PER_WORKER", default_value_t = 64)]
    max_leases_per_worker: u32,
    /// Probability, 0 to 1, that a verifier is handed a trap (a corrupted copy of a candidate
    /// answer, which it must refuse) instead of a real candidate.
    #[arg(long, env = "AIMARKET_TRAP_RATE", default_value_t = 0.1, value_parser = parse_rate)]
    trap_rate: f64,
    /// How generative tasks that do not say are verified: `exact` (every worker generates;
    /// a split is cross-scored) or `generate-once` (one generates, the others score it).
    #[arg(long, env = "AIMARKET_VERIFY", default_value = "exact", value_parser = parse_verify)]
    verify: VerifyMode,
    /// Probability, 0 to 1, that a lease slot holds a gold task (a known-answer item added
    /// with `aimarket gold add`, checked and never voted) instead of a real one.
    #[arg(long, env = "AIMARKET_GOLD_RATE", default_value_t = 0.05, value_parser = parse_rate)]
    gold_rate: f64,
    /// Gold answers a worker gives before its gold accuracy can quarantine it.
    #[arg(long, env = "AIMARKET_GOLD_MIN_ANSWERS", default_value_t = 20)]
    gold_min_answers: u32,
    /// Gold accuracy, over a worker's last 50 gold answers, below which it is quarantined:
    /// it then gets only gold until it is back above.
    #[arg(long, env = "AIMARKET_GOLD_MIN_ACCURACY", default_value_t = 0.5, value_parser = parse_rate)]
    gold_min_accuracy: f64,
    /// Label and embedding tasks that do not say count at most one answer per model content
    /// hash.
    #[arg(long, env = "AIMARKET_DISTINCT_MODELS")]
    distinct_models: bool,
    /// How label tasks that do not say are decided: quorum, majority, or posterior (answers
    /// weighed by their model content's calibration on gold; see --posterior-threshold).
    /// Embedding tasks keep quorum.
    #[arg(long, env = "AIMARKET_LABEL_POLICY", default_value = "quorum")]
    label_policy: protocol::policy::Policy,
    /// The posterior the best label needs under the posterior policy, when a task does not
    /// say, in (0.5, 1).
    #[arg(long, env = "AIMARKET_POSTERIOR_THRESHOLD", default_value_t = protocol::policy::DEFAULT_POSTERIOR_THRESHOLD)]
    posterior_threshold: f64,
    /// Probability that a trusted worker's lone answer, confident enough to decide its task
    /// alone, goes to one more replica anyway (a spot check).
    #[arg(long, env = "AIMARKET_SPOT_CHECK_RATE", default_value_t = coordinator::truth::DEFAULT_SPOT_CHECK_RATE, value_parser = parse_rate)]
    spot_check_rate: f64,
    /// Milliseconds the first answer of a posterior task is kept for workers of the strongest
    /// live model (by gold calibration, two points of accuracy ahead at least) before a
    /// weaker model's worker may take it; 0: whoever asks first.
    #[arg(long, env = "AIMARKET_STRONG_FIRST_MS", default_value_t = 0)]
    strong_first_ms: u64,
}

/// Runs until SIGINT/SIGTERM.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.lease_seconds > 0, "--lease-seconds must be at least 1");
    anyhow::ensure!(
        args.heartbeat_ttl_seconds > 0,
        "--heartbeat-ttl-seconds must be at least 1"
    );
    anyhow::ensure!(
        args.requeue_sweep_seconds > 0,
        "--requeue-sweep-seconds must be at least 1"
    );
    anyhow::ensure!(
        (1..=protocol::limits::MAX_ATTEMPTS_LIMIT).contains(&args.max_attempts_default),
        "--max-attempts-default must be between 1 and {}",
        protocol::limits::MAX_ATTEMPTS_LIMIT
    );
    anyhow::ensure!(
        args.pg_idle_seconds > 0,
        "--pg-idle-seconds must be at least 1"
    );
    anyhow::ensure!(
        args.posterior_threshold > 0.5 && args.posterior_threshold < 1.0,
        "--posterior-threshold must be in (0.5, 1)"
    );
    let mut config = Config::new(ctx.nats.clone(), args.db);
    config.pg_timeouts.idle_in_transaction = Duration::from_secs(args.pg_idle_seconds);
    // A lock held longer than the idle timeout is a frozen holder's: give up waiting sooner.
    config.pg_timeouts.lock = config
        .pg_timeouts
        .lock
        .min(Duration::from_secs(args.pg_idle_seconds));
    config.nats_ping = ctx.nats_ping;
    config.prefix = ctx.prefix.clone();
    config.settings = Settings {
        lease_ms: secs_to_ms(args.lease_seconds),
        heartbeat_ttl_ms: secs_to_ms(args.heartbeat_ttl_seconds),
        max_attempts_default: args.max_attempts_default,
        max_text_bytes: args.max_text_bytes,
        max_leases_per_worker: args.max_leases_per_worker,
        trap_rate: args.trap_rate,
        verify_default: args.verify,
        gold_rate: args.gold_rate,
        gold_min_answers: args.gold_min_answers.max(1),
        gold_min_accuracy: args.gold_min_accuracy,
        distinct_models_default: args.distinct_models,
        label_policy: args.label_policy,
        posterior_threshold: args.posterior_threshold,
        spot_check_rate: args.spot_check_rate,
        strong_first_ms: i64::try_from(args.strong_first_ms).unwrap_or(i64::MAX),
    };
    config.sweep_interval = Duration::from_secs(args.requeue_sweep_seconds);
    config.http = args.http.0;
    config.api_wait = Duration::from_secs(args.api_wait_seconds.max(1));
    config.api_quota = std::num::NonZeroU32::new(args.api_requests_per_minute);
    config.auth = coordinator::Auth::new(
        ctx.api_key
            .iter()
            .flat_map(|k| k.split(','))
            .map(|k| k.trim().to_owned()),
    );
    let shutdown = crate::shutdown::on_signal(config.shutdown_grace + Duration::from_secs(5));
    coordinator::run(config, shutdown)
        .await
        .context("coordinator stopped")
}

/// `--http`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct HttpAddr(Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    s.parse()
        .map(|a| HttpAddr(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8000 or `off`: {e}"))
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn parse_verify(s: &str) -> Result<VerifyMode, String> {
    s.parse()
        .map_err(|e: protocol::ProtocolError| e.to_string())
}
