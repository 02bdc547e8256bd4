//! PostgreSQL's side of the store: its statements where they differ from SQLite's.

use super::rows::TaskRow;
use super::sql::{Dialect, Result, Sql};
use super::tx::{
    scores, tasks, votes, AnswerContext, Credit, Exec, Scores, Scoring, Tasks, Views, Votes,
};
use protocol::{LeaseId, TaskId, WorkerId};

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
        tasks::task_locked(self, id, Dialect::Postgres.lock_suffix())
    }

    /// The sweep's advisory lock, held to the end of the transaction; its holder folds the
    /// counters appended to `score_delta` into `worker_score`, score rows in worker order.
    fn lead_sweep(&self) -> Result<bool> {
        let mine: bool = self.0.query_row(
            "SELECT pg_try_advisory_xact_lock(?1)",
            [super::pg::SWEEP_LOCK],
            |r| r.get(0),
        )?;
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

impl Votes for Tx<'_> {
    fn answer_context(
        &self,
        task: &TaskId,
        worker: &WorkerId,
        lease: Option<LeaseId>,
    ) -> Result<Option<AnswerContext>> {
        votes::read_context(self, Dialect::Postgres, task, worker, lease)
    }
}

impl Scoring for Tx<'_> {}

impl Views for Tx<'_> {}

impl Scores for Tx<'_> {
    fn award_agreeing(&self, task: &TaskId) -> Result<()> {
        self.0
            .prepare_cached(&scores::award_sql(Dialect::Postgres, "agreed = 1"))?
            .defer([task.to_string()])
    }

    /// Appended to `score_delta`: no lock on a score row.
    fn credit(&self, credits: &mut [(WorkerId, Credit)]) -> Result<()> {
        scores::credit_each(
            self,
            "INSERT INTO score_delta (worker_id, points, traps_caught, traps_missed,
                                      gold_answered, gold_right)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            credits,
        )
    }
}
