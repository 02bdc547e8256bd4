//! The Llama forward pass over GGUF weights, written so that its bits depend on nothing but the
//! tokens: not the instruction set, not the thread count, not how many rows a pass takes. So an
//! honest worker on any CPU computes the same logits, and a prompt row computed in one batched
//! pass equals the same position computed as a decode step.
//!
//! How each part keeps that:
//! - weight products ([`super::q4_1`], [`super::q8_0`]): each output is candle's
//!   `vec_dot_unopt` chain, in block order, on every path; threads split output rows only; q/k/v
//!   and gate/up are one product each, each input quantized once;
//! - everything else is plain Rust over `f32` slices, whose operations are IEEE-exact (Rust
//!   never fuses or reorders float operations) in fixed summation orders (eight partial sums
//!   added in a fixed tree, or one chain), with `sin`, `cos` and `pow` from the pure-Rust `libm`
//!   crate instead of the system's (which picks FMA variants on some CPUs), and `exp` as
//!   `libm::expf` computes it, bit for bit, in a vectorizable form (`expf.rs`);
//! - attention is causal grouped-query attention computed query by query against a KV cache
//!   that grows in place (no copy per step, no repeated keys): a query's scores, softmax and
//!   weighted sum read only its own row and the cache up to its position, so they are the same
//!   whether the query came alone or with others;
//! - the token embedding stays quantized; a row is dequantized when its token comes.
//!
//! The architecture is candle-transformers' `quantized_llama` for `llama` GGUF files
//! (interleaved RoPE, RMS norm, SiLU-gated MLP, output tied to the embedding when the file has
//! no `output.weight`); its logits agree with candle's within float noise
//! (`worker/tests/smollm2.rs`). `qwen2` files are the same network with biases on q, k and v
//! and RoPE over the two halves of each head (llama.cpp's NEOX style), as candle-transformers'
//! `quantized_qwen2` runs them (`worker/tests/gguf.rs`).

use super::expf::expf;
use super::kernel::{resize, Autovectorized, Kernel, Threads};
use super::q4_1::Q41Matrix;
use super::q8::Q8Rows;
use super::q8_0::Q80Matrix;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Result};
use std::ops::Range;

/// The longest sequence the engine runs (candle's `MAX_SEQ_LEN`).
pub const MAX_SEQ_LEN: usize = 4096;

/// The GGUF architectures the engine runs (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama: interleaved RoPE, no biases.
    Llama,
    /// Qwen2: llama with q/k/v biases and RoPE over head halves.
    Qwen2,
}

impl Arch {
    /// Every architecture, by its GGUF name.
    pub const ALL: &'static [(&'static str, Arch)] =
        &[("llama", Arch::Llama), ("qwen2", Arch::Qwen2)];

    /// The architecture named `name` in a GGUF file.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }
}

/// The weight types the engine has products for.
pub const SUPPORTED_TYPES: &[GgmlDType] = &[GgmlDType::Q4_1, GgmlDType::Q8_0];

/// One product's weights: consecutive tensors of one type stacked as one matrix.
enum Linear {
    Q41(Q41Matrix),
    Q80(Q80Matrix),
}

