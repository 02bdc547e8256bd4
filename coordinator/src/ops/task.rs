//! Task and lease transitions the operations share: load a task, end a lease that produced no
//! result, fail or close a task, and check that a lease is the submitter's.

use super::Ctx;
use crate::api::Effect;
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::rows::TaskRow;
use crate::store::tx::{NamedLease, Tx};
use protocol::messages::{FailureReason, TaskEvent};
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus, WorkerId};

/// Loads a task, locked where the engine locks (see [`crate::store::tx::Tasks::task`]).
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
pub(crate) fn load_task(tx: &dyn Tx, id: &TaskId) -> Result<TaskRow, CoreError> {
    tx.task(id)?.ok_or(CoreError::TaskNotFound(*id))
}

/// Loads a task with its live-lease summary, for views.
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
pub(crate) fn load_task_view(tx: &dyn Tx, id: &TaskId) -> Result<TaskRow, CoreError> {
    tx.task_view(id)?.ok_or(CoreError::TaskNotFound(*id))
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
    if !tx.end_lease(lease_id, state, ctx.now)? {
        return Ok((false, false));
    }
    let scoring = tx.is_scoring_lease(lease_id)?;
    if scoring {
        // A verify lease holds no generation slot: its scoring slot opens again.
        tx.reopen_scoring(lease_id)?;
    }
    tx.attempt_used(task_id, !scoring)?;
    tx.rewind_cursors(task_id)?;
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
    tx.close_task(&task.id, status, reason, &message, ctx.now)?;
    if task.gold.is_none() {
        ctx.effects.push(Effect::Finished(TaskEvent {
            error_message: Some(message),
            failure_reason: reason,
            ..TaskEvent::new(task.id, status, from_ms(ctx.now))
        }));
    }
    Ok(())
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
    check_lease(lease_id, tx.named_lease(lease_id)?, task, worker)
}

/// [`held_lease`] of a lease already read (`named`).
pub(crate) fn check_lease(
    lease_id: &LeaseId,
    named: Option<NamedLease>,
    task: &TaskId,
    worker: &WorkerId,
) -> Result<LeaseState, CoreError> {
    let Some(NamedLease {
        task: lease_task,
        worker: holder,
        state,
    }) = named
    else {
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
