//! Marian (the opus-mt translation models) as Hugging Face's `MarianMTModel` computes it, in f32
//! with candle tensors. Own code rather than candle-transformers' `marian`, whose encoder
//! self-attention keeps a KV cache across calls, so a second input attends to the first one's
//! keys unless the caller resets it, and which takes no padding mask (a test in
//! `worker/tests/marian.rs` shows the first against a float64 reference forward).
//!
//! Post-layer-norm encoder and decoder, attention with biases and queries scaled by
//! `head_dim^-0.5`, SiLU (`swish`) feed-forward, token embeddings scaled by `sqrt(d_model)` when
//! `scale_embedding`, sinusoidal positions (sines in the first half, cosines in the second), the
//! LM head tied to the shared embedding plus `final_logits_bias`, and the padding id never
//! generated (opus-mt's `bad_words_ids`). The decoder is recomputed over the whole prefix each
//! step (no cache).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The fields of a Hugging Face Marian `config.json` the forward needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MarianConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward size.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward size.
    pub decoder_ffn_dim: usize,
    /// Longest sequence the positions cover.
    pub max_position_embeddings: usize,
    /// Multiply token embeddings by `sqrt(d_model)`.
    #[serde(default = "yes")]
    pub scale_embedding: bool,
    /// Padding id, also the decoder's first input.
    pub pad_token_id: u32,
    /// End of sequence.
    pub eos_token_id: u32,
    /// The decoder's first input.
    pub decoder_start_token_id: u32,
}

fn yes() -> bool {
    true
}

/// Why a Marian model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MarianLoadError {
    /// `config.json` unreadable or not a Marian config.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The weights are missing or malformed.
    #[error("weights: {0}")]
    Weights(#[from] candle_core::Error),
}

/// A linear layer with bias.
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::LayerNorm::new(self.w.clone(), self.b.clone(), 1e-5).forward(x)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

struct Layer {
    self_attention: Attention,
    self_norm: Norm,
    cross: Option<(Attention, Norm)>,
    fc1: Linear,
    fc2: Linear,
    final_norm: Norm,
}

/// A Marian encoder-decoder in f32.
pub struct Marian {
    config: MarianConfig,
    shared: Tensor,
    positions: Tensor,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    final_logits_bias: Tensor,
    device: Device,
}

/// Additive mask value for positions attention must not see.
const MASKED: f32 = -1e9;

impl Marian {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    ///
    /// # Errors
    /// [`MarianLoadError`] naming the file or tensor.
    pub fn load(dir: &Path) -> std::result::Result<Self, MarianLoadError> {
        let path = dir.join("config.json");
        let config: MarianConfig = std::fs::read(&path)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.into()))
            .map_err(|source| MarianLoadError::Config {
                path: path.clone(),
                source,
            })?;
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device)?;
        Ok(Self::from_tensors(config, tensors, device)?)
    }

    /// Builds the model from Hugging Face-named tensors.
    ///
    /// # Errors
    /// A missing tensor.
    pub fn from_tensors(
        config: MarianConfig,
        tensors: HashMap<String, Tensor>,
        device: Device,
    ) -> Result<Self> {
        let mut w = Weights(tensors);
        let encoder = (0..config.encoder_layers)
            .map(|i| {
                w.layer(
                    &format!("model.encoder.layers.{i}"),
                    config.encoder_attention_heads,
                    false,
                )
            })
            .collect::<Result<_>>()?;
        let decoder = (0..config.decoder_layers)
            .map(|i| {
                w.layer(
                    &format!("model.decoder.layers.{i}"),
                    config.decoder_attention_heads,
                    true,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            shared: w.take("model.shared.weight")?,
            final_logits_bias: w.take("final_logits_bias")?,
            positions: sinusoids(config.max_position_embeddings, config.d_model, &device)?,
            config,
            encoder,
            decoder,
            device,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &MarianConfig {
        &self.config
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let mut x =
            candle_nn::Embedding::new(self.shared.clone(), self.config.d_model).forward(ids)?;
        if self.config.scale_embedding {
            x = (x * (self.config.d_model as f64).sqrt())?;
        }
        x.broadcast_add(&self.positions.narrow(0, 0, len)?)
    }

    /// Encodes a batch right-padded with the padding id; `(batch, len, d_model)` and the key mask
    /// `(batch, 1, 1, len)` (0, or -1e9 at padding).
    ///
    /// # Errors
    /// candle's errors.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let len = inputs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for input in inputs {
            for i in 0..len {
                ids.push(input.get(i).copied().unwrap_or(self.config.pad_token_id));
                mask.push(if i < input.len() { 0f32 } else { MASKED });
            }
        }
        let ids = Tensor::from_vec(ids, (inputs.len(), len), &self.device)?;
        let mask = Tensor::from_vec(mask, (inputs.len(), 1, 1, len), &self.device)?;
        let mut h = self.embed(&ids)?;
        for layer in &self.encoder {
            let a = attend(&layer.self_attention, &h, &h, &mask)?;
            h = layer.self_norm.forward(&(h + a)?)?;
            h = layer
                .final_norm
                .forward(&(&h + feed_forward(layer, &h)?)?)?;
        }
        Ok((h, mask))
    }

    /// The logits `(batch, len, vocab)` of every decoder position for decoder inputs `decoded`
    /// (all of one length) over an encoded batch.
    ///
    /// # Errors
    /// candle's errors.
    pub fn decode(&self, decoded: &[Vec<u32>], encoded: &(Tensor, Tensor)) -> Result<Tensor> {
        let (enc, enc_mask) = encoded;
        let len = decoded[0].len();
        let flat: Vec<u32> = decoded.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (decoded.len(), len), &self.device)?;
        let causal: Vec<f32> = (0..len)
            .flat_map(|q| (0..len).map(move |k| if k > q { MASKED } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, len, len), &self.device)?;
        let mut h = self.embed(&ids)?;
        for layer in &self.decoder {
            let a = attend(&layer.self_attention, &h, &h, &causal)?;
            h = layer.self_norm.forward(&(h + a)?)?;
            if let Some((cross, norm)) = &layer.cross {
                let a = attend(cross, &h, enc, enc_mask)?;
                h = norm.forward(&(h + a)?)?;
            }
            h = layer
                .final_norm
                .forward(&(&h + feed_forward(layer, &h)?)?)?;
        }
        h.broadcast_matmul(&self.shared.t()?)?
            .broadcast_add(&self.final_logits_bias)
    }

    /// Greedy decoding of a batch, each input on its own, never choosing the padding id: up to
    /// `max_new_tokens` ids or the first of `stops`, with each id's log-probability.
    ///
    /// # Errors
    /// candle's errors.
    pub fn generate(
        &self,
        inputs: &[Vec<u32>],
        max_new_tokens: usize,
        stops: &[u32],
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let encoded = self.encode(inputs)?;
        let pad = self.config.pad_token_id as usize;
        let mut decoded = vec![vec![self.config.decoder_start_token_id]; inputs.len()];
        let mut out = vec![(Vec::new(), Vec::new()); inputs.len()];
        let mut done = vec![false; inputs.len()];
        for _ in 0..max_new_tokens {
            let logits = self.decode(&decoded, &encoded)?;
            let last = logits.narrow(1, decoded[0].len() - 1, 1)?.squeeze(1)?;
            let logp = candle_nn::ops::log_softmax(&last, D::Minus1)?.to_vec2::<f32>()?;
            for (i, row) in logp.iter().enumerate() {
                if done[i] {
                    decoded[i].push(self.config.pad_token_id);
                    continue;
                }
                let (next, lp) = row.iter().enumerate().filter(|(j, _)| *j != pad).fold(
                    (0, f32::NEG_INFINITY),
                    |b, (j, &l)| if l > b.1 { (j, l) } else { b },
                );
                out[i].0.push(next as u32);
                out[i].1.push(lp);
                decoded[i].push(next as u32);
                done[i] = stops.contains(&(next as u32));
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        Ok(out)
    }
}

fn feed_forward(layer: &Layer, x: &Tensor) -> Result<Tensor> {
    layer
        .fc2
        .forward(&candle_nn::ops::silu(&layer.fc1.forward(x)?)?)
}

fn attend(a: &Attention, x: &Tensor, kv: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, q_len, d_model) = x.dims3()?;
    let k_len = kv.dim(1)?;
    let (h, d) = (a.heads, d_model / a.heads);
    let split = |t: Tensor, len: usize| -> Result<Tensor> {
        t.reshape((b, len, h, d))?.transpose(1, 2)?.contiguous()
    };
    let q = split((a.q.forward(x)? * (d as f64).powf(-0.5))?, q_len)?;
    let k = split(a.k.forward(kv)?, k_len)?;
    let v = split(a.v.forward(kv)?, k_len)?;
    let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(mask)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    let y = weights
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, q_len, h * d))?;
    a.out.forward(&y)
}

