//! Tasks as clients add, get and list them.

use super::validate::*;
use super::views::TaskView;
use crate::chat::ChatMessage;
use crate::error::ProtocolError;
use crate::generation::{GenerationSpec, SpecRequest, VerifyMode};
use crate::ids::{TaskId, TaskType};
use crate::limits::*;
use crate::policy::{Policy, VoteRule};
use crate::status::TaskStatus;
use serde::{Deserialize, Serialize};

/// One task to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The input text (empty when `messages` holds a chat).
    #[serde(default)]
    pub text: String,
    /// A whole chat instead of `text` (`generate` tasks only): stored as its JSON and rendered
    /// by the model's chat template, every turn ([`crate::generation::TEMPLATE_MESSAGES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Stop strings, up to 4: the generation is cut at the first (generative tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// The sampling seed, with `temperature` (the coordinator picks one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Feed the text to the model as it is, without its chat template (`generate` tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<bool>,
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
    /// How the answers decide the task (default: the coordinator's, `quorum` unless it says
    /// otherwise); label and embedding tasks only, `posterior` label tasks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// The posterior the best label needs under the `posterior` policy, in (0.5, 1) (default:
    /// the coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
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
            messages: None,
            stop: None,
            seed: None,
            raw: None,
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
            threshold: None,
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

    /// A `generate` task on a whole chat, on the default model.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self {
            task_type: Some(TaskType::generate()),
            messages: Some(messages),
            ..Self::text("")
        }
    }

    /// The text the task is stored with: its own, or its chat's JSON.
    pub fn stored_text(&self) -> String {
        match &self.messages {
            Some(m) => crate::chat::encode(m),
            None => self.text.clone(),
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
            stop: self.stop.as_deref(),
            seed: self.seed,
            messages: self.messages.is_some(),
            raw: self.raw == Some(true),
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
                         languages, temperature, seed, stop, messages, raw and verify are for generate, \
                         summarization and \
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
        if let Some(messages) = &self.messages {
            if !self.text.is_empty() {
                return Err(ProtocolError::invalid(
                    "messages",
                    "give a text or a chat (messages), not both",
                ));
            }
            crate::chat::validate(messages)?;
        }
        check_text(&self.stored_text(), max_text_bytes)?;
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
        self.vote_rule_with(None, None)
    }

    /// As [`NewTask::vote_rule`], with the coordinator's defaults: `policy` for a label task
    /// that names none (an embedding task keeps `quorum`), and the posterior `threshold`.
    ///
    /// # Errors
    /// As [`NewTask::vote_rule`]; also `posterior` asked of an embedding task.
    pub fn vote_rule_with(
        &self,
        policy: Option<Policy>,
        threshold: Option<f64>,
    ) -> Result<Option<VoteRule>, ProtocolError> {
        let task_type = self.task_type.clone().unwrap_or_default();
        if task_type.is_generative() {
            let named = [
                ("policy", self.policy.is_some()),
                ("threshold", self.threshold.is_some()),
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
        if task_type.is_vector() && self.policy == Some(Policy::Posterior) {
            return Err(ProtocolError::invalid(
                "policy",
                "the posterior policy weighs labels; embedding tasks are decided by the \
                 largest group of close vectors (quorum or majority)",
            ));
        }
        let policy = match (self.policy, policy) {
            (Some(asked), _) => Some(asked),
            (None, Some(Policy::Posterior)) if task_type.is_vector() => None,
            (None, default) => default,
        };
        let threshold = match (policy, self.threshold) {
            (Some(Policy::Posterior), None) => threshold,
            (_, given) => given,
        };
        VoteRule::resolve_with(
            required,
            policy,
            self.min_quorum,
            self.max_answers,
            threshold,
        )
        .map(Some)
    }
}

/// The task types aimarket's own models do. Others are taken when a registered worker advertises
/// them (a worker of another model, `aimarket bench`'s); a type nobody does would wait forever.
pub const KNOWN_TYPES: &[&str] = &[
    "sentiment",
    "zero-shot",
    "embedding",
    "generate",
    "summarization",
    "translation",
];

/// The refusal of a type neither aimarket's models nor any registered worker do (a misspelt
/// one), naming the known ones.
pub fn unknown_type(t: &TaskType) -> ProtocolError {
    ProtocolError::invalid(
        "type",
        format!(
            "no model does \"{t}\" tasks and no registered worker advertises it (known types: \
             {})",
            KNOWN_TYPES.join(", ")
        ),
    )
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

/// Reply to [`TaskListRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskListReply {
    /// Tasks, oldest first.
    pub tasks: Vec<TaskView>,
}
