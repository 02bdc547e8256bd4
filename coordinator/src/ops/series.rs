//! The dashboard's charts from the store: tasks finalized and failed per minute over the last
//! hour, and their mean latency (creation to finish). The API's requests per minute are counted
//! in memory by the HTTP adapter (`metrics::PerMinute`).

use crate::error::CoreError;
use crate::store::tx::Tx;
use serde::Serialize;

/// The minutes a chart covers.
pub(crate) const MINUTES: i64 = 60;

/// One minute of finished tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TaskMinute {
    /// Its start, ms since the epoch.
    pub(crate) minute: i64,
    pub(crate) finalized: u64,
    pub(crate) failed: u64,
    /// Mean milliseconds from creation to finish.
    pub(crate) mean_latency_ms: f64,
}

/// The last [`MINUTES`] minutes up to `now` (ms), oldest first; minutes without a finished task
/// are left out.
///
/// # Errors
/// Store errors only.
pub(crate) fn tasks(tx: &dyn Tx, now: i64) -> Result<Vec<TaskMinute>, CoreError> {
    let since = (now / 60_000 - (MINUTES - 1)) * 60_000;
    Ok(tx
        .finished_by_minute(since)?
        .into_iter()
        .map(|(minute, finalized, failed, mean)| TaskMinute {
            minute,
            finalized,
            failed,
            mean_latency_ms: mean,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use protocol::messages::NewTask;

    fn counts_finished_tasks_by_minute(mut conn: TestStore) {
        let t = add(
            &mut conn,
            1_000,
            NewTask {
                required_submissions: Some(1),
                ..NewTask::text("fine")
            },
        );
        let _queued = add(&mut conn, 1_000, NewTask::text("waits"));
        let l = take(&mut conn, 61_500, "w").remove(0);
        assert_eq!(l.task_id, t);
        let (r, _) = send(&mut conn, 61_500, &t, answer(&l, "w", "positive", 0.9));
        assert!(r.expect("accepted").finalized);
        let got = tasks(&*conn.tx(), 62_000).expect("series");
        assert_eq!(
            got,
            vec![TaskMinute {
                minute: 60_000,
                finalized: 1,
                failed: 0,
                mean_latency_ms: 60_500.0
            }]
        );
        let later = tasks(&*conn.tx(), 62_000 + MINUTES * 60_000).expect("series");
        assert!(later.is_empty(), "out of the window: {later:?}");
    }

    on_both_engines!(counts_finished_tasks_by_minute);
}
