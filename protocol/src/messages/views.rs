//! What views show: a task with its answers and leases, the leaderboards, workers, stats.

use crate::generation::GenerationSpec;
use crate::ids::{LeaseId, TaskId, TaskType, WorkerId};
use crate::policy::{GoldScore, VoteRule};
use crate::status::{FailureReason, TaskStatus, WorkerStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A task as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Its input.
    pub text: String,
    /// The candidate labels of a `zero-shot` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The agreement threshold of an `embedding` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// How its answers decide it (label and embedding tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<VoteRule>,
    /// At most one counted answer per model content hash.
    #[serde(default)]
    pub distinct_models: bool,
    /// The model content a label or embedding task pins (generative tasks pin theirs in
    /// `generation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Where it is in its lifecycle.
    pub status: TaskStatus,
    /// The consensus label, once finalized.
    pub final_label: Option<String>,
    /// The consensus vector of a finalized `embedding` task: the mean of the largest agreeing
    /// group. Left out of lists (`task.list`); `task.get` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_embedding: Option<Vec<f32>>,
    /// Mean confidence of the winning label; for an `embedding` task, the mean cosine of the
    /// winning group's vectors to the consensus vector; for a generative task, the mean
    /// probability of the agreed tokens; under the posterior policy, the winning label's
    /// posterior.
    pub final_confidence: Option<f64>,
    /// Under the posterior policy, the best label's posterior after the last round of answers
    /// (the one that decided it, or fell short and asked for another answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posterior: Option<f64>,
    /// What a generative task pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    /// The generated text agreed on, once a generative task is finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_text: Option<String>,
    /// The token ids agreed on. Left out of lists (`task.list`); `task.get` has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_token_ids: Option<Vec<u32>>,
    /// Distinct workers that must answer.
    pub required_submissions: u32,
    /// Results received.
    pub submissions: u32,
    /// Leases live now.
    pub active_leases: u32,
    /// Leases that ended without a result.
    pub attempts: u32,
    /// Attempts allowed before the task fails.
    pub max_attempts: u32,
    /// The worker holding the most recent live lease (the original API's `reserved_by`).
    pub reserved_by: Option<WorkerId>,
    /// When the last of its live leases runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Why it failed, for people.
    pub error_message: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Finalization or failure time.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A stored result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionView {
    /// Who answered.
    pub worker_id: WorkerId,
    /// The answer of a label task.
    pub label: Option<String>,
    /// The answer of an `embedding` task; left out when a task's submitted vectors hold more
    /// than 65,536 numbers in all (the consensus vector stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// The text of a generative task's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The token ids of a generative task's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// The model's confidence.
    pub confidence: f64,
    /// The model that answered.
    pub model: Option<String>,
    /// SHA-256 of the model content that answered, when the worker said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Whether it matched the consensus (set at finalization).
    pub agreed: Option<bool>,
    /// A generation's per-token log-probabilities, as its worker computed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
    /// Under the posterior policy, how strongly it counted: the log-odds, from its model
    /// content's calibration on gold (and its worker's record when worse), that it is right
    /// against any one other label (0: no better than a guess).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Where each generated token's text ends in `text`, in bytes, when the worker said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ends: Option<Vec<u32>>,
    /// How many tokens the model read (the prompt after its template, an embedding's input),
    /// when the worker said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
}

/// One verifier's verdict on a candidate of a generative task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationView {
    /// The verifier.
    pub worker_id: WorkerId,
    /// The token ids it scored.
    pub token_ids: Vec<u32>,
    /// Whether the candidate passed: every gap within the model's `eps` and the stop rule held.
    pub passed: bool,
    /// The largest gap, in logits, between a candidate token and the one decoding picks there.
    pub max_gap: f32,
    /// Whether its report agreed with the other verifiers' (None until decided).
    pub agreed: Option<bool>,
    /// Whether the scoring was exact: a bit-invariant engine found every gap exactly 0, so the
    /// candidate is the very answer that engine generates (false: within `eps`, or a scorer
    /// that cannot tell).
    #[serde(default)]
    pub exact: bool,
}

