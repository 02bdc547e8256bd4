//! SQLite's side of the store: its statements where they differ from PostgreSQL's.

use super::rows::TaskRow;
use super::sql::{Dialect, Result, Sql};
use super::tx::{
    admin, leases, scores, tasks, votes, Adds, Admin, AnswerContext, Credit, Exec, Leases,
    OpenTask, Scores, Scoring, Tasks, Views, Votes,
};
use protocol::{LeaseId, TaskId, TaskType, WorkerId};

/// A SQLite transaction, as the rules see it (see [`super::tx::Tx`]).
pub(crate) struct Tx<'a>(pub(crate) &'a dyn Sql);

impl Exec for Tx<'_> {
    fn sql(&self) -> &dyn Sql {
        self.0
    }
}

impl Tasks for Tx<'_> {
    /// One writer at a time: nothing to lock.
    fn task(&self, id: &TaskId) -> Result<Option<TaskRow>> {
        tasks::task_locked(self, id, "")
    }

    /// One coordinator per file: it always sweeps, and counters are never appended.
    fn lead_sweep(&self) -> Result<bool> {
        Ok(true)
    }
}

impl Adds for Tx<'_> {
    /// One writer: nothing to hold.
    fn lock_batch(&self, _id: &str) -> Result<()> {
        Ok(())
    }
}

impl Leases for Tx<'_> {
    fn hinted(
        &self,
        worker: &WorkerId,
        task: &TaskId,
        model_hash: Option<&str>,
    ) -> Result<Option<OpenTask>> {
        leases::hinted_with(self, "", worker, task, model_hash)
    }

    /// Through the open-task index, by name, from an exact cursor.
    fn open_tasks(
        &self,
        _now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        model_hash: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenTask>> {
        let after = leases::cursor(self, worker, task_type, i64::MIN)?.map_or(0, |c| c.0);
        leases::walk(
            self,
            &walk_sql(),
            worker,
            task_type,
            model_hash,
            limit,
            after,
        )
    }

    fn advance_cursor(
        &self,
        now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        last: i64,
    ) -> Result<()> {
        leases::advance(self, now, worker, task_type, last, i64::MIN)
    }
}

/// The walk's statement (see [`leases::walk`]): through the open-task index, by name, so a
/// plan change is an error, not a slow scan.
pub(crate) fn walk_sql() -> String {
    format!(
        "SELECT seq, id, text, labels, generation FROM task INDEXED BY task_open
         WHERE type = ?2 AND {} AND seq > ?5
         ORDER BY seq LIMIT ?3",
        leases::OPEN_FOR_WORKER
    )
}

impl Votes for Tx<'_> {
    fn answer_context(
        &self,
        task: &TaskId,
        worker: &WorkerId,
        lease: Option<LeaseId>,
    ) -> Result<Option<AnswerContext>> {
        votes::read_context(self, Dialect::Sqlite, task, worker, lease)
    }
}

impl Scoring for Tx<'_> {}

impl Views for Tx<'_> {}

impl Admin for Tx<'_> {
    /// The connection's own lease cursors go too: what they remember is only valid while its
    /// connection is the store's only writer.
    fn reset(&self) -> Result<()> {
        self.0.execute_batch(admin::RESET)?;
        self.0.execute_batch("DELETE FROM temp.lease_cursor;")
    }
}

impl Scores for Tx<'_> {
    fn award_agreeing(&self, task: &TaskId) -> Result<()> {
        self.0
            .prepare_cached(&scores::award_sql(Dialect::Sqlite, "agreed = 1"))?
            .defer([task.to_string()])
    }

    /// In place, in `worker_score`.
    fn credit(&self, credits: &mut [(WorkerId, Credit)]) -> Result<()> {
        scores::credit_each(
            self,
            "INSERT INTO worker_score (worker_id, points, traps_caught, traps_missed,
                                       gold_answered, gold_right)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (worker_id) DO UPDATE SET
                 points = worker_score.points + excluded.points,
                 traps_caught = worker_score.traps_caught + excluded.traps_caught,
                 traps_missed = worker_score.traps_missed + excluded.traps_missed,
                 gold_answered = worker_score.gold_answered + excluded.gold_answered,
                 gold_right = worker_score.gold_right + excluded.gold_right",
            credits,
        )
    }
}
