//! Tasks, leases and workers as the rules share them: a task read (locked where the engine
//! locks), the transitions that end leases and tasks, lease cursors, a worker seen alive.

use super::Exec;
use crate::store::rows::{parsed, Json, TaskRow, TASK_COLUMNS, TASK_VIEW_COLUMNS};
use crate::store::sql::{params, OptionalExtension, Result, Row};
use protocol::messages::FailureReason;
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus, TaskType, WorkerId};

/// A lease as a submission names it: its task, holder and state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NamedLease {
    /// The task it is on.
    pub task: TaskId,
    /// Who holds it.
    pub worker: WorkerId,
    /// Whether it is live.
    pub state: LeaseState,
}

/// Tasks, leases and workers.
pub(crate) trait Tasks: Exec {
    /// A task, to decide on: on PostgreSQL its row stays locked until the transaction ends, so
    /// what the rule decides from it (finalize, fail, reissue) cannot race another
    /// coordinator's decision on the task.
    fn task(&self, id: &TaskId) -> Result<Option<TaskRow>>;

    /// A task with its live-lease summary, for views (never locked).
    fn task_view(&self, id: &TaskId) -> Result<Option<TaskRow>> {
        select_task(self, id, TASK_VIEW_COLUMNS, "", TaskRow::from_view_row)
    }

    /// Ends lease `lease` as `state` (expired or released) if it is still live; whether it was.
    fn end_lease(&self, lease: &LeaseId, state: LeaseState, now: i64) -> Result<bool> {
        let ended = self
            .sql()
            .prepare_cached(
                "UPDATE lease SET state = $1, ended_at = $2 WHERE id = $3 AND state = 'active'",
            )?
            .execute(params![state.as_str(), now, lease.to_string()])?;
        Ok(ended > 0)
    }

    /// Whether lease `lease` is for scoring a candidate (it names a scoring row).
    fn is_scoring_lease(&self, lease: &LeaseId) -> Result<bool> {
        let scoring: Option<Option<i64>> = self
            .sql()
            .prepare_cached("SELECT verification FROM lease WHERE id = $1")?
            .query_row([lease.to_string()], |r| r.get(0))
            .optional()?;
        Ok(scoring.flatten().is_some())
    }

    /// One more attempt used on an open task; a generation lease's slot freed with it
    /// (`slot`), a scoring lease holding none.
    fn attempt_used(&self, task: &TaskId, slot: bool) -> Result<()> {
        let sql = if slot {
            "UPDATE task SET active_leases = active_leases - 1, attempts = attempts + 1
             WHERE id = $1 AND status IN ('queued', 'assigned')"
        } else {
            "UPDATE task SET attempts = attempts + 1
             WHERE id = $1 AND status IN ('queued', 'assigned')"
        };
        self.sql()
            .prepare_cached(sql)?
            .execute([task.to_string()])?;
        Ok(())
    }

