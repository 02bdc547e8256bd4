//! Cross-scoring of generated answers: the scoring rows (`verification`) a task's candidates
//! get, the slots verifiers lease, their reports, and the finalization a scoring settles.

use super::Exec;
use crate::store::rows::{parsed, parsed_opt, Json};
use crate::store::sql::{params, OptionalExtension, Result};
use protocol::generation::GenerationSpec;
use protocol::{LeaseId, TaskId, TaskType, WorkerId};

/// A scoring slot a worker may take, with what its lease needs.
#[derive(Debug, Clone)]
pub(crate) struct ScoringSlot {
    /// The scoring row.
    pub id: i64,
    /// Its task.
    pub task: TaskId,
    /// The submission the candidate stands for.
    pub candidate: i64,
    /// The candidate's token ids, as stored.
    pub token_ids: Vec<u8>,
    /// The task's type.
    pub task_type: TaskType,
    /// The task's text.
    pub text: String,
    /// What the task pins.
    pub generation: GenerationSpec,
}

/// A verify lease's scoring row, as the submit path needs it.
#[derive(Debug, Clone)]
pub(crate) struct ScoringRow {
    /// The row.
    pub id: i64,
    /// The candidate's token ids, as stored.
    pub token_ids: Vec<u8>,
    /// The kind of trap, for a trap row.
    pub trap: Option<String>,
    /// `open`, `leased`, `done` or `lapsed`.
    pub state: String,
    /// Who scored it.
    pub worker: Option<WorkerId>,
    /// Its verdict, once reported.
    pub passed: Option<bool>,
    /// Whether the verdict was exact, once reported (NULL before the column existed).
    pub exact: Option<bool>,
    /// Its per-token log-probabilities, as stored.
    pub logprobs: Option<Vec<u8>>,
    /// Its per-token gaps, as stored.
    pub gaps: Option<Vec<u8>>,
}

/// A scoring report on a real candidate, as deciding reads it.
#[derive(Debug, Clone)]
pub(crate) struct ScoredRow {
    /// The row.
    pub id: i64,
    /// The submission the candidate stands for.
    pub candidate: i64,
    /// The candidate's token ids, as stored.
    pub token_ids: Vec<u8>,
    /// The verifier.
    pub worker: WorkerId,
    /// Its verdict.
    pub passed: bool,
    /// Its per-token log-probabilities, as stored.
    pub logprobs: Vec<u8>,
    /// Its per-token gaps, as stored.
    pub gaps: Vec<u8>,
    /// Whether it agreed with the verifiers' majority, once judged.
    pub agreed: Option<bool>,
}

