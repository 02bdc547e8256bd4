//! Leasing: the open tasks a worker may take (FIFO, through its lease cursor), the slots taken
//! and the leases inserted.
//!
//! A lease cursor (`lease_cursor`) remembers, per worker and type, the FIFO position up to which
//! every open task is one the worker holds or has answered, so the next walk starts after it.
//! SQLite's cursors are exact (one writer); PostgreSQL's are hints (see its side), and a walk
//! there skips and locks rows other coordinators' transactions hold.

use super::Exec;
use crate::store::rows::{parsed, Json};
use crate::store::sql::{numbered, params, OptionalExtension, Result, ToArg};
use protocol::generation::GenerationSpec;
use protocol::{LeaseId, TaskId, TaskType, WorkerId};
use std::collections::HashSet;

/// A task that can be leased.
#[derive(Debug, Clone)]
pub(crate) struct OpenTask {
    /// Its FIFO position.
    pub seq: i64,
    /// Its id.
    pub id: TaskId,
    /// Its type.
    pub task_type: TaskType,
    /// Its text.
    pub text: String,
    /// A `zero-shot` task's candidates.
    pub labels: Option<Vec<String>>,
    /// What a generative task pins.
    pub generation: Option<GenerationSpec>,
    /// When it was added, if it is a posterior task nobody has started (no answer, no live
    /// lease): the first answer that may go to its strongest model first.
    pub untouched_since: Option<i64>,
}

/// The columns an [`OpenTask`] is read from, after `seq, id` (and `type`, when the caller does
/// not know it): the task's input, then [`OpenTask::untouched_since`].
pub(crate) const OPEN_TASK_COLUMNS: &str = "text, labels, generation,
    CASE WHEN policy = 'posterior' AND submissions + active_leases = 0 THEN created_at END";

/// The "still needs workers and this one (`$1`, serving model content `$4`) may take it"
/// condition: it neither holds nor has answered the task, the task pins no other model content,
/// and when it counts one answer per model, none is in or underway from `$4` (a worker that
/// names no content gets none of those). Its first two terms repeat the `task_open` partial
/// index's WHERE clause verbatim, which is what lets SQLite use it; SQLite's walk names the
/// index (`INDEXED BY`), so a plan change is an error, not a slow scan.
pub(crate) const OPEN_FOR_WORKER: &str =
    "status IN ('queued', 'assigned') AND required > active_leases + submissions
    AND NOT EXISTS (SELECT 1 FROM lease l
                    WHERE l.task_id = task.id AND l.worker_id = $1 AND l.state = 'active')
    AND NOT EXISTS (SELECT 1 FROM submission s
                    WHERE s.task_id = task.id AND s.worker_id = $1)
    AND (model_hash IS NULL OR model_hash = $4)
    AND (distinct_models = 0 OR ($4 IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM submission s
                        WHERE s.task_id = task.id AND s.model_hash = $4)
        AND NOT EXISTS (SELECT 1 FROM lease l JOIN worker w ON w.id = l.worker_id
                        WHERE l.task_id = task.id AND l.state = 'active'
                          AND w.model_hash = $4)))";

/// Leasing.
pub(crate) trait Leases: Exec {
    /// How many live leases `worker` holds.
    fn held_count(&self, worker: &WorkerId) -> Result<u32> {
        self.sql()
            .prepare_cached("SELECT COUNT(*) FROM lease WHERE worker_id = $1 AND state = 'active'")?
            .query_row([worker.as_str()], |r| r.get(0))
    }

    /// Task `task`, if `worker` (serving `model_hash`) may take it now (on PostgreSQL its row
    /// locked, unless another transaction holds it).
    fn hinted(
        &self,
        worker: &WorkerId,
        task: &TaskId,
        model_hash: Option<&str>,
    ) -> Result<Option<OpenTask>>;

    /// Up to `limit` open tasks of `task_type` that `worker` (serving `model_hash`) may take,
    /// oldest first, from its lease cursor on.
    fn open_tasks(
        &self,
        now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        model_hash: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenTask>>;

    /// Every open task of `task_type` up to FIFO position `last` is held or answered by
    /// `worker`: its next walk starts after it.
    fn advance_cursor(
        &self,
        now: i64,
        worker: &WorkerId,
        task_type: &TaskType,
        last: i64,
    ) -> Result<()>;

    /// Takes a slot on each of `tasks` that still has one, in one statement; those it took.
    /// Guarded: on PostgreSQL another coordinator may have taken the last slot since the walk
    /// (the rows are locked now, so the counters read here are the latest).
    fn assign(&self, tasks: &[TaskId]) -> Result<HashSet<TaskId>> {
        if tasks.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        let args: Vec<&dyn ToArg> = ids.iter().map(|id| id as &dyn ToArg).collect();
        self.sql()
            .prepare_cached(&assign_sql(tasks.len()))?
            .query_map(args.as_slice(), |r| parsed(r, 0))?
            .collect()
    }

    /// Inserts `worker`'s leases (lease id, task id), in one statement.
    fn insert_leases(
        &self,
        worker: &WorkerId,
        leases: &[(LeaseId, TaskId)],
        expires_at: i64,
        now: i64,
    ) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        // One statement text per count of rows (up to the most leases a worker may hold),
        // each prepared once: `$1`-`$3` are shared, each row adds its lease and task ids.
        let rows: Vec<String> = (0..leases.len())
            .map(|i| format!("({}, $1, 'active', $2, $3)", numbered(4 + 2 * i, 2)))
            .collect();
        let sql = format!(
            "INSERT INTO lease (id, task_id, worker_id, state, expires_at, created_at) VALUES {}",
            rows.join(", ")
        );
        let ids: Vec<(String, String)> = leases
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect();
        let worker = worker.as_str();
        let mut args: Vec<&dyn ToArg> = vec![&worker, &expires_at, &now];
        for (lease, task) in &ids {
            args.push(lease);
            args.push(task);
        }
        self.sql().prepare_cached(&sql)?.defer(args.as_slice())
    }
}