/// One entry of the event log: something that happened to a task or a worker, as the store
/// records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What: `task created`, `leased`, `answered`, `verified`, `task finalized`, `task failed`,
    /// `task cancelled`, `lease expired`, `lease released`, `lease cancelled`, `worker joined`,
    /// `worker stale`, `worker offline`, `worker quarantined`.
    pub kind: String,
    /// The task, when it is a task's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The worker, when one took part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// The label answered, the verdict, why a task failed, a worker's model...
    pub detail: String,
}

/// A live lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The lease.
    pub lease_id: LeaseId,
    /// Its holder.
    pub worker_id: WorkerId,
    /// When it runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// Reply to [`crate::messages::TaskGetRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task: TaskView,
    /// Its results, oldest first.
    pub submissions: Vec<SubmissionView>,
    /// Its live leases.
    pub leases: Vec<LeaseView>,
    /// How each verifier scored the task's candidates (generative tasks that went to
    /// cross-scoring; traps left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verifications: Vec<VerificationView>,
    /// Set while the task is open and too few live workers can do it to finish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starved: Option<Starvation>,
}

/// Why an open task cannot finish with the workers alive now: it still needs answers from
/// `needs` distinct workers, and only `capable` live workers that can do its type have not
/// answered it yet. It keeps waiting: a worker may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Starvation {
    /// Answers it still needs, each from a distinct worker.
    pub needs: u32,
    /// Live workers that can do its type and have not answered it.
    pub capable: u32,
}

impl Starvation {
    /// Capable workers missing: `needs - capable`.
    pub fn short(&self) -> u32 {
        self.needs.saturating_sub(self.capable)
    }
}

impl std::fmt::Display for Starvation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "needs answers from {} more distinct workers, and {} live worker{} that can do its \
             type {} not answered it ({} short)",
            self.needs,
            self.capable,
            if self.capable == 1 { "" } else { "s" },
            if self.capable == 1 { "has" } else { "have" },
            self.short()
        )
    }
}

/// The starved tasks of one type (see [`Starvation`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarvedType {
    /// The task type.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// The model content its starved tasks pin (generative types): only workers serving it count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Its open tasks that are starved.
    pub tasks: u64,
    /// Live workers that can do this type.
    pub live_workers: u32,
    /// How many more capable workers would let every one of them finish: the largest
    /// `required` among the type's open tasks, less `live_workers`.
    pub workers_short: u32,
}

impl std::fmt::Display for StarvedType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} task{} starved: {} live worker{} can do {}{}, {} more needed",
            self.tasks,
            self.task_type,
            if self.tasks == 1 { " is" } else { "s are" },
            self.live_workers,
            if self.live_workers == 1 { "" } else { "s" },
            self.task_type,
            match &self.model_hash {
                Some(h) => format!(" with model content {}…", &h[..h.len().min(12)]),
                None => String::new(),
            },
            self.workers_short
        )
    }
}

/// One leaderboard row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardEntry {
    /// The worker.
    pub worker_id: WorkerId,
    /// One per submission that matched a finalized consensus or verification, less one per
    /// trap passed and per verification outside the verifiers' agreeing group.
    pub points: i64,
    /// Trap candidates it refused, as a verifier should.
    #[serde(default)]
    pub traps_caught: u64,
    /// Trap candidates it passed.
    #[serde(default)]
    pub traps_missed: u64,
    /// Its answers to gold (known-answer) tasks, and how many were right.
    #[serde(default)]
    pub gold: GoldScore,
    /// Quarantined for poor gold accuracy: it gets only gold until it recovers.
    #[serde(default)]
    pub quarantined: bool,
    /// Submissions it made.
    pub submissions: u64,
    /// The model it last registered with.
    #[serde(default)]
    pub model: Option<String>,
    /// Share of its submissions on finalized tasks that matched the consensus.
    #[serde(default)]
    pub agreement_rate: Option<f64>,
}

/// Agreement with consensus of one model on one task type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAgreement {
    /// The model id submissions carried (`-` when none).
    pub model: String,
    /// The content hash they carried (the weights, config and tokenizer loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// The task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Submissions made.
    pub submissions: u64,
    /// Of those, on finalized tasks.
    pub decided: u64,
    /// Of those, matching the consensus.
    pub agreed: u64,
    /// `agreed / decided`.
    pub agreement_rate: Option<f64>,
    /// Its answers to gold tasks of this type, and how many were right.
    #[serde(default)]
    pub gold: GoldScore,
    /// How its reported confidence compares with how often it is right on gold (label
    /// types), which the posterior policy weighs its answers by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationView>,
}

