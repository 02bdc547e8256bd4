//! Bounds every message is checked against: texts, capabilities, models, answers.

use crate::error::ProtocolError;
use crate::generation::is_sha256;
use crate::ids::TaskType;
use crate::limits::*;

pub(crate) fn check_text(text: &str, max_text_bytes: usize) -> Result<(), ProtocolError> {
    if text.trim().is_empty() {
        return Err(ProtocolError::invalid("text", "must not be empty"));
    }
    if text.len() > max_text_bytes {
        return Err(ProtocolError::TextTooLarge {
            len: text.len(),
            limit: max_text_bytes,
        });
    }
    Ok(())
}

pub(crate) fn check_capabilities(caps: &[TaskType]) -> Result<(), ProtocolError> {
    if caps.is_empty() {
        return Err(ProtocolError::invalid(
            "capabilities",
            "must name at least one task type",
        ));
    }
    if caps.len() > MAX_CAPABILITIES {
        return Err(ProtocolError::invalid(
            "capabilities",
            format!("at most {MAX_CAPABILITIES} task types"),
        ));
    }
    Ok(())
}

/// Checks a model id.
///
/// # Errors
/// [`ProtocolError::Invalid`] when it is too long.
pub fn check_model(model: Option<&str>) -> Result<(), ProtocolError> {
    match model {
        Some(m) if m.len() > MAX_MODEL_BYTES => Err(ProtocolError::invalid(
            "model",
            format!("at most {MAX_MODEL_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Checks a model content hash.
///
/// # Errors
/// [`ProtocolError::Invalid`] unless it is a SHA-256 in lowercase hex.
pub fn check_model_hash(hash: Option<&str>) -> Result<(), ProtocolError> {
    match hash {
        Some(h) if !is_sha256(h) => Err(ProtocolError::invalid(
            "model_hash",
            "must be a SHA-256 (64 lowercase hex digits)",
        )),
        _ => Ok(()),
    }
}

/// Checks how many input tokens a submission says its model read.
///
/// # Errors
/// [`ProtocolError::Invalid`] past [`MAX_INPUT_TOKENS`].
pub fn check_input_tokens(n: Option<u32>) -> Result<(), ProtocolError> {
    match n {
        Some(n) if n > MAX_INPUT_TOKENS => Err(ProtocolError::invalid(
            "input_tokens",
            format!("at most {MAX_INPUT_TOKENS}"),
        )),
        _ => Ok(()),
    }
}

/// Checks a submitted vector.
///
/// # Errors
/// [`ProtocolError::Invalid`] when empty, too long, not finite or all zeros.
pub fn check_embedding(v: &[f32]) -> Result<(), ProtocolError> {
    if v.is_empty() || v.len() > MAX_EMBEDDING_DIM {
        return Err(ProtocolError::invalid(
            "embedding",
            format!("must hold between 1 and {MAX_EMBEDDING_DIM} numbers"),
        ));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(ProtocolError::invalid(
            "embedding",
            "must be finite numbers",
        ));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(ProtocolError::invalid(
            "embedding",
            "must not be all zeros (it has no direction)",
        ));
    }
    Ok(())
}

/// Checks a submitted label.
///
/// # Errors
/// [`ProtocolError::Invalid`] when empty or too long.
pub fn check_label(label: &str) -> Result<(), ProtocolError> {
    if label.trim().is_empty() {
        return Err(ProtocolError::invalid("label", "must not be empty"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(ProtocolError::invalid(
            "label",
            format!("at most {MAX_LABEL_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a submitted confidence.
///
/// # Errors
/// [`ProtocolError::Invalid`] unless it is a number in `[0, 1]`.
pub fn check_confidence(confidence: f64) -> Result<(), ProtocolError> {
    if !(0.0..=1.0).contains(&confidence) {
        return Err(ProtocolError::invalid(
            "confidence",
            format!("{confidence} is not in [0, 1]"),
        ));
    }
    Ok(())
}

pub(crate) fn check_candidates(labels: &[String]) -> Result<(), ProtocolError> {
    if labels.len() < 2 || labels.len() > MAX_CANDIDATE_LABELS {
        return Err(ProtocolError::invalid(
            "labels",
            format!("must hold between 2 and {MAX_CANDIDATE_LABELS} labels"),
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        check_label(label).map_err(|_| {
            ProtocolError::invalid(
                "labels",
                format!("label {i} must be 1 to {MAX_LABEL_BYTES} bytes, not blank"),
            )
        })?;
        if labels[..i].contains(label) {
            return Err(ProtocolError::invalid(
                "labels",
                format!("{label:?} is given twice"),
            ));
        }
    }
    Ok(())
}
