//! What the posterior policy reads and writes (see [`crate::truth`]): the answers with who gave
//! them and on which model content, each model content's calibration on gold, a worker's gold
//! record since it was last caught wrong, the weights and posteriors shown, and the lone
//! finalizations taken back when their worker is caught.

use super::Exec;
use crate::store::sql::{params, Result};
use crate::truth::{Calibration, Cell, Record};
use protocol::{TaskId, TaskType, WorkerId};
use std::collections::BTreeMap;

/// A label task's answer, as the posterior policy weighs it.
#[derive(Debug, Clone)]
pub(crate) struct WeighedAnswer {
    /// Its submission's id.
    pub id: i64,
    /// Who answered.
    pub worker: WorkerId,
    /// The model content that answered (its hash, else its name, else empty).
    pub model: String,
    /// The label.
    pub label: String,
    /// The confidence the worker reported.
    pub confidence: f64,
}

/// The calibration table's rows, to be narrowed by a `WHERE`.
const CALIBRATION_ROWS: &str =
    "SELECT type, model_hash, label, bin, answered, correct, conf_sum, sq_err FROM calibration";

/// The calibrations `sql` (over [`CALIBRATION_ROWS`]) reads with `args`, by task type and model
/// content.
fn calibration_rows<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    args: &[&dyn crate::store::sql::ToArg],
) -> Result<BTreeMap<(String, String), Calibration>> {
    let rows = s
        .sql()
        .prepare_cached(sql)?
        .query_map(args, |r| {
            let cell = Cell {
                answered: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
                correct: r.get::<_, i64>(5)?.try_into().unwrap_or(0),
                conf_sum: r.get(6)?,
                sq_err: r.get(7)?,
            };
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                cell,
            ))
        })?
        .collect::<Result<Vec<_>>>()?;
    let mut out: BTreeMap<(String, String), Calibration> = BTreeMap::new();
    for (key, label, bin, cell) in rows {
        out.entry(key)
            .or_default()
            .add(&label, usize::try_from(bin).unwrap_or(0), &cell);
    }
    Ok(out)
}

/// The confusion table's rows, to be narrowed by a `WHERE`.
const CONFUSION_ROWS: &str = "SELECT type, model_hash, answered, truth, answers FROM confusion";

