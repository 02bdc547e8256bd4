//! The vote: what a submission is decided from (read in one statement), the vote itself, and
//! the decisions on a task's answers. A vote and a label decision are each engine's own:
//! SQLite runs their statements, PostgreSQL merges a batch's into one statement.

use super::tasks::NamedLease;
use super::Exec;
use crate::store::blob_to_vector;
use crate::store::rows::{parsed, TaskRow, TASK_COLUMNS, TASK_COLUMN_COUNT};
use crate::store::sql::{numbered, params, OptionalExtension, Result, ToArg};
use protocol::{LeaseId, TaskId, WorkerId};
use std::sync::LazyLock;

/// A worker's stored answer on a task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Earlier {
    /// The lease it came on.
    pub lease: LeaseId,
    /// Its label (empty for other kinds).
    pub label: String,
    /// Its vector, as stored.
    pub embedding: Option<Vec<u8>>,
    /// Its token ids, as stored.
    pub token_ids: Option<Vec<u8>>,
}

/// What a submission is decided from, read in one statement.
#[derive(Debug, Clone)]
pub(crate) struct AnswerContext {
    /// The task, its row locked on PostgreSQL.
    pub task: TaskRow,
    /// The worker's earlier answer on it.
    pub earlier: Option<Earlier>,
    /// The lease the submission names, if it names one.
    pub named: Option<NamedLease>,
    /// On PostgreSQL, when this answer completes the required count: the task's answers so
    /// far (label and confidence), in the order they came.
    pub votes: Option<Vec<(String, f64)>>,
}

/// An answer to an `embedding` task, as deciding reads it.
#[derive(Debug, Clone)]
pub(crate) struct VectorAnswer {
    /// The submission's row id.
    pub id: i64,
    /// The vector.
    pub vector: Vec<f32>,
    /// Its confidence.
    pub confidence: f64,
}

/// An answer to a generative task, as deciding reads it.
#[derive(Debug, Clone)]
pub(crate) struct TokenAnswer {
    /// The submission's row id.
    pub id: i64,
    /// Its token ids, as stored (compared as bytes).
    pub token_ids: Vec<u8>,
    /// Their text.
    pub text: String,
    /// Its confidence.
    pub confidence: f64,
}

/// One vote to store: the submission's columns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewVote<'a> {
    /// The task.
    pub task: &'a TaskId,
    /// Who answers.
    pub worker: &'a WorkerId,
    /// The lease it answers on (completed by the vote).
    pub lease: &'a LeaseId,
    /// Its label (empty for other kinds).
    pub label: &'a str,
    /// Its confidence.
    pub confidence: f64,
    /// The model that answered.
    pub model: Option<&'a str>,
    /// When.
    pub at: i64,
    /// Its vector, as stored.
    pub embedding: Option<&'a [u8]>,
    /// Its token ids, as stored.
    pub token_ids: Option<&'a [u8]>,
    /// Their text.
    pub text: Option<&'a str>,
    /// Their log-probabilities, as stored.
    pub logprobs: Option<&'a [u8]>,
    /// The model content that answered.
    pub model_hash: Option<&'a str>,
    /// Where each generated token's text ends, as stored.
    pub token_ends: Option<&'a [u8]>,
    /// How many tokens the model read, if the worker says.
    pub input_tokens: Option<u32>,
}

/// The vote and the decisions.
pub(crate) trait Votes: Exec {
    /// What a submission of `worker` on `task` (naming `lease`) is decided from; `None` for an
    /// unknown task.
    fn answer_context(
        &self,
        task: &TaskId,
        worker: &WorkerId,
        lease: Option<LeaseId>,
    ) -> Result<Option<AnswerContext>>;