impl Linear {
    /// `parts` stacked by rows; they must share one supported type.
    fn stacked(name: &str, parts: &[&QTensor]) -> Result<Self> {
        let dtype = parts.first().map(|t| t.dtype());
        if parts.iter().any(|t| Some(t.dtype()) != dtype) {
            candle_core::bail!("{name}: its parts have different quantization types");
        }
        match dtype {
            Some(GgmlDType::Q4_1) => Ok(Linear::Q41(Q41Matrix::stacked(parts)?)),
            Some(GgmlDType::Q8_0) => Ok(Linear::Q80(Q80Matrix::stacked(parts)?)),
            Some(other) => candle_core::bail!(
                "{name}: quantization type {other:?} has no kernel; supported: {}",
                supported_names()
            ),
            None => candle_core::bail!("{name}: no tensors"),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Linear::Q41(m) => m.rows(),
            Linear::Q80(m) => m.rows(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            Linear::Q41(m) => m.cols(),
            Linear::Q80(m) => m.cols(),
        }
    }

    /// `x` times the transpose of this matrix, into `out` (resized, its values overwritten).
    fn matmul(&self, x: &Q8Rows, kernel: Kernel, threads: &Threads, out: &mut Vec<f32>) {
        match self {
            Linear::Q41(m) => m.matmul(x, kernel, threads, out),
            Linear::Q80(m) => m.matmul(x, kernel, threads, out),
        }
    }

    fn row(&self, r: usize) -> Vec<f32> {
        match self {
            Linear::Q41(m) => m.row(r),
            Linear::Q80(m) => m.row(r),
        }
    }
}

/// The supported types, for messages.
fn supported_names() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Layer {
    attention_norm: Vec<f32>,
    /// q, k and v stacked: one product, outputs `q | k | v`.
    qkv: Linear,
    /// Their biases, `q | k | v`, added to each output row (qwen2).
    qkv_bias: Option<Vec<f32>>,
    wo: Linear,
    ffn_norm: Vec<f32>,
    /// gate (w1) and up (w3) stacked: one product, outputs `gate | up`.
    gate_up: Linear,
    down: Linear,
}

/// The shapes of the model.
#[derive(Debug, Clone, Copy)]
struct Shape {
    dim: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    hidden: usize,
    eps: f32,
}

impl Shape {
    fn kv_dim(self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// The immutable part: weights and tables.
struct Weights {
    arch: Arch,
    shape: Shape,
    /// The token embedding, when not tied to the output layer.
    embedding: Option<Linear>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
    /// cos and sin of every position and frequency: `[pos * head_dim / 2 + i]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Each layer's keys and values, position by position (`[pos * kv_dim ..]`), and the tokens
/// they are of.
#[derive(Default)]
struct Cache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    tokens: Vec<u32>,
}

impl Cache {
    /// Keeps the first `len` positions.
    fn truncate(&mut self, len: usize, kv_dim: usize) {
        for c in self.k.iter_mut().chain(&mut self.v) {
            c.truncate(len * kv_dim);
        }
        self.tokens.truncate(len);
        self.len = len.min(self.len);
    }
}

/// A Llama-architecture model from a GGUF file, with its KV cache, kernel path and threads.
pub struct Llama {
    weights: Weights,
    cache: Cache,
    kernel: Kernel,
    threads: Threads,
}

impl Llama {
    /// Loads the weights named as llama.cpp names them, for `kernel` and `threads`.
    ///
    /// # Errors
    /// A missing tensor or metadata key; an architecture it does not run (mixtures of experts,
    /// a RoPE over part of each head); a weight type without a kernel (the message names the
    /// supported ones).
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        kernel: Kernel,
        threads: Threads,
    ) -> Result<Self> {
        let device = &Device::Cpu;
        let md = |s: &str| match ct.metadata.get(s) {
            None => candle_core::bail!("cannot find {s} in metadata"),
            Some(v) => Ok(v),
        };
        let name = md("general.architecture")?.to_string()?.clone();
        let Some(arch) = Arch::named(&name) else {
            let known: Vec<&str> = Arch::ALL.iter().map(|(n, _)| *n).collect();
            candle_core::bail!(
                "architecture {name:?} is not supported; supported: {}",
                known.join(", ")
            );
        };
        let key = |k: &str| md(&format!("{name}.{k}"));
        if key("expert_count").and_then(|v| v.to_u32()).unwrap_or(0) > 1 {
            candle_core::bail!("mixtures of experts are not supported");
        }
        let n_head = key("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = key("attention.head_count_kv")?.to_u32()? as usize;
        let blocks = key("block_count")?.to_u32()? as usize;
        let dim = key("embedding_length")?.to_u32()? as usize;
        let eps = key("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let freq_base = key("rope.freq_base")
            .and_then(|m| m.to_f32())
            .unwrap_or(10000f32);
        if n_head == 0
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
            || !dim.is_multiple_of(n_head)
        {
            candle_core::bail!("{n_head} heads over {n_kv_head} key/value heads of {dim}");
        }
        let head_dim = dim / n_head;
        // Qwen2 files may leave the RoPE width out: the whole head.
        let rope_dim = match key("rope.dimension_count") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) if arch == Arch::Qwen2 => head_dim,
            Err(e) => return Err(e),
        };
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            candle_core::bail!("RoPE over {rope_dim} of {head_dim} head dimensions");
        }
        let (cos, sin) = rope_tables(head_dim, freq_base);

        let mut tensor = |name: &str| ct.tensor(reader, name, device);
        let dense = |t: QTensor| -> Result<Vec<f32>> {
            t.dequantize(device)?.flatten_all()?.to_vec1::<f32>()
        };
        let token_embd = tensor("token_embd.weight")?;
        let norm = dense(tensor("output_norm.weight")?)?;
        let (embedding, output) = match tensor("output.weight") {
            Ok(out) => (
                Some(Linear::stacked("token_embd", &[&token_embd])?),
                Linear::stacked("output", &[&out])?,
            ),
            Err(_) => (
                None,
                Linear::stacked("output (token_embd)", &[&token_embd])?,
            ),
        };
        drop(token_embd);
        let mut layers = Vec::with_capacity(blocks);
        let mut hidden = 0;
        for i in 0..blocks {
            let qkv_bias = match arch {
                Arch::Llama => None,
                Arch::Qwen2 => {
                    let mut b = Vec::new();
                    for part in ["attn_q", "attn_k", "attn_v"] {
                        b.extend(dense(tensor(&format!("blk.{i}.{part}.bias"))?)?);
                    }
                    Some(b)
                }
            };
            let mut t = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let (q, k, v) = (t("attn_q")?, t("attn_k")?, t("attn_v")?);
            let (gate, up) = (t("ffn_gate")?, t("ffn_up")?);
            hidden = gate.shape().dims2()?.0;
            layers.push(Layer {
                qkv: Linear::stacked(&format!("blk.{i}.attn_qkv"), &[&q, &k, &v])?,
                qkv_bias,
                wo: Linear::stacked(&format!("blk.{i}.attn_output"), &[&t("attn_output")?])?,
                gate_up: Linear::stacked(&format!("blk.{i}.ffn_gate_up"), &[&gate, &up])?,
                down: Linear::stacked(&format!("blk.{i}.ffn_down"), &[&t("ffn_down")?])?,
                attention_norm: dense(t("attn_norm")?)?,
                ffn_norm: dense(t("ffn_norm")?)?,
            });
        }
        let shape = Shape {
            dim,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
            eps,
        };
        for (i, l) in layers.iter().enumerate() {
            let want = [
                (&l.qkv, dim + 2 * shape.kv_dim(), dim),
                (&l.wo, dim, dim),
                (&l.gate_up, 2 * hidden, dim),
                (&l.down, dim, hidden),
            ];
            for (m, rows, cols) in want {
                if (m.rows(), m.cols()) != (rows, cols) {
                    candle_core::bail!(
                        "blk.{i}: a {}x{} weight, not {rows}x{cols}",
                        m.rows(),
                        m.cols()
                    );
                }
            }
            if let Some(b) = &l.qkv_bias {
                if b.len() != dim + 2 * shape.kv_dim() {
                    candle_core::bail!("blk.{i}: q/k/v biases of {} values", b.len());
                }
            }
        }
        if output.cols() != dim || norm.len() != dim {
            candle_core::bail!("output layer of width {}, not {dim}", output.cols());
        }
        let cache = Cache {
            k: vec![Vec::new(); blocks],
            v: vec![Vec::new(); blocks],
            len: 0,
            tokens: Vec::new(),
        };
        Ok(Self {
            weights: Weights {
                arch,
                shape,
                embedding,
                layers,
                norm,
                output,
                cos,
                sin,
            },
            cache,
            kernel,
            threads,
        })
    }

