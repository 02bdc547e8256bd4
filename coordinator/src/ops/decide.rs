//! Deciding a task once its answers are in: a label task by its vote rule, an `embedding` task
//! by the largest group of close vectors, a generative task by exact match; the finalization,
//! its event and the points of the workers that agreed. `submit` and `verify` both use it, and
//! it uses neither.

use super::task::fail_task;
use super::Ctx;
use crate::api::{Effect, Submission};
use crate::consensus::{
    decide, decide_identical, decide_vectors, distinct_count, judge, Outcome, VectorVote, Vote,
};
use crate::error::CoreError;
use crate::store::rows::TaskRow;
use crate::store::tx::Tx;
use crate::store::{from_ms, vector_to_blob};
use protocol::generation::{blob_to_ids, VerifyMode};
use protocol::messages::{FailureReason, TaskEvent};
use protocol::{TaskId, TaskStatus};

/// Decides a label task under its vote rule, once its `required` answers are in. Only the
/// submission that completes the required count calls it, so a task is decided exactly once:
/// - decided: the winning label is final, the answers in its group agree and earn a point each;
/// - no quorum yet: the task is `inconclusive` and needs one more answer from a distinct worker;
/// - no quorum at `max_answers`: the task fails with `no_consensus`, nobody earns a point.
///
/// Returns the outcome and, when decided, the final label.
pub(crate) fn label(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    answers: Option<Vec<(String, f64)>>,
) -> Result<(Outcome, Option<String>), CoreError> {
    let votes = match answers {
        Some(votes) => votes,
        None => tx.label_answers(&task.id)?,
    };
    let ballot: Vec<Vote<'_>> = votes
        .iter()
        .map(|(label, confidence)| Vote {
            label,
            confidence: *confidence,
        })
        .collect();
    let decision = decide(&ballot).expect("a task is finalized only with submissions");
    let outcome = judge(&task.vote, decision.votes, decision.runner_up, votes.len());
    if outcome != Outcome::Decided {
        undecided(tx, ctx, task, outcome, votes.len(), decision.votes)?;
        return Ok((outcome, None));
    }
    tx.decide_label(&task.id, &decision.label, decision.confidence, ctx.now)?;
    let answer = Final::Label(decision.label.clone());
    finished(ctx, &task.id, answer, decision.confidence);
    counted(ctx, votes.len(), None);
    Ok((Outcome::Decided, Some(decision.label)))
}

/// A task's answers as read with `sub` (those before it), and then `sub`'s: each label with
/// its confidence, in the order they came.
pub(crate) fn with_vote(mut votes: Vec<(String, f64)>, sub: &Submission) -> Vec<(String, f64)> {
    votes.push((sub.answer().label().to_owned(), sub.confidence()));
    votes
}

/// A round of answers without a quorum: one more replica (the task is `inconclusive`, open to
/// workers that have not answered it), or, at `max_answers`, failure with `no_consensus`. The
/// answers are kept and nobody earns a point.
pub(crate) fn undecided(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    outcome: Outcome,
    answers: usize,
    largest: usize,
) -> Result<(), CoreError> {
    if outcome == Outcome::NoConsensus {
        let message = format!(
            "no consensus: {answers} answers (the most), the largest agreeing group {largest} \
             (quorum {} and more than any other); the answers are kept",
            task.vote.min_quorum
        );
        return fail_task(tx, ctx, task, FailureReason::NoConsensus, message);
    }
    tx.mark_inconclusive(&task.id)?;
    tx.rewind_cursors(&task.id)?;
    tracing::debug!(task_id = %task.id, answers, largest, "inconclusive: one more replica");
    ctx.effects.push(Effect::Announce(task.announcement()));
    ctx.effects.push(Effect::Finished(TaskEvent {
        answers: Some(answers as u32),
        ..TaskEvent::new(task.id, TaskStatus::Inconclusive, from_ms(ctx.now))
    }));
    Ok(())
}