    /// The scoring row a verify lease that produced no result held: a real slot opens again
    /// for another verifier (or the same one), a trap lapses.
    fn reopen_scoring(&self, lease: &LeaseId) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE verification SET
                     state = CASE WHEN trap IS NULL THEN 'open' ELSE 'lapsed' END,
                     worker_id = CASE WHEN trap IS NULL THEN NULL ELSE worker_id END,
                     lease_id = CASE WHEN trap IS NULL THEN NULL ELSE lease_id END
                 WHERE lease_id = $1 AND state = 'leased'",
            )?
            .execute([lease.to_string()])?;
        Ok(())
    }

    /// A task may now be open to workers whose lease cursors are past it: their next walk
    /// starts before it.
    fn rewind_cursors(&self, task: &TaskId) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE lease_cursor SET after = t.seq - 1
                 FROM (SELECT seq, type FROM task WHERE id = $1) AS t
                 WHERE lease_cursor.type = t.type AND lease_cursor.after >= t.seq",
            )?
            .execute([task.to_string()])?;
        Ok(())
    }

    /// Ends an open task as `status` (failed or cancelled): its live leases cancelled, its open
    /// scoring rows lapsed.
    fn close_task(
        &self,
        task: &TaskId,
        status: TaskStatus,
        reason: Option<FailureReason>,
        message: &str,
        now: i64,
    ) -> Result<()> {
        let tid = task.to_string();
        self.sql()
            .prepare_cached(
                "UPDATE lease SET state = 'cancelled', ended_at = $1
                 WHERE task_id = $2 AND state = 'active'",
            )?
            .execute(params![now, tid])?;
        self.sql()
            .prepare_cached(
                "UPDATE verification SET state = 'lapsed', finished_at = $1
                 WHERE task_id = $2 AND state IN ('open', 'leased')",
            )?
            .execute(params![now, tid])?;
        self.sql()
            .prepare_cached(
                "UPDATE task SET status = $1, active_leases = 0, error_message = $2,
                     finished_at = $3, failure_reason = $4
                 WHERE id = $5",
            )?
            .execute(params![
                status.as_str(),
                message,
                now,
                reason.map(FailureReason::as_str),
                tid
            ])?;
        Ok(())
    }

    /// Lease `lease`'s task, holder and state, if there is such a lease.
    fn named_lease(&self, lease: &LeaseId) -> Result<Option<NamedLease>> {
        self.sql()
            .prepare_cached("SELECT task_id, worker_id, state FROM lease WHERE id = $1")?
            .query_row([lease.to_string()], |r| {
                Ok(NamedLease {
                    task: parsed(r, 0)?,
                    worker: parsed(r, 1)?,
                    state: parsed(r, 2)?,
                })
            })
            .optional()
    }

    /// The lease `worker` holds on `task`, if any.
    fn live_lease(&self, task: &TaskId, worker: &WorkerId) -> Result<Option<LeaseId>> {
        self.sql()
            .prepare_cached(
                "SELECT id FROM lease WHERE task_id = $1 AND worker_id = $2 AND state = 'active'",
            )?
            .query_row(params![task.to_string(), worker.as_str()], |r| parsed(r, 0))
            .optional()
    }

    /// Records that `worker` is alive with these capabilities; registers it on first sight. A
    /// worker that now serves another model content forgets its lease cursors: the tasks they
    /// passed over for the old hash may be ones it can do now.
    fn touch_worker(
        &self,
        now: i64,
        worker: &WorkerId,
        capabilities: &[TaskType],
        model: Option<&str>,
        model_hash: Option<&str>,
    ) -> Result<()> {
        if model_hash.is_some() {
            self.sql()
                .prepare_cached(
                    "DELETE FROM lease_cursor WHERE worker_id = $1
                       AND EXISTS (SELECT 1 FROM worker
                                   WHERE id = $1 AND model_hash IS DISTINCT FROM $2)",
                )?
                .execute(params![worker.as_str(), model_hash])?;
        }
        let caps = serde_json::to_string(capabilities).expect("task types serialize");
        self.sql()
            .prepare_cached(
                "INSERT INTO worker (id, status, capabilities, model, model_hash, last_seen,
                                     registered_at)
                 VALUES ($1, 'active', $2, $3, $4, $5, $5)
                 ON CONFLICT (id) DO UPDATE SET
                     status = 'active',
                     capabilities = excluded.capabilities,
                     model = COALESCE(excluded.model, worker.model),
                     model_hash = COALESCE(excluded.model_hash, worker.model_hash),
                     last_seen = excluded.last_seen",
            )?
            .defer(params![worker.as_str(), caps, model, model_hash, now])?;
        Ok(())
    }

    /// Whether this transaction sweeps: on a shared database one sweep runs at a time, whoever
    /// takes the lead first, and the leader also folds the appended counters in (see
    /// [`super::Scores`]).
    fn lead_sweep(&self) -> Result<bool>;

    /// The live leases that expired before `now` or whose holder has not been seen since
    /// `stale_before` (or went offline): `(lease, task)`.
    fn dead_leases(&self, now: i64, stale_before: i64) -> Result<Vec<(LeaseId, TaskId)>> {
        self.sql()
            .prepare_cached(
                "SELECT l.id, l.task_id FROM lease l LEFT JOIN worker w ON w.id = l.worker_id
                 WHERE l.state = 'active'
                   AND (l.expires_at <= $1 OR w.last_seen IS NULL OR w.last_seen <= $2
                        OR w.status = 'offline')",
            )?
            .query_map(params![now, stale_before], |r| {
                Ok((parsed(r, 0)?, parsed(r, 1)?))
            })?
            .collect()
    }

    /// Active workers not seen since `stale_before` become `stale`; how many.
    fn mark_stale(&self, stale_before: i64) -> Result<u32> {
        let n = self
            .sql()
            .prepare_cached(
                "UPDATE worker SET status = 'stale' WHERE status = 'active' AND last_seen <= $1",
            )?
            .execute([stale_before])?;
        Ok(n as u32)
    }

    /// Of the leases `worker` names, those that ended because their task closed (cancelled,
    /// finalized or failed without them).
    fn cancelled_leases(&self, worker: &WorkerId, named: &[LeaseId]) -> Result<Vec<LeaseId>> {
        let mut stmt = self.sql().prepare_cached(
            "SELECT 1 FROM lease WHERE id = $1 AND worker_id = $2 AND state = 'cancelled'",
        )?;
        let mut closed = Vec::new();
        for lease in named {
            if stmt.exists(params![lease.to_string(), worker.as_str()])? {
                closed.push(*lease);
            }
        }
        Ok(closed)
    }

    /// Moves the expiry of `worker`'s live leases (those in `only`, when given) to
    /// `expires_at`; how many.
    fn renew_leases(
        &self,
        worker: &WorkerId,
        only: Option<&[LeaseId]>,
        expires_at: i64,
    ) -> Result<u32> {
        let Some(leases) = only else {
            let n = self
                .sql()
                .prepare_cached(
                    "UPDATE lease SET expires_at = $1 WHERE worker_id = $2 AND state = 'active'",
                )?
                .execute(params![expires_at, worker.as_str()])?;
            return Ok(n as u32);
        };
        let mut stmt = self.sql().prepare_cached(
            "UPDATE lease SET expires_at = $1
             WHERE id = $2 AND worker_id = $3 AND state = 'active'",
        )?;
        let mut n = 0;
        for lease in leases {
            n += stmt.execute(params![expires_at, lease.to_string(), worker.as_str()])?;
        }
        Ok(n as u32)
    }

    /// The task of `worker`'s live lease `lease`, if it is one.
    fn held_task(&self, lease: &LeaseId, worker: &WorkerId) -> Result<Option<TaskId>> {
        self.sql()
            .prepare_cached(
                "SELECT task_id FROM lease WHERE id = $1 AND worker_id = $2 AND state = 'active'",
            )?
            .query_row(params![lease.to_string(), worker.as_str()], |r| {
                parsed(r, 0)
            })
            .optional()
    }

    /// `worker` shut down gracefully.
    fn mark_offline(&self, worker: &WorkerId, now: i64) -> Result<()> {
        self.sql()
            .prepare_cached("UPDATE worker SET status = 'offline', last_seen = $1 WHERE id = $2")?
            .execute(params![now, worker.as_str()])?;
        Ok(())
    }

    /// A failed task open again with fresh attempts, needing `required` answers of at most
    /// `max_answers`.
    fn reopen_task(&self, task: &TaskId, required: u32, max_answers: u32) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET status = 'queued', attempts = 0, error_message = NULL,
                     failure_reason = NULL, finished_at = NULL, required = $1, max_answers = $2
                 WHERE id = $3",
            )?
            .execute(params![required, max_answers, task.to_string()])?;
        Ok(())
    }

    /// The capabilities `worker` registered with, if it is known.
    fn capabilities(&self, worker: &WorkerId) -> Result<Option<Vec<TaskType>>> {
        let caps: Option<Json<Vec<TaskType>>> = self
            .sql()
            .prepare_cached("SELECT capabilities FROM worker WHERE id = $1")?
            .query_row([worker.as_str()], |r| r.get(0))
            .optional()?;
        Ok(caps.map(|Json(c)| c))
    }
}

/// Reads task `id` with `columns` (read by `read`), the select ending with `lock`.
pub(crate) fn select_task<S: Exec + ?Sized>(
    s: &S,
    id: &TaskId,
    columns: &str,
    lock: &str,
    read: fn(&Row<'_>) -> Result<TaskRow>,
) -> Result<Option<TaskRow>> {
    let sql = format!("SELECT {columns} FROM task WHERE id = $1{lock}");
    s.sql()
        .prepare_cached(&sql)?
        .query_row([id.to_string()], read)
        .optional()
}

/// [`Tasks::task`] with the row lock `lock` (the engine's).
pub(crate) fn task_locked<S: Exec + ?Sized>(
    s: &S,
    id: &TaskId,
    lock: &str,
) -> Result<Option<TaskRow>> {
    select_task(s, id, TASK_COLUMNS, lock, TaskRow::from_row)
}