/// Adds the confusion counts `sql` (over [`CONFUSION_ROWS`]) reads with `args` to `out`'s
/// calibrations (a model content with wrong gold answers has calibration cells too).
fn add_confusion_rows<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    args: &[&dyn crate::store::sql::ToArg],
    out: &mut BTreeMap<(String, String), Calibration>,
) -> Result<()> {
    let rows = s
        .sql()
        .prepare_cached(sql)?
        .query_map(args, |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>>>()?;
    for (key, answered, truth, count) in rows {
        out.entry(key)
            .or_default()
            .add_confusion(&answered, &truth, count.try_into().unwrap_or(0));
    }
    Ok(())
}

/// Gold answers a worker's record looks back over.
pub(crate) const RECORD_WINDOW: u32 = 50;

/// The posterior policy's reads and writes.
pub(crate) trait Truth: Exec {
    /// Task `task`'s answers, in the order they came.
    fn weighed_answers(&self, task: &TaskId) -> Result<Vec<WeighedAnswer>> {
        self.sql()
            .prepare_cached(
                "SELECT id, worker_id, COALESCE(model_hash, model, ''), label, confidence
                 FROM submission WHERE task_id = $1 ORDER BY id",
            )?
            .query_map([task.to_string()], |r| {
                Ok(WeighedAnswer {
                    id: r.get(0)?,
                    worker: crate::store::rows::parsed(r, 1)?,
                    model: r.get(2)?,
                    label: r.get(3)?,
                    confidence: r.get(4)?,
                })
            })?
            .collect()
    }

    /// Every model content's calibration (with its confusion rows) for `task_type`, by model
    /// content.
    fn calibrations(&self, task_type: &TaskType) -> Result<BTreeMap<String, Calibration>> {
        let sql = format!("{CALIBRATION_ROWS} WHERE type = $1");
        let mut all = calibration_rows(self, &sql, &[&task_type.as_str()])?;
        let sql = format!("{CONFUSION_ROWS} WHERE type = $1");
        add_confusion_rows(self, &sql, &[&task_type.as_str()], &mut all)?;
        Ok(all.into_iter().map(|((_, model), c)| (model, c)).collect())
    }

    /// Every calibration with its confusion rows, by task type and model content (for the
    /// views).
    fn all_calibrations(&self) -> Result<BTreeMap<(String, String), Calibration>> {
        let mut all = calibration_rows(self, CALIBRATION_ROWS, &[])?;
        add_confusion_rows(self, CONFUSION_ROWS, &[], &mut all)?;
        Ok(all)
    }

    /// Adds one gold answer to model content `model`'s calibration for `task_type`: `label`
    /// answered with `confidence` where the truth was `truth` (a wrong answer also counts in
    /// the model's confusion row of `label`).
    fn record_calibration(
        &self,
        model: &str,
        task_type: &TaskType,
        label: &str,
        truth: &str,
        confidence: f64,
    ) -> Result<()> {
        let correct = label == truth;
        if !correct {
            self.sql()
                .prepare_cached(
                    "INSERT INTO confusion (model_hash, type, answered, truth, answers)
                     VALUES ($1, $2, $3, $4, 1)
                     ON CONFLICT (model_hash, type, answered, truth) DO UPDATE SET
                         answers = confusion.answers + 1",
                )?
                .defer(params![model, task_type.as_str(), label, truth])?;
        }
        let cell = Cell::one(confidence, correct);
        let bin = i64::try_from(crate::truth::bin(confidence)).unwrap_or(0);
        self.sql()
            .prepare_cached(
                "INSERT INTO calibration (model_hash, type, label, bin, answered, correct,
                                          conf_sum, sq_err)
                 VALUES ($1, $2, $3, $4, 1, $5, $6, $7)
                 ON CONFLICT (model_hash, type, label, bin) DO UPDATE SET
                     answered = calibration.answered + 1,
                     correct = calibration.correct + excluded.correct,
                     conf_sum = calibration.conf_sum + excluded.conf_sum,
                     sq_err = calibration.sq_err + excluded.sq_err",
            )?
            .defer(params![
                model,
                task_type.as_str(),
                label,
                bin,
                i64::from(correct),
                cell.conf_sum,
                cell.sq_err
            ])
    }

    /// `worker`'s last [`RECORD_WINDOW`] gold answers since it was last caught wrong.
    fn gold_record(&self, worker: &WorkerId) -> Result<Record> {
        self.sql()
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(correct), 0) FROM
                     (SELECT correct FROM gold_answer
                      WHERE worker_id = $1
                        AND created_at > COALESCE((SELECT caught_at FROM worker WHERE id = $1), -1)
                      ORDER BY id DESC LIMIT $2) AS recent",
            )?
            .query_row(params![worker.as_str(), RECORD_WINDOW], |r| {
                Ok(Record {
                    answered: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                    right: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                })
            })
    }

    /// Shows each answer's weight (`(submission id, weight)`).
    fn set_weights(&self, weights: &[(i64, f64)]) -> Result<()> {
        let mut stmt = self
            .sql()
            .prepare_cached("UPDATE submission SET weight = $1 WHERE id = $2")?;
        for (id, weight) in weights {
            stmt.defer(params![weight, id])?;
        }
        Ok(())
    }

    /// Shows the posterior task `task`'s answers reached, and names the worker whose lone
    /// answer decided it unchecked, if one did.
    fn set_posterior(&self, task: &TaskId, posterior: f64, lone: Option<&WorkerId>) -> Result<()> {
        self.sql()
            .prepare_cached("UPDATE task SET posterior = $1, lone_worker = $2 WHERE id = $3")?
            .defer(params![
                posterior,
                lone.map(WorkerId::as_str),
                task.to_string()
            ])
    }

    /// `worker` caught wrong at `now`: its record starts over, and the tasks its lone answers
    /// decided unchecked open again for one more answer (their agreement flags cleared). The
    /// tasks reopened.
    fn catch_worker(&self, worker: &WorkerId, now: i64) -> Result<Vec<TaskId>> {
        self.sql()
            .prepare_cached("UPDATE worker SET caught_at = $1 WHERE id = $2")?
            .execute(params![now, worker.as_str()])?;
        let reopened: Vec<TaskId> = self
            .sql()
            .prepare_cached(
                "UPDATE task SET status = 'queued', required = required + 1, inconclusive = 1,
                     final_label = NULL, final_confidence = NULL, finished_at = NULL,
                     lone_worker = NULL, posterior = NULL
                 WHERE lone_worker = $1 AND status = 'finalized' AND submissions < max_answers
                 RETURNING id",
            )?
            .query_map([worker.as_str()], |r| {
                crate::store::rows::parsed::<TaskId>(r, 0)
            })?
            .collect::<Result<_>>()?;
        let mut clear = self
            .sql()
            .prepare_cached("UPDATE submission SET agreed = NULL WHERE task_id = $1")?;
        for task in &reopened {
            clear.execute([task.to_string()])?;
        }
        Ok(reopened)
    }
}
