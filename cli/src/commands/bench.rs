//! `aimarket bench`: like `nats bench` or `redis-benchmark`. Starts nats-server and a coordinator
//! (or uses running ones with `--connect`), measures the bulk `task add` rate, drives W workers
//! with an instant model through N tasks, and reports finalized tasks/s, submissions/s, lease and
//! submit round trips (p50/p99/p999) beside a NATS echo's (the transport's floor under the same
//! load), and the coordinator's CPU and peak RSS. `--depth K` also measures lease latency with K
//! tasks queued. Every run checks the store's ledger over the load (each task finalized exactly
//! once, every vote stored) and fails when it does not add up.

use super::Ctx;
use crate::client::Client;
use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use protocol::messages::{
    encode, ApiOp, Empty, LeaseReply, LeaseRequest, NewTask, StatsReply, SubmitReply, SubmitRequest,
};
use protocol::{reply, subject, TaskStatus, TaskType, WorkerId};
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    tasks: u64,
    workers: u32,
    required: u32,
    batch: u32,
    offered_per_sec: Option<f64>,
    finalized_per_sec: f64,
    submissions_per_sec: f64,
    lease_rtt_us: Percentiles,
    submit_rtt_us: Percentiles,
    /// A NATS request to a responder that does nothing, during the load: the transport's floor.
    echo_rtt_us: Percentiles,
    bulk_add: Option<Rate>,
    depth: Option<DepthReport>,
    /// The store the coordinators ran on (`sqlite <path>`, or the PostgreSQL URL without its
    /// password).
    store: String,
    /// CPU of each coordinator over the load phase, in cores.
    coordinator_cpu_cores: Vec<f64>,
    coordinator_peak_rss_mb: Option<f64>,
    /// CPU of nats-server over the load phase, in cores.
    nats_cpu_cores: Option<f64>,
    /// CPU of every `postgres` process on this machine over the load phase, in cores.
    postgres_cpu_cores: Option<f64>,
    ledger: Ledger,
}

/// What the store gained over the load phase, checked after every run: correctness at full
/// speed, not only speed.
#[derive(Debug, Serialize)]
struct Ledger {
    /// Tasks finalized.
    finalized: u64,
    /// Tasks failed.
    failed: u64,
    /// Votes stored.
    submissions: u64,
    /// Submit replies that said "this vote finalized the task".
    finalizations_acknowledged: u64,
}

impl Ledger {
    /// Between two `stats` replies, with the finalizations the workers were told of.
    fn between(before: &StatsReply, after: &StatsReply, acknowledged: u64) -> Self {
        let count = |r: &StatsReply, s: TaskStatus| r.tasks_by_status.get(&s).copied().unwrap_or(0);
        let gained = |s| count(after, s).saturating_sub(count(before, s));
        Self {
            finalized: gained(TaskStatus::Finalized),
            failed: gained(TaskStatus::Failed),
            submissions: after.submissions.saturating_sub(before.submissions),
            finalizations_acknowledged: acknowledged,
        }
    }