/// Marian's sinusoidal positions: for position `p` and `j < dim`, the angle
/// `p / 10000^(2 * (j / 2) / dim)`; sines of the even `j` fill the first half, cosines of the odd
/// `j` the second. Computed in f64 and stored in f32, as Hugging Face does.
fn sinusoids(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim.div_ceil(2);
    let mut out = vec![0f32; positions * dim];
    for p in 0..positions {
        let angle = |j: usize| p as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
        for (i, j) in (0..dim).step_by(2).enumerate() {
            out[p * dim + i] = angle(j).sin() as f32;
        }
        for (i, j) in (1..dim).step_by(2).enumerate() {
            out[p * dim + half + i] = angle(j).cos() as f32;
        }
    }
    Tensor::from_vec(out, (positions, dim), device)
}

/// Tensors by Hugging Face name, taken out one by one.
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.0
            .remove(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
            .to_dtype(DType::F32)
    }

    fn linear(&mut self, prefix: &str) -> Result<Linear> {
        Ok(Linear {
            w: self.take(&format!("{prefix}.weight"))?,
            b: self.take(&format!("{prefix}.bias"))?,
        })
    }

    fn norm(&mut self, prefix: &str) -> Result<Norm> {
        Ok(Norm {
            w: self.take(&format!("{prefix}.weight"))?,
            b: self.take(&format!("{prefix}.bias"))?,
        })
    }

    fn attention(&mut self, prefix: &str, heads: usize) -> Result<Attention> {
        Ok(Attention {
            q: self.linear(&format!("{prefix}.q_proj"))?,
            k: self.linear(&format!("{prefix}.k_proj"))?,
            v: self.linear(&format!("{prefix}.v_proj"))?,
            out: self.linear(&format!("{prefix}.out_proj"))?,
            heads,
        })
    }

    fn layer(&mut self, prefix: &str, heads: usize, decoder: bool) -> Result<Layer> {
        Ok(Layer {
            self_attention: self.attention(&format!("{prefix}.self_attn"), heads)?,
            self_norm: self.norm(&format!("{prefix}.self_attn_layer_norm"))?,
            cross: if decoder {
                Some((
                    self.attention(&format!("{prefix}.encoder_attn"), heads)?,
                    self.norm(&format!("{prefix}.encoder_attn_layer_norm"))?,
                ))
            } else {
                None
            },
            fc1: self.linear(&format!("{prefix}.fc1"))?,
            fc2: self.linear(&format!("{prefix}.fc2"))?,
            final_norm: self.norm(&format!("{prefix}.final_layer_norm"))?,
        })
    }
}
