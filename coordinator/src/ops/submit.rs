//! `submit.<task_id>`: a worker's result. Checked against its lease, stored, and when the task has
//! all the submissions it needs, decided by vote and finalized (exactly once) with points to every
//! worker that agreed.
//!
//! A resend of a stored submission (same lease, same label) is acknowledged again as a duplicate,
//! so a worker that lost an acknowledgement can retry safely; a *different* second submission from
//! the same worker is refused.

use super::{fail_task, parsed, verify, Ctx, Effect, TaskRow, TASK_COLUMNS};
use crate::api::{Answered, Submission};
use crate::consensus::{
    decide, decide_identical, decide_vectors, distinct_count, judge, Outcome, VectorVote, Vote,
};
use crate::error::CoreError;
use crate::store::sql::{numbered, params, Dialect, Merged, OptionalExtension, Sql, ToArg};
use crate::store::{blob_to_vector, from_ms, vector_to_blob, Probe};
use protocol::generation::{blob_to_ids, ids_to_blob, VerifyMode};
use protocol::limits::DEFAULT_SIMILARITY;
use protocol::messages::{
    check_confidence, check_model, check_model_hash, Answer, FailureReason, SubmitReply,
    SubmitRequest, TaskEvent,
};
use protocol::ProtocolError;
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus, WorkerId};
use std::sync::LazyLock;

