//! `task.get`: a task with its submissions and live leases.

use super::{load_task_view, parsed, TaskRow, TASK_VIEW_COLUMNS};
use crate::error::CoreError;
use crate::store::{blob_to_vector, from_ms};
use protocol::messages::{LeaseView, SubmissionView, TaskDetail};
use protocol::TaskId;
use rusqlite::Connection;

/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown id.
pub fn run(conn: &Connection, task_id: &TaskId) -> Result<TaskDetail, CoreError> {
    detail(conn, load_task_view(conn, task_id)?)
}

/// The `limit` newest tasks with their votes, newest first (the dashboard's feed).
///
/// # Errors
/// Store errors only.
pub fn recent(conn: &Connection, limit: u32) -> Result<Vec<TaskDetail>, CoreError> {
    let sql = format!("SELECT {TASK_VIEW_COLUMNS} FROM task ORDER BY seq DESC LIMIT ?1");
    let tasks = conn
        .prepare_cached(&sql)?
        .query_map([limit], TaskRow::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    tasks.into_iter().map(|t| detail(conn, t)).collect()
}

fn detail(conn: &Connection, task: TaskRow) -> Result<TaskDetail, CoreError> {
    let task_id = &task.id;
    let id = task_id.to_string();
    let submissions = conn
        .prepare_cached(
            "SELECT worker_id, label, confidence, model, agreed, created_at, embedding
             FROM submission WHERE task_id = ?1 ORDER BY id",
        )?
        .query_map([&id], |r| {
            Ok(SubmissionView {
                worker_id: parsed(r, 0)?,
                label: Some(r.get::<_, String>(1)?).filter(|l| !l.is_empty()),
                embedding: r.get::<_, Option<Vec<u8>>>(6)?.map(|b| blob_to_vector(&b)),
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
