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
    let mut stmt = tx.sql().prepare_cached(&format!(
        "SELECT {}, COUNT(*) FROM task WHERE gold IS NULL GROUP BY 1",
        crate::store::rows::VIEW_STATUS_SQL
    ))?;
    let rows = stmt.query_map((), |r| {
        Ok((
            crate::store::rows::parsed::<TaskStatus>(r, 0)?,
            r.get::<_, u64>(1)?,
        ))
    })?;
    for row in rows {
        let (status, n) = row?;
        tasks_by_status.insert(status, n);
    }
    let count =
        |sql: &str, p: &[&dyn crate::store::sql::ToArg]| -> crate::store::sql::Result<u64> {
            tx.sql().prepare_cached(sql)?.query_row(p, |r| r.get(0))
        };
    let stale_before = now - heartbeat_ttl_ms;
    let starved =
        super::starved::summary(tx, &super::starved::Live::read(tx, now, heartbeat_ttl_ms)?)?;
    Ok(StatsReply {
        tasks_total: tasks_by_status.values().sum(),
        tasks_by_status,
        submissions: count("SELECT COUNT(*) FROM submission", &[])?,
        workers: count("SELECT COUNT(*) FROM worker", &[])?,
        workers_active: count(
            "SELECT COUNT(*) FROM worker WHERE status = 'active' AND last_seen > ?1",
            &[&stale_before],
        )?,
        workers_stale: count(
            "SELECT COUNT(*) FROM worker WHERE status = 'stale'
                 OR (status = 'active' AND last_seen <= ?1)",
            &[&stale_before],
        )?,
        active_leases: count("SELECT COUNT(*) FROM lease WHERE state = 'active'", &[])?,
        tasks_starved: starved.iter().map(|s| s.tasks).sum(),
        starved,
    })
}
