//! Every message body. Requests are named `XRequest`, their replies `XReply`; replies travel inside
//! the [`crate::reply`] envelope.

use crate::error::{ApiError, ErrorCode, ProtocolError};
use crate::generation::{is_sha256, GeneratedAnswer, GenerationSpec, SpecRequest, VerifyMode};
use crate::ids::{LeaseId, TaskId, TaskType, WorkerId};
use crate::limits::*;
use crate::policy::{GoldScore, Policy, VoteRule};
use crate::status::{TaskStatus, WorkerStatus};
use crate::verify::{Verification, VerifyJob};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Decodes a JSON request body.
///
/// # Errors
/// [`ProtocolError::Malformed`] when `bytes` is not JSON of the shape `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(bytes).map_err(ProtocolError::Malformed)
}

/// Encodes a message as JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("protocol messages always serialize")
}

fn check_text(text: &str, max_text_bytes: usize) -> Result<(), ProtocolError> {
    if text.trim().is_empty() {
        return Err(ProtocolError::invalid("text", "must not be empty"));
    }
    if text.len() > max_text_bytes {
        return Err(ProtocolError::TextTooLarge {
            len: text.len(),
            limit: max_text_bytes,
        });
    }
    Ok(())
}

fn check_capabilities(caps: &[TaskType]) -> Result<(), ProtocolError> {
    if caps.is_empty() {
        return Err(ProtocolError::invalid(
            "capabilities",
            "must name at least one task type",
        ));
    }
    if caps.len() > MAX_CAPABILITIES {
        return Err(ProtocolError::invalid(
            "capabilities",
            format!("at most {MAX_CAPABILITIES} task types"),
        ));
    }
    Ok(())
}

