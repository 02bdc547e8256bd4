//! Task and lease transitions the operations share: load a task, end a lease that produced no
//! result, fail or close a task, and check that a lease is the submitter's.

use super::Ctx;
use crate::api::Effect;
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::rows::{parsed, TaskRow, TASK_COLUMNS, TASK_VIEW_COLUMNS};
use crate::store::sql::{params, OptionalExtension, Row};
use crate::store::tx::Tx;
use protocol::messages::{FailureReason, TaskEvent};
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus, WorkerId};

/// Loads a task.
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
///
/// On PostgreSQL the row stays locked until the transaction ends: what the operation decides
/// from it (finalize, fail, reissue) cannot race another coordinator's decision on the task.
pub(crate) fn load_task(tx: &dyn Tx, id: &TaskId) -> Result<TaskRow, CoreError> {
    load_task_with(
        tx,
        id,
        TASK_COLUMNS,
        tx.sql().lock_suffix(),
        TaskRow::from_row,
    )
}

/// Loads a task with its live-lease summary, for views.
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
pub(crate) fn load_task_view(tx: &dyn Tx, id: &TaskId) -> Result<TaskRow, CoreError> {
    load_task_with(tx, id, TASK_VIEW_COLUMNS, "", TaskRow::from_view_row)
}

fn load_task_with(
    tx: &dyn Tx,
    id: &TaskId,
    columns: &str,
    lock: &str,
    read: fn(&Row<'_>) -> crate::store::sql::Result<TaskRow>,
) -> Result<TaskRow, CoreError> {
    let sql = format!("SELECT {columns} FROM task WHERE id = ?1{lock}");
    tx.sql()
        .prepare_cached(&sql)?
        .query_row([id.to_string()], read)
        .optional()?
        .ok_or(CoreError::TaskNotFound(*id))
}

/// Ends a live lease that produced no result (`expired` or `released`): one more attempt on its
/// task, which fails when it runs out of attempts and is announced again otherwise.
///
/// Returns whether the lease was live, and whether its task failed as a result.
pub(crate) fn end_lease_unanswered(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    lease_id: &LeaseId,
    task_id: &TaskId,
    state: LeaseState,
) -> Result<(bool, bool), CoreError> {
    debug_assert!(matches!(state, LeaseState::Expired | LeaseState::Released));
    let lease = lease_id.to_string();
    let ended = tx
        .sql()
        .prepare_cached(
            "UPDATE lease SET state = ?1, ended_at = ?2 WHERE id = ?3 AND state = 'active'",
        )?
        .execute(params![state.as_str(), ctx.now, lease])?;
    if ended == 0 {
        return Ok((false, false));
    }
    let scoring: Option<i64> = tx
        .sql()
        .prepare_cached("SELECT verification FROM lease WHERE id = ?1")?
        .query_row([&lease], |r| r.get(0))?;
    if scoring.is_some() {
        // A verify lease holds no generation slot: its scoring slot opens again.
        reopen(tx, lease_id)?;
        tx.sql()
            .prepare_cached(
                "UPDATE task SET attempts = attempts + 1
             WHERE id = ?1 AND status IN ('queued', 'assigned')",
            )?
            .execute([task_id.to_string()])?;
    } else {
        tx.sql()
            .prepare_cached(
                "UPDATE task SET
                 active_leases = active_leases - 1,
                 attempts = attempts + 1
             WHERE id = ?1 AND status IN ('queued', 'assigned')",
            )?
            .execute([task_id.to_string()])?;
    }
    rewind_cursors(tx, task_id)?;
    let task = load_task(tx, task_id)?;
    if task.status.is_terminal() {
        return Ok((true, false));
    }
    if task.attempts >= task.max_attempts {
        let message = format!(
            "gave up after {} attempts: leases {} without a result",
            task.attempts,
            if state == LeaseState::Released {
                "were released"
            } else {
                "expired"
            }
        );
        fail_task(tx, ctx, &task, FailureReason::MaxAttempts, message)?;
        return Ok((true, true));
    }
    ctx.effects.push(Effect::Announce(task.announcement()));
    Ok((true, false))
}

/// A task may now be open to workers whose lease cursors are past it (see `lease_cursor`):
/// their next walk starts before it.
pub(crate) fn rewind_cursors(tx: &dyn Tx, task_id: &TaskId) -> Result<(), CoreError> {
    tx.sql()
        .prepare_cached(
            "UPDATE temp.lease_cursor SET after = t.seq - 1
         FROM (SELECT seq, type FROM task WHERE id = ?1) AS t
         WHERE lease_cursor.type = t.type AND lease_cursor.after >= t.seq",
        )?
        .execute([task_id.to_string()])?;
    Ok(())
}

/// Moves a task to `failed`, cancelling any lease still live on it.
pub(crate) fn fail_task(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    reason: FailureReason,
    message: String,
) -> Result<(), CoreError> {
    close_task(tx, ctx, task, TaskStatus::Failed, Some(reason), message)
}

/// Ends an open task as `failed` or `cancelled`: its live leases (generation and scoring alike)
/// are cancelled, so their holders learn on their next heartbeat or submission; its open
/// scoring rows lapse. A gold task ends without an event: nobody waits for it.
pub(crate) fn close_task(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    status: TaskStatus,
    reason: Option<FailureReason>,
    message: String,
) -> Result<(), CoreError> {
    let tid = task.id.to_string();
    tx.sql().prepare_cached(
        "UPDATE lease SET state = 'cancelled', ended_at = ?1 WHERE task_id = ?2 AND state = 'active'",
    )?
    .execute(params![ctx.now, tid])?;
    tx.sql()
        .prepare_cached(
            "UPDATE verification SET state = 'lapsed', finished_at = ?1
         WHERE task_id = ?2 AND state IN ('open', 'leased')",
        )?
        .execute(params![ctx.now, tid])?;
    tx.sql()
        .prepare_cached(
            "UPDATE task SET status = ?1, active_leases = 0, error_message = ?2, finished_at = ?3,
             failure_reason = ?4
         WHERE id = ?5",
        )?
        .execute(params![
            status.as_str(),
            message,
            ctx.now,
            reason.map(FailureReason::as_str),
            tid
        ])?;
    if task.gold.is_none() {
        ctx.effects.push(Effect::Finished(TaskEvent {
            error_message: Some(message),
            failure_reason: reason,
            ..TaskEvent::new(task.id, status, from_ms(ctx.now))
        }));
    }
    Ok(())
}

/// A lease as a submission names it: its task, holder and state.
pub(crate) type Named = (TaskId, WorkerId, LeaseState);

/// Lease `lease_id`'s task, holder and state, if there is such a lease.
pub(crate) fn named_lease(tx: &dyn Tx, lease_id: &LeaseId) -> Result<Option<Named>, CoreError> {
    Ok(tx
        .sql()
        .prepare_cached("SELECT task_id, worker_id, state FROM lease WHERE id = ?1")?
        .query_row([lease_id.to_string()], |r| {
            Ok((parsed(r, 0)?, parsed(r, 1)?, parsed(r, 2)?))
        })
        .optional()?)
}

/// The state of lease `lease_id`, which must be `worker`'s on `task`.
///
/// # Errors
/// [`CoreError::NoLease`] for an unknown lease; [`CoreError::LeaseMismatch`] when it is not
/// `worker`'s lease on `task`.
pub(crate) fn held_lease(
    tx: &dyn Tx,
    lease_id: &LeaseId,
    task: &TaskId,
    worker: &WorkerId,
) -> Result<LeaseState, CoreError> {
    let named = named_lease(tx, lease_id)?;
    check_lease(lease_id, named, task, worker)
}

/// [`held_lease`] of a lease already read (`named`).
pub(crate) fn check_lease(
    lease_id: &LeaseId,
    named: Option<Named>,
    task: &TaskId,
    worker: &WorkerId,
) -> Result<LeaseState, CoreError> {
    let Some((lease_task, holder, state)) = named else {
        return Err(CoreError::NoLease(*lease_id));
    };
    if lease_task != *task || holder != *worker {
        return Err(CoreError::LeaseMismatch {
            lease: *lease_id,
            holder,
            task: lease_task,
        });
    }
    Ok(state)
}

/// The lease `worker` holds on `task`, if any.
pub(crate) fn live_lease(
    tx: &dyn Tx,
    task: &TaskId,
    worker: &WorkerId,
) -> Result<Option<LeaseId>, CoreError> {
    Ok(tx
        .sql()
        .prepare_cached(
            "SELECT id FROM lease WHERE task_id = ?1 AND worker_id = ?2 AND state = 'active'",
        )?
        .query_row(params![task.to_string(), worker.as_str()], |r| parsed(r, 0))
        .optional()?)
}

/// Ends a verify lease that produced no result: a real slot opens again for another verifier
/// (or the same one), a trap lapses.
///
/// # Errors
/// Store errors.
pub(crate) fn reopen(tx: &dyn Tx, lease_id: &LeaseId) -> Result<(), CoreError> {
    tx.sql()
        .prepare_cached(
            "UPDATE verification SET
             state = CASE WHEN trap IS NULL THEN 'open' ELSE 'lapsed' END,
             worker_id = CASE WHEN trap IS NULL THEN NULL ELSE worker_id END,
             lease_id = CASE WHEN trap IS NULL THEN NULL ELSE lease_id END
         WHERE lease_id = ?1 AND state = 'leased'",
        )?
        .execute([lease_id.to_string()])?;
    Ok(())
}
