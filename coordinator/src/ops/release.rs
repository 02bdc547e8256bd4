//! `lease.release`: a worker gives leases back (graceful shutdown). Their slots are free at once;
//! each counts as an attempt, as an expiry would.

use super::task::end_lease_unanswered;
use super::Ctx;
use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::{ReleaseReply, ReleaseRequest};
use protocol::{LeaseState, TaskId};

/// Leases that are not live or not the worker's are skipped, not errors: a release races expiry.
///
/// # Errors
/// Store errors only.
pub(crate) fn run(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: ReleaseRequest,
) -> Result<ReleaseReply, CoreError> {
    let mut released = 0;
    for lease_id in &req.lease_ids {
        let task: Option<TaskId> = tx.held_task(lease_id, &req.worker_id)?;
        if let Some(task) = task {
            let (ended, _) = end_lease_unanswered(tx, ctx, lease_id, &task, LeaseState::Released)?;
            released += u32::from(ended);
        }
    }
    if req.offline {
        tx.mark_offline(&req.worker_id, ctx.now)?;
        tracing::info!(worker_id = %req.worker_id, released, "worker offline");
    }
    Ok(ReleaseReply { released })
}
