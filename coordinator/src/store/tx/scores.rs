//! Points and the other per-worker counters (traps caught and missed, gold answered and right),
//! all through one engine-aware path: SQLite adds them to the workers' `worker_score` rows in
//! place (one writer: nothing to contend with), PostgreSQL appends them to `score_delta`, which
//! takes no lock on a score row (every finalization of the same workers would otherwise update,
//! and lock until commit, the same few rows: one finalization at a time across all
//! coordinators), and the sweeper folds them in. Readers add both. Several workers' credits go
//! in worker order: one lock order everywhere.

use super::Exec;
use crate::store::sql::{params, Result};
use protocol::WorkerId;

/// What one event adds to a worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Credit {
    /// Points (negative: a penalty).
    pub points: i64,
    /// Traps it caught.
    pub traps_caught: i64,
    /// Traps it passed.
    pub traps_missed: i64,
    /// Gold answers it gave.
    pub gold_answered: i64,
    /// Gold answers it got right.
    pub gold_right: i64,
}

impl Credit {
    /// `points` points and nothing else.
    pub(crate) fn points(points: i64) -> Self {
        Self {
            points,
            ..Self::default()
        }
    }
}

/// Points and counters.
pub(crate) trait Scores: Exec {
    /// One point to each worker whose answer on `task` agreed with the consensus.
    fn award_agreeing(&self, task: &protocol::TaskId) -> Result<()>;

    /// Adds each credit to its worker's counters, in worker order.
    fn credit(&self, credits: &mut [(WorkerId, Credit)]) -> Result<()>;

    /// A worker's counters as they stand (with the appended ones not yet folded in). The views
    /// join [`TOTALS`] for every worker at once; tests ask for one.
    #[cfg(test)]
    fn score(&self, worker: &WorkerId) -> Result<Credit> {
        let sql = format!(
            "SELECT points, traps_caught, traps_missed, gold_answered, gold_right
             FROM {TOTALS} t WHERE worker_id = $1"
        );
        use crate::store::sql::OptionalExtension;
        Ok(self
            .sql()
            .prepare_cached(&sql)?
            .query_row([worker.as_str()], |r| {
                Ok(Credit {
                    points: r.get(0)?,
                    traps_caught: r.get(1)?,
                    traps_missed: r.get(2)?,
                    gold_answered: r.get(3)?,
                    gold_right: r.get(4)?,
                })
            })
            .optional()?
            .unwrap_or_default())
    }
}

/// Each worker's counters as they stand, as a table to join (`worker_id` and one column per
/// counter): its score row plus what was appended and not yet folded in.
pub(crate) const TOTALS: &str = "(SELECT worker_id,
        CAST(SUM(points) AS BIGINT) AS points,
        CAST(SUM(traps_caught) AS BIGINT) AS traps_caught,
        CAST(SUM(traps_missed) AS BIGINT) AS traps_missed,
        CAST(SUM(gold_answered) AS BIGINT) AS gold_answered,
        CAST(SUM(gold_right) AS BIGINT) AS gold_right
    FROM (SELECT worker_id, points, traps_caught, traps_missed, gold_answered, gold_right
          FROM worker_score
          UNION ALL
          SELECT worker_id, points, traps_caught, traps_missed, gold_answered, gold_right
          FROM score_delta) AS u
    GROUP BY worker_id)";

/// Adds `credits` with `sql` (parameters: worker, then [`Credit`]'s counters in order), in
/// worker order.
pub(crate) fn credit_each<S: Exec + ?Sized>(
    s: &S,
    sql: &str,
    credits: &mut [(WorkerId, Credit)],
) -> Result<()> {
    credits.sort_by(|a, b| a.0.cmp(&b.0));
    let mut add = s.sql().prepare_cached(sql)?;
    for (worker, c) in credits.iter() {
        add.execute(params![
            worker.as_str(),
            c.points,
            c.traps_caught,
            c.traps_missed,
            c.gold_answered,
            c.gold_right
        ])?;
    }
    Ok(())
}
