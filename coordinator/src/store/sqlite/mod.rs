//! SQLite's side of the store: its statements where they differ from PostgreSQL's.

mod exec;
pub(crate) mod group;
pub(crate) mod schema;

use super::rows::TaskRow;
use super::sql::{Result, Sql};
use super::tx::views::StarvedSql;
use super::tx::{
    adds, admin, leases, scores, tasks, votes, Adds, Admin, AnswerContext, Credit, Exec, Leases,
    NewVote, OpenTask, Scores, Scoring, Tasks, Truth, Views, Votes,
};
use protocol::{LeaseId, TaskId, TaskType, WorkerId};
use std::sync::LazyLock;

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
    fn gold_items_sql(&self) -> &'static str {
        static SQL: LazyLock<String> =
            LazyLock::new(|| adds::gold_items_sql("SELECT value FROM json_each($2)"));
        &SQL
    }

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
            walk_sql(),
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
pub(crate) fn walk_sql() -> &'static str {
    static WALK: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT seq, id, {} FROM task INDEXED BY task_open
             WHERE type = $2 AND {} AND seq > $5
             ORDER BY seq LIMIT $3",
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
        // The answers so far are read when the task is decided: nothing to save here.
        static ANSWER: LazyLock<String> = LazyLock::new(|| votes::answer_select("NULL", "1", ""));
        votes::read_context(self, &ANSWER, task, worker, lease)
    }

    fn record_vote(&self, v: &NewVote<'_>) -> Result<()> {
        v.with_args(|a| {
            self.0.prepare_cached(votes::insert_vote_sql())?.defer(a)?;
            self.0
                .prepare_cached(
                    "UPDATE lease SET state = 'completed', ended_at = $1 WHERE id = $2",
                )?
                .defer([a[6], a[2]])?;
            self.0
                .prepare_cached(
                    "UPDATE task SET submissions = submissions + 1,
                         active_leases = active_leases - 1
                     WHERE id = $1",
                )?
                .defer([a[0]])
        })
    }

    fn decide_label(&self, task_id: &TaskId, label: &str, confidence: f64, now: i64) -> Result<()> {
        let task = task_id.to_string();
        self.0
            .prepare_cached(
                "UPDATE task SET status = 'finalized', final_label = $1, final_confidence = $2,
                     finished_at = $3, inconclusive = 0
                 WHERE id = $4",
            )?
            .defer(crate::params![label, confidence, now, task])?;
        self.0
            .prepare_cached(
                "UPDATE submission SET agreed = CASE WHEN label = $1 THEN 1 ELSE 0 END
                 WHERE task_id = $2",
            )?
            .defer(crate::params![label, task])?;
        self.award_agreeing(task_id)
    }
}

impl Scoring for Tx<'_> {}

impl Truth for Tx<'_> {}

impl Views for Tx<'_> {
    fn starved_sql(&self) -> &'static StarvedSql {
        static SQL: LazyLock<StarvedSql> = LazyLock::new(|| {
            StarvedSql::new(
                " INDEXED BY task_open_required",
                "SELECT value FROM json_each($3)",
            )
        });
        &SQL
    }
}

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
            .prepare_cached(
                "INSERT INTO worker_score (worker_id, points)
                 SELECT worker_id, 1 FROM submission WHERE task_id = $1 AND agreed = 1
                 ORDER BY worker_id
                 ON CONFLICT (worker_id) DO UPDATE SET points = worker_score.points + 1",
            )?
            .defer([task.to_string()])
    }

    /// In place, in `worker_score`.
    fn credit(&self, credits: &mut [(WorkerId, Credit)]) -> Result<()> {
        scores::credit_each(
            self,
            "INSERT INTO worker_score (worker_id, points, traps_caught, traps_missed,
                                       gold_answered, gold_right)
             VALUES ($1, $2, $3, $4, $5, $6)
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
