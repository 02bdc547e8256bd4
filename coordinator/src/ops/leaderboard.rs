//! `leaderboard`: every known worker with its points (one per submission that matched a
//! finalized consensus or verification, less one per trap passed or report outside the
//! verifiers' agreeing majority), submission count, model, agreement rate, traps caught and
//! missed, and accuracy on gold tasks, highest points first; and agreement and gold accuracy
//! per model content and task type (`leaderboard.models`).

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::{LeaderboardReply, ModelAgreementReply};

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx) -> Result<LeaderboardReply, CoreError> {
    Ok(LeaderboardReply {
        entries: tx.leaderboard()?,
    })
}

/// Agreement with consensus and gold accuracy per model (id and content hash) and task type,
/// from what submissions carried.
///
/// # Errors
/// Store errors only.
pub(crate) fn by_model(tx: &dyn Tx) -> Result<ModelAgreementReply, CoreError> {
    Ok(ModelAgreementReply {
        models: tx.agreement_by_model()?,
    })
}
