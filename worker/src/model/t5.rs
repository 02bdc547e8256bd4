//! T5 (t5-small/base, flan-t5) as Hugging Face's `T5ForConditionalGeneration` computes it, in
//! f32 with candle tensors. Own code rather than candle-transformers' `t5`, which differs from
//! it in ways that change answers or their log-probabilities (tests show each against a float64
//! reference forward written in `worker/tests/t5.rs`):
//!
//! - with tied embeddings (t5-small, t5-base) the decoder output is scaled by `d_model^-0.5`
//!   before the LM head; candle-transformers multiplies by `sqrt(d_model)` (the arg-max survives,
//!   the log-probabilities do not);
//! - the decoder's self-attention buckets relative positions one way (keys never after the
//!   query); candle-transformers uses the two-way buckets of the encoder, which differ from
//!   distance 9 on with the usual 32 buckets;
//! - padded batches: the encoder and the cross-attention ignore padding through an attention
//!   mask; candle-transformers takes no mask, so a padded input's answer depends on its padding.
//!
//! The forward recomputes the decoder over the whole prefix at each step (no cache): simple and
//! the same numbers at every position, at a cost that matters only for long outputs.

use super::seq2seq::{
    decoder_inputs, padded, read_folder, DecoderIds, EncoderDecoder, FolderError, Weights,
};
use candle_core::{Device, Module, Result, Tensor, D};
use protocol::generation::Decoding;
use serde::Deserialize;
use std::path::Path;

/// The fields of a Hugging Face T5 `config.json` the forward needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    /// Vocabulary size (rows of `shared.weight`).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Size of one attention head.
    pub d_kv: usize,
    /// Feed-forward size.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (`num_layers` when absent).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance at which buckets stop growing.
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    #[serde(default = "epsilon")]
    pub layer_norm_epsilon: f64,
    /// `relu` (t5) or `gated-gelu` (flan-t5).
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// The LM head is the shared embedding (t5-small/base), scaled by `d_model^-0.5` first.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// End of sequence.
    #[serde(default = "one")]
    pub eos_token_id: u32,
    /// The decoder's first input.
    #[serde(default)]
    pub decoder_start_token_id: u32,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn epsilon() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".to_owned()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// The bucket of a relative position `key - query`, as Hugging Face's
/// `_relative_position_bucket` computes it (its logarithm in f32).
pub fn relative_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            bucket += buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    let scaled = ((distance as f32 / max_exact as f32).ln()
        / (max_distance as f64 / max_exact as f64).ln() as f32
        * (buckets - max_exact) as f32) as i64;
    (bucket + (max_exact + scaled).min(buckets - 1)) as usize
}

struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// `(num_buckets, heads)`, in the first block of each stack only.
    relative_bias: Option<Tensor>,
}

struct Block {
    self_norm: Tensor,
    self_attention: Attention,
    cross: Option<(Tensor, Attention)>,
    ff_norm: Tensor,
    /// `wi` (relu) or `wi_0`, `wi_1` (gated-gelu), then `wo`.
    ff_in: Vec<Tensor>,
    ff_out: Tensor,
}

/// A T5 encoder-decoder in f32.
pub struct T5 {
    config: T5Config,
    shared: Tensor,
    encoder: Vec<Block>,
    encoder_norm: Tensor,
    decoder: Vec<Block>,
    decoder_norm: Tensor,
    lm_head: Tensor,
    device: Device,
}

impl T5 {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    ///
    /// # Errors
    /// [`FolderError`] naming the file or tensor.
    pub fn load(dir: &Path) -> std::result::Result<Self, FolderError> {
        let device = Device::Cpu;
        let (config, weights) = read_folder(dir, &device)?;
        Ok(Self::from_weights(config, weights, device)?)
    }