/// Checks a model id.
///
/// # Errors
/// [`ProtocolError::Invalid`] when it is too long.
pub fn check_model(model: Option<&str>) -> Result<(), ProtocolError> {
    match model {
        Some(m) if m.len() > MAX_MODEL_BYTES => Err(ProtocolError::invalid(
            "model",
            format!("at most {MAX_MODEL_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Checks a model content hash.
///
/// # Errors
/// [`ProtocolError::Invalid`] unless it is a SHA-256 in lowercase hex.
pub fn check_model_hash(hash: Option<&str>) -> Result<(), ProtocolError> {
    match hash {
        Some(h) if !is_sha256(h) => Err(ProtocolError::invalid(
            "model_hash",
            "must be a SHA-256 (64 lowercase hex digits)",
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Worker <-> coordinator
// ---------------------------------------------------------------------------------------------

/// `<p>.lease`: a worker asks for up to `max_tasks` leases on tasks it can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who asks.
    pub worker_id: WorkerId,
    /// The task types it can do.
    pub capabilities: Vec<TaskType>,
    /// How many leases it wants at most.
    #[serde(default = "one")]
    pub max_tasks: u32,
    /// A task it heard announced and would like first (a hint: others may have taken it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The model it runs, recorded on its registry entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// SHA-256 of the model content it loaded: generative tasks are leased only to workers whose
    /// hash is the one the task pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
}

fn one() -> u32 {
    1
}

impl LeaseRequest {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_capabilities(&self.capabilities)?;
        check_model(self.model.as_deref())?;
        check_model_hash(self.model_hash.as_deref())?;
        if self.max_tasks == 0 || self.max_tasks > MAX_LEASES_PER_REQUEST {
            return Err(ProtocolError::invalid(
                "max_tasks",
                format!("must be between 1 and {MAX_LEASES_PER_REQUEST}"),
            ));
        }
        Ok(())
    }
}

/// One granted lease, with everything the worker needs to do the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease; the submission must carry it.
    pub lease_id: LeaseId,
    /// The task.
    pub task_id: TaskId,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// The input.
    pub text: String,
    /// The candidate labels of a `zero-shot` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// What a generative task pins: the worker follows it exactly or refuses the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    /// A candidate answer to score instead of generating one: the worker runs one
    /// teacher-forced pass over it and submits a [`Verification`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyJob>,
    /// When the lease runs out unless a heartbeat renews it.
    pub expires_at: DateTime<Utc>,
}

/// Reply to [`LeaseRequest`]: the leases granted, possibly none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseReply {
    /// Granted leases, oldest task first.
    pub leases: Vec<Lease>,
    /// Timings the worker must keep to (see [`Timings`]).
    #[serde(flatten)]
    pub timings: Timings,
}

/// The coordinator's timings, sent to workers so they heartbeat often enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// A lease lasts this long after its grant or its holder's last heartbeat.
    pub lease_seconds: u64,
    /// A worker silent this long is stale and loses its leases.
    pub heartbeat_ttl_seconds: u64,
}

/// `<p>.lease.release`: a worker gives leases back (graceful shutdown), freeing their slots at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Who releases.
    pub worker_id: WorkerId,
    /// The leases it gives back.
    #[serde(default)]
    pub lease_ids: Vec<LeaseId>,
    /// The worker is shutting down: mark it `offline`.
    #[serde(default)]
    pub offline: bool,
}

/// Reply to [`ReleaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReply {
    /// How many of the named leases were live and are now free.
    pub released: u32,
}

/// `<p>.heartbeat.<worker_id>`: liveness. Registers the worker on first sight and renews the leases
/// it holds. Published; sent as a request, it gets a [`HeartbeatReply`].
///
/// A worker names the leases it holds in `leases`, and only those are renewed: a lease granted
/// whose reply never reached the worker (a coordinator that died before replying) then expires on
/// its own instead of being renewed forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Must equal the subject's last token.
    pub worker_id: WorkerId,
    /// Task types it can do.
    pub capabilities: Vec<TaskType>,
    /// The model it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// SHA-256 of the model content it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// The leases it holds, to renew. Absent: renew all of its leases (clients that do not track
    /// lease ids, like the original HTTP workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<LeaseId>>,
}

impl Heartbeat {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_capabilities(&self.capabilities)?;
        check_model(self.model.as_deref())?;
        check_model_hash(self.model_hash.as_deref())?;
        if self
            .leases
            .as_ref()
            .is_some_and(|l| l.len() > MAX_HEARTBEAT_LEASES)
        {
            return Err(ProtocolError::invalid(
                "leases",
                format!("at most {MAX_HEARTBEAT_LEASES}"),
            ));
        }
        Ok(())
    }
}

/// Reply to a [`Heartbeat`] sent as a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The coordinator's clock.
    pub ts: DateTime<Utc>,
    /// How many leases were renewed.
    pub renewed: u32,
    /// Leases it named that ended because their task closed (finalized, failed or cancelled):
    /// drop their work.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed: Vec<LeaseId>,
    /// Timings the worker must keep to.
    #[serde(flatten)]
    pub timings: Timings,
}

/// `<p>.submit.<task_id>`: a worker's result for a task it holds a lease on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The lease the result is for.
    pub lease_id: LeaseId,
    /// Who submits; must hold the lease.
    pub worker_id: WorkerId,
    /// The answer to a label task (`sentiment`, `zero-shot`); empty for other tasks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// The answer to an `embedding` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// The answer to a generative task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GeneratedAnswer>,
    /// The score of a candidate, for a verify lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// How sure the model is, in `[0, 1]`.
    pub confidence: f64,
    /// The model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// SHA-256 of the model content that answered; a generative task refuses any other than the
    /// one it pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
}

impl SubmitRequest {
    /// Checks the bounds: exactly one of `label`, `embedding` and `generation`, each within its
    /// limits.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        Answer::new(
            &self.label,
            self.embedding.as_deref(),
            self.generation.as_ref(),
            self.verification.as_ref(),
        )?;
        check_confidence(self.confidence)?;
        check_model(self.model.as_deref())?;
        check_model_hash(self.model_hash.as_deref())
    }
}