/// A worker's stored submission on a task: its lease, label, vector blob and token-id blob.
type Earlier = (LeaseId, String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Stores a submission that came with its lease id (the NATS API).
///
/// # Errors
/// See [`accept`].
pub(crate) fn run(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task_id: &TaskId,
    req: SubmitRequest,
) -> Result<SubmitReply, CoreError> {
    req.validate()?;
    accept(conn, ctx, task_id, req.try_into()?)
}

/// # Errors
/// - [`CoreError::Invalid`]: label, vector, confidence or model out of bounds; a label for an
///   `embedding` task or a vector for a label task; a `zero-shot` label not among the task's.
/// - [`CoreError::TaskNotFound`]: unknown task.
/// - [`CoreError::DuplicateSubmission`]: the worker already submitted something else.
/// - [`CoreError::NoLease`], [`CoreError::NotLeased`], [`CoreError::LeaseMismatch`],
///   [`CoreError::LeaseExpired`]: the worker holds no live lease entitling it to submit.
/// - [`CoreError::TaskClosed`]: the task is already finalized or failed.
pub(crate) fn accept(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task_id: &TaskId,
    sub: Submission,
) -> Result<SubmitReply, CoreError> {
    let answer = sub.answer.as_answer();
    check_confidence(sub.confidence)?;
    check_model(sub.model.as_deref())?;
    check_model_hash(sub.model_hash.as_deref())?;
    let Loaded {
        task,
        earlier,
        named,
        votes,
    } = load_for_answer(conn, task_id, &sub.worker_id, sub.lease_id)?;
    if let Answer::Verified(report) = answer {
        return verify::accept(conn, ctx, &task, &sub, report);
    }
    check_fits(&task, answer, sub.model_hash.as_deref())?;
    let tid = task_id.to_string();
    let (vector, generation) = match &sub.answer {
        Answered::Embedding(v) => (Some(vector_to_blob(v)), None),
        Answered::Generated(g) => (None, Some(g)),
        _ => (None, None),
    };
    let ids = generation.map(|g| ids_to_blob(&g.token_ids));

    if let Some((lease, label, embedding, token_ids)) = earlier {
        if sub.lease_id.is_none_or(|l| l == lease)
            && label == sub.answer.label()
            && embedding == vector
            && token_ids == ids
        {
            return Ok(SubmitReply {
                accepted: true,
                duplicate: true,
                finalized: task.status == TaskStatus::Finalized,
                final_label: task.final_label,
                final_text: task.final_text,
            });
        }
        return Err(CoreError::DuplicateSubmission {
            worker: sub.worker_id,
            task: *task_id,
            label: if embedding.is_some() {
                "a different embedding".to_owned()
            } else if token_ids.is_some() {
                "a different generation".to_owned()
            } else {
                label
            },
        });
    }

    let (lease_id, named) = match sub.lease_id {
        Some(id) => (id, named),
        None if task.status.is_terminal() => {
            return Err(CoreError::TaskClosed {
                task: *task_id,
                status: task.status,
            })
        }
        None => {
            let id =
                live_lease(conn, task_id, &sub.worker_id)?.ok_or_else(|| CoreError::NotLeased {
                    worker: sub.worker_id.clone(),
                    task: *task_id,
                })?;
            (id, named_lease(conn, &id)?)
        }
    };
    let (state, verify_row) = check_lease(conn, &lease_id, named, &task, &sub.worker_id)?;
    if task.distinct_models {
        let counted: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM submission WHERE task_id = ?1 AND model_hash = ?2)",
            )?
            .query_row(params![tid, sub.model_hash], |r| r.get(0))?;
        if counted {
            return Err(ProtocolError::invalid(
                "model_hash",
                format!(
                    "task {task_id} counts one answer per model content and already has one \
                     from {}",
                    sub.model_hash.as_deref().unwrap_or("none")
                ),
            )
            .into());
        }
    }
    if verify_row.is_some() {
        return Err(ProtocolError::invalid(
            "verification",
            "this lease is for scoring a candidate: submit a verification",
        )
        .into());
    }
    if task.status.is_terminal() {
        return Err(CoreError::TaskClosed {
            task: *task_id,
            status: task.status,
        });
    }
    if state != LeaseState::Active {
        return Err(CoreError::LeaseExpired {
            lease: lease_id,
            state,
        });
    }

    let lease = lease_id.to_string();
    let logprobs = generation.map(|g| vector_to_blob(&g.logprobs));
    conn.defer_merged(
        &VOTE,
        params![
            tid,
            sub.worker_id.as_str(),
            lease,
            sub.answer.label(),
            sub.confidence,
            sub.model,
            ctx.now,
            vector,
            ids,
            generation.map(|g| g.text.as_str()),
            logprobs,
            sub.model_hash
        ],
    )?;
    tracing::debug!(task_id = %task_id, worker_id = %sub.worker_id, label = %sub.answer.label(), "submission stored");

    if let Some(gold) = task.gold {
        super::gold::check(conn, ctx, &task, gold, &sub)?;
        // Said as to any answer that did not complete its task: nothing about the known one.
        return Ok(SubmitReply::stored());
    }
    if task.submissions + 1 < task.required {
        return Ok(SubmitReply::stored());
    }
    debug_assert_eq!(task.active_leases, 1, "slots never exceed required");
    let (mut final_label, mut final_text) = (None, None);
    let finalized = if task.generation.is_some() {
        final_text = finalize_generated(conn, ctx, &task)?;
        final_text.is_some()
    } else {
        let outcome = if task.task_type.is_vector() {
            let threshold = task.similarity.unwrap_or(DEFAULT_SIMILARITY);
            finalize_vectors(conn, ctx, &task, threshold)?
        } else {
            let answers = match votes {
                Some(json) => Some(with_vote(&json, &sub)?),
                None => None,
            };
            let (outcome, label) = finalize(conn, ctx, &task, answers)?;
            final_label = label;
            outcome
        };
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

/// A lease as a submission names it: its task, holder and state.
type Named = (TaskId, WorkerId, LeaseState);

/// What a submission is decided from, read in one statement.
struct Loaded {
    /// The task, its row locked on PostgreSQL.
    task: TaskRow,
    /// The worker's earlier submission on it.
    earlier: Option<Earlier>,
    /// The lease the submission names, if it names one.
    named: Option<Named>,
    /// On PostgreSQL, when this answer completes the required count: the task's answers so
    /// far, in the order they came, as JSON `[[label, confidence as text], ...]`.
    votes: Option<String>,
}

/// Reads what a submission is decided from (see [`Loaded`]).
///
/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown task.
fn load_for_answer(
    conn: &dyn Sql,
    task_id: &TaskId,
    worker: &WorkerId,
    lease: Option<LeaseId>,
) -> Result<Loaded, CoreError> {
    let loaded = read_for_answer(conn, task_id, worker, lease)?;
    if loaded.1 {
        return Ok(loaded.0);
    }
    // The row is locked now: read once more, in a snapshot that has what was committed.
    Ok(read_for_answer(conn, task_id, worker, lease)?.0)
}

/// One read of [`load_for_answer`], and whether it is fresh (see [`answer_text`]).
fn read_for_answer(
    conn: &dyn Sql,
    task_id: &TaskId,
    worker: &WorkerId,
    lease: Option<LeaseId>,
) -> Result<(Loaded, bool), CoreError> {
    // The columns after the task's (see answer_text).
    const VOTES: usize = super::TASK_COLUMN_COUNT;
    const FRESH: usize = VOTES + 1;
    const EARLIER: usize = FRESH + 1;
    const NAMED: usize = EARLIER + 4;
    conn.prepare_cached(answer_sql(conn.dialect()))?
        .query_row(
            params![
                task_id.to_string(),
                worker.as_str(),
                lease.map(|l| l.to_string())
            ],
            |r| {
                let earlier = if r.is_null(EARLIER)? {
                    None
                } else {
                    Some((
                        parsed(r, EARLIER)?,
                        r.get(EARLIER + 1)?,
                        r.get(EARLIER + 2)?,
                        r.get(EARLIER + 3)?,
                    ))
                };
                let named = if r.is_null(NAMED)? {
                    None
                } else {
                    Some((
                        parsed(r, NAMED)?,
                        parsed(r, NAMED + 1)?,
                        parsed(r, NAMED + 2)?,
                    ))
                };
                let loaded = Loaded {
                    task: TaskRow::from_row(r)?,
                    votes: r.get(VOTES)?,
                    earlier,
                    named,
                };
                Ok((loaded, r.get(FRESH)?))
            },
        )
        .optional()?
        .ok_or(CoreError::TaskNotFound(*task_id))
}

/// [`load_for_answer`]'s statement on `dialect`'s engine: task `?1`, worker `?2`, lease `?3`.
pub(crate) fn answer_sql(dialect: Dialect) -> &'static str {
    static SQLITE: LazyLock<String> = LazyLock::new(|| answer_text(Dialect::Sqlite, false));
    static POSTGRES: LazyLock<String> = LazyLock::new(|| answer_text(Dialect::Postgres, false));
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

/// [`answer_sql`] on PostgreSQL for a batch of submissions (see [`Probe`]): `?1`, `?2` and `?3`
/// are arrays of tasks, workers and leases.
pub(crate) fn answer_many_sql() -> &'static str {
    static MANY: LazyLock<String> = LazyLock::new(|| answer_text(Dialect::Postgres, true));
    &MANY
}