    /// Every task finalized, and acknowledged as such, exactly once; every vote stored once.
    fn adds_up(&self, tasks: u64, required: u32) -> bool {
        self.finalized == tasks
            && self.failed == 0
            && self.finalizations_acknowledged == tasks
            && self.submissions == tasks * u64::from(required)
    }
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Rate {
    tasks: u64,
    seconds: f64,
    per_sec: f64,
}

#[derive(Debug, Serialize)]
struct DepthReport {
    queued: u64,
    fill: Rate,
    lease_rtt_us: Percentiles,
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
    let bulk = if args.bulk > 0 {
        eprintln!(
            "bench: bulk add of {} texts through `task add --file`",
            args.bulk
        );
        Some(bulk_add(&client, args.bulk, stack.as_ref().map(|s| s.dir.path())).await?)
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
    let nats_pid = stack.as_ref().map(|s| s.nats.id());
    let stats_before = stats(&client).await?;
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let nats_before = nats_pid.and_then(cpu_ticks);
    let pg_before = postgres.then(postgres_ticks);
    let load_started = Instant::now();
    let run = Run::new()?;
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

fn print(r: &Report) {
    let mut t = crate::output::table(["metric", "value"]);
    let pct = |p: &Percentiles| {
        format!(
            "p50 {} µs, p99 {} µs, p999 {} µs (n={})",
            p.p50, p.p99, p.p999, p.count
        )
    };
    if let Some(rate) = r.offered_per_sec {
        t.add_row(vec!["offered tasks/s".into(), format!("{rate:.0}")]);
    }
    t.add_row(vec![
        "finalized tasks/s".into(),
        format!("{:.0}", r.finalized_per_sec),
    ]);
    t.add_row(vec![
        "submissions/s".into(),
        format!("{:.0}", r.submissions_per_sec),
    ]);
    t.add_row(vec!["lease round trip".into(), pct(&r.lease_rtt_us)]);
    t.add_row(vec!["submit round trip".into(), pct(&r.submit_rtt_us)]);
    t.add_row(vec![
        "NATS echo round trip (no work)".into(),
        pct(&r.echo_rtt_us),
    ]);
    if let Some(b) = &r.bulk_add {
        t.add_row(vec![
            "bulk task add".into(),
            format!(
                "{:.0} tasks/s ({} in {:.2} s)",
                b.per_sec, b.tasks, b.seconds
            ),
        ]);
    }
    if let Some(d) = &r.depth {
        t.add_row(vec![
            format!("fill to depth {}", d.queued),
            format!("{:.0} tasks/s ({:.2} s)", d.fill.per_sec, d.fill.seconds),
        ]);
        t.add_row(vec![
            format!("lease at depth {}", d.queued),
            pct(&d.lease_rtt_us),
        ]);
    }
    let l = &r.ledger;
    t.add_row(vec![
        "ledger (load phase)".into(),
        if l.adds_up(r.tasks, r.required) {
            format!(
                "{} finalized once each, {} votes stored",
                l.finalized, l.submissions
            )
        } else {
            format!("DOES NOT ADD UP: {l:?}")
        },
    ]);
    t.add_row(vec!["store".into(), r.store.clone()]);
    t.add_row(vec![
        "coordinator CPU (load phase)".into(),
        if r.coordinator_cpu_cores.is_empty() {
            "-".into()
        } else {
            r.coordinator_cpu_cores
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" + ")
                + " cores"
        },
    ]);
    t.add_row(vec![
        "nats-server CPU (load phase)".into(),
        r.nats_cpu_cores
            .map_or("-".into(), |c| format!("{c:.2} cores")),
    ]);
    if let Some(c) = r.postgres_cpu_cores {
        t.add_row(vec![
            "postgres CPU (load phase, all its processes)".into(),
            format!("{c:.2} cores"),
        ]);
    }
    t.add_row(vec![
        "coordinator peak RSS".into(),
        r.coordinator_peak_rss_mb
            .map_or("-".into(), |m| format!("{m:.1} MB")),
    ]);
    println!("{t}");
}

/// nats-server and a coordinator started for the run, stopped on drop.
struct Stack {
    nats: Child,
    coordinators: Vec<Child>,
    url: String,
    /// The store the coordinators run on.
    db: String,
    dir: tempfile::TempDir,
}

impl Stack {
    fn start(prefix: &str, db: Option<&str>, n: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let nats = Command::new(nats_server()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let db = db.map_or_else(
            || dir.path().join("bench.db").display().to_string(),
            str::to_owned,
        );
        let mut coordinators = Vec::new();
        for i in 0..n {
            coordinators.push(
                Command::new(std::env::current_exe()?)
                    .args(["coordinator", "--http", "off", "--db", &db])
                    .env("NATS_URL", &url)
                    .env("AIMARKET_PREFIX", prefix)
                    .env("RUST_LOG", "warn")
                    .env_remove("AIMARKET_API_KEY")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(
                        dir.path().join(format!("coordinator-{i}.log")),
                    )?)
                    .spawn()
                    .context("starting a coordinator")?,
            );
        }
        Ok(Self {
            nats,
            coordinators,
            url,
            db,
            dir,
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in self.coordinators.iter_mut().chain([&mut self.nats]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn nats_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(p.into());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/usr/local/bin".into()]);
    // Where scripts/setup.sh installs it from PyPI.
    dirs.extend(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin")));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .context("nats-server not found: run scripts/setup.sh, or pass --connect")
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

/// The `task add --file` path, on a file of `n` texts.
async fn bulk_add(client: &Client, n: u64, dir: Option<&std::path::Path>) -> anyhow::Result<Rate> {
    let tmp = tempfile::tempdir()?;
    let path = dir.unwrap_or(tmp.path()).join("bulk.jsonl");
    let mut text = String::with_capacity(n as usize * 60);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"text\": \"bulk review {i}: decent value\", \"type\": \"bench-bulk\"}}\n"
        ));
    }
    std::fs::write(&path, text)?;
    let started = Instant::now();
    let tasks = super::task::read_tasks(&path, &NewTask::text(""))?;
    let ids = super::task::add_all(client, tasks).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Rate {
        tasks: ids.len() as u64,
        seconds,
        per_sec: ids.len() as f64 / seconds,
    })
}

/// The instant model: a label every worker agrees on, from the text alone.
fn instant_label(text: &str) -> &'static str {
    if text.len().is_multiple_of(2) {
        "positive"
    } else {
        "negative"
    }
}

/// What the load phase measured.
struct Load {
    finalized_per_sec: f64,
    submissions_per_sec: f64,
    lease_h: Histogram<u64>,
    submit_h: Histogram<u64>,
    echo_h: Histogram<u64>,
    /// Submit replies that said "this vote finalized the task".
    finalized: u64,
}

/// The names one run works under. Its tasks are of types of its own, which only its workers
/// take: a bench pointed (`--connect`) at a coordinator that real workers or another bench also
/// serve neither lends its tasks to them nor counts their work as its own.
struct Run {
    tag: String,
    load: TaskType,
    depth: TaskType,
}

impl Run {
    fn new() -> anyhow::Result<Self> {
        let tag = format!("{:08x}", fastrand::u32(..));
        Ok(Self {
            load: TaskType::new(format!("bench-{tag}"))?,
            depth: TaskType::new(format!("bench-depth-{tag}"))?,
            tag,
        })
    }

