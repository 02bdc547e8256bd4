//! `heartbeat.<worker_id>`: the worker is alive; every lease it holds is renewed.

use super::{lease::timings, touch_worker, Ctx};
use crate::error::CoreError;
use crate::store::from_ms;
use protocol::messages::{Heartbeat, HeartbeatReply};
use protocol::{ProtocolError, WorkerId};
use rusqlite::{params, Connection};

/// `subject_worker` is the worker id taken from the subject; the body must name the same one.
///
/// # Errors
/// [`CoreError::Invalid`] for a mismatched worker id or out-of-bounds capabilities.
pub fn run(
    conn: &Connection,
    ctx: &mut Ctx,
    subject_worker: &WorkerId,
    hb: Heartbeat,
) -> Result<HeartbeatReply, CoreError> {
    hb.validate()?;
    if &hb.worker_id != subject_worker {
        return Err(ProtocolError::invalid(
            "worker_id",
            format!(
                "body says {} but the subject says {subject_worker}",
                hb.worker_id
            ),
        )
        .into());
    }
    touch_worker(
        conn,
        ctx.now,
        &hb.worker_id,
        &hb.capabilities,
        hb.model.as_deref(),
    )?;
    let renewed = renew(conn, ctx, &hb.worker_id)?;
    Ok(HeartbeatReply {
        ts: from_ms(ctx.now),
        renewed,
        timings: timings(ctx),
    })
}

/// Pushes the expiry of every live lease of `worker` to a full lease from now.
pub(crate) fn renew(conn: &Connection, ctx: &Ctx, worker: &WorkerId) -> Result<u32, CoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE lease SET expires_at = ?1 WHERE worker_id = ?2 AND state = 'active'",
        )?
        .execute(params![ctx.now + ctx.settings.lease_ms, worker.as_str()])?;
    Ok(n as u32)
}
