//! The read side: what `task.get`, `task.list`, `stats`, `workers`, the leaderboards and the
//! starved-task report show. Reads only, never locked.

use super::scores::TOTALS;
use super::Exec;
use crate::store::rows::{parsed, Json, TaskRow, TASK_VIEW_COLUMNS, VIEW_STATUS_SQL};
use crate::store::sql::{params, OptionalExtension, Result, ToArg};
use crate::store::{blob_to_vector, from_ms};
use protocol::generation::blob_to_ids;
use protocol::messages::{
    LeaderboardEntry, LeaseView, ModelAgreement, SubmissionView, VerificationView, WorkerView,
};
use protocol::policy::GoldScore;
use protocol::{TaskStatus, TaskType, WorkerId, WorkerStatus};

/// What `stats` counts besides tasks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Submissions stored.
    pub submissions: u64,
    /// Workers known.
    pub workers: u64,
    /// Workers active and seen recently.
    pub workers_active: u64,
    /// Workers stale, or active but not seen recently.
    pub workers_stale: u64,
    /// Live leases.
    pub active_leases: u64,
}

/// A live worker as the starved-task report needs it.
#[derive(Debug, Clone)]
pub(crate) struct LiveWorker {
    /// Who.
    pub id: WorkerId,
    /// What it can do.
    pub capabilities: Vec<TaskType>,
    /// The model content it serves.
    pub model_hash: Option<String>,
    /// Whether it is quarantined (it gets only gold).
    pub quarantined: bool,
}

/// The starved-task report's statements, as an engine spells them: SQLite holds its planner to
/// the open-task index by name (`INDEXED BY`), so a plan change is an error, not a slow scan;
/// each engine reads a JSON array of worker ids its own way.
#[derive(Debug)]
pub(crate) struct StarvedSql {
    next_type: String,
    hashes: String,
    most_required: String,
    count: String,
}

impl StarvedSql {
    /// The statements with `index` after each `FROM task` (the engine's index hint, or
    /// nothing) and `ids` the subquery that lists the values of the JSON array `$3`.
    pub(crate) fn new(index: &str, ids: &str) -> Self {
        Self {
            next_type: format!(
                "SELECT type FROM task{index}
                 WHERE status IN ('queued', 'assigned') AND type > $1 ORDER BY type LIMIT 1"
            ),
            hashes: format!(
                "SELECT DISTINCT model_hash FROM task{index}
                 WHERE status IN ('queued', 'assigned') AND type = $1"
            ),
            most_required: format!(
                "SELECT required FROM task{index}
                 WHERE status IN ('queued', 'assigned') AND type = $1
                   AND model_hash IS NOT DISTINCT FROM $2
                 ORDER BY required DESC LIMIT 1"
            ),
            // Type `$1`, `$2` live workers (the JSON array `$3`), model content `$4`.
            count: format!(
                "SELECT COUNT(*) FROM task t{index}
                 WHERE t.status IN ('queued', 'assigned') AND t.type = $1 AND t.required > $2
                   AND t.model_hash IS NOT DISTINCT FROM $4
                   AND (t.submissions = 0
                        OR t.required - t.submissions > $2 - (
                            SELECT COUNT(*) FROM submission s
                            WHERE s.task_id = t.id AND s.worker_id IN ({ids})))"
            ),
        }
    }

    /// The count of starved tasks of a type (for plan tests).
    #[cfg(test)]
    pub(crate) fn count(&self) -> &str {
        &self.count
    }
}

/// Reads for views.
pub(crate) trait Views: Exec {
    /// The engine's spelling of the starved-task report's statements.
    fn starved_sql(&self) -> &'static StarvedSql;

