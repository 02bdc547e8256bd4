//! Models behind one trait. A model says which task types it can do and answers a batch of
//! inputs at once; the runtime calls it on a blocking thread, never on the async runtime.

pub mod chat;
pub mod distilbert;
mod expf;
pub mod hub;
pub mod kernel;
pub mod lexicon;
pub mod llama;
pub mod marian;
pub mod minilm;
pub mod opus;
pub mod q4_1;
pub mod q8;
pub mod q8_0;
pub mod seq2seq;
pub mod t5;
pub mod transformer;

use protocol::generation::Decoding;
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
    /// Most tokens a generative task may produce (a model's default when absent).
    pub max_new_tokens: Option<u32>,
    /// A `translation` task's languages (ISO 639-1 codes): from, to.
    pub languages: Option<(String, String)>,
    /// The ids that end a generation (the model's own stop token when absent).
    pub stop_ids: Option<Vec<u32>>,
    /// The prompt template a task pins (the type's current one when absent); a model refuses a
    /// template it does not render.
    pub template: Option<String>,
    /// How a generative model picks each token (greedy unless the task samples).
    pub decoding: Decoding,
}

impl Input {
    /// An input of `task_type` without candidate labels.
    pub fn new(task_type: TaskType, text: impl Into<String>) -> Self {
        Self {
            task_type,
            text: text.into(),
            labels: None,
            max_new_tokens: None,
            languages: None,
            stop_ids: None,
            template: None,
            decoding: Decoding::Greedy,
        }
    }

