//! `lease.release`: a worker gives leases back (graceful shutdown). Their slots are free at once;
//! each counts as an attempt, as an expiry would.

use super::task::end_lease_unanswered;
use super::Ctx;
use crate::error::CoreError;
use crate::store::sql::{params, OptionalExtension};
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
        let task: Option<TaskId> = tx
            .sql()
            .prepare_cached(
                "SELECT task_id FROM lease WHERE id = ?1 AND worker_id = ?2 AND state = 'active'",
            )?
            .query_row(params![lease_id.to_string(), req.worker_id.as_str()], |r| {
                crate::store::rows::parsed(r, 0)
            })
            .optional()?;
        if let Some(task) = task {
            let (ended, _) = end_lease_unanswered(tx, ctx, lease_id, &task, LeaseState::Released)?;
            released += u32::from(ended);
        }
    }
    if req.offline {
        tx.sql()
            .prepare_cached("UPDATE worker SET status = 'offline', last_seen = ?1 WHERE id = ?2")?
            .execute(params![ctx.now, req.worker_id.as_str()])?;
        tracing::info!(worker_id = %req.worker_id, released, "worker offline");
    }
    Ok(ReleaseReply { released })
}