    /// The kernel path the products run.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// How many threads share the products.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// The vocabulary size: the length of a logits row.
    pub fn vocab(&self) -> usize {
        self.weights.output.rows()
    }

    /// Empties the KV cache, for the next independent sequence (its memory is kept).
    pub fn clear_kv_cache(&mut self) {
        self.cache.truncate(0, self.weights.shape.kv_dim());
    }

    /// Makes the cache hold the longest prefix of `seq` it already holds, leaving at least
    /// `rows` of `seq`'s positions to compute (the rows whose logits are wanted), and drops
    /// the rest; returns how many positions it kept, where `seq`'s remainder goes. A sequence
    /// that repeats the last one's start (another candidate of the same prompt, the next turn
    /// of a chat) skips that part of its pass. The logits are the same bits either way: the
    /// engine computes a pass split in two as it computes it whole.
    pub fn reuse_prefix(&mut self, seq: &[u32], rows: usize) -> usize {
        let shared = self
            .cache
            .tokens
            .iter()
            .zip(seq)
            .take_while(|(a, b)| a == b)
            .count();
        let kept = shared.min(seq.len().saturating_sub(rows));
        self.cache.truncate(kept, self.weights.shape.kv_dim());
        kept
    }

    /// The tokens whose keys and values the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cache.tokens
    }

    /// How many positions the KV cache holds.
    pub fn cached(&self) -> usize {
        self.cache.len
    }

    /// The logits of the last position of `tokens`, placed at `index_pos` after the cached
    /// positions.
    ///
    /// # Errors
    /// A position that does not follow the cache, or a sequence past [`MAX_SEQ_LEN`].
    pub fn forward(&mut self, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        Ok(self.forward_last(tokens, index_pos, 1)?.remove(0))
    }

