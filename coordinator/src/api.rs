//! The types the core's operations take beyond the wire messages, shared by its adapters (NATS,
//! HTTP) so that none reaches into one operation for them.

use protocol::generation::GeneratedAnswer;
use protocol::messages::{Answer, SubmitRequest};
use protocol::verify::Verification;
use protocol::{LeaseId, ProtocolError, WorkerId};

/// One submission's answer, owned: exactly one kind, checked when made.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    /// A label task's answer.
    Label(String),
    /// An `embedding` task's answer.
    Embedding(Vec<f32>),
    /// A generative task's answer.
    Generated(GeneratedAnswer),
    /// A verify lease's score of its candidate.
    Verified(Verification),
}

impl Answered {
    /// The answer the wire's fields carry.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] unless exactly one is given and it is within bounds.
    pub fn from_parts(
        label: String,
        embedding: Option<Vec<f32>>,
        generation: Option<GeneratedAnswer>,
        verification: Option<Verification>,
    ) -> Result<Self, ProtocolError> {
        Answer::new(
            &label,
            embedding.as_deref(),
            generation.as_ref(),
            verification.as_ref(),
        )?;
        Ok(match (verification, embedding, generation) {
            (Some(v), _, _) => Answered::Verified(v),
            (None, Some(e), _) => Answered::Embedding(e),
            (None, None, Some(g)) => Answered::Generated(g),
            (None, None, None) => Answered::Label(label),
        })
    }

    /// A view of it.
    pub fn as_answer(&self) -> Answer<'_> {
        match self {
            Answered::Label(l) => Answer::Label(l),
            Answered::Embedding(v) => Answer::Embedding(v),
            Answered::Generated(g) => Answer::Generated(g),
            Answered::Verified(v) => Answer::Verified(v),
        }
    }

    /// Its label; empty for the other kinds (what the store's `label` column holds for them).
    pub fn label(&self) -> &str {
        match self {
            Answered::Label(l) => l,
            _ => "",
        }
    }
}

/// A result to store. `lease_id` is `None` for clients of the original HTTP API, which do not
/// carry lease ids: the worker's live lease on the task is used then.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The lease the result is for, if the client knows it.
    pub lease_id: Option<LeaseId>,
    /// Who submits.
    pub worker_id: WorkerId,
    /// What it answers.
    pub answer: Answered,
    /// Its confidence in `[0, 1]`.
    pub confidence: f64,
    /// The model that answered.
    pub model: Option<String>,
    /// SHA-256 of the model content that answered.
    pub model_hash: Option<String>,
}

impl TryFrom<SubmitRequest> for Submission {
    type Error = ProtocolError;
    fn try_from(r: SubmitRequest) -> Result<Self, ProtocolError> {
        Ok(Self {
            lease_id: Some(r.lease_id),
            worker_id: r.worker_id,
            answer: Answered::from_parts(r.label, r.embedding, r.generation, r.verification)?,
            confidence: r.confidence,
            model: r.model,
            model_hash: r.model_hash,
        })
    }
}
