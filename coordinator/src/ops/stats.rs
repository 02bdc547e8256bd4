//! `stats`: counts of tasks by state, submissions, workers and live leases, and the starved
//! tasks by type.

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::StatsReply;
use protocol::TaskStatus;

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx, now: i64, heartbeat_ttl_ms: i64) -> Result<StatsReply, CoreError> {
    let mut tasks_by_status: std::collections::BTreeMap<TaskStatus, u64> =
        TaskStatus::ALL.iter().map(|s| (*s, 0)).collect();
    // Gold tasks (one per lease of a known-answer item) are not counted.
    tasks_by_status.extend(tx.status_counts()?);
    let counts = tx.counts(now - heartbeat_ttl_ms)?;
    let starved =
        super::starved::summary(tx, &super::starved::Live::read(tx, now, heartbeat_ttl_ms)?)?;
    Ok(StatsReply {
        tasks_total: tasks_by_status.values().sum(),
        tasks_by_status,
        submissions: counts.submissions,
        workers: counts.workers,
        workers_active: counts.workers_active,
        workers_stale: counts.workers_stale,
        active_leases: counts.active_leases,
        tasks_starved: starved.iter().map(|s| s.tasks).sum(),
        starved,
    })
}
