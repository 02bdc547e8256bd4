//! The core's vocabulary, shared by its adapters (NATS, HTTP) and the rules: the tunables
//! ([`Settings`]), what a committed write publishes ([`Effect`]), and a checked answer
//! ([`Submission`]). An adapter imports these and nothing from an operation.

use protocol::generation::{GeneratedAnswer, VerifyMode};
use protocol::messages::{
    check_confidence, check_input_tokens, check_model, check_model_hash, Answer, SubmitRequest,
    TaskAnnouncement, TaskEvent,
};
use protocol::verify::Verification;
use protocol::{LeaseId, ProtocolError, WorkerId};

/// The default [`Settings::trap_rate`].
pub(crate) const DEFAULT_TRAP_RATE: f64 = 0.1;
/// The default [`Settings::gold_rate`].
pub(crate) const DEFAULT_GOLD_RATE: f64 = 0.05;
/// The default [`Settings::gold_min_answers`].
pub(crate) const DEFAULT_GOLD_MIN_ANSWERS: u32 = 20;
/// The default [`Settings::gold_min_accuracy`].
pub(crate) const DEFAULT_GOLD_MIN_ACCURACY: f64 = 0.5;

/// The tunables the operations need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long a lease lasts after its grant or its holder's last heartbeat, in ms.
    pub lease_ms: i64,
    /// How long a worker may stay silent before it is stale, in ms.
    pub heartbeat_ttl_ms: i64,
    /// `max_attempts` of a task created without one.
    pub max_attempts_default: u32,
    /// Largest task text, in bytes.
    pub max_text_bytes: usize,
    /// Most leases one worker may hold at once.
    pub max_leases_per_worker: u32,
    /// Probability that a verifier is handed a trap candidate instead of a real one.
    pub trap_rate: f64,
    /// How generative tasks that do not say are verified.
    pub verify_default: VerifyMode,
    /// Probability that a lease slot holds a gold (known-answer) task instead of a real one.
    pub gold_rate: f64,
    /// Gold answers a worker gives before its gold accuracy can quarantine it.
    pub gold_min_answers: u32,
    /// Gold accuracy (over the last `gold::WINDOW` gold answers) below which a worker is
    /// quarantined.
    pub gold_min_accuracy: f64,
    /// Whether label and embedding tasks that do not say count one answer per model content.
    pub distinct_models_default: bool,
    /// The vote policy of label tasks that do not say (embedding tasks keep `quorum`).
    pub label_policy: protocol::policy::Policy,
    /// The posterior the best label needs under the posterior policy, when a task does not say.
    pub posterior_threshold: f64,
    /// Probability that a trusted worker's lone answer, confident enough to decide its task
    /// alone, is checked by another replica anyway (a spot check).
    pub spot_check_rate: f64,
    /// How long (ms) the first answer of a posterior task waits for a worker of the strongest
    /// live model (by gold calibration) before a weaker one may take it; 0: whoever asks first.
    pub strong_first_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lease_ms: 75_000,
            heartbeat_ttl_ms: 45_000,
            max_attempts_default: 5,
            max_text_bytes: protocol::limits::DEFAULT_MAX_TEXT_BYTES,
            max_leases_per_worker: 64,
            trap_rate: DEFAULT_TRAP_RATE,
            verify_default: VerifyMode::Exact,
            gold_rate: DEFAULT_GOLD_RATE,
            gold_min_answers: DEFAULT_GOLD_MIN_ANSWERS,
            gold_min_accuracy: DEFAULT_GOLD_MIN_ACCURACY,
            distinct_models_default: false,
            label_policy: protocol::policy::Policy::Quorum,
            posterior_threshold: protocol::policy::DEFAULT_POSTERIOR_THRESHOLD,
            spot_check_rate: crate::truth::DEFAULT_SPOT_CHECK_RATE,
            strong_first_ms: 0,
        }
    }
}

/// Something to publish once the transaction that caused it has committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A task has free slots: wake idle workers of its type.
    Announce(TaskAnnouncement),
    /// A task reached a terminal state.
    Finished(TaskEvent),
}

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

/// A result to store, checked once when made ([`Submission::new`]): the rules trust it.
/// `lease_id` is `None` for clients of the original HTTP API, which do not carry lease ids: the
/// worker's live lease on the task is used then.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    lease_id: Option<LeaseId>,
    worker_id: WorkerId,
    answer: Answered,
    confidence: f64,
    model: Option<String>,
    model_hash: Option<String>,
    input_tokens: Option<u32>,
}

impl Submission {
    /// A submission, with every bound checked: exactly one answer and within its limits, a
    /// confidence in `[0, 1]`, a model name and content hash well formed.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field out of bounds.
    pub fn new(
        lease_id: Option<LeaseId>,
        worker_id: WorkerId,
        answer: Answered,
        confidence: f64,
        model: Option<String>,
        model_hash: Option<String>,
    ) -> Result<Self, ProtocolError> {
        check_confidence(confidence)?;
        check_model(model.as_deref())?;
        check_model_hash(model_hash.as_deref())?;
        Ok(Self {
            lease_id,
            worker_id,
            answer,
            confidence,
            model,
            model_hash,
            input_tokens: None,
        })
    }

    /// The submission, saying how many tokens its model read.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] past the bound.
    pub fn with_input_tokens(mut self, n: Option<u32>) -> Result<Self, ProtocolError> {
        check_input_tokens(n)?;
        self.input_tokens = n;
        Ok(self)
    }

    /// How many tokens its model read, if it says.
    pub fn input_tokens(&self) -> Option<u32> {
        self.input_tokens
    }

    /// The lease the result is for, if the client named it.
    pub fn lease_id(&self) -> Option<LeaseId> {
        self.lease_id
    }

    /// Who submits.
    pub fn worker_id(&self) -> &WorkerId {
        &self.worker_id
    }

    /// What it answers.
    pub fn answer(&self) -> &Answered {
        &self.answer
    }

    /// Its confidence, in `[0, 1]`.
    pub fn confidence(&self) -> f64 {
        self.confidence
    }

    /// The model that answered.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// SHA-256 of the model content that answered.
    pub fn model_hash(&self) -> Option<&str> {
        self.model_hash.as_deref()
    }
}

impl TryFrom<SubmitRequest> for Submission {
    type Error = ProtocolError;
    fn try_from(r: SubmitRequest) -> Result<Self, ProtocolError> {
        let answer = Answered::from_parts(r.label, r.embedding, r.generation, r.verification)?;
        Self::new(
            Some(r.lease_id),
            r.worker_id,
            answer,
            r.confidence,
            r.model,
            r.model_hash,
        )?
        .with_input_tokens(r.input_tokens)
    }
}
