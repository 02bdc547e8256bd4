//! What the encoder-decoder models ([`super::t5`], [`super::marian`]) share: reading a Hugging
//! Face folder, padded batches and their masks, decoding over a recomputed prefix, and the
//! teacher-forced scoring of a candidate.

use super::interface::Scored;
use candle_core::{DType, Device, Result, Tensor, D};
use protocol::generation::Decoding;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;

/// Additive mask value for positions attention must not see.
pub(crate) const MASKED: f32 = -1e9;

/// Why an encoder-decoder model folder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A file is unreadable or not what the model expects.
    #[error("{path}: {source}")]
    File {
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

/// Reads `config.json` as `C` and the tensors of `model.safetensors` from `dir`.
///
/// # Errors
/// [`FolderError`] naming the file.
pub(crate) fn read_folder<C: DeserializeOwned>(
    dir: &Path,
    device: &Device,
) -> std::result::Result<(C, Weights), FolderError> {
    Ok((
        read_config(dir)?,
        read_weights(&dir.join("model.safetensors"), device)?,
    ))
}

/// Reads `dir/config.json` as `C`.
///
/// # Errors
/// [`FolderError::File`] naming it.
pub(crate) fn read_config<C: DeserializeOwned>(dir: &Path) -> std::result::Result<C, FolderError> {
    let path = dir.join("config.json");
    std::fs::read(&path)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.into()))
        .map_err(|source| FolderError::File { path, source })
}

/// The tensors of a weights file: safetensors, or else a PyTorch pickle (`pytorch_model.bin`).
///
/// # Errors
/// candle's error reading it.
pub(crate) fn read_weights(
    path: &Path,
    device: &Device,
) -> std::result::Result<Weights, FolderError> {
    Ok(Weights(
        if path.extension().is_some_and(|e| e == "safetensors") {
            candle_core::safetensors::load(path, device)?
        } else {
            candle_core::pickle::read_all(path)?.into_iter().collect()
        },
    ))
}

/// Tensors by Hugging Face name, taken out one by one as f32.
pub(crate) struct Weights(pub(crate) HashMap<String, Tensor>);

impl Weights {
    /// Takes the tensor `name`.
    ///
    /// # Errors
    /// When there is none.
    pub(crate) fn take(&mut self, name: &str) -> Result<Tensor> {
        self.0
            .remove(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
            .to_dtype(DType::F32)
    }
}

/// A batch right-padded with `pad` to its longest input: the ids `(batch, len)` and the key mask
/// `(batch, 1, 1, len)`, 0 on tokens and [`MASKED`] on padding.
///
/// # Errors
/// candle's errors.
pub(crate) fn padded(inputs: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let len = inputs.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for input in inputs {
        for i in 0..len {
            ids.push(input.get(i).copied().unwrap_or(pad));
            mask.push(if i < input.len() { 0f32 } else { MASKED });
        }
    }
    Ok((
        Tensor::from_vec(ids, (inputs.len(), len), device)?,
        Tensor::from_vec(mask, (inputs.len(), 1, 1, len), device)?,
    ))
}

/// Decoder inputs (all of one length) as `(batch, len)` ids, and their causal mask
/// `(1, 1, len, len)`.
///
/// # Errors
/// candle's errors.
pub(crate) fn decoder_inputs(decoded: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
    let len = decoded[0].len();
    let flat: Vec<u32> = decoded.iter().flatten().copied().collect();
    let causal: Vec<f32> = (0..len)
        .flat_map(|q| (0..len).map(move |k| if k > q { MASKED } else { 0.0 }))
        .collect();
    Ok((
        Tensor::from_vec(flat, (decoded.len(), len), device)?,
        Tensor::from_vec(causal, (1, 1, len, len), device)?,
    ))
}

/// The decoder's own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderIds {
    /// The decoder's first input.
    pub start: u32,
    /// What a finished row is fed while the others go on.
    pub pad: u32,
    /// An id never chosen (Marian's padding).
    pub banned: Option<u32>,
}

/// An encoder-decoder: a padded batch encoded once, then decoded over a whole prefix. Generation
/// and the teacher-forced scoring of a candidate are the same for every such model.
pub trait EncoderDecoder {
    /// The encoder's output and key mask for a batch.
    ///
    /// # Errors
    /// candle's errors.
    fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor)>;

    /// The logits `(batch, len, vocab)` of every position of `decoded`.
    ///
    /// # Errors
    /// candle's errors.
    fn decode(&self, decoded: &[Vec<u32>], encoded: &(Tensor, Tensor)) -> Result<Tensor>;

    /// The decoder's start and padding ids, and the id it never picks.
    fn decoder_ids(&self) -> DecoderIds;

    /// Decoding of a batch, each row on its own: the token `decoding` picks at each step
    /// (greedy: the arg-max, ties to the lowest id), with its log-probability, until the first
    /// of `stops` or `max_new_tokens`.
    ///
    /// # Errors
    /// candle's errors.
    fn generate_with(
        &self,
        inputs: &[Vec<u32>],
        max_new_tokens: usize,
        stops: &[u32],
        decoding: &Decoding,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let ids = self.decoder_ids();
        let encoded = self.encode(inputs)?;
        let mut decoded = vec![vec![ids.start]; inputs.len()];
        let mut out = vec![(Vec::new(), Vec::new()); inputs.len()];
        let mut done = vec![false; inputs.len()];
        for _ in 0..max_new_tokens {
            let logits = self.decode(&decoded, &encoded)?;
            let last = logits.narrow(1, decoded[0].len() - 1, 1)?.squeeze(1)?;
            let logp = candle_nn::ops::log_softmax(&last, D::Minus1)?.to_vec2::<f32>()?;
            for (i, row) in logp.iter().enumerate() {
                if done[i] {
                    decoded[i].push(ids.pad);
                    continue;
                }
                let step = out[i].0.len();
                let (next, lp) =
                    protocol::verify::choose(&without(row, ids.banned), step, decoding);
                out[i].0.push(next);
                out[i].1.push(lp);
                decoded[i].push(next);
                done[i] = stops.contains(&next);
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        Ok(out)
    }

    /// Scores `candidate` as the answer to `input` with one teacher-forced pass: the decoder
    /// reads `[start, y_1 .. y_T-1]` and each position's log-probabilities (the banned id made
    /// impossible, as in generation) score the candidate's token there.
    ///
    /// # Errors
    /// candle's errors; an empty candidate.
    fn score(&self, input: &[u32], candidate: &[u32], decoding: &Decoding) -> Result<Scored> {
        let Some((_, fed)) = candidate.split_last() else {
            return Err(candle_core::Error::Msg("an empty candidate".into()));
        };
        let ids = self.decoder_ids();
        let encoded = self.encode(&[input.to_vec()])?;
        let decoded: Vec<u32> = std::iter::once(ids.start)
            .chain(fed.iter().copied())
            .collect();
        let logits = self.decode(&[decoded], &encoded)?.squeeze(0)?;
        let rows = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let rows: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| without(r, ids.banned).into_owned())
            .collect();
        Ok(Scored::of_rows(&rows, candidate, decoding))
    }
}

/// A row of log-probabilities with `banned` made impossible.
fn without(row: &[f32], banned: Option<u32>) -> std::borrow::Cow<'_, [f32]> {
    match banned {
        Some(b) if (b as usize) < row.len() => {
            let mut row = row.to_vec();
            row[b as usize] = f32::NEG_INFINITY;
            row.into()
        }
        _ => row.into(),
    }
}
