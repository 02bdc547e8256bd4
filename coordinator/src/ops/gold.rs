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
use crate::store::rows::{Json, TaskRow};
use crate::store::sql::{params, OptionalExtension};
use crate::store::tx::{Credit, Tx};
use protocol::generation::GenerationSpec;
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
    let mut insert = tx.sql().prepare_cached(
        "INSERT INTO gold (type, text, labels, generation, model_hash, answer, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO NOTHING",
    )?;
    let mut added = 0;
    for (spec, item) in &resolved {
        added += insert.execute(params![
            item.task_type().as_str(),
            item.text,
            item.labels
                .as_ref()
                .map(|l| serde_json::to_string(l).expect("labels serialize")),
            spec.as_ref()
                .map(|s| serde_json::to_string(s).expect("specs serialize")),
            spec.as_ref().map(|s| s.model_hash.as_str()),
            item.answer,
            ctx.now
        ])? as u64;
    }
    let total: u64 = tx
        .sql()
        .query_row("SELECT COUNT(*) FROM gold", (), |r| r.get(0))?;
    tracing::info!(added, total, "gold items stored");
    Ok(GoldAddReply {
        added,
        already_known: resolved.len() as u64 - added,
        total,
    })
}

/// Why `worker` is quarantined, when it is.
pub(crate) fn quarantine(tx: &dyn Tx, worker: &WorkerId) -> Result<Option<String>, CoreError> {
    Ok(tx
        .sql()
        .prepare_cached("SELECT quarantine FROM worker WHERE id = ?1")?
        .query_row([worker.as_str()], |r| r.get(0))
        .optional()?
        .flatten())
}

