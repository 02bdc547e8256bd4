//! The sweeper: frees leases that expired and leases of workers gone stale, and marks those
//! workers `stale`. Runs every `REQUEUE_SWEEP_SECONDS` and on `ops requeue-stale`.

use super::task::end_lease_unanswered;
use super::Ctx;
use crate::error::CoreError;
use crate::store::rows::parsed;
use crate::store::sql::{params, Dialect};
use crate::store::tx::Tx;
use protocol::messages::RequeueReply;
use protocol::{LeaseId, LeaseState, TaskId};

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx, ctx: &mut Ctx) -> Result<RequeueReply, CoreError> {
    // Every coordinator sweeps; on a shared database one sweep runs at a time, whoever takes
    // the lock first (no leader to elect: another takes over on its next tick).
    if tx.sql().dialect() == Dialect::Postgres {
        let mine: bool = tx.sql().query_row(
            "SELECT pg_try_advisory_xact_lock(?1)",
            [crate::store::pg::SWEEP_LOCK],
            |r| r.get(0),
        )?;
        if !mine {
            return Ok(RequeueReply::default());
        }
        fold_points(tx)?;
    }
    let stale_before = ctx.now - ctx.settings.heartbeat_ttl_ms;
    let dead: Vec<(LeaseId, TaskId)> = tx
        .sql()
        .prepare_cached(
            "SELECT l.id, l.task_id FROM lease l LEFT JOIN worker w ON w.id = l.worker_id
             WHERE l.state = 'active'
               AND (l.expires_at <= ?1 OR w.last_seen IS NULL OR w.last_seen <= ?2
                    OR w.status = 'offline')",
        )?
        .query_map(params![ctx.now, stale_before], |r| {
            Ok((parsed(r, 0)?, parsed(r, 1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut reply = RequeueReply::default();
    for (lease, task) in dead {
        let (ended, failed) = end_lease_unanswered(tx, ctx, &lease, &task, LeaseState::Expired)?;
        reply.requeued += u32::from(ended);
        reply.failed += u32::from(failed);
    }
    reply.stale_workers = tx
        .sql()
        .prepare_cached(
            "UPDATE worker SET status = 'stale' WHERE status = 'active' AND last_seen <= ?1",
        )?
        .execute([stale_before])? as u32;
    if reply != RequeueReply::default() {
        tracing::info!(
            requeued = reply.requeued,
            failed = reply.failed,
            stale_workers = reply.stale_workers,
            "sweep freed leases"
        );
    }
    Ok(reply)
}

/// Folds the points appended to `score_delta` into `worker_score` (PostgreSQL; under the sweep's
/// advisory lock, score rows in worker order).
fn fold_points(tx: &dyn Tx) -> Result<(), CoreError> {
    tx.sql()
        .prepare_cached(
            "WITH d AS (DELETE FROM score_delta RETURNING worker_id, points)
         INSERT INTO worker_score (worker_id, points)
         SELECT worker_id, CAST(SUM(points) AS BIGINT) FROM d GROUP BY worker_id ORDER BY worker_id
         ON CONFLICT (worker_id) DO UPDATE SET points = worker_score.points + excluded.points",
        )?
        .execute(())?;
    Ok(())
}
