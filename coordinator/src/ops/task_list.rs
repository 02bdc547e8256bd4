//! `task.list`: tasks oldest first, optionally of one state. Lists leave out the consensus
//! vectors of `embedding` tasks (`task.get` has them), so a long list stays small, and gold
//! tasks (each lease of a known-answer item is one: `aimarket leaderboard` shows what came of
//! them).

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::limits::MAX_LIST_LIMIT;
use protocol::messages::{TaskListReply, TaskListRequest, TaskView};
use protocol::ProtocolError;

/// Rows returned when the request names no limit.
pub(crate) const DEFAULT_LIMIT: u32 = 1000;

/// # Errors
/// [`CoreError::Invalid`] for a limit of 0 or over the maximum.
pub(crate) fn run(tx: &dyn Tx, req: &TaskListRequest) -> Result<TaskListReply, CoreError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ProtocolError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIST_LIMIT}"),
        )
        .into());
    }
    let tasks = tx.tasks(req.status, limit)?;
    Ok(TaskListReply {
        tasks: tasks
            .into_iter()
            .map(|t| TaskView {
                final_embedding: None,
                final_token_ids: None,
                ..t.view()
            })
            .collect(),
    })
}
