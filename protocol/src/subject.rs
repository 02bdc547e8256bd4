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

/// The name every coordinator registers under as a NATS micro service: `$SRV.PING.<name>`,
/// `$SRV.INFO.<name>` and `$SRV.STATS.<name>` reach each running coordinator (`nats micro ls`,
/// `aimarket coordinators`).
pub const SERVICE_NAME: &str = "aimarket-coordinator";

/// The subject on which the coordinator with micro-service id `id` answers with its
/// [`crate::messages::CoordinatorStatus`].
pub fn coordinator_status(prefix: &str, id: &str) -> String {
    format!("{prefix}.coordinators.{id}")
}

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

/// Progress of the generations of one task ([`crate::chat::Progress`]): workers publish, an
/// optimistic stream listens. Not verified.
pub fn progress(prefix: &str, task: &TaskId) -> String {
    format!("{prefix}.progress.{task}")
}

/// Lifecycle events of every task.
pub fn task_events_all(prefix: &str) -> String {
    format!("{prefix}.events.task.*")
}

/// A subject the coordinator serves, parsed once: what the message is, and the token the
/// subject carries (a worker id, a task id, an API operation), still to be validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `<p>.lease`.
    Lease,
    /// `<p>.lease.release`.
    Release,
    /// `<p>.heartbeat.<worker_id>`.
    Heartbeat(&'a str),
    /// `<p>.submit.<task_id>`.
    Submit(&'a str),
    /// `<p>.api.<op>` (the op may hold dots: `task.add`).
    Api(&'a str),
}

impl<'a> Route<'a> {
    /// Parses `subject` under `prefix`; `None` for a subject the coordinator does not serve.
    ///
    /// ```
    /// use protocol::subject::Route;
    /// assert_eq!(Route::parse("aimarket", "aimarket.submit.x"), Some(Route::Submit("x")));
    /// assert_eq!(Route::parse("aimarket", "aimarket.lease"), Some(Route::Lease));
    /// assert_eq!(Route::parse("aimarket", "other.lease"), None);
    /// ```
    pub fn parse(prefix: &str, subject: &'a str) -> Option<Self> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        let (kind, tail) = match rest.split_once('.') {
            Some((kind, tail)) => (kind, Some(tail).filter(|t| !t.is_empty())),
            None => (rest, None),
        };
        Some(match (kind, tail) {
            ("lease", None) => Route::Lease,
            ("lease", Some("release")) => Route::Release,
            ("heartbeat", Some(worker)) => Route::Heartbeat(worker),
            ("submit", Some(task)) => Route::Submit(task),
            ("api", Some(op)) => Route::Api(op),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(
            api("x", ApiOp::TaskAdd),
            "x.api.task.add",
            "ops keep their dots"
        );
        assert_eq!(
            heartbeat("p", &WorkerId::new("w1").expect("id")),
            "p.heartbeat.w1"
        );
    }

    #[test]
    fn every_served_subject_routes_and_nothing_else_does() {
        let w = WorkerId::new("w1").expect("id");
        let t = TaskId::new();
        let ts = t.to_string();
        for (subject, route) in [
            (lease("p"), Some(Route::Lease)),
            (lease_release("p"), Some(Route::Release)),
            (heartbeat("p", &w), Some(Route::Heartbeat("w1"))),
            (submit("p", &t), Some(Route::Submit(ts.as_str()))),
            (api("p", ApiOp::TaskAdd), Some(Route::Api("task.add"))),
            ("p.lease.other".to_owned(), None),
            ("p.submit.".to_owned(), None),
            ("p.heartbeat".to_owned(), None),
            ("p.api".to_owned(), None),
            ("pp.lease".to_owned(), None),
            ("p".to_owned(), None),
            (tasks("p", &crate::TaskType::sentiment()), None),
            (task_event("p", &t), None),
        ] {
            assert_eq!(Route::parse("p", &subject), route, "{subject}");
        }
    }
}
