//! Pieces shared by the transformer backends: padded tokenization of a batch, the padding mask,
//! multi-head self-attention, and reading a Hugging Face model folder.

use super::interface::ModelError;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Tokens per text; longer texts are truncated (the original truncated at 256).
pub const MAX_TOKENS: usize = 256;

/// Why a model folder could not be loaded; names the way out.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file of the Hugging Face layout is missing.
    #[error(
        "{dir} has no {file} (a model folder needs config.json, model.safetensors and \
         tokenizer.json or vocab.txt)"
    )]
    Missing {
        /// The folder.
        dir: String,
        /// The missing file.
        file: &'static str,
    },
    /// A file is unreadable or not what it should be.
    #[error("{file}: {source}")]
    Bad {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LoadError {
    pub(crate) fn bad(
        file: &Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        LoadError::Bad {
            file: file.to_owned(),
            source: source.into(),
        }
    }
}

/// The three files of a Hugging Face model folder. The tokenizer is `tokenizer.json`, or for
/// older BERT-family uploads that lack one, `vocab.txt` (an uncased BERT WordPiece tokenizer is
/// built from it).
pub(crate) struct Folder {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

/// The files a model folder may hold, in the order they are fetched.
pub const FOLDER_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.txt",
];

impl Folder {
    pub(crate) fn open(dir: &Path) -> Result<Self, LoadError> {
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
        Ok(Self {
            config: file("config.json")?,
            weights: file("model.safetensors")?,
            tokenizer: file("tokenizer.json").or_else(|e| file("vocab.txt").map_err(|_| e))?,
        })
    }

    /// SHA-256 of the config, weights and tokenizer, each preceded by its file name: the
    /// content hash the model reports.
    pub(crate) fn hash(&self) -> Result<String, LoadError> {
        let files = [
            self.config.clone(),
            self.weights.clone(),
            self.tokenizer.clone(),
        ];
        super::interface::hash_files(&files, true).map_err(|(path, e)| LoadError::bad(&path, e))
    }

    pub(crate) fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, LoadError> {
        let bytes = std::fs::read(&self.config).map_err(|e| LoadError::bad(&self.config, e))?;
        serde_json::from_slice(&bytes).map_err(|e| LoadError::bad(&self.config, e))
    }

    pub(crate) fn weights(
        &self,
        device: &Device,
    ) -> Result<candle_nn::VarBuilder<'static>, LoadError> {
        let bytes = std::fs::read(&self.weights).map_err(|e| LoadError::bad(&self.weights, e))?;
        candle_nn::VarBuilder::from_buffered_safetensors(bytes, candle_core::DType::F32, device)
            .map_err(|e| LoadError::bad(&self.weights, e))
    }

    /// The tokenizer, padding each batch to its longest text and truncating at `max_len`.
    pub(crate) fn tokenizer(&self, max_len: usize) -> Result<Tokenizer, LoadError> {
        let mut t = if self.tokenizer.ends_with("vocab.txt") {
            bert_wordpiece(&self.tokenizer)
        } else {
            Tokenizer::from_file(&self.tokenizer)
        }
        .map_err(|e| LoadError::bad(&self.tokenizer, e))?;
        t.with_padding(Some(PaddingParams::default()));
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..TruncationParams::default()
        }))
        .map_err(|e| LoadError::bad(&self.tokenizer, e))?;
        Ok(t)
    }
}

/// An uncased BERT WordPiece tokenizer over `vocab.txt`: what `BertTokenizerFast` builds from it.
fn bert_wordpiece(vocab: &Path) -> tokenizers::Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::Model as _;
    let path = vocab.to_str().ok_or("the vocab.txt path is not UTF-8")?;
    let wp = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()?;
    let id = |t: &str| {
        wp.token_to_id(t)
            .ok_or_else(|| format!("vocab.txt lacks the special token {t}"))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::default()))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()?,
    ));
    Ok(tok)
}

/// Token ids and attention mask (1 = real token) of a padded batch, each `[batch, seq]`.
pub(crate) fn encode(
    tokenizer: &Tokenizer,
    texts: &[&str],
    device: &Device,
) -> Result<(Tensor, Tensor), ModelError> {
    let enc = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(ModelError::Inference)?;
    let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| {
        let data: Vec<Vec<u32>> = enc.iter().map(f).collect();
        Tensor::new(data, device).map_err(|e| ModelError::Inference(e.into()))
    };
    Ok((
        rows(&|e| e.get_ids().to_vec())?,
        rows(&|e| e.get_attention_mask().to_vec())?,
    ))
}

