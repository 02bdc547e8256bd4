//! `minilm`: sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT encoder with mean pooling and
//! L2 normalisation, run with candle. It embeds texts (`embedding` in `aimarket infer`) and does
//! zero-shot classification: the label whose embedding is nearest the text's wins, with a
//! softmax over the scaled cosine similarities as confidence. As a worker it answers `embedding`
//! tasks (the vector), `zero-shot` tasks (over the task's candidate labels, each embedded as it
//! is written and cached) and `sentiment` tasks (zero-shot over `positive` / `negative`).

use super::interface::{Input, Model, ModelError, Prediction};
use super::transformer::{
    argmax, attend, by_length, encode, predict_batch, softmax, Folder, LoadError, MAX_TOKENS,
};
use candle_core::{Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use protocol::TaskType;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use tokenizers::Tokenizer;

/// Scale of the cosine similarities before the softmax (a temperature of 0.05).
pub const SIMILARITY_SCALE: f64 = 20.0;

/// How each sentiment label is phrased when it is embedded.
pub const SENTIMENT_LABELS: [(&str, &str); 2] = [
    ("negative", "This is negative, bad, disappointing."),
    ("positive", "This is positive, good, enjoyable."),
];

/// `config.json` of a Hugging Face BERT (the fields used).
#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// The BERT encoder (Hugging Face names, no `bert.` prefix, as sentence-transformers saves it).
struct Bert {
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
}

impl Bert {
    fn load(vb: &VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layer").pp(i);
                let a = l.pp("attention");
                Ok(Layer {
                    q: linear(c.hidden_size, c.hidden_size, a.pp("self.query"))?,
                    k: linear(c.hidden_size, c.hidden_size, a.pp("self.key"))?,
                    v: linear(c.hidden_size, c.hidden_size, a.pp("self.value"))?,
                    attn_out: linear(c.hidden_size, c.hidden_size, a.pp("output.dense"))?,
                    attn_norm: layer_norm(
                        c.hidden_size,
                        c.layer_norm_eps,
                        a.pp("output.LayerNorm"),
                    )?,
                    inter: linear(
                        c.hidden_size,
                        c.intermediate_size,
                        l.pp("intermediate.dense"),
                    )?,
                    out: linear(c.intermediate_size, c.hidden_size, l.pp("output.dense"))?,
                    out_norm: layer_norm(
                        c.hidden_size,
                        c.layer_norm_eps,
                        l.pp("output.LayerNorm"),
                    )?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            words: embedding(c.vocab_size, c.hidden_size, e.pp("word_embeddings"))?,
            positions: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                e.pp("position_embeddings"),
            )?,
            types: embedding(
                c.type_vocab_size,
                c.hidden_size,
                e.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
        })
    }

    /// Hidden states `[batch, seq, hidden]`.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let types = ids.zeros_like()?;
        let emb = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&pos)?)?
            .add(&self.types.forward(&types)?)?;
        let mut x = self.norm.forward(&emb)?;
        for l in &self.layers {
            let ctx = attend(
                &l.q.forward(&x)?,
                &l.k.forward(&x)?,
                &l.v.forward(&x)?,
                mask,
                self.heads,
            )?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let ff = l.out.forward(&l.inter.forward(&x)?.gelu_erf()?)?;
            x = l.out_norm.forward(&(ff + &x)?)?;
        }
        Ok(x)
    }
}

/// MiniLM sentence embeddings and zero-shot classification.
pub struct MiniLm {
    bert: Bert,
    tokenizer: Tokenizer,
    device: Device,
    hash: String,
    sentiment: Vec<Vec<f32>>,
    /// Embeddings of the zero-shot candidate labels seen so far.
    labels: Mutex<HashMap<String, Vec<f32>>>,
}

/// Most candidate-label embeddings kept; the cache starts over when full.
const LABEL_CACHE: usize = 4096;

