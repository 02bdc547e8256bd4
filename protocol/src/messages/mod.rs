//! Every message body. Requests are named `XRequest`, their replies `XReply`; replies travel inside
//! the [`crate::reply`] envelope.
//!
//! Kept in files by audience: `worker` (leases, heartbeats, submissions), `events` (what the
//! coordinator publishes), `api` (the client API's operations), `task` (tasks added, got and
//! listed), `views` (what views show), `admin` (operator requests), and `validate` (the
//! bounds). Everything is re-exported here.

mod admin;
mod api;
mod events;
mod task;
mod validate;
mod views;
mod worker;

pub use crate::status::FailureReason;
pub use admin::*;
pub use api::*;
pub use events::*;
pub use task::*;
pub use validate::{
    check_confidence, check_embedding, check_input_tokens, check_label, check_model,
    check_model_hash,
};
pub use views::*;
pub use worker::*;

use crate::error::ProtocolError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes a JSON request body.
///
/// # Errors
/// [`ProtocolError::Malformed`] when `bytes` is not JSON of the shape `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(bytes).map_err(ProtocolError::Malformed)
}

/// Encodes a message as JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("protocol messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::limits::*;

    #[test]
    fn new_task_bounds() {
        let ok = NewTask::text("fine");
        assert!(ok.validate(100).is_ok());
        let empty = NewTask::text("  ");
        assert_eq!(
            empty.validate(100).expect_err("empty").code(),
            ErrorCode::InvalidArgument
        );
        let big = NewTask::text("x".repeat(101));
        assert_eq!(
            big.validate(100).expect_err("big").code(),
            ErrorCode::TextTooLarge
        );
        for r in [0, MAX_REQUIRED_SUBMISSIONS + 1] {
            let t = NewTask {
                required_submissions: Some(r),
                ..NewTask::text("x")
            };
            assert!(t.validate(100).is_err(), "required {r} accepted");
        }
    }

    #[test]
    fn labels_and_similarity_fit_their_task_types() {
        assert!(NewTask::zero_shot("x", &["a", "b"]).validate(100).is_ok());
        assert!(NewTask::embedding("x").validate(100).is_ok());
        let bad = [
            (NewTask::zero_shot("x", &["a"]), "between 2"),
            (NewTask::zero_shot("x", &["a", "a"]), "twice"),
            (NewTask::zero_shot("x", &["a", " "]), "label 1"),
            (
                NewTask {
                    labels: None,
                    ..NewTask::zero_shot("x", &["a", "b"])
                },
                "need their candidate labels",
            ),
            (
                NewTask {
                    labels: Some(vec!["a".into(), "b".into()]),
                    ..NewTask::text("x")
                },
                "only zero-shot",
            ),
            (
                NewTask {
                    similarity: Some(0.9),
                    ..NewTask::text("x")
                },
                "only embedding",
            ),
            (
                NewTask {
                    similarity: Some(1.5),
                    ..NewTask::embedding("x")
                },
                "(0, 1]",
            ),
        ];
        for (task, why) in bad {
            let err = task.validate(100).expect_err("accepted");
            assert!(err.to_string().contains(why), "{err} lacks {why:?}");
        }
    }

    #[test]
    fn a_submission_carries_a_label_or_a_vector() {
        assert_eq!(
            Answer::new("pos", None, None, None).expect("label"),
            Answer::Label("pos")
        );
        assert_eq!(
            Answer::new("", Some(&[0.5]), None, None).expect("vector"),
            Answer::Embedding(&[0.5])
        );
        assert!(Answer::new("", None, None, None).is_err());
        assert!(Answer::new("pos", Some(&[0.5]), None, None).is_err());
        assert!(Answer::new("", Some(&[]), None, None).is_err());
        assert!(Answer::new("", Some(&vec![1.0; MAX_EMBEDDING_DIM + 1]), None, None).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = decode::<SubmitRequest>(br#"{"lease_id":"0190a0e0-0000-7000-8000-000000000000","worker_id":"a","label":"x","confidence":1,"extra":1}"#)
            .expect_err("extra field accepted");
        assert_eq!(err.code(), ErrorCode::MalformedRequest);
    }

    #[test]
    fn api_ops_round_trip() {
        for op in ApiOp::ALL {
            assert_eq!(op.as_str().parse::<ApiOp>().expect("parse"), *op);
        }
        assert_eq!(
            "nope".parse::<ApiOp>().expect_err("nope").code,
            ErrorCode::UnknownOperation
        );
    }

    #[test]
    fn confidence_must_be_a_probability() {
        assert!(check_confidence(0.0).is_ok() && check_confidence(1.0).is_ok());
        assert!(check_confidence(1.01).is_err());
        assert!(check_confidence(f64::NAN).is_err());
    }
}
