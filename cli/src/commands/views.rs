//! `aimarket leaderboard`, `workers`, `stats`.

use super::Ctx;
use crate::output::{self, ago, or_dash};
use protocol::messages::{
    ApiOp, CoordinatorStatus, Empty, LeaderboardReply, ModelAgreementReply, StatsReply,
    WorkersReply,
};
use protocol::policy::GoldScore;

/// Prints the leaderboard.
pub(crate) async fn leaderboard(ctx: &Ctx) -> anyhow::Result<()> {
    let r: LeaderboardReply = ctx
        .client()
        .await?
        .call(ApiOp::Leaderboard, &Empty {})
        .await?;
    if ctx.json {
        return output::json(&r.entries);
    }
    let mut t = output::table([
        "rank",
        "worker",
        "points",
        "submissions",
        "agreement",
        "gold accuracy",
        "traps caught/missed",
        "model",
    ]);
    for (i, e) in r.entries.iter().enumerate() {
        let mut worker = e.worker_id.to_string();
        if e.quarantined {
            worker.push_str(" (quarantined)");
        }
        t.add_row(vec![
            (i + 1).to_string(),
            worker,
            e.points.to_string(),
            e.submissions.to_string(),
            percent(e.agreement_rate),
            gold(&e.gold),
            format!("{}/{}", e.traps_caught, e.traps_missed),
            or_dash(e.model.as_deref()),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Gold accuracy with its counts: `85.0% (17/20)`, `-` without gold answers.
fn gold(g: &GoldScore) -> String {
    match g.accuracy() {
        Some(a) => format!("{:.1}% ({}/{})", a * 100.0, g.right, g.answered),
        None => "-".to_owned(),
    }
}

/// A content hash, shortened for tables.
fn short_hash(h: Option<&str>) -> String {
    h.map_or_else(|| "-".to_owned(), |h| format!("{}…", &h[..h.len().min(12)]))
}

/// Prints agreement with consensus and gold accuracy per model content and task type.
pub(crate) async fn by_model(ctx: &Ctx) -> anyhow::Result<()> {
    let r: ModelAgreementReply = ctx
        .client()
        .await?
        .call(ApiOp::LeaderboardModels, &Empty {})
        .await?;
    if ctx.json {
        return output::json(&r.models);
    }
    let mut t = output::table([
        "model",
        "content",
        "type",
        "submissions",
        "on finalized tasks",
        "agreed",
        "agreement",
        "gold accuracy",
        "Brier",
        "reliability (confidence→accuracy by bin)",
        "wrong on gold (answered→truth)",
    ]);
    for m in &r.models {
        t.add_row(vec![
            m.model.clone(),
            short_hash(m.model_hash.as_deref()),
            m.task_type.clone(),
            m.submissions.to_string(),
            m.decided.to_string(),
            m.agreed.to_string(),
            percent(m.agreement_rate),
            gold(&m.gold),
            m.calibration
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| format!("{:.3}", c.brier)),
            listed(m.calibration.as_ref().map(|c| &c.bins), |b| {
                format!("{:.2}→{:.2} ({})", b.confidence, b.accuracy, b.answered)
            }),
            listed(m.calibration.as_ref().map(|c| &c.confusion), |x| {
                format!("{}→{} ({})", x.answered, x.truth, x.answers)
            }),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `items` shown one by one and joined with commas; `-` when there are none.
fn listed<T>(items: Option<&Vec<T>>, show: impl Fn(&T) -> String) -> String {
    match items {
        Some(items) if !items.is_empty() => items.iter().map(show).collect::<Vec<_>>().join(", "),
        _ => "-".to_owned(),
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// Prints the worker registry.
pub(crate) async fn workers(ctx: &Ctx) -> anyhow::Result<()> {
    let r: WorkersReply = ctx.client().await?.call(ApiOp::Workers, &Empty {}).await?;
    if ctx.json {
        return output::json(&r.workers);
    }
    let mut t = output::table([
        "worker",
        "status",
        "model",
        "capabilities",
        "leases",
        "gold accuracy",
        "traps caught/missed",
        "last seen",
    ]);
    let mut quarantined = Vec::new();
    for w in &r.workers {
        let caps: Vec<_> = w.capabilities.iter().map(|c| c.as_str()).collect();
        t.add_row(vec![
            w.worker_id.to_string(),
            w.status.to_string(),
            match &w.model_hash {
                Some(h) => format!("{} ({})", or_dash(w.model.as_deref()), short_hash(Some(h))),
                None => or_dash(w.model.as_deref()),
            },
            caps.join(","),
            w.active_leases.to_string(),
            gold(&w.gold),
            format!("{}/{}", w.traps_caught, w.traps_missed),
            ago(w.last_seen),
        ]);
        if let Some(why) = &w.quarantine {
            quarantined.push(format!("{} is quarantined (gold only): {why}", w.worker_id));
        }
    }
    println!("{t}");
    for q in quarantined {
        println!("{q}");
    }
    Ok(())
}

/// Prints the counts.
pub(crate) async fn stats(ctx: &Ctx) -> anyhow::Result<()> {
    let r: StatsReply = ctx.client().await?.call(ApiOp::Stats, &Empty {}).await?;
    if ctx.json {
        return output::json(&r);
    }
    let by_status: Vec<_> = r
        .tasks_by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "tasks          {} ({})",
        r.tasks_total,
        by_status.join(", ")
    );
    println!("submissions    {}", r.submissions);
    println!(
        "workers        {} ({} active, {} stale)",
        r.workers, r.workers_active, r.workers_stale
    );
    println!("active leases  {}", r.active_leases);
    println!("starved tasks  {}", r.tasks_starved);
    for s in &r.starved {
        println!("  {s}");
    }
    Ok(())
}

/// How long `aimarket coordinators` listens for answers.
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_millis(750);

/// Lists the running coordinators of this prefix: each answers `$SRV.STATS` for the
/// `aimarket-coordinator` micro service with its status in its endpoint's data.
pub(crate) async fn coordinators(ctx: &Ctx) -> anyhow::Result<()> {
    use futures::StreamExt;
    let client = ctx.client().await?;
    let nats = client.nats();
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await?;
    nats.publish_with_reply(
        format!("$SRV.STATS.{}", protocol::subject::SERVICE_NAME),
        inbox,
        "".into(),
    )
    .await?;
    nats.flush().await?;
    let mut found: Vec<CoordinatorStatus> = Vec::new();
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        let Ok(stats) = serde_json::from_slice::<async_nats::service::Stats>(&msg.payload) else {
            continue;
        };
        let status = stats
            .endpoints
            .iter()
            .filter_map(|e| e.data.clone())
            .find_map(|d| serde_json::from_value::<CoordinatorStatus>(d).ok());
        if let Some(s) = status.filter(|s| s.prefix == ctx.prefix) {
            found.push(s);
        }
    }
    found.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
    if ctx.json {
        return output::json(&found);
    }
    if found.is_empty() {
        anyhow::bail!(
            "no coordinator answered on prefix {:?} within {} ms",
            ctx.prefix,
            DISCOVERY_WAIT.as_millis()
        );
    }
    let mut t = output::table([
        "id",
        "version",
        "store",
        "http",
        "started",
        "leases",
        "submissions",
        "finalized",
        "failed",
    ]);
    for s in &found {
        t.add_row(vec![
            s.id.clone(),
            s.version.clone(),
            s.store.clone(),
            or_dash(s.http.as_deref()),
            ago(s.started),
            s.leases_granted.to_string(),
            s.submissions.to_string(),
            s.tasks_finalized.to_string(),
            s.tasks_failed.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}
