//! `leaderboard`: every known worker with its points (one per submission that matched a
//! finalized consensus or verification, less one per trap passed or report outside the
//! verifiers' agreeing majority), submission count, model, agreement rate, traps caught and
//! missed, and accuracy on gold tasks, highest points first; and agreement and gold accuracy
//! per model content and task type (`leaderboard.models`).

use crate::error::CoreError;
use crate::store::rows::parsed;
use crate::store::tx::Tx;
use protocol::messages::{LeaderboardEntry, LeaderboardReply, ModelAgreement, ModelAgreementReply};
use protocol::policy::GoldScore;

/// # Errors
/// Store errors only.
pub(crate) fn run(tx: &dyn Tx) -> Result<LeaderboardReply, CoreError> {
    let entries = tx.sql()
        .prepare_cached(
            "SELECT w.id, COALESCE(ws.points, 0) + CAST(COALESCE((SELECT SUM(d.points)
                        FROM score_delta d WHERE d.worker_id = w.id), 0) AS BIGINT) AS points,
                    (SELECT COUNT(*) FROM submission s WHERE s.worker_id = w.id),
                    w.model,
                    (SELECT COUNT(*) FROM submission s WHERE s.worker_id = w.id AND s.agreed IS NOT NULL),
                    (SELECT COUNT(*) FROM submission s WHERE s.worker_id = w.id AND s.agreed = 1),
                    COALESCE(ws.traps_caught, 0), COALESCE(ws.traps_missed, 0),
                    COALESCE(ws.gold_answered, 0), COALESCE(ws.gold_right, 0),
                    w.quarantine IS NOT NULL
             FROM worker w LEFT JOIN worker_score ws ON ws.worker_id = w.id
             ORDER BY points DESC, w.id",
        )?
        .query_map((), |r| {
            Ok(LeaderboardEntry {
                worker_id: parsed(r, 0)?,
                points: r.get(1)?,
                submissions: r.get(2)?,
                model: r.get(3)?,
                agreement_rate: rate(r.get(5)?, r.get(4)?),
                traps_caught: r.get(6)?,
                traps_missed: r.get(7)?,
                gold: GoldScore {
                    answered: r.get(8)?,
                    right: r.get(9)?,
                },
                quarantined: r.get(10)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(LeaderboardReply { entries })
}

/// Agreement with consensus and gold accuracy per model (id and content hash) and task type,
/// from what submissions carried.
///
/// # Errors
/// Store errors only.
pub(crate) fn by_model(tx: &dyn Tx) -> Result<ModelAgreementReply, CoreError> {
    let models = tx.sql()
        .prepare_cached(
            "SELECT COALESCE(s.model, '-'), s.model_hash, t.type, COUNT(*),
                    COUNT(s.agreed), SUM(COALESCE(s.agreed, 0)),
                    SUM(t.gold IS NOT NULL),
                    (SELECT COALESCE(SUM(g.correct), 0) FROM gold_answer g
                     WHERE g.model IS NOT DISTINCT FROM s.model AND g.model_hash IS NOT DISTINCT FROM s.model_hash
                       AND g.type = t.type)
             FROM submission s JOIN task t ON t.id = s.task_id
             GROUP BY s.model, s.model_hash, t.type ORDER BY 1, 2, 3",
        )?
        .query_map((), |r| {
            let (decided, agreed): (u64, u64) = (r.get(4)?, r.get(5)?);
            Ok(ModelAgreement {
                model: r.get(0)?,
                model_hash: r.get(1)?,
                task_type: r.get(2)?,
                submissions: r.get(3)?,
                decided,
                agreed,
                agreement_rate: rate(agreed, decided),
                gold: GoldScore {
                    answered: r.get(6)?,
                    right: r.get(7)?,
                },
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(ModelAgreementReply { models })
}

fn rate(agreed: u64, decided: u64) -> Option<f64> {
    (decided > 0).then(|| agreed as f64 / decided as f64)
}