    /// Whether `task` already counts an answer of model content `model_hash`.
    fn model_counted(&self, task: &TaskId, model_hash: Option<&str>) -> Result<bool> {
        self.sql()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM submission WHERE task_id = $1 AND model_hash = $2)",
            )?
            .query_row(params![task.to_string(), model_hash], |r| r.get(0))
    }

    /// Stores a vote: its submission row, its lease completed, the task's counters.
    fn record_vote(&self, v: &NewVote<'_>) -> Result<()>;

    /// A label task's answers, label and confidence, in the order they came.
    fn label_answers(&self, task: &TaskId) -> Result<Vec<(String, f64)>> {
        self.sql()
            .prepare_cached(
                "SELECT label, confidence FROM submission WHERE task_id = $1 ORDER BY id",
            )?
            .query_map([task.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// A label task decided: its final label and confidence, the agreement flags, a point to
    /// each worker whose answer is `label`.
    fn decide_label(&self, task: &TaskId, label: &str, confidence: f64, now: i64) -> Result<()>;

    /// A round without a quorum: the task needs one more answer, from a distinct worker.
    fn mark_inconclusive(&self, task: &TaskId) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET required = required + 1, inconclusive = 1 WHERE id = $1",
            )?
            .execute([task.to_string()])?;
        Ok(())
    }

    /// An `embedding` task's answers, in the order they came.
    fn vector_answers(&self, task: &TaskId) -> Result<Vec<VectorAnswer>> {
        self.sql()
            .prepare_cached(
                "SELECT id, embedding, confidence FROM submission WHERE task_id = $1 ORDER BY id",
            )?
            .query_map([task.to_string()], |r| {
                Ok(VectorAnswer {
                    id: r.get(0)?,
                    vector: blob_to_vector(&r.get::<_, Vec<u8>>(1)?),
                    confidence: r.get(2)?,
                })
            })?
            .collect()
    }

    /// An `embedding` task decided on `vector` (stored as `blob`).
    fn finalize_vector(&self, task: &TaskId, blob: &[u8], confidence: f64, now: i64) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET status = 'finalized', final_embedding = $1,
                     final_confidence = $2, finished_at = $3, inconclusive = 0
                 WHERE id = $4",
            )?
            .execute(params![blob, confidence, now, task.to_string()])?;
        Ok(())
    }

    /// A generative task's answers, in the order they came.
    fn token_answers(&self, task: &TaskId) -> Result<Vec<TokenAnswer>> {
        self.sql()
            .prepare_cached(
                "SELECT id, token_ids, text, confidence FROM submission
                 WHERE task_id = $1 ORDER BY id",
            )?
            .query_map([task.to_string()], |r| {
                Ok(TokenAnswer {
                    id: r.get(0)?,
                    token_ids: r.get(1)?,
                    text: r.get(2)?,
                    confidence: r.get(3)?,
                })
            })?
            .collect()
    }

    /// A generative task decided on token ids `ids` (as stored) and their text, by exact match
    /// or by cross-scoring (which it ends).
    fn finalize_tokens(
        &self,
        task: &TaskId,
        ids: &[u8],
        text: &str,
        confidence: f64,
        now: i64,
    ) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET status = 'finalized', verifying = 0, final_token_ids = $1,
                     final_text = $2, final_confidence = $3, finished_at = $4
                 WHERE id = $5",
            )?
            .execute(params![ids, text, confidence, now, task.to_string()])?;
        Ok(())
    }

    /// Sets each submission's agreement with the consensus: `(row id, agreed)`.
    fn mark_agreed(&self, flags: &[(i64, bool)]) -> Result<()> {
        super::set_flags(
            self,
            "UPDATE submission SET agreed = $1 WHERE id = $2",
            flags,
        )
    }
}

/// [`Votes::answer_context`] with the engine's statement (see [`answer_select`]); the read is
/// made again once the task row is locked when the first read's snapshot was older than it.
pub(crate) fn read_context<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    task: &TaskId,
    worker: &WorkerId,
    lease: Option<LeaseId>,
) -> Result<Option<AnswerContext>> {
    match read_context_once(s, sql, task, worker, lease)? {
        Some((context, true)) => Ok(Some(context)),
        // The row is locked now: read once more, in a snapshot that has what was committed.
        Some((_, false)) => Ok(read_context_once(s, sql, task, worker, lease)?.map(|c| c.0)),
        None => Ok(None),
    }
}

