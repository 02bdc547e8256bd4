//! `task.get`: a task with its submissions and live leases.

use super::{load_task, parsed};
use crate::error::CoreError;
use crate::store::from_ms;
use protocol::messages::{LeaseView, SubmissionView, TaskDetail};
use protocol::TaskId;
use rusqlite::Connection;

/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown id.
pub fn run(conn: &Connection, task_id: &TaskId) -> Result<TaskDetail, CoreError> {
    let task = load_task(conn, task_id)?;
    let id = task_id.to_string();
    let submissions = conn
        .prepare_cached(
            "SELECT worker_id, label, confidence, model, agreed, created_at
             FROM submission WHERE task_id = ?1 ORDER BY id",
        )?
        .query_map([&id], |r| {
            Ok(SubmissionView {
                worker_id: parsed(r, 0)?,
                label: r.get(1)?,
                confidence: r.get(2)?,
                model: r.get(3)?,
                agreed: r.get(4)?,
                created_at: from_ms(r.get(5)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let leases = conn
        .prepare_cached(
            "SELECT id, worker_id, expires_at FROM lease
             WHERE task_id = ?1 AND state = 'active' ORDER BY created_at",
        )?
        .query_map([&id], |r| {
            Ok(LeaseView {
                lease_id: parsed(r, 0)?,
                worker_id: parsed(r, 1)?,
                expires_at: from_ms(r.get(2)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TaskDetail {
        task: task.view(),
        submissions,
        leases,
    })
}
