//! `distilbert-sst2`: a DistilBERT sequence classifier (the original system's
//! `distilbert-base-uncased-finetuned-sst-2-english`) run with candle, batched with padding.
//!
//! The forward pass is written here from candle-nn layers rather than taken from
//! candle-transformers' `distilbert` module, whose feed-forward uses the tanh approximation of
//! GELU (`Tensor::gelu`) where Hugging Face uses the exact erf form, shifting logits by 1e-4 to
//! 1e-3. Here: exact GELU (`gelu_erf`), bidirectional attention with padded positions masked out
//! (`attention_mask` 1 = a real token, as in Hugging Face), and the classification head
//! `pre_classifier -> ReLU -> classifier` on the first token. Tensor names are Hugging Face's.

use super::{Input, Model, ModelError, Prediction};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use protocol::TaskType;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Tokens per text; longer texts are truncated (the original truncated at 256).
pub const MAX_TOKENS: usize = 256;
const EPS: f64 = 1e-12;

/// `config.json` of a Hugging Face DistilBERT classifier (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub dim: usize,
    /// Transformer layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Feed-forward size.
    pub hidden_dim: usize,
    /// Positions the model knows.
    pub max_position_embeddings: usize,
    /// `gelu` (the only one DistilBERT checkpoints use).
    #[serde(default = "gelu")]
    pub activation: String,
    /// Class index -> label name.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
}

fn gelu() -> String {
    "gelu".into()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    sa_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    out_norm: LayerNorm,
}

/// The network: embeddings, transformer layers, classification head.
pub struct DistilBert {
    words: Embedding,
    positions: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pre_classifier: Linear,
    classifier: Linear,
    heads: usize,
    dim: usize,
}

