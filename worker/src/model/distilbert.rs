//! `distilbert-sst2`: a DistilBERT sequence classifier (the original system's
//! `distilbert-base-uncased-finetuned-sst-2-english`) run with candle, batched with padding.
//!
//! The forward pass is written here from candle-nn layers rather than taken from
//! candle-transformers' `distilbert` module, whose feed-forward uses the tanh approximation of
//! GELU (`Tensor::gelu`) where Hugging Face uses the exact erf form, shifting logits by 1e-4 to
//! 1e-3. Here: exact GELU (`gelu_erf`), bidirectional attention with padded positions masked out
//! (`attention_mask` 1 = a real token, as in Hugging Face), and the classification head
//! `pre_classifier -> ReLU -> classifier` on the first token. Tensor names are Hugging Face's.

use super::interface::{Input, Model, ModelError, Prediction};
use super::transformer::{
    argmax, attend, by_length, encode, predict_batch, softmax, Folder, LoadError, MAX_TOKENS,
};
use candle_core::{Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use protocol::TaskType;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::Tokenizer;

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
        })
    }

    /// Logits `[batch, labels]` for token ids `[batch, seq]` and an attention mask `[batch, seq]`
    /// (1 for real tokens, 0 for padding).
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self.emb_norm.forward(
            &self
                .words
                .forward(ids)?
                .broadcast_add(&self.positions.forward(&pos)?)?,
        )?;
        for l in &self.layers {
            let ctx = attend(
                &l.q.forward(&x)?,
                &l.k.forward(&x)?,
                &l.v.forward(&x)?,
                mask,
                self.heads,
            )?;
            x = l.sa_norm.forward(&(l.out.forward(&ctx)? + &x)?)?;
            let ff = l.lin2.forward(&l.lin1.forward(&x)?.gelu_erf()?)?;
            x = l.out_norm.forward(&(ff + &x)?)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        let h = self.pre_classifier.forward(&first)?.relu()?;
        self.classifier.forward(&h)
    }
}

/// DistilBERT sentiment as a worker [`Model`].
pub struct Sst2 {
    net: DistilBert,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    device: Device,
    hash: String,
}

impl Sst2 {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let folder = Folder::open(dir)?;
        let cfg: Config = folder.config()?;
        if cfg.activation != "gelu" {
            return Err(LoadError::bad(
                &folder.config,
                format!("activation {:?} is not gelu", cfg.activation),
            ));
        }
        let labels = labels(&cfg);
        let device = Device::Cpu;
        let vb = folder.weights(&device)?;
        let net = DistilBert::load(&vb, &cfg, labels.len())
            .map_err(|e| LoadError::bad(&folder.weights, e))?;
        let tokenizer = folder.tokenizer(MAX_TOKENS.min(cfg.max_position_embeddings))?;
        Ok(Self {
            net,
            tokenizer,
            labels,
            device,
            hash: folder.hash()?,
        })
    }

    /// Logits for a batch of texts, one row per text.
    ///
    /// # Errors
    /// Tokenizer or tensor errors.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        by_length(texts, |group| {
            let (ids, mask) = encode(&self.tokenizer, group, &self.device)?;
            self.net
                .forward(&ids, &mask)
                .and_then(|l| l.to_vec2::<f32>())
                .map_err(|e| ModelError::Inference(e.into()))
        })
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

impl Model for Sst2 {
    fn id(&self) -> &str {
        "distilbert-sst2"
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::sentiment()]
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        predict_batch(
            inputs,
            |texts| self.logits(texts),
            |input, logits| {
                if input.task_type != TaskType::sentiment() {
                    return Err(ModelError::Unsupported {
                        model: self.id().to_owned(),
                        task_type: input.task_type.clone(),
                    });
                }
                let (best, p) = argmax(&softmax(&logits));
                Ok(Prediction {
                    input_tokens: None,
                    label: self
                        .labels
                        .get(best)
                        .cloned()
                        .unwrap_or_else(|| best.to_string()),
                    embedding: None,
                    confidence: p,
                    scores: logits,
                    generation: None,
                })
            },
        )
    }
}