    /// The logits of the last `n` positions of `tokens` (one row each), placed at `index_pos`
    /// after the cached positions: what a teacher-forced pass scores a candidate with. Only
    /// those rows go through the output layer, the largest product, and through the last
    /// layer past its keys and values (the other rows' outputs there reach nothing).
    ///
    /// # Errors
    /// As [`Llama::forward`]; `n` of zero or past the tokens; an id past the vocabulary.
    pub fn forward_last(
        &mut self,
        tokens: &[u32],
        index_pos: usize,
        n: usize,
    ) -> Result<Vec<Vec<f32>>> {
        if index_pos != self.cache.len {
            candle_core::bail!("position {index_pos} after {} cached", self.cache.len);
        }
        if n == 0 || n > tokens.len() {
            candle_core::bail!("{n} rows of {} tokens", tokens.len());
        }
        if index_pos + tokens.len() > MAX_SEQ_LEN {
            candle_core::bail!("{} positions past {MAX_SEQ_LEN}", index_pos + tokens.len());
        }
        let vocab = self.vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("token {bad} past the vocabulary of {vocab}");
        }
        let Llama {
            weights,
            cache,
            kernel,
            threads,
        } = self;
        let kernel = *kernel;
        let logits = threads.install(|| weights.forward(cache, tokens, n, kernel, threads));
        cache.tokens.extend_from_slice(tokens);
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

impl Weights {
    /// Runs `tokens` after the cache, extending it; the logits of the last `n` rows.
    fn forward(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        n: usize,
        kernel: Kernel,
        threads: &Threads,
    ) -> Vec<f32> {
        let s = self.shape;
        let l = tokens.len();
        let pos = cache.len;
        let embedding = self.embedding.as_ref().unwrap_or(&self.output);
        let mut h: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| embedding.row(t as usize))
            .collect();
        let mut xq = Q8Rows::default();
        // Every layer's rows of one shape go through the same buffer: allocated and zeroed
        // once a pass, not once a layer.
        let Rows {
            normed,
            qkv,
            q,
            att,
            added,
            gate_up,
            act,
        } = &mut Rows::default();
        let (q_dim, kv_dim) = (s.dim, s.kv_dim());
        let last = self.layers.len().saturating_sub(1);
        for (index, (layer, (kc, vc))) in self
            .layers
            .iter()
            .zip(cache.k.iter_mut().zip(cache.v.iter_mut()))
            .enumerate()
        {
            rms_norm(&h, &layer.attention_norm, s.eps, kernel, threads, normed);
            xq.quantize_on(normed, s.dim, kernel, threads);
            layer.qkv.matmul(&xq, kernel, threads, qkv);
            let width = q_dim + 2 * kv_dim;
            if let Some(bias) = &layer.qkv_bias {
                for row in qkv.chunks_exact_mut(width) {
                    add_in_place(row, bias);
                }
            }
            q.clear();
            reserve(kc, (pos + l) * kv_dim);
            reserve(vc, (pos + l) * kv_dim);
            for (i, row) in qkv.chunks_exact(width).enumerate() {
                let p = pos + i;
                let at = q.len();
                q.extend_from_slice(&row[..q_dim]);
                self.rope(&mut q[at..], p);
                let at = kc.len();
                kc.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
                self.rope(&mut kc[at..], p);
                vc.extend_from_slice(&row[q_dim + kv_dim..]);
            }
            // The last layer's keys and values are every row's, but past them only the `n`
            // rows whose logits are asked for go on: the others' outputs reach nothing.
            let dropped = if index == last { l - n } else { 0 };
            if dropped > 0 {
                h.drain(..dropped * s.dim);
                q.drain(..dropped * q_dim);
            }
            attention(s, q, (kc, vc, pos + dropped), kernel, threads, att);
            xq.quantize_on(att, s.dim, kernel, threads);
            layer.wo.matmul(&xq, kernel, threads, added);
            add_in_place(&mut h, added);

            rms_norm(&h, &layer.ffn_norm, s.eps, kernel, threads, normed);
            xq.quantize_on(normed, s.dim, kernel, threads);
            layer.gate_up.matmul(&xq, kernel, threads, gate_up);
            gate(gate_up, s.hidden, kernel, threads, act);
            xq.quantize_on(act, s.hidden, kernel, threads);
            layer.down.matmul(&xq, kernel, threads, added);
            add_in_place(&mut h, added);
        }
        cache.len = pos + l;
        rms_norm(
            &h[h.len() - n * s.dim..],
            &self.norm,
            s.eps,
            kernel,
            threads,
            normed,
        );
        xq.quantize_on(normed, s.dim, kernel, threads);
        let mut logits = Vec::new();
        self.output.matmul(&xq, kernel, threads, &mut logits);
        logits
    }

    /// The rotary embedding of every head in `x` at position `p`: over interleaved pairs
    /// `2i, 2i + 1` (llama), or over `i, i + head_dim / 2` (qwen2, llama.cpp's NEOX style).
    fn rope(&self, x: &mut [f32], p: usize) {
        let half = self.shape.head_dim / 2;
        let (cos, sin) = (
            &self.cos[p * half..(p + 1) * half],
            &self.sin[p * half..(p + 1) * half],
        );
        let turn =
            |x0: f32, x1: f32, i: usize| (x0 * cos[i] - x1 * sin[i], x0 * sin[i] + x1 * cos[i]);
        for head in x.chunks_exact_mut(self.shape.head_dim) {
            match self.arch {
                Arch::Llama => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        (pair[0], pair[1]) = turn(pair[0], pair[1], i);
                    }
                }
                Arch::Qwen2 => {
                    let (a, b) = head.split_at_mut(half);
                    for (i, (x0, x1)) in a.iter_mut().zip(b).enumerate() {
                        (*x0, *x1) = turn(*x0, *x1, i);
                    }
                }
            }
        }
    }
}

/// The rows a forward pass computes in each layer, one buffer per shape, reused by every layer.
#[derive(Default)]
struct Rows {
    /// A norm's output (attention's, then the feed-forward's).
    normed: Vec<f32>,
    qkv: Vec<f32>,
    /// The queries after RoPE.
    q: Vec<f32>,
    att: Vec<f32>,
    /// What a product adds to the residual (attention's output product, then the down one).
    added: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

/// Grows `v`'s capacity to hold `len` values, doubling: the cache is never copied per step.
fn reserve(v: &mut Vec<f32>, len: usize) {
    if v.capacity() < len {
        let want = len.max(2 * v.capacity());
        v.reserve_exact(want - v.len());
    }
}

/// `a += b`, element by element.
fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

/// `x * sigmoid(x)`, with `libm`'s `expf` (its vectorizable form).
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + expf(-x))
}

/// The sum of `a[i] * b[i]` in eight partial sums (lane `i % 8`), added in a fixed tree.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    tree(acc)
}

/// [`dot`]'s eight partial sums added in its fixed tree (the scores scored sixteen keys at a
/// time add each lane's the same way).
#[inline(always)]
fn tree(a: [f32; 8]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// RMS norm of each row of `x` (rows of `w.len()`): `x / sqrt(mean(x^2) + eps) * w`.
struct Norm<'a> {
    x: &'a [f32],
    w: &'a [f32],
    eps: f32,
    out: &'a mut [f32],
}

