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

use super::decide::{finished, Final};
use super::task::{fail_task, held_lease};
use super::Ctx;
use crate::api::Effect;
use crate::api::Submission;
use crate::consensus::{judge_candidate, pick_winner, Scoring};
use crate::error::CoreError;
use crate::store::rows::TaskRow;
use crate::store::tx::{Credit, ScoringRow, ScoringSlot, Tx};
use crate::store::{blob_to_vector, from_ms, vector_to_blob};
use protocol::generation::{blob_to_ids, card, ids_to_blob, GenerationSpec, VerifyMode};
use protocol::messages::{FailureReason, Lease, SubmitReply};
use protocol::verify::{verdict, Verification, VerifyJob};
use protocol::{LeaseId, LeaseState, ProtocolError, TaskId, TaskStatus, TaskType, WorkerId};

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
    // The first submission of each distinct answer not scored yet stands for it.
    let fresh = tx.unscored_candidates(&task.id)?;
    for (candidate, ids) in &fresh {
        tx.open_scoring(&task.id, *candidate, ids, task.verifiers, ctx.now)?;
    }
    if fresh.is_empty() {
        return Ok(false);
    }
    tx.mark_verifying(&task.id)?;
    tracing::debug!(task_id = %task.id, candidates = fresh.len(), "verification started");
    ctx.effects.push(Effect::Announce(task.announcement()));
    Ok(true)
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
    let slots = tx.open_slots(worker, model_hash, want * 4)?;
    let mut taken: Vec<TaskId> = Vec::new();
    let expires_at = ctx.now + ctx.settings.lease_ms;
    let mut leases = Vec::new();
    for slot in slots {
        if leases.len() >= want
            || taken.contains(&slot.task)
            || !capabilities.contains(&slot.task_type)
        {
            continue;
        }
        taken.push(slot.task);
        let lease_id = LeaseId::new();
        // At most one trap per verifier and candidate, so the real slot is reached.
        let trapped = tx.trapped(&slot.task, slot.candidate, worker)?;
        let trap = (!trapped && fastrand::f64() < ctx.settings.trap_rate)
            .then(|| trap_for(tx, &slot))
            .transpose()?
            .flatten();
        let (row, ids) = match trap {
            Some((kind, ids)) => {
                let blob = ids_to_blob(&ids);
                let row = tx.insert_trap(
                    &slot.task,
                    slot.candidate,
                    &blob,
                    kind,
                    worker,
                    &lease_id,
                    ctx.now,
                )?;
                (row, ids)
            }
            None => {
                tx.take_slot(slot.id, worker, &lease_id)?;
                (slot.id, blob_to_ids(&slot.token_ids))
            }
        };
        tx.insert_scoring_lease(&lease_id, &slot.task, worker, expires_at, ctx.now, row)?;
        tracing::debug!(task_id = %slot.task, worker_id = %worker, %lease_id, "verify lease granted");
        leases.push(Lease {
            lease_id,
            task_id: slot.task,
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
fn trap_for(
    tx: &dyn Tx,
    slot: &ScoringSlot,
) -> Result<Option<(&'static str, Vec<u32>)>, CoreError> {
    let real = tx.distinct_answers(&slot.task)?;
    let fresh = |ids: &[u32]| !real.contains(&ids_to_blob(ids));
    let spec = &slot.generation;
    let ids = blob_to_ids(&slot.token_ids);
    if fastrand::bool() {
        let other = tx.other_final_answer(&spec.model_hash, &slot.task)?;
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
    let Some(row) = tx.scoring_row_of_lease(&lease_id)? else {
        return Err(ProtocolError::invalid(
            "verification",
            "this lease is not for scoring a candidate",
        )
        .into());
    };
    let spec = check_report(task, &row, sub.model_hash(), report)?;
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
            && row.exact.unwrap_or(false) == report.exact
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
    tx.record_score(
        row.id,
        &lease_id,
        (report.passed, report.exact),
        &logprobs,
        &gaps,
        ctx.now,
    )?;
    if let Some(kind) = &row.trap {
        // A trap must fail: passing one costs a point.
        let caught = !report.passed;
        tracing::info!(task_id = %task.id, worker_id = %worker, trap = %kind, caught, "trap scored");
        let credit = Credit {
            points: if caught { 0 } else { -1 },
            traps_caught: i64::from(caught),
            traps_missed: i64::from(!caught),
            ..Credit::default()
        };
        tx.credit(&mut [(worker.clone(), credit)])?;
        tx.mark_scoring_agreed(&[(row.id, caught)])?;
        return Ok(reply(false));
    }
    if task.status.is_terminal() || !task.verifying || tx.pending_scorings(&task.id)? > 0 {
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

/// The task's spec, once the report is checked against it: scored by the content the task
/// pins, of the candidate's length, its verdict following from its gaps.
///
/// # Errors
/// [`CoreError::Invalid`] or [`CoreError::ModelMismatch`], as [`accept`] says.
fn check_report<'t>(
    task: &'t TaskRow,
    row: &ScoringRow,
    model_hash: Option<&str>,
    report: &Verification,
) -> Result<&'t GenerationSpec, CoreError> {
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
    Ok(spec)
}

/// The task's candidates not judged yet, with their reports. Those judged in an earlier round
/// (generate_once, before a new generation) are already decided: every one of them was invalid.
fn candidates(tx: &dyn Tx, task: &TaskRow) -> Result<Vec<Candidate>, CoreError> {
    let mut candidates: Vec<Candidate> = Vec::new();
    for r in tx.scored_rows(&task.id)? {
        if r.agreed.is_some() {
            continue;
        }
        let row = (
            r.id,
            r.worker,
            r.passed,
            blob_to_vector(&r.logprobs),
            blob_to_vector(&r.gaps),
        );
        match candidates.iter_mut().find(|c| c.submission == r.candidate) {
            Some(c) => c.rows.push(row),
            None => candidates.push(Candidate {
                submission: r.candidate,
                ids: blob_to_ids(&r.token_ids),
                rows: vec![row],
            }),
        }
    }
    Ok(candidates)
}

/// No candidate passed a majority of its verifiers: in `generate_once` mode, while generations
/// remain, one more worker generates (its answer is verified in turn); else the task fails.
fn no_valid_candidate(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    spec: &GenerationSpec,
    candidates: usize,
) -> Result<(), CoreError> {
    let generations = task.submissions;
    if spec.verify == VerifyMode::GenerateOnce && generations < task.verifiers + 1 {
        tx.generate_again(&task.id)?;
        tx.rewind_cursors(&task.id)?;
        tracing::info!(task_id = %task.id, generations, "no valid candidate; generating again");
        ctx.effects.push(Effect::Announce(task.announcement()));
        return Ok(());
    }
    let message = format!(
        "no consensus: none of the {candidates} candidate answers passed a majority of its \
         verifiers; the answers are kept"
    );
    fail_task(tx, ctx, task, FailureReason::NoConsensus, message)
}

/// One verifier's report: row id, verifier, passed, logprobs, gaps.
type Report = (i64, WorkerId, bool, Vec<f32>, Vec<f32>);

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
    let candidates = candidates(tx, task)?;
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
    let (mut flags, mut credits) = (Vec::new(), Vec::new());
    for (c, v) in candidates.iter().zip(&verdicts) {
        for (i, (row, worker, ..)) in c.rows.iter().enumerate() {
            let agreed = v.agreeing.contains(&i);
            flags.push((*row, agreed));
            if !v.agreeing.is_empty() {
                credits.push((worker.clone(), Credit::points(if agreed { 1 } else { -1 })));
            }
        }
    }
    tx.mark_scoring_agreed(&flags)?;
    tx.credit(&mut credits)?;
    let ballot: Vec<(&[u32], &_)> = candidates
        .iter()
        .zip(&verdicts)
        .map(|(c, v)| (c.ids.as_slice(), v))
        .collect();
    let Some(w) = pick_winner(&ballot) else {
        no_valid_candidate(tx, ctx, task, spec, candidates.len())?;
        return Ok(None);
    };
    // Authors of valid candidates agree (the winner, and honest near-tie branches).
    let valid: Vec<Vec<u8>> = candidates
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.valid)
        .map(|(c, _)| ids_to_blob(&c.ids))
        .collect();
    let flags: Vec<(i64, bool)> = tx
        .submitted_ids(&task.id)?
        .into_iter()
        .map(|(id, ids)| (id, valid.contains(&ids)))
        .collect();
    tx.mark_agreed(&flags)?;
    tx.award_agreeing(&task.id)?;
    let winner = &candidates[w];
    let text = tx.submitted_text(winner.submission)?;
    let n = winner.ids.len().max(1) as f64;
    let confidence = (verdicts[w].logprob / n).exp();
    tx.finalize_tokens(
        &task.id,
        &ids_to_blob(&winner.ids),
        &text,
        confidence,
        ctx.now,
    )?;
    let answer = Final::Generated(winner.ids.clone(), text.clone());
    finished(ctx, &task.id, answer, confidence);
    Ok(Some(text))
}
