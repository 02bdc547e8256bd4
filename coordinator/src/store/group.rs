//! Group commit: write operations queue up while the store's thread is busy, and the next batch
//! runs in one transaction, each operation inside its own savepoint (a failing operation rolls
//! back alone), with one commit, so one fsync, for the whole batch. Every operation's result is
//! released only after that commit, so an acknowledgement still means "on disk".

use crate::error::CoreError;
use crate::ops::{Ctx, Effect, Settings};
use crate::store::Store;
use rusqlite::{Connection, TransactionBehavior};
use std::any::Any;
use tokio::sync::{mpsc, oneshot};

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

type Output = Box<dyn Any + Send>;
type Run = Box<dyn FnOnce(&Connection, &mut Ctx) -> Result<Output, CoreError> + Send>;
type Done = oneshot::Sender<Result<(Output, Vec<Effect>), CoreError>>;

struct Job {
    run: Run,
    done: Done,
}

/// Handle to the group-commit writer. Cheap to clone; the writer stops when the last is gone.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer on `store`. Must be called within a tokio runtime.
    pub fn start(store: Store, settings: Settings, now: fn() -> i64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, settings, now, rx));
        Self { jobs: tx }
    }

    /// Runs `op` in the next group transaction; its result and effects once committed.
    ///
    /// # Errors
    /// The operation's error, or the commit's.
    pub async fn write<T, F>(&self, op: F) -> Result<(T, Vec<Effect>), CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Ctx) -> Result<T, CoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let run: Run = Box::new(move |c, ctx| op(c, ctx).map(|t| Box::new(t) as Output));
        self.jobs
            .send(Job { run, done })
            .map_err(|_| CoreError::StoreClosed)?;
        let (out, effects) = result.await.map_err(|_| CoreError::StoreClosed)??;
        let out = out
            .downcast::<T>()
            .expect("a job's output has the type its caller asked for");
        Ok((*out, effects))
    }
}

async fn write_loop(
    store: Store,
    settings: Settings,
    now: fn() -> i64,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let sent = store
            .conn()
            .call_raw(move |conn| run_batch(conn, batch, settings, now))
            .await;
        if sent.is_err() {
            // The connection is gone: the jobs' senders were dropped with the batch, so every
            // caller sees `StoreClosed`.
            tracing::error!("store connection closed; writes stop");
            return;
        }
    }
}

/// Runs a batch in one transaction and answers every job after the commit.
fn run_batch(conn: &mut Connection, batch: Vec<Job>, settings: Settings, now: fn() -> i64) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            let code = e.sqlite_error_code();
            for job in batch {
                let _ = job.done.send(Err(same_error(code, &msg)));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut ctx = Ctx::new(now(), settings);
        let outcome = match tx.savepoint() {
            Ok(mut sp) => match (job.run)(&sp, &mut ctx) {
                Ok(out) => match sp.commit() {
                    Ok(()) => Ok((out, ctx.effects)),
                    Err(e) => Err(CoreError::Store(e)),
                },
                Err(e) => {
                    let _ = sp.rollback();
                    Err(e)
                }
            },
            Err(e) => Err(CoreError::Store(e)),
        };
        results.push((job.done, outcome));
    }
    match tx.commit() {
        Ok(()) => {
            for (done, outcome) in results {
                let _ = done.send(outcome);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let code = e.sqlite_error_code();
            for (done, outcome) in results {
                // Refusals stand (they changed nothing); successes did not happen.
                let _ = done.send(outcome.and(Err(same_error(code, &msg))));
            }
        }
    }
}

/// A copy of a SQLite error for each caller of a failed batch.
fn same_error(code: Option<rusqlite::ErrorCode>, msg: &str) -> CoreError {
    let code = code.unwrap_or(rusqlite::ErrorCode::Unknown);
    CoreError::Store(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error {
            code,
            extended_code: 0,
        },
        Some(msg.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> i64 {
        0
    }

    fn insert(c: &Connection, id: &str) -> Result<(), CoreError> {
        c.execute(
            "INSERT INTO worker (id, status, capabilities, model, last_seen, registered_at)
             VALUES (?1, 'active', '[]', NULL, 0, 0)",
            [id],
        )?;
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_the_rest_commit_together() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("g.db")).await.expect("store");
        let writer = Writer::start(store.clone(), Settings::default(), now);
        // Keep the store's thread busy so the next three queue into one batch.
        let busy = store
            .conn()
            .call_raw(|_| std::thread::sleep(Duration::from_millis(200)));
        let w = writer.clone();
        let (busy, a, b, c) = tokio::join!(
            busy,
            w.write(|c, _| insert(c, "a")),
            writer.write(|c, _| {
                insert(c, "b")?;
                Err::<(), _>(CoreError::TaskNotFound(protocol::TaskId::new()))
            }),
            writer.write(|c, _| insert(c, "c")),
        );
        busy.expect("busy");
        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(CoreError::TaskNotFound(_))));
        let ids: Vec<String> = store
            .conn()
            .call(|c| {
                c.prepare("SELECT id FROM worker ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, rusqlite::Error>>()
            })
            .await
            .expect("read");
        assert_eq!(ids, ["a", "c"], "the failed job's insert survived");
    }
}
