//! Cross-scoring of generative answers: a generative task whose answers do not settle by exact
//! match (or that is verified in `generate_once` mode) goes to `verifying`; other workers score
//! each distinct candidate with one teacher-forced pass, and the verdicts decide it.
//!
//! - Each distinct candidate gets `verifiers` slots, leased to distinct workers serving the
//!   task's model content, never to an author of that candidate, never twice to one worker.
//! - With probability `trap_rate` (at most once per verifier and candidate), a verifier is
//!   handed a corrupted copy of the candidate (a token swapped, or another task's final answer)
//!   in place of the real one; the real slot stays open. A trap must fail: caught, it is counted; passed, the verifier loses a point.
//! - When every real slot is scored: a candidate is valid when a strict majority of its verifiers
//!   pass it; the verifiers' reports are voted as vectors, and those in the agreeing majority
//!   earn a point, the others lose one. The winner is the valid candidate with the highest
//!   verified log-probability (ties: the smaller id sequence); its authors and those of other
//!   valid candidates earn a point. No valid candidate: in `generate_once` mode another worker
//!   generates while generations remain (`verifiers + 1` in all), else the task fails with
//!   `no_consensus`.

use super::decide::{award_points, finished, Final};
use super::task::{fail_task, held_lease};
use super::Ctx;
use crate::api::Effect;
use crate::api::Submission;
use crate::consensus::{judge_candidate, pick_winner, Scoring};
use crate::error::CoreError;
use crate::store::rows::{parsed, parsed_opt, TaskRow};
use crate::store::sql::{params, OptionalExtension};
use crate::store::tx::Tx;
use crate::store::{blob_to_vector, from_ms, vector_to_blob};
use protocol::generation::{blob_to_ids, card, ids_to_blob, GenerationSpec, VerifyMode};
use protocol::messages::{FailureReason, Lease, SubmitReply};
use protocol::verify::{verdict, Verification, VerifyJob};
use protocol::{LeaseId, LeaseState, ProtocolError, TaskStatus, TaskType, WorkerId};