/// A gold item picked for a lease.
struct Item {
    id: i64,
    task_type: TaskType,
    text: String,
    labels: Option<Vec<String>>,
    generation: Option<GenerationSpec>,
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
) -> Result<Vec<Item>, CoreError> {
    let caps = serde_json::to_string(capabilities).expect("task types serialize");
    let (lo, hi): (Option<i64>, Option<i64>) =
        tx.sql()
            .query_row("SELECT MIN(id), MAX(id) FROM gold", (), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(Vec::new());
    };
    let start = fastrand::i64(lo..=hi);
    let mut stmt = tx.sql().prepare_cached(
        "SELECT id, type, text, labels, generation FROM gold
         WHERE type IN (SELECT value FROM json_each(?2))
           AND (model_hash IS NULL OR model_hash = ?3)
           AND (?5 OR NOT EXISTS (SELECT 1 FROM gold_answer a
                                  WHERE a.gold_id = gold.id AND a.worker_id = ?1))
           AND NOT EXISTS (SELECT 1 FROM task t JOIN lease l ON l.task_id = t.id
                           WHERE t.gold = gold.id AND l.worker_id = ?1 AND l.state = 'active')
           AND (id >= ?4) = ?6
         ORDER BY id LIMIT ?7",
    )?;
    let mut items: Vec<Item> = Vec::new();
    for any in [false, true] {
        for from_start in [true, false] {
            let room = n - items.len();
            if room == 0 {
                return Ok(items);
            }
            let rows = stmt.query_map(
                params![
                    worker.as_str(),
                    caps,
                    model_hash,
                    start,
                    any,
                    from_start,
                    room as i64
                ],
                |r| {
                    Ok(Item {
                        id: r.get(0)?,
                        task_type: crate::store::rows::parsed(r, 1)?,
                        text: r.get(2)?,
                        labels: r.get::<_, Option<Json<Vec<String>>>>(3)?.map(|j| j.0),
                        generation: r.get::<_, Option<Json<GenerationSpec>>>(4)?.map(|j| j.0),
                    })
                },
            )?;
            for item in rows {
                let item = item?;
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
    let mut task = tx.sql().prepare_cached(
        "INSERT INTO task (id, type, text, status, required, max_attempts, active_leases,
                           created_at, labels, generation, model_hash, asked, policy,
                           max_answers, gold)
         VALUES (?1, ?2, ?3, 'queued', 1, 1, 1, ?4, ?5, ?6, ?7, 1, 'majority', 1, ?8)",
    )?;
    let mut lease = tx.sql().prepare_cached(
        "INSERT INTO lease (id, task_id, worker_id, state, expires_at, created_at)
         VALUES (?1, ?2, ?3, 'active', ?4, ?5)",
    )?;
    let expires_at = ctx.now + ctx.settings.lease_ms;
    let mut leases = Vec::with_capacity(items.len());
    for item in items {
        let (task_id, lease_id) = (TaskId::new(), LeaseId::new());
        task.execute(params![
            task_id.to_string(),
            item.task_type.as_str(),
            item.text,
            ctx.now,
            item.labels
                .as_ref()
                .map(|l| serde_json::to_string(l).expect("labels serialize")),
            item.generation
                .as_ref()
                .map(|s| serde_json::to_string(s).expect("specs serialize")),
            item.generation.as_ref().map(|s| s.model_hash.as_str()),
            item.id
        ])?;
        lease.execute(params![
            lease_id.to_string(),
            task_id.to_string(),
            worker.as_str(),
            expires_at,
            ctx.now
        ])?;
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
    let known: String = tx
        .sql()
        .prepare_cached("SELECT answer FROM gold WHERE id = ?1")?
        .query_row([gold], |r| r.get(0))?;
    let (given, correct) = match &sub.answer() {
        crate::api::Answered::Generated(g) => (g.text.clone(), g.text.trim() == known.trim()),
        other => (other.label().to_owned(), other.label() == known),
    };
    tx.sql()
        .prepare_cached(
            "INSERT INTO gold_answer (gold_id, task_id, worker_id, type, model, model_hash, answer,
                                  correct, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            gold,
            task.id.to_string(),
            sub.worker_id().as_str(),
            task.task_type.as_str(),
            sub.model(),
            sub.model_hash(),
            given,
            correct,
            ctx.now
        ])?;
    let credit = Credit {
        gold_answered: 1,
        gold_right: i64::from(correct),
        ..Credit::default()
    };
    tx.credit(&mut [(sub.worker_id().clone(), credit)])?;
    tx.sql().prepare_cached(
        "UPDATE task SET status = 'finalized', final_label = ?1, finished_at = ?2 WHERE id = ?3",
    )?
    .execute(params![known, ctx.now, task.id.to_string()])?;
    judge_worker(tx, ctx, sub.worker_id())
}

/// Quarantines `worker` when its accuracy over its last [`WINDOW`] gold answers is below the
/// bar (once it has enough of them), and lets it out once it is back above.
fn judge_worker(tx: &dyn Tx, ctx: &Ctx, worker: &WorkerId) -> Result<(), CoreError> {
    let (answered, right): (u32, u32) = tx.sql()
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(correct), 0) FROM
                 (SELECT correct FROM gold_answer WHERE worker_id = ?1 ORDER BY id DESC LIMIT ?2) AS recent",
        )?
        .query_row(params![worker.as_str(), WINDOW], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let s = &ctx.settings;
    let accuracy = f64::from(right) / f64::from(answered.max(1));
    let why = (answered >= s.gold_min_answers && accuracy < s.gold_min_accuracy).then(|| {
        format!(
            "gold accuracy {accuracy:.2} ({right} of its last {answered} gold answers right) \
             is below {:.2}",
            s.gold_min_accuracy
        )
    });
    let was = quarantine(tx, worker)?;
    if was.is_some() != why.is_some() {
        match &why {
            Some(reason) => tracing::warn!(worker_id = %worker, reason, "worker quarantined"),
            None => tracing::info!(worker_id = %worker, accuracy, "worker out of quarantine"),
        }
    }
    tx.sql()
        .prepare_cached("UPDATE worker SET quarantine = ?1 WHERE id = ?2")?
        .execute(params![why, worker.as_str()])?;
    Ok(())
}
