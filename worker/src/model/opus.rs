//! `opus-mt-SRC-TGT`: the Helsinki-NLP Marian translation models, from `--model-dir` or the
//! Hugging Face cache / Hub, run by [`super::marian`]. They do `translation` from SRC to TGT only.
//!
//! Their folders carry no `tokenizer.json`: the tokenizer is rebuilt as Hugging Face's
//! `MarianTokenizer` works. The source text is normalized with `source.spm`'s precompiled
//! character map, split into pieces by its Unigram model (a `▁` before each word), the pieces
//! turned into ids through `vocab.json` (unknown ones to `<unk>`), and `</s>` appended. Output
//! ids go back to pieces through `vocab.json` and are joined, `▁` read as a space. The weights
//! are `model.safetensors` or, failing that, `pytorch_model.bin`.

use super::interface::{token_ends, Generation, Input, Model, ModelError, Prediction, Stop};
use super::marian::{Marian, MarianConfig};
use super::seq2seq::{read_config, read_weights, EncoderDecoder, FolderError};
use candle_core::Device;
use protocol::TaskType;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::Tokenizer;

/// The files an opus-mt folder must hold (besides its weights), hashed in this order.
pub const FILES: [&str; 4] = ["config.json", "source.spm", "target.spm", "vocab.json"];

/// The weight files it may hold, the first one present used.
pub const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The most source tokens read; longer sources are cut.
pub const MAX_INPUT_TOKENS: usize = 512;

/// The languages of a model name `opus-mt-SRC-TGT`.
pub fn languages(name: &str) -> Option<(&str, &str)> {
    let pair = name.strip_prefix("opus-mt-")?;
    let (from, to) = pair.split_once('-')?;
    (!from.is_empty() && !to.is_empty() && !to.contains('-')).then_some((from, to))
}

/// MarianTokenizer's source side and its vocabulary.
pub struct OpusTokenizer {
    pieces: Tokenizer,
    vocab: HashMap<String, u32>,
    by_id: HashMap<u32, String>,
    unk: u32,
    eos: u32,
}

fn bad(path: &Path) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> FolderError + '_ {
    move |source| FolderError::File {
        path: path.to_owned(),
        source,
    }
}

impl OpusTokenizer {
    /// Reads `source.spm` and `vocab.json` from `dir`.
    ///
    /// # Errors
    /// [`FolderError`] naming the file.
    pub fn load(dir: &Path) -> Result<Self, FolderError> {
        let spm_path = dir.join("source.spm");
        let spm = sentencepiece_model::SentencePieceModel::from_file(&spm_path)
            .map_err(|e| bad(&spm_path)(e.into()))?;
        let unk = spm.trainer().and_then(|t| t.unk_id).unwrap_or(0).max(0) as usize;
        let scores: Vec<(String, f64)> = spm
            .pieces()
            .iter()
            .map(|p| (p.piece().to_owned(), f64::from(p.score())))
            .collect();
        let unigram = tokenizers::models::unigram::Unigram::from(scores, Some(unk), false)
            .map_err(bad(&spm_path))?;
        let mut pieces = Tokenizer::new(unigram);
        if let Some(map) = spm
            .normalizer()
            .and_then(|n| n.precompiled_charsmap.as_ref())
            .filter(|m| !m.is_empty())
        {
            let normalizer = Precompiled::from(map).map_err(|e| bad(&spm_path)(e.into()))?;
            pieces
                .with_normalizer(Some(normalizer))
                .map_err(bad(&spm_path))?;
        }
        pieces.with_pre_tokenizer(Some(Metaspace::default()));
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, u32> = std::fs::read(&vocab_path)
            .map_err(|e| bad(&vocab_path)(e.into()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| bad(&vocab_path)(e.into())))?;
        let id = |piece: &str| {
            vocab
                .get(piece)
                .copied()
                .ok_or_else(|| bad(&vocab_path)(format!("vocab.json has no {piece}").into()))
        };
        Ok(Self {
            unk: id("<unk>")?,
            eos: id("</s>")?,
            by_id: vocab.iter().map(|(p, i)| (*i, p.clone())).collect(),
            vocab,
            pieces,
        })
    }

    /// The ids of a source text, `</s>` last, cut to [`MAX_INPUT_TOKENS`]; and whether it was cut.
    ///
    /// # Errors
    /// The tokenizer's error.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, bool), ModelError> {
        let pieces = self
            .pieces
            .encode(text, false)
            .map_err(ModelError::Inference)?;
        let mut ids: Vec<u32> = pieces
            .get_tokens()
            .iter()
            .map(|p| self.vocab.get(p).copied().unwrap_or(self.unk))
            .collect();
        let cut = ids.len() >= MAX_INPUT_TOKENS;
        ids.truncate(MAX_INPUT_TOKENS - 1);
        ids.push(self.eos);
        Ok((ids, cut))
    }

    /// The text of output ids: their pieces joined, `▁` read as a space, special pieces dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let text: String = ids
            .iter()
            .filter_map(|i| self.by_id.get(i))
            .filter(|p| !(p.starts_with('<') && p.ends_with('>')))
            .map(String::as_str)
            .collect();
        text.replace('\u{2581}', " ").trim_start().to_owned()
    }
}