    fn from_weights(config: T5Config, mut w: Weights, device: Device) -> Result<Self> {
        let gated = config.feed_forward_proj.starts_with("gated");
        let encoder = w.stack("encoder", config.num_layers, false, gated)?;
        let decoder = w.stack(
            "decoder",
            config.num_decoder_layers.unwrap_or(config.num_layers),
            true,
            gated,
        )?;
        let shared = w.take("shared.weight")?;
        let lm_head = if config.tie_word_embeddings {
            shared.clone()
        } else {
            w.take("lm_head.weight")?
        };
        Ok(Self {
            encoder_norm: w.take("encoder.final_layer_norm.weight")?,
            decoder_norm: w.take("decoder.final_layer_norm.weight")?,
            config,
            shared,
            encoder,
            decoder,
            lm_head,
            device,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Encodes a batch: `inputs` right-padded to the longest; `(batch, len, d_model)` and the
    /// key mask `(batch, 1, 1, len)` (0, or -1e9 at padding).
    ///
    /// # Errors
    /// candle's errors.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = padded(inputs, self.config.pad_token_id, &self.device)?;
        let len = ids.dim(1)?;
        let mut h = self.embed(&ids)?;
        let bias = self.position_bias(&self.encoder[0], len, len, true)?;
        for block in &self.encoder {
            let x = self.norm(&h, &block.self_norm)?;
            let a = self.attend(&block.self_attention, &x, &x, Some(&bias), &mask)?;
            h = (h + a)?;
            h = (&h + self.feed_forward(block, &self.norm(&h, &block.ff_norm)?)?)?;
        }
        Ok((self.norm(&h, &self.encoder_norm)?, mask))
    }

    /// The logits `(batch, len, vocab)` of every decoder position for decoder inputs `decoded`
    /// (all of one length) over an encoded batch.
    ///
    /// # Errors
    /// candle's errors.
    pub fn decode(&self, decoded: &[Vec<u32>], encoded: &(Tensor, Tensor)) -> Result<Tensor> {
        let (enc, enc_mask) = encoded;
        let (ids, causal) = decoder_inputs(decoded, &self.device)?;
        let len = ids.dim(1)?;
        let bias = self.position_bias(&self.decoder[0], len, len, false)?;
        let mut h = self.embed(&ids)?;
        for block in &self.decoder {
            let x = self.norm(&h, &block.self_norm)?;
            let a = self.attend(&block.self_attention, &x, &x, Some(&bias), &causal)?;
            h = (h + a)?;
            if let Some((norm, cross)) = &block.cross {
                let x = self.norm(&h, norm)?;
                h = (&h + self.attend(cross, &x, enc, None, enc_mask)?)?;
            }
            h = (&h + self.feed_forward(block, &self.norm(&h, &block.ff_norm)?)?)?;
        }
        let mut h = self.norm(&h, &self.decoder_norm)?;
        if self.config.tie_word_embeddings {
            h = (h * (self.config.d_model as f64).powf(-0.5))?;
        }
        h.broadcast_matmul(&self.lm_head.t()?)
    }

    /// Greedy decoding of a batch, each input on its own: up to `max_new_tokens` ids or the
    /// end-of-sequence id, with each id's log-probability.
    ///
    /// # Errors
    /// candle's errors.
    pub fn generate(
        &self,
        inputs: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        self.generate_until(inputs, max_new_tokens, &[self.config.eos_token_id])
    }

    /// As [`T5::generate`], stopping each row at the first of `stops`.
    ///
    /// # Errors
    /// candle's errors.
    pub fn generate_until(
        &self,
        inputs: &[Vec<u32>],
        max_new_tokens: usize,
        stops: &[u32],
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        self.generate_with(inputs, max_new_tokens, stops, &Decoding::Greedy)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        candle_nn::Embedding::new(self.shared.clone(), self.config.d_model).forward(ids)
    }

    /// T5's layer norm: no mean, no bias; the variance in f32.
    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(variance + self.config.layer_norm_epsilon)?.sqrt()?)?;
        x.broadcast_mul(weight)
    }

    fn feed_forward(&self, block: &Block, x: &Tensor) -> Result<Tensor> {
        let h = match block.ff_in.as_slice() {
            [wi] => x.broadcast_matmul(&wi.t()?)?.relu()?,
            [wi_0, wi_1] => {
                let g = x.broadcast_matmul(&wi_0.t()?)?.gelu()?;
                (g * x.broadcast_matmul(&wi_1.t()?)?)?
            }
            _ => candle_core::bail!("a feed-forward has one or two input matrices"),
        };
        h.broadcast_matmul(&block.ff_out.t()?)
    }

