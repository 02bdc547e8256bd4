//! What the coordinator publishes: task announcements (a wake-up hint) and task events.

use crate::ids::{TaskId, TaskType};
use crate::status::{FailureReason, TaskStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `<p>.tasks.<type>`: a task has free slots. A wake-up hint for idle workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAnnouncement {
    /// The task.
    pub task_id: TaskId,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// How many distinct workers must answer it.
    pub required: u32,
}

/// `<p>.events.task.<task_id>`: a task reached a terminal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task.
    pub task_id: TaskId,
    /// `finalized`, `failed` or `cancelled`; `inconclusive` when its answers reached no quorum
    /// and another replica is leased (not an end: a waiting client keeps waiting).
    pub status: TaskStatus,
    /// Answers in so far (`inconclusive` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<u32>,
    /// The consensus label, when finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_label: Option<String>,
    /// The consensus vector, when an `embedding` task is finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_embedding: Option<Vec<f32>>,
    /// The token ids agreed on, when a generative task is finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_token_ids: Option<Vec<u32>>,
    /// Their text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_text: Option<String>,
    /// Mean confidence of the winning label (under the posterior policy, its posterior).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_confidence: Option<f64>,
    /// The posterior of the winning label (the posterior policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posterior: Option<f64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// When.
    pub at: DateTime<Utc>,
}

impl TaskEvent {
    /// An event saying only that `task` reached `status` at `at`.
    pub fn new(task_id: TaskId, status: TaskStatus, at: DateTime<Utc>) -> Self {
        Self {
            task_id,
            status,
            answers: None,
            final_label: None,
            final_embedding: None,
            final_token_ids: None,
            final_text: None,
            final_confidence: None,
            posterior: None,
            error_message: None,
            failure_reason: None,
            at,
        }
    }
}
