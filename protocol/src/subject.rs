//! Every NATS subject aimarket uses, built from a configurable prefix (default `aimarket`).
//!
//! | subject | kind |
//! |---|---|
//! | `<p>.tasks.<type>` | publish: a task is ready (a hint, never the only way to get work) |
//! | `<p>.lease` | request-reply: ask for leases |
//! | `<p>.lease.release` | request-reply: give leases back |
//! | `<p>.heartbeat.<worker_id>` | publish (or request, to learn the coordinator's timings) |
//! | `<p>.submit.<task_id>` | request-reply: a result |
//! | `<p>.api.<op>` | request-reply: clients (CLI, gateway) |
//! | `<p>.events.task.<task_id>` | publish: a task finalized or failed |

use crate::ids::{TaskId, TaskType, WorkerId};
use crate::messages::ApiOp;

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "aimarket";
/// The queue group coordinators share, so a request is answered once even with several running.
pub const COORDINATOR_QUEUE: &str = "aimarket-coordinator";

/// Where announcements of tasks of type `task_type` are published.
pub fn tasks(prefix: &str, task_type: &TaskType) -> String {
    format!("{prefix}.tasks.{task_type}")
}

/// Lease requests.
pub fn lease(prefix: &str) -> String {
    format!("{prefix}.lease")
}

/// Lease releases.
pub fn lease_release(prefix: &str) -> String {
    format!("{prefix}.lease.release")
}

/// One worker's heartbeats.
pub fn heartbeat(prefix: &str, worker: &WorkerId) -> String {
    format!("{prefix}.heartbeat.{worker}")
}

/// All heartbeats (the coordinator's subscription).
pub fn heartbeat_all(prefix: &str) -> String {
    format!("{prefix}.heartbeat.*")
}

/// Submissions for one task.
pub fn submit(prefix: &str, task: &TaskId) -> String {
    format!("{prefix}.submit.{task}")
}

/// All submissions (the coordinator's subscription).
pub fn submit_all(prefix: &str) -> String {
    format!("{prefix}.submit.*")
}

/// One client API operation.
pub fn api(prefix: &str, op: ApiOp) -> String {
    format!("{prefix}.api.{}", op.as_str())
}

/// All client API operations (the coordinator's subscription).
pub fn api_all(prefix: &str) -> String {
    format!("{prefix}.api.>")
}

/// Lifecycle events of one task.
pub fn task_event(prefix: &str, task: &TaskId) -> String {
    format!("{prefix}.events.task.{task}")
}

/// Lifecycle events of every task.
pub fn task_events_all(prefix: &str) -> String {
    format!("{prefix}.events.task.*")
}

/// What follows `<prefix>.<kind>.` in `subject`, if `subject` has that shape.
///
/// `tail("aimarket", "submit", "aimarket.submit.x")` is `Some("x")`.
pub fn tail<'a>(prefix: &str, kind: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_prefix(kind)?
        .strip_prefix('.')
        .filter(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_tails() {
        let t = TaskId::new();
        let s = submit("aimarket", &t);
        assert_eq!(tail("aimarket", "submit", &s), Some(t.to_string().as_str()));
        assert_eq!(
            api("x", ApiOp::TaskAdd),
            "x.api.task.add",
            "ops keep their dots"
        );
        assert_eq!(tail("x", "api", "x.api.task.add"), Some("task.add"));
        assert_eq!(tail("x", "api", "x.api."), None);
        assert_eq!(tail("x", "api", "xy.api.stats"), None);
        assert_eq!(
            heartbeat("p", &WorkerId::new("w1").expect("id")),
            "p.heartbeat.w1"
        );
    }
}
