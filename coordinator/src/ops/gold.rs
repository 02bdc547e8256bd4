//! Gold tasks: known-answer items mixed into leases at `Settings::gold_rate`, checked against the
//! known answer and never voted.
//!
//! Each lease of a gold item is a task of its own (a fresh id, one answer, one attempt, marked
//! with its item), so on the wire a gold lease looks like any other. Its answer is stored as a
//! submission (a resend is a duplicate, as anywhere) and checked: per worker and per model, the
//! accuracy on gold is what `aimarket leaderboard`, `--by-model` and `aimarket workers` show. A
//! worker whose accuracy over its last [`WINDOW`] gold answers falls below
//! `Settings::gold_min_accuracy`, once it has `Settings::gold_min_answers` of them, is
//! quarantined: it gets only gold until its accuracy is back above the bar.

use super::Ctx;
use crate::api::Effect;
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::rows::TaskRow;
use crate::store::tx::{Credit, GoldAnswer, GoldInsert, GoldItem, TaskInsert, Tx};
use protocol::limits::{DEFAULT_REQUIRED_SUBMISSIONS, MAX_TASKS_PER_ADD};
use protocol::messages::{Lease, NewTask, TaskAnnouncement};
use protocol::policy::{GoldAddReply, GoldAddRequest};
use protocol::{LeaseId, ProtocolError, TaskId, TaskType, WorkerId};

/// Gold answers the quarantine rule looks back over.
pub(crate) const WINDOW: u32 = 50;

/// Stores known-answer items, all or none; items already stored are left as they are.
///
/// # Errors
/// [`CoreError::Invalid`] naming the first bad item: text, labels or spec out of bounds, an
/// answer that is not a label of its type. Nothing is stored then.
pub(crate) fn add(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: GoldAddRequest,
) -> Result<GoldAddReply, CoreError> {
    if req.items.is_empty() || req.items.len() > MAX_TASKS_PER_ADD {
        return Err(ProtocolError::invalid(
            "items",
            format!("must hold between 1 and {MAX_TASKS_PER_ADD} items"),
        )
        .into());
    }
    let mut resolved = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.iter().enumerate() {
        let numbered = |e: ProtocolError| match e {
            ProtocolError::Invalid { field, problem } => {
                ProtocolError::invalid(field, format!("item {i}: {problem}"))
            }
            other => other,
        };
        let task = NewTask {
            task_type: item.task_type.clone(),
            labels: item.labels.clone(),
            model: item.model.clone(),
            max_new_tokens: item.max_new_tokens,
            ..NewTask::text(item.text.clone())
        };
        task.validate(ctx.settings.max_text_bytes)
            .map_err(numbered)?;
        item.check_answer().map_err(numbered)?;
        resolved.push((task.spec().map_err(numbered)?, item));
    }
    let types: Vec<TaskType> = resolved.iter().map(|(_, item)| item.task_type()).collect();
    let rows: Vec<GoldInsert<'_>> = resolved
        .iter()
        .zip(&types)
        .map(|((spec, item), task_type)| GoldInsert {
            task_type,
            text: &item.text,
            labels: item.labels.as_deref(),
            generation: spec.as_ref(),
            answer: &item.answer,
        })
        .collect();
    let added = tx.insert_gold(&rows, ctx.now)?;
    let total = tx.gold_count()?;
    tracing::info!(added, total, "gold items stored");
    Ok(GoldAddReply {
        added,
        already_known: resolved.len() as u64 - added,
        total,
    })
}

/// Why `worker` is quarantined, when it is.
pub(crate) fn quarantine(tx: &dyn Tx, worker: &WorkerId) -> Result<Option<String>, CoreError> {
    Ok(tx.quarantine(worker)?)
}

/// Up to `n` gold items of `capabilities` for `worker` (generative ones only of the content it
/// serves), from a random point on: first those it has never answered nor holds, then, when it
/// has seen them all, any.
fn pick(
    tx: &dyn Tx,
    worker: &WorkerId,
    capabilities: &[TaskType],
    model_hash: Option<&str>,
    n: usize,
) -> Result<Vec<GoldItem>, CoreError> {
    let Some((lo, hi)) = tx.gold_ids()? else {
        return Ok(Vec::new());
    };
    let start = fastrand::i64(lo..=hi);
    let mut items: Vec<GoldItem> = Vec::new();
    for any in [false, true] {
        for from_start in [true, false] {
            let room = n - items.len();
            if room == 0 {
                return Ok(items);
            }
            let rows = tx.gold_items(
                worker,
                capabilities,
                model_hash,
                start,
                any,
                from_start,
                room,
            )?;
            for item in rows {
                if items.iter().all(|i| i.id != item.id) {
                    items.push(item);
                }
            }
        }
    }
    Ok(items)
}

