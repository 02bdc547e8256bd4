//! The Llama forward pass over GGUF weights, as candle-transformers' `quantized_llama` computes
//! it, with one change: Q4_1 weight products go through [`super::q4_1`] (candle's own numbers,
//! faster) instead of candle's scalar Q4_1 kernel. Everything else is candle's code path: the
//! token embedding, RMS norm, interleaved RoPE (the `llama` architecture), grouped-query
//! attention with a KV cache, SiLU-gated MLP, and the output product (Q8_0 in `smollm2`, through
//! candle's `QMatMul`). A test in `worker/tests/smollm2.rs` runs both models on the same prompt
//! and compares the logits bit for bit.

use super::q4_1::{Q41MatMul, Q41Matrix};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};
use std::collections::HashMap;

/// The longest sequence the RoPE tables cover (candle's `MAX_SEQ_LEN`).
pub const MAX_SEQ_LEN: usize = 4096;

/// A weight matrix: Q4_1 through our product, anything else through candle's.
enum Linear {
    Q41(Q41Matrix),
    Candle(QMatMul),
}

impl Linear {
    fn new(t: QTensor) -> Result<Self> {
        Ok(if t.dtype() == GgmlDType::Q4_1 {
            Linear::Q41(Q41Matrix::from_qtensor(&t)?)
        } else {
            Linear::Candle(QMatMul::from_qtensor(t)?)
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Q41(w) => x.contiguous()?.apply_op1_no_bwd(&Q41MatMul(w)),
            Linear::Candle(w) => w.forward(x),
        }
    }
}

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    attention_norm: RmsNorm,
    w1: Linear,
    w2: Linear,
    w3: Linear,
    ffn_norm: RmsNorm,
    kv_cache: Option<(Tensor, Tensor)>,
}

/// A Llama-architecture model from a GGUF file, with its KV cache.
pub struct Llama {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    masks: HashMap<(usize, usize), Tensor>,
}

impl Llama {
    /// Loads the weights named as llama.cpp names them.
    ///
    /// # Errors
    /// A missing tensor or metadata key; an architecture it does not run (mixtures of experts,
    /// non-interleaved RoPE).
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let md = |s: &str| match ct.metadata.get(s) {
            None => candle_core::bail!("cannot find {s} in metadata"),
            Some(v) => Ok(v),
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            candle_core::bail!("architecture {arch:?}: only llama is supported");
        }
        if md("llama.expert_count")
            .and_then(|v| v.to_u32())
            .unwrap_or(0)
            > 1
        {
            candle_core::bail!("mixtures of experts are not supported");
        }
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = md("llama.block_count")?.to_u32()? as usize;
        let embedding_length = md("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = md("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = md("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let freq_base = md("llama.rope.freq_base")
            .and_then(|m| m.to_f32())
            .unwrap_or(10000f32);
        let (cos, sin) = rope_tables(rope_dim, freq_base, device)?;

        let embeddings_q = ct.tensor(reader, "token_embd.weight", device)?;
        let embeddings = embeddings_q.dequantize(device)?;
        let norm = RmsNorm::from_qtensor(ct.tensor(reader, "output_norm.weight", device)?, eps)?;
        let output = match ct.tensor(reader, "output.weight", device) {
            Ok(t) => t,
            Err(_) => embeddings_q,
        };
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut t = |name: &str| ct.tensor(reader, &format!("blk.{i}.{name}.weight"), device);
            layers.push(Layer {
                wq: Linear::new(t("attn_q")?)?,
                wk: Linear::new(t("attn_k")?)?,
                wv: Linear::new(t("attn_v")?)?,
                wo: Linear::new(t("attn_output")?)?,
                w1: Linear::new(t("ffn_gate")?)?,
                w2: Linear::new(t("ffn_down")?)?,
                w3: Linear::new(t("ffn_up")?)?,
                attention_norm: RmsNorm::from_qtensor(t("attn_norm")?, eps)?,
                ffn_norm: RmsNorm::from_qtensor(t("ffn_norm")?, eps)?,
                kv_cache: None,
            });
        }
        Ok(Self {
            embeddings: Embedding::new(embeddings, embedding_length),
            layers,
            norm,
            output: Linear::new(output)?,
            n_head,
            n_kv_head,
            head_dim: embedding_length / n_head,
            cos,
            sin,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            masks: HashMap::new(),
        })
    }

