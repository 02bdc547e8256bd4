//! `task.cancel` and `task.retry`: a client ends open tasks, or gives failed ones another go.
//! Both act on all the tasks named or on none: every task is checked before any is changed.

use super::task::{close_task, load_task};
use super::Ctx;
use crate::api::Effect;
use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::FailureReason;
use protocol::policy::{Policy, TaskIdsReply, TaskIdsRequest};
use protocol::{ProtocolError, TaskStatus};

/// Cancels open tasks: each becomes `cancelled`, its live leases end (their holders learn it
/// on their next heartbeat or submission, `task_closed`), its answers are kept.
///
/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown id, [`CoreError::TaskClosed`] for a task already
/// finalized, failed or cancelled; nothing is changed then.
pub(crate) fn cancel(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: TaskIdsRequest,
) -> Result<TaskIdsReply, CoreError> {
    req.validate()?;
    let mut tasks = Vec::with_capacity(req.task_ids.len());
    for id in &req.task_ids {
        let task = load_task(tx, id)?;
        if task.status.is_terminal() || task.gold.is_some() {
            return Err(CoreError::TaskClosed {
                task: *id,
                status: task.status,
            });
        }
        tasks.push(task);
    }
    for task in tasks {
        let id = task.id;
        let message = format!("cancelled with {} of its answers in", task.submissions);
        close_task(tx, ctx, &task, TaskStatus::Cancelled, None, message)?;
        tracing::info!(task_id = %id, "task cancelled");
    }
    Ok(TaskIdsReply {
        task_ids: req.task_ids,
    })
}

/// Requeues failed tasks with fresh attempts, keeping their earlier answers (visible in
/// `task get`, and counted). A task that reached no consensus under the quorum policy may
/// collect up to `required_submissions` more answers.
///
/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown id; [`CoreError::Invalid`] for a task that is not
/// `failed`, or a generative task whose candidates were all scored (its answers cannot change);
/// nothing is changed then.
pub(crate) fn retry(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: TaskIdsRequest,
) -> Result<TaskIdsReply, CoreError> {
    req.validate()?;
    let mut reopened = Vec::with_capacity(req.task_ids.len());
    for id in &req.task_ids {
        let task = load_task(tx, id)?;
        if task.status != TaskStatus::Failed || task.gold.is_some() {
            return Err(ProtocolError::invalid(
                "task_ids",
                format!(
                    "task {id} is {}: only failed tasks are retried",
                    task.status
                ),
            )
            .into());
        }
        let no_consensus = task.failure_reason == Some(FailureReason::NoConsensus);
        if no_consensus && task.generation.is_some() {
            return Err(ProtocolError::invalid(
                "task_ids",
                format!(
                    "task {id} is generative and its answers were scored to no valid \
                     candidate: retrying would score the same answers again; add it anew"
                ),
            )
            .into());
        }
        // A split at `max_answers` gets room for another round of answers.
        let more = matches!(task.vote.policy, Policy::Quorum | Policy::Posterior);
        let (required, max_answers) = if no_consensus && more {
            let max = (task.vote.max_answers + task.asked)
                .min(protocol::policy::MAX_ANSWERS_LIMIT)
                .max(task.submissions + 1);
            (task.submissions + 1, max)
        } else {
            (task.required, task.vote.max_answers)
        };
        reopened.push((*id, required, max_answers));
    }
    for (id, required, max_answers) in &reopened {
        let id = *id;
        tx.reopen_task(&id, *required, *max_answers)?;
        tx.rewind_cursors(&id)?;
        ctx.effects
            .push(Effect::Announce(load_task(tx, &id)?.announcement()));
        tracing::info!(task_id = %id, "task requeued");
    }
    Ok(TaskIdsReply {
        task_ids: req.task_ids,
    })
}
