//! What a worker can do, as the operations need it (a worker seen alive is the store's
//! `Tasks::touch_worker`).

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::{TaskType, WorkerId};

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