    /// Every known worker with its points and counters, highest points first.
    fn leaderboard(&self) -> Result<Vec<LeaderboardEntry>> {
        let sql = format!(
            "SELECT w.id, COALESCE(ws.points, 0) AS points,
                    (SELECT COUNT(*) FROM submission s WHERE s.worker_id = w.id),
                    w.model,
                    (SELECT COUNT(*) FROM submission s
                     WHERE s.worker_id = w.id AND s.agreed IS NOT NULL),
                    (SELECT COUNT(*) FROM submission s
                     WHERE s.worker_id = w.id AND s.agreed = 1),
                    COALESCE(ws.traps_caught, 0), COALESCE(ws.traps_missed, 0),
                    COALESCE(ws.gold_answered, 0), COALESCE(ws.gold_right, 0),
                    w.quarantine IS NOT NULL
             FROM worker w LEFT JOIN {TOTALS} ws ON ws.worker_id = w.id
             ORDER BY points DESC, w.id"
        );
        self.sql()
            .prepare_cached(&sql)?
            .query_map((), |r| {
                Ok(LeaderboardEntry {
                    worker_id: parsed(r, 0)?,
                    points: r.get(1)?,
                    submissions: r.get(2)?,
                    model: r.get(3)?,
                    agreement_rate: rate(r.get(5)?, r.get(4)?),
                    traps_caught: r.get(6)?,
                    traps_missed: r.get(7)?,
                    gold: GoldScore {
                        answered: r.get(8)?,
                        right: r.get(9)?,
                    },
                    quarantined: r.get(10)?,
                })
            })?
            .collect()
    }

    /// Agreement with consensus and gold accuracy per model (id and content hash) and task
    /// type, from what submissions carried.
    fn agreement_by_model(&self) -> Result<Vec<ModelAgreement>> {
        self.sql()
            .prepare_cached(
                "SELECT COALESCE(s.model, '-'), s.model_hash, t.type, COUNT(*),
                        COUNT(s.agreed), SUM(COALESCE(s.agreed, 0)),
                        SUM(t.gold IS NOT NULL),
                        (SELECT COALESCE(SUM(g.correct), 0) FROM gold_answer g
                         WHERE g.model IS NOT DISTINCT FROM s.model
                           AND g.model_hash IS NOT DISTINCT FROM s.model_hash
                           AND g.type = t.type)
                 FROM submission s JOIN task t ON t.id = s.task_id
                 GROUP BY s.model, s.model_hash, t.type ORDER BY 1, 2, 3",
            )?
            .query_map((), |r| {
                let (decided, agreed): (u64, u64) = (r.get(4)?, r.get(5)?);
                Ok(ModelAgreement {
                    model: r.get(0)?,
                    model_hash: r.get(1)?,
                    task_type: r.get(2)?,
                    submissions: r.get(3)?,
                    decided,
                    agreed,
                    agreement_rate: rate(agreed, decided),
                    gold: GoldScore {
                        answered: r.get(6)?,
                        right: r.get(7)?,
                    },
                    calibration: None,
                })
            })?
            .collect()
    }

    /// Every known worker; one `active` but silent since `stale_before` is shown `stale`.
    fn workers(&self, stale_before: i64) -> Result<Vec<WorkerView>> {
        let sql = format!(
            "SELECT w.id, w.status, w.capabilities, w.model, w.last_seen, w.registered_at,
                    (SELECT COUNT(*) FROM lease l WHERE l.worker_id = w.id AND l.state = 'active'),
                    w.model_hash,
                    COALESCE(ws.traps_caught, 0), COALESCE(ws.traps_missed, 0),
                    COALESCE(ws.gold_answered, 0), COALESCE(ws.gold_right, 0), w.quarantine
             FROM worker w LEFT JOIN {TOTALS} ws ON ws.worker_id = w.id ORDER BY w.id"
        );
        self.sql()
            .prepare_cached(&sql)?
            .query_map((), |r| {
                let last_seen: i64 = r.get(4)?;
                let mut status: WorkerStatus = parsed(r, 1)?;
                if status == WorkerStatus::Active && last_seen <= stale_before {
                    status = WorkerStatus::Stale;
                }
                Ok(WorkerView {
                    worker_id: parsed(r, 0)?,
                    status,
                    capabilities: r.get::<_, Json<_>>(2)?.0,
                    model: r.get(3)?,
                    model_hash: r.get(7)?,
                    last_seen: from_ms(last_seen),
                    registered_at: from_ms(r.get(5)?),
                    active_leases: r.get(6)?,
                    traps_caught: r.get(8)?,
                    traps_missed: r.get(9)?,
                    gold: GoldScore {
                        answered: r.get(10)?,
                        right: r.get(11)?,
                    },
                    quarantine: r.get(12)?,
                })
            })?
            .collect()
    }

