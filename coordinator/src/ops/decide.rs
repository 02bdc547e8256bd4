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
use crate::store::sql::{params, typed_rows, Dialect, Merged};
use crate::store::tx::Tx;
use crate::store::{blob_to_vector, from_ms, vector_to_blob};
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
    let tid = task.id.to_string();
    let votes: Vec<(String, f64)> = match answers {
        Some(votes) => votes,
        None => tx
            .sql()
            .prepare_cached(
                "SELECT label, confidence FROM submission WHERE task_id = ?1 ORDER BY id",
            )?
            .query_map([&tid], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
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
    tx.sql().defer_merged(
        &DECIDED,
        params![tid, decision.label, decision.confidence, ctx.now],
    )?;
    let answer = Final::Label(decision.label.clone());
    finished(ctx, &task.id, answer, decision.confidence);
    Ok((Outcome::Decided, Some(decision.label)))
}

/// A label task decided: its final label and confidence, the agreement flags, a point to each
/// worker in the winning group. Arguments: task, label, confidence, time. Decisions of a batch
/// on PostgreSQL are one statement, made after the batch's votes ([`VOTE`], a lower phase), so
/// they see the deciding answers.
pub(crate) static DECIDED: Merged = Merged {
    one: |conn, a| {
        conn.defer_all(&[
            (
                "UPDATE task SET status = 'finalized', final_label = ?1, final_confidence = ?2,
                     finished_at = ?3, inconclusive = 0
                 WHERE id = ?4",
                &[&a[1], &a[2], &a[3], &a[0]],
            ),
            (
                "UPDATE submission SET agreed = CASE WHEN label = ?1 THEN 1 ELSE 0 END
                 WHERE task_id = ?2",
                &[&a[1], &a[0]],
            ),
            // By label, not by the flag set beside it (which it would not see on PostgreSQL).
            (&award_sql(conn.dialect(), "label = ?2"), &[&a[0], &a[1]]),
        ])
    },
    // One statement for the batch's decisions, joined by key (see VOTE).
    many: |n| {
        let rows = typed_rows(n, &["TEXT", "TEXT", "DOUBLE PRECISION", "BIGINT"]);
        format!(
            "WITH d (task_id, label, confidence, at) AS (VALUES {rows}),
             a AS (UPDATE submission SET agreed = CASE WHEN submission.label = d.label
                                                       THEN 1 ELSE 0 END
                   FROM d WHERE submission.task_id = d.task_id),
             p AS (INSERT INTO score_delta (worker_id, points)
                   SELECT s.worker_id, 1 FROM submission s
                   JOIN d ON s.task_id = d.task_id AND s.label = d.label)
             UPDATE task SET status = 'finalized', final_label = d.label,
                 final_confidence = d.confidence, finished_at = d.at, inconclusive = 0
             FROM d WHERE task.id = d.task_id"
        )
    },
    // Each task once in a statement: the update joined to it decides it once.
    distinct: 0,
    phase: 1,
};

/// A task's answers, as the `votes` column of [`answer_sql`] has those before `sub`, and then
/// `sub`'s: each label with its confidence, in the order they came.
pub(crate) fn with_vote(json: &str, sub: &Submission) -> Result<Vec<(String, f64)>, CoreError> {
    let bad = |e: String| CoreError::Bug(format!("the answers read with a submission: {e}"));
    let earlier: Vec<(String, String)> =
        serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut votes = earlier
        .into_iter()
        .map(|(label, confidence)| {
            Ok((label, confidence.parse().map_err(|e| bad(format!("{e}")))?))
        })
        .collect::<Result<Vec<(String, f64)>, CoreError>>()?;
    votes.push((sub.answer().label().to_owned(), sub.confidence()));
    Ok(votes)
}

/// A round of answers without a quorum: one more replica (the task is `inconclusive`, open to
/// workers that have not answered it), or, at `max_answers`, failure with `no_consensus`. The
/// answers are kept and nobody earns a point.
fn undecided(
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
    tx.sql()
        .prepare_cached("UPDATE task SET required = required + 1, inconclusive = 1 WHERE id = ?1")?
        .execute([task.id.to_string()])?;
    super::task::rewind_cursors(tx, &task.id)?;
    tracing::debug!(task_id = %task.id, answers, largest, "inconclusive: one more replica");
    ctx.effects.push(Effect::Announce(task.announcement()));
    ctx.effects.push(Effect::Finished(TaskEvent {
        answers: Some(answers as u32),
        ..TaskEvent::new(task.id, TaskStatus::Inconclusive, from_ms(ctx.now))
    }));
    Ok(())
}

/// Decides an `embedding` task: the largest group of answers within `threshold` cosine of one
/// another wins, under the task's vote rule (see [`finalize`]); its members agree and earn a
/// point each.
pub(crate) fn vectors(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    threshold: f64,
) -> Result<Outcome, CoreError> {
    let tid = task.id.to_string();
    let rows: Vec<(i64, Vec<u8>, f64)> = tx
        .sql()
        .prepare_cached(
            "SELECT id, embedding, confidence FROM submission WHERE task_id = ?1 ORDER BY id",
        )?
        .query_map([&tid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let vectors: Vec<Vec<f32>> = rows.iter().map(|(_, b, _)| blob_to_vector(b)).collect();
    let ballot: Vec<VectorVote<'_>> = vectors
        .iter()
        .zip(&rows)
        .map(|(v, (_, _, confidence))| VectorVote {
            vector: v,
            confidence: *confidence,
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
    tx.sql()
        .prepare_cached(
            "UPDATE task SET status = 'finalized', final_embedding = ?1, final_confidence = ?2,
             finished_at = ?3, inconclusive = 0
         WHERE id = ?4",
        )?
        .execute(params![
            vector_to_blob(&decision.vector),
            decision.confidence,
            ctx.now,
            tid
        ])?;
    let mut mark = tx
        .sql()
        .prepare_cached("UPDATE submission SET agreed = ?1 WHERE id = ?2")?;
    for (i, (id, _, _)) in rows.iter().enumerate() {
        mark.execute(params![decision.members.contains(&i), id])?;
    }
    award_points(tx, &tid)?;
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
    let tid = task.id.to_string();
    let rows: Vec<(i64, Vec<u8>, String, f64)> = tx
        .sql()
        .prepare_cached(
            "SELECT id, token_ids, text, confidence FROM submission WHERE task_id = ?1 ORDER BY id",
        )?
        .query_map([&tid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let ballot: Vec<&[u8]> = rows.iter().map(|(_, ids, _, _)| ids.as_slice()).collect();
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
    let (_, ids, text, _) = &rows[members[0]];
    let confidence = members.iter().map(|&i| rows[i].3).sum::<f64>() / members.len() as f64;
    tx.sql()
        .prepare_cached(
            "UPDATE task SET status = 'finalized', final_token_ids = ?1, final_text = ?2,
             final_confidence = ?3, finished_at = ?4
         WHERE id = ?5",
        )?
        .execute(params![ids, text, confidence, ctx.now, tid])?;
    let mut mark = tx
        .sql()
        .prepare_cached("UPDATE submission SET agreed = ?1 WHERE id = ?2")?;
    for (i, (id, _, _, _)) in rows.iter().enumerate() {
        mark.execute(params![members.contains(&i), id])?;
    }
    award_points(tx, &tid)?;
    let answer = Final::Generated(blob_to_ids(ids), text.clone());
    finished(ctx, &task.id, answer, confidence);
    Ok(Generated::Final(text.clone()))
}

/// What a task was finalized on.
pub(crate) enum Final {
    Label(String),
    Vector(Vec<f32>),
    /// Token ids and their text.
    Generated(Vec<u32>, String),
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

/// One point to each worker whose submission on the task agreed with the consensus.
pub(crate) fn award_points(tx: &dyn Tx, tid: &str) -> Result<(), CoreError> {
    tx.sql()
        .prepare_cached(&award_sql(tx.sql().dialect(), "agreed = 1"))?
        .defer([tid])?;
    Ok(())
}

/// The statement that gives one point to each worker whose submission on task `?1` meets
/// `agreeing` (a condition on the submission). PostgreSQL appends the points to `score_delta`
/// rather than update the workers' score rows in place: no lock on them (see score_delta).
fn award_sql(dialect: Dialect, agreeing: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "INSERT INTO score_delta (worker_id, points)
             SELECT worker_id, 1 FROM submission WHERE task_id = ?1 AND {agreeing}"
        ),
        Dialect::Sqlite => format!(
            "INSERT INTO worker_score (worker_id, points)
             SELECT worker_id, 1 FROM submission WHERE task_id = ?1 AND {agreeing}
             ORDER BY worker_id
             ON CONFLICT (worker_id) DO UPDATE SET points = worker_score.points + 1"
        ),
    }
}
