//! `workers`: the registry. A worker whose last heartbeat is older than the TTL shows as `stale`
//! even before the next sweep writes it.

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::WorkersReply;

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx, now: i64, heartbeat_ttl_ms: i64) -> Result<WorkersReply, CoreError> {
    Ok(WorkersReply {
        workers: tx.workers(now - heartbeat_ttl_ms)?,
    })
}
