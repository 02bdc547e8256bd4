//! `submit.<task_id>`: a worker's result. Checked against its lease, stored, and when the task has
//! all the submissions it needs, decided by vote and finalized (exactly once) with points to every
//! worker that agreed.
//!
//! A resend of a stored submission (same lease, same label) is acknowledged again as a duplicate,
//! so a worker that lost an acknowledgement can retry safely; a *different* second submission from
//! the same worker is refused.

use super::decide::{self, Generated};
use super::task::{check_lease, fail_task};
use super::{verify, Ctx};
use crate::api::{Answered, Submission};
use crate::consensus::Outcome;
use crate::error::CoreError;
use crate::store::rows::TaskRow;
use crate::store::tx::{AnswerContext, Earlier, NamedLease, NewVote, Tx};
use crate::store::vector_to_blob;
use protocol::generation::ids_to_blob;
use protocol::limits::DEFAULT_SIMILARITY;
use protocol::messages::{Answer, FailureReason, SubmitReply};
use protocol::ProtocolError;
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus};

/// Stores a submission as the NATS API receives it (tests use it; `Core::submit` makes the
/// [`Submission`] itself).
///
/// # Errors
/// [`CoreError::Invalid`] for a request out of bounds; otherwise see [`accept`].
#[cfg(test)]
pub(crate) fn run(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task_id: &TaskId,
    req: protocol::messages::SubmitRequest,
) -> Result<SubmitReply, CoreError> {
    accept(tx, ctx, task_id, req.try_into()?)
}

/// Check, prior answer, lease, record; then, when this answer completes the count, decide.
///
/// # Errors
/// - [`CoreError::Invalid`]: a label for an `embedding` task or a vector for a label task; a
///   `zero-shot` label not among the task's (the bounds were checked when `sub` was made).
/// - [`CoreError::TaskNotFound`]: unknown task.
/// - [`CoreError::DuplicateSubmission`]: the worker already submitted something else.
/// - [`CoreError::NoLease`], [`CoreError::NotLeased`], [`CoreError::LeaseMismatch`],
///   [`CoreError::LeaseExpired`]: the worker holds no live lease entitling it to submit.
/// - [`CoreError::TaskClosed`]: the task is already finalized or failed.
pub(crate) fn accept(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task_id: &TaskId,
    sub: Submission,
) -> Result<SubmitReply, CoreError> {
    let AnswerContext {
        task,
        earlier,
        named,
        votes,
    } = tx
        .answer_context(task_id, sub.worker_id(), sub.lease_id())?
        .ok_or(CoreError::TaskNotFound(*task_id))?;
    if let Answered::Verified(report) = sub.answer() {
        return verify::accept(tx, ctx, &task, &sub, report);
    }
    check_fits(&task, sub.answer().as_answer(), sub.model_hash())?;
    let blobs = Blobs::of(&sub);
    if let Some(earlier) = earlier {
        return resent(&task, &sub, &blobs, earlier);
    }
    let lease_id = entitling_lease(tx, &task, &sub, named)?;
    record(tx, ctx, &task, &sub, &lease_id, &blobs)?;
    if let Some(gold) = task.gold {
        super::gold::check(tx, ctx, &task, gold, &sub)?;
        // Said as to any answer that did not complete its task: nothing about the known one.
        return Ok(SubmitReply::stored());
    }
    if task.submissions + 1 < task.required {
        return Ok(SubmitReply::stored());
    }
    debug_assert_eq!(task.active_leases, 1, "slots never exceed required");
    complete(tx, ctx, &task, &sub, votes)
}

/// An answer as the store keeps it: its vector, token ids and log-probabilities as blobs.
struct Blobs {
    vector: Option<Vec<u8>>,
    ids: Option<Vec<u8>>,
    logprobs: Option<Vec<u8>>,
    token_ends: Option<Vec<u8>>,
}

impl Blobs {
    fn of(sub: &Submission) -> Self {
        let generation = match sub.answer() {
            Answered::Generated(g) => Some(g),
            _ => None,
        };
        Self {
            vector: match sub.answer() {
                Answered::Embedding(v) => Some(vector_to_blob(v)),
                _ => None,
            },
            ids: generation.map(|g| ids_to_blob(&g.token_ids)),
            logprobs: generation.map(|g| vector_to_blob(&g.logprobs)),
            token_ends: generation
                .filter(|g| !g.token_ends.is_empty())
                .map(|g| ids_to_blob(&g.token_ends)),
        }
    }
}

/// The worker answered this task before: the same answer on the same lease is a resend,
/// acknowledged again; anything else is refused.
///
/// # Errors
/// [`CoreError::DuplicateSubmission`] for a different second answer.
fn resent(
    task: &TaskRow,
    sub: &Submission,
    blobs: &Blobs,
    earlier: Earlier,
) -> Result<SubmitReply, CoreError> {
    let Earlier {
        lease,
        label,
        embedding,
        token_ids,
    } = earlier;
    if sub.lease_id().is_none_or(|l| l == lease)
        && label == sub.answer().label()
        && embedding == blobs.vector
        && token_ids == blobs.ids
    {
        return Ok(SubmitReply {
            accepted: true,
            duplicate: true,
            finalized: task.status == TaskStatus::Finalized,
            final_label: task.final_label.clone(),
            final_text: task.final_text.clone(),
        });
    }
    Err(CoreError::DuplicateSubmission {
        worker: sub.worker_id().clone(),
        task: task.id,
        label: if embedding.is_some() {
            "a different embedding".to_owned()
        } else if token_ids.is_some() {
            "a different generation".to_owned()
        } else {
            label
        },
    })
}