impl Autovectorized for Norm<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let dim = self.w.len();
        for (row, out) in self.x.chunks_exact(dim).zip(self.out.chunks_exact_mut(dim)) {
            let m = (dot(row, row) / dim as f32 + self.eps).sqrt();
            for ((o, &v), &w) in out.iter_mut().zip(row).zip(self.w) {
                *o = v / m * w;
            }
        }
    }
}

/// RMS norm of each row of `x` (rows of `w.len()`) into `out`, the rows split over the threads.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, kernel: Kernel, threads: &Threads, out: &mut Vec<f32>) {
    let dim = w.len();
    resize(out, x.len());
    threads.split(out, dim, x.len() / dim, |first, part| {
        kernel.run(Norm {
            x: &x[first * dim..first * dim + part.len()],
            w,
            eps,
            out: part,
        })
    });
}

/// `silu(gate) * up` of each row of the fused gate/up product.
struct Gate<'a> {
    gate_up: &'a [f32],
    hidden: usize,
    out: &'a mut [f32],
}

impl Autovectorized for Gate<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for (row, out) in self
            .gate_up
            .chunks_exact(2 * self.hidden)
            .zip(self.out.chunks_exact_mut(self.hidden))
        {
            let (gate, up) = row.split_at(self.hidden);
            for ((a, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *a = silu(g) * u;
            }
        }
    }
}

/// [`Gate`] over every row into `out`, the rows split over the threads.
fn gate(gate_up: &[f32], hidden: usize, kernel: Kernel, threads: &Threads, out: &mut Vec<f32>) {
    resize(out, gate_up.len() / 2);
    threads.split(out, hidden, gate_up.len() / (2 * hidden), |first, part| {
        kernel.run(Gate {
            gate_up: &gate_up[2 * first * hidden..2 * first * hidden + 2 * part.len()],
            hidden,
            out: part,
        })
    });
}

/// Causal grouped-query attention of the `q` rows (positions `pos..`) over the cache, which
/// already holds their own keys and values, into `out` (a row per query): per query and head,
/// scores in position order, softmax with `libm`'s `expf` summed in position order, values
/// weighted and added in position order. The queries are split over the threads in ranges of
/// about equal work (query `i` attends to `pos + i + 1` keys).
fn attention(
    s: Shape,
    q: &[f32],
    (k, v, pos): (&[f32], &[f32], usize),
    kernel: Kernel,
    threads: &Threads,
    out: &mut Vec<f32>,
) {
    let l = q.len() / s.dim;
    resize(out, q.len());
    let work = |first: usize, part: &mut [f32]| {
        kernel.run(Attend {
            s,
            q,
            k,
            v,
            pos,
            first,
            out: part,
        })
    };
    if l < 4 || threads.count() == 1 {
        work(0, out);
    } else {
        threads.split_at(out, s.dim, &even_work(l, pos, threads.count()), work);
    }
}

/// Where `parts` ranges of `l` queries after `pos` cached positions end so that each attends to
/// about as many keys (query `i` to `pos + i + 1`); no range is empty.
fn even_work(l: usize, pos: usize, parts: usize) -> Vec<usize> {
    let parts = parts.min(l).max(1);
    let total: usize = (0..l).map(|i| pos + i + 1).sum();
    let mut ends = Vec::with_capacity(parts);
    let mut done = 0;
    for i in 0..l {
        done += pos + i + 1;
        let left = parts - ends.len();
        // Cut once this range has its share, or when only a query a range is left, leaving a
        // query for every range still to come.
        let after = l - (i + 1);
        let share = done * parts >= total * (ends.len() + 1);
        if left > 1 && after >= left - 1 && (share || after == left - 1) {
            ends.push(i + 1);
        }
    }
    ends.push(l);
    ends
}

/// Queries `first..` of [`attention`] (`out`'s rows), every head.
struct Attend<'a> {
    s: Shape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    pos: usize,
    first: usize,
    out: &'a mut [f32],
}

impl Autovectorized for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Attend {
            s,
            q,
            k,
            v,
            pos,
            first,
            out,
        } = self;
        let (hd, kv_dim) = (s.head_dim, s.kv_dim());
        let group = s.n_head / s.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        let queries = first..first + out.len() / s.dim;
        if queries.len() >= TRANSPOSE_FROM {
            // Many queries (a prompt, a teacher-forced pass): each kv head's keys transposed
            // once, the query heads that share it scored and weighed together.
            let mut t = Transposed::new(hd, k.len() / kv_dim);
            for kv in 0..s.n_kv_head {
                t.fill(k, kv_dim, kv * hd);
                for h0 in (kv * group..(kv + 1) * group).step_by(SHARED_HEADS) {
                    let shared = Shared {
                        s,
                        q,
                        v,
                        pos,
                        head: h0,
                        keys: &t,
                    };
                    let rows = (queries.clone(), &mut *out);
                    match ((kv + 1) * group - h0).min(SHARED_HEADS) {
                        1 => shared.run::<1>(rows),
                        2 => shared.run::<2>(rows),
                        3 => shared.run::<3>(rows),
                        n => unreachable!("{n} heads share a pass, at most {SHARED_HEADS}"),
                    }
                }
            }
            return;
        }
        // One query (decode) or a few: key by key.
        let mut scores = Vec::with_capacity(pos + queries.end);
        for h in 0..s.n_head {
            let at = (h / group) * hd;
            for (i, row) in queries.clone().zip(out.chunks_exact_mut(s.dim)) {
                let qh = &q[i * s.dim + h * hd..][..hd];
                let oh = &mut row[h * hd..][..hd];
                let seen = pos + i + 1;
                // Plain loops: closures in iterator adapters may stay out of line, outside
                // the path's feature context.
                scores.clear();
                for j in 0..seen {
                    scores.push(dot(qh, &k[j * kv_dim + at..][..hd]) * scale);
                }
                softmax(&mut scores);
                match <&mut [f32; 64]>::try_from(&mut *oh) {
                    Ok(oh) => [*oh] = weigh_values(&[&scores], v, kv_dim, at),
                    Err(_) => weigh_values_any(oh, &scores, v, kv_dim, at),
                }
            }
        }
    }
}

