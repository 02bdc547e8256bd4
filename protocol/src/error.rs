//! Error codes carried by error replies, and the error raised while decoding or validating a message.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable machine-readable code: clients branch on it, humans read the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON or does not have the expected shape.
    MalformedRequest,
    /// A field has a value outside its allowed range.
    InvalidArgument,
    /// A text is over the size limit.
    TextTooLarge,
    /// No task with that id exists.
    NotFound,
    /// The submission names a lease the coordinator never granted.
    NoLease,
    /// The lease ended (expired or released) before the submission arrived: drop the work.
    LeaseExpired,
    /// The lease belongs to another worker or another task.
    LeaseMismatch,
    /// This worker already submitted a different result for this task.
    DuplicateSubmission,
    /// The task is already finalized or failed.
    TaskClosed,
    /// The API operation is not known.
    UnknownOperation,
    /// The caller's credentials do not allow this.
    Unauthorized,
    /// The coordinator cannot serve right now (store unavailable); retry later.
    Unavailable,
    /// A bug or an unexpected failure inside the coordinator.
    Internal,
    /// A generative task names a model the coordinator does not know (or a malformed hash).
    UnknownModel,
    /// A generation spec asks for something its model cannot do (a language pair, say).
    UnsupportedSpec,
    /// A submission ran another model than the one its task pins.
    ModelMismatch,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::TextTooLarge => "text_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoLease => "no_lease",
            ErrorCode::LeaseExpired => "lease_expired",
            ErrorCode::LeaseMismatch => "lease_mismatch",
            ErrorCode::DuplicateSubmission => "duplicate_submission",
            ErrorCode::TaskClosed => "task_closed",
            ErrorCode::UnknownOperation => "unknown_operation",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::UnsupportedSpec => "unsupported_spec",
            ErrorCode::ModelMismatch => "model_mismatch",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// What went wrong.
    pub code: ErrorCode,
    /// A sentence for humans.
    pub message: String,
}

impl ApiError {
    /// Builds an error reply body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A message that could not be decoded or is out of bounds.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not the expected shape.
    #[error("malformed request: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A field is out of its allowed range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A generative task names a model that is not in the catalog.
    #[error("model {model:?}: {problem}")]
    UnknownModel {
        /// The model named.
        model: String,
        /// What is wrong.
        problem: String,
    },
    /// A generation spec its model cannot honour.
    #[error("{field}: {problem}")]
    Unsupported {
        /// The offending field.
        field: &'static str,
        /// What the model cannot do.
        problem: String,
    },
    /// A text is longer than allowed.
    #[error("text is {len} bytes, over the limit of {limit} bytes")]
    TextTooLarge {
        /// Size of the text.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

impl ProtocolError {
    /// Shorthand for an [`ProtocolError::Invalid`].
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            field,
            problem: problem.into(),
        }
    }

    /// The code an error reply carries for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Malformed(_) => ErrorCode::MalformedRequest,
            ProtocolError::Invalid { .. } => ErrorCode::InvalidArgument,
            ProtocolError::TextTooLarge { .. } => ErrorCode::TextTooLarge,
            ProtocolError::UnknownModel { .. } => ErrorCode::UnknownModel,
            ProtocolError::Unsupported { .. } => ErrorCode::UnsupportedSpec,
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(err: ProtocolError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}
