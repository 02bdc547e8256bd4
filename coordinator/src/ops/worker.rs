//! Worker transitions the operations share: a worker seen alive, and what it can do.

use crate::error::CoreError;
use crate::store::rows::Json;
use crate::store::sql::{params, OptionalExtension};
use crate::store::tx::Tx;
use protocol::{TaskType, WorkerId};

/// Records that `worker` is alive with these capabilities; registers it on first sight.
///
/// A worker that now serves another model content forgets its lease cursors: the tasks they
/// passed over for the old hash may be ones it can do now.
pub(crate) fn touch_worker(
    tx: &dyn Tx,
    now: i64,
    worker: &WorkerId,
    capabilities: &[TaskType],
    model: Option<&str>,
    model_hash: Option<&str>,
) -> Result<(), CoreError> {
    if model_hash.is_some() {
        tx.sql()
            .prepare_cached(
                "DELETE FROM temp.lease_cursor WHERE worker_id = ?1
               AND EXISTS (SELECT 1 FROM worker WHERE id = ?1 AND model_hash IS DISTINCT FROM ?2)",
            )?
            .execute(params![worker.as_str(), model_hash])?;
    }
    let caps = serde_json::to_string(capabilities).expect("task types serialize");
    tx.sql().prepare_cached(
        "INSERT INTO worker (id, status, capabilities, model, model_hash, last_seen, registered_at)
         VALUES (?1, 'active', ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (id) DO UPDATE SET
             status = 'active',
             capabilities = excluded.capabilities,
             model = COALESCE(excluded.model, worker.model),
             model_hash = COALESCE(excluded.model_hash, worker.model_hash),
             last_seen = excluded.last_seen",
    )?
    .defer(params![worker.as_str(), caps, model, model_hash, now])?;
    Ok(())
}

/// The capabilities `worker` registered with, or `sentiment` for a worker never seen (clients of
/// the original HTTP API register without task types).
pub(crate) fn known_capabilities(
    tx: &dyn Tx,
    worker: &WorkerId,
) -> Result<Vec<TaskType>, CoreError> {
    let caps: Option<Json<Vec<TaskType>>> = tx
        .sql()
        .prepare_cached("SELECT capabilities FROM worker WHERE id = ?1")?
        .query_row([worker.as_str()], |r| r.get(0))
        .optional()?;
    Ok(caps
        .map(|Json(c)| c)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![TaskType::sentiment()]))
}