    /// Tasks (gold ones left out) oldest first, of state `status` as views show it if given,
    /// at most `limit`.
    fn tasks(&self, status: Option<TaskStatus>, limit: u32) -> Result<Vec<TaskRow>> {
        match status {
            Some(status) => self
                .sql()
                .prepare_cached(&format!(
                    "SELECT {TASK_VIEW_COLUMNS} FROM task
                     WHERE {VIEW_STATUS_SQL} = $1 AND gold IS NULL
                     ORDER BY seq LIMIT $2"
                ))?
                .query_map(params![status.as_str(), limit], TaskRow::from_view_row)?
                .collect(),
            None => self
                .sql()
                .prepare_cached(&format!(
                    "SELECT {TASK_VIEW_COLUMNS} FROM task WHERE gold IS NULL ORDER BY seq LIMIT $1"
                ))?
                .query_map([limit], TaskRow::from_view_row)?
                .collect(),
        }
    }

    /// The `limit` newest tasks (gold ones left out), newest first.
    fn recent_tasks(&self, limit: u32) -> Result<Vec<TaskRow>> {
        self.sql()
            .prepare_cached(&format!(
                "SELECT {TASK_VIEW_COLUMNS} FROM task WHERE gold IS NULL ORDER BY seq DESC LIMIT $1"
            ))?
            .query_map([limit], TaskRow::from_view_row)?
            .collect()
    }

    /// A task's submissions, in the order they came.
    fn submissions_of(&self, task: &protocol::TaskId) -> Result<Vec<SubmissionView>> {
        self.sql()
            .prepare_cached(
                "SELECT worker_id, label, confidence, model, agreed, created_at, embedding, text,
                        token_ids, model_hash, logprobs, weight, token_ends, input_tokens
                 FROM submission WHERE task_id = $1 ORDER BY id",
            )?
            .query_map([task.to_string()], |r| {
                Ok(SubmissionView {
                    worker_id: parsed(r, 0)?,
                    label: Some(r.get::<_, String>(1)?).filter(|l| !l.is_empty()),
                    embedding: r.get::<_, Option<Vec<u8>>>(6)?.map(|b| blob_to_vector(&b)),
                    text: r.get(7)?,
                    token_ids: r.get::<_, Option<Vec<u8>>>(8)?.map(|b| blob_to_ids(&b)),
                    model_hash: r.get(9)?,
                    logprobs: r.get::<_, Option<Vec<u8>>>(10)?.map(|b| blob_to_vector(&b)),
                    confidence: r.get(2)?,
                    model: r.get(3)?,
                    agreed: r.get(4)?,
                    weight: r.get(11)?,
                    token_ends: r.get::<_, Option<Vec<u8>>>(12)?.map(|b| blob_to_ids(&b)),
                    input_tokens: r
                        .get::<_, Option<i64>>(13)?
                        .and_then(|n| u32::try_from(n).ok()),
                    created_at: from_ms(r.get(5)?),
                })
            })?
            .collect()
    }

    /// The verdicts of a task's verifiers on its candidates (real rows scored, traps left
    /// out), in the order they came.
    fn verifications_of(&self, task: &protocol::TaskId) -> Result<Vec<VerificationView>> {
        self.sql()
            .prepare_cached(
                "SELECT worker_id, token_ids, passed, gaps, agreed, exact FROM verification
                 WHERE task_id = $1 AND trap IS NULL AND state = 'done' ORDER BY id",
            )?
            .query_map([task.to_string()], |r| {
                let gaps = r
                    .get::<_, Option<Vec<u8>>>(3)?
                    .map(|b| blob_to_vector(&b))
                    .unwrap_or_default();
                Ok(VerificationView {
                    worker_id: parsed(r, 0)?,
                    token_ids: blob_to_ids(&r.get::<_, Vec<u8>>(1)?),
                    passed: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                    max_gap: gaps.iter().copied().fold(0.0, f32::max),
                    agreed: r.get(4)?,
                    exact: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
                })
            })?
            .collect()
    }