/// An opus-mt model with its tokenizer.
pub struct OpusModel {
    name: String,
    from: String,
    to: String,
    hash: String,
    model: Marian,
    tokenizer: OpusTokenizer,
}

impl OpusModel {
    /// Loads the folder `dir` as model `name` (`opus-mt-SRC-TGT`).
    ///
    /// # Errors
    /// A name that is not `opus-mt-SRC-TGT`; a missing or malformed file.
    pub fn load(name: &str, dir: &Path) -> Result<Self, FolderError> {
        let (from, to) = languages(name)
            .ok_or_else(|| bad(dir)(format!("{name:?} is not opus-mt-SRC-TGT").into()))?;
        let weights = WEIGHTS
            .iter()
            .map(|w| dir.join(w))
            .find(|p| p.is_file())
            .ok_or_else(|| bad(dir)("neither model.safetensors nor pytorch_model.bin".into()))?;
        let files: Vec<_> = FILES
            .iter()
            .map(|f| dir.join(f))
            .chain([weights.clone()])
            .collect();
        let hash =
            super::interface::hash_files(&files, true).map_err(|(path, e)| bad(&path)(e.into()))?;
        let device = Device::Cpu;
        let config: MarianConfig = read_config(dir)?;
        let weights = read_weights(&weights, &device)?;
        Ok(Self {
            name: name.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            hash,
            model: Marian::from_weights(config, weights, device)?,
            tokenizer: OpusTokenizer::load(dir)?,
        })
    }

    fn prepare(&self, input: &Input) -> Result<(Vec<u32>, bool), ModelError> {
        let refuse = |why: String| ModelError::Inference(why.into());
        if input.task_type != TaskType::translation() {
            return Err(ModelError::Unsupported {
                model: self.name.clone(),
                task_type: input.task_type.clone(),
            });
        }
        input.check_template()?;
        match &input.languages {
            Some((from, to)) if *from == self.from && *to == self.to => {}
            Some((from, to)) => {
                return Err(refuse(format!(
                    "{} translates {} to {}, not {from} to {to}",
                    self.name, self.from, self.to
                )))
            }
            None => return Err(refuse("a translation needs its languages".into())),
        }
        self.tokenizer.encode(&input.text)
    }
}

impl Model for OpusModel {
    fn id(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::translation()]
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn score(
        &self,
        jobs: &[(Input, Vec<u32>)],
    ) -> Vec<Result<super::interface::Scored, ModelError>> {
        jobs.iter()
            .map(|(input, candidate)| {
                let (ids, _) = self.prepare(input)?;
                self.model
                    .score(&ids, candidate, &input.decoding)
                    .map_err(|e| ModelError::Inference(e.into()))
            })
            .collect()
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        // One input at a time: translations are short and each keeps its own stop rule.
        inputs
            .iter()
            .map(|input| {
                let (prompt, truncated) = self.prepare(input)?;
                let max = input
                    .max_new_tokens
                    .unwrap_or(protocol::generation::DEFAULT_MAX_NEW_TOKENS);
                let stops = input
                    .stop_ids
                    .clone()
                    .unwrap_or_else(|| vec![self.model.config().eos_token_id]);
                let (token_ids, logprobs) = self
                    .model
                    .generate_with(
                        std::slice::from_ref(&prompt),
                        max as usize,
                        &stops,
                        &input.decoding,
                    )
                    .map_err(|e| ModelError::Inference(e.into()))?
                    .remove(0);
                let stop = if token_ids.last().is_some_and(|l| stops.contains(l)) {
                    Stop::StopToken
                } else {
                    Stop::Length
                };
                let confidence = logprobs.iter().map(|l| f64::from(*l).exp()).sum::<f64>()
                    / logprobs.len().max(1) as f64;
                let text = self.tokenizer.decode(&token_ids);
                Ok(Prediction {
                    label: String::new(),
                    embedding: None,
                    confidence,
                    scores: Vec::new(),
                    generation: Some(Generation {
                        prompt_token_ids: prompt,
                        token_ends: token_ends(&token_ids, &text, |ids| {
                            Ok::<_, ModelError>(self.tokenizer.decode(ids))
                        })?,
                        text,
                        token_ids,
                        logprobs,
                        truncated,
                        stop,
                    }),
                    input_tokens: None,
                })
            })
            .collect()
    }
}
