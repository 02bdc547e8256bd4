//! The types the core's operations take beyond the wire messages, shared by its adapters (NATS,
//! HTTP) so that none reaches into one operation for them.

use protocol::generation::GeneratedAnswer;
use protocol::messages::SubmitRequest;
use protocol::verify::Verification;
use protocol::{LeaseId, WorkerId};

/// A result to store. `lease_id` is `None` for clients of the original HTTP API, which do not
/// carry lease ids: the worker's live lease on the task is used then.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The lease the result is for, if the client knows it.
    pub lease_id: Option<LeaseId>,
    /// Who submits.
    pub worker_id: WorkerId,
    /// The answer of a label task (empty for `embedding` tasks).
    pub label: String,
    /// The answer of an `embedding` task.
    pub embedding: Option<Vec<f32>>,
    /// The answer of a generative task.
    pub generation: Option<GeneratedAnswer>,
    /// A verify lease's score of its candidate.
    pub verification: Option<Verification>,
    /// Its confidence in `[0, 1]`.
    pub confidence: f64,
    /// The model that answered.
    pub model: Option<String>,
    /// SHA-256 of the model content that answered.
    pub model_hash: Option<String>,
}

impl From<SubmitRequest> for Submission {
    fn from(r: SubmitRequest) -> Self {
        Self {
            lease_id: Some(r.lease_id),
            worker_id: r.worker_id,
            label: r.label,
            embedding: r.embedding,
            generation: r.generation,
            verification: r.verification,
            confidence: r.confidence,
            model: r.model,
            model_hash: r.model_hash,
        }
    }
}
