//! Chats as task input, stop strings, and the progress a generating worker publishes.
//!
//! A `generate` task can take a whole chat (system, user and assistant turns) instead of one
//! prompt: its spec names the template [`crate::generation::TEMPLATE_MESSAGES`] and its text is
//! the chat as JSON ([`encode`]), which the worker renders with the model's own chat template.
//! So `aimarket task add --messages`, `aimarket infer --messages` and the OpenAI-compatible API
//! give one chat one prompt.
//!
//! Stop strings are cut on the worker, deterministically ([`find_stop`]): generation ends at the
//! first token after which the decoded text holds one of them, and the answer's text ends before
//! it. Honest workers make the same cut, so the cut is part of the answer that exact match
//! verifies.

use crate::error::ProtocolError;
use crate::ids::{LeaseId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};

/// The most turns a chat may hold.
pub const MAX_CHAT_MESSAGES: usize = 256;
/// The most stop strings a task may name (OpenAI's bound).
pub const MAX_STOP_STRINGS: usize = 4;
/// The longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the whole chat.
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// Its name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One turn of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A turn of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Checks a chat: 1 to [`MAX_CHAT_MESSAGES`] turns, a system turn only first, and a last turn
/// that is not the assistant's (the model answers it).
///
/// # Errors
/// [`ProtocolError::Invalid`] on `messages`, naming the turn.
pub fn validate(messages: &[ChatMessage]) -> Result<(), ProtocolError> {
    if messages.is_empty() || messages.len() > MAX_CHAT_MESSAGES {
        return Err(ProtocolError::invalid(
            "messages",
            format!("a chat holds 1 to {MAX_CHAT_MESSAGES} messages"),
        ));
    }
    if let Some(i) = messages.iter().skip(1).position(|m| m.role == Role::System) {
        return Err(ProtocolError::invalid(
            "messages",
            format!("message {}: a system message may only come first", i + 1),
        ));
    }
    if messages.last().map(|m| m.role) == Some(Role::Assistant) {
        return Err(ProtocolError::invalid(
            "messages",
            "the last message is the assistant's: there is nothing to answer",
        ));
    }
    Ok(())
}

/// The task text of a chat: its JSON, compact, in one canonical form.
pub fn encode(messages: &[ChatMessage]) -> String {
    serde_json::to_string(messages).expect("a chat always serializes")
}

/// The chat a task text holds.
///
/// # Errors
/// [`ProtocolError::Invalid`] when the text is not a valid chat.
pub fn decode(text: &str) -> Result<Vec<ChatMessage>, ProtocolError> {
    let messages: Vec<ChatMessage> = serde_json::from_str(text).map_err(|e| {
        ProtocolError::invalid("messages", format!("not a chat (JSON list of turns): {e}"))
    })?;
    validate(&messages)?;
    Ok(messages)
}

/// Checks stop strings: at most [`MAX_STOP_STRINGS`], each 1 to [`MAX_STOP_BYTES`] bytes.
///
/// # Errors
/// [`ProtocolError::Invalid`] on `stop`.
pub fn validate_stop(stop: &[String]) -> Result<(), ProtocolError> {
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ProtocolError::invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings"),
        ));
    }
    if let Some(s) = stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ProtocolError::invalid(
            "stop",
            format!("{s:?} is not 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Where the first stop string starts in `text` (the earliest start; at one start, any), or
/// `None`. A generation whose decoded text has one ends there, and its text is `text[..i]`.
pub fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// What a generating worker publishes on [`crate::subject::progress`] after each token, for
/// optimistic streaming: the text so far (no half characters), not a verified answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The task.
    pub task_id: TaskId,
    /// The worker generating.
    pub worker_id: WorkerId,
    /// Its lease.
    pub lease_id: LeaseId,
    /// The prompt's length in tokens, after the chat template (the same on every honest worker).
    pub prompt_tokens: u32,
    /// Tokens generated so far.
    pub tokens: u32,
    /// Their text so far (cut before a stop string once one appears).
    pub text: String,
    /// Whether generation has ended.
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
            ChatMessage::new(Role::Assistant, "Hello!"),
            ChatMessage::new(Role::User, "What is 2+2?"),
        ]
    }

    #[test]
    fn a_chat_round_trips_through_its_task_text() {
        let text = encode(&chat());
        assert_eq!(decode(&text).expect("valid"), chat());
        assert!(text.starts_with(r#"[{"role":"system","content":"Be brief."}"#));
    }

    #[test]
    fn bad_chats_are_refused_by_name() {
        assert!(validate(&[]).is_err(), "empty");
        let mut late_system = chat();
        late_system.push(ChatMessage::new(Role::System, "x"));
        assert!(validate(&late_system).is_err());
        assert!(validate(&chat()[..3]).is_err(), "ends on the assistant");
        assert!(
            decode(r#"[{"role":"tool","content":"x"}]"#).is_err(),
            "unknown role"
        );
        assert!(decode("hello").is_err());
    }

    #[test]
    fn the_first_stop_string_in_the_text_cuts_it() {
        let stop = vec!["\n\n".to_owned(), "4".to_owned()];
        assert_eq!(find_stop("It is 4.\n\nYes", &stop), Some(6));
        assert_eq!(find_stop("Two\n\nfour: 4", &stop), Some(3));
        assert_eq!(find_stop("nothing", &stop), None);
        assert_eq!(find_stop("anything", &[]), None);
    }

    #[test]
    fn stop_strings_are_bounded() {
        assert!(validate_stop(&vec!["a".to_owned(); 4]).is_ok());
        assert!(validate_stop(&vec!["a".to_owned(); 5]).is_err());
        assert!(validate_stop(&[String::new()]).is_err());
        assert!(validate_stop(&["x".repeat(65)]).is_err());
    }
}