impl MiniLm {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or bad file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let folder = Folder::open(dir)?;
        let cfg: Config = folder.config()?;
        if cfg.hidden_act != "gelu" {
            return Err(LoadError::bad(
                &folder.config,
                format!("hidden_act {:?} is not gelu", cfg.hidden_act),
            ));
        }
        let device = Device::Cpu;
        let vb = folder.weights(&device)?;
        let bert = Bert::load(&vb, &cfg).map_err(|e| LoadError::bad(&folder.weights, e))?;
        let tokenizer = folder.tokenizer(MAX_TOKENS.min(cfg.max_position_embeddings))?;
        let mut m = Self {
            bert,
            tokenizer,
            device,
            hash: folder.hash()?,
            sentiment: Vec::new(),
            labels: Mutex::new(HashMap::new()),
        };
        let phrases: Vec<&str> = SENTIMENT_LABELS.iter().map(|(_, p)| *p).collect();
        m.sentiment = m
            .embed(&phrases)
            .map_err(|e| LoadError::bad(&folder.weights, e))?;
        Ok(m)
    }

    /// Unit-length embeddings, one per text: the mean of the token states over real tokens.
    ///
    /// # Errors
    /// Tokenizer or tensor errors.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self
            .embed_counted(texts)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// [`MiniLm::embed`], each embedding with how many tokens its text read (its real tokens,
    /// special ones included: what an embedding answer reports as its input).
    fn embed_counted(&self, texts: &[&str]) -> Result<Vec<(Vec<f32>, u32)>, ModelError> {
        by_length(texts, |group| self.embed_group(group))
    }

    fn embed_group(&self, texts: &[&str]) -> Result<Vec<(Vec<f32>, u32)>, ModelError> {
        let fail = |e: candle_core::Error| ModelError::Inference(e.into());
        let (ids, mask) = encode(&self.tokenizer, texts, &self.device)?;
        let run = || -> candle_core::Result<Vec<(Vec<f32>, u32)>> {
            let read = mask.sum(1)?.to_vec1::<u32>()?;
            let states = self.bert.forward(&ids, &mask)?;
            let m = mask.to_dtype(candle_core::DType::F32)?.unsqueeze(2)?;
            let summed = states.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            let embeddings = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
            Ok(embeddings.into_iter().zip(read).collect())
        };
        run().map_err(fail)
    }

    /// The embeddings of `labels`, from the cache or computed in one batch.
    fn label_embeddings(&self, labels: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut cache = self.labels.lock().expect("label cache lock");
        let mut missing: Vec<&str> = labels
            .iter()
            .copied()
            .filter(|l| !cache.contains_key(*l))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            if cache.len() + missing.len() > LABEL_CACHE {
                cache.clear();
            }
            for (label, e) in missing.iter().zip(self.embed(&missing)?) {
                cache.insert((*label).to_owned(), e);
            }
        }
        Ok(labels.iter().map(|l| cache[*l].clone()).collect())
    }

    /// Zero-shot: the index of the candidate nearest `text_embedding` and the softmax of the
    /// scaled similarities.
    pub fn classify(text_embedding: &[f32], candidates: &[Vec<f32>]) -> (usize, Vec<f64>) {
        let sims: Vec<f32> = candidates
            .iter()
            .map(|c| cosine(text_embedding, c) * SIMILARITY_SCALE as f32)
            .collect();
        let probs = softmax(&sims);
        let best = argmax(&probs).0;
        (best, probs)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

impl Model for MiniLm {
    fn id(&self) -> &str {
        "minilm"
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![
            TaskType::sentiment(),
            TaskType::zero_shot(),
            TaskType::embedding(),
        ]
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        let candidates: Vec<&str> = inputs
            .iter()
            .filter(|i| i.task_type == TaskType::zero_shot())
            .flat_map(|i| i.labels.iter().flatten().map(String::as_str))
            .collect();
        if let Err(e) = self.label_embeddings(&candidates) {
            let e = std::sync::Arc::new(e);
            return inputs
                .iter()
                .map(|_| Err(ModelError::Batch(e.clone())))
                .collect();
        }
        predict_batch(
            inputs,
            |texts| self.embed_counted(texts),
            |input, (e, read)| self.answer(input, e, read),
        )
    }
}

impl MiniLm {
    /// Turns a text's embedding (of `read` tokens) into the answer its task type asks for.
    fn answer(&self, input: &Input, e: Vec<f32>, read: u32) -> Result<Prediction, ModelError> {
        let t = &input.task_type;
        if t.is_vector() {
            return Ok(Prediction {
                label: String::new(),
                embedding: Some(e),
                confidence: 1.0,
                scores: Vec::new(),
                generation: None,
                input_tokens: Some(read),
            });
        }
        let (labels, candidates): (Vec<&str>, Cow<'_, [Vec<f32>]>) = if *t == TaskType::zero_shot()
        {
            let labels: Vec<&str> = input.labels.iter().flatten().map(String::as_str).collect();
            if labels.is_empty() {
                return Err(ModelError::Inference(
                    "a zero-shot task without candidate labels".into(),
                ));
            }
            let candidates = self.label_embeddings(&labels)?;
            (labels, Cow::Owned(candidates))
        } else if *t == TaskType::sentiment() {
            let labels = SENTIMENT_LABELS.iter().map(|(l, _)| *l).collect();
            (labels, Cow::Borrowed(&self.sentiment))
        } else {
            return Err(ModelError::Unsupported {
                model: self.id().to_owned(),
                task_type: t.clone(),
            });
        };
        let (best, probs) = Self::classify(&e, &candidates);
        Ok(Prediction {
            input_tokens: None,
            label: labels[best].to_owned(),
            embedding: None,
            confidence: probs[best],
            scores: probs.iter().map(|p| *p as f32).collect(),
            generation: None,
        })
    }
}