/// Query heads that share one kv head (at most this many together: their scores' partial sums
/// stay in registers).
const SHARED_HEADS: usize = 3;

/// Query heads `head..` sharing one kv head, over a pass of many queries: for each query, every
/// head's scores against the transposed keys at once (each key row read once for all of them),
/// each head's softmax, and every head's weighted values at once (each value row read once).
/// Every number is the one the one-head form computes.
struct Shared<'a> {
    s: Shape,
    q: &'a [f32],
    v: &'a [f32],
    pos: usize,
    head: usize,
    keys: &'a Transposed,
}

impl Shared<'_> {
    /// `H` heads `head..` for `queries`, into `out` (a row per query, every head's columns).
    #[inline(always)]
    fn run<const H: usize>(&self, (queries, out): (Range<usize>, &mut [f32])) {
        let Shared {
            s,
            q,
            v,
            pos,
            head,
            keys,
        } = *self;
        let (hd, kv_dim) = (s.head_dim, s.kv_dim());
        let at = (head / (s.n_head / s.n_kv_head)) * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores: [Vec<f32>; H] = [const { Vec::new() }; H];
        for (i, row) in queries.zip(out.chunks_exact_mut(s.dim)) {
            let seen = pos + i + 1;
            let heads = &mut row[head * hd..][..H * hd];
            let mut qs: [&[f32]; H] = [&[]; H];
            for (x, qh) in qs.iter_mut().enumerate() {
                *qh = &q[i * s.dim + (head + x) * hd..][..hd];
            }
            keys_by_sixteen(&qs, keys, seen, scale, &mut scores);
            softmax_each(scores.each_mut().map(Vec::as_mut_slice));
            if hd == 64 {
                let mut ps: [&[f32]; H] = [&[]; H];
                for (p, sc) in ps.iter_mut().zip(&scores) {
                    *p = sc;
                }
                let acc: [[f32; 64]; H] = weigh_values(&ps, v, kv_dim, at);
                for (oh, acc) in heads.chunks_exact_mut(hd).zip(&acc) {
                    oh.copy_from_slice(acc);
                }
            } else {
                for (oh, p) in heads.chunks_exact_mut(hd).zip(&scores) {
                    weigh_values_any(oh, p, v, kv_dim, at);
                }
            }
        }
    }
}

/// Scores to softmax weights, in place: `exp(x - max)` with `libm`'s `expf`, summed in position
/// order, each divided by the sum.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    softmax_each([scores]);
}

/// [`softmax`] of each of `H` score rows of one length, with their bits: the rows' sums are
/// independent chains of additions, taken a position at a time for all rows (one row's sum
/// waits on each addition before the next; `H` rows keep `H` in flight).
#[inline(always)]
fn softmax_each<const H: usize>(mut rows: [&mut [f32]; H]) {
    let n = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == n), "rows of one length");
    for row in rows.iter_mut() {
        let max = max_of(row);
        for sc in row.iter_mut() {
            *sc = expf(*sc - max);
        }
    }
    let mut sums = [0f32; H];
    for j in 0..n {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            *sum += row[j];
        }
    }
    // The weights `e / sum`, each division rounded on its own (a vector divides sixteen at
    // once, each lane exactly as the scalar division).
    for (row, sum) in rows.iter_mut().zip(sums) {
        for e in row.iter_mut() {
            *e /= sum;
        }
    }
}