/// The joined read a submission starts with, for PostgreSQL's writer sessions to make for a
/// whole batch of submissions at once.
pub(crate) fn probe(task: &TaskId, worker: &WorkerId, lease: Option<LeaseId>) -> Probe {
    Probe {
        one: answer_sql(Dialect::Postgres),
        many: answer_many_sql(),
        args: vec![
            Some(task.to_string()),
            Some(worker.as_str().to_owned()),
            lease.map(|l| l.to_string()),
        ],
    }
}

/// The text of [`answer_sql`] (`many`: of [`answer_many_sql`]).
fn answer_text(dialect: Dialect, many: bool) -> String {
    // The answers so far, for the one that completes the count: on PostgreSQL a statement
    // fewer for it; SQLite reads them when it decides, with nothing to save.
    let votes = match dialect {
        Dialect::Postgres => {
            "CASE WHEN task.submissions + 1 >= task.required THEN
                 (SELECT CAST(json_agg(json_build_array(v.label, CAST(v.confidence AS TEXT))
                                       ORDER BY v.id) AS TEXT)
                  FROM submission v WHERE v.task_id = task.id)
             END"
        }
        Dialect::Sqlite => "NULL",
    };
    // Whether the task row locked is the one this statement's snapshot has: a row another
    // transaction changed and committed while this one waited for its lock is read again as
    // it now is, but the rows joined to it (and the answers) are still as the snapshot had them.
    let fresh = match dialect {
        Dialect::Postgres => "task.xmin = (SELECT t.xmin FROM task t WHERE t.id = task.id)",
        Dialect::Sqlite => "1",
    };
    let lock = dialect.lock_suffix();
    if !many {
        return format!(
            "SELECT {TASK_COLUMNS}, {votes}, {fresh}, s.lease_id, s.label, s.embedding, s.token_ids,
                    l.task_id, l.worker_id, l.state
             FROM task
             LEFT JOIN submission s ON s.task_id = task.id AND s.worker_id = ?2
             LEFT JOIN lease l ON l.id = ?3
             WHERE task.id = ?1{lock}"
        );
    }
    // Each request in turn, in the order the writer sorts its batches by (their keys, as
    // bytes), so the task rows are locked in that order; each row found by its key (lateral
    // subqueries: a plan made while the tables are empty would otherwise join by hashing
    // whole tables, and keep doing so).
    format!(
        "SELECT task.*, s.lease_id, s.label, s.embedding, s.token_ids,
                l.task_id, l.worker_id, l.state, r.i
         FROM (SELECT * FROM unnest(CAST(?1 AS TEXT[]), CAST(?2 AS TEXT[]), CAST(?3 AS TEXT[]))
                   WITH ORDINALITY AS u (task_id, worker_id, lease_id, i)
               ORDER BY task_id COLLATE \"C\", i) r
         JOIN LATERAL (SELECT {TASK_COLUMNS}, {votes}, {fresh} FROM task
                       WHERE task.id = r.task_id{lock}) task ON TRUE
         LEFT JOIN LATERAL (SELECT lease_id, label, embedding, token_ids FROM submission
                            WHERE task_id = r.task_id AND worker_id = r.worker_id
                            OFFSET 0) s ON TRUE
         LEFT JOIN LATERAL (SELECT task_id, worker_id, state FROM lease
                            WHERE id = r.lease_id OFFSET 0) l ON TRUE"
    )
}

/// Lease `lease_id`'s task, holder and state, if there is such a lease.
fn named_lease(conn: &dyn Sql, lease_id: &LeaseId) -> Result<Option<Named>, CoreError> {
    Ok(conn
        .prepare_cached("SELECT task_id, worker_id, state FROM lease WHERE id = ?1")?
        .query_row([lease_id.to_string()], |r| {
            Ok((parsed(r, 0)?, parsed(r, 1)?, parsed(r, 2)?))
        })
        .optional()?)
}

/// The state of lease `lease_id` and, for a verify lease (only generative tasks have them), the
/// scoring row it names.
///
/// # Errors
/// [`CoreError::NoLease`] for an unknown lease; [`CoreError::LeaseMismatch`] when it is not
/// `worker`'s lease on `task`.
pub(crate) fn held_lease(
    conn: &dyn Sql,
    lease_id: &LeaseId,
    task_row: &TaskRow,
    worker: &WorkerId,
) -> Result<(LeaseState, Option<verify::LeasedRow>), CoreError> {
    let named = named_lease(conn, lease_id)?;
    check_lease(conn, lease_id, named, task_row, worker)
}

/// [`held_lease`] of a lease already read (`named`).
fn check_lease(
    conn: &dyn Sql,
    lease_id: &LeaseId,
    named: Option<Named>,
    task_row: &TaskRow,
    worker: &WorkerId,
) -> Result<(LeaseState, Option<verify::LeasedRow>), CoreError> {
    let task = &task_row.id;
    let Some((lease_task, holder, state)) = named else {
        return Err(CoreError::NoLease(*lease_id));
    };
    if lease_task != *task || holder != *worker {
        return Err(CoreError::LeaseMismatch {
            lease: *lease_id,
            holder,
            task: lease_task,
        });
    }
    let row = match task_row.generation {
        Some(_) => verify::row_of_lease(conn, lease_id)?,
        None => None,
    };
    Ok((state, row))
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

/// Decides a label task under its vote rule, once its `required` answers are in. Only the
/// submission that completes the required count calls it, so a task is decided exactly once:
/// - decided: the winning label is final, the answers in its group agree and earn a point each;
/// - no quorum yet: the task is `inconclusive` and needs one more answer from a distinct worker;
/// - no quorum at `max_answers`: the task fails with `no_consensus`, nobody earns a point.
///
/// Returns the outcome and, when decided, the final label.
fn finalize(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task: &TaskRow,
    answers: Option<Vec<(String, f64)>>,
) -> Result<(Outcome, Option<String>), CoreError> {
    let tid = task.id.to_string();
    let votes: Vec<(String, f64)> = match answers {
        Some(votes) => votes,
        None => conn
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
        undecided(conn, ctx, task, outcome, votes.len(), decision.votes)?;
        return Ok((outcome, None));
    }
    conn.defer_merged(
        &DECIDED,
        params![tid, decision.label, decision.confidence, ctx.now],
    )?;
    let answer = Final::Label(decision.label.clone());
    finished(ctx, &task.id, answer, decision.confidence);
    Ok((Outcome::Decided, Some(decision.label)))
}

/// A vote's changes: its submission row, its lease completed, the task's counters. Arguments:
/// the submission's columns, in [`VOTE_COLUMNS`]' order. Votes of a batch on PostgreSQL are one
/// statement.
pub(crate) static VOTE: Merged = Merged {
    one: |conn, a| {
        static INSERT: LazyLock<String> = LazyLock::new(|| {
            format!(
                "INSERT INTO submission ({}) VALUES ({})",
                vote_columns(),
                numbered(1, VOTE_COLUMNS.len())
            )
        });
        let all: Vec<&dyn ToArg> = a.iter().map(|v| v as &dyn ToArg).collect();
        // Three rows of three tables: one statement on PostgreSQL.
        conn.defer_all(&[
            (&INSERT, &all),
            (
                "UPDATE lease SET state = 'completed', ended_at = ?1 WHERE id = ?2",
                &[&a[6], &a[2]],
            ),
            (
                "UPDATE task SET
                     submissions = submissions + 1,
                     active_leases = active_leases - 1
                 WHERE id = ?1",
                &[&a[0]],
            ),
        ])
    },
    // One statement for the batch's votes, joined by key (writer sessions plan without
    // sequential scans: see `WRITER_SETTINGS` in store::pg).
    many: |n| {
        let columns = vote_columns();
        let rows = typed_rows(n, &VOTE_COLUMNS.map(|(_, ty)| ty));
        format!(
            "WITH v ({columns}) AS (VALUES {rows}),
             s AS (INSERT INTO submission ({columns}) SELECT {columns} FROM v),
             l AS (UPDATE lease SET state = 'completed', ended_at = v.created_at
                   FROM v WHERE lease.id = v.lease_id)
             UPDATE task SET submissions = submissions + 1, active_leases = active_leases - 1
             FROM v WHERE task.id = v.task_id"
        )
    },
    // Each task once in a statement: the update joined to it counts one vote.
    distinct: 0,
    phase: 0,
};

/// `n` rows of parameters, numbered on from 1, the first row's cast to `types`.
fn typed_rows(n: usize, types: &[&str]) -> String {
    let w = types.len();
    let first: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("CAST(?{} AS {ty})", i + 1))
        .collect();
    let mut rows = vec![format!("({})", first.join(", "))];
    rows.extend((1..n).map(|k| format!("({})", numbered(k * w + 1, w))));
    rows.join(", ")
}

/// The submission columns a vote stores ([`VOTE`]'s arguments, in this order), with their
/// PostgreSQL types.
const VOTE_COLUMNS: [(&str, &str); 12] = [
    ("task_id", "TEXT"),
    ("worker_id", "TEXT"),
    ("lease_id", "TEXT"),
    ("label", "TEXT"),
    ("confidence", "DOUBLE PRECISION"),
    ("model", "TEXT"),
    ("created_at", "BIGINT"),
    ("embedding", "BYTEA"),
    ("token_ids", "BYTEA"),
    ("text", "TEXT"),
    ("logprobs", "BYTEA"),
    ("model_hash", "TEXT"),
];

/// [`VOTE_COLUMNS`]' names, as a column list.
fn vote_columns() -> String {
    VOTE_COLUMNS.map(|(name, _)| name).join(", ")
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
fn with_vote(json: &str, sub: &Submission) -> Result<Vec<(String, f64)>, CoreError> {
    let bad = |e: String| CoreError::Bug(format!("the answers read with a submission: {e}"));
    let earlier: Vec<(String, String)> =
        serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut votes = earlier
        .into_iter()
        .map(|(label, confidence)| {
            Ok((label, confidence.parse().map_err(|e| bad(format!("{e}")))?))
        })
        .collect::<Result<Vec<(String, f64)>, CoreError>>()?;
    votes.push((sub.answer.label().to_owned(), sub.confidence));
    Ok(votes)
}

/// A round of answers without a quorum: one more replica (the task is `inconclusive`, open to
/// workers that have not answered it), or, at `max_answers`, failure with `no_consensus`. The
/// answers are kept and nobody earns a point.
fn undecided(
    conn: &dyn Sql,
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
        return fail_task(conn, ctx, task, FailureReason::NoConsensus, message);
    }
    conn.prepare_cached("UPDATE task SET required = required + 1, inconclusive = 1 WHERE id = ?1")?
        .execute([task.id.to_string()])?;
    super::rewind_cursors(conn, &task.id)?;
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
fn finalize_vectors(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task: &TaskRow,
    threshold: f64,
) -> Result<Outcome, CoreError> {
    let tid = task.id.to_string();
    let rows: Vec<(i64, Vec<u8>, f64)> = conn
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
        undecided(conn, ctx, task, outcome, rows.len(), decision.members.len())?;
        return Ok(outcome);
    }
    conn.prepare_cached(
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
    let mut mark = conn.prepare_cached("UPDATE submission SET agreed = ?1 WHERE id = ?2")?;
    for (i, (id, _, _)) in rows.iter().enumerate() {
        mark.execute(params![decision.members.contains(&i), id])?;
    }
    award_points(conn, &tid)?;
    finished(
        ctx,
        &task.id,
        Final::Vector(decision.vector),
        decision.confidence,
    );
    Ok(Outcome::Decided)
}

/// Decides a generative task by exact match: when a strict majority of its answers are the same
/// token ids, they are final and their workers agree and earn a point each. Otherwise (and
/// always in `generate_once` mode) the answers go to cross-scoring ([`verify::start`]); nothing
/// is finalized on a guess: with nobody to score them the task fails with `no_consensus`, its
/// answers kept.
///
/// Returns the final text, or `None` when the task failed.
fn finalize_generated(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task: &TaskRow,
) -> Result<Option<String>, CoreError> {
    let tid = task.id.to_string();
    let rows: Vec<(i64, Vec<u8>, String, f64)> = conn
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
        // Different answers (or one to check) go to cross-scoring by the other workers.
        if verify::start(conn, ctx, task)? {
            return Ok(None);
        }
        let distinct = distinct_count(&ballot);
        let message = format!(
            "no consensus: no majority of the {} answers is identical ({distinct} distinct \
             token sequences); the answers are kept",
            rows.len()
        );
        fail_task(conn, ctx, task, FailureReason::NoConsensus, message)?;
        return Ok(None);
    };
    let (_, ids, text, _) = &rows[members[0]];
    let confidence = members.iter().map(|&i| rows[i].3).sum::<f64>() / members.len() as f64;
    conn.prepare_cached(
        "UPDATE task SET status = 'finalized', final_token_ids = ?1, final_text = ?2,
             final_confidence = ?3, finished_at = ?4
         WHERE id = ?5",
    )?
    .execute(params![ids, text, confidence, ctx.now, tid])?;
    let mut mark = conn.prepare_cached("UPDATE submission SET agreed = ?1 WHERE id = ?2")?;
    for (i, (id, _, _, _)) in rows.iter().enumerate() {
        mark.execute(params![members.contains(&i), id])?;
    }
    award_points(conn, &tid)?;
    let answer = Final::Generated(blob_to_ids(ids), text.clone());
    finished(ctx, &task.id, answer, confidence);
    Ok(Some(text.clone()))
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
pub(crate) fn award_points(conn: &dyn Sql, tid: &str) -> Result<(), CoreError> {
    conn.prepare_cached(&award_sql(conn.dialect(), "agreed = 1"))?
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

/// The lease `worker` holds on `task`, if any.
pub(crate) fn live_lease(
    conn: &dyn Sql,
    task: &TaskId,
    worker: &WorkerId,
) -> Result<Option<LeaseId>, CoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM lease WHERE task_id = ?1 AND worker_id = ?2 AND state = 'active'",
        )?
        .query_row(params![task.to_string(), worker.as_str()], |r| parsed(r, 0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use crate::ops::{load_task, sweep};
    use protocol::generation::{GeneratedAnswer, VerifyMode};
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
        let task = load_task(&conn, &t).expect("task");
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
        let task = load_task(&conn, &t).expect("task");
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
        let task = load_task(&conn, &t).expect("task");
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
        let task = load_task(&conn, &t).expect("task");
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
        let task = load_task(&conn, &t).expect("task");
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
        let live: Vec<String> = (&conn as &dyn Sql)
            .prepare("SELECT worker_id FROM lease WHERE state = 'active'")
            .expect("q")
            .query_map((), |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
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
        let task = load_task(&conn, &lost.task_id).expect("task");
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
        let task = load_task(&conn, &agreed).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.final_token_ids.as_deref(), Some(&[5, 6, 2][..]));
        assert_eq!(task.final_text.as_deref(), Some("[5, 6, 2]"));
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (1, 0, 1)
        );

        // The split is not failed on a guess: the other workers score each candidate. The
        // model's true greedy answer is b's.
        let task = load_task(&conn, &split).expect("task");
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
        let task = load_task(&conn, &split).expect("task");
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
        SubmitRequest {
            verification: Some(Verification {
                logprobs: vec![-0.1; ids.len()],
                gaps,
                passed,
                exact: false,
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
            load_task(&conn, &t).expect("task").view().status,
            TaskStatus::Verifying
        );
        // Its author never scores it; b and c refuse it.
        assert_eq!(score_all(&mut conn, "a", &truth, Honesty::Honest), 0);
        assert_eq!(score_all(&mut conn, "b", &truth, Honesty::Honest), 1);
        assert_eq!(score_all(&mut conn, "c", &truth, Honesty::Honest), 1);
        let task = load_task(&conn, &t).expect("task");
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
        let task = load_task(&conn, &t).expect("task");
        assert_eq!(task.status, TaskStatus::Finalized);
        assert_eq!(task.final_token_ids.as_deref(), Some(&truth[..]));
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
        let p = crate::ops::DEFAULT_TRAP_RATE;
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
                let l = crate::ops::lease::run(&tx, &mut c, req)
                    .expect("lease")
                    .leases;
                tx.commit().expect("commit");
                let Some(l) = l.first() else { break };
                leases += 1;
                let req = scored(l, "liar", &truth, Honesty::PassEverything);
                send(&mut conn, 5, &l.task_id, req).0.expect("stored");
                let missed: i64 = conn
                    .query_row(
                        "SELECT COALESCE((SELECT traps_missed FROM worker_score
                                          WHERE worker_id = 'liar'), 0)",
                        (),
                        |r| r.get(0),
                    )
                    .expect("missed");
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
            conn.query_row(
                "SELECT traps_caught, traps_missed FROM worker_score WHERE worker_id = ?1",
                [w],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("score")
        };
        assert_eq!((count("b"), count("c")), ((0, 1), (1, 0)));
        assert_eq!((points(&conn, "b"), points(&conn, "c")), (-1, 0));
        // The real slots are still open: the task is not decided by traps.
        assert_eq!(
            load_task(&conn, &t).expect("task").view().status,
            TaskStatus::Verifying
        );
        assert_eq!(
            score_all(&mut conn, "b", &truth, Honesty::PassEverything),
            1
        );
        assert_eq!(score_all(&mut conn, "c", &truth, Honesty::Honest), 1);
        assert_eq!(
            load_task(&conn, &t).expect("task").status,
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
        let again = send(&mut conn, 4, &t, good).0.expect("resend");
        assert!(again.duplicate, "a resend is acknowledged as a duplicate");
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
        let task = load_task(&conn, &t).expect("task");
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

    /// Waits until a session of `server` waits for a lock.
    fn until_one_waits(server: &PgServer) {
        let mut watch = postgres::Client::connect(server.url(), postgres::NoTls).expect("connect");
        for _ in 0..1_500 {
            let waiting: i64 = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .expect("activity")
                .get(0);
            if waiting > 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("no session waited for a lock within 30 s");
    }

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
        let mut other = postgres::Client::connect(server.url(), postgres::NoTls).expect("connect");
        let mut sweep = other.transaction().expect("tx");
        sweep
            .execute(
                "UPDATE lease SET state = 'expired', ended_at = 2 WHERE id = $1",
                &[&l.lease_id.to_string()],
            )
            .expect("expire");
        sweep
            .execute(
                "UPDATE task SET active_leases = active_leases - 1, attempts = attempts + 1
                 WHERE id = $1",
                &[&t.to_string()],
            )
            .expect("count");
        let voter = std::thread::spawn(move || {
            let mut c = ctx(3);
            let r = conn.write(|db| run(db, &mut c, &t, answer(&l, "a", "positive", 0.9)));
            (r, conn)
        });
        until_one_waits(&server);
        sweep.commit().expect("commit");
        let (r, conn) = voter.join().expect("voter");
        assert!(
            matches!(r, Err(CoreError::LeaseExpired { .. })),
            "a vote on an expired lease: {r:?}"
        );
        let task = load_task(&conn, &t).expect("task");
        assert_eq!((task.active_leases, task.submissions), (0, 0));
    }
}