/// Called when a generative task has all its generations and exact match did not settle it (or
/// its mode always verifies): opens scoring slots for every candidate not scored yet and moves
/// the task to `verifying`. Returns false when there is nothing to verify (`verifiers` 0, or
/// every answer already scored).
///
/// # Errors
/// Store errors.
pub(crate) fn start(tx: &dyn Tx, ctx: &mut Ctx, task: &TaskRow) -> Result<bool, CoreError> {
    if task.verifiers == 0 {
        return Ok(false);
    }
    let tid = task.id.to_string();
    // The first submission of each distinct answer not scored yet stands for it.
    let fresh: Vec<(i64, Vec<u8>)> = tx
        .sql()
        .prepare_cached(
            "SELECT min(s.id), s.token_ids FROM submission s
             WHERE s.task_id = ?1
               AND NOT EXISTS (SELECT 1 FROM verification v
                               WHERE v.task_id = s.task_id AND v.token_ids = s.token_ids)
             GROUP BY s.token_ids ORDER BY min(s.id)",
        )?
        .query_map([&tid], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut open = tx.sql().prepare_cached(
        "INSERT INTO verification (task_id, candidate, token_ids, state, created_at)
         VALUES (?1, ?2, ?3, 'open', ?4)",
    )?;
    for (candidate, ids) in &fresh {
        for _ in 0..task.verifiers {
            open.execute(params![tid, candidate, ids, ctx.now])?;
        }
    }
    if fresh.is_empty() {
        return Ok(false);
    }
    tx.sql()
        .prepare_cached("UPDATE task SET verifying = 1 WHERE id = ?1")?
        .execute([&tid])?;
    tracing::debug!(task_id = %task.id, candidates = fresh.len(), "verification started");
    ctx.effects.push(Effect::Announce(task.announcement()));
    Ok(true)
}

/// A scoring slot a worker may take.
struct Slot {
    id: i64,
    task_id: String,
    candidate: i64,
    token_ids: Vec<u8>,
    task_type: TaskType,
    text: String,
    generation: GenerationSpec,
}

/// Leases up to `want` scoring slots to `worker`, which serves `model_hash` and does
/// `capabilities`; one per task, and never on a task it already holds a lease on (the leases
/// granted earlier in the same request included: they are rows already).
///
/// # Errors
/// Store errors.
pub(crate) fn lease_slots(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    worker: &WorkerId,
    model_hash: &str,
    capabilities: &[TaskType],
    want: usize,
) -> Result<Vec<Lease>, CoreError> {
    let slots: Vec<Slot> = tx
        .sql()
        .prepare_cached(
            "SELECT v.id, v.task_id, v.candidate, v.token_ids, t.type, t.text, t.generation
             FROM verification v JOIN task t ON t.id = v.task_id
             WHERE v.state = 'open' AND t.verifying = 1 AND t.model_hash = ?2
               AND t.status IN ('queued', 'assigned')
               AND NOT EXISTS (SELECT 1 FROM lease l WHERE l.task_id = v.task_id
                               AND l.worker_id = ?1 AND l.state = 'active')
               AND NOT EXISTS (SELECT 1 FROM submission s
                               WHERE s.task_id = v.task_id AND s.worker_id = ?1
                                 AND s.token_ids = v.token_ids)
               AND NOT EXISTS (SELECT 1 FROM verification w
                               WHERE w.task_id = v.task_id AND w.candidate = v.candidate
                                 AND w.worker_id = ?1 AND w.trap IS NULL)
             ORDER BY v.id LIMIT ?3",
        )?
        .query_map(
            params![worker.as_str(), model_hash, (want * 4) as i64],
            |r| {
                Ok(Slot {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    candidate: r.get(2)?,
                    token_ids: r.get(3)?,
                    task_type: parsed(r, 4)?,
                    text: r.get(5)?,
                    generation: r.get::<_, crate::store::rows::Json<GenerationSpec>>(6)?.0,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    let mut taken: Vec<String> = Vec::new();
    let expires_at = ctx.now + ctx.settings.lease_ms;
    let mut leases = Vec::new();
    for slot in slots {
        if leases.len() >= want
            || taken.contains(&slot.task_id)
            || !capabilities.contains(&slot.task_type)
        {
            continue;
        }
        taken.push(slot.task_id.clone());
        let lease_id = LeaseId::new();
        // At most one trap per verifier and candidate, so the real slot is reached.
        let trapped: bool = tx
            .sql()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM verification WHERE task_id = ?1 AND candidate = ?2
                                AND worker_id = ?3 AND trap IS NOT NULL)",
            )?
            .query_row(
                params![slot.task_id, slot.candidate, worker.as_str()],
                |r| r.get(0),
            )?;
        let trap = (!trapped && fastrand::f64() < ctx.settings.trap_rate)
            .then(|| trap_for(tx, &slot))
            .transpose()?
            .flatten();
        let (row, ids) = match trap {
            Some((kind, ids)) => {
                let row = tx
                    .sql()
                    .prepare_cached(
                        "INSERT INTO verification (task_id, candidate, token_ids, trap, state,
                                                   worker_id, lease_id, created_at)
                         VALUES (?1, ?2, ?3, ?4, 'leased', ?5, ?6, ?7) RETURNING id",
                    )?
                    .query_row(
                        params![
                            slot.task_id,
                            slot.candidate,
                            ids_to_blob(&ids),
                            kind,
                            worker.as_str(),
                            lease_id.to_string(),
                            ctx.now
                        ],
                        |r| r.get(0),
                    )?;
                (row, ids)
            }
            None => {
                tx.sql()
                    .prepare_cached(
                        "UPDATE verification SET state = 'leased', worker_id = ?1, lease_id = ?2
                     WHERE id = ?3",
                    )?
                    .execute(params![worker.as_str(), lease_id.to_string(), slot.id])?;
                (slot.id, blob_to_ids(&slot.token_ids))
            }
        };
        tx.sql().prepare_cached(
            "INSERT INTO lease (id, task_id, worker_id, state, expires_at, created_at, verification)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6)",
        )?
        .execute(params![
            lease_id.to_string(),
            slot.task_id,
            worker.as_str(),
            expires_at,
            ctx.now,
            row
        ])?;
        tracing::debug!(task_id = %slot.task_id, worker_id = %worker, %lease_id, "verify lease granted");
        leases.push(Lease {
            lease_id,
            task_id: slot.task_id.parse()?,
            task_type: slot.task_type,
            text: slot.text,
            labels: None,
            generation: Some(slot.generation),
            verify: Some(VerifyJob { token_ids: ids }),
            expires_at: from_ms(expires_at),
        });
    }
    Ok(leases)
}

/// A corrupted copy of a slot's candidate, unlike every real candidate of its task: one token
/// swapped for a random one (not a stop id), or else another finalized task's answer on the same
/// model content. `None` when neither can be made.
fn trap_for(tx: &dyn Tx, slot: &Slot) -> Result<Option<(&'static str, Vec<u32>)>, CoreError> {
    let real: Vec<Vec<u8>> = tx
        .sql()
        .prepare_cached("SELECT DISTINCT token_ids FROM submission WHERE task_id = ?1")?
        .query_map([&slot.task_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let fresh = |ids: &[u32]| !real.contains(&ids_to_blob(ids));
    let spec = &slot.generation;
    let ids = blob_to_ids(&slot.token_ids);
    if fastrand::bool() {
        let other: Option<Vec<u8>> = tx
            .sql()
            .prepare_cached(
                "SELECT final_token_ids FROM task
                 WHERE model_hash = ?1 AND status = 'finalized' AND id <> ?2
                 ORDER BY finished_at DESC LIMIT 1",
            )?
            .query_row(params![spec.model_hash, slot.task_id], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(other) = other.map(|b| blob_to_ids(&b)) {
            if fresh(&other) && other.len() <= spec.max_new_tokens as usize {
                return Ok(Some(("other_answer", other)));
            }
        }
    }
    // Positions that are not the final stop id.
    let body = ids.len() - usize::from(ids.last().is_some_and(|l| spec.stop_ids.contains(l)));
    if body == 0 {
        return Ok(None);
    }
    let vocab = card(&spec.model)
        .and_then(|c| c.vocab_size)
        .unwrap_or_else(|| ids.iter().max().map_or(2, |m| m + 2));
    for _ in 0..8 {
        let mut swapped = ids.clone();
        let at = fastrand::usize(..body);
        let id = fastrand::u32(..vocab);
        if id == ids[at] || spec.stop_ids.contains(&id) {
            continue;
        }
        swapped[at] = id;
        if fresh(&swapped) {
            return Ok(Some(("swap", swapped)));
        }
    }
    Ok(None)
}

/// A verify lease's row, as the submit path needs it.
pub(crate) struct LeasedRow {
    id: i64,
    token_ids: Vec<u8>,
    trap: Option<String>,
    state: String,
    worker: Option<WorkerId>,
    passed: Option<bool>,
    logprobs: Option<Vec<u8>>,
    gaps: Option<Vec<u8>>,
}

/// The scoring row verify lease `lease_id` names, if it is one.
///
/// # Errors
/// Store errors.
pub(crate) fn row_of_lease(
    tx: &dyn Tx,
    lease_id: &LeaseId,
) -> Result<Option<LeasedRow>, CoreError> {
    Ok(tx
        .sql()
        .prepare_cached(
            "SELECT id, token_ids, trap, state, worker_id, passed, logprobs, gaps
             FROM verification WHERE lease_id = ?1",
        )?
        .query_row([lease_id.to_string()], |r| {
            Ok(LeasedRow {
                id: r.get(0)?,
                token_ids: r.get(1)?,
                trap: r.get(2)?,
                state: r.get(3)?,
                worker: parsed_opt(r, 4)?,
                passed: r.get(5)?,
                logprobs: r.get(6)?,
                gaps: r.get(7)?,
            })
        })
        .optional()?)
}

/// Stores a verifier's score on the scoring row its lease names; decides the task when that
/// was its last real slot. The lease must be the submitter's verify lease on the task.
///
/// # Errors
/// - [`CoreError::Invalid`]: a report of the wrong length or out of bounds, a verdict that does
///   not follow from its gaps (the task's `eps` and stop rule), or a lease that is not for
///   scoring.
/// - [`CoreError::NotLeased`], [`CoreError::NoLease`], [`CoreError::LeaseMismatch`]: no such
///   lease of the submitter's on the task.
/// - [`CoreError::ModelMismatch`]: scored by other model content than the task pins.
/// - [`CoreError::DuplicateSubmission`]: a different second report for the row.
/// - [`CoreError::LeaseExpired`]: the lease ended first.
pub(crate) fn accept(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    sub: &Submission,
    report: &Verification,
) -> Result<SubmitReply, CoreError> {
    let worker = sub.worker_id();
    let lease_id = sub.lease_id().ok_or_else(|| CoreError::NotLeased {
        worker: worker.clone(),
        task: task.id,
    })?;
    let lease_state = held_lease(tx, &lease_id, &task.id, worker)?;
    let Some(row) = row_of_lease(tx, &lease_id)? else {
        return Err(ProtocolError::invalid(
            "verification",
            "this lease is not for scoring a candidate",
        )
        .into());
    };
    let model_hash = sub.model_hash();
    let spec = task.generation.as_ref().ok_or_else(|| {
        ProtocolError::invalid("verification", "the task is not a generative one")
    })?;
    if model_hash != Some(spec.model_hash.as_str()) {
        return Err(CoreError::ModelMismatch {
            task: task.id,
            pinned: spec.model_hash.clone(),
            ran: model_hash.unwrap_or("none").to_owned(),
        });
    }
    let ids = blob_to_ids(&row.token_ids);
    report.validate(ids.len())?;
    if report.passed != verdict(&ids, &report.gaps, spec, spec.eps()) {
        return Err(ProtocolError::invalid(
            "verification",
            format!(
                "the verdict does not follow from the gaps (eps {} and the stop rule)",
                spec.eps()
            ),
        )
        .into());
    }
    let (logprobs, gaps) = (
        vector_to_blob(&report.logprobs),
        vector_to_blob(&report.gaps),
    );
    let reply = |duplicate| SubmitReply {
        accepted: true,
        duplicate,
        finalized: task.status == TaskStatus::Finalized,
        final_label: None,
        final_text: task.final_text.clone(),
    };
    if row.state == "done" {
        if row.worker.as_ref() == Some(worker)
            && row.passed == Some(report.passed)
            && row.logprobs.as_ref() == Some(&logprobs)
            && row.gaps.as_ref() == Some(&gaps)
        {
            return Ok(reply(true));
        }
        return Err(CoreError::DuplicateSubmission {
            worker: worker.clone(),
            task: task.id,
            label: "a different verification".to_owned(),
        });
    }
    if lease_state != LeaseState::Active {
        return Err(CoreError::LeaseExpired {
            lease: lease_id,
            state: lease_state,
        });
    }
    tx.sql()
        .prepare_cached(
            "UPDATE verification SET state = 'done', passed = ?1, logprobs = ?2, gaps = ?3,
             finished_at = ?4
         WHERE id = ?5",
        )?
        .execute(params![report.passed, logprobs, gaps, ctx.now, row.id])?;
    tx.sql()
        .prepare_cached("UPDATE lease SET state = 'completed', ended_at = ?1 WHERE id = ?2")?
        .execute(params![ctx.now, lease_id.to_string()])?;
    if let Some(kind) = &row.trap {
        // A trap must fail: passing one costs a point.
        let caught = !report.passed;
        tracing::info!(task_id = %task.id, worker_id = %worker, trap = %kind, caught, "trap scored");
        tx.sql()
            .prepare_cached(
                "INSERT INTO worker_score (worker_id, points, traps_caught, traps_missed)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (worker_id) DO UPDATE SET points = worker_score.points + excluded.points,
                 traps_caught = worker_score.traps_caught + excluded.traps_caught,
                 traps_missed = worker_score.traps_missed + excluded.traps_missed",
            )?
            .execute(params![
                worker.as_str(),
                if caught { 0 } else { -1 },
                i64::from(caught),
                i64::from(!caught)
            ])?;
        tx.sql()
            .prepare_cached("UPDATE verification SET agreed = ?1 WHERE id = ?2")?
            .execute(params![caught, row.id])?;
        return Ok(reply(false));
    }
    if task.status.is_terminal() || !task.verifying {
        return Ok(reply(false));
    }
    let pending: i64 = tx
        .sql()
        .prepare_cached(
            "SELECT count(*) FROM verification
             WHERE task_id = ?1 AND trap IS NULL AND state IN ('open', 'leased')",
        )?
        .query_row([task.id.to_string()], |r| r.get(0))?;
    if pending > 0 {
        return Ok(reply(false));
    }
    let final_text = decide(tx, ctx, task, spec)?;
    Ok(SubmitReply {
        accepted: true,
        duplicate: false,
        finalized: final_text.is_some(),
        final_label: None,
        final_text,
    })
}

/// One point more (or less) for `worker`.
fn add_points(tx: &dyn Tx, worker: &str, points: i64) -> Result<(), CoreError> {
    tx.sql()
        .prepare_cached(
            "INSERT INTO worker_score (worker_id, points) VALUES (?1, ?2)
         ON CONFLICT (worker_id) DO UPDATE SET points = worker_score.points + excluded.points",
        )?
        .execute(params![worker, points])?;
    Ok(())
}

/// One verifier's report: row id, verifier, passed, logprobs, gaps.
type Report = (i64, String, bool, Vec<f32>, Vec<f32>);

/// A stored scoring row: id, candidate, token ids, verifier, passed, logprobs, gaps, agreed.
type ScoredRow = (
    i64,
    i64,
    Vec<u8>,
    String,
    bool,
    Vec<u8>,
    Vec<u8>,
    Option<bool>,
);

/// A candidate as its scores left it.
struct Candidate {
    submission: i64,
    ids: Vec<u32>,
    /// Its undecided reports.
    rows: Vec<Report>,
}

/// Decides a task whose every real slot is scored. Returns the final text, or `None` when it
/// failed or went back to generation.
fn decide(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    spec: &GenerationSpec,
) -> Result<Option<String>, CoreError> {
    let tid = task.id.to_string();
    let rows: Vec<ScoredRow> = tx
        .sql()
        .prepare_cached(
            "SELECT v.id, v.candidate, v.token_ids, v.worker_id, v.passed, v.logprobs, v.gaps,
                    v.agreed
             FROM verification v
             WHERE v.task_id = ?1 AND v.trap IS NULL AND v.state = 'done'
             ORDER BY v.candidate, v.id",
        )?
        .query_map([&tid], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut candidates: Vec<Candidate> = Vec::new();
    // Candidates judged in an earlier round (generate_once, before a new generation) are
    // already decided: every one of them was invalid.
    for (id, candidate, ids, worker, passed, lp, gaps, agreed) in rows {
        if agreed.is_some() {
            continue;
        }
        let row = (
            id,
            worker,
            passed,
            blob_to_vector(&lp),
            blob_to_vector(&gaps),
        );
        match candidates.iter_mut().find(|c| c.submission == candidate) {
            Some(c) => c.rows.push(row),
            None => candidates.push(Candidate {
                submission: candidate,
                ids: blob_to_ids(&ids),
                rows: vec![row],
            }),
        }
    }
    let tol = spec.eps();
    let verdicts: Vec<_> = candidates
        .iter()
        .map(|c| {
            let scorings: Vec<Scoring<'_>> = c
                .rows
                .iter()
                .map(|(_, _, passed, logprobs, gaps)| Scoring {
                    passed: *passed,
                    logprobs,
                    gaps,
                })
                .collect();
            judge_candidate(&scorings, tol)
        })
        .collect();
    // Verifiers: a point inside the agreeing majority, one less outside it.
    let mut mark = tx
        .sql()
        .prepare_cached("UPDATE verification SET agreed = ?1 WHERE id = ?2")?;
    for (c, v) in candidates.iter().zip(&verdicts) {
        for (i, (row, worker, ..)) in c.rows.iter().enumerate() {
            let agreed = v.agreeing.contains(&i);
            mark.execute(params![agreed, row])?;
            if !v.agreeing.is_empty() {
                add_points(tx, worker, if agreed { 1 } else { -1 })?;
            }
        }
    }
    let ballot: Vec<(&[u32], &_)> = candidates
        .iter()
        .zip(&verdicts)
        .map(|(c, v)| (c.ids.as_slice(), v))
        .collect();
    let Some(w) = pick_winner(&ballot) else {
        let generations = task.submissions;
        if spec.verify == VerifyMode::GenerateOnce && generations < task.verifiers + 1 {
            // One more worker generates; its answer is verified in turn.
            tx.sql()
                .prepare_cached(
                    "UPDATE task SET verifying = 0, required = required + 1, status = 'queued'
                 WHERE id = ?1",
                )?
                .execute([&tid])?;
            super::task::rewind_cursors(tx, &task.id)?;
            tracing::info!(task_id = %task.id, generations, "no valid candidate; generating again");
            ctx.effects.push(Effect::Announce(task.announcement()));
            return Ok(None);
        }
        let message = format!(
            "no consensus: none of the {} candidate answers passed a majority of its verifiers; \
             the answers are kept",
            candidates.len()
        );
        fail_task(tx, ctx, task, FailureReason::NoConsensus, message)?;
        return Ok(None);
    };
    // Authors of valid candidates agree (the winner, and honest near-tie branches).
    let valid: Vec<Vec<u8>> = candidates
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.valid)
        .map(|(c, _)| ids_to_blob(&c.ids))
        .collect();
    let subs: Vec<(i64, Vec<u8>)> = tx
        .sql()
        .prepare_cached("SELECT id, token_ids FROM submission WHERE task_id = ?1")?
        .query_map([&tid], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut agree = tx
        .sql()
        .prepare_cached("UPDATE submission SET agreed = ?1 WHERE id = ?2")?;
    for (id, ids) in &subs {
        agree.execute(params![valid.contains(ids), id])?;
    }
    award_points(tx, &tid)?;
    let winner = &candidates[w];
    let text: String = tx
        .sql()
        .prepare_cached("SELECT text FROM submission WHERE id = ?1")?
        .query_row([winner.submission], |r| r.get(0))?;
    let n = winner.ids.len().max(1) as f64;
    let confidence = (verdicts[w].logprob / n).exp();
    tx.sql()
        .prepare_cached(
            "UPDATE task SET status = 'finalized', verifying = 0, final_token_ids = ?1,
             final_text = ?2, final_confidence = ?3, finished_at = ?4
         WHERE id = ?5",
        )?
        .execute(params![
            ids_to_blob(&winner.ids),
            text,
            confidence,
            ctx.now,
            tid
        ])?;
    let answer = Final::Generated(winner.ids.clone(), text.clone());
    finished(ctx, &task.id, answer, confidence);
    Ok(Some(text))
}
