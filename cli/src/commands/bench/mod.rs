//! `aimarket bench`: like `nats bench` or `redis-benchmark`. Starts nats-server and a coordinator
//! (or uses running ones with `--connect`), measures the bulk `task add` rate, drives W workers
//! with an instant model through N tasks, and reports finalized tasks/s, submissions/s, lease and
//! submit round trips (p50/p99/p999) beside a NATS echo's (the transport's floor under the same
//! load), and the coordinator's CPU and peak RSS. `--depth K` also measures lease latency with K
//! tasks queued. Every run checks the store's ledger over the load (each task finalized exactly
//! once, every vote stored) and fails when it does not add up.
//!
//! In files by part: `report` (what a run reports, and its table), `stack` (the nats-server and
//! coordinators a run starts, and the processes' CPU and memory), `workload` (the bulk add and the
//! workers' load), `queue_depth` (lease latency with a deep queue).

mod queue_depth;
mod report;
mod stack;
mod workload;

use queue_depth::*;
use report::*;
use stack::*;
use workload::*;

use super::Ctx;
use crate::client::Client;
use anyhow::bail;
use protocol::messages::{ApiOp, Empty, StatsReply};
use protocol::TaskStatus;
use std::process::Child;
use std::time::{Duration, Instant};

/// Benchmark parameters.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Tasks to finalize under load.
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    /// Workers driving the load.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    /// Submissions each task needs.
    #[arg(long, default_value_t = 3)]
    required: u32,
    /// Leases a worker asks for at once.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Offer this many tasks/s (to finalize) instead of as many as the coordinator takes: latency
    /// at a given load, not at saturation, where it is only the queue's length (0: as fast as
    /// possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Texts for the bulk `task add --file` measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    bulk: u64,
    /// Also measure lease latency with this many tasks queued (0 skips it).
    #[arg(long, default_value_t = 0)]
    depth: u64,
    /// Use the NATS server and coordinator at --nats instead of starting them.
    #[arg(long)]
    connect: bool,
    /// The store of the coordinators started: a PostgreSQL URL (an empty database: open tasks
    /// in it are refused), or a SQLite file (default: a new one in a temp dir).
    #[arg(long)]
    db: Option<String>,
    /// Coordinators to start, all on `--db` (more than one needs PostgreSQL).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    coordinators: u32,
}

/// Runs the benchmark.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tasks > 0 && args.workers > 0,
        "--tasks and --workers must be positive"
    );
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be a number of tasks/s, or 0 for as fast as possible"
    );
    anyhow::ensure!(
        args.workers >= args.required,
        "--workers ({}) must be at least --required ({}): a task needs distinct workers",
        args.workers,
        args.required
    );
    let postgres = args.db.as_deref().is_some_and(coordinator::is_postgres_url);
    anyhow::ensure!(
        args.coordinators == 1 || postgres,
        "--coordinators {} needs a shared store: --db postgres://...",
        args.coordinators
    );
    let stack = if args.connect {
        None
    } else {
        Some(Stack::start(
            &ctx.prefix,
            args.db.as_deref(),
            args.coordinators,
        )?)
    };
    let nats_url = stack
        .as_ref()
        .map_or_else(|| ctx.nats.clone(), |s| s.url.clone());
    let client = Client::connect(
        &nats_url,
        ctx.nats_ping,
        &ctx.prefix,
        ctx.api_key.as_deref(),
    )
    .await?;
    wait_ready(&client).await?;
    // A store it did not create (`--db`) must hold no open tasks: its workers would take them.
    if args.db.is_some() && !args.connect {
        let s = stats(&client).await?;
        let open: u64 = [TaskStatus::Queued, TaskStatus::Assigned]
            .iter()
            .map(|t| s.tasks_by_status.get(t).copied().unwrap_or(0))
            .sum();
        anyhow::ensure!(
            open == 0,
            "the store holds {open} open tasks from before: bench needs an empty database"
        );
    }
    let run = Run::new()?;
    run.register(&client).await?;
    let bulk = if args.bulk > 0 {
        eprintln!(
            "bench: bulk add of {} texts through `task add --file`",
            args.bulk
        );
        Some(
            bulk_add(
                &client,
                args.bulk,
                stack.as_ref().map(|s| s.dir.path()),
                &run,
            )
            .await?,
        )
    } else {
        None
    };

    eprintln!(
        "bench: {} tasks x {} votes, {} workers, batch {}{}",
        args.tasks,
        args.required,
        args.workers,
        args.batch,
        if args.rate > 0.0 {
            format!(", offered {} tasks/s", args.rate)
        } else {
            String::new()
        }
    );
    let pids: Vec<u32> = stack
        .as_ref()
        .map(|s| s.coordinators.iter().map(Child::id).collect())
        .unwrap_or_default();
    let pid = pids.first().copied();
    let nats_pid = stack.as_ref().map(|s| s.nats.pid());
    let stats_before = stats(&client).await?;
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let nats_before = nats_pid.and_then(cpu_ticks);
    let pg_before = postgres.then(postgres_ticks);
    let load_started = Instant::now();
    let load = load(&client, &nats_url, &args, &run).await?;
    // CPU over the load phase only: ticks are USER_HZ (100 a second on Linux).
    let cores = |before: Option<u64>, after: Option<u64>| {
        before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / 100.0 / load_started.elapsed().as_secs_f64())
    };
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .filter_map(|(p, before)| cores(*before, cpu_ticks(*p)))
        .collect();
    let nats_cpu = cores(nats_before, nats_pid.and_then(cpu_ticks));
    let pg_cpu = cores(pg_before, postgres.then(postgres_ticks));
    let store = stack.as_ref().map_or_else(
        || "-".to_owned(),
        |s| {
            if postgres {
                coordinator::without_password(&s.db)
            } else {
                format!("sqlite {}", s.db)
            }
        },
    );
    let ledger = Ledger::between(&stats_before, &stats(&client).await?, load.finalized);
    if !ledger.adds_up(args.tasks, args.required) {
        let msg = format!(
            "the ledger does not add up: {} tasks x {} votes gave {ledger:?}",
            args.tasks, args.required
        );
        if stack.is_some() {
            bail!(msg);
        }
        eprintln!("bench: {msg} (did another client use the coordinator meanwhile?)");
    }

    let depth = if args.depth > 0 {
        eprintln!("bench: lease latency with {} tasks queued", args.depth);
        Some(depth(&client, args.depth, &run).await?)
    } else {
        None
    };

    let rss = pid.and_then(peak_rss_mb);
    let report = Report {
        tasks: args.tasks,
        workers: args.workers,
        required: args.required,
        batch: args.batch,
        offered_per_sec: (args.rate > 0.0).then_some(args.rate),
        finalized_per_sec: load.finalized_per_sec,
        submissions_per_sec: load.submissions_per_sec,
        lease_rtt_us: Percentiles::of(&load.lease_h),
        submit_rtt_us: Percentiles::of(&load.submit_h),
        echo_rtt_us: Percentiles::of(&load.echo_h),
        bulk_add: bulk,
        depth,
        store,
        coordinator_cpu_cores: cpu,
        coordinator_peak_rss_mb: rss,
        nats_cpu_cores: nats_cpu,
        postgres_cpu_cores: pg_cpu,
        ledger,
    };
    drop(stack);
    if ctx.json {
        return crate::output::json(&report);
    }
    print(&report);
    Ok(())
}

async fn stats(client: &Client) -> anyhow::Result<StatsReply> {
    client.call(ApiOp::Stats, &Empty {}).await
}

async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match stats(client).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the coordinator never answered"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