/// One read of [`read_context`], and whether it is fresh (its `fresh` column).
fn read_context_once<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    task: &TaskId,
    worker: &WorkerId,
    lease: Option<LeaseId>,
) -> Result<Option<(AnswerContext, bool)>> {
    // The columns after the task's (see answer_select).
    const VOTES: usize = TASK_COLUMN_COUNT;
    const FRESH: usize = VOTES + 1;
    const EARLIER: usize = FRESH + 1;
    const NAMED: usize = EARLIER + 4;
    s.sql()
        .prepare_cached(sql)?
        .query_row(
            params![
                task.to_string(),
                worker.as_str(),
                lease.map(|l| l.to_string())
            ],
            |r| {
                let earlier = if r.is_null(EARLIER)? {
                    None
                } else {
                    Some(Earlier {
                        lease: parsed(r, EARLIER)?,
                        label: r.get(EARLIER + 1)?,
                        embedding: r.get(EARLIER + 2)?,
                        token_ids: r.get(EARLIER + 3)?,
                    })
                };
                let named = if r.is_null(NAMED)? {
                    None
                } else {
                    Some(NamedLease {
                        task: parsed(r, NAMED)?,
                        worker: parsed(r, NAMED + 1)?,
                        state: parsed(r, NAMED + 2)?,
                    })
                };
                let votes: Option<String> = r.get(VOTES)?;
                let context = AnswerContext {
                    task: TaskRow::from_row(r)?,
                    votes: votes.map(|json| parse_votes(&json)).transpose()?,
                    earlier,
                    named,
                };
                Ok((context, r.get(FRESH)?))
            },
        )
        .optional()
}

/// The answers as the `votes` column of [`answer_select`] has them: JSON
/// `[[label, confidence as text], ...]`.
fn parse_votes(json: &str) -> Result<Vec<(String, f64)>> {
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| {
        crate::store::sql::Error::Conversion(TASK_COLUMN_COUNT, e)
    };
    let earlier: Vec<(String, String)> =
        serde_json::from_str(json).map_err(|e| bad(Box::new(e)))?;
    earlier
        .into_iter()
        .map(|(label, confidence)| Ok((label, confidence.parse().map_err(|e| bad(Box::new(e)))?)))
        .collect()
}

/// [`Votes::answer_context`]'s statement: task `$1`, worker `$2`, lease `$3`; after the task's
/// columns, `votes` (the answers so far, JSON, or NULL), `fresh` (whether the locked row is
/// the snapshot's), the worker's earlier answer and the named lease. The task row ends with
/// `lock`.
pub(crate) fn answer_select(votes: &str, fresh: &str, lock: &str) -> String {
    format!(
        "SELECT {TASK_COLUMNS}, {votes}, {fresh}, s.lease_id, s.label, s.embedding, s.token_ids,
                l.task_id, l.worker_id, l.state
         FROM task
         LEFT JOIN submission s ON s.task_id = task.id AND s.worker_id = $2
         LEFT JOIN lease l ON l.id = $3
         WHERE task.id = $1{lock}"
    )
}

/// The submission columns a vote stores, in [`NewVote`]'s order, with their PostgreSQL types.
pub(crate) const VOTE_COLUMNS: [(&str, &str); 14] = [
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
    ("token_ends", "BYTEA"),
    ("input_tokens", "BIGINT"),
];

/// [`VOTE_COLUMNS`]' names, as a column list.
pub(crate) fn vote_columns() -> String {
    VOTE_COLUMNS.map(|(name, _)| name).join(", ")
}

/// The submission row's insert, its arguments in [`VOTE_COLUMNS`]' order.
pub(crate) fn insert_vote_sql() -> &'static str {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO submission ({}) VALUES ({})",
            vote_columns(),
            numbered(1, VOTE_COLUMNS.len())
        )
    });
    &INSERT
}

impl NewVote<'_> {
    /// Runs `f` with the vote's values, in [`VOTE_COLUMNS`]' order.
    pub(crate) fn with_args<T>(&self, f: impl FnOnce(&[&dyn ToArg]) -> T) -> T {
        let (task, lease) = (self.task.to_string(), self.lease.to_string());
        f(&[
            &task,
            &self.worker.as_str(),
            &lease,
            &self.label,
            &self.confidence,
            &self.model,
            &self.at,
            &self.embedding,
            &self.token_ids,
            &self.text,
            &self.logprobs,
            &self.model_hash,
            &self.token_ends,
            &self.input_tokens,
        ])
    }
}
