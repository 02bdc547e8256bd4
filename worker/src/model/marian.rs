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

use super::seq2seq::{
    decoder_inputs, padded, read_folder, DecoderIds, EncoderDecoder, FolderError, Weights,
};
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::LayerNorm;
use protocol::generation::Decoding;
use serde::Deserialize;
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

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

struct Layer {
    self_attention: Attention,
    self_norm: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
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

impl Marian {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    ///
    /// # Errors
    /// [`FolderError`] naming the file or tensor.
    pub fn load(dir: &Path) -> std::result::Result<Self, FolderError> {
        let device = Device::Cpu;
        let (config, weights) = read_folder(dir, &device)?;
        Ok(Self::from_weights(config, weights, device)?)
    }

    /// Builds the model from Hugging Face-named tensors.
    ///
    /// # Errors
    /// A missing tensor.
    pub(crate) fn from_weights(
        config: MarianConfig,
        mut w: Weights,
        device: Device,
    ) -> Result<Self> {
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
        let (ids, mask) = padded(inputs, self.config.pad_token_id, &self.device)?;
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
        let (ids, causal) = decoder_inputs(decoded, &self.device)?;
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
        self.generate_with(inputs, max_new_tokens, stops, &Decoding::Greedy)
    }
}

impl EncoderDecoder for Marian {
    fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        Marian::encode(self, inputs)
    }

    fn decode(&self, decoded: &[Vec<u32>], encoded: &(Tensor, Tensor)) -> Result<Tensor> {
        Marian::decode(self, decoded, encoded)
    }

    fn decoder_ids(&self) -> DecoderIds {
        DecoderIds {
            start: self.config.decoder_start_token_id,
            pad: self.config.pad_token_id,
            banned: Some(self.config.pad_token_id),
        }
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

/// Marian's layers from its tensors.
trait MarianWeights {
    fn linear(&mut self, prefix: &str) -> Result<Linear>;
    fn norm(&mut self, prefix: &str) -> Result<LayerNorm>;
    fn attention(&mut self, prefix: &str, heads: usize) -> Result<Attention>;
    fn layer(&mut self, prefix: &str, heads: usize, decoder: bool) -> Result<Layer>;
}

impl MarianWeights for Weights {
    fn linear(&mut self, prefix: &str) -> Result<Linear> {
        Ok(Linear {
            w: self.take(&format!("{prefix}.weight"))?,
            b: self.take(&format!("{prefix}.bias"))?,
        })
    }

    /// Marian's layer norm: weight and bias, epsilon 1e-5.
    fn norm(&mut self, prefix: &str) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.take(&format!("{prefix}.weight"))?,
            self.take(&format!("{prefix}.bias"))?,
            1e-5,
        ))
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
