//! The sweeper: frees leases that expired and leases of workers gone stale, and marks those
//! workers `stale`. Runs every `REQUEUE_SWEEP_SECONDS` and on `ops requeue-stale`.

use super::task::end_lease_unanswered;
use super::Ctx;
use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::RequeueReply;
use protocol::LeaseState;

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx, ctx: &mut Ctx) -> Result<RequeueReply, CoreError> {
    // Every coordinator sweeps; on a shared database one sweep runs at a time, whoever takes
    // the lead first (no leader to elect: another takes over on its next tick).
    if !tx.lead_sweep()? {
        return Ok(RequeueReply::default());
    }
    let stale_before = ctx.now - ctx.settings.heartbeat_ttl_ms;
    let dead = tx.dead_leases(ctx.now, stale_before)?;
    let mut reply = RequeueReply::default();
    for (lease, task) in dead {
        let (ended, failed) = end_lease_unanswered(tx, ctx, &lease, &task, LeaseState::Expired)?;
        reply.requeued += u32::from(ended);
        reply.failed += u32::from(failed);
    }
    reply.stale_workers = tx.mark_stale(stale_before)?;
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
