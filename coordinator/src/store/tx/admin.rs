//! Worker tokens and the operator's reset.

use super::Exec;
use crate::store::sql::{params, OptionalExtension, Result};
use protocol::WorkerId;

/// Tokens and reset.
pub(crate) trait Admin: Exec {
    /// Stores `hash` as `worker`'s token, replacing any earlier one.
    fn store_token(&self, worker: &WorkerId, hash: &str, now: i64) -> Result<()> {
        self.sql()
            .prepare_cached(
                "INSERT INTO worker_token (worker_id, hash, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (worker_id) DO UPDATE SET hash = excluded.hash,
                     created_at = excluded.created_at",
            )?
            .execute(params![worker.as_str(), hash, now])?;
        Ok(())
    }

    /// Deletes `worker`'s token; whether it had one.
    fn delete_token(&self, worker: &WorkerId) -> Result<bool> {
        let n = self
            .sql()
            .prepare_cached("DELETE FROM worker_token WHERE worker_id = $1")?
            .execute([worker.as_str()])?;
        Ok(n > 0)
    }

    /// The hash of `worker`'s token, if it has one.
    fn token_hash(&self, worker: &WorkerId) -> Result<Option<String>> {
        self.sql()
            .prepare_cached("SELECT hash FROM worker_token WHERE worker_id = $1")?
            .query_row([worker.as_str()], |r| r.get(0))
            .optional()
    }

    /// Deletes every task, lease, submission, worker, score and gold answer (gold items and
    /// tokens stay).
    fn reset(&self) -> Result<()>;
}

/// What [`Admin::reset`] deletes on both engines.
pub(crate) const RESET: &str = "DELETE FROM submission; DELETE FROM lease; DELETE FROM task;
     DELETE FROM worker_score; DELETE FROM worker; DELETE FROM gold_answer;
     DELETE FROM task_batch; DELETE FROM score_delta;";
