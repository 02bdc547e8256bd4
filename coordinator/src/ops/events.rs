//! The event log (`GET /dashboard/events`): tasks created, leased, answered, verified,
//! finalized, failed or cancelled, leases that lapsed, workers that joined, went stale or offline
//! or were quarantined, newest first, for all or one task or worker. Read from the rows that
//! record each event (`Views::events`): as durable as the store, and nothing more to write.

use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::tx::Tx;
use protocol::messages::LogEvent;
use protocol::{TaskId, WorkerId};

/// The most entries one read returns.
pub(crate) const MAX_EVENTS: u32 = 500;

/// The newest `limit` events (at most [`MAX_EVENTS`]) of `task` or `worker` if given, at `now`.
///
/// # Errors
/// Store errors only.
pub(crate) fn run(
    tx: &dyn Tx,
    now: i64,
    heartbeat_ttl_ms: i64,
    task: Option<TaskId>,
    worker: Option<&WorkerId>,
    limit: u32,
) -> Result<Vec<LogEvent>, CoreError> {
    let task = task.map(|t| t.to_string());
    let rows = tx.events(
        task.as_deref(),
        worker.map(WorkerId::as_str),
        limit.clamp(1, MAX_EVENTS),
        now,
        heartbeat_ttl_ms,
    )?;
    Ok(rows
        .into_iter()
        .map(|(at, kind, task_id, worker_id, detail)| LogEvent {
            at: from_ms(at),
            kind,
            task_id: task_id.and_then(|t| t.parse().ok()),
            worker_id: worker_id.and_then(|w| w.parse().ok()),
            detail,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use protocol::messages::NewTask;

    fn kinds(events: &[LogEvent]) -> Vec<(&str, Option<&str>)> {
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.worker_id.as_ref().map(WorkerId::as_str)))
            .collect()
    }

    fn the_log_tells_a_task_s_life_newest_first(mut conn: TestStore) {
        let t = add(
            &mut conn,
            1_000,
            NewTask {
                required_submissions: Some(1),
                ..NewTask::text("fine")
            },
        );
        let other = add(&mut conn, 1_500, NewTask::text("other"));
        let l = take(&mut conn, 2_000, "w").remove(0);
        assert_eq!(l.task_id, t);
        let (r, _) = send(&mut conn, 3_000, &t, answer(&l, "w", "positive", 0.9));
        assert!(r.expect("accepted").finalized);
        let log = run(&*conn.tx(), 4_000, 6_000, Some(t), None, 50).expect("log");
        assert_eq!(
            kinds(&log),
            vec![
                ("task finalized", None),
                ("answered", Some("w")),
                ("leased", Some("w")),
                ("task created", None)
            ]
        );
        assert_eq!(log[0].detail, "positive");
        assert_eq!(log[3].at.timestamp_millis(), 1_000);
        let by_worker = run(&*conn.tx(), 4_000, 6_000, None, Some(&wid("w")), 50).expect("log");
        assert_eq!(
            kinds(&by_worker),
            vec![
                ("answered", Some("w")),
                ("leased", Some("w")),
                ("worker joined", Some("w"))
            ]
        );
        let all = run(&*conn.tx(), 4_000, 6_000, None, None, 50).expect("log");
        assert_eq!(all.len(), 6, "{:?}", kinds(&all));
        assert!(all.iter().any(|e| e.task_id == Some(other)));
        // Silent past the TTL: the worker is stale, as of when it was last seen.
        let later = run(&*conn.tx(), 20_000, 6_000, None, Some(&wid("w")), 50).expect("log");
        assert_eq!(kinds(&later)[0], ("worker stale", Some("w")));
        assert!(
            later[0].at.timestamp_millis() >= 8_000,
            "a TTL after it was last seen"
        );
        assert_eq!(
            run(&*conn.tx(), 4_000, 6_000, None, None, 2)
                .expect("log")
                .len(),
            2
        );
    }

    on_both_engines!(the_log_tells_a_task_s_life_newest_first);
}