    /// Empties the KV cache, for the next independent sequence.
    pub fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.kv_cache = None;
        }
    }

    /// The logits of the last position of `x` (`(batch, seq)` token ids) placed at `index_pos`.
    ///
    /// # Errors
    /// candle's errors (shapes, a sequence past [`MAX_SEQ_LEN`]).
    pub fn forward(&mut self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let h = self.hidden(x, index_pos)?;
        let seq_len = h.dim(1)?;
        self.output.forward(&h.i((.., seq_len - 1, ..))?)
    }

    /// The logits of the last `n` positions of `x` (`(batch, seq)` token ids) placed at
    /// `index_pos`: `(batch, n, vocab)`, what a teacher-forced pass scores a candidate with. Only
    /// those rows go through the output layer, the largest product.
    ///
    /// # Errors
    /// candle's errors (shapes, `n` past the sequence, a sequence past [`MAX_SEQ_LEN`]).
    pub fn forward_last(&mut self, x: &Tensor, index_pos: usize, n: usize) -> Result<Tensor> {
        let h = self.hidden(x, index_pos)?;
        let (b, seq_len, dim) = h.dims3()?;
        let h = h.narrow(1, seq_len.saturating_sub(n), n)?;
        self.output
            .forward(&h.reshape((b * n, dim))?)?
            .reshape((b, n, ()))
    }

    /// The final hidden states `(batch, seq, dim)`, normalized, extending the KV cache.
    fn hidden(&mut self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_b, seq_len) = x.dims2()?;
        let mask = if seq_len == 1 {
            None
        } else {
            let kv_len = index_pos + seq_len;
            let mask = match self.masks.get(&(seq_len, kv_len)) {
                Some(m) => m.clone(),
                None => {
                    let m = build_causal_mask(seq_len, index_pos, x.device())?;
                    self.masks.insert((seq_len, kv_len), m.clone());
                    m
                }
            };
            Some(mask)
        };
        let mut h = self.embeddings.forward(x)?;
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        let rope = Rope {
            cos: &self.cos,
            sin: &self.sin,
        };
        for layer in &mut self.layers {
            let residual = &h;
            let x = layer.attention_norm.forward(&h)?;
            let attn = layer.attention(
                &x,
                mask.as_ref(),
                index_pos,
                (n_head, n_kv_head, head_dim),
                &rope,
                &self.neg_inf,
            )?;
            let x = (attn + residual)?;
            let residual = &x;
            let y = layer.ffn_norm.forward(&x)?;
            let y = layer.w2.forward(
                &(candle_nn::ops::silu(&layer.w1.forward(&y)?)? * layer.w3.forward(&y)?)?,
            )?;
            h = (y + residual)?;
        }
        self.norm.forward(&h)
    }
}

/// The RoPE tables.
struct Rope<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
}

impl Rope<'_> {
    /// Interleaved rotary embedding (pairs `2i, 2i + 1`), as llama.cpp's `llama` architecture.
    fn apply(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
    }
}

impl Layer {
    fn attention(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
        (n_head, n_kv_head, head_dim): (usize, usize, usize),
        rope: &Rope<'_>,
        neg_inf: &Tensor,
    ) -> Result<Tensor> {
        let (b, seq_len, n_embd) = x.dims3()?;
        let q = self
            .wq
            .forward(x)?
            .reshape((b, seq_len, n_head, head_dim))?
            .transpose(1, 2)?;
        let k = self
            .wk
            .forward(x)?
            .reshape((b, seq_len, n_kv_head, head_dim))?
            .transpose(1, 2)?;
        let v = self
            .wv
            .forward(x)?
            .reshape((b, seq_len, n_kv_head, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope.apply(&q, index_pos)?;
        let k = rope.apply(&k, index_pos)?;
        let (k, v) = match &self.kv_cache {
            Some((k_cache, v_cache)) if index_pos != 0 => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            _ => (k, v),
        };
        self.kv_cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, n_head / n_kv_head)?;
        let v = repeat_kv(v, n_head / n_kv_head)?;
        let att = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&neg_inf.broadcast_as(mask.shape().dims())?, &att)?
            }
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape(&[b, seq_len, n_embd])?;
        self.wo.forward(&y)
    }
}

/// cos and sin of every position up to [`MAX_SEQ_LEN`] (candle's `precomput_freqs_cis`).
fn rope_tables(head_dim: usize, freq_base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta: Vec<_> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / freq_base.powf(i as f32 / head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx_theta = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((idx_theta.cos()?, idx_theta.sin()?))
}