    /// `(1, heads, q_len, k_len)` from the block's relative-attention table.
    fn position_bias(
        &self,
        block: &Block,
        q_len: usize,
        k_len: usize,
        two_way: bool,
    ) -> Result<Tensor> {
        let table = block
            .self_attention
            .relative_bias
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("no relative attention bias".into()))?;
        let c = &self.config;
        let buckets: Vec<u32> = (0..q_len)
            .flat_map(|q| {
                (0..k_len).map(move |k| {
                    relative_bucket(
                        k as i64 - q as i64,
                        two_way,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let idx = Tensor::from_vec(buckets, q_len * k_len, &self.device)?;
        table
            .index_select(&idx, 0)?
            .reshape((q_len, k_len, self.config.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// Unscaled dot-product attention (T5 folds the scale into its weights).
    fn attend(
        &self,
        a: &Attention,
        x: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, q_len, _) = x.dims3()?;
        let k_len = kv.dim(1)?;
        let (h, d) = (self.config.num_heads, self.config.d_kv);
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            t.reshape((b, len, h, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(x.broadcast_matmul(&a.q.t()?)?, q_len)?;
        let k = split(kv.broadcast_matmul(&a.k.t()?)?, k_len)?;
        let v = split(kv.broadcast_matmul(&a.v.t()?)?, k_len)?;
        let mut scores = q.matmul(&k.t()?.contiguous()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let scores = scores.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, q_len, h * d))?;
        y.broadcast_matmul(&a.o.t()?)
    }
}

/// T5's layers from its tensors.
trait T5Weights {
    fn attention(&mut self, prefix: &str, bias: bool) -> Result<Attention>;
    fn stack(&mut self, prefix: &str, n: usize, decoder: bool, gated: bool) -> Result<Vec<Block>>;
}

impl T5Weights for Weights {
    fn attention(&mut self, prefix: &str, bias: bool) -> Result<Attention> {
        Ok(Attention {
            q: self.take(&format!("{prefix}.q.weight"))?,
            k: self.take(&format!("{prefix}.k.weight"))?,
            v: self.take(&format!("{prefix}.v.weight"))?,
            o: self.take(&format!("{prefix}.o.weight"))?,
            relative_bias: if bias {
                Some(self.take(&format!("{prefix}.relative_attention_bias.weight"))?)
            } else {
                None
            },
        })
    }

    fn stack(&mut self, prefix: &str, n: usize, decoder: bool, gated: bool) -> Result<Vec<Block>> {
        (0..n)
            .map(|i| {
                let p = format!("{prefix}.block.{i}.layer");
                let self_attention = self.attention(&format!("{p}.0.SelfAttention"), i == 0)?;
                let self_norm = self.take(&format!("{p}.0.layer_norm.weight"))?;
                let (cross, ff) = if decoder {
                    let c = self.attention(&format!("{p}.1.EncDecAttention"), false)?;
                    (
                        Some((self.take(&format!("{p}.1.layer_norm.weight"))?, c)),
                        2,
                    )
                } else {
                    (None, 1)
                };
                let d = format!("{p}.{ff}.DenseReluDense");
                let ff_in = if gated {
                    vec![
                        self.take(&format!("{d}.wi_0.weight"))?,
                        self.take(&format!("{d}.wi_1.weight"))?,
                    ]
                } else {
                    vec![self.take(&format!("{d}.wi.weight"))?]
                };
                Ok(Block {
                    self_norm,
                    self_attention,
                    cross,
                    ff_norm: self.take(&format!("{p}.{ff}.layer_norm.weight"))?,
                    ff_in,
                    ff_out: self.take(&format!("{d}.wo.weight"))?,
                })
            })
            .collect()
    }
}

/// The files a T5 model folder holds (Hugging Face layout), hashed in this order.
pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The most input tokens a T5 model reads (its training length); longer sources are cut.
pub const MAX_INPUT_TOKENS: usize = 512;

/// The languages T5's `translate/v1` template names: from English to these.
pub const TRANSLATES_TO: &[(&str, &str)] =
    &[("fr", "French"), ("de", "German"), ("ro", "Romanian")];

impl EncoderDecoder for T5 {
    fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        T5::encode(self, inputs)
    }

    fn decode(&self, decoded: &[Vec<u32>], encoded: &(Tensor, Tensor)) -> Result<Tensor> {
        T5::decode(self, decoded, encoded)
    }

    fn decoder_ids(&self) -> DecoderIds {
        DecoderIds {
            start: self.config.decoder_start_token_id,
            pad: self.config.pad_token_id,
            banned: None,
        }
    }
}

/// When a generation stops: `max_new_tokens` and the stop ids.
type StopRule = (u32, Vec<u32>, Decoding);

/// A T5 model with its tokenizer, serving the generative task types greedily.
pub struct T5Model {
    name: String,
    hash: String,
    model: T5,
    tokenizer: tokenizers::Tokenizer,
}

impl T5Model {
    /// Loads `dir` (`config.json`, `model.safetensors`, `tokenizer.json`) as model `name`.
    ///
    /// # Errors
    /// A missing or malformed file.
    pub fn load(name: &str, dir: &Path) -> std::result::Result<Self, FolderError> {
        let bad = |path: std::path::PathBuf| {
            move |e: Box<dyn std::error::Error + Send + Sync>| FolderError::File {
                path: path.clone(),
                source: e,
            }
        };
        let files: Vec<_> = FILES.iter().map(|f| dir.join(f)).collect();
        let hash =
            super::interface::hash_files(&files, true).map_err(|(path, e)| bad(path)(e.into()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(bad(tokenizer_path))?;
        Ok(Self {
            name: name.to_owned(),
            hash,
            model: T5::load(dir)?,
            tokenizer,
        })
    }

    /// The text a task's input becomes: the prompt itself (`generate`), `summarize: ...`, or
    /// `translate English to French: ...`, T5's own task prefixes.
    ///
    /// # Errors
    /// [`super::interface::ModelError`] for a type or a language pair it does not do.
    pub fn prompt(
        &self,
        input: &super::interface::Input,
    ) -> std::result::Result<String, super::interface::ModelError> {
        use protocol::TaskType;
        let refuse = |why: String| super::interface::ModelError::Inference(why.into());
        input.check_template()?;
        if input.task_type == TaskType::generate() {
            Ok(input.text.clone())
        } else if input.task_type == TaskType::summarization() {
            Ok(format!("summarize: {}", input.text))
        } else if input.task_type == TaskType::translation() {
            match &input.languages {
                Some((from, to)) if from == "en" => TRANSLATES_TO
                    .iter()
                    .find(|(c, _)| c == to)
                    .map(|(_, name)| format!("translate English to {name}: {}", input.text))
                    .ok_or_else(|| {
                        refuse(format!(
                            "{} translates English to fr, de or ro, not to {to:?}",
                            self.name
                        ))
                    }),
                Some((from, _)) => Err(refuse(format!(
                    "{} translates from English only, not from {from:?}",
                    self.name
                ))),
                None => Err(refuse(
                    "a translation needs its source and target languages".into(),
                )),
            }
        } else {
            Err(super::interface::ModelError::Unsupported {
                model: self.name.clone(),
                task_type: input.task_type.clone(),
            })
        }
    }

    /// The input ids of a prompt, with T5's end-of-sequence, cut to [`MAX_INPUT_TOKENS`]; and
    /// whether it was cut.
    fn encode(
        &self,
        prompt: &str,
    ) -> std::result::Result<(Vec<u32>, bool), super::interface::ModelError> {
        let mut ids = self
            .tokenizer
            .encode(prompt, true)
            .map_err(super::interface::ModelError::Inference)?
            .get_ids()
            .to_vec();
        if ids.len() <= MAX_INPUT_TOKENS {
            return Ok((ids, false));
        }
        ids.truncate(MAX_INPUT_TOKENS - 1);
        ids.push(self.model.config().eos_token_id);
        Ok((ids, true))
    }
}

impl super::interface::Model for T5Model {
    fn id(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Vec<protocol::TaskType> {
        use protocol::TaskType;
        vec![
            TaskType::generate(),
            TaskType::summarization(),
            TaskType::translation(),
        ]
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn score(
        &self,
        jobs: &[(super::interface::Input, Vec<u32>)],
    ) -> Vec<std::result::Result<super::interface::Scored, super::interface::ModelError>> {
        jobs.iter()
            .map(|(input, candidate)| {
                let (ids, _) = self.prompt(input).and_then(|p| self.encode(&p))?;
                self.model
                    .score(&ids, candidate, &input.decoding)
                    .map_err(|e| super::interface::ModelError::Inference(e.into()))
            })
            .collect()
    }

    fn predict(
        &self,
        inputs: &[super::interface::Input],
    ) -> Vec<std::result::Result<super::interface::Prediction, super::interface::ModelError>> {
        use super::{Generation, ModelError, Prediction, Stop};
        let mut prepared: Vec<Option<(Vec<u32>, bool)>> = Vec::with_capacity(inputs.len());
        let mut out: Vec<Option<std::result::Result<Prediction, ModelError>>> =
            Vec::with_capacity(inputs.len());
        for input in inputs {
            match self.prompt(input).and_then(|p| self.encode(&p)) {
                Ok(p) => {
                    prepared.push(Some(p));
                    out.push(None);
                }
                Err(e) => {
                    prepared.push(None);
                    out.push(Some(Err(e)));
                }
            }
        }
        // One padded batch per (max_new_tokens, stop ids): what decides when a row stops.
        let eos = self.model.config().eos_token_id;
        let key = |i: &super::interface::Input| {
            (
                i.max_new_tokens
                    .unwrap_or(protocol::generation::DEFAULT_MAX_NEW_TOKENS),
                i.stop_ids.clone().unwrap_or_else(|| vec![eos]),
                i.decoding,
            )
        };
        let mut groups: Vec<(StopRule, Vec<usize>)> = Vec::new();
        for (n, (input, p)) in inputs.iter().zip(&prepared).enumerate() {
            if p.is_none() {
                continue;
            }
            let k = key(input);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, members)) => members.push(n),
                None => groups.push((k, vec![n])),
            }
        }
        for ((max, stops, decoding), members) in groups {
            let batch: Vec<Vec<u32>> = members
                .iter()
                .map(|&n| prepared[n].as_ref().expect("prepared").0.clone())
                .collect();
            match self
                .model
                .generate_with(&batch, max as usize, &stops, &decoding)
            {
                Ok(results) => {
                    for (&n, (ids, logprobs)) in members.iter().zip(results) {
                        let stop = if ids.last().is_some_and(|l| stops.contains(l)) {
                            Stop::StopToken
                        } else {
                            Stop::Length
                        };
                        let text = self.tokenizer.decode(&ids, true).unwrap_or_default();
                        let token_ends = super::interface::token_ends(&ids, &text, |prefix| {
                            self.tokenizer.decode(prefix, true)
                        })
                        .unwrap_or_default();
                        let confidence = if logprobs.is_empty() {
                            0.0
                        } else {
                            logprobs.iter().map(|l| f64::from(*l).exp()).sum::<f64>()
                                / logprobs.len() as f64
                        };
                        let (prompt_token_ids, truncated) = prepared[n].take().expect("prepared");
                        out[n] = Some(Ok(Prediction {
                            label: String::new(),
                            embedding: None,
                            confidence,
                            scores: Vec::new(),
                            generation: Some(Generation {
                                prompt_token_ids,
                                token_ids: ids,
                                text,
                                logprobs,
                                truncated,
                                stop,
                                token_ends,
                            }),
                            input_tokens: None,
                        }));
                    }
                }
                Err(e) => {
                    let e = std::sync::Arc::new(ModelError::Inference(e.into()));
                    for n in members {
                        out[n] = Some(Err(ModelError::Batch(e.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every input answered"))
            .collect()
    }
}
