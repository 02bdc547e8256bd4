//! The aimarket wire protocol, shared by the coordinator, the workers and the CLI.
//!
//! Where things live:
//! - [`subject`]: every NATS subject name, built from a configurable prefix.
//! - [`ids`]: the id newtypes ([`TaskId`], [`WorkerId`], [`LeaseId`], [`TaskType`]).
//! - [`status`]: task and worker states, which round-trip through their string forms.
//! - [`messages`]: every request, reply and event body.
//! - [`reply`]: the `{"ok":true,...}` / `{"ok":false,"error":{...}}` envelope.
//! - [`error`]: error codes and the decode/validation error.
//! - [`limits`]: validation bounds.
//! - [`chat`]: chats as task input, stop strings, a generating worker's progress.
//! - [`generation`]: the generative models known, the spec a generative task pins, its answer.
//! - [`policy`]: vote policies, gold (known-answer) items, cancel and retry.
//! - [`auth`]: the headers that carry worker tokens and client API keys.
//!
//! This crate does no IO: it is serde types and pure functions only.

pub mod auth;
pub mod chat;
pub mod error;
pub mod generation;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod policy;
pub mod reply;
pub mod status;
pub mod subject;
pub mod verify;

pub use error::{ApiError, ErrorCode, ProtocolError};
pub use ids::{LeaseId, TaskId, TaskType, WorkerId};
pub use status::{LeaseState, TaskStatus, WorkerStatus};
