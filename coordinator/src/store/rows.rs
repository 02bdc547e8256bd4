//! Typed rows: what the store reads, with ids and states parsed at the boundary.

use crate::store::sql::{FromValue, Row, ValueRef};
use crate::store::{blob_to_vector, from_ms};
use protocol::generation::{blob_to_ids, GenerationSpec};
use protocol::messages::{FailureReason, TaskAnnouncement, TaskView};
use protocol::policy::VoteRule;
use protocol::{TaskId, TaskStatus, TaskType, WorkerId};
use std::str::FromStr;

/// Reads a TEXT column into any type with `FromStr` (ids, states).
pub(crate) fn parsed<T>(row: &Row<'_>, idx: usize) -> crate::store::sql::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.get(idx)?;
    s.parse()
        .map_err(|e| crate::store::sql::Error::Conversion(idx, Box::new(e)))
}

/// As [`parsed`], for a nullable column.
pub(crate) fn parsed_opt<T>(row: &Row<'_>, idx: usize) -> crate::store::sql::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if row.is_null(idx)? {
        Ok(None)
    } else {
        parsed(row, idx).map(Some)
    }
}

/// Newtype so JSON-in-TEXT columns (capabilities) load with `row.get`.
pub(crate) struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromValue for Json<T> {
    fn from_value(value: ValueRef<'_>) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match value {
            ValueRef::Text(s) => Ok(Json(serde_json::from_str(s)?)),
            v => Err(format!("{v:?} is not JSON text").into()),
        }
    }
}

/// A `task` row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRow {
    pub id: TaskId,
    pub task_type: TaskType,
    pub text: String,
    pub status: TaskStatus,
    pub required: u32,
    pub max_attempts: u32,
    pub attempts: u32,
    pub active_leases: u32,
    pub submissions: u32,
    pub final_label: Option<String>,
    pub final_confidence: Option<f64>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Candidate labels of a `zero-shot` task.
    pub labels: Option<Vec<String>>,
    /// Agreement threshold of an `embedding` task.
    pub similarity: Option<f64>,
    /// Consensus vector of a finalized `embedding` task.
    pub final_embedding: Option<Vec<f32>>,
    /// What a generative task pins.
    pub generation: Option<GenerationSpec>,
    /// The token ids a generative task agreed on.
    pub final_token_ids: Option<Vec<u32>>,
    /// Their text.
    pub final_text: Option<String>,
    /// Why a failed task failed.
    pub failure_reason: Option<FailureReason>,
    /// A generative task whose candidates are being scored.
    pub verifying: bool,
    /// Scorings each distinct candidate gets.
    pub verifiers: u32,
    /// The answers the client asked for (`required` grows past it in inconclusive rounds).
    pub asked: u32,
    /// How the answers decide it.
    pub vote: VoteRule,
    /// Its answers reached no quorum: more replicas run.
    pub inconclusive: bool,
    /// At most one counted answer per model content hash.
    pub distinct_models: bool,
    /// The model content it pins (generative tasks: the spec's).
    pub model_hash: Option<String>,
    /// The gold item this task is an instance of.
    pub gold: Option<i64>,
    /// The posterior its answers last reached (the posterior policy).
    pub posterior: Option<f64>,
    /// Only read with [`TASK_VIEW_COLUMNS`].
    pub reserved_by: Option<WorkerId>,
    pub lease_expires_at: Option<i64>,
}

/// A task's status as read: an open task is stored `queued` and read `assigned` while it has
/// live leases. A literal (for `concat!`).
macro_rules! read_status {
    () => {
        "CASE WHEN task.status = 'queued' AND task.active_leases > 0 THEN 'assigned' \
         ELSE task.status END"
    };
}

/// The columns [`TaskRow::from_row`] reads, in order, as a literal (for `concat!`).
macro_rules! task_columns {
    () => {
        concat!(
            "task.id, task.type, task.text, ",
            read_status!(),
            ", task.required, task.max_attempts, \
         task.attempts, task.active_leases, task.submissions, task.final_label, \
         task.final_confidence, task.error_message, task.created_at, task.finished_at, \
         task.labels, task.similarity, task.final_embedding, task.generation, \
         task.final_token_ids, task.final_text, task.failure_reason, task.verifying, \
         task.verifiers, task.asked, task.policy, task.min_quorum, task.max_answers, \
         task.inconclusive, task.distinct_models, task.model_hash, task.gold, task.threshold, \
         task.posterior"
        )
    };
}

/// The columns [`TaskRow::from_row`] reads, in order (qualified, so a query may join other
/// tables to `task`).
pub(crate) const TASK_COLUMNS: &str = task_columns!();

/// How many columns [`TASK_COLUMNS`] has: where a query's own columns after them start (the
/// live-lease summary of [`TASK_VIEW_COLUMNS`], say).
pub(crate) const TASK_COLUMN_COUNT: usize = 33;

