//! Models behind one trait. A model says which task types it can do and answers a batch of
//! inputs at once; the runtime calls it on a blocking thread, never on the async runtime.

pub mod distilbert;
pub mod lexicon;
pub mod minilm;
pub mod transformer;

use protocol::TaskType;

/// One input to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The task type, which says what answer is wanted.
    pub task_type: TaskType,
    /// The text.
    pub text: String,
    /// The candidate labels of a `zero-shot` task.
    pub labels: Option<Vec<String>>,
}

impl Input {
    /// An input of `task_type` without candidate labels.
    pub fn new(task_type: TaskType, text: impl Into<String>) -> Self {
        Self {
            task_type,
            text: text.into(),
            labels: None,
        }
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The label (`positive` / `negative` for sentiment); empty for an embedding.
    pub label: String,
    /// The vector, for `embedding` tasks.
    pub embedding: Option<Vec<f32>>,
    /// Confidence in `[0, 1]`.
    pub confidence: f64,
    /// The raw scores behind the label, for inspection (`aimarket infer`): a classifier's
    /// logits, the lexicon's compound score.
    pub scores: Vec<f32>,
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
pub const KNOWN: &[&str] = &["lexicon", "distilbert-sst2", "minilm"];

/// Loads a model by name; transformer models read their weights from `dir` (Hugging Face
/// layout: `config.json`, `model.safetensors`, `tokenizer.json`).
///
/// # Errors
/// [`LoadModelError`] naming the way out.
pub fn load(name: &str, dir: Option<&std::path::Path>) -> Result<Box<dyn Model>, LoadModelError> {
    match (name, dir) {
        ("lexicon", _) => Ok(Box::new(lexicon::Lexicon::new())),
        ("distilbert-sst2", Some(dir)) => Ok(Box::new(distilbert::Sst2::load(dir)?)),
        ("minilm", Some(dir)) => Ok(Box::new(minilm::MiniLm::load(dir)?)),
        ("distilbert-sst2" | "minilm", None) => Err(LoadModelError::NeedsWeights(name.to_owned())),
        (other, _) => Err(LoadModelError::Unknown(other.to_owned())),
    }
}

/// A model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// `--model` named a model this build does not have.
    #[error("unknown model {0:?}; known models: {known}", known = KNOWN.join(", "))]
    Unknown(String),
    /// A transformer model was asked for without its weights.
    #[error(
        "model {0} needs its weights: pass --model-dir DIR (a folder with config.json, \
         model.safetensors and tokenizer.json, e.g. a Hugging Face snapshot), or use --model lexicon"
    )]
    NeedsWeights(String),
    /// The weights folder is incomplete or unreadable.
    #[error(transparent)]
    Folder(#[from] transformer::LoadError),
}
