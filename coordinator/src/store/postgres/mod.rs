//! PostgreSQL's side of the store: its statements where they differ from SQLite's.

mod conn;
mod exec;
mod pipe;
pub(crate) mod store;
pub(crate) mod vote;

pub(crate) use exec::{pg_value, StmtCache};
pub(crate) use pipe::PgPipe;
pub(crate) use store::{PgStore, Timeouts, Writer, SWEEP_LOCK};

use super::rows::TaskRow;
use super::sql::{Result, Sql};
use super::tx::views::StarvedSql;
use super::tx::{
    adds, admin, leases, scores, tasks, votes, Adds, Admin, AnswerContext, Credit, Exec, Leases,
    NewVote, OpenTask, Scores, Scoring, Tasks, Truth, Views, Votes,
};
use protocol::{LeaseId, TaskId, TaskType, WorkerId};
use std::sync::LazyLock;

/// A PostgreSQL transaction, as the rules see it (see [`super::tx::Tx`]).
pub(crate) struct Tx<'a>(pub(crate) &'a dyn Sql);

impl Exec for Tx<'_> {
    fn sql(&self) -> &dyn Sql {
        self.0
    }
}

impl Tasks for Tx<'_> {
    /// Locked until the transaction ends: another coordinator's transaction that would change
    /// the row waits; inserting a lease or submission that references it (a key-share lock)
    /// does not.
    fn task(&self, id: &TaskId) -> Result<Option<TaskRow>> {
        tasks::task_locked(self, id, LOCK)
    }

    /// The sweep's advisory lock, held to the end of the transaction; its holder folds the
    /// counters appended to `score_delta` into `worker_score`, score rows in worker order.
    fn lead_sweep(&self) -> Result<bool> {
        let mine: bool =
            self.0
                .query_row("SELECT pg_try_advisory_xact_lock($1)", [SWEEP_LOCK], |r| {
                    r.get(0)
                })?;
        if mine {
            self.0.execute(
                "WITH d AS (DELETE FROM score_delta
                            RETURNING worker_id, points, traps_caught, traps_missed,
                                      gold_answered, gold_right)
                 INSERT INTO worker_score (worker_id, points, traps_caught, traps_missed,
                                           gold_answered, gold_right)
                 SELECT worker_id, CAST(SUM(points) AS BIGINT),
                        CAST(SUM(traps_caught) AS BIGINT), CAST(SUM(traps_missed) AS BIGINT),
                        CAST(SUM(gold_answered) AS BIGINT), CAST(SUM(gold_right) AS BIGINT)
                 FROM d GROUP BY worker_id ORDER BY worker_id
                 ON CONFLICT (worker_id) DO UPDATE SET
                     points = worker_score.points + excluded.points,
                     traps_caught = worker_score.traps_caught + excluded.traps_caught,
                     traps_missed = worker_score.traps_missed + excluded.traps_missed,
                     gold_answered = worker_score.gold_answered + excluded.gold_answered,
                     gold_right = worker_score.gold_right + excluded.gold_right",
                (),
            )?;
        }
        Ok(mine)
    }
}

impl Adds for Tx<'_> {
    fn gold_items_sql(&self) -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            adds::gold_items_sql("SELECT json_array_elements_text(CAST($2 AS json))")
        });
        &SQL
    }

    /// A transaction-scoped advisory lock on the batch id's hash.
    fn lock_batch(&self, id: &str) -> Result<()> {
        self.0
            .query_row("SELECT pg_advisory_xact_lock(hashtext($1))", [id], |_| {
                Ok(())
            })
    }
}

impl Leases for Tx<'_> {
    /// Skipping a row another transaction holds (a lease never waits for another session's
    /// batch to commit, so it never closes a cycle of waits).
    fn hinted(
        &self,
        worker: &WorkerId,
        task: &TaskId,
        model_hash: Option<&str>,
    ) -> Result<Option<OpenTask>> {
        leases::hinted_with(self, CLAIM, worker, task, model_hash)
    }

    /// With several writers a cursor is a hint: a walk passes over rows other transactions hold
    /// and over tasks whose rows committed out of FIFO order, and a cursor moved back by one
    /// coordinator's session may be moved forward again by another's. So a cursor is followed
    /// for [`CURSOR_REFRESH_MS`] after its walk last started from the head; and a walk whose
    /// cursor leads to too few tasks takes the rest from the head (the rows it locked come
    /// again: they are this transaction's), at most every [`HEAD_WALK_MS`] per worker and type
    /// (a walk from the head passes over every open task the worker holds or has answered,
    /// thousands when the other workers lag behind it). Such a walk counts as one from the
    /// head, whatever it finds.
    fn open_tasks(
        &self,
        now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        model_hash: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenTask>> {
        let sql = walk_sql();
        let cursor = leases::cursor(self, worker, task_type, now - CURSOR_REFRESH_MS)?;
        let after = cursor.map_or(0, |c| c.0);
        let mut rows = leases::walk(self, sql, worker, task_type, model_hash, limit, after)?;
        let head_due = cursor.is_some_and(|(_, since)| since <= now - HEAD_WALK_MS);
        if head_due && rows.len() < limit {
            self.0
                .prepare_cached(
                    "UPDATE lease_cursor SET since = $3 WHERE worker_id = $1 AND type = $2",
                )?
                .defer(crate::params![worker.as_str(), task_type.as_str(), now])?;
            rows.extend(leases::walk(
                self, sql, worker, task_type, model_hash, limit, 0,
            )?);
            rows.sort_by_key(|c| c.seq);
            rows.dedup_by_key(|c| c.seq);
            rows.truncate(limit);
        }
        Ok(rows)
    }

    fn advance_cursor(
        &self,
        now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        last: i64,
    ) -> Result<()> {
        leases::advance(self, now, worker, task_type, last, now - CURSOR_REFRESH_MS)
    }
}