/// A submitted answer: a label, a vector, or generated tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    /// A label task's answer.
    Label(&'a str),
    /// An `embedding` task's answer.
    Embedding(&'a [f32]),
    /// A generative task's answer.
    Generated(&'a GeneratedAnswer),
    /// A verify lease's score of a candidate.
    Verified(&'a Verification),
}

impl<'a> Answer<'a> {
    /// The answer a submission carries.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] unless exactly one of them is given and it is within bounds.
    pub fn new(
        label: &'a str,
        embedding: Option<&'a [f32]>,
        generation: Option<&'a GeneratedAnswer>,
        verification: Option<&'a Verification>,
    ) -> Result<Self, ProtocolError> {
        if let Some(v) = verification {
            if label.is_empty() && embedding.is_none() && generation.is_none() {
                return Ok(Answer::Verified(v));
            }
            return Err(ProtocolError::invalid(
                "verification",
                "a verification comes alone, without a label, an embedding or a generation",
            ));
        }
        match (label.is_empty(), embedding, generation) {
            (true, None, None) => Err(ProtocolError::invalid(
                "label",
                "must not be empty (or give an embedding or a generation for those tasks)",
            )),
            (false, None, None) => check_label(label).map(|()| Answer::Label(label)),
            (true, Some(v), None) => check_embedding(v).map(|()| Answer::Embedding(v)),
            (true, None, Some(g)) => g.validate().map(|()| Answer::Generated(g)),
            _ => Err(ProtocolError::invalid(
                "label",
                "give one answer: a label, an embedding or a generation",
            )),
        }
    }
}

/// Checks a submitted vector.
///
/// # Errors
/// [`ProtocolError::Invalid`] when empty, too long, not finite or all zeros.
pub fn check_embedding(v: &[f32]) -> Result<(), ProtocolError> {
    if v.is_empty() || v.len() > MAX_EMBEDDING_DIM {
        return Err(ProtocolError::invalid(
            "embedding",
            format!("must hold between 1 and {MAX_EMBEDDING_DIM} numbers"),
        ));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(ProtocolError::invalid(
            "embedding",
            "must be finite numbers",
        ));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(ProtocolError::invalid(
            "embedding",
            "must not be all zeros (it has no direction)",
        ));
    }
    Ok(())
}

/// Checks a submitted label.
///
/// # Errors
/// [`ProtocolError::Invalid`] when empty or too long.
pub fn check_label(label: &str) -> Result<(), ProtocolError> {
    if label.trim().is_empty() {
        return Err(ProtocolError::invalid("label", "must not be empty"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(ProtocolError::invalid(
            "label",
            format!("at most {MAX_LABEL_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a submitted confidence.
///
/// # Errors
/// [`ProtocolError::Invalid`] unless it is a number in `[0, 1]`.
pub fn check_confidence(confidence: f64) -> Result<(), ProtocolError> {
    if !(0.0..=1.0).contains(&confidence) {
        return Err(ProtocolError::invalid(
            "confidence",
            format!("{confidence} is not in [0, 1]"),
        ));
    }
    Ok(())
}

/// Reply to [`SubmitRequest`]: sent only once the submission is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    /// The submission is stored (now or by an earlier copy of it).
    pub accepted: bool,
    /// This was a resend of a submission already stored.
    pub duplicate: bool,
    /// The task is finalized (by this submission or before it).
    pub finalized: bool,
    /// The consensus label, once finalized (none for `embedding` tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_label: Option<String>,
    /// The generated text agreed on, once a generative task is finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_text: Option<String>,
}

impl SubmitReply {
    /// The reply to a first submission that did not complete its task.
    pub fn stored() -> Self {
        Self {
            accepted: true,
            duplicate: false,
            finalized: false,
            final_label: None,
            final_text: None,
        }
    }
}

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
    /// Mean confidence of the winning label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_confidence: Option<f64>,
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
            error_message: None,
            failure_reason: None,
            at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client API
// ---------------------------------------------------------------------------------------------

/// The operations of `<p>.api.<op>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiOp {
    /// [`TaskAddRequest`] -> [`TaskAddReply`].
    TaskAdd,
    /// [`TaskGetRequest`] -> [`TaskDetail`].
    TaskGet,
    /// [`TaskListRequest`] -> [`TaskListReply`].
    TaskList,
    /// `{}` -> [`LeaderboardReply`].
    Leaderboard,
    /// `{}` -> [`ModelAgreementReply`]: agreement with consensus per model and task type.
    LeaderboardModels,
    /// `{}` -> [`WorkersReply`].
    Workers,
    /// `{}` -> [`StatsReply`].
    Stats,
    /// `{}` -> [`RequeueReply`]: run the sweeper now.
    OpsRequeue,
    /// [`ResetRequest`] -> `{}`: delete everything.
    OpsReset,
    /// [`WorkerTokenRequest`] -> [`WorkerTokenReply`]: issue (or replace) a worker's token.
    WorkerTokenCreate,
    /// [`WorkerTokenRequest`] -> [`WorkerTokenRevoked`]: revoke a worker's token.
    WorkerTokenRevoke,
    /// [`crate::policy::TaskIdsRequest`] -> [`crate::policy::TaskIdsReply`]: cancel open tasks.
    TaskCancel,
    /// [`crate::policy::TaskIdsRequest`] -> [`crate::policy::TaskIdsReply`]: requeue failed
    /// tasks with fresh attempts.
    TaskRetry,
    /// [`crate::policy::GoldAddRequest`] -> [`crate::policy::GoldAddReply`]: store known-answer
    /// items.
    GoldAdd,
}

impl ApiOp {
    /// Every operation.
    pub const ALL: &'static [ApiOp] = &[
        ApiOp::TaskAdd,
        ApiOp::TaskGet,
        ApiOp::TaskList,
        ApiOp::Leaderboard,
        ApiOp::LeaderboardModels,
        ApiOp::Workers,
        ApiOp::Stats,
        ApiOp::OpsRequeue,
        ApiOp::OpsReset,
        ApiOp::WorkerTokenCreate,
        ApiOp::WorkerTokenRevoke,
        ApiOp::TaskCancel,
        ApiOp::TaskRetry,
        ApiOp::GoldAdd,
    ];

    /// The subject token(s) of the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiOp::TaskAdd => "task.add",
            ApiOp::TaskGet => "task.get",
            ApiOp::TaskList => "task.list",
            ApiOp::Leaderboard => "leaderboard",
            ApiOp::LeaderboardModels => "leaderboard.models",
            ApiOp::Workers => "workers",
            ApiOp::Stats => "stats",
            ApiOp::OpsRequeue => "ops.requeue",
            ApiOp::OpsReset => "ops.reset",
            ApiOp::WorkerTokenCreate => "worker.token.create",
            ApiOp::WorkerTokenRevoke => "worker.token.revoke",
            ApiOp::TaskCancel => "task.cancel",
            ApiOp::TaskRetry => "task.retry",
            ApiOp::GoldAdd => "gold.add",
        }
    }

    /// Whether the operation changes state, and so needs an API key when keys are configured.
    /// Read-only views stay open.
    pub fn needs_api_key(self) -> bool {
        matches!(
            self,
            ApiOp::TaskAdd
                | ApiOp::OpsRequeue
                | ApiOp::OpsReset
                | ApiOp::WorkerTokenCreate
                | ApiOp::WorkerTokenRevoke
                | ApiOp::TaskCancel
                | ApiOp::TaskRetry
                | ApiOp::GoldAdd
        )
    }
}

impl fmt::Display for ApiOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiOp {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiOp::ALL
            .iter()
            .copied()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ApiOp::ALL.iter().map(|op| op.as_str()).collect();
                ApiError::new(
                    ErrorCode::UnknownOperation,
                    format!("unknown operation {s:?} (known: {})", known.join(", ")),
                )
            })
    }
}

/// An empty request or reply body (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// One task to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The input text.
    pub text: String,
    /// Its type (default `sentiment`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<TaskType>,
    /// Distinct workers that must answer (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_submissions: Option<u32>,
    /// Leases that may end without a result before the task fails (default: the coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Candidate labels; required by `zero-shot` tasks, refused on others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Cosine similarity at which two answers agree; `embedding` tasks only (default 0.999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// The generative model to run (default `smollm2`); generative tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model content to pin, when not the catalog's; generative tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// The bound on generated tokens, 1 to 512 (default 128); generative tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// The ids that end a generation (default: the model's); generative tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ids: Option<Vec<u32>>,
    /// A `translation`'s source language (ISO 639-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lang: Option<String>,
    /// A `translation`'s target language (ISO 639-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lang: Option<String>,
    /// Sample at this temperature (0 < T <= 4) with a seed the coordinator picks, instead of
    /// greedy decoding; generative tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// How the answer is verified: `exact` (every worker generates) or `generate_once` (one
    /// generates, the others score it); the coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyMode>,
    /// How the answers decide the task (default `quorum`); label and embedding tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Agreeing answers needed (default a strict majority of `required_submissions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_quorum: Option<u32>,
    /// Answers collected at most, inconclusive rounds included (default twice
    /// `required_submissions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answers: Option<u32>,
    /// At most one counted answer per model content hash (default: the coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_models: Option<bool>,
}

impl NewTask {
    /// A `sentiment` task with the defaults.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            task_type: None,
            required_submissions: None,
            max_attempts: None,
            labels: None,
            similarity: None,
            model: None,
            model_hash: None,
            max_new_tokens: None,
            stop_ids: None,
            source_lang: None,
            target_lang: None,
            temperature: None,
            verify: None,
            policy: None,
            min_quorum: None,
            max_answers: None,
            distinct_models: None,
        }
    }

    /// A generative task of `task_type` (`generate`, `summarization`) on the default model.
    pub fn generated(task_type: TaskType, text: impl Into<String>) -> Self {
        Self {
            task_type: Some(task_type),
            ..Self::text(text)
        }
    }

    /// A `translation` task from `source` to `target` on the default model.
    pub fn translation(text: impl Into<String>, source: &str, target: &str) -> Self {
        Self {
            task_type: Some(TaskType::translation()),
            source_lang: Some(source.to_owned()),
            target_lang: Some(target.to_owned()),
            ..Self::text(text)
        }
    }

    /// What the task says about its generation.
    pub fn spec_request(&self) -> SpecRequest<'_> {
        SpecRequest {
            model: self.model.as_deref(),
            model_hash: self.model_hash.as_deref(),
            max_new_tokens: self.max_new_tokens,
            stop_ids: self.stop_ids.as_deref(),
            source_lang: self.source_lang.as_deref(),
            target_lang: self.target_lang.as_deref(),
            temperature: self.temperature,
            verify: self.verify,
        }
    }

    /// The generation spec of a generative task, resolved from the catalog; `None` for others.
    ///
    /// # Errors
    /// As [`crate::generation::resolve`]; generation fields on a task that is not generated.
    pub fn spec(&self) -> Result<Option<GenerationSpec>, ProtocolError> {
        let task_type = self.task_type.clone().unwrap_or_default();
        let req = self.spec_request();
        if !task_type.is_generative() {
            // A label or embedding task may pin the model content that answers it.
            let generation_only = SpecRequest {
                model_hash: None,
                ..req
            };
            if !generation_only.is_empty() {
                return Err(ProtocolError::invalid(
                    "type",
                    format!(
                        "{task_type} tasks are not generated: model, max_new_tokens, stop_ids, \
                         languages, temperature and verify are for generate, summarization and \
                         translation tasks"
                    ),
                ));
            }
            check_model_hash(self.model_hash.as_deref())?;
            return Ok(None);
        }
        crate::generation::resolve(&task_type, &req).map(Some)
    }

    /// A `zero-shot` task over `labels`.
    pub fn zero_shot(text: impl Into<String>, labels: &[&str]) -> Self {
        Self {
            task_type: Some(TaskType::zero_shot()),
            labels: Some(labels.iter().map(|l| (*l).to_owned()).collect()),
            ..Self::text(text)
        }
    }

    /// An `embedding` task.
    pub fn embedding(text: impl Into<String>) -> Self {
        Self {
            task_type: Some(TaskType::embedding()),
            ..Self::text(text)
        }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ProtocolError`] naming the field out of bounds.
    pub fn validate(&self, max_text_bytes: usize) -> Result<(), ProtocolError> {
        check_text(&self.text, max_text_bytes)?;
        if let Some(r) = self.required_submissions {
            if r == 0 || r > MAX_REQUIRED_SUBMISSIONS {
                return Err(ProtocolError::invalid(
                    "required_submissions",
                    format!("{r} is not between 1 and {MAX_REQUIRED_SUBMISSIONS}"),
                ));
            }
        }
        if let Some(m) = self.max_attempts {
            if m == 0 || m > MAX_ATTEMPTS_LIMIT {
                return Err(ProtocolError::invalid(
                    "max_attempts",
                    format!("{m} is not between 1 and {MAX_ATTEMPTS_LIMIT}"),
                ));
            }
        }
        let task_type = self.task_type.clone().unwrap_or_default();
        match (&self.labels, task_type == TaskType::zero_shot()) {
            (None, true) => {
                return Err(ProtocolError::invalid(
                    "labels",
                    "zero-shot tasks need their candidate labels",
                ))
            }
            (Some(_), false) => {
                return Err(ProtocolError::invalid(
                    "labels",
                    format!("only zero-shot tasks take labels, not {task_type} tasks"),
                ))
            }
            (Some(labels), true) => check_candidates(labels)?,
            (None, false) => {}
        }
        if let Some(s) = self.similarity {
            if !task_type.is_vector() {
                return Err(ProtocolError::invalid(
                    "similarity",
                    format!("only embedding tasks take a similarity, not {task_type} tasks"),
                ));
            }
            if !(s > 0.0 && s <= 1.0) {
                return Err(ProtocolError::invalid(
                    "similarity",
                    format!("{s} is not in (0, 1]"),
                ));
            }
        }
        self.vote_rule()?;
        self.spec().map(drop)
    }

    /// The vote rule of a label or embedding task (`None` for generative tasks, which are
    /// verified by exact match and cross-scoring instead).
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`]: bounds of [`VoteRule::resolve`]; a policy or
    /// `distinct_models` on a generative task; `distinct_models` with a pinned model hash.
    pub fn vote_rule(&self) -> Result<Option<VoteRule>, ProtocolError> {
        let task_type = self.task_type.clone().unwrap_or_default();
        if task_type.is_generative() {
            let named = [
                ("policy", self.policy.is_some()),
                ("min_quorum", self.min_quorum.is_some()),
                ("max_answers", self.max_answers.is_some()),
                ("distinct_models", self.distinct_models.is_some()),
            ];
            if let Some((field, _)) = named.into_iter().find(|(_, given)| *given) {
                return Err(ProtocolError::invalid(
                    field,
                    format!(
                        "{task_type} tasks pin one model and are verified by exact match and \
                         cross-scoring: they take no {field}"
                    ),
                ));
            }
            return Ok(None);
        }
        if self.distinct_models == Some(true) && self.model_hash.is_some() {
            return Err(ProtocolError::invalid(
                "distinct_models",
                "a task that pins one model_hash cannot ask for distinct models",
            ));
        }
        let required = self
            .required_submissions
            .unwrap_or(crate::limits::DEFAULT_REQUIRED_SUBMISSIONS);
        VoteRule::resolve(required, self.policy, self.min_quorum, self.max_answers).map(Some)
    }
}