impl DistilBert {
    /// Builds the network from weights named as in Hugging Face checkpoints.
    ///
    /// # Errors
    /// A missing or misshapen tensor.
    pub fn load(vb: &VarBuilder, cfg: &Config, labels: usize) -> candle_core::Result<Self> {
        let e = vb.pp("distilbert.embeddings");
        let t = vb.pp("distilbert.transformer.layer");
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let l = t.pp(i);
                let a = l.pp("attention");
                Ok(Layer {
                    q: linear(cfg.dim, cfg.dim, a.pp("q_lin"))?,
                    k: linear(cfg.dim, cfg.dim, a.pp("k_lin"))?,
                    v: linear(cfg.dim, cfg.dim, a.pp("v_lin"))?,
                    out: linear(cfg.dim, cfg.dim, a.pp("out_lin"))?,
                    sa_norm: layer_norm(cfg.dim, EPS, l.pp("sa_layer_norm"))?,
                    lin1: linear(cfg.dim, cfg.hidden_dim, l.pp("ffn.lin1"))?,
                    lin2: linear(cfg.hidden_dim, cfg.dim, l.pp("ffn.lin2"))?,
                    out_norm: layer_norm(cfg.dim, EPS, l.pp("output_layer_norm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            words: embedding(cfg.vocab_size, cfg.dim, e.pp("word_embeddings"))?,
            positions: embedding(
                cfg.max_position_embeddings,
                cfg.dim,
                e.pp("position_embeddings"),
            )?,
            emb_norm: layer_norm(cfg.dim, EPS, e.pp("LayerNorm"))?,
            layers,
            pre_classifier: linear(cfg.dim, cfg.dim, vb.pp("pre_classifier"))?,
            classifier: linear(cfg.dim, labels, vb.pp("classifier"))?,
            heads: cfg.n_heads,
            dim: cfg.dim,
        })
    }

    /// Logits `[batch, labels]` for token ids `[batch, seq]` and an attention mask `[batch, seq]`
    /// (1 for real tokens, 0 for padding).
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self.emb_norm.forward(
            &self
                .words
                .forward(ids)?
                .broadcast_add(&self.positions.forward(&pos)?)?,
        )?;
        let head_dim = self.dim / self.heads;
        // Padded keys get the lowest score, as Hugging Face's masked_fill(finfo.min) does.
        let hidden = mask
            .eq(0u32)?
            .reshape((b, 1, 1, t))?
            .broadcast_as((b, self.heads, t, t))?;
        let floor = Tensor::new(f32::MIN, ids.device())?.broadcast_as((b, self.heads, t, t))?;
        for l in &self.layers {
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                y.reshape((b, t, self.heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = (split(l.q.forward(&x)?)? / (head_dim as f64).sqrt())?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let scores = q.matmul(&k.t()?)?;
            let scores = hidden.where_cond(&floor, &scores)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.dim))?;
            x = l.sa_norm.forward(&(l.out.forward(&ctx)? + &x)?)?;
            let ff = l.lin2.forward(&l.lin1.forward(&x)?.gelu_erf()?)?;
            x = l.out_norm.forward(&(ff + &x)?)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        let h = self.pre_classifier.forward(&first)?.relu()?;
        self.classifier.forward(&h)
    }
}

/// Why a model folder could not be loaded; names the way out.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file of the Hugging Face layout is missing.
    #[error("{dir} has no {file} (a model folder needs config.json, model.safetensors and tokenizer.json)")]
    Missing {
        /// The folder.
        dir: String,
        /// The missing file.
        file: &'static str,
    },
    /// A file is unreadable or not what it should be.
    #[error("{file}: {reason}")]
    Bad {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

/// DistilBERT sentiment as a worker [`Model`].
pub struct Sst2 {
    net: DistilBert,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    device: Device,
}

impl Sst2 {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let file = |name: &'static str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LoadError::Missing {
                    dir: dir.display().to_string(),
                    file: name,
                })
            }
        };
        let bad = |file: &Path, reason: String| LoadError::Bad {
            file: file.to_owned(),
            reason,
        };
        let (cfg_path, weights, tok_path) = (
            file("config.json")?,
            file("model.safetensors")?,
            file("tokenizer.json")?,
        );
        let cfg: Config = std::fs::read(&cfg_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| bad(&cfg_path, e))?;
        if cfg.activation != "gelu" {
            return Err(bad(
                &cfg_path,
                format!("activation {:?} is not gelu", cfg.activation),
            ));
        }
        let labels = labels(&cfg);
        let device = Device::Cpu;
        let bytes = std::fs::read(&weights).map_err(|e| bad(&weights, e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .map_err(|e| bad(&weights, e.to_string()))?;
        let net =
            DistilBert::load(&vb, &cfg, labels.len()).map_err(|e| bad(&weights, e.to_string()))?;
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| bad(&tok_path, e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS.min(cfg.max_position_embeddings),
                ..TruncationParams::default()
            }))
            .map_err(|e| bad(&tok_path, e.to_string()))?;
        Ok(Self {
            net,
            tokenizer,
            labels,
            device,
        })
    }

    /// Logits for a batch of texts, one row per text.
    ///
    /// # Errors
    /// Tokenizer or tensor errors.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let fail = |e: String| ModelError::Inference(e.into());
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| fail(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> Result<Tensor, ModelError> {
            let data: Vec<Vec<u32>> = enc.iter().map(f).collect();
            Tensor::new(data, &self.device).map_err(|e| fail(e.to_string()))
        };
        let ids = rows(&|e| e.get_ids().to_vec())?;
        let mask = rows(&|e| e.get_attention_mask().to_vec())?;
        self.net
            .forward(&ids, &mask)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(|e| fail(e.to_string()))
    }
}

/// Label names in class order, normalised to lower case (`POSITIVE` -> `positive`).
fn labels(cfg: &Config) -> Vec<String> {
    let mut pairs: Vec<(usize, String)> = cfg
        .id2label
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.to_lowercase())))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        return vec!["negative".into(), "positive".into()];
    }
    pairs.into_iter().map(|(_, v)| v).collect()
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

impl Model for Sst2 {
    fn id(&self) -> &str {
        "distilbert-sst2"
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::sentiment()]
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        let batch = match self.logits(&texts) {
            Ok(b) => b,
            Err(e) => {
                let msg = e.to_string();
                return inputs
                    .iter()
                    .map(|_| Err(ModelError::Inference(msg.clone().into())))
                    .collect();
            }
        };
        inputs
            .iter()
            .zip(batch)
            .map(|(input, logits)| {
                if input.task_type != TaskType::sentiment() {
                    return Err(ModelError::Unsupported {
                        model: self.id().to_owned(),
                        task_type: input.task_type.clone(),
                    });
                }
                let probs = softmax(&logits);
                let (best, p) = probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::MIN),
                        |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                    );
                Ok(Prediction {
                    label: self
                        .labels
                        .get(best)
                        .cloned()
                        .unwrap_or_else(|| best.to_string()),
                    confidence: p,
                    scores: logits,
                })
            })
            .collect()
    }
}