/// How long a lease cursor is followed before a walk starts from the head again (see
/// [`Leases::open_tasks`]): tasks a cursor passed reach the worker within this long even while
/// it always has newer work.
pub(crate) const CURSOR_REFRESH_MS: i64 = 2_000;

/// A walk whose cursor leads to too few tasks takes the rest from the head at most this often
/// per worker and type.
pub(crate) const HEAD_WALK_MS: i64 = 500;

/// [`award_sql`] for the submissions flagged as agreeing, made once.
static AWARD_AGREEING: LazyLock<String> = LazyLock::new(|| award_sql("agreed = 1"));

/// The statement that appends one point for each worker whose submission on task `$1` meets
/// `agreeing` (a condition on the submission): to `score_delta`, no lock on a score row (see
/// [`Scores`]).
pub(crate) fn award_sql(agreeing: &str) -> String {
    format!(
        "INSERT INTO score_delta (worker_id, points)
         SELECT worker_id, 1 FROM submission WHERE task_id = $1 AND {agreeing}"
    )
}

/// What a select of the task rows this transaction will decide on ends with: another
/// coordinator's transaction that would change the row waits until this one ends; inserting a
/// lease or submission that references it, which takes only a key-share lock, does not; rows of
/// tables joined to it are not locked.
pub(crate) const LOCK: &str = " FOR NO KEY UPDATE OF task";

/// What a claim on rows appends to its `SELECT`: a lock on each row returned, passing over rows
/// another transaction holds.
const CLAIM: &str = " FOR NO KEY UPDATE SKIP LOCKED";

/// The walk's statement (see [`leases::walk`]): skipping (and locking) rows other coordinators'
/// transactions hold.
pub(crate) fn walk_sql() -> &'static str {
    static WALK: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT seq, id, {} FROM task
             WHERE type = $2 AND {} AND seq > $5
             ORDER BY seq LIMIT $3{CLAIM}",
            leases::OPEN_TASK_COLUMNS,
            leases::OPEN_FOR_WORKER
        )
    });
    &WALK
}

impl Votes for Tx<'_> {
    fn answer_context(
        &self,
        task: &TaskId,
        worker: &WorkerId,
        lease: Option<LeaseId>,
    ) -> Result<Option<AnswerContext>> {
        votes::read_context(self, vote::answer_sql(), task, worker, lease)
    }

    /// Merged with the batch's other votes in a writer session.
    fn record_vote(&self, v: &NewVote<'_>) -> Result<()> {
        v.with_args(|args| self.0.defer_merged(&vote::VOTE, args))
    }

    /// Merged with the batch's other decisions in a writer session.
    fn decide_label(&self, task: &TaskId, label: &str, confidence: f64, now: i64) -> Result<()> {
        self.0.defer_merged(
            &vote::DECIDED,
            crate::params![task.to_string(), label, confidence, now],
        )
    }
}

impl Scoring for Tx<'_> {}

impl Truth for Tx<'_> {}

impl Views for Tx<'_> {
    fn starved_sql(&self) -> &'static StarvedSql {
        static SQL: LazyLock<StarvedSql> = LazyLock::new(|| {
            StarvedSql::new("", "SELECT json_array_elements_text(CAST($3 AS json))")
        });
        &SQL
    }
}

impl Admin for Tx<'_> {
    fn reset(&self) -> Result<()> {
        self.0.execute_batch(admin::RESET)
    }
}

impl Scores for Tx<'_> {
    fn award_agreeing(&self, task: &TaskId) -> Result<()> {
        self.0
            .prepare_cached(&AWARD_AGREEING)?
            .defer([task.to_string()])
    }

    /// Appended to `score_delta`: no lock on a score row.
    fn credit(&self, credits: &mut [(WorkerId, Credit)]) -> Result<()> {
        scores::credit_each(
            self,
            "INSERT INTO score_delta (worker_id, points, traps_caught, traps_missed,
                                      gold_answered, gold_right)
             VALUES ($1, $2, $3, $4, $5, $6)",
            credits,
        )
    }
}
