//! SQLite's side of the store: its statements where they differ from PostgreSQL's.

use super::rows::TaskRow;
use super::sql::{Dialect, Result, Sql};
use super::tx::{
    scores, tasks, votes, AnswerContext, Credit, Exec, Scores, Scoring, Tasks, Views, Votes,
};
use protocol::{LeaseId, TaskId, WorkerId};

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