/// Scoring rows and their reports.
pub(crate) trait Scoring: Exec {
    /// The first submission of each distinct answer on `task` that has no scoring row yet:
    /// `(submission id, token ids as stored)`, oldest first.
    fn unscored_candidates(&self, task: &TaskId) -> Result<Vec<(i64, Vec<u8>)>> {
        self.sql()
            .prepare_cached(
                "SELECT min(s.id), s.token_ids FROM submission s
                 WHERE s.task_id = $1
                   AND NOT EXISTS (SELECT 1 FROM verification v
                                   WHERE v.task_id = s.task_id AND v.token_ids = s.token_ids)
                 GROUP BY s.token_ids ORDER BY min(s.id)",
            )?
            .query_map([task.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// Opens `slots` scoring rows for candidate `candidate` (token ids `ids`, as stored).
    fn open_scoring(
        &self,
        task: &TaskId,
        candidate: i64,
        ids: &[u8],
        slots: u32,
        now: i64,
    ) -> Result<()> {
        let mut open = self.sql().prepare_cached(
            "INSERT INTO verification (task_id, candidate, token_ids, state, created_at)
             VALUES ($1, $2, $3, 'open', $4)",
        )?;
        let tid = task.to_string();
        for _ in 0..slots {
            open.execute(params![tid, candidate, ids, now])?;
        }
        Ok(())
    }

    /// `task` is being scored.
    fn mark_verifying(&self, task: &TaskId) -> Result<()> {
        self.sql()
            .prepare_cached("UPDATE task SET verifying = 1 WHERE id = $1")?
            .execute([task.to_string()])?;
        Ok(())
    }

    /// Up to `limit` open scoring slots `worker` (serving `model_hash`) may take: not on a task
    /// it holds a lease on, not its own answer, not a candidate it scored already; oldest
    /// first.
    fn open_slots(
        &self,
        worker: &WorkerId,
        model_hash: &str,
        limit: usize,
    ) -> Result<Vec<ScoringSlot>> {
        self.sql()
            .prepare_cached(
                "SELECT v.id, v.task_id, v.candidate, v.token_ids, t.type, t.text, t.generation
                 FROM verification v JOIN task t ON t.id = v.task_id
                 WHERE v.state = 'open' AND t.verifying = 1 AND t.model_hash = $2
                   AND t.status IN ('queued', 'assigned')
                   AND NOT EXISTS (SELECT 1 FROM lease l WHERE l.task_id = v.task_id
                                   AND l.worker_id = $1 AND l.state = 'active')
                   AND NOT EXISTS (SELECT 1 FROM submission s
                                   WHERE s.task_id = v.task_id AND s.worker_id = $1
                                     AND s.token_ids = v.token_ids)
                   AND NOT EXISTS (SELECT 1 FROM verification w
                                   WHERE w.task_id = v.task_id AND w.candidate = v.candidate
                                     AND w.worker_id = $1 AND w.trap IS NULL)
                 ORDER BY v.id LIMIT $3",
            )?
            .query_map(params![worker.as_str(), model_hash, limit as i64], |r| {
                Ok(ScoringSlot {
                    id: r.get(0)?,
                    task: parsed(r, 1)?,
                    candidate: r.get(2)?,
                    token_ids: r.get(3)?,
                    task_type: parsed(r, 4)?,
                    text: r.get(5)?,
                    generation: r.get::<_, Json<GenerationSpec>>(6)?.0,
                })
            })?
            .collect()
    }

    /// Whether `worker` was already handed a trap for this candidate.
    fn trapped(&self, task: &TaskId, candidate: i64, worker: &WorkerId) -> Result<bool> {
        self.sql()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM verification WHERE task_id = $1 AND candidate = $2
                                AND worker_id = $3 AND trap IS NOT NULL)",
            )?
            .query_row(params![task.to_string(), candidate, worker.as_str()], |r| {
                r.get(0)
            })
    }

    /// The distinct answers (token ids as stored) `task` has.
    fn distinct_answers(&self, task: &TaskId) -> Result<Vec<Vec<u8>>> {
        self.sql()
            .prepare_cached("SELECT DISTINCT token_ids FROM submission WHERE task_id = $1")?
            .query_map([task.to_string()], |r| r.get(0))?
            .collect()
    }

    /// The newest answer another task on `model_hash` was finalized on (token ids as stored).
    fn other_final_answer(&self, model_hash: &str, not: &TaskId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .sql()
            .prepare_cached(
                "SELECT final_token_ids FROM task
                 WHERE model_hash = $1 AND status = 'finalized' AND id <> $2
                 ORDER BY finished_at DESC LIMIT 1",
            )?
            .query_row(params![model_hash, not.to_string()], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// A trap row of `kind` (token ids `ids`, as stored), leased to `worker` on `lease`; its
    /// row id.
    #[allow(clippy::too_many_arguments)]
    fn insert_trap(
        &self,
        task: &TaskId,
        candidate: i64,
        ids: &[u8],
        kind: &str,
        worker: &WorkerId,
        lease: &LeaseId,
        now: i64,
    ) -> Result<i64> {
        self.sql()
            .prepare_cached(
                "INSERT INTO verification (task_id, candidate, token_ids, trap, state,
                                           worker_id, lease_id, created_at)
                 VALUES ($1, $2, $3, $4, 'leased', $5, $6, $7) RETURNING id",
            )?
            .query_row(
                params![
                    task.to_string(),
                    candidate,
                    ids,
                    kind,
                    worker.as_str(),
                    lease.to_string(),
                    now
                ],
                |r| r.get(0),
            )
    }

    /// Slot `slot` leased to `worker` on `lease`.
    fn take_slot(&self, slot: i64, worker: &WorkerId, lease: &LeaseId) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE verification SET state = 'leased', worker_id = $1, lease_id = $2
                 WHERE id = $3",
            )?
            .execute(params![worker.as_str(), lease.to_string(), slot])?;
        Ok(())
    }

