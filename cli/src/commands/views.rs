//! `aimarket leaderboard`, `workers`, `stats`.

use super::Ctx;
use crate::output::{self, ago, or_dash};
use protocol::messages::{ApiOp, Empty, LeaderboardReply, StatsReply, WorkersReply};

/// Prints the leaderboard.
pub async fn leaderboard(ctx: &Ctx) -> anyhow::Result<()> {
    let r: LeaderboardReply = ctx
        .client()
        .await?
        .call(ApiOp::Leaderboard, &Empty {})
        .await?;
    if ctx.json {
        return output::json(&r.entries);
    }
    let mut t = output::table(["rank", "worker", "points", "submissions"]);
    for (i, e) in r.entries.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            e.worker_id.to_string(),
            e.points.to_string(),
            e.submissions.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Prints the worker registry.
pub async fn workers(ctx: &Ctx) -> anyhow::Result<()> {
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
        "last seen",
    ]);
    for w in &r.workers {
        let caps: Vec<_> = w.capabilities.iter().map(|c| c.as_str()).collect();
        t.add_row(vec![
            w.worker_id.to_string(),
            w.status.to_string(),
            or_dash(w.model.as_deref()),
            caps.join(","),
            w.active_leases.to_string(),
            ago(w.last_seen),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Prints the counts.
pub async fn stats(ctx: &Ctx) -> anyhow::Result<()> {
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
    Ok(())
}