    fn worker(&self, name: impl std::fmt::Display) -> anyhow::Result<WorkerId> {
        Ok(WorkerId::new(format!("bench-{}-{name}", self.tag))?)
    }
}

async fn load(client: &Client, nats_url: &str, args: &Args, run: &Run) -> anyhow::Result<Load> {
    let tasks: Vec<NewTask> = (0..args.tasks)
        .map(|i| NewTask {
            task_type: Some(run.load.clone()),
            required_submissions: Some(args.required),
            ..NewTask::text(format!("load review {i}"))
        })
        .collect();
    super::task::add_all(client, tasks).await?;
    let finalized = Arc::new(AtomicU64::new(0));
    // A NATS connection each for the workers and the echo's two ends, as separate processes
    // have: one shared connection would queue a lease reply behind other submission replies.
    let connect = || async {
        anyhow::Ok(
            Client::connect(
                nats_url,
                protocol::auth::DEFAULT_NATS_PING,
                client.prefix(),
                None,
            )
            .await?
            .nats()
            .clone(),
        )
    };
    let load_over = CancellationToken::new();
    let echo = tokio::spawn(echo_floor(
        (connect().await?, connect().await?),
        load_over.clone(),
    ));
    let started = Instant::now();
    // Each worker gives every task one of its `required` answers: a worker's share of the offered
    // rate is `rate * required / workers` answers a second.
    let pace = (args.rate > 0.0).then(|| {
        Duration::from_secs_f64(f64::from(args.workers) / (args.rate * f64::from(args.required)))
    });
    let mut drivers = Vec::new();
    for w in 0..args.workers {
        let nats = connect().await?;
        let prefix = client.prefix().to_owned();
        let (finalized, total, batch) = (finalized.clone(), args.tasks, args.batch);
        let (worker, kind) = (run.worker(w)?, run.load.clone());
        // Paced workers start out of step, as independent workers would be, not in one burst.
        let pacing = pace.map(|p| (p, p * batch * w / args.workers));
        drivers.push(tokio::spawn(async move {
            drive(
                nats,
                prefix,
                (worker, kind),
                (batch, pacing),
                finalized,
                total,
            )
            .await
        }));
    }
    let mut lease_h = Histogram::<u64>::new(3)?;
    let mut submit_h = Histogram::<u64>::new(3)?;
    for d in drivers {
        let (l, s) = d.await??;
        lease_h.add(l)?;
        submit_h.add(s)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    load_over.cancel();
    let echo_h = echo.await??;
    let done = finalized.load(Ordering::Relaxed);
    Ok(Load {
        finalized_per_sec: done as f64 / seconds,
        submissions_per_sec: (done * u64::from(args.required)) as f64 / seconds,
        lease_h,
        submit_h,
        echo_h,
        finalized: done,
    })
}

/// One worker's loop: lease a batch, answer instantly, submit the batch concurrently. With
/// `pacing` (time per answer, delay before the first request), a batch of `n` leases is followed
/// by `n` times the pace between lease requests, so the worker offers a steady rate; one that
/// falls behind catches up by at most [`MAX_CATCH_UP`].
async fn drive(
    nats: async_nats::Client,
    prefix: String,
    (worker, kind): (WorkerId, TaskType),
    (batch, pacing): (u32, Option<(Duration, Duration)>),
    finalized: Arc<AtomicU64>,
    total: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut lease_h = Histogram::<u64>::new(3)?;
    let mut submit_h = Histogram::<u64>::new(3)?;
    let req = encode(&LeaseRequest {
        worker_id: worker.clone(),
        capabilities: vec![kind],
        max_tasks: batch,
        task_id: None,
        model: Some("bench/instant".into()),
        model_hash: None,
    });
    let pace = pacing.map(|(pace, _)| pace);
    let mut next = tokio::time::Instant::now() + pacing.map_or(Duration::ZERO, |(_, first)| first);
    while finalized.load(Ordering::Relaxed) < total {
        if pace.is_some() {
            next = next.max(tokio::time::Instant::now() - MAX_CATCH_UP);
            tokio::time::sleep_until(next).await;
        }
        let t = Instant::now();
        let msg = nats
            .request(subject::lease(&prefix), req.clone().into())
            .await?;
        lease_h.record(t.elapsed().as_micros() as u64)?;
        let leases: LeaseReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("lease: {e}"))?;
        if leases.leases.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        if let Some(pace) = pace {
            next += pace * leases.leases.len() as u32;
        }
        let submits = leases.leases.iter().map(|l| {
            let body = encode(&SubmitRequest {
                lease_id: l.lease_id,
                worker_id: worker.clone(),
                label: instant_label(&l.text).into(),
                embedding: None,
                confidence: 0.9,
                model: Some("bench/instant".into()),
                generation: None,
                verification: None,
                model_hash: None,
            });
            let (nats, subject) = (nats.clone(), subject::submit(&prefix, &l.task_id));
            async move {
                let t = Instant::now();
                let msg = nats.request(subject, body.into()).await?;
                let rtt = t.elapsed();
                let ack: SubmitReply =
                    reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("submit: {e}"))?;
                anyhow::Ok((rtt, ack.finalized && !ack.duplicate))
            }
        });
        for r in futures::future::join_all(submits).await {
            let (rtt, closed) = r?;
            submit_h.record(rtt.as_micros() as u64)?;
            if closed {
                finalized.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok((lease_h, submit_h))
}

/// The transport's share of a round trip under the load: a request every [`ECHO_EVERY`] from
/// `asker` to a responder on `responder` that does nothing, until `load_over`. What the lease and
/// submit round trips take beyond this, the coordinator took.
async fn echo_floor(
    (responder, asker): (async_nats::Client, async_nats::Client),
    load_over: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let subject = responder.new_inbox();
    let mut requests = responder.subscribe(subject.clone()).await?;
    let answers = responder.clone();
    let answering = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = answers.publish(reply, m.payload).await;
            }
        }
    });
    // The server handles a connection's messages in order, so once the responder has answered a
    // request of its own, its subscription is in place for the asker's.
    responder.request(subject.clone(), "".into()).await?;
    let body = vec![b' '; 256];
    let mut h = Histogram::<u64>::new(3)?;
    while !load_over.is_cancelled() {
        let t = Instant::now();
        asker.request(subject.clone(), body.clone().into()).await?;
        h.record(t.elapsed().as_micros() as u64)?;
        tokio::select! {
            () = load_over.cancelled() => {}
            () = tokio::time::sleep(ECHO_EVERY) => {}
        }
    }
    answering.abort();
    Ok(h)
}

/// How often the echo probe asks: 500 requests a second, next to the load's thousands.
const ECHO_EVERY: Duration = Duration::from_millis(2);

/// How far a paced worker that fell behind may run ahead of its schedule to catch up.
const MAX_CATCH_UP: Duration = Duration::from_millis(20);

/// Lease latency with `k` tasks queued: single leases by a probe worker. Each leased task is
/// answered (it needs one vote, so it finalizes) and replaced by a new one, untimed, so the
/// depth stays `k`. (Releasing it instead would count an attempt each time: the oldest task would
/// fail after `max_attempts` probes, and a small depth run dry.)
async fn depth(client: &Client, k: u64, run: &Run) -> anyhow::Result<DepthReport> {
    let kind = run.depth.clone();
    let queued = |i: u64| NewTask {
        task_type: Some(kind.clone()),
        required_submissions: Some(1),
        ..NewTask::text(format!("queued {i}"))
    };
    let started = Instant::now();
    let mut added = 0;
    while added < k {
        let n = (k - added).min(10_000);
        super::task::add_all(client, (added..added + n).map(queued).collect()).await?;
        added += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let fill = Rate {
        tasks: k,
        seconds,
        per_sec: k as f64 / seconds,
    };
    let nats = client.nats();
    let worker = run.worker("probe")?;
    let req = encode(&LeaseRequest {
        worker_id: worker.clone(),
        capabilities: vec![kind.clone()],
        max_tasks: 1,
        task_id: None,
        model: None,
        model_hash: None,
    });
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..DEPTH_PROBES {
        let t = Instant::now();
        let msg = nats
            .request(subject::lease(client.prefix()), req.clone().into())
            .await?;
        h.record(t.elapsed().as_micros() as u64)?;
        let leases: LeaseReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("lease: {e}"))?;
        let Some(l) = leases.leases.first() else {
            bail!("no task at depth {k}")
        };
        let answer = encode(&SubmitRequest {
            lease_id: l.lease_id,
            worker_id: worker.clone(),
            label: instant_label(&l.text).into(),
            embedding: None,
            confidence: 0.9,
            model: None,
            generation: None,
            verification: None,
            model_hash: None,
        });
        let msg = nats
            .request(subject::submit(client.prefix(), &l.task_id), answer.into())
            .await?;
        let _: SubmitReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("submit: {e}"))?;
        super::task::add_all(client, vec![queued(k + i)]).await?;
    }
    Ok(DepthReport {
        queued: k,
        fill,
        lease_rtt_us: Percentiles::of(&h),
    })
}

/// Lease requests timed at depth.
const DEPTH_PROBES: u64 = 2000;

/// utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of every process named `postgres` (the server and its backends), in clock
/// ticks.
fn postgres_ticks() -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_ticks)
        .sum()
}

/// Peak resident set (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