fn check_candidates(labels: &[String]) -> Result<(), ProtocolError> {
    if labels.len() < 2 || labels.len() > MAX_CANDIDATE_LABELS {
        return Err(ProtocolError::invalid(
            "labels",
            format!("must hold between 2 and {MAX_CANDIDATE_LABELS} labels"),
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        check_label(label).map_err(|_| {
            ProtocolError::invalid(
                "labels",
                format!("label {i} must be 1 to {MAX_LABEL_BYTES} bytes, not blank"),
            )
        })?;
        if labels[..i].contains(label) {
            return Err(ProtocolError::invalid(
                "labels",
                format!("{label:?} is given twice"),
            ));
        }
    }
    Ok(())
}

/// `api.task.add`: create tasks, all or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAddRequest {
    /// The tasks, created in this order.
    pub tasks: Vec<NewTask>,
    /// An idempotency key chosen by the client (1 to 64 bytes): a retry of a batch with the same
    /// key and the same tasks gets the ids the first one created and creates nothing; the same
    /// key with other tasks is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
}

impl TaskAddRequest {
    /// Checks every task; the error names the first bad one.
    ///
    /// # Errors
    /// [`ProtocolError`] for the first task out of bounds, or an empty or oversize batch.
    pub fn validate(&self, max_text_bytes: usize) -> Result<(), ProtocolError> {
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS_PER_ADD {
            return Err(ProtocolError::invalid(
                "tasks",
                format!("must hold between 1 and {MAX_TASKS_PER_ADD} tasks"),
            ));
        }
        if let Some(b) = &self.batch_id {
            if b.is_empty() || b.len() > MAX_ID_BYTES || b.chars().any(char::is_control) {
                return Err(ProtocolError::invalid(
                    "batch_id",
                    format!("must be 1 to {MAX_ID_BYTES} bytes without control characters"),
                ));
            }
        }
        for (i, task) in self.tasks.iter().enumerate() {
            task.validate(max_text_bytes).map_err(|e| match e {
                ProtocolError::Invalid { field, problem } if self.tasks.len() > 1 => {
                    ProtocolError::invalid(field, format!("task {i}: {problem}"))
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

/// Reply to [`TaskAddRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAddReply {
    /// Ids of the new tasks, in request order.
    pub task_ids: Vec<TaskId>,
}

/// `api.task.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGetRequest {
    /// The task.
    pub task_id: TaskId,
}

/// `api.task.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskListRequest {
    /// Only tasks in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// At most this many, oldest first (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

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
    /// probability of the agreed tokens.
    pub final_confidence: Option<f64>,
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

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Its leases ended without results `max_attempts` times.
    MaxAttempts,
    /// All its answers are in and no majority of them is identical: nothing is finalized on a
    /// guess, the answers are kept.
    NoConsensus,
}

impl FailureReason {
    /// The reason as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::MaxAttempts => "max_attempts",
            FailureReason::NoConsensus => "no_consensus",
        }
    }
}

impl FromStr for FailureReason {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max_attempts" => Ok(FailureReason::MaxAttempts),
            "no_consensus" => Ok(FailureReason::NoConsensus),
            other => Err(ProtocolError::invalid(
                "failure_reason",
                format!("unknown reason {other:?}"),
            )),
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// When it was committed.
    pub created_at: DateTime<Utc>,
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

/// Reply to [`TaskGetRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task: TaskView,
    /// Its results, oldest first.
    pub submissions: Vec<SubmissionView>,
    /// Its live leases.
    pub leases: Vec<LeaseView>,
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

/// Reply to [`TaskListRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskListReply {
    /// Tasks, oldest first.
    pub tasks: Vec<TaskView>,
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

/// Reply to `api.ops.requeue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueReply {
    /// Leases freed (expired, or held by stale workers).
    pub requeued: u32,
    /// Tasks that ran out of attempts as a result.
    pub failed: u32,
    /// Workers newly marked stale.
    pub stale_workers: u32,
}

/// `api.ops.reset`: delete every task, lease, submission, worker and score.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Must be `true`: a guard against accidents.
    #[serde(default)]
    pub confirm: bool,
}

/// `api.worker.token.create` / `api.worker.token.revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTokenRequest {
    /// The worker.
    pub worker_id: WorkerId,
}

