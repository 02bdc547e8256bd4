//! Id newtypes. Worker ids and task types become NATS subject tokens, so they are restricted to
//! `[A-Za-z0-9_-]`; task and lease ids are UUIDs (v7, so they sort by creation time).

use crate::error::ProtocolError;
use crate::limits::MAX_ID_BYTES;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| ProtocolError::invalid($field, format!("{s:?} is not a UUID: {e}")))
            }
        }
    };
}

uuid_id!(
    /// Identifies a task.
    TaskId,
    "task_id"
);
uuid_id!(
    /// Identifies one lease: one worker's right to answer one task until it expires.
    LeaseId,
    "lease_id"
);

fn check_token(field: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(ProtocolError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(ProtocolError::invalid(
            field,
            format!("is {} bytes, over the limit of {MAX_ID_BYTES}", s.len()),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ProtocolError::invalid(
            field,
            format!("{s:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            ///
            /// # Errors
            /// [`ProtocolError::Invalid`] when `s` is empty, too long, or not a subject token.
            pub fn new(s: impl Into<String>) -> Result<Self, ProtocolError> {
                let s = s.into();
                check_token($field, &s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtocolError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

token_id!(
    /// Identifies a worker; chosen by its operator (`aimarket worker --id alice`).
    WorkerId,
    "worker_id"
);
token_id!(
    /// A kind of task (`sentiment`, ...). Tasks go only to workers that advertise their type.
    TaskType,
    "type"
);

impl TaskType {
    /// The type a task gets when none is given.
    pub fn sentiment() -> Self {
        Self("sentiment".to_owned())
    }

    /// Classify a text into one of the candidate labels the task carries.
    pub fn zero_shot() -> Self {
        Self("zero-shot".to_owned())
    }

    /// Embed a text: the answer is a vector, and answers agree when they are near each other.
    pub fn embedding() -> Self {
        Self("embedding".to_owned())
    }

    /// Whether answers to this type are vectors (compared by cosine) rather than labels.
    pub fn is_vector(&self) -> bool {
        self.0 == "embedding"
    }

    /// Continue a prompt: the answer is generated text (token ids).
    pub fn generate() -> Self {
        Self("generate".to_owned())
    }

    /// Summarize a text: generated, through a versioned instruction template.
    pub fn summarization() -> Self {
        Self("summarization".to_owned())
    }

    /// Translate a text between two languages: generated, through a versioned template.
    pub fn translation() -> Self {
        Self("translation".to_owned())
    }

    /// Whether answers to this type are generated token sequences.
    pub fn is_generative(&self) -> bool {
        matches!(
            self.0.as_str(),
            "generate" | "summarization" | "translation"
        )
    }
}

impl Default for TaskType {
    fn default() -> Self {
        Self::sentiment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_subject_tokens() {
        assert!(WorkerId::new("alice").is_ok());
        assert!(WorkerId::new("node-7_b").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert!(WorkerId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id = TaskId::new();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(serde_json::from_str::<TaskId>(&json).expect("parse"), id);
        assert_eq!(id.to_string().parse::<TaskId>().expect("parse"), id);
        let err = serde_json::from_str::<WorkerId>("\"a.b\"").expect_err("dot accepted");
        assert!(err.to_string().contains("only letters"), "{err}");
    }
}
