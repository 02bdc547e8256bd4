//! Worker transitions the operations share: a worker seen alive, and what it can do.

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::{TaskType, WorkerId};

/// Records that `worker` is alive with these capabilities; registers it on first sight (see
/// [`crate::store::tx::Tasks::touch_worker`]).
pub(crate) fn touch_worker(
    tx: &dyn Tx,
    now: i64,
    worker: &WorkerId,
    capabilities: &[TaskType],
    model: Option<&str>,
    model_hash: Option<&str>,
) -> Result<(), CoreError> {
    Ok(tx.touch_worker(now, worker, capabilities, model, model_hash)?)
}

/// The capabilities `worker` registered with, or `sentiment` for a worker never seen (clients of
/// the original HTTP API register without task types).
pub(crate) fn known_capabilities(
    tx: &dyn Tx,
    worker: &WorkerId,
) -> Result<Vec<TaskType>, CoreError> {
    Ok(tx
        .capabilities(worker)?
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![TaskType::sentiment()]))
}