/// Reply to `worker.token.create`: the secret, shown this once (the coordinator keeps a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTokenReply {
    /// The worker.
    pub worker_id: WorkerId,
    /// The token; present it as `AIMARKET_WORKER_TOKEN`.
    pub token: String,
}

/// Reply to `worker.token.revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTokenRevoked {
    /// Whether the worker had a token.
    pub revoked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_task_bounds() {
        let ok = NewTask::text("fine");
        assert!(ok.validate(100).is_ok());
        let empty = NewTask::text("  ");
        assert_eq!(
            empty.validate(100).expect_err("empty").code(),
            ErrorCode::InvalidArgument
        );
        let big = NewTask::text("x".repeat(101));
        assert_eq!(
            big.validate(100).expect_err("big").code(),
            ErrorCode::TextTooLarge
        );
        for r in [0, MAX_REQUIRED_SUBMISSIONS + 1] {
            let t = NewTask {
                required_submissions: Some(r),
                ..NewTask::text("x")
            };
            assert!(t.validate(100).is_err(), "required {r} accepted");
        }
    }

    #[test]
    fn labels_and_similarity_fit_their_task_types() {
        assert!(NewTask::zero_shot("x", &["a", "b"]).validate(100).is_ok());
        assert!(NewTask::embedding("x").validate(100).is_ok());
        let bad = [
            (NewTask::zero_shot("x", &["a"]), "between 2"),
            (NewTask::zero_shot("x", &["a", "a"]), "twice"),
            (NewTask::zero_shot("x", &["a", " "]), "label 1"),
            (
                NewTask {
                    labels: None,
                    ..NewTask::zero_shot("x", &["a", "b"])
                },
                "need their candidate labels",
            ),
            (
                NewTask {
                    labels: Some(vec!["a".into(), "b".into()]),
                    ..NewTask::text("x")
                },
                "only zero-shot",
            ),
            (
                NewTask {
                    similarity: Some(0.9),
                    ..NewTask::text("x")
                },
                "only embedding",
            ),
            (
                NewTask {
                    similarity: Some(1.5),
                    ..NewTask::embedding("x")
                },
                "(0, 1]",
            ),
        ];
        for (task, why) in bad {
            let err = task.validate(100).expect_err("accepted");
            assert!(err.to_string().contains(why), "{err} lacks {why:?}");
        }
    }

    #[test]
    fn a_submission_carries_a_label_or_a_vector() {
        assert_eq!(
            Answer::new("pos", None, None, None).expect("label"),
            Answer::Label("pos")
        );
        assert_eq!(
            Answer::new("", Some(&[0.5]), None, None).expect("vector"),
            Answer::Embedding(&[0.5])
        );
        assert!(Answer::new("", None, None, None).is_err());
        assert!(Answer::new("pos", Some(&[0.5]), None, None).is_err());
        assert!(Answer::new("", Some(&[]), None, None).is_err());
        assert!(Answer::new("", Some(&vec![1.0; MAX_EMBEDDING_DIM + 1]), None, None).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = decode::<SubmitRequest>(br#"{"lease_id":"0190a0e0-0000-7000-8000-000000000000","worker_id":"a","label":"x","confidence":1,"extra":1}"#)
            .expect_err("extra field accepted");
        assert_eq!(err.code(), ErrorCode::MalformedRequest);
    }

    #[test]
    fn api_ops_round_trip() {
        for op in ApiOp::ALL {
            assert_eq!(op.as_str().parse::<ApiOp>().expect("parse"), *op);
        }
        assert_eq!(
            "nope".parse::<ApiOp>().expect_err("nope").code,
            ErrorCode::UnknownOperation
        );
    }

    #[test]
    fn confidence_must_be_a_probability() {
        assert!(check_confidence(0.0).is_ok() && check_confidence(1.0).is_ok());
        assert!(check_confidence(1.01).is_err());
        assert!(check_confidence(f64::NAN).is_err());
    }
}