/// A model content's calibration on gold: its reliability diagram and Brier score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationView {
    /// Mean squared error of its reported confidences against right (1) or wrong (0); 0 is
    /// perfect, 0.25 a coin that always says 0.5.
    pub brier: f64,
    /// Gold answers by reported confidence, in tenths; bins without gold left out.
    pub bins: Vec<ReliabilityBin>,
    /// Its wrong gold answers by answered label and true label (its confusion row of each
    /// label: where the posterior policy sends an answer's weight when it is wrong).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<Confused>,
}

/// Wrong gold answers of one model content that gave one label where the truth was another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confused {
    /// The label it answered.
    pub answered: String,
    /// The gold label.
    pub truth: String,
    /// How many times.
    pub answers: u64,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// The bin's lower edge (it spans a tenth).
    pub low: f64,
    /// Gold answers in it.
    pub answered: u64,
    /// Their mean reported confidence.
    pub confidence: f64,
    /// How often they were right.
    pub accuracy: f64,
}

/// Reply to `api.leaderboard.models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAgreementReply {
    /// By model, then task type.
    pub models: Vec<ModelAgreement>,
}

/// Reply to `api.leaderboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardReply {
    /// Highest points first, ties by worker id.
    pub entries: Vec<LeaderboardEntry>,
}

/// A worker in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its liveness.
    pub status: WorkerStatus,
    /// What it can do.
    pub capabilities: Vec<TaskType>,
    /// What it runs.
    pub model: Option<String>,
    /// SHA-256 of the model content it loaded: what a task pins and `--by-model` groups by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Its last heartbeat or request.
    pub last_seen: DateTime<Utc>,
    /// First seen.
    pub registered_at: DateTime<Utc>,
    /// Leases it holds now.
    pub active_leases: u32,
    /// Trap candidates it refused, as a verifier should.
    #[serde(default)]
    pub traps_caught: u64,
    /// Trap candidates it passed.
    #[serde(default)]
    pub traps_missed: u64,
    /// Its answers to gold tasks, and how many were right.
    #[serde(default)]
    pub gold: GoldScore,
    /// Why it is quarantined (it gets only gold until it recovers), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

/// One running coordinator as it reports itself: in its micro-service stats (`$SRV.STATS`, the
/// `data` of its status endpoint) and on its status subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    /// Its micro-service id (unique per process).
    pub id: String,
    /// The aimarket version it runs.
    pub version: String,
    /// The subject prefix it serves.
    pub prefix: String,
    /// Its store: `sqlite` and the file.
    pub store: String,
    /// Its HTTP gateway, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// When it started.
    pub started: DateTime<Utc>,
    /// Tasks it created.
    pub tasks_created: u64,
    /// Leases it granted.
    pub leases_granted: u64,
    /// Submissions it stored.
    pub submissions: u64,
    /// Tasks it finalized.
    pub tasks_finalized: u64,
    /// Tasks it failed.
    pub tasks_failed: u64,
    /// Heartbeats it took.
    pub heartbeats: u64,
}

/// Reply to `api.workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersReply {
    /// Every worker ever seen, by id.
    pub workers: Vec<WorkerView>,
}

/// Reply to `api.stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Tasks stored.
    pub tasks_total: u64,
    /// Tasks per state (every state present).
    pub tasks_by_status: BTreeMap<TaskStatus, u64>,
    /// Results stored.
    pub submissions: u64,
    /// Workers known.
    pub workers: u64,
    /// Workers heartbeating within the TTL.
    pub workers_active: u64,
    /// Workers silent past the TTL.
    pub workers_stale: u64,
    /// Leases live now.
    pub active_leases: u64,
    /// Open tasks that too few live workers can do to finish them (see [`Starvation`]).
    #[serde(default)]
    pub tasks_starved: u64,
    /// Those tasks by type.
    #[serde(default)]
    pub starved: Vec<StarvedType>,
}