/// The largest of `x` (`f32::max`: NaNs ignored), sixteen lanes at a time. The maximum of
/// a set is the same whatever the order it is taken in (its only ambiguity, `-0` against `+0`,
/// changes no `x - max` that follows).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let (whole, rest) = x.split_at(x.len() / 16 * 16);
    for chunk in whole.chunks_exact(16) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    for (m, &v) in lanes.iter_mut().zip(rest) {
        *m = m.max(v);
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `sum_j p[x][j] * v_j` for each of `H` heads of 64 that share the values (`p[x]` head `x`'s
/// softmax weights, all of one length), in position order, each product unfused: the heads'
/// sums kept in registers, each value row read once for all of them.
#[inline(always)]
fn weigh_values<const H: usize>(
    p: &[&[f32]; H],
    v: &[f32],
    kv_dim: usize,
    at: usize,
) -> [[f32; 64]; H] {
    let mut acc = [[0f32; 64]; H];
    for j in 0..p[0].len() {
        let vj: [f32; 64] = v[j * kv_dim + at..][..64].try_into().expect("a head");
        for (acc, p) in acc.iter_mut().zip(p) {
            let pj = p[j];
            for d in 0..64 {
                acc[d] += pj * vj[d];
            }
        }
    }
    acc
}

/// [`weigh_values`] for a head of any size.
#[inline(always)]
fn weigh_values_any(oh: &mut [f32], p: &[f32], v: &[f32], kv_dim: usize, at: usize) {
    oh.fill(0.0);
    for (j, &p) in p.iter().enumerate() {
        let vj = &v[j * kv_dim + at..][..oh.len()];
        for (o, &x) in oh.iter_mut().zip(vj) {
            *o += p * x;
        }
    }
}

/// Queries from which a pass transposes each kv head's keys for its scores.
const TRANSPOSE_FROM: usize = 8;

/// One kv head's keys transposed: `dim` rows of `width` positions (a multiple of sixteen, the
/// positions past the cache zero).
struct Transposed {
    dim: usize,
    width: usize,
    at: Option<usize>,
    values: Vec<f32>,
}

impl Transposed {
    fn new(dim: usize, positions: usize) -> Self {
        let width = positions.next_multiple_of(16);
        Self {
            dim,
            width,
            at: None,
            values: vec![0.0; dim * width],
        }
    }

    /// Sixteen positions from `j0` of dimension `d`.
    #[inline(always)]
    fn row(&self, d: usize, j0: usize) -> &[f32; 16] {
        self.values[d * self.width + j0..][..16]
            .try_into()
            .expect("sixteen")
    }

    /// Holds the keys at offset `at` of each cache row (`k`, rows of `kv_dim`).
    #[inline(always)]
    fn fill(&mut self, k: &[f32], kv_dim: usize, at: usize) {
        if self.at == Some(at) {
            return;
        }
        self.at = Some(at);
        for (j, row) in k.chunks_exact(kv_dim).enumerate() {
            for (d, &x) in row[at..at + self.dim].iter().enumerate() {
                self.values[d * self.width + j] = x;
            }
        }
    }
}

/// The scores of the `H` queries `qs` (query heads that share the keys) against the first
/// `seen` keys of `t`, each [`dot`]`(qh, key) * scale` bit for bit, into `scores[x]` (resized
/// to `seen`): sixteen keys a vector, one lane each, every lane the same eight partial sums
/// over the same dimensions in the same order and the same tree, so no horizontal sum. Each
/// row of keys is read once for all `H` queries.
#[inline(always)]
fn keys_by_sixteen<const H: usize>(
    qs: &[&[f32]; H],
    t: &Transposed,
    seen: usize,
    scale: f32,
    scores: &mut [Vec<f32>; H],
) {
    // Every score is written below: a row keeps what it held (the previous query's, one
    // shorter) and only its new position is zeroed first.
    for sc in scores.iter_mut() {
        resize(sc, seen);
    }
    // `t.width` is `seen` or more rounded up to sixteen: the last vector's positions past
    // `seen` are zero and not written out.
    for j0 in (0..seen).step_by(16) {
        let sums: [[f32; 16]; H] = score_vectors(qs, t, j0, scale);
        let n = (seen - j0).min(16);
        for (sc, sums) in scores.iter_mut().zip(&sums) {
            sc[j0..j0 + n].copy_from_slice(&sums[..n]);
        }
    }
}

/// The scores of keys `j0..j0 + 16` of `t` for each of the queries `qs` (see
/// [`keys_by_sixteen`]).
#[inline(always)]
fn score_vectors<const H: usize>(
    qs: &[&[f32]; H],
    t: &Transposed,
    j0: usize,
    scale: f32,
) -> [[f32; 16]; H] {
    let (dim, chunks) = (t.dim, t.dim / 8 * 8);
    let mut acc = [[[0f32; 16]; 8]; H];
    for c in (0..chunks).step_by(8) {
        for l in 0..8 {
            let row = t.row(c + l, j0);
            for (acc, qh) in acc.iter_mut().zip(qs) {
                add_scaled(&mut acc[l], qh[c + l], row);
            }
        }
    }
    for l in 0..dim - chunks {
        let row = t.row(chunks + l, j0);
        for (acc, qh) in acc.iter_mut().zip(qs) {
            add_scaled(&mut acc[l], qh[chunks + l], row);
        }
    }
    let mut sums = [[0f32; 16]; H];
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
            *sum = tree([
                a0[lane], a1[lane], a2[lane], a3[lane], a4[lane], a5[lane], a6[lane], a7[lane],
            ]) * scale;
        }
    }
    sums
}

/// `acc[lane] += q * x[lane]`, unfused.
#[inline(always)]
fn add_scaled(acc: &mut [f32; 16], q: f32, x: &[f32; 16]) {
    let x = *x;
    let mut a = *acc;
    for lane in 0..16 {
        a[lane] += q * x[lane];
    }
    *acc = a;
}