/// The statement that takes a slot on each of `n` tasks, by id (`$1`..`?n`). The ids are a list
/// of parameters, one statement text per count (each prepared once), and the guard is a CASE:
/// so the only index that fits is the one on `id`. A list from a function or a plain
/// `status IN (...)` term lets a plan made while few tasks are open (a new database) walk every
/// open task instead, and keep doing so.
pub(crate) fn assign_sql(n: usize) -> String {
    format!(
        "UPDATE task SET active_leases = active_leases + 1
         WHERE id IN ({})
           AND CASE WHEN status IN ('queued', 'assigned')
                    THEN required > active_leases + submissions ELSE 0 = 1 END
         RETURNING id",
        numbered(1, n)
    )
}

fn open_task(r: &crate::store::sql::Row<'_>, task_type: Option<&TaskType>) -> Result<OpenTask> {
    // Columns: seq, id, [type,] then OPEN_TASK_COLUMNS.
    let at = usize::from(task_type.is_none());
    Ok(OpenTask {
        seq: r.get(0)?,
        id: parsed(r, 1)?,
        task_type: match task_type {
            Some(t) => t.clone(),
            None => parsed(r, 2)?,
        },
        text: r.get(2 + at)?,
        labels: r.get::<_, Option<Json<Vec<String>>>>(3 + at)?.map(|j| j.0),
        generation: r
            .get::<_, Option<Json<GenerationSpec>>>(4 + at)?
            .map(|j| j.0),
        untouched_since: r.get(5 + at)?,
    })
}

/// [`Leases::hinted`] with the engine's claim (`claim`, appended to the select).
pub(crate) fn hinted_with<S: Exec + ?Sized>(
    s: &S,
    claim: &str,
    worker: &WorkerId,
    task: &TaskId,
    model_hash: Option<&str>,
) -> Result<Option<OpenTask>> {
    // `$3` is a FIFO position the task must lie after (0: anywhere), so that every parameter
    // up to the worker's content `$4` appears (PostgreSQL must infer each one's type).
    let sql = format!(
        "SELECT seq, id, type, {OPEN_TASK_COLUMNS} FROM task
         WHERE id = $2 AND seq > $3 AND {OPEN_FOR_WORKER}{claim}"
    );
    s.sql()
        .prepare_cached(&sql)?
        .query_row(
            params![worker.as_str(), task.to_string(), 0, model_hash],
            |r| open_task(r, None),
        )
        .optional()
}

/// One walk over the open tasks of `task_type` after FIFO position `after`, with the engine's
/// statement `sql` (see [`OPEN_FOR_WORKER`]; `$2` type, `$3` limit, `$5` after).
pub(crate) fn walk<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    worker: &WorkerId,
    task_type: &TaskType,
    model_hash: Option<&str>,
    limit: usize,
    after: i64,
) -> Result<Vec<OpenTask>> {
    s.sql()
        .prepare_cached(sql)?
        .query_map(
            params![
                worker.as_str(),
                task_type.as_str(),
                limit as i64,
                model_hash,
                after
            ],
            |r| open_task(r, Some(task_type)),
        )?
        .collect()
}

/// `worker`'s cursor over `task_type` if it started from the head after `fresh_after`: the
/// position it is after, and when a walk last started from the head.
pub(crate) fn cursor<S: Exec + ?Sized>(
    s: &S,
    worker: &WorkerId,
    task_type: &TaskType,
    fresh_after: i64,
) -> Result<Option<(i64, i64)>> {
    s.sql()
        .prepare_cached(
            "SELECT after, since FROM lease_cursor
             WHERE worker_id = $1 AND type = $2 AND since > $3",
        )?
        .query_row(
            params![worker.as_str(), task_type.as_str(), fresh_after],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
}

/// Moves `worker`'s cursor over `task_type` to `last`: forward only, unless its walk started
/// from the head (the cursor started from the head before `fresh_after`, or is missing),
/// which starts it anew.
pub(crate) fn advance<S: Exec + ?Sized>(
    s: &S,
    now: i64,
    worker: &WorkerId,
    task_type: &TaskType,
    last: i64,
    fresh_after: i64,
) -> Result<()> {
    s.sql()
        .prepare_cached(
            "INSERT INTO lease_cursor (worker_id, type, after, since)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (worker_id, type) DO UPDATE SET
                 after = CASE WHEN lease_cursor.since > $5 AND lease_cursor.after > excluded.after
                              THEN lease_cursor.after ELSE excluded.after END,
                 since = CASE WHEN lease_cursor.since > $5
                              THEN lease_cursor.since ELSE excluded.since END",
        )?
        .defer(params![
            worker.as_str(),
            task_type.as_str(),
            last,
            now,
            fresh_after
        ])
}