/// Bidirectional multi-head self-attention: `q`, `k`, `v` are the projected inputs
/// `[batch, seq, dim]`; padded keys (mask 0) get the lowest score, as Hugging Face's
/// `masked_fill(finfo.min)` does. Returns the context `[batch, seq, dim]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, dim) = q.dims3()?;
    let hd = dim / heads;
    let split = |y: &Tensor| -> candle_core::Result<Tensor> {
        y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    let q = (split(q)? / (hd as f64).sqrt())?;
    let (k, v) = (split(k)?, split(v)?);
    let hidden = mask
        .eq(0u32)?
        .reshape((b, 1, 1, t))?
        .broadcast_as((b, heads, t, t))?;
    let floor = Tensor::new(f32::MIN, q.device())?.broadcast_as((b, heads, t, t))?;
    let scores = hidden.where_cond(&floor, &q.matmul(&k.t()?)?)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, dim))
}

/// Most texts per forward pass inside a batch.
pub const GROUP: usize = 64;
/// How much padding a group may carry, in percent of its real length: a batch is run as groups
/// of texts of similar length, so little of each forward pass is spent on padding.
const SLACK: usize = 30;

/// Runs `run` over `texts` in groups of similar length (by bytes, a proxy for tokens) and
/// returns the results in the original order. Texts are sorted by length and a group grows while
/// its padded size (longest × count) stays within [`SLACK`] percent of its real size, up to
/// [`GROUP`] texts.
///
/// # Errors
/// The first error of `run`.
pub(crate) fn by_length<T>(
    texts: &[&str],
    mut run: impl FnMut(&[&str]) -> Result<Vec<T>, ModelError>,
) -> Result<Vec<T>, ModelError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    let mut groups = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        let mut sum = texts[order[start]].len().max(1);
        while end < order.len() && end - start < GROUP {
            let len = texts[order[end]].len().max(1);
            if len * (end - start + 1) * 100 > (sum + len) * (100 + SLACK) {
                break;
            }
            sum += len;
            end += 1;
        }
        groups.push(&order[start..end]);
        start = end;
    }
    for group in groups {
        let batch: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
        for (&i, r) in group.iter().zip(run(&batch)?) {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every text is in one group"))
        .collect())
}

/// Softmax of one row of scores.
pub fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = scores.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The index and value of the largest probability (the first on ties).
pub fn argmax(probs: &[f64]) -> (usize, f64) {
    probs.iter().enumerate().fold(
        (0, f64::MIN),
        |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
    )
}

/// Runs a batch model on the inputs' texts and turns each output into a prediction; if the
/// batch fails, every input gets the error.
pub(crate) fn predict_batch<T>(
    inputs: &[super::Input],
    run: impl FnOnce(&[&str]) -> Result<Vec<T>, ModelError>,
    each: impl Fn(&super::Input, T) -> Result<super::Prediction, ModelError>,
) -> Vec<Result<super::Prediction, ModelError>> {
    let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
    match run(&texts) {
        Ok(outputs) => inputs
            .iter()
            .zip(outputs)
            .map(|(i, o)| each(i, o))
            .collect(),
        Err(e) => {
            let e = std::sync::Arc::new(e);
            inputs
                .iter()
                .map(|_| Err(ModelError::Batch(e.clone())))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_length_and_restores_the_order() {
        let texts = [
            "ccc",
            "a",
            "bbbbbbbbbbbb",
            "dd",
            "e",
            "ffffff",
            "g",
            "hh",
            "iii",
            "j",
        ];
        let mut groups = Vec::new();
        let out = by_length(&texts, |g| {
            groups.push(g.len());
            Ok(g.iter().map(|t| t.to_uppercase()).collect())
        })
        .expect("run");
        let want: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();
        assert_eq!(out, want);
        // Lengths 1,1,1,1 | 2,2,3,3 | 6 | 12: a group grows while padding stays within 30%.
        assert_eq!(groups, vec![4, 4, 1, 1]);
    }
}