/// The live lease that entitles `sub` to answer: the one it names, or (for clients of the
/// original HTTP API, which name none) the worker's live lease on the task.
///
/// # Errors
/// [`CoreError::NotLeased`], [`CoreError::NoLease`], [`CoreError::LeaseMismatch`],
/// [`CoreError::LeaseExpired`]; [`CoreError::TaskClosed`]; [`CoreError::Invalid`] for a second
/// answer of one model content where the task counts one, or an answer on a verify lease.
fn entitling_lease(
    tx: &dyn Tx,
    task: &TaskRow,
    sub: &Submission,
    named: Option<NamedLease>,
) -> Result<LeaseId, CoreError> {
    let closed = || CoreError::TaskClosed {
        task: task.id,
        status: task.status,
    };
    let (lease_id, named) = match sub.lease_id() {
        Some(id) => (id, named),
        None if task.status.is_terminal() => return Err(closed()),
        None => {
            let id =
                tx.live_lease(&task.id, sub.worker_id())?
                    .ok_or_else(|| CoreError::NotLeased {
                        worker: sub.worker_id().clone(),
                        task: task.id,
                    })?;
            (id, tx.named_lease(&id)?)
        }
    };
    let state = check_lease(&lease_id, named, &task.id, sub.worker_id())?;
    if task.distinct_models && tx.model_counted(&task.id, sub.model_hash())? {
        return Err(ProtocolError::invalid(
            "model_hash",
            format!(
                "task {} counts one answer per model content and already has one from {}",
                task.id,
                sub.model_hash().unwrap_or("none")
            ),
        )
        .into());
    }
    if task.generation.is_some() && tx.scoring_row_of_lease(&lease_id)?.is_some() {
        return Err(ProtocolError::invalid(
            "verification",
            "this lease is for scoring a candidate: submit a verification",
        )
        .into());
    }
    if task.status.is_terminal() {
        return Err(closed());
    }
    if state != LeaseState::Active {
        return Err(CoreError::LeaseExpired {
            lease: lease_id,
            state,
        });
    }
    Ok(lease_id)
}

/// Stores the vote: its submission row, its lease completed, the task's counters.
fn record(
    tx: &dyn Tx,
    ctx: &Ctx,
    task: &TaskRow,
    sub: &Submission,
    lease_id: &LeaseId,
    blobs: &Blobs,
) -> Result<(), CoreError> {
    let text = match sub.answer() {
        Answered::Generated(g) => Some(g.text.as_str()),
        _ => None,
    };
    tx.record_vote(&NewVote {
        task: &task.id,
        worker: sub.worker_id(),
        lease: lease_id,
        label: sub.answer().label(),
        confidence: sub.confidence(),
        model: sub.model(),
        at: ctx.now,
        embedding: blobs.vector.as_deref(),
        token_ids: blobs.ids.as_deref(),
        text,
        logprobs: blobs.logprobs.as_deref(),
        model_hash: sub.model_hash(),
        token_ends: blobs.token_ends.as_deref(),
        input_tokens: sub.input_tokens(),
    })?;
    tracing::debug!(task_id = %task.id, worker_id = %sub.worker_id(), label = %sub.answer().label(), "submission stored");
    Ok(())
}

/// The answer that completes the count decides the task (see [`decide`]): a generative task
/// whose answers disagree goes to cross-scoring, or fails when nobody can score them.
fn complete(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    task: &TaskRow,
    sub: &Submission,
    votes: Option<Vec<(String, f64)>>,
) -> Result<SubmitReply, CoreError> {
    let (mut final_label, mut final_text) = (None, None);
    let finalized = if task.generation.is_some() {
        match decide::generated(tx, ctx, task)? {
            Generated::Final(text) => final_text = Some(text),
            Generated::Disputed { answers, distinct } => {
                if !verify::start(tx, ctx, task)? {
                    let message = format!(
                        "no consensus: no majority of the {answers} answers is identical \
                         ({distinct} distinct token sequences); the answers are kept"
                    );
                    fail_task(tx, ctx, task, FailureReason::NoConsensus, message)?;
                }
            }
        }
        final_text.is_some()
    } else if task.task_type.is_vector() {
        let threshold = task.similarity.unwrap_or(DEFAULT_SIMILARITY);
        decide::vectors(tx, ctx, task, threshold)? == Outcome::Decided
    } else if task.vote.policy == protocol::policy::Policy::Posterior {
        let (outcome, label) = super::posterior::decide(tx, ctx, task)?;
        final_label = label;
        outcome == Outcome::Decided
    } else {
        let answers = votes.map(|votes| decide::with_vote(votes, sub));
        let (outcome, label) = decide::label(tx, ctx, task, answers)?;
        final_label = label;
        outcome == Outcome::Decided
    };
    Ok(SubmitReply {
        accepted: true,
        duplicate: false,
        finalized,
        final_label,
        final_text,
    })
}