    /// A verify lease on scoring row `row`.
    fn insert_scoring_lease(
        &self,
        lease: &LeaseId,
        task: &TaskId,
        worker: &WorkerId,
        expires_at: i64,
        now: i64,
        row: i64,
    ) -> Result<()> {
        self.sql()
            .prepare_cached(
                "INSERT INTO lease (id, task_id, worker_id, state, expires_at, created_at,
                                    verification)
                 VALUES ($1, $2, $3, 'active', $4, $5, $6)",
            )?
            .execute(params![
                lease.to_string(),
                task.to_string(),
                worker.as_str(),
                expires_at,
                now,
                row
            ])?;
        Ok(())
    }

    /// The scoring row verify lease `lease` names, if it is one.
    fn scoring_row_of_lease(&self, lease: &LeaseId) -> Result<Option<ScoringRow>> {
        self.sql()
            .prepare_cached(
                "SELECT id, token_ids, trap, state, worker_id, passed, logprobs, gaps, exact
                 FROM verification WHERE lease_id = $1",
            )?
            .query_row([lease.to_string()], |r| {
                Ok(ScoringRow {
                    id: r.get(0)?,
                    token_ids: r.get(1)?,
                    trap: r.get(2)?,
                    state: r.get(3)?,
                    worker: parsed_opt(r, 4)?,
                    passed: r.get(5)?,
                    logprobs: r.get(6)?,
                    gaps: r.get(7)?,
                    exact: r.get(8)?,
                })
            })
            .optional()
    }

    /// A verifier's report on row `row` (its verdict: passed, and whether exactly; the
    /// log-probabilities and gaps as stored), and its lease `lease` completed.
    fn record_score(
        &self,
        row: i64,
        lease: &LeaseId,
        (passed, exact): (bool, bool),
        logprobs: &[u8],
        gaps: &[u8],
        now: i64,
    ) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE verification SET state = 'done', passed = $1, logprobs = $2, gaps = $3,
                     finished_at = $4, exact = $6
                 WHERE id = $5",
            )?
            .execute(params![passed, logprobs, gaps, now, row, exact])?;
        self.sql()
            .prepare_cached("UPDATE lease SET state = 'completed', ended_at = $1 WHERE id = $2")?
            .execute(params![now, lease.to_string()])?;
        Ok(())
    }

    /// Sets each scoring row's agreement: `(row id, agreed)`.
    fn mark_scoring_agreed(&self, flags: &[(i64, bool)]) -> Result<()> {
        super::set_flags(
            self,
            "UPDATE verification SET agreed = $1 WHERE id = $2",
            flags,
        )
    }

    /// How many real scoring slots of `task` are not reported yet.
    fn pending_scorings(&self, task: &TaskId) -> Result<i64> {
        self.sql()
            .prepare_cached(
                "SELECT count(*) FROM verification
                 WHERE task_id = $1 AND trap IS NULL AND state IN ('open', 'leased')",
            )?
            .query_row([task.to_string()], |r| r.get(0))
    }

    /// The reports on `task`'s real candidates, by candidate.
    fn scored_rows(&self, task: &TaskId) -> Result<Vec<ScoredRow>> {
        self.sql()
            .prepare_cached(
                "SELECT v.id, v.candidate, v.token_ids, v.worker_id, v.passed, v.logprobs,
                        v.gaps, v.agreed
                 FROM verification v
                 WHERE v.task_id = $1 AND v.trap IS NULL AND v.state = 'done'
                 ORDER BY v.candidate, v.id",
            )?
            .query_map([task.to_string()], |r| {
                Ok(ScoredRow {
                    id: r.get(0)?,
                    candidate: r.get(1)?,
                    token_ids: r.get(2)?,
                    worker: parsed(r, 3)?,
                    passed: r.get(4)?,
                    logprobs: r.get(5)?,
                    gaps: r.get(6)?,
                    agreed: r.get(7)?,
                })
            })?
            .collect()
    }

    /// No candidate of `task` was valid: one more worker generates (generate-once mode).
    fn generate_again(&self, task: &TaskId) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET verifying = 0, required = required + 1, status = 'queued'
                 WHERE id = $1",
            )?
            .execute([task.to_string()])?;
        Ok(())
    }

    /// `task`'s answers: `(submission id, token ids as stored)`.
    fn submitted_ids(&self, task: &TaskId) -> Result<Vec<(i64, Vec<u8>)>> {
        self.sql()
            .prepare_cached("SELECT id, token_ids FROM submission WHERE task_id = $1")?
            .query_map([task.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// The text of submission `id`.
    fn submitted_text(&self, id: i64) -> Result<String> {
        self.sql()
            .prepare_cached("SELECT text FROM submission WHERE id = $1")?
            .query_row([id], |r| r.get(0))
    }
}
