//! What clients add: tasks (in batches, idempotent by batch id) and gold items, and what the
//! gold rules read and write: picks for a lease, the answers given, quarantine.

use super::Exec;
use crate::store::rows::{parsed, Json};
use crate::store::sql::{numbered, params, OptionalExtension, Result, ToArg};
use protocol::generation::GenerationSpec;
use protocol::{TaskId, TaskType, WorkerId};

/// A task row to insert (queued, no answers yet; leased already when `active_leases` says so).
#[derive(Debug, Clone)]
pub(crate) struct TaskInsert {
    /// Its id.
    pub id: TaskId,
    /// Its type.
    pub task_type: TaskType,
    /// Its text.
    pub text: String,
    /// Answers it needs now.
    pub required: u32,
    /// Leases inserted with it (a gold task's one lease), in the same transaction.
    pub active_leases: u32,
    /// Leases that may end without a result before it fails.
    pub max_attempts: u32,
    /// A `zero-shot` task's candidates.
    pub labels: Option<Vec<String>>,
    /// An `embedding` task's agreement threshold.
    pub similarity: Option<f64>,
    /// What a generative task pins.
    pub generation: Option<GenerationSpec>,
    /// The model content it pins.
    pub model_hash: Option<String>,
    /// Scorings each distinct candidate gets.
    pub verifiers: u32,
    /// Answers the client asked for.
    pub asked: u32,
    /// The vote policy's name.
    pub policy: &'static str,
    /// The quorum.
    pub min_quorum: u32,
    /// The most answers it may take.
    pub max_answers: u32,
    /// The posterior the best label needs (the posterior policy).
    pub threshold: Option<f64>,
    /// At most one counted answer per model content.
    pub distinct_models: bool,
    /// The gold item it is an instance of.
    pub gold: Option<i64>,
}

/// A gold item to store.
#[derive(Debug, Clone)]
pub(crate) struct GoldInsert<'a> {
    /// Its type.
    pub task_type: &'a TaskType,
    /// Its text.
    pub text: &'a str,
    /// A `zero-shot` item's candidates.
    pub labels: Option<&'a [String]>,
    /// What a generative item pins.
    pub generation: Option<&'a GenerationSpec>,
    /// The known answer.
    pub answer: &'a str,
}

/// A gold item picked for a lease.
#[derive(Debug, Clone)]
pub(crate) struct GoldItem {
    /// Its id.
    pub id: i64,
    /// Its type.
    pub task_type: TaskType,
    /// Its text.
    pub text: String,
    /// A `zero-shot` item's candidates.
    pub labels: Option<Vec<String>>,
    /// What a generative item pins.
    pub generation: Option<GenerationSpec>,
}

/// A gold answer to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GoldAnswer<'a> {
    /// The item.
    pub gold: i64,
    /// The task it was leased as.
    pub task: &'a TaskId,
    /// Who answered.
    pub worker: &'a WorkerId,
    /// The task's type.
    pub task_type: &'a TaskType,
    /// The model that answered.
    pub model: Option<&'a str>,
    /// The model content that answered.
    pub model_hash: Option<&'a str>,
    /// What it answered.
    pub answer: &'a str,
    /// Whether that is the known answer.
    pub correct: bool,
}

/// The most task rows one statement inserts.
const ROWS_PER_INSERT: usize = 32;

