//! `workers`: the registry. A worker whose last heartbeat is older than the TTL shows as `stale`
//! even before the next sweep writes it.

use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::rows::{parsed, Json};
use crate::store::tx::Tx;
use protocol::messages::{WorkerView, WorkersReply};
use protocol::policy::GoldScore;
use protocol::WorkerStatus;

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx, now: i64, heartbeat_ttl_ms: i64) -> Result<WorkersReply, CoreError> {
    let workers = tx
        .sql()
        .prepare_cached(
            "SELECT w.id, w.status, w.capabilities, w.model, w.last_seen, w.registered_at,
                    (SELECT COUNT(*) FROM lease l WHERE l.worker_id = w.id AND l.state = 'active'),
                    w.model_hash,
                    COALESCE(ws.traps_caught, 0), COALESCE(ws.traps_missed, 0),
                    COALESCE(ws.gold_answered, 0), COALESCE(ws.gold_right, 0), w.quarantine
             FROM worker w LEFT JOIN worker_score ws ON ws.worker_id = w.id ORDER BY w.id",
        )?
        .query_map((), |r| {
            let last_seen: i64 = r.get(4)?;
            let mut status: WorkerStatus = parsed(r, 1)?;
            if status == WorkerStatus::Active && last_seen <= now - heartbeat_ttl_ms {
                status = WorkerStatus::Stale;
            }
            Ok(WorkerView {
                worker_id: parsed(r, 0)?,
                status,
                capabilities: r.get::<_, Json<_>>(2)?.0,
                model: r.get(3)?,
                model_hash: r.get(7)?,
                last_seen: from_ms(last_seen),
                registered_at: from_ms(r.get(5)?),
                active_leases: r.get(6)?,
                traps_caught: r.get(8)?,
                traps_missed: r.get(9)?,
                gold: GoldScore {
                    answered: r.get(10)?,
                    right: r.get(11)?,
                },
                quarantine: r.get(12)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(WorkersReply { workers })
}