/// cos and sin of every position up to [`MAX_SEQ_LEN`] and every frequency
/// `1 / base^(2i / head_dim)`, with `libm`.
fn rope_tables(head_dim: usize, freq_base: f32) -> (Vec<f32>, Vec<f32>) {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / libm::powf(freq_base, i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(MAX_SEQ_LEN * theta.len());
    let mut sin = Vec::with_capacity(MAX_SEQ_LEN * theta.len());
    for p in 0..MAX_SEQ_LEN {
        for &t in &theta {
            let angle = p as f32 * t;
            cos.push(libm::cosf(angle));
            sin.push(libm::sinf(angle));
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_is_the_fixed_tree_of_eight_lanes() {
        let a: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..19).map(|i| 3.0 - i as f32 * 0.37).collect();
        let mut lanes = [0f32; 8];
        for i in 0..19 {
            lanes[i % 8] += a[i] * b[i];
        }
        let want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        assert_eq!(dot(&a, &b).to_bits(), want.to_bits());
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| (rng.f32() - 0.5) * 7.0).collect()
    }

    /// Attention's query ranges cover every query once, in order, none empty, at most one per
    /// thread, each with about its share of the keys attended to.
    #[test]
    fn query_ranges_split_the_work_evenly() {
        for (l, pos, parts) in [
            (163, 0, 2),
            (163, 0, 3),
            (5, 0, 3),
            (4, 1000, 2),
            (300, 40, 2),
        ] {
            let ends = even_work(l, pos, parts);
            assert_eq!(ends.last(), Some(&l));
            assert!(ends.len() <= parts && !ends.is_empty());
            assert!(
                ends.windows(2).all(|w| w[0] < w[1]) && ends[0] > 0,
                "{ends:?}"
            );
            let work = |a: usize, b: usize| (a..b).map(|i| pos + i + 1).sum::<usize>();
            let total = work(0, l);
            let mut first = 0;
            for &end in &ends {
                // Within one query's work of an even share.
                let share = total / ends.len();
                assert!(
                    work(first, end).abs_diff(share) <= pos + l,
                    "{l} {pos}: {ends:?}"
                );
                first = end;
            }
        }
        assert_eq!(even_work(3, 0, 4), vec![1, 2, 3]);
    }

    /// The many-query forms of attention (keys scored sixteen at a time from their transpose,
    /// one, two or three query heads at once; softmax of two or three heads at once; values
    /// weighed in registers, three heads at once) give the one-query forms' bits, for heads whose size is and is not a multiple of eight
    /// and key counts that are not a multiple of sixteen.
    #[test]
    fn the_many_query_attention_forms_keep_the_one_query_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (hd, positions) in [(64, 37), (12, 16), (5, 3), (64, 1), (24, 50)] {
            let kv_dim = 3 * hd;
            let (k, v) = (random(positions * kv_dim, 1), random(positions * kv_dim, 2));
            let heads = [random(hd, 3), random(hd, 4), random(hd, 5)];
            let scale = 1.0 / (hd as f32).sqrt();
            for at in [0, hd, 2 * hd] {
                let mut t = Transposed::new(hd, positions);
                t.fill(&k, kv_dim, at);
                for seen in [1, positions / 2 + 1, positions] {
                    let slow: Vec<Vec<f32>> = heads
                        .iter()
                        .map(|qh| {
                            (0..seen)
                                .map(|j| dot(qh, &k[j * kv_dim + at..][..hd]) * scale)
                                .collect()
                        })
                        .collect();
                    let mut three: [Vec<f32>; 3] = Default::default();
                    keys_by_sixteen(
                        &[&heads[0], &heads[1], &heads[2]],
                        &t,
                        seen,
                        scale,
                        &mut three,
                    );
                    let mut two: [Vec<f32>; 2] = Default::default();
                    keys_by_sixteen(&[&heads[1], &heads[2]], &t, seen, scale, &mut two);
                    let mut one: [Vec<f32>; 1] = Default::default();
                    keys_by_sixteen(&[&heads[0]], &t, seen, scale, &mut one);
                    for x in 0..3 {
                        assert_eq!(
                            bits(&three[x]),
                            bits(&slow[x]),
                            "hd {hd}, seen {seen}, at {at}"
                        );
                    }
                    assert_eq!(bits(&two[0]), bits(&slow[1]));
                    assert_eq!(bits(&two[1]), bits(&slow[2]));
                    assert_eq!(bits(&one[0]), bits(&slow[0]));
                    let mut p = slow.clone();
                    for p in &mut p {
                        softmax(p);
                    }
                    let (mut each, mut pair) = (slow.clone(), slow[1..].to_vec());
                    if let ([a, b, c], [d, e]) = (&mut each[..], &mut pair[..]) {
                        softmax_each([&mut a[..], &mut b[..], &mut c[..]]);
                        softmax_each([&mut d[..], &mut e[..]]);
                    }
                    for x in 0..3 {
                        assert_eq!(bits(&each[x]), bits(&p[x]), "softmax {x}, seen {seen}");
                    }
                    assert_eq!(bits(&pair[0]), bits(&p[1]));
                    assert_eq!(bits(&pair[1]), bits(&p[2]));
                    let any: Vec<Vec<f32>> = p
                        .iter()
                        .map(|p| {
                            let mut o = vec![1.0; hd];
                            weigh_values_any(&mut o, p, &v, kv_dim, at);
                            o
                        })
                        .collect();
                    if hd == 64 {
                        let [one] = weigh_values(&[&p[0]], &v, kv_dim, at);
                        assert_eq!(bits(&one), bits(&any[0]), "seen {seen}, at {at}");
                        let shared = weigh_values(&[&p[0], &p[1], &p[2]], &v, kv_dim, at);
                        for x in 0..3 {
                            assert_eq!(bits(&shared[x]), bits(&any[x]), "head {x}, seen {seen}");
                        }
                    }
                }
            }
        }
    }
}