/// A task's state as views show it: an open task in cross-scoring is `verifying`, one past a
/// round without a quorum `inconclusive`, one with live leases `assigned` (an open task is
/// stored `queued` either way).
pub(crate) const VIEW_STATUS_SQL: &str = concat!(
    "CASE WHEN task.status IN ('queued', 'assigned') AND task.verifying = 1 THEN 'verifying' \
     WHEN task.status IN ('queued', 'assigned') AND task.inconclusive = 1 THEN 'inconclusive' \
     ELSE ",
    read_status!(),
    " END"
);

/// [`TASK_COLUMNS`] plus the live-lease summary that views show (kept off the hot paths).
pub(crate) const TASK_VIEW_COLUMNS: &str = concat!(
    task_columns!(),
    ", (SELECT worker_id FROM lease l WHERE l.task_id = task.id AND l.state = 'active' \
      ORDER BY l.created_at DESC LIMIT 1), \
     (SELECT MAX(expires_at) FROM lease l WHERE l.task_id = task.id AND l.state = 'active')"
);

impl TaskRow {
    /// A task from [`TASK_COLUMNS`] (the row's first [`TASK_COLUMN_COUNT`]; a query may add its
    /// own after).
    pub(crate) fn from_row(r: &Row<'_>) -> crate::store::sql::Result<Self> {
        Ok(Self {
            id: parsed(r, 0)?,
            task_type: parsed(r, 1)?,
            text: r.get(2)?,
            status: parsed(r, 3)?,
            required: r.get(4)?,
            max_attempts: r.get(5)?,
            attempts: r.get(6)?,
            active_leases: r.get(7)?,
            submissions: r.get(8)?,
            final_label: r.get(9)?,
            final_confidence: r.get(10)?,
            error_message: r.get(11)?,
            created_at: r.get(12)?,
            finished_at: r.get(13)?,
            labels: r.get::<_, Option<Json<Vec<String>>>>(14)?.map(|j| j.0),
            similarity: r.get(15)?,
            final_embedding: r.get::<_, Option<Vec<u8>>>(16)?.map(|b| blob_to_vector(&b)),
            generation: r.get::<_, Option<Json<GenerationSpec>>>(17)?.map(|j| j.0),
            final_token_ids: r.get::<_, Option<Vec<u8>>>(18)?.map(|b| blob_to_ids(&b)),
            final_text: r.get(19)?,
            failure_reason: parsed_opt(r, 20)?,
            verifying: r.get(21)?,
            verifiers: r.get(22)?,
            asked: r.get(23)?,
            vote: VoteRule {
                policy: parsed(r, 24)?,
                min_quorum: r.get(25)?,
                max_answers: r.get(26)?,
                threshold: r.get(31)?,
            },
            inconclusive: r.get(27)?,
            distinct_models: r.get(28)?,
            model_hash: r.get(29)?,
            gold: r.get(30)?,
            posterior: r.get(32)?,
            reserved_by: None,
            lease_expires_at: None,
        })
    }

    /// A task from [`TASK_VIEW_COLUMNS`], with its live-lease summary.
    pub(crate) fn from_view_row(r: &Row<'_>) -> crate::store::sql::Result<Self> {
        Ok(Self {
            reserved_by: parsed_opt(r, TASK_COLUMN_COUNT)?,
            lease_expires_at: r.get(TASK_COLUMN_COUNT + 1)?,
            ..Self::from_row(r)?
        })
    }

    pub(crate) fn view(self) -> TaskView {
        let status = self.view_status();
        TaskView {
            id: self.id,
            task_type: self.task_type,
            text: self.text,
            status,
            labels: self.labels,
            similarity: self.similarity,
            vote: self.generation.is_none().then_some(self.vote),
            distinct_models: self.distinct_models,
            model_hash: if self.generation.is_none() {
                self.model_hash
            } else {
                None
            },
            final_label: self.final_label,
            final_embedding: self.final_embedding,
            final_confidence: self.final_confidence,
            posterior: self.posterior,
            generation: self.generation,
            final_text: self.final_text,
            final_token_ids: self.final_token_ids,
            required_submissions: self.asked,
            submissions: self.submissions,
            active_leases: self.active_leases,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            reserved_by: self.reserved_by,
            lease_expires_at: self.lease_expires_at.map(from_ms),
            error_message: self.error_message,
            failure_reason: self.failure_reason,
            created_at: from_ms(self.created_at),
            finished_at: self.finished_at.map(from_ms),
        }
    }

    /// The state views show (see [`VIEW_STATUS_SQL`]).
    pub(crate) fn view_status(&self) -> TaskStatus {
        match self.status {
            s if s.is_terminal() => s,
            _ if self.verifying => TaskStatus::Verifying,
            _ if self.inconclusive => TaskStatus::Inconclusive,
            s => s,
        }
    }

    pub(crate) fn announcement(&self) -> TaskAnnouncement {
        TaskAnnouncement {
            task_id: self.id,
            task_type: self.task_type.clone(),
            required: self.required,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_columns_are_counted() {
        assert_eq!(TASK_COLUMNS.matches(',').count() + 1, TASK_COLUMN_COUNT);
    }
}
