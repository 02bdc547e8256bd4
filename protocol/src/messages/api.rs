//! The client API's operations (`<p>.api.<op>`), each named once: its variant, its subject
//! token, whether it changes state, and what it takes and returns.

use crate::error::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Declares [`ApiOp`] from one table: variant, subject token, whether it changes state (and so
/// needs an API key when keys are configured; read-only views stay open), and its doc.
macro_rules! api_ops {
    ($($(#[doc = $doc:literal])* $op:ident = $name:literal, changes: $changes:literal;)*) => {
        /// The operations of `<p>.api.<op>`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ApiOp {
            $($(#[doc = $doc])* $op,)*
        }

        impl ApiOp {
            /// Every operation.
            pub const ALL: &'static [ApiOp] = &[$(ApiOp::$op,)*];

            /// The subject token(s) of the operation.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ApiOp::$op => $name,)*
                }
            }

            /// Its metric label: `api.` and its subject tokens.
            pub fn label(self) -> &'static str {
                match self {
                    $(ApiOp::$op => concat!("api.", $name),)*
                }
            }

            /// Whether the operation changes state, and so needs an API key when keys are
            /// configured. Read-only views stay open.
            pub fn needs_api_key(self) -> bool {
                match self {
                    $(ApiOp::$op => $changes,)*
                }
            }
        }
    };
}

api_ops! {
    /// [`crate::messages::TaskAddRequest`] -> [`crate::messages::TaskAddReply`].
    TaskAdd = "task.add", changes: true;
    /// [`crate::messages::TaskGetRequest`] -> [`crate::messages::TaskDetail`].
    TaskGet = "task.get", changes: false;
    /// [`crate::messages::TaskListRequest`] -> [`crate::messages::TaskListReply`].
    TaskList = "task.list", changes: false;
    /// `{}` -> [`crate::messages::LeaderboardReply`].
    Leaderboard = "leaderboard", changes: false;
    /// `{}` -> [`crate::messages::ModelAgreementReply`]: agreement with consensus per model and
    /// task type.
    LeaderboardModels = "leaderboard.models", changes: false;
    /// `{}` -> [`crate::messages::WorkersReply`].
    Workers = "workers", changes: false;
    /// `{}` -> [`crate::messages::StatsReply`].
    Stats = "stats", changes: false;
    /// `{}` -> [`crate::messages::RequeueReply`]: run the sweeper now.
    OpsRequeue = "ops.requeue", changes: true;
    /// [`crate::messages::ResetRequest`] -> `{}`: delete everything.
    OpsReset = "ops.reset", changes: true;
    /// [`crate::messages::WorkerTokenRequest`] -> [`crate::messages::WorkerTokenReply`]: issue
    /// (or replace) a worker's token.
    WorkerTokenCreate = "worker.token.create", changes: true;
    /// [`crate::messages::WorkerTokenRequest`] -> [`crate::messages::WorkerTokenRevoked`]:
    /// revoke a worker's token.
    WorkerTokenRevoke = "worker.token.revoke", changes: true;
    /// [`crate::policy::TaskIdsRequest`] -> [`crate::policy::TaskIdsReply`]: cancel open tasks.
    TaskCancel = "task.cancel", changes: true;
    /// [`crate::policy::TaskIdsRequest`] -> [`crate::policy::TaskIdsReply`]: requeue failed
    /// tasks with fresh attempts.
    TaskRetry = "task.retry", changes: true;
    /// [`crate::policy::GoldAddRequest`] -> [`crate::policy::GoldAddReply`]: store known-answer
    /// items.
    GoldAdd = "gold.add", changes: true;
}

impl fmt::Display for ApiOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiOp {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiOp::ALL
            .iter()
            .copied()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ApiOp::ALL.iter().map(|op| op.as_str()).collect();
                ApiError::new(
                    ErrorCode::UnknownOperation,
                    format!("unknown operation {s:?} (known: {})", known.join(", ")),
                )
            })
    }
}

/// An empty request or reply body (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}
