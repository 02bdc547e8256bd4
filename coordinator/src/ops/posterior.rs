//! The posterior policy's decision (see [`crate::truth`]): each answer weighed by its model
//! content's calibration on gold (and its worker's own record when worse), its wrong mass
//! spread by the model content's confusion row, copies of one model content counted as one,
//! the labels' posterior pooled, the task decided once the best label's reaches its threshold,
//! or one more replica leased, up to `max_answers`. A lone answer decides only when its worker
//! has earned trust and no spot check falls on it. A trusted worker whose wrong answer (by
//! gold, or against the decision of a replicated task) costs it that trust is caught: its
//! record starts over and the tasks its lone answers decided open again for one more answer.

use super::decide::{counted, finished, undecided, Final};
use super::Ctx;
use crate::api::Effect;
use crate::consensus::Outcome;
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::rows::TaskRow;
use crate::store::tx::{Credit, Tx, WeighedAnswer};
use crate::truth::{self, Believed, Calibration};
use protocol::messages::TaskEvent;
use protocol::policy::SENTIMENT_LABELS;
use protocol::{TaskId, TaskStatus, TaskType, WorkerId};

/// One answer as believed: the probability that it is right, whether its worker is trusted,
/// and whether one more wrong answer would cost it that trust (it is then caught).
struct Belief {
    p: f64,
    trusted: bool,
    caught_if_wrong: bool,
}

/// Decides label task `task` under the posterior policy, once its `required` answers are in:
/// its outcome and, when decided, the final label.
///
/// # Errors
/// The store's.
pub(crate) fn decide(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
) -> Result<(Outcome, Option<String>), CoreError> {
    let answers = tx.weighed_answers(&task.id)?;
    let (labels, classes) = label_set(task);
    let calibrations = tx.calibrations(&task.task_type)?;
    let beliefs = answers
        .iter()
        .map(|a| belief(tx, a, calibrations.get(&a.model), classes))
        .collect::<Result<Vec<_>, CoreError>>()?;
    // Copies of one model content are one piece of evidence (an answer without a model name
    // is its worker's alone).
    let groups: Vec<String> = answers
        .iter()
        .map(|a| {
            if a.model.is_empty() {
                format!("worker {}", a.worker)
            } else {
                a.model.clone()
            }
        })
        .collect();
    let shares = truth::shares(&groups);
    let none = Calibration::default();
    let believed: Vec<Believed<'_>> = answers
        .iter()
        .zip(&beliefs)
        .zip(&shares)
        .map(|((a, b), share)| Believed {
            label: &a.label,
            p: b.p,
            confused: calibrations
                .get(&a.model)
                .unwrap_or(&none)
                .confusion(&a.label),
            share: *share,
        })
        .collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let post = truth::posterior(&believed, &label_refs, classes);
    let (best, posterior) = post.first().cloned().expect("a decision has answers");
    let weights: Vec<(i64, f64)> = answers
        .iter()
        .zip(&beliefs)
        .zip(&shares)
        .map(|((a, b), share)| (a.id, share * truth::weight(b.p, classes)))
        .collect();
    tx.set_weights(&weights)?;
    let threshold = task
        .vote
        .threshold
        .unwrap_or(ctx.settings.posterior_threshold);
    let lone = match (answers.as_slice(), beliefs.as_slice()) {
        ([a], [b]) => Some((a, b)),
        _ => None,
    };
    // A lone answer decides only for a trusted worker, and then not when a spot check falls.
    let lone_may_decide =
        lone.is_none_or(|(_, b)| b.trusted && fastrand::f64() >= ctx.settings.spot_check_rate);
    let n = answers.len();
    if posterior < threshold || !lone_may_decide {
        tx.set_posterior(&task.id, posterior, None)?;
        let outcome = if n < task.vote.max_answers as usize {
            Outcome::MoreAnswers
        } else {
            Outcome::NoConsensus
        };
        let agreeing = answers.iter().filter(|a| a.label == best).count();
        undecided(tx, ctx, task, outcome, n, agreeing)?;
        return Ok((outcome, None));
    }
    tx.set_posterior(&task.id, posterior, lone.map(|(a, _)| &a.worker))?;
    tx.decide_label(&task.id, &best, posterior, ctx.now)?;
    for (a, b) in answers.iter().zip(&beliefs) {
        if a.label != best && b.caught_if_wrong {
            caught(tx, ctx, &a.worker)?;
        }
    }
    finished(ctx, &task.id, Final::Label(best.clone()), posterior);
    counted(ctx, n, Some(posterior));
    Ok((Outcome::Decided, Some(best)))
}

