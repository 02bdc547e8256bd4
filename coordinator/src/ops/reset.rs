//! `ops.reset`: delete every task, lease, submission, worker and score (gold answers included;
//! the gold items themselves stay).

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::ResetRequest;
use protocol::ProtocolError;

/// # Errors
/// [`CoreError::Invalid`] unless the request confirms.
pub(crate) fn run(tx: &dyn Tx, req: &ResetRequest) -> Result<(), CoreError> {
    if !req.confirm {
        return Err(ProtocolError::invalid("confirm", "must be true to delete everything").into());
    }
    tx.reset()?;
    tracing::warn!("store reset: every task, worker and score deleted");
    Ok(())
}