/// Leases up to `n` gold tasks to `worker`: one new task per item (one answer, one attempt),
/// announced like any task.
pub(crate) fn lease(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    worker: &WorkerId,
    capabilities: &[TaskType],
    model_hash: Option<&str>,
    n: usize,
) -> Result<Vec<Lease>, CoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let items = pick(tx, worker, capabilities, model_hash, n)?;
    let expires_at = ctx.now + ctx.settings.lease_ms;
    // One new task per item, its one slot this worker's lease: inserted leased, one statement
    // for the tasks and one for the leases.
    let ids: Vec<(LeaseId, TaskId)> = items
        .iter()
        .map(|_| (LeaseId::new(), TaskId::new()))
        .collect();
    let rows: Vec<TaskInsert> = items
        .iter()
        .zip(&ids)
        .map(|(item, (_, task_id))| TaskInsert {
            id: *task_id,
            task_type: item.task_type.clone(),
            text: item.text.clone(),
            required: 1,
            active_leases: 1,
            max_attempts: 1,
            labels: item.labels.clone(),
            similarity: None,
            model_hash: item.generation.as_ref().map(|s| s.model_hash.clone()),
            generation: item.generation.clone(),
            verifiers: 0,
            asked: 1,
            policy: "majority",
            min_quorum: 1,
            max_answers: 1,
            distinct_models: false,
            gold: Some(item.id),
            threshold: None,
        })
        .collect();
    tx.insert_tasks(ctx.now, &rows)?;
    tx.insert_leases(worker, &ids, expires_at, ctx.now)?;
    let mut leases = Vec::with_capacity(items.len());
    for (item, (lease_id, task_id)) in items.into_iter().zip(ids) {
        tracing::debug!(%task_id, worker_id = %worker, gold = item.id, "gold lease granted");
        ctx.effects.push(Effect::Announce(TaskAnnouncement {
            task_id,
            task_type: item.task_type.clone(),
            required: DEFAULT_REQUIRED_SUBMISSIONS,
        }));
        leases.push(Lease {
            lease_id,
            task_id,
            task_type: item.task_type,
            text: item.text,
            labels: item.labels,
            generation: item.generation,
            verify: None,
            expires_at: from_ms(expires_at),
        });
    }
    Ok(leases)
}

/// Checks a stored answer to gold task `task` (an instance of item `gold`) against the known
/// one: records it, counts it in the worker's score, closes the task and judges the worker.
pub(crate) fn check(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    gold: i64,
    sub: &crate::api::Submission,
) -> Result<(), CoreError> {
    let known = tx.known_answer(gold)?;
    let (given, correct) = match &sub.answer() {
        crate::api::Answered::Generated(g) => (g.text.clone(), g.text.trim() == known.trim()),
        other => (other.label().to_owned(), other.label() == known),
    };
    let labelled = !task.task_type.is_generative() && !task.task_type.is_vector();
    let model = sub.model_hash().or(sub.model()).unwrap_or_default();
    // A trusted worker that this wrong answer costs its trust is caught (judged before the
    // answer is recorded).
    let caught = labelled && !correct && {
        let classes = task.labels.as_ref().map_or(2, |l| l.len().max(2));
        super::posterior::caught_if_wrong(tx, sub.worker_id(), model, &task.task_type, classes)?
    };
    // A quarantined worker is known to answer worse than its model: what it answers now does
    // not teach the model content's calibration (its own record still counts).
    let quarantined = quarantine(tx, sub.worker_id())?;
    if labelled && quarantined.is_none() {
        tx.record_calibration(model, &task.task_type, &given, &known, sub.confidence())?;
    }
    let answer = GoldAnswer {
        gold,
        task: &task.id,
        worker: sub.worker_id(),
        task_type: &task.task_type,
        model: sub.model(),
        model_hash: sub.model_hash(),
        answer: &given,
        correct,
    };
    tx.record_gold_answer(&answer, ctx.now)?;
    let credit = Credit {
        gold_answered: 1,
        gold_right: i64::from(correct),
        ..Credit::default()
    };
    tx.credit(&mut [(sub.worker_id().clone(), credit)])?;
    tx.finalize_gold(&task.id, &known, ctx.now)?;
    if caught {
        super::posterior::caught(tx, ctx, sub.worker_id())?;
    }
    judge_worker(tx, ctx, sub.worker_id(), quarantined)
}

/// Quarantines `worker` (quarantined for reason `was` until now) when its accuracy over its
/// last [`WINDOW`] gold answers is below the bar (once it has enough of them), and lets it out
/// once it is back above.
fn judge_worker(
    tx: &dyn Tx,
    ctx: &Ctx,
    worker: &WorkerId,
    was: Option<String>,
) -> Result<(), CoreError> {
    let (answered, right) = tx.recent_gold(worker, WINDOW)?;
    let s = &ctx.settings;
    let accuracy = f64::from(right) / f64::from(answered.max(1));
    let why = (answered >= s.gold_min_answers && accuracy < s.gold_min_accuracy).then(|| {
        format!(
            "gold accuracy {accuracy:.2} ({right} of its last {answered} gold answers right) \
             is below {:.2}",
            s.gold_min_accuracy
        )
    });
    if was.is_some() != why.is_some() {
        match &why {
            Some(reason) => tracing::warn!(worker_id = %worker, reason, "worker quarantined"),
            None => tracing::info!(worker_id = %worker, accuracy, "worker out of quarantine"),
        }
    }
    tx.set_quarantine(worker, why.as_deref())?;
    Ok(())
}