/// Decides an `embedding` task: the largest group of answers within `threshold` cosine of one
/// another wins, under the task's vote rule (see [`label`]); its members agree and earn a
/// point each.
pub(crate) fn vectors(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    threshold: f64,
) -> Result<Outcome, CoreError> {
    let rows = tx.vector_answers(&task.id)?;
    let ballot: Vec<VectorVote<'_>> = rows
        .iter()
        .map(|a| VectorVote {
            vector: &a.vector,
            confidence: a.confidence,
        })
        .collect();
    let decision =
        decide_vectors(&ballot, threshold).expect("a task is finalized only with submissions");
    let outcome = judge(
        &task.vote,
        decision.members.len(),
        decision.runner_up,
        rows.len(),
    );
    if outcome != Outcome::Decided {
        undecided(tx, ctx, task, outcome, rows.len(), decision.members.len())?;
        return Ok(outcome);
    }
    let blob = vector_to_blob(&decision.vector);
    tx.finalize_vector(&task.id, &blob, decision.confidence, ctx.now)?;
    let flags: Vec<(i64, bool)> = rows
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id, decision.members.contains(&i)))
        .collect();
    tx.mark_agreed(&flags)?;
    tx.award_agreeing(&task.id)?;
    finished(
        ctx,
        &task.id,
        Final::Vector(decision.vector),
        decision.confidence,
    );
    Ok(Outcome::Decided)
}

/// How a generative task's answers stand after [`generated`].
pub(crate) enum Generated {
    /// A strict majority gave the same token ids: this text is final.
    Final(String),
    /// No majority (or `generate_once` mode, which always checks): the answers need scoring;
    /// nothing is finalized on a guess.
    Disputed {
        /// How many answers there are.
        answers: usize,
        /// How many distinct token sequences they hold.
        distinct: usize,
    },
}

/// Decides a generative task by exact match: when a strict majority of its answers are the same
/// token ids, they are final and their workers agree and earn a point each. Otherwise (and
/// always in `generate_once` mode) they are [`Generated::Disputed`], for cross-scoring.
pub(crate) fn generated(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
) -> Result<Generated, CoreError> {
    let rows = tx.token_answers(&task.id)?;
    let ballot: Vec<&[u8]> = rows.iter().map(|a| a.token_ids.as_slice()).collect();
    let always_verify = task
        .generation
        .as_ref()
        .is_some_and(|g| g.verify == VerifyMode::GenerateOnce && task.verifiers > 0);
    let members = if always_verify {
        None
    } else {
        decide_identical(&ballot)
    };
    let Some(members) = members else {
        return Ok(Generated::Disputed {
            answers: rows.len(),
            distinct: distinct_count(&ballot),
        });
    };
    let won = &rows[members[0]];
    let confidence =
        members.iter().map(|&i| rows[i].confidence).sum::<f64>() / members.len() as f64;
    tx.finalize_tokens(&task.id, &won.token_ids, &won.text, confidence, ctx.now)?;
    let flags: Vec<(i64, bool)> = rows
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id, members.contains(&i)))
        .collect();
    tx.mark_agreed(&flags)?;
    tx.award_agreeing(&task.id)?;
    let answer = Final::Generated(blob_to_ids(&won.token_ids), won.text.clone());
    finished(ctx, &task.id, answer, confidence);
    Ok(Generated::Final(won.text.clone()))
}

/// What a task was finalized on.
pub(crate) enum Final {
    Label(String),
    Vector(Vec<f32>),
    /// Token ids and their text.
    Generated(Vec<u32>, String),
}

/// Notes on the finalization just announced ([`finished`]) how many answers decided it and,
/// under the posterior policy, their posterior.
pub(crate) fn counted(ctx: &mut Ctx, answers: usize, posterior: Option<f64>) {
    if let Some(Effect::Finished(e)) = ctx.effects.last_mut() {
        e.answers = Some(u32::try_from(answers).unwrap_or(u32::MAX));
        e.posterior = posterior;
    }
}

/// Announces a finalization, after the commit: the consensus answer and its confidence.
pub(crate) fn finished(ctx: &mut Ctx, task_id: &TaskId, answer: Final, confidence: f64) {
    let (mut final_label, mut final_embedding, mut final_token_ids, mut final_text) =
        (None, None, None, None);
    match answer {
        Final::Label(l) => final_label = Some(l),
        Final::Vector(v) => final_embedding = Some(v),
        Final::Generated(ids, text) => (final_token_ids, final_text) = (Some(ids), Some(text)),
    }
    ctx.effects.push(Effect::Finished(TaskEvent {
        final_label,
        final_embedding,
        final_token_ids,
        final_text,
        final_confidence: Some(confidence),
        ..TaskEvent::new(*task_id, TaskStatus::Finalized, from_ms(ctx.now))
    }));
}
