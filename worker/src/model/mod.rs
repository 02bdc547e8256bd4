//! Models behind one trait. A model says which task types it can do and answers a batch of
//! inputs at once; the runtime calls it on a blocking thread, never on the async runtime.

pub mod lexicon;

use protocol::TaskType;

/// One input to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The task type, which says what answer is wanted.
    pub task_type: TaskType,
    /// The text.
    pub text: String,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The label (`positive` / `negative` for sentiment).
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub confidence: f64,
}

/// Why a model could not answer one input.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model does not do this task type.
    #[error("model {model} cannot do {task_type} tasks")]
    Unsupported {
        /// The model.
        model: String,
        /// The task type asked for.
        task_type: TaskType,
    },
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Inference(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An inference backend.
pub trait Model: Send + Sync + 'static {
    /// A stable id, recorded with every submission (`lexicon/vader`, ...).
    fn id(&self) -> &str;

    /// The task types it can answer.
    fn capabilities(&self) -> Vec<TaskType>;

    /// Answers each input; one result per input, in order. May take a while: it runs on a
    /// blocking thread.
    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>>;
}

/// The models `--model` accepts.
pub const KNOWN: &[&str] = &["lexicon"];

/// Loads a model by name.
///
/// # Errors
/// [`UnknownModel`] naming the known ones.
pub fn load(name: &str) -> Result<Box<dyn Model>, UnknownModel> {
    match name {
        "lexicon" => Ok(Box::new(lexicon::Lexicon::new())),
        other => Err(UnknownModel(other.to_owned())),
    }
}

/// `--model` named a model this build does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown model {0:?}; known models: {known}", known = KNOWN.join(", "))]
pub struct UnknownModel(pub String);