    /// Refuses a template version the worker does not render for this task type (the lease's
    /// spec names one; without it, the type's current one is meant).
    ///
    /// # Errors
    /// [`ModelError::Inference`] naming the template.
    pub fn check_template(&self) -> Result<(), ModelError> {
        let current = protocol::generation::template_of(&self.task_type);
        match &self.template {
            Some(t) if Some(t.as_str()) != current => Err(ModelError::Inference(
                format!(
                    "template {t:?} is not one this worker renders for {} tasks ({})",
                    self.task_type,
                    current.unwrap_or("none")
                )
                .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The input of a leased task: its text and, for a generative task, what its spec pins.
    pub fn of_lease(lease: &protocol::messages::Lease) -> Self {
        let spec = lease.generation.as_ref();
        Self {
            labels: lease.labels.clone(),
            max_new_tokens: spec.map(|s| s.max_new_tokens),
            languages: spec.and_then(|s| s.source_lang.clone().zip(s.target_lang.clone())),
            stop_ids: spec.map(|s| s.stop_ids.clone()),
            template: spec.map(|s| s.template.clone()),
            decoding: spec.map(|s| s.decoding).unwrap_or_default(),
            ..Self::new(lease.task_type.clone(), lease.text.clone())
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
    /// The raw scores behind the label, for inspection (`aimarket infer`); none for an
    /// embedding, whose vector is the answer itself. A classifier's
    /// logits, the lexicon's compound score.
    pub scores: Vec<f32>,
    /// The generated answer of a generative task.
    pub generation: Option<Generation>,
}

/// A generated answer. The token ids are the answer (honest workers on the same model, template
/// and decoding produce the same ones); the text and log-probabilities are for people and for
/// checking.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt as the model saw it, after the template (and any truncation).
    pub prompt_token_ids: Vec<u32>,
    /// The generated tokens, the stop token included when generation stopped on one.
    pub token_ids: Vec<u32>,
    /// Their text, special tokens left out.
    pub text: String,
    /// The natural-log probability of each generated token under the model.
    pub logprobs: Vec<f32>,
    /// Whether the source was cut to fit the context (the same cut on every honest worker).
    pub truncated: bool,
    /// Why generation ended.
    pub stop: Stop,
}

/// A candidate scored by one teacher-forced pass: per position, the candidate token's
/// log-probability and its gap (in logits) to the token the decoding rule picks there.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Log-probability of each candidate token.
    pub logprobs: Vec<f32>,
    /// Its gap to the best token, 0 where the candidate is the token the rule picks.
    pub gaps: Vec<f32>,
}

impl Scored {
    /// Scores `candidate` against the logits of each of its positions (`rows[t]` predicts
    /// `candidate[t]`).
    pub fn of_rows(rows: &[Vec<f32>], candidate: &[u32], decoding: &Decoding) -> Self {
        let (logprobs, gaps) = rows
            .iter()
            .zip(candidate)
            .enumerate()
            .map(|(t, (row, &id))| protocol::verify::score(row, t, decoding, id))
            .unzip();
        Self { logprobs, gaps }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model produced a stop token.
    StopToken,
    /// It reached `max_new_tokens`.
    Length,
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
    /// The batch this input was part of failed as a whole; every input shares the error.
    #[error("its batch failed: {0}")]
    Batch(#[source] std::sync::Arc<ModelError>),
}

/// An inference backend.
pub trait Model: Send + Sync + 'static {
    /// A stable id, recorded with every submission (`lexicon/vader`, ...).
    fn id(&self) -> &str;

    /// The task types it can answer.
    fn capabilities(&self) -> Vec<TaskType>;

    /// SHA-256 (lowercase hex) of the content it loaded (weights, config and tokenizer; the
    /// lexicon's entries), computed once at load: reported at registration and with every
    /// submission. Tasks that pin a model are routed by it, `--by-model` groups by it, and
    /// `distinct_models` counts one answer per hash.
    fn content_hash(&self) -> Option<&str> {
        None
    }

    /// Answers each input; one result per input, in order. May take a while: it runs on a
    /// blocking thread.
    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>>;

    /// Whether [`Model::score`] is exact: the model computes the same logits bit for bit on
    /// every CPU, thread count and batch, and a teacher-forced pass gives its own generation's
    /// logits, so its own answers score gaps of exactly 0 on any worker running it.
    fn scores_exactly(&self) -> bool {
        false
    }

    /// Scores a candidate answer for each input with one teacher-forced pass (generative
    /// models); one result per job, in order. Others refuse.
    fn score(&self, jobs: &[(Input, Vec<u32>)]) -> Vec<Result<Scored, ModelError>> {
        jobs.iter()
            .map(|(input, _)| {
                Err(ModelError::Unsupported {
                    model: self.id().to_owned(),
                    task_type: input.task_type.clone(),
                })
            })
            .collect()
    }
}

/// A model made slower by a fixed pause per batch: `aimarket worker --extra-latency-ms` uses it to
/// rehearse, on a real deployment, models that take longer than a lease (the heartbeats must keep
/// the leases alive).
pub struct Delayed {
    inner: Box<dyn Model>,
    pause: std::time::Duration,
}

impl Delayed {
    /// `inner`, pausing `pause` before answering each batch.
    pub fn new(inner: Box<dyn Model>, pause: std::time::Duration) -> Self {
        Self { inner, pause }
    }
}

impl Model for Delayed {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Vec<TaskType> {
        self.inner.capabilities()
    }

    fn content_hash(&self) -> Option<&str> {
        self.inner.content_hash()
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        std::thread::sleep(self.pause);
        self.inner.predict(inputs)
    }

    fn scores_exactly(&self) -> bool {
        self.inner.scores_exactly()
    }

    fn score(&self, jobs: &[(Input, Vec<u32>)]) -> Vec<Result<Scored, ModelError>> {
        std::thread::sleep(self.pause);
        self.inner.score(jobs)
    }
}

/// SHA-256 (lowercase hex) of a model's files read in order, each preceded by its file name
/// when `named`: the content hash a generative model reports.
///
/// # Errors
/// The file that could not be read, and why.
pub(crate) fn hash_files(
    paths: &[std::path::PathBuf],
    named: bool,
) -> Result<String, (std::path::PathBuf, std::io::Error)> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for path in paths {
        let mut f = std::fs::File::open(path).map_err(|e| (path.clone(), e))?;
        if named {
            h.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
        }
        std::io::copy(&mut f, &mut h).map_err(|e| (path.clone(), e))?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The models `--model` accepts.
pub const KNOWN: &[&str] = &[
    "auto",
    "lexicon",
    "distilbert-sst2",
    "minilm",
    "smollm2",
    "flan-t5",
    "t5",
    "opus-mt-SRC-TGT",
    "gguf:PATH",
];

/// `--model gguf:PATH`: any llama-architecture chat model from its GGUF file.
pub const GGUF_PREFIX: &str = "gguf:";

/// The transformer `auto` prefers: the original's model.
pub const AUTO_PREFERS: &str = "distilbert-sst2";

/// Loads a model by name. Transformer models read their weights from `dir` (Hugging Face
/// layout: `config.json`, `model.safetensors`, `tokenizer.json` or `vocab.txt`), or without one
/// from the Hugging Face cache, downloading them there first unless `HF_HUB_OFFLINE` is set.
///
/// `auto` is [`AUTO_PREFERS`] when its weights are in `dir`, cached or downloadable, else the
/// lexicon; it logs which one it chose and why. `smollm2` needs `dir`: the folder holding its
/// GGUF file (or the file). `gguf:PATH` loads any llama-architecture chat GGUF file.
///
/// Blocking: it may download. Call it off the async runtime.
///
/// # Errors
/// [`LoadModelError`] naming the way out.
pub fn load(name: &str, dir: Option<&std::path::Path>) -> Result<Box<dyn Model>, LoadModelError> {
    load_with(name, dir, &kernel::EngineConfig::default())
}

/// As [`load`], the generative engine's threads and kernel path taken from `engine`
/// (`--threads`, `--kernel`); models without that engine ignore it.
///
/// # Errors
/// [`LoadModelError`] naming the way out.
pub fn load_with(
    name: &str,
    dir: Option<&std::path::Path>,
    engine: &kernel::EngineConfig,
) -> Result<Box<dyn Model>, LoadModelError> {
    match name {
        "lexicon" => Ok(Box::new(lexicon::Lexicon::new())),
        // A folder given by hand must load: only the Hub's absence falls back.
        "auto" if dir.is_some() => load_with(AUTO_PREFERS, dir, engine),
        "auto" => Ok(match load(AUTO_PREFERS, None) {
            Ok(model) => {
                tracing::info!(
                    model = model.id(),
                    "auto: using the transformer, its weights are at hand"
                );
                model
            }
            Err(e) => {
                tracing::warn!(reason = %e, "auto: using the lexicon, {AUTO_PREFERS} cannot be loaded");
                Box::new(lexicon::Lexicon::new())
            }
        }),
        "distilbert-sst2" | "minilm" => {
            let dir = match dir {
                Some(dir) => dir.to_owned(),
                None => hub::fetch(hub::repo_of(name).expect("a hub model"))?,
            };
            Ok(if name == "minilm" {
                Box::new(minilm::MiniLm::load(&dir)?)
            } else {
                Box::new(distilbert::Sst2::load(&dir)?)
            })
        }
        name if opus::languages(name).is_some() => {
            let dir = match dir {
                Some(dir) => dir.to_owned(),
                None => hub::fetch_opus(name)?,
            };
            Ok(Box::new(opus::OpusModel::load(name, &dir)?))
        }
        "flan-t5" | "t5" => {
            let dir = match dir {
                Some(dir) => dir.to_owned(),
                None => hub::fetch(hub::repo_of(name).expect("a hub model"))?,
            };
            Ok(Box::new(t5::T5Model::load(name, &dir)?))
        }
        name if name.starts_with(GGUF_PREFIX) => Ok(Box::new(chat::ChatModel::load_gguf(
            std::path::Path::new(&name[GGUF_PREFIX.len()..]),
            engine,
        )?)),
        chat::NAME => Ok(Box::new(chat::ChatModel::load_with(
            dir.ok_or(chat::ChatLoadError::NoDir)?,
            engine,
        )?)),
        other => Err(LoadModelError::Unknown(other.to_owned())),
    }
}

/// A model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// `--model` named a model this build does not have.
    #[error("unknown model {0:?}; known models: {known}", known = KNOWN.join(", "))]
    Unknown(String),
    /// The weights are neither given nor to be had from the Hub.
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    /// The weights folder is incomplete or unreadable.
    #[error(transparent)]
    Folder(#[from] transformer::LoadError),
    /// A GGUF chat model could not be loaded.
    #[error(transparent)]
    Chat(#[from] chat::ChatLoadError),
    /// A T5 model folder could not be loaded.
    #[error(transparent)]
    T5(#[from] seq2seq::FolderError),
}
