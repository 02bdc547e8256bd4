//! `aimarket leaderboard`, `workers`, `stats`.

use super::Ctx;
use crate::output::{self, ago, or_dash};
use protocol::messages::{
    ApiOp, Empty, LeaderboardReply, ModelAgreementReply, StatsReply, WorkersReply,
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
        ]);
    }
    println!("{t}");
    Ok(())
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