/// The labels a task's answers may be and how many there are: `sentiment`'s two, a
/// `zero-shot` task's candidates.
fn label_set(task: &TaskRow) -> (Vec<String>, usize) {
    let labels: Vec<String> = match &task.labels {
        Some(l) => l.clone(),
        None if task.task_type == TaskType::sentiment() => {
            SENTIMENT_LABELS.iter().map(|l| (*l).to_owned()).collect()
        }
        None => Vec::new(),
    };
    let classes = labels.len().max(2);
    (labels, classes)
}

/// How far answer `a` is believed: its model content's calibration at its label and confidence,
/// lowered to its worker's own gold record when that is worse; and whether the worker is trusted.
fn belief(
    tx: &dyn Tx,
    a: &WeighedAnswer,
    calibration: Option<&Calibration>,
    classes: usize,
) -> Result<Belief, CoreError> {
    let none = Calibration::default();
    let cal = calibration.unwrap_or(&none);
    let model = cal.accuracy(classes);
    let record = tx.gold_record(&a.worker)?;
    let p = truth::for_worker(
        cal.probability(&a.label, a.confidence, classes),
        model,
        record,
        classes,
    );
    let trusted = truth::trusted(record, model, classes);
    Ok(Belief {
        p,
        trusted,
        caught_if_wrong: trusted && !truth::trusted(record.with_wrong(), model, classes),
    })
}

/// Whether `worker`, answering on model content `model` of `task_type`, is trusted now and
/// one more wrong answer would cost it that trust: a wrong answer then catches it.
///
/// # Errors
/// The store's.
pub(crate) fn caught_if_wrong(
    tx: &dyn Tx,
    worker: &WorkerId,
    model: &str,
    task_type: &TaskType,
    classes: usize,
) -> Result<bool, CoreError> {
    let calibrations = tx.calibrations(task_type)?;
    let model = calibrations.get(model).map_or_else(
        || Calibration::default().accuracy(classes),
        |c| c.accuracy(classes),
    );
    let record = tx.gold_record(worker)?;
    Ok(truth::trusted(record, model, classes)
        && !truth::trusted(record.with_wrong(), model, classes))
}

/// A trusted worker caught wrong: its record starts over, and each task its lone answer decided
/// unchecked opens again for one more answer (its point taken back), announced to workers.
///
/// # Errors
/// The store's.
pub(crate) fn caught(tx: &dyn Tx, ctx: &mut Ctx, worker: &WorkerId) -> Result<(), CoreError> {
    let reopened = tx.catch_worker(worker, ctx.now)?;
    tracing::warn!(
        worker_id = %worker,
        reopened = reopened.len(),
        "trusted worker caught wrong: its record starts over, its unchecked answers replicated"
    );
    if reopened.is_empty() {
        return Ok(());
    }
    let points = -i64::try_from(reopened.len()).unwrap_or(i64::MAX);
    tx.credit(&mut [(
        worker.clone(),
        Credit {
            points,
            ..Credit::default()
        },
    )])?;
    for id in &reopened {
        announce_reopened(tx, ctx, id)?;
    }
    Ok(())
}

fn announce_reopened(tx: &dyn Tx, ctx: &mut Ctx, id: &TaskId) -> Result<(), CoreError> {
    tx.rewind_cursors(id)?;
    if let Some(task) = tx.task(id)? {
        ctx.effects.push(Effect::Announce(task.announcement()));
        ctx.effects.push(Effect::Finished(TaskEvent {
            answers: Some(task.submissions),
            ..TaskEvent::new(*id, TaskStatus::Inconclusive, from_ms(ctx.now))
        }));
    }
    Ok(())
}
