//! What a bench run reports, and its table.

use hdrhistogram::Histogram;
use protocol::messages::StatsReply;
use protocol::TaskStatus;
use serde::Serialize;

/// What a run measured.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) tasks: u64,
    pub(super) workers: u32,
    pub(super) required: u32,
    pub(super) batch: u32,
    pub(super) offered_per_sec: Option<f64>,
    pub(super) finalized_per_sec: f64,
    pub(super) submissions_per_sec: f64,
    pub(super) lease_rtt_us: Percentiles,
    pub(super) submit_rtt_us: Percentiles,
    /// A NATS request to a responder that does nothing, during the load: the transport's floor.
    pub(super) echo_rtt_us: Percentiles,
    pub(super) bulk_add: Option<Rate>,
    pub(super) depth: Option<DepthReport>,
    /// The store the coordinators ran on (`sqlite <path>`, or the PostgreSQL URL without its
    /// password).
    pub(super) store: String,
    /// CPU of each coordinator over the load phase, in cores.
    pub(super) coordinator_cpu_cores: Vec<f64>,
    pub(super) coordinator_peak_rss_mb: Option<f64>,
    /// CPU of nats-server over the load phase, in cores.
    pub(super) nats_cpu_cores: Option<f64>,
    /// CPU of every `postgres` process on this machine over the load phase, in cores.
    pub(super) postgres_cpu_cores: Option<f64>,
    pub(super) ledger: Ledger,
}

/// What the store gained over the load phase, checked after every run: correctness at full
/// speed, not only speed.
#[derive(Debug, Serialize)]
pub(super) struct Ledger {
    /// Tasks finalized.
    pub(super) finalized: u64,
    /// Tasks failed.
    pub(super) failed: u64,
    /// Votes stored.
    pub(super) submissions: u64,
    /// Submit replies that said "this vote finalized the task".
    pub(super) finalizations_acknowledged: u64,
}

impl Ledger {
    /// Between two `stats` replies, with the finalizations the workers were told of.
    pub(super) fn between(before: &StatsReply, after: &StatsReply, acknowledged: u64) -> Self {
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
    pub(super) fn adds_up(&self, tasks: u64, required: u32) -> bool {
        self.finalized == tasks
            && self.failed == 0
            && self.finalizations_acknowledged == tasks
            && self.submissions == tasks * u64::from(required)
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: u64,
    pub(super) p99: u64,
    pub(super) p999: u64,
    pub(super) max: u64,
    pub(super) count: u64,
}

impl Percentiles {
    pub(super) fn of(h: &Histogram<u64>) -> Self {
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
pub(super) struct Rate {
    pub(super) tasks: u64,
    pub(super) seconds: f64,
    pub(super) per_sec: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct DepthReport {
    pub(super) queued: u64,
    pub(super) fill: Rate,
    pub(super) lease_rtt_us: Percentiles,
}

pub(super) fn print(r: &Report) {
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
