//! Worker <-> coordinator: leases, releases, heartbeats, submissions.

use super::validate::*;
use crate::error::ProtocolError;
use crate::generation::{GeneratedAnswer, GenerationSpec};
use crate::ids::{LeaseId, TaskId, TaskType, WorkerId};
use crate::limits::*;
use crate::verify::{Verification, VerifyJob};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// How many tokens the model read: a generation's prompt after its template, an
    /// embedding's input (reported as `usage` by the OpenAI-compatible API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
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
        check_model_hash(self.model_hash.as_deref())?;
        check_input_tokens(self.input_tokens)
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
