//! `leaderboard`: every known worker with its points (one per submission that matched a
//! finalized consensus or verification, less one per trap passed or report outside the
//! verifiers' agreeing majority), submission count, model, agreement rate, traps caught and
//! missed, and accuracy on gold tasks, highest points first; and agreement and gold accuracy
//! per model content and task type, with its calibration and confusion rows on gold
//! (`leaderboard.models`).

use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::messages::{
    CalibrationView, Confused, LeaderboardReply, ModelAgreementReply, ReliabilityBin,
};

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
    let calibrations = tx.all_calibrations()?;
    let mut models = tx.agreement_by_model()?;
    for m in &mut models {
        let key = (
            m.task_type.clone(),
            m.model_hash.clone().unwrap_or_else(|| m.model.clone()),
        );
        m.calibration = calibrations.get(&key).and_then(|c| {
            Some(CalibrationView {
                brier: c.brier()?,
                bins: c
                    .reliability()
                    .into_iter()
                    .map(|b| ReliabilityBin {
                        low: b.low,
                        answered: b.answered,
                        confidence: b.confidence,
                        accuracy: b.accuracy,
                    })
                    .collect(),
                confusion: c
                    .confusions()
                    .map(|(answered, truth, answers)| Confused {
                        answered: answered.to_owned(),
                        truth: truth.to_owned(),
                        answers,
                    })
                    .collect(),
            })
        });
    }
    Ok(ModelAgreementReply { models })
}