/// Tasks and gold.
pub(crate) trait Adds: Exec {
    /// Whether a registered worker (of any status) advertises task type `t`.
    fn type_advertised(&self, t: &TaskType) -> Result<bool> {
        // Capabilities are stored as a JSON list of strings: look for the quoted name, LIKE's
        // wildcards escaped.
        let name = t
            .as_str()
            .replace('!', "!!")
            .replace('%', "!%")
            .replace('_', "!_");
        Ok(self
            .sql()
            .prepare_cached("SELECT 1 FROM worker WHERE capabilities LIKE $1 ESCAPE '!' LIMIT 1")?
            .query_row([format!("%\"{name}\"%")], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Holds batch `id` until the transaction ends: two coordinators given the same retried
    /// batch at once take turns (SQLite has one writer: nothing to hold).
    fn lock_batch(&self, id: &str) -> Result<()>;

    /// Batch `id`'s digest and the tasks it created, if it was added before.
    fn batch(&self, id: &str) -> Result<Option<(String, Vec<TaskId>)>> {
        self.sql()
            .prepare_cached("SELECT digest, task_ids FROM task_batch WHERE id = $1")?
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get::<_, Json<Vec<TaskId>>>(1)?.0))
            })
            .optional()
    }

    /// Remembers batch `id` (its tasks' `digest`) created `tasks`.
    fn record_batch(&self, id: &str, digest: &str, tasks: &[TaskId], now: i64) -> Result<()> {
        self.sql()
            .prepare_cached(
                "INSERT INTO task_batch (id, digest, task_ids, created_at)
                 VALUES ($1, $2, $3, $4)",
            )?
            .execute(params![
                id,
                digest,
                serde_json::to_string(tasks).expect("ids serialize"),
                now
            ])?;
        Ok(())
    }

    /// Inserts `rows`, created at `now`, up to [`ROWS_PER_INSERT`] to a statement (one
    /// statement text per count of rows, each prepared once), in order.
    fn insert_tasks(&self, now: i64, rows: &[TaskInsert]) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            // `$1` is the creation time; each row adds its 18 values.
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("('queued', $1, {})", numbered(2 + 18 * i, 18)))
                .collect();
            let sql = format!(
                "INSERT INTO task (status, created_at, id, type, text, required, active_leases,
                                   max_attempts, labels, similarity, generation, model_hash,
                                   verifiers, asked, policy, min_quorum, max_answers,
                                   distinct_models, gold, threshold)
                 VALUES {}",
                values.join(", ")
            );
            let texts: Vec<[Option<String>; 4]> = chunk
                .iter()
                .map(|t| {
                    [
                        Some(t.id.to_string()),
                        Some(t.task_type.as_str().to_owned()),
                        t.labels
                            .as_ref()
                            .map(|l| serde_json::to_string(l).expect("labels serialize")),
                        t.generation
                            .as_ref()
                            .map(|s| serde_json::to_string(s).expect("specs serialize")),
                    ]
                })
                .collect();
            let mut args: Vec<&dyn ToArg> = vec![&now];
            for (t, [id, task_type, labels, generation]) in chunk.iter().zip(&texts) {
                args.extend([
                    id as &dyn ToArg,
                    task_type,
                    &t.text,
                    &t.required,
                    &t.active_leases,
                    &t.max_attempts,
                    labels,
                    &t.similarity,
                    generation,
                    &t.model_hash,
                    &t.verifiers,
                    &t.asked,
                    &t.policy,
                    &t.min_quorum,
                    &t.max_answers,
                    &t.distinct_models,
                    &t.gold,
                    &t.threshold,
                ]);
            }
            self.sql().prepare_cached(&sql)?.defer(args.as_slice())?;
        }
        Ok(())
    }

    /// Stores gold items, leaving those already known; how many were new.
    fn insert_gold(&self, items: &[GoldInsert<'_>], now: i64) -> Result<u64> {
        let mut insert = self.sql().prepare_cached(
            "INSERT INTO gold (type, text, labels, generation, model_hash, answer, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT DO NOTHING",
        )?;
        let mut added = 0;
        for item in items {
            added += insert.execute(params![
                item.task_type.as_str(),
                item.text,
                item.labels
                    .map(|l| serde_json::to_string(l).expect("labels serialize")),
                item.generation
                    .map(|s| serde_json::to_string(s).expect("specs serialize")),
                item.generation.map(|s| s.model_hash.as_str()),
                item.answer,
                now
            ])? as u64;
        }
        Ok(added)
    }

    /// How many gold items there are.
    fn gold_count(&self) -> Result<u64> {
        self.sql()
            .query_row("SELECT COUNT(*) FROM gold", (), |r| r.get(0))
    }

    /// The smallest and largest gold item ids, if there are any.
    fn gold_ids(&self) -> Result<Option<(i64, i64)>> {
        let (lo, hi): (Option<i64>, Option<i64>) =
            self.sql()
                .query_row("SELECT MIN(id), MAX(id) FROM gold", (), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok(lo.zip(hi))
    }

    /// [`Adds::gold_items`]'s statement as the engine spells it (see [`gold_items_sql`]).
    fn gold_items_sql(&self) -> &'static str;

    /// Up to `limit` gold items of `capabilities` for `worker` (generative ones only of
    /// `model_hash`), none it holds a lease on, by id on one side of `start` (`from_start`: at
    /// or after it); `any`: also those it answered before.
    #[allow(clippy::too_many_arguments)]
    fn gold_items(
        &self,
        worker: &WorkerId,
        capabilities: &[TaskType],
        model_hash: Option<&str>,
        start: i64,
        any: bool,
        from_start: bool,
        limit: usize,
    ) -> Result<Vec<GoldItem>> {
        let caps = serde_json::to_string(capabilities).expect("task types serialize");
        self.sql()
            .prepare_cached(self.gold_items_sql())?
            .query_map(
                params![
                    worker.as_str(),
                    caps,
                    model_hash,
                    start,
                    any,
                    from_start,
                    limit as i64
                ],
                |r| {
                    Ok(GoldItem {
                        id: r.get(0)?,
                        task_type: parsed(r, 1)?,
                        text: r.get(2)?,
                        labels: r.get::<_, Option<Json<Vec<String>>>>(3)?.map(|j| j.0),
                        generation: r.get::<_, Option<Json<GenerationSpec>>>(4)?.map(|j| j.0),
                    })
                },
            )?
            .collect()
    }

    /// Gold item `gold`'s known answer.
    fn known_answer(&self, gold: i64) -> Result<String> {
        self.sql()
            .prepare_cached("SELECT answer FROM gold WHERE id = $1")?
            .query_row([gold], |r| r.get(0))
    }

    /// Records a gold answer.
    fn record_gold_answer(&self, a: &GoldAnswer<'_>, now: i64) -> Result<()> {
        self.sql()
            .prepare_cached(
                "INSERT INTO gold_answer (gold_id, task_id, worker_id, type, model, model_hash,
                                          answer, correct, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )?
            .execute(params![
                a.gold,
                a.task.to_string(),
                a.worker.as_str(),
                a.task_type.as_str(),
                a.model,
                a.model_hash,
                a.answer,
                a.correct,
                now
            ])?;
        Ok(())
    }

    /// A gold task ends, finalized on its known answer.
    fn finalize_gold(&self, task: &TaskId, known: &str, now: i64) -> Result<()> {
        self.sql()
            .prepare_cached(
                "UPDATE task SET status = 'finalized', final_label = $1, finished_at = $2
                 WHERE id = $3",
            )?
            .execute(params![known, now, task.to_string()])?;
        Ok(())
    }

    /// Of `worker`'s last `window` gold answers: how many, how many right.
    fn recent_gold(&self, worker: &WorkerId, window: u32) -> Result<(u32, u32)> {
        self.sql()
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(correct), 0) FROM
                     (SELECT correct FROM gold_answer WHERE worker_id = $1
                      ORDER BY id DESC LIMIT $2) AS recent",
            )?
            .query_row(params![worker.as_str(), window], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
    }

    /// Why `worker` is quarantined, when it is.
    fn quarantine(&self, worker: &WorkerId) -> Result<Option<String>> {
        Ok(self
            .sql()
            .prepare_cached("SELECT quarantine FROM worker WHERE id = $1")?
            .query_row([worker.as_str()], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Quarantines `worker` for `why`, or lets it out (`None`).
    fn set_quarantine(&self, worker: &WorkerId, why: Option<&str>) -> Result<()> {
        self.sql()
            .prepare_cached("UPDATE worker SET quarantine = $1 WHERE id = $2")?
            .execute(params![why, worker.as_str()])?;
        Ok(())
    }
}

/// [`Adds::gold_items`]'s statement, with `types` the subquery that lists the values of the
/// JSON array `$2` (each engine reads one its own way).
pub(crate) fn gold_items_sql(types: &str) -> String {
    format!(
        "SELECT id, type, text, labels, generation FROM gold
         WHERE type IN ({types})
           AND (model_hash IS NULL OR model_hash = $3)
           AND ($5 OR NOT EXISTS (SELECT 1 FROM gold_answer a
                                  WHERE a.gold_id = gold.id AND a.worker_id = $1))
           AND NOT EXISTS (SELECT 1 FROM task t JOIN lease l ON l.task_id = t.id
                           WHERE t.gold = gold.id AND l.worker_id = $1
                             AND l.state = 'active')
           AND (id >= $4) = $6
         ORDER BY id LIMIT $7"
    )
}