    /// Tasks finished since `since` (ms), by minute: `(minute start in ms, finalized, failed,
    /// mean ms from creation to finish)`; gold tasks left out. The dashboard asks for its last
    /// hour every few seconds, so the scan is bounded to the newest 100,000 tasks by creation (a
    /// walk of the key): an older task that finished within the hour is left out.
    fn finished_by_minute(&self, since: i64) -> Result<Vec<(i64, u64, u64, f64)>> {
        self.sql()
            .prepare_cached(
                "SELECT (finished_at / 60000) * 60000 AS minute,
                        COUNT(*) FILTER (WHERE status = 'finalized'),
                        COUNT(*) FILTER (WHERE status = 'failed'),
                        CAST(AVG(finished_at - created_at) AS DOUBLE PRECISION)
                 FROM task
                 WHERE seq > (SELECT MAX(seq) FROM task) - 100000
                   AND finished_at >= $1 AND gold IS NULL AND status IN ('finalized', 'failed')
                 GROUP BY (finished_at / 60000) * 60000 ORDER BY 1",
            )?
            .query_map([since], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
    }

    /// The event log, newest first: what the rows that record each event say, so it is as
    /// durable as they are and costs the write path nothing. Each kind is read from its newest
    /// rows by key (an index walk), then all are merged by time; `task` and `worker` filter.
    /// Rows: `(at ms, kind, task id, worker id, detail)`.
    fn events(
        &self,
        task: Option<&str>,
        worker: Option<&str>,
        limit: u32,
        now: i64,
        ttl: i64,
    ) -> Result<Vec<EventRow>> {
        self.sql()
            .prepare_cached(EVENTS_SQL)?
            .query_map(params![task, worker, limit, now - ttl, ttl], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
    }

    /// A task's live leases, oldest first.
    fn live_leases_of(&self, task: &protocol::TaskId) -> Result<Vec<LeaseView>> {
        self.sql()
            .prepare_cached(
                "SELECT id, worker_id, expires_at FROM lease
                 WHERE task_id = $1 AND state = 'active' ORDER BY created_at",
            )?
            .query_map([task.to_string()], |r| {
                Ok(LeaseView {
                    lease_id: parsed(r, 0)?,
                    worker_id: parsed(r, 1)?,
                    expires_at: from_ms(r.get(2)?),
                })
            })?
            .collect()
    }

    /// Tasks (gold ones left out) by state as views show it.
    fn status_counts(&self) -> Result<Vec<(TaskStatus, u64)>> {
        self.sql()
            .prepare_cached(&format!(
                "SELECT {VIEW_STATUS_SQL}, COUNT(*) FROM task WHERE gold IS NULL GROUP BY 1"
            ))?
            .query_map((), |r| Ok((parsed(r, 0)?, r.get(1)?)))?
            .collect()
    }

    /// Submissions, workers and live leases; workers silent since `stale_before` count stale.
    fn counts(&self, stale_before: i64) -> Result<Counts> {
        let count = |sql: &str, p: &[&dyn ToArg]| -> Result<u64> {
            self.sql().prepare_cached(sql)?.query_row(p, |r| r.get(0))
        };
        Ok(Counts {
            submissions: count("SELECT COUNT(*) FROM submission", &[])?,
            workers: count("SELECT COUNT(*) FROM worker", &[])?,
            workers_active: count(
                "SELECT COUNT(*) FROM worker WHERE status = 'active' AND last_seen > $1",
                &[&stale_before],
            )?,
            workers_stale: count(
                "SELECT COUNT(*) FROM worker WHERE status = 'stale'
                     OR (status = 'active' AND last_seen <= $1)",
                &[&stale_before],
            )?,
            active_leases: count("SELECT COUNT(*) FROM lease WHERE state = 'active'", &[])?,
        })
    }

    /// Workers active and seen since `since`.
    fn live_workers(&self, since: i64) -> Result<Vec<LiveWorker>> {
        self.sql()
            .prepare_cached(
                "SELECT id, capabilities, model_hash, quarantine IS NOT NULL FROM worker
                 WHERE status = 'active' AND last_seen > $1",
            )?
            .query_map([since], |r| {
                Ok(LiveWorker {
                    id: parsed(r, 0)?,
                    capabilities: r.get::<_, Json<Vec<TaskType>>>(1)?.0,
                    model_hash: r.get(2)?,
                    quarantined: r.get(3)?,
                })
            })?
            .collect()
    }

    /// Who answered `task`.
    fn voters(&self, task: &protocol::TaskId) -> Result<Vec<WorkerId>> {
        self.sql()
            .prepare_cached("SELECT worker_id FROM submission WHERE task_id = $1")?
            .query_map([task.to_string()], |r| parsed(r, 0))?
            .collect()
    }

    /// The first type after `after` (in byte order) that has open tasks.
    fn next_open_type(&self, after: &str) -> Result<Option<TaskType>> {
        self.sql()
            .prepare_cached(&self.starved_sql().next_type)?
            .query_row([after], |r| parsed(r, 0))
            .optional()
    }

    /// The model contents open tasks of type `t` pin.
    fn open_hashes(&self, t: &TaskType) -> Result<Vec<Option<String>>> {
        self.sql()
            .prepare_cached(&self.starved_sql().hashes)?
            .query_map([t.as_str()], |r| r.get(0))?
            .collect()
    }

    /// The most answers an open task of type `t` pinning `hash` needs.
    fn most_required(&self, t: &TaskType, hash: Option<&str>) -> Result<u32> {
        self.sql()
            .prepare_cached(&self.starved_sql().most_required)?
            .query_row(params![t.as_str(), hash], |r| r.get(0))
    }

    /// The starved open tasks of type `t` pinning `hash` (none for types that are not
    /// generated) when the `capable` live workers can do it: those that need more workers than
    /// are live, less those whose voters are gone enough to make up for it.
    fn count_starved(&self, t: &TaskType, hash: Option<&str>, capable: &[&str]) -> Result<u64> {
        let live = capable.len() as u32;
        let capable = serde_json::to_string(capable).expect("worker ids serialize");
        self.sql()
            .prepare_cached(&self.starved_sql().count)?
            .query_row(params![t.as_str(), live, capable, hash], |r| r.get(0))
    }
}

/// One row of the event log: `(at ms, kind, task id, worker id, detail)`.
pub(crate) type EventRow = (i64, String, Option<String>, Option<String>, String);

/// The event log's statement ([`Views::events`]): `$1` a task id or NULL, `$2` a worker id or
/// NULL, `$3` the most rows, `$4` the time (ms) before which a silent worker is stale, `$5` the
/// heartbeat TTL (ms: a worker goes stale that long after it was last seen).
const EVENTS_SQL: &str = "
SELECT at, kind, task_id, worker_id, detail FROM (
  SELECT * FROM (SELECT created_at AS at, 'task created' AS kind, id AS task_id,
                        CAST(NULL AS TEXT) AS worker_id, type AS detail, 1 AS stage
                 FROM task WHERE gold IS NULL AND (CAST($1 AS TEXT) IS NULL OR id = $1)
                   AND CAST($2 AS TEXT) IS NULL
                 ORDER BY seq DESC LIMIT $3) AS created
  UNION ALL
  SELECT * FROM (SELECT finished_at, 'task ' || status, id, CAST(NULL AS TEXT),
                        COALESCE(failure_reason, error_message, final_label, ''), 6
                 FROM task WHERE gold IS NULL AND finished_at IS NOT NULL
                   AND (CAST($1 AS TEXT) IS NULL OR id = $1) AND CAST($2 AS TEXT) IS NULL
                 ORDER BY seq DESC LIMIT $3) AS ended
  UNION ALL
  SELECT * FROM (SELECT created_at, 'leased', task_id, worker_id,
                        CASE WHEN verification IS NULL THEN '' ELSE 'to verify' END, 2
                 FROM lease WHERE (CAST($1 AS TEXT) IS NULL OR task_id = $1)
                   AND (CAST($2 AS TEXT) IS NULL OR worker_id = $2)
                 ORDER BY id DESC LIMIT $3) AS leased
  UNION ALL
  SELECT * FROM (SELECT ended_at, 'lease ' || state, task_id, worker_id, '', 3
                 FROM lease WHERE state IN ('expired', 'released', 'cancelled')
                   AND (CAST($1 AS TEXT) IS NULL OR task_id = $1)
                   AND (CAST($2 AS TEXT) IS NULL OR worker_id = $2)
                 ORDER BY id DESC LIMIT $3) AS lapsed
  UNION ALL
  SELECT * FROM (SELECT created_at, 'answered', task_id, worker_id,
                        CASE WHEN label <> '' THEN label
                             WHEN token_ids IS NOT NULL THEN 'a generation'
                             ELSE 'a vector' END, 4
                 FROM submission WHERE (CAST($1 AS TEXT) IS NULL OR task_id = $1)
                   AND (CAST($2 AS TEXT) IS NULL OR worker_id = $2)
                 ORDER BY id DESC LIMIT $3) AS answered
  UNION ALL
  SELECT * FROM (SELECT finished_at, 'verified', task_id, worker_id,
                        CASE WHEN passed = 1 THEN 'passed' ELSE 'refused' END
                        || CASE WHEN trap IS NULL THEN '' ELSE ' (a trap)' END, 5
                 FROM verification WHERE state = 'done' AND finished_at IS NOT NULL
                   AND (CAST($1 AS TEXT) IS NULL OR task_id = $1)
                   AND (CAST($2 AS TEXT) IS NULL OR worker_id = $2)
                 ORDER BY id DESC LIMIT $3) AS verified
  UNION ALL
  SELECT registered_at, 'worker joined', CAST(NULL AS TEXT), id, COALESCE(model, ''), 0
  FROM worker WHERE CAST($1 AS TEXT) IS NULL AND (CAST($2 AS TEXT) IS NULL OR id = $2)
  UNION ALL
  SELECT CASE WHEN status = 'offline' THEN last_seen ELSE last_seen + $5 END,
         CASE WHEN status = 'offline' THEN 'worker offline' ELSE 'worker stale' END,
         CAST(NULL AS TEXT), id, 'last seen', 7
  FROM worker WHERE (status = 'offline' OR last_seen < $4)
    AND CAST($1 AS TEXT) IS NULL AND (CAST($2 AS TEXT) IS NULL OR id = $2)
  UNION ALL
  SELECT COALESCE((SELECT MAX(g.created_at) FROM gold_answer g WHERE g.worker_id = worker.id),
                  last_seen),
         'worker quarantined', CAST(NULL AS TEXT), id, quarantine, 8
  FROM worker WHERE quarantine IS NOT NULL
    AND CAST($1 AS TEXT) IS NULL AND (CAST($2 AS TEXT) IS NULL OR id = $2)
) AS events
ORDER BY at DESC, stage DESC LIMIT $3";

fn rate(agreed: u64, decided: u64) -> Option<f64> {
    (decided > 0).then(|| agreed as f64 / decided as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn the_summary_reads_only_tasks_needing_more_workers_than_are_live() {
        let conn = store();
        let plan: String = (&conn as &dyn Sql)
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                crate::store::sqlite::Tx(&conn).starved_sql().count()
            ))
            .expect("explain")
            .query_map(params!["sentiment", 3, "[]", None::<String>], |r| {
                r.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("; ");
        assert!(
            plan.contains("task_open_required (type=? AND required>?)"),
            "{plan}"
        );
    }
}
