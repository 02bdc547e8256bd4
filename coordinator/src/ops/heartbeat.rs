//! `heartbeat.<worker_id>`: the worker is alive; the leases it names (or, when it names none, all
//! of its leases) are renewed.

use super::{lease::timings, Ctx};
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::tx::Tx;
use protocol::messages::{Heartbeat, HeartbeatReply};
use protocol::{LeaseId, ProtocolError, WorkerId};

/// `subject_worker` is the worker id taken from the subject; the body must name the same one.
///
/// # Errors
/// [`CoreError::Invalid`] for a mismatched worker id or out-of-bounds capabilities.
pub(crate) fn run(
    tx: &dyn Tx,
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
    tx.touch_worker(
        ctx.now,
        &hb.worker_id,
        &hb.capabilities,
        hb.model.as_deref(),
        hb.model_hash.as_deref(),
    )?;
    let renewed = renew(tx, ctx, &hb.worker_id, hb.leases.as_deref())?;
    let closed = closed(tx, &hb.worker_id, hb.leases.as_deref().unwrap_or_default())?;
    Ok(HeartbeatReply {
        ts: from_ms(ctx.now),
        renewed,
        closed,
        timings: timings(ctx),
    })
}

/// Of the leases a worker names, those that ended because their task closed (cancelled,
/// finalized or failed without them): their work is to be dropped.
fn closed(tx: &dyn Tx, worker: &WorkerId, named: &[LeaseId]) -> Result<Vec<LeaseId>, CoreError> {
    Ok(tx.cancelled_leases(worker, named)?)
}

/// Pushes the expiry of `worker`'s live leases (those in `only`, when given) to a full lease from
/// now. A lease the worker does not name is left to expire.
pub(crate) fn renew(
    tx: &dyn Tx,
    ctx: &Ctx,
    worker: &WorkerId,
    only: Option<&[LeaseId]>,
) -> Result<u32, CoreError> {
    Ok(tx.renew_leases(worker, only, ctx.now + ctx.settings.lease_ms)?)
}

/// A heartbeat from a client that names neither its capabilities nor its leases (the original
/// HTTP API): keeps the registered capabilities (or sets `capabilities`, on registration) and
/// renews every lease of the worker.
///
/// # Errors
/// [`CoreError::Invalid`] for capabilities out of bounds.
pub(crate) fn run_known(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    worker: &WorkerId,
    capabilities: Option<Vec<protocol::TaskType>>,
) -> Result<HeartbeatReply, CoreError> {
    let capabilities = match capabilities {
        Some(c) => c,
        None => super::worker::known_capabilities(tx, worker)?,
    };
    let hb = Heartbeat {
        worker_id: worker.clone(),
        capabilities,
        model: None,
        model_hash: None,
        leases: None,
    };
    run(tx, ctx, worker, hb)
}