/// Refuses an answer of the wrong kind for the task: a label for an `embedding` task, a vector
/// for a label task, a `zero-shot` label that is not one of the task's candidates, anything but
/// a generation for a generative task, a generation that breaks the task's spec or comes from
/// another model content than it pins.
fn check_fits(
    task: &TaskRow,
    answer: Answer<'_>,
    model_hash: Option<&str>,
) -> Result<(), CoreError> {
    let wrong = |problem: String| -> CoreError { ProtocolError::invalid("label", problem).into() };
    let kind = if task.generation.is_some() {
        "a generation"
    } else if task.task_type.is_vector() {
        "an embedding"
    } else {
        "a label"
    };
    if task.generation.is_none() {
        if let Some(pinned) = &task.model_hash {
            if model_hash != Some(pinned.as_str()) {
                return Err(CoreError::ModelMismatch {
                    task: task.id,
                    pinned: pinned.clone(),
                    ran: model_hash.unwrap_or("none").to_owned(),
                });
            }
        }
        if task.distinct_models && model_hash.is_none() {
            return Err(ProtocolError::invalid(
                "model_hash",
                "this task counts one answer per model content: say which (model_hash)",
            )
            .into());
        }
    }
    match (answer, &task.generation) {
        (Answer::Generated(g), Some(spec)) => {
            if model_hash != Some(spec.model_hash.as_str()) {
                return Err(CoreError::ModelMismatch {
                    task: task.id,
                    pinned: spec.model_hash.clone(),
                    ran: model_hash.unwrap_or("none").to_owned(),
                });
            }
            return Ok(g.check_against(spec)?);
        }
        (Answer::Generated(_), None) => {
            return Err(wrong(format!(
                "{} tasks take {kind}, not a generation",
                task.task_type
            )))
        }
        (_, Some(_)) => {
            return Err(wrong(format!(
                "{} tasks take a generation (token ids), not a label or an embedding",
                task.task_type
            )))
        }
        (_, None) => {}
    }
    match answer {
        Answer::Label(_) if task.task_type.is_vector() => Err(wrong(format!(
            "{} tasks take an embedding, not a label",
            task.task_type
        ))),
        Answer::Embedding(_) if !task.task_type.is_vector() => Err(wrong(format!(
            "{} tasks take a label, not an embedding",
            task.task_type
        ))),
        Answer::Generated(_) => Ok(()),
        Answer::Verified(_) => Err(wrong(
            "a verification answers a verify lease, not a task".to_owned(),
        )),
        Answer::Label(label) => match &task.labels {
            Some(labels) if !labels.iter().any(|l| l == label) => Err(wrong(format!(
                "{label:?} is not one of the task's labels ({})",
                labels.join(", ")
            ))),
            _ => Ok(()),
        },
        Answer::Embedding(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::sweep;
    use crate::ops::task::load_task;
    use crate::ops::testing::*;
    use protocol::generation::{GeneratedAnswer, VerifyMode};
    use protocol::messages::SubmitRequest;
    use protocol::messages::{Lease, LeaseRequest, NewTask};
    use protocol::verify::Verification;
    use protocol::{ErrorCode, TaskType};

    fn three_votes_finalize_once_and_score_the_majority(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        let leases: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|w| take(&mut conn, 1, w).remove(0))
            .collect();
        let (r, fx) = send(&mut conn, 2, &t, answer(&leases[0], "a", "positive", 0.9));
        assert!(!r.expect("a").finalized && fx.is_empty());
        let (r, _) = send(&mut conn, 3, &t, answer(&leases[1], "b", "negative", 0.99));
        assert!(!r.expect("b").finalized);
        let (r, fx) = send(&mut conn, 4, &t, answer(&leases[2], "c", "positive", 0.6));
        let r = r.expect("c");
        assert!(r.finalized);
        assert_eq!(r.final_label.as_deref(), Some("positive"));
        assert_eq!(fx.len(), 1, "one finalized event");
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.active_leases, 0);
        assert!((task.final_confidence.expect("confidence") - 0.75).abs() < 1e-9);
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1, 0, 1)
        );

        // A resend is a duplicate; it changes nothing and scores nothing.
        let before = dump(&conn);
        let (r, fx) = send(&mut conn, 5, &t, answer(&leases[0], "a", "positive", 0.9));
        let r = r.expect("resend");
        assert!(r.duplicate && r.finalized && fx.is_empty());
        assert_eq!(dump(&conn), before);
    }

    fn take_typed(conn: &mut impl TestDb, worker: &str, task_type: TaskType) -> Lease {
        let req = LeaseRequest {
            capabilities: vec![task_type],
            ..lease_req(worker, 1)
        };
        lease(conn, 1, req)
            .leases
            .into_iter()
            .next()
            .expect("a lease")
    }

    fn vector(lease: &Lease, worker: &str, v: &[f32]) -> SubmitRequest {
        SubmitRequest {
            embedding: Some(v.to_vec()),
            ..answer(lease, worker, "", 1.0)
        }
    }

    fn embedding_tasks_finalize_on_the_largest_agreeing_group(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::embedding("x"));
        let leases: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|w| take_typed(&mut conn, w, TaskType::embedding()))
            .collect();
        send(&mut conn, 2, &t, vector(&leases[0], "a", &[1.0, 0.0, 0.0]))
            .0
            .expect("a");
        send(&mut conn, 2, &t, vector(&leases[1], "b", &[0.0, 1.0, 0.0]))
            .0
            .expect("b");
        let (r, fx) = send(
            &mut conn,
            3,
            &t,
            vector(&leases[2], "c", &[1.0, 0.001, 0.0]),
        );
        let r = r.expect("c");
        assert!(r.finalized && r.final_label.is_none());
        let Effect::Finished(event) = &fx[0] else {
            panic!("{fx:?}")
        };
        let v = event.final_embedding.as_ref().expect("vector in the event");
        assert!((v[0] - 1.0).abs() < 1e-6 && (v[1] - 0.0005).abs() < 1e-6);
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(task.final_embedding.as_ref(), Some(v));
        assert_eq!(task.similarity, Some(DEFAULT_SIMILARITY));
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1, 0, 1)
        );
        // A resend of the same vector is a duplicate; another vector is refused.
        let (r, _) = send(&mut conn, 4, &t, vector(&leases[0], "a", &[1.0, 0.0, 0.0]));
        assert!(r.expect("resend").duplicate);
        let (r, _) = send(&mut conn, 4, &t, vector(&leases[0], "a", &[0.5, 0.5, 0.0]));
        assert_eq!(
            r.expect_err("changed vector").code(),
            ErrorCode::DuplicateSubmission
        );
    }

    fn answers_must_fit_the_task_type(mut conn: TestStore) {
        let e = add(&mut conn, 0, NewTask::embedding("x"));
        let z = add(
            &mut conn,
            0,
            NewTask::zero_shot("goal!", &["sports", "politics"]),
        );
        let s = add(&mut conn, 0, NewTask::text("fine"));
        let le = take_typed(&mut conn, "a", TaskType::embedding());
        let lz = take_typed(&mut conn, "a", TaskType::zero_shot());
        assert_eq!(
            lz.labels.as_deref(),
            Some(&["sports".to_owned(), "politics".to_owned()][..])
        );
        let ls = take_typed(&mut conn, "a", TaskType::sentiment());
        let before = dump(&conn);
        let cases = [
            (e, answer(&le, "a", "positive", 0.9), "take an embedding"),
            (s, vector(&ls, "a", &[1.0]), "take a label"),
            (z, vector(&lz, "a", &[1.0]), "take a label"),
            (
                z,
                answer(&lz, "a", "weather", 0.9),
                "not one of the task's labels",
            ),
            (e, vector(&le, "a", &[0.0, 0.0]), "all zeros"),
            (e, vector(&le, "a", &[f32::NAN]), "finite"),
            (
                e,
                SubmitRequest {
                    label: "both".into(),
                    ..vector(&le, "a", &[1.0])
                },
                "give one answer",
            ),
        ];
        for (task, req, why) in cases {
            let (r, fx) = send(&mut conn, 2, &task, req.clone());
            let err = r.expect_err("accepted");
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{req:?}");
            assert!(err.to_string().contains(why), "{err} lacks {why:?}");
            assert!(fx.is_empty());
            assert_eq!(dump(&conn), before, "{req:?} changed the store");
        }
        let (r, _) = send(&mut conn, 2, &z, answer(&lz, "a", "sports", 0.9));
        assert!(r.expect("a candidate label").accepted);
    }

    fn refusals_change_nothing(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        let other = add(&mut conn, 0, NewTask::text("y"));
        let la = take(&mut conn, 1, "a").remove(0);
        let lb = take(&mut conn, 1, "b").remove(0);
        send(&mut conn, 2, &t, answer(&la, "a", "positive", 0.9))
            .0
            .expect("first");
        let before = dump(&conn);
        let cases: Vec<(TaskId, SubmitRequest, ErrorCode)> = vec![
            (
                t,
                answer(&la, "a", "negative", 0.9),
                ErrorCode::DuplicateSubmission,
            ),
            (
                t,
                answer(&lb, "c", "positive", 0.9),
                ErrorCode::LeaseMismatch,
            ),
            (
                other,
                answer(&lb, "b", "positive", 0.9),
                ErrorCode::LeaseMismatch,
            ),
            (
                t,
                {
                    let mut r = answer(&lb, "b", "x", 0.9);
                    r.lease_id = LeaseId::new();
                    r
                },
                ErrorCode::NoLease,
            ),
            (
                TaskId::new(),
                answer(&lb, "b", "positive", 0.9),
                ErrorCode::NotFound,
            ),
            (t, answer(&lb, "b", "", 0.9), ErrorCode::InvalidArgument),
            (
                t,
                answer(&lb, "b", "positive", 1.5),
                ErrorCode::InvalidArgument,
            ),
        ];
        for (task, req, code) in cases {
            let (r, fx) = send(&mut conn, 3, &task, req.clone());
            assert_eq!(r.expect_err("accepted").code(), code, "{req:?}");
            assert!(fx.is_empty());
            assert_eq!(dump(&conn), before, "{req:?} changed the store");
        }
    }

    fn a_freed_lease_cannot_add_a_vote(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        let slow = take(&mut conn, 0, "slow").remove(0);
        // The slow worker goes silent; its lease expires and the sweeper frees it.
        let swept = conn
            .write(|tx| sweep::run(tx, &mut ctx(settings().lease_ms + 1)))
            .expect("sweep");
        assert_eq!(swept.requeued, 1);
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(
            (task.status, task.attempts, task.active_leases),
            (TaskStatus::Queued, 1, 0)
        );
        let (r, _) = send(
            &mut conn,
            settings().lease_ms + 2,
            &t,
            answer(&slow, "slow", "positive", 1.0),
        );
        assert_eq!(r.expect_err("late vote").code(), ErrorCode::LeaseExpired);
    }

    fn attempts_count_only_leases_without_result(mut conn: TestStore) {
        // required 3 > max_attempts 2: healthy workers still finalize it.
        let t = add(
            &mut conn,
            0,
            NewTask {
                required_submissions: Some(3),
                max_attempts: Some(2),
                ..NewTask::text("x")
            },
        );
        for w in ["a", "b", "c"] {
            let l = take(&mut conn, 1, w).remove(0);
            send(&mut conn, 2, &t, answer(&l, w, "positive", 0.8))
                .0
                .expect("submit");
        }
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.status, task.attempts), (TaskStatus::Finalized, 0));
    }

    fn a_task_whose_workers_keep_dying_fails(mut conn: TestStore) {
        let t = add(
            &mut conn,
            0,
            NewTask {
                max_attempts: Some(2),
                ..NewTask::text("x")
            },
        );
        let mut now = 0;
        for (i, w) in ["a", "b"].iter().enumerate() {
            assert_eq!(take(&mut conn, now, w).len(), 1);
            now += settings().lease_ms + 1;
            let mut c = ctx(now);
            let swept = conn.write(|tx| sweep::run(tx, &mut c)).expect("sweep");
            assert_eq!(swept.failed, i as u32, "failed after attempt {}", i + 1);
        }
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(task.status, TaskStatus::Failed);
        assert!(task.error_message.expect("message").contains("2 attempts"));
        assert!(
            take(&mut conn, now, "c").is_empty(),
            "a failed task is leased"
        );
    }

    /// Worker `a` heartbeats (naming `leases`, or all it holds) just before its leases would
    /// expire, and the sweep runs just after: how many leases the heartbeat renewed, and the
    /// sweep's counts.
    fn heartbeat_then_sweep(
        conn: &mut TestStore,
        leases: Option<Vec<LeaseId>>,
    ) -> (u32, protocol::messages::RequeueReply) {
        let hb = protocol::messages::Heartbeat {
            worker_id: wid("a"),
            capabilities: vec![protocol::TaskType::sentiment()],
            model: None,
            leases,
            model_hash: None,
        };
        let lease_ms = settings().lease_ms;
        conn.write(|tx| -> Result<_, CoreError> {
            let r = crate::ops::heartbeat::run(tx, &mut ctx(lease_ms - 1), &wid("a"), hb)?;
            Ok((r.renewed, sweep::run(tx, &mut ctx(lease_ms + 1))?))
        })
        .expect("heartbeat and sweep")
    }

    fn heartbeats_renew_leases_and_stale_workers_lose_them(mut conn: TestStore) {
        add(&mut conn, 0, NewTask::text("x"));
        take(&mut conn, 0, "a");
        take(&mut conn, 0, "b");
        // `a` heartbeats just before its lease would expire; `b` stays silent.
        let (renewed, swept) = heartbeat_then_sweep(&mut conn, None);
        assert_eq!(renewed, 1);
        assert_eq!(swept.requeued, 1, "only b's lease expires");
        let live = live_lease_holders(&conn);
        assert_eq!(live, vec!["a".to_owned()]);
    }

    fn heartbeats_renew_only_the_leases_the_worker_names(mut conn: TestStore) {
        // `a` was granted two leases but only heard of one (the other reply was lost).
        add(&mut conn, 0, NewTask::text("x"));
        add(&mut conn, 0, NewTask::text("y"));
        let known = take(&mut conn, 0, "a").remove(0);
        let lost = take(&mut conn, 0, "a").remove(0);
        let (renewed, swept) = heartbeat_then_sweep(&mut conn, Some(vec![known.lease_id]));
        assert_eq!(renewed, 1);
        assert_eq!(swept.requeued, 1, "the lost lease expires");
        let task = load_task(&*conn.tx(), &lost.task_id).expect("task");
        assert_eq!((task.active_leases, task.attempts), (0, 1));
    }

    const HASH: &str = protocol::generation::SMOLLM2_HASH;

    fn generative(max_new_tokens: u32) -> NewTask {
        NewTask {
            max_new_tokens: Some(max_new_tokens),
            ..NewTask::generated(TaskType::generate(), "Name a colour.")
        }
    }

    /// A lease request of a worker doing the generative types on model content `hash`.
    fn generative_req(worker: &str, hash: Option<&str>) -> LeaseRequest {
        LeaseRequest {
            capabilities: vec![
                TaskType::generate(),
                TaskType::summarization(),
                TaskType::translation(),
            ],
            model_hash: hash.map(str::to_owned),
            ..lease_req(worker, 4)
        }
    }

    fn take_generative(conn: &mut impl TestDb, worker: &str, hash: Option<&str>) -> Vec<Lease> {
        lease(conn, 1, generative_req(worker, hash)).leases
    }

    fn generated(lease: &Lease, worker: &str, ids: &[u32], hash: Option<&str>) -> SubmitRequest {
        SubmitRequest {
            generation: Some(GeneratedAnswer {
                token_ends: Vec::new(),
                token_ids: ids.to_vec(),
                text: format!("{ids:?}"),
                logprobs: vec![-0.25; ids.len()],
                truncated: false,
            }),
            model_hash: hash.map(str::to_owned),
            ..answer(lease, worker, "", 0.8)
        }
    }

    fn generative_leases_follow_the_model_hash(mut conn: TestStore) {
        let t = add(&mut conn, 0, generative(4));
        assert!(take_generative(&mut conn, "nohash", None).is_empty());
        let other = "0".repeat(64);
        assert!(take_generative(&mut conn, "other", Some(&other)).is_empty());
        let got = take_generative(&mut conn, "right", Some(HASH));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].task_id, t);
        let spec = got[0]
            .generation
            .as_ref()
            .expect("the lease carries the spec");
        assert_eq!(
            (
                spec.model_hash.as_str(),
                spec.max_new_tokens,
                &spec.stop_ids[..]
            ),
            (HASH, 4, &[2][..])
        );
        assert_eq!(spec.template, protocol::generation::TEMPLATE_CHAT);
        // The worker that was refused for its hash gets the task once it serves the right one.
        assert_eq!(take_generative(&mut conn, "other", Some(HASH)).len(), 1);
    }

    fn identical_token_ids_finalize_and_a_split_goes_to_cross_scoring(mut conn: TestStore) {
        let agreed = add(&mut conn, 0, generative(4));
        let split = add(&mut conn, 0, generative(4));
        let mut leases: Vec<Vec<Lease>> = ["a", "b", "c"]
            .iter()
            .map(|w| take_generative(&mut conn, w, Some(HASH)))
            .collect();
        assert!(leases.iter().all(|l| l.len() == 2));
        let on = |leases: &mut Vec<Lease>, t: TaskId| {
            let i = leases.iter().position(|l| l.task_id == t).expect("lease");
            leases.remove(i)
        };
        let answers = [
            ("a", vec![5, 6, 2], vec![5, 6, 7, 8]),
            ("b", vec![5, 7, 2], vec![9, 2]),
            ("c", vec![5, 6, 2], vec![10, 11, 12, 2]),
        ];
        let mut last = Vec::new();
        for ((w, ids_agreed, ids_split), mine) in answers.iter().zip(&mut leases) {
            let l = on(mine, agreed);
            let (r, fx) = send(
                &mut conn,
                2,
                &agreed,
                generated(&l, w, ids_agreed, Some(HASH)),
            );
            r.expect("stored");
            let l = on(mine, split);
            let (r, fx2) = send(
                &mut conn,
                2,
                &split,
                generated(&l, w, ids_split, Some(HASH)),
            );
            let r = r.expect("stored");
            assert!(!r.finalized);
            last = [fx, fx2].concat();
        }
        let task = load_task(&*conn.tx(), &agreed).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.final_token_ids.as_deref(), Some(&[5, 6, 2][..]));
        assert_eq!(task.final_text.as_deref(), Some("[5, 6, 2]"));
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1, 0, 1)
        );

        // The split is not failed on a guess: the other workers score each candidate. The
        // model's true greedy answer is b's.
        let task = load_task(&*conn.tx(), &split).expect("task");
        assert_eq!(task.view().status, TaskStatus::Verifying);
        assert!(last
            .iter()
            .all(|e| !matches!(e, Effect::Finished(ev) if ev.task_id == split)));
        let truth = [9, 2];
        let mut scored = 0;
        for _ in 0..3 {
            for w in ["a", "b", "c"] {
                scored += score_all(&mut conn, w, &truth, Honesty::Honest);
            }
        }
        assert_eq!(scored, 6, "three candidates, two scorings each");
        let task = load_task(&*conn.tx(), &split).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.final_token_ids.as_deref(), Some(&truth[..]));
        // Each worker earned a point for each agreeing scoring (2), b one more as the author.
        // Each earned a point for each of its two agreeing scorings; b one more as the author
        // of the winner (a and c kept theirs from the first task).
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1 + 2, 2 + 1, 1 + 2)
        );
    }

    /// How a test verifier scores.
    #[derive(Clone, Copy, PartialEq)]
    enum Honesty {
        Honest,
        PassEverything,
    }

    /// Leases every verify lease `worker` can get and scores each against `truth`, the model's
    /// greedy answer (a gap of 5 wherever the candidate differs from it). Returns how many.
    fn score_all(conn: &mut impl TestDb, worker: &str, truth: &[u32], how: Honesty) -> usize {
        score_all_at(conn, &mut ctx(5), worker, truth, how)
    }

    fn score_all_at(
        conn: &mut impl TestDb,
        c: &mut Ctx,
        worker: &str,
        truth: &[u32],
        how: Honesty,
    ) -> usize {
        let req = generative_req(worker, Some(HASH));
        let leases = conn
            .write(|tx| crate::ops::lease::run(tx, c, req))
            .expect("lease")
            .leases;
        let mut n = 0;
        for l in leases.iter().filter(|l| l.verify.is_some()) {
            let (r, _) = send(conn, 5, &l.task_id, scored(l, worker, truth, how));
            r.expect("scoring stored");
            n += 1;
        }
        n
    }

    fn scored(l: &Lease, worker: &str, truth: &[u32], how: Honesty) -> SubmitRequest {
        let ids = &l.verify.as_ref().expect("a verify lease").token_ids;
        let spec = l.generation.as_ref().expect("spec");
        let gaps: Vec<f32> = match how {
            Honesty::Honest => ids
                .iter()
                .enumerate()
                .map(|(t, id)| if truth.get(t) == Some(id) { 0.0 } else { 5.0 })
                .collect(),
            Honesty::PassEverything => vec![0.0; ids.len()],
        };
        let passed = protocol::verify::verdict(ids, &gaps, spec, spec.eps());
        // An honest scorer on a bit-invariant engine: a candidate it would generate scores
        // every gap exactly 0, and it says so.
        let exact = how == Honesty::Honest && passed && gaps.iter().all(|g| *g == 0.0);
        SubmitRequest {
            verification: Some(Verification {
                logprobs: vec![-0.1; ids.len()],
                gaps,
                passed,
                exact,
            }),
            model_hash: Some(HASH.to_owned()),
            ..answer(l, worker, "", 1.0)
        }
    }

    fn generate_once(max_new_tokens: u32) -> NewTask {
        NewTask {
            verify: Some(VerifyMode::GenerateOnce),
            ..generative(max_new_tokens)
        }
    }

    fn generate_once_scores_one_answer_and_generates_again_when_it_fails(mut conn: TestStore) {
        let t = add(&mut conn, 0, generate_once(4));
        let truth = [5, 6, 2];
        // One generation slot: a takes it and answers wrongly (an early stop).
        let l = take_generative(&mut conn, "a", Some(HASH)).remove(0);
        assert!(take_generative(&mut conn, "b", Some(HASH)).is_empty());
        send(&mut conn, 2, &t, generated(&l, "a", &[5, 2], Some(HASH)))
            .0
            .expect("stored");
        assert_eq!(
            load_task(&*conn.tx(), &t).expect("task").view().status,
            TaskStatus::Verifying
        );
        // Its author never scores it; b and c refuse it.
        assert_eq!(score_all(&mut conn, "a", &truth, Honesty::Honest), 0);
        assert_eq!(score_all(&mut conn, "b", &truth, Honesty::Honest), 1);
        assert_eq!(score_all(&mut conn, "c", &truth, Honesty::Honest), 1);
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.status, task.required), (TaskStatus::Queued, 2));
        // Another worker generates; a (who never generates twice) and c score it.
        assert!(take_generative(&mut conn, "a", Some(HASH)).is_empty());
        let l = take_generative(&mut conn, "b", Some(HASH)).remove(0);
        assert!(l.verify.is_none());
        send(&mut conn, 3, &t, generated(&l, "b", &truth, Some(HASH)))
            .0
            .expect("stored");
        assert_eq!(score_all(&mut conn, "b", &truth, Honesty::Honest), 0);
        assert_eq!(score_all(&mut conn, "a", &truth, Honesty::Honest), 1);
        assert_eq!(score_all(&mut conn, "c", &truth, Honesty::Honest), 1);
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.final_token_ids.as_deref(), Some(&truth[..]));
        // The verdicts as shown: the refusals within no eps, the passes exact.
        let shown: Vec<(bool, bool)> = conn
            .tx()
            .verifications_of(&t)
            .expect("verifications")
            .iter()
            .map(|v| (v.passed, v.exact))
            .collect();
        assert_eq!(
            shown,
            [(false, false), (false, false), (true, true), (true, true)]
        );
        // b: its answer; a: one agreeing scoring; c: two; a's own answer earned nothing.
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1, 1 + 1, 2)
        );
    }

    #[test]
    fn a_pass_everything_verifier_is_caught_after_about_one_over_p_scorings() {
        // At the default trap rate, over many lying verifiers: how many verify leases each
        // takes until it has passed a trap.
        let p = crate::api::DEFAULT_TRAP_RATE;
        let truth = [5, 6, 2];
        let mut until = Vec::new();
        for _ in 0..100 {
            let mut conn = store();
            for _ in 0..40 {
                add(&mut conn, 0, generate_once(4));
            }
            loop {
                let taken = take_generative(&mut conn, "a", Some(HASH));
                if taken.is_empty() {
                    break;
                }
                for l in taken {
                    send(
                        &mut conn,
                        2,
                        &l.task_id,
                        generated(&l, "a", &truth, Some(HASH)),
                    )
                    .0
                    .expect("stored");
                }
            }
            let mut c = ctx(5);
            c.settings.trap_rate = p;
            let mut leases = 0;
            while leases < 80 {
                let req = LeaseRequest {
                    max_tasks: 1,
                    ..generative_req("liar", Some(HASH))
                };
                let tx = conn.transaction().expect("tx");
                let l = crate::ops::lease::run(&crate::store::sqlite::Tx(&tx), &mut c, req)
                    .expect("lease")
                    .leases;
                tx.commit().expect("commit");
                let Some(l) = l.first() else { break };
                leases += 1;
                let req = scored(l, "liar", &truth, Honesty::PassEverything);
                send(&mut conn, 5, &l.task_id, req).0.expect("stored");
                let missed = conn.tx().score(&wid("liar")).expect("score").traps_missed;
                if missed > 0 {
                    break;
                }
            }
            until.push(leases as f64);
        }
        let mean = until.iter().sum::<f64>() / until.len() as f64;
        eprintln!(
            "caught after {mean:.1} verify leases on average (1/p = {})",
            1.0 / p
        );
        // A geometric wait of mean 1/p; 100 samples put the mean within a factor of two.
        assert!(mean > 0.5 / p && mean < 2.0 / p, "{mean}");
    }

    fn a_pass_everything_verifier_misses_traps_and_loses_points(mut conn: TestStore) {
        let t = add(&mut conn, 0, generate_once(4));
        let truth = [5, 6, 2];
        let l = take_generative(&mut conn, "a", Some(HASH)).remove(0);
        send(&mut conn, 2, &t, generated(&l, "a", &truth, Some(HASH)))
            .0
            .expect("stored");
        let mut traps = ctx(5);
        traps.settings.trap_rate = 1.0;
        // Every scoring lease is a trap now: a corrupted copy that must fail.
        let b = score_all_at(&mut conn, &mut traps, "b", &truth, Honesty::PassEverything);
        let c = score_all_at(&mut conn, &mut traps, "c", &truth, Honesty::Honest);
        assert_eq!((b, c), (1, 1));
        let count = |w: &str| -> (i64, i64) {
            let s = conn.tx().score(&wid(w)).expect("score");
            (s.traps_caught, s.traps_missed)
        };
        assert_eq!((count("b"), count("c")), ((0, 1), (1, 0)));
        assert_eq!((points(&conn, "b"), points(&conn, "c")), (-1, 0));
        // The real slots are still open: the task is not decided by traps.
        assert_eq!(
            load_task(&*conn.tx(), &t).expect("task").view().status,
            TaskStatus::Verifying
        );
        assert_eq!(
            score_all(&mut conn, "b", &truth, Honesty::PassEverything),
            1
        );
        assert_eq!(score_all(&mut conn, "c", &truth, Honesty::Honest), 1);
        assert_eq!(
            load_task(&*conn.tx(), &t).expect("task").status,
            TaskStatus::Finalized
        );
    }

    fn a_verification_must_follow_from_its_gaps_and_refusals_change_nothing(mut conn: TestStore) {
        let t = add(&mut conn, 0, generate_once(4));
        let l = take_generative(&mut conn, "a", Some(HASH)).remove(0);
        send(&mut conn, 2, &t, generated(&l, "a", &[5, 6, 2], Some(HASH)))
            .0
            .expect("stored");
        let req = generative_req("b", Some(HASH));
        let v = lease(&mut conn, 3, req).leases.remove(0);
        let good = scored(&v, "b", &[5, 6, 2], Honesty::Honest);
        let before = dump(&conn);
        let with = |f: &dyn Fn(&mut Verification)| {
            let mut r = good.clone();
            f(r.verification.as_mut().expect("verification"));
            r
        };
        let other = "0".repeat(64);
        let cases = [
            (with(&|v| v.gaps[1] = 5.0), ErrorCode::InvalidArgument),
            (with(&|v| v.passed = false), ErrorCode::InvalidArgument),
            (with(&|v| v.gaps.push(0.0)), ErrorCode::InvalidArgument),
            (with(&|v| v.logprobs[0] = 0.5), ErrorCode::InvalidArgument),
            (with(&|v| v.gaps[0] = f32::NAN), ErrorCode::InvalidArgument),
            // Exact, yet a gap within eps but not 0.
            (
                with(&|v| v.gaps[1] = v.gaps[1].max(1e-6)),
                ErrorCode::InvalidArgument,
            ),
            (
                SubmitRequest {
                    model_hash: Some(other),
                    ..good.clone()
                },
                ErrorCode::ModelMismatch,
            ),
            (
                generated(&v, "b", &[5, 6, 2], Some(HASH)),
                ErrorCode::InvalidArgument,
            ),
            (
                SubmitRequest {
                    worker_id: wid("c"),
                    ..good.clone()
                },
                ErrorCode::LeaseMismatch,
            ),
        ];
        for (req, code) in cases {
            let (r, fx) = send(&mut conn, 4, &t, req.clone());
            let err = r.expect_err("accepted");
            assert_eq!(err.code(), code, "{err}");
            assert!(fx.is_empty());
            assert_eq!(dump(&conn), before, "{req:?} changed the store");
        }
        // A verification cannot answer a generation lease either.
        let on_generation = SubmitRequest {
            lease_id: l.lease_id,
            worker_id: wid("a"),
            ..good.clone()
        };
        let (r, _) = send(&mut conn, 4, &t, on_generation);
        assert!(r.is_err());
        let ok = send(&mut conn, 4, &t, good.clone()).0.expect("stored");
        assert!(!ok.duplicate);
        let again = send(&mut conn, 4, &t, good.clone()).0.expect("resend");
        assert!(again.duplicate, "a resend is acknowledged as a duplicate");
        let inexact = with(&|v| v.exact = false);
        let err = send(&mut conn, 4, &t, inexact)
            .0
            .expect_err("another report");
        assert_eq!(err.code(), ErrorCode::DuplicateSubmission);
    }

    fn an_expired_verify_lease_opens_its_slot_again(mut conn: TestStore) {
        let t = add(&mut conn, 0, generate_once(4));
        let l = take_generative(&mut conn, "a", Some(HASH)).remove(0);
        send(&mut conn, 2, &t, generated(&l, "a", &[5, 6, 2], Some(HASH)))
            .0
            .expect("stored");
        let req = generative_req("b", Some(HASH));
        assert_eq!(lease(&mut conn, 3, req.clone()).leases.len(), 1);
        assert!(lease(&mut conn, 3, req.clone()).leases.is_empty());
        let swept = conn
            .write(|tx| sweep::run(tx, &mut ctx(60_000)))
            .expect("sweep");
        assert_eq!(swept.requeued, 1);
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.attempts, task.active_leases), (1, 0));
        assert_eq!(task.view().status, TaskStatus::Verifying);
        assert_eq!(lease(&mut conn, 60_001, req).leases.len(), 1, "open again");
    }

    fn a_generation_must_come_from_the_pinned_model_and_keep_to_the_spec(mut conn: TestStore) {
        let t = add(&mut conn, 0, generative(4));
        let l = take_generative(&mut conn, "a", Some(HASH)).remove(0);
        let before = dump(&conn);
        let other = "0".repeat(64);
        let cases = [
            (
                generated(&l, "a", &[5, 2], Some(&other)),
                ErrorCode::ModelMismatch,
            ),
            (generated(&l, "a", &[5, 2], None), ErrorCode::ModelMismatch),
            (
                generated(&l, "a", &[5, 2, 6], Some(HASH)),
                ErrorCode::InvalidArgument,
            ),
            (
                generated(&l, "a", &[5, 6], Some(HASH)),
                ErrorCode::InvalidArgument,
            ),
            (
                generated(&l, "a", &[5, 6, 7, 8, 9], Some(HASH)),
                ErrorCode::InvalidArgument,
            ),
            (
                generated(&l, "a", &[49152, 2], Some(HASH)),
                ErrorCode::InvalidArgument,
            ),
            (answer(&l, "a", "positive", 0.9), ErrorCode::InvalidArgument),
            (vector(&l, "a", &[1.0]), ErrorCode::InvalidArgument),
        ];
        for (req, code) in cases {
            let (r, fx) = send(&mut conn, 2, &t, req.clone());
            let err = r.expect_err("accepted");
            assert_eq!(err.code(), code, "{err}");
            assert!(fx.is_empty());
            assert_eq!(dump(&conn), before, "{req:?} changed the store");
        }
        let (r, _) = send(
            &mut conn,
            2,
            &t,
            generated(&l, "a", &[5, 6, 7, 8], Some(HASH)),
        );
        assert!(r.expect("a generation that ran to its bound").accepted);
        let (r, _) = send(
            &mut conn,
            3,
            &t,
            generated(&l, "a", &[5, 6, 7, 8], Some(HASH)),
        );
        assert!(r.expect("a resend").duplicate);
        let (r, _) = send(&mut conn, 3, &t, generated(&l, "a", &[5, 2], Some(HASH)));
        assert_eq!(
            r.expect_err("changed").code(),
            ErrorCode::DuplicateSubmission
        );
    }

    crate::ops::testing::on_both_engines!(
        three_votes_finalize_once_and_score_the_majority,
        embedding_tasks_finalize_on_the_largest_agreeing_group,
        answers_must_fit_the_task_type,
        refusals_change_nothing,
        a_freed_lease_cannot_add_a_vote,
        a_task_whose_workers_keep_dying_fails,
        generative_leases_follow_the_model_hash,
        identical_token_ids_finalize_and_a_split_goes_to_cross_scoring,
        generate_once_scores_one_answer_and_generates_again_when_it_fails,
        a_pass_everything_verifier_misses_traps_and_loses_points,
        a_verification_must_follow_from_its_gaps_and_refusals_change_nothing,
        an_expired_verify_lease_opens_its_slot_again,
        a_generation_must_come_from_the_pinned_model_and_keep_to_the_spec,
        attempts_count_only_leases_without_result,
        heartbeats_renew_leases_and_stale_workers_lose_them,
        heartbeats_renew_only_the_leases_the_worker_names,
    );

    /// A vote whose read waits for its task's row while another transaction expires its lease
    /// (as the sweeper does) decides on what that transaction committed: the lease is expired,
    /// the vote refused, nothing counted twice. The read's snapshot predates that commit, so
    /// the lease it joins still looks live; the row it locks does not.
    #[test]
    fn a_vote_that_waited_for_its_task_row_sees_what_the_holder_committed() {
        let server = PgServer::start();
        let mut conn = server.fresh();
        let t = add(&mut conn, 0, NewTask::text("x"));
        let l = take(&mut conn, 1, "a").remove(0);
        let mut other = test_support::PgClient::connect(server.url());
        let sweep = other.transaction().expect("tx");
        expire_elsewhere(&sweep, &l.lease_id, &t);
        let voter = std::thread::spawn(move || {
            let mut c = ctx(3);
            let r = conn.write(|db| run(db, &mut c, &t, answer(&l, "a", "positive", 0.9)));
            (r, conn)
        });
        until_one_waits(server.url());
        sweep.commit().expect("commit");
        let (r, conn) = voter.join().expect("voter");
        assert!(
            matches!(r, Err(CoreError::LeaseExpired { .. })),
            "a vote on an expired lease: {r:?}"
        );
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.active_leases, task.submissions), (0, 0));
    }
}
