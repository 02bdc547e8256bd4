//! Task and worker states. Their string forms are what the store and the wire hold.

use crate::error::ProtocolError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $field:literal { $($(#[$vdoc:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every state, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The state's string form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(ProtocolError::invalid(
                        $field,
                        format!("unknown {} {other:?} (expected one of: {})", $field,
                            [$($s),+].join(", ")),
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// Where a task is in its lifecycle: `queued` -> `assigned` -> `finalized` | `failed` |
    /// `cancelled`; a task whose answers reached no quorum is `inconclusive` while more replicas
    /// run, a generative task `verifying` while other workers score its answers.
    TaskStatus, "status" {
        /// Waiting for workers; no live lease.
        Queued => "queued",
        /// At least one worker holds a live lease on it.
        Assigned => "assigned",
        /// Its required answers are in without a quorum: more replicas go to distinct workers.
        Inconclusive => "inconclusive",
        /// A generative task whose candidate answers are being scored by other workers.
        Verifying => "verifying",
        /// Consensus reached; the final label is set. Terminal.
        Finalized => "finalized",
        /// Ran out of attempts, or reached no consensus. Terminal (`task retry` requeues it).
        Failed => "failed",
        /// Cancelled by a client. Terminal.
        Cancelled => "cancelled",
    }
);

impl TaskStatus {
    /// Whether the task can still change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Finalized | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

string_enum!(
    /// Where a lease is: live, or how it ended.
    LeaseState, "lease state" {
        /// Live: its holder may submit.
        Active => "active",
        /// Its holder submitted.
        Completed => "completed",
        /// It ran out (or its holder went stale) without a result.
        Expired => "expired",
        /// Its holder gave it back without a result.
        Released => "released",
        /// Its task closed (finalized, failed or cancelled) while it was live.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// A worker's liveness as the coordinator sees it.
    WorkerStatus, "worker status" {
        /// Heartbeats arrive within the TTL.
        Active => "active",
        /// No heartbeat within the TTL: its leases are freed.
        Stale => "stale",
        /// Said goodbye on a graceful shutdown.
        Offline => "offline",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().expect("parse"), *s);
            let json = serde_json::to_string(s).expect("serialize");
            assert_eq!(json, format!("\"{s}\""));
        }
        for s in WorkerStatus::ALL {
            assert_eq!(s.to_string().parse::<WorkerStatus>().expect("parse"), *s);
        }
        for s in LeaseState::ALL {
            assert_eq!(s.as_str().parse::<LeaseState>().expect("parse"), *s);
        }
        assert!("done".parse::<TaskStatus>().is_err());
        assert!("gone".parse::<LeaseState>().is_err());
        assert!(TaskStatus::Failed.is_terminal() && !TaskStatus::Assigned.is_terminal());
        assert!(TaskStatus::Cancelled.is_terminal());
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Its leases ended without results `max_attempts` times.
    MaxAttempts,
    /// All its answers are in and no majority of them is identical: nothing is finalized on a
    /// guess, the answers are kept.
    NoConsensus,
}

impl FailureReason {
    /// The reason as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::MaxAttempts => "max_attempts",
            FailureReason::NoConsensus => "no_consensus",
        }
    }
}

impl FromStr for FailureReason {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max_attempts" => Ok(FailureReason::MaxAttempts),
            "no_consensus" => Ok(FailureReason::NoConsensus),
            other => Err(ProtocolError::invalid(
                "failure_reason",
                format!("unknown reason {other:?}"),
            )),
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
