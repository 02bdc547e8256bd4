//! What every model is and answers: the [`Model`] trait, its inputs and answers, and its errors.
//! The backends depend on this file alone; `load` picks among them.

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
    /// Stop strings: a generation also ends at the first token after which its text holds one,
    /// its text cut before it ([`protocol::chat::find_stop`]).
    pub stop: Vec<String>,
    /// Told each generated token's text so far (for optimistic streaming), when set.
    pub progress: Option<ProgressSink>,
}

/// Where a generating model reports its text so far: called after each token with the prompt's
/// length in tokens, the count of tokens generated, their text (no half characters, cut before
/// a stop string) and whether it has ended.
#[derive(Clone)]
pub struct ProgressSink(pub std::sync::Arc<dyn Fn(Progressed<'_>) + Send + Sync>);

/// One report to a [`ProgressSink`].
#[derive(Debug, Clone, Copy)]
pub struct Progressed<'a> {
    /// Prompt tokens, after the template.
    pub prompt_tokens: u32,
    /// Tokens generated so far.
    pub tokens: u32,
    /// Their text.
    pub text: &'a str,
    /// Whether generation has ended.
    pub done: bool,
}

impl ProgressSink {
    /// Reports progress.
    pub fn report(&self, p: Progressed<'_>) {
        (self.0)(p);
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

impl PartialEq for ProgressSink {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
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
            stop: Vec::new(),
            progress: None,
        }
    }

    /// Whether the text is a whole chat ([`protocol::generation::TEMPLATE_MESSAGES`]).
    pub fn is_chat(&self) -> bool {
        self.template.as_deref() == Some(protocol::generation::TEMPLATE_MESSAGES)
    }

    /// Refuses a template version the worker does not render for this task type (the lease's
    /// spec names one; without it, the type's current one is meant).
    ///
    /// # Errors
    /// [`ModelError::Inference`] naming the template.
    pub fn check_template(&self) -> Result<(), ModelError> {
        let current = protocol::generation::template_of(&self.task_type);
        let chat = current == Some(protocol::generation::TEMPLATE_CHAT);
        match &self.template {
            Some(t)
                if chat
                    && (t == protocol::generation::TEMPLATE_MESSAGES
                        || t == protocol::generation::TEMPLATE_RAW) =>
            {
                Ok(())
            }
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
            stop: spec.map(|s| s.stop.clone()).unwrap_or_default(),
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
    /// How many tokens an encoder read (a generation says it with its prompt).
    pub input_tokens: Option<u32>,
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
    /// Where each token's text ends in `text`, in bytes (see [`token_ends`]).
    pub token_ends: Vec<u32>,
}

/// Where the text of each of `ids` ends in `text`, their decoding (cut at a stop string, if
/// any): the longest prefix, at a character boundary, that `text` shares with the decoding of
/// the first `i + 1` ids. A token that ends inside a character (byte-level vocabularies split
/// them) ends where the character starts, and the token that completes it carries it; a stop
/// id, or a token past a stop string's cut, adds nothing. Decodes each prefix once: quadratic,
/// as the progress reports already are, and a few milliseconds for hundreds of tokens.
///
/// # Errors
/// `decode`'s.
pub fn token_ends<E>(
    ids: &[u32],
    text: &str,
    decode: impl Fn(&[u32]) -> Result<String, E>,
) -> Result<Vec<u32>, E> {
    let mut ends = Vec::with_capacity(ids.len());
    let mut last = 0usize;
    for i in 0..ids.len() {
        let prefix = decode(&ids[..=i])?;
        let shared = text
            .char_indices()
            .zip(prefix.chars())
            .find(|((_, a), b)| a != b)
            .map_or_else(|| text.len().min(prefix.len()), |((at, _), _)| at);
        // A prefix shorter than the text stops at its own end: still a character boundary of
        // the text, since everything before it agreed.
        last = last.max(shared);
        ends.push(last as u32);
    }
    Ok(ends)
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
    /// Its text reached a stop string.
    StopString,
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

#[cfg(test)]
mod tests {
    use super::token_ends;

    /// A byte-level vocabulary: each id is one byte, decoded lossily as tokenizers do.
    fn bytes(ids: &[u32]) -> Result<String, ()> {
        let raw: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    #[test]
    fn a_split_character_goes_to_the_token_that_completes_it() {
        let text = "aé!";
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let ends = token_ends(&ids, text, bytes).expect("ends");
        // 'é' is two bytes: its first token adds nothing, its second carries both.
        assert_eq!(ends, [1, 1, 3, 4]);
        let pieces = protocol::generation::token_texts(text.as_bytes(), &ends).expect("pieces");
        assert_eq!(pieces, [&b"a"[..], b"", "é".as_bytes(), b"!"]);
    }

    #[test]
    fn tokens_past_a_stop_cut_add_nothing() {
        // The answer's text was cut before "##".
        let ids: Vec<u32> = "ok##no".bytes().map(u32::from).collect();
        let ends = token_ends(&ids, "ok", bytes).expect("ends");
        assert_eq!(ends, [1, 2, 2, 2, 2, 2]);
    }
}
