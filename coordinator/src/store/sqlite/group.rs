//! Group commit: write operations queue up while the writer's thread is busy, and the next batch
//! runs in one transaction, each operation inside its own savepoint (a failing operation rolls
//! back alone), with one commit, so one fsync, for the whole batch. Every operation's result is
//! released only after that commit, so an acknowledgement still means "on disk".
//!
//! Urgent operations (lease requests, which a worker waits on with nothing else to do) skip the
//! queue: they run in a batch of their own before any queued normal work, and a normal batch
//! that is running when one arrives runs it next, commits, and leaves the rest for later. Without
//! this a lease waits behind every submission queued ahead of it (a closed loop of workers keeps
//! about a hundred in flight), and its latency is that queue's length divided by the throughput.

use crate::error::CoreError;
use crate::metrics::{LaneLabels, Metrics};
use crate::store::sql::Sql;
use crate::store::Lane;
use crate::store::Store;
use rusqlite::{Connection, TransactionBehavior};
use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

type Output = Box<dyn Any + Send>;
type Run = Box<dyn FnOnce(&dyn Sql) -> Result<Output, CoreError> + Send>;
type Outcome = Result<Output, CoreError>;
type Done = oneshot::Sender<Outcome>;

struct Job {
    run: Run,
    done: Done,
    lane: Lane,
    sent: Instant,
}

/// Handle to the group-commit writer. Cheap to clone; the writer stops when the last is gone.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    /// Urgent jobs sent and not yet taken into a batch; a running normal batch polls it.
    urgent: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer on its own thread, with `store`'s write connection, recording its
    /// queueing, batch sizes and commits in `metrics`. It runs opaque jobs: what they do, and
    /// the context they do it in, is their callers' business.
    ///
    /// # Panics
    /// When `store` already has a writer, or no thread can be started.
    pub(crate) fn start(store: &Store, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let urgent = Arc::new(AtomicUsize::new(0));
        let pending = urgent.clone();
        store.start_writer(move |conn| {
            std::thread::Builder::new()
                .name("store-writer".to_owned())
                .spawn(move || {
                    let env = Env { metrics };
                    write_loop(conn, &env, rx, &pending);
                })
                .expect("the store writer's thread starts")
        });
        Self { jobs: tx, urgent }
    }

    /// Runs `op` in the next group transaction of its lane; its result once committed.
    ///
    /// # Errors
    /// The operation's error, or the commit's.
    pub(crate) async fn write<T, F>(&self, lane: Lane, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let run: Run = Box::new(move |c| op(c).map(|t| Box::new(t) as Output));
        if lane == Lane::Urgent {
            self.urgent.fetch_add(1, Ordering::SeqCst);
        }
        let job = Job {
            run,
            done,
            lane,
            sent: Instant::now(),
        };
        if self.jobs.send(job).is_err() {
            if lane == Lane::Urgent {
                self.urgent.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(CoreError::StoreClosed);
        }
        let out = result.await.map_err(|_| CoreError::StoreClosed)??;
        let out = out
            .downcast::<T>()
            .expect("a job's output has the type its caller asked for");
        Ok(*out)
    }
}

/// The jobs received and not yet run, by lane, and the channel they come from.
struct Inbox<'a> {
    rx: mpsc::UnboundedReceiver<Job>,
    /// False once every [`Writer`] is gone.
    open: bool,
    normal: VecDeque<Job>,
    urgent: Vec<Job>,
    /// Urgent jobs sent and not yet taken (shared with the [`Writer`]s).
    pending: &'a AtomicUsize,
}

impl Inbox<'_> {
    /// Waits for a job if none is queued, then takes every job already sent. False when every
    /// [`Writer`] is gone and nothing is left to run.
    fn fill(&mut self) -> bool {
        if self.normal.is_empty() && self.urgent.is_empty() {
            match self.rx.blocking_recv() {
                Some(job) => self.push(job),
                None => return false,
            }
        }
        self.take_sent();
        true
    }

    fn take_sent(&mut self) {
        while self.open {
            match self.rx.try_recv() {
                Ok(job) => self.push(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    fn push(&mut self, job: Job) {
        match job.lane {
            Lane::Normal => self.normal.push_back(job),
            Lane::Urgent => self.urgent.push(job),
        }
    }

    /// Whether an urgent job has been sent and not yet taken.
    fn urgent_waiting(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// Every urgent job sent so far.
    fn take_urgent(&mut self) -> Vec<Job> {
        self.take_sent();
        self.pending.fetch_sub(self.urgent.len(), Ordering::SeqCst);
        std::mem::take(&mut self.urgent)
    }

    /// The next batch: every waiting urgent job, else up to [`MAX_BATCH`] normal ones.
    fn next_batch(&mut self) -> Vec<Job> {
        if self.urgent.is_empty() {
            let n = self.normal.len().min(MAX_BATCH);
            self.normal.drain(..n).collect()
        } else {
            self.take_urgent()
        }
    }

    /// Puts back, at the front and in order, normal jobs a cut-short batch did not run.
    fn put_back(&mut self, jobs: impl DoubleEndedIterator<Item = Job>) {
        for job in jobs.rev() {
            self.normal.push_front(job);
        }
    }
}

/// What the writer records into.
struct Env {
    metrics: Arc<Metrics>,
}

/// Runs batches until every [`Writer`] is dropped and the queued jobs are done.
fn write_loop(
    mut conn: Connection,
    env: &Env,
    rx: mpsc::UnboundedReceiver<Job>,
    pending: &AtomicUsize,
) {
    let mut inbox = Inbox {
        rx,
        open: true,
        normal: VecDeque::new(),
        urgent: Vec::new(),
        pending,
    };
    let mut seen = None;
    while inbox.fill() {
        let batch = inbox.next_batch();
        run_batch(&mut conn, batch, env, &mut inbox, &mut seen);
    }
}

/// Runs a batch in one transaction and answers every job it ran after the commit. When an urgent
/// job arrives during a normal batch, the batch runs it (and any other waiting) after its current
/// job and commits; the normal jobs it did not run go back to the head of the queue.
/// `seen` is the store's `data_version` as of this writer's last batch.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    env: &Env,
    inbox: &mut Inbox<'_>,
    seen: &mut Option<i64>,
) {
    let begun = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .and_then(|tx| note_other_writers(&tx, seen).map(|()| tx));
    let mut tx = match begun {
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
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        let lane = job.lane;
        results.push(run_job(&mut tx, job, env));
        if lane == Lane::Normal && inbox.urgent_waiting() {
            for job in inbox.take_urgent() {
                results.push(run_job(&mut tx, job, env));
            }
            inbox.put_back(jobs);
            break;
        }
    }
    let committing = Instant::now();
    let committed = tx.commit();
    env.metrics
        .store_commit
        .observe(committing.elapsed().as_secs_f64());
    env.metrics.store_batch.observe(results.len() as f64);
    match committed {
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

/// Forgets what this connection remembers about the store (its lease cursors) when another
/// connection, such as a second coordinator on the same file, has written since this writer's
/// last batch: `PRAGMA data_version` changes only with other connections' commits.
fn note_other_writers(conn: &Connection, seen: &mut Option<i64>) -> rusqlite::Result<()> {
    let version: i64 = conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?;
    if *seen != Some(version) {
        if seen.is_some() {
            tracing::info!("another connection wrote to the store; lease cursors start over");
        }
        conn.execute_batch("DELETE FROM temp.lease_cursor;")?;
        *seen = Some(version);
    }
    Ok(())
}

/// Runs one job in its own savepoint of `tx`: rolled back alone if it fails, or if it panics
/// (a bug in one operation fails that request, not the writer and every request after it).
fn run_job(tx: &mut rusqlite::Transaction<'_>, job: Job, env: &Env) -> (Done, Outcome) {
    env.metrics
        .store_queue
        .get_or_create(&LaneLabels {
            lane: job.lane.as_str(),
        })
        .observe(job.sent.elapsed().as_secs_f64());
    let outcome = match tx.savepoint() {
        Ok(mut sp) => match crate::store::guarded(|| (job.run)(&sp)) {
            Ok(out) => match sp.commit() {
                Ok(()) => Ok(out),
                Err(e) => Err(CoreError::Store(e.into())),
            },
            Err(e) => {
                let _ = sp.rollback();
                Err(e)
            }
        },
        Err(e) => Err(CoreError::Store(e.into())),
    };
    (job.done, outcome)
}

/// A copy of a SQLite error for each caller of a failed batch.
fn same_error(code: Option<rusqlite::ErrorCode>, msg: &str) -> CoreError {
    let code = code.unwrap_or(rusqlite::ErrorCode::Unknown);
    CoreError::Store(
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: 0,
            },
            Some(msg.to_owned()),
        )
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;
    use std::time::Duration;

    fn insert(c: &dyn Sql, id: &str) -> Result<(), CoreError> {
        c.execute(
            "INSERT INTO worker (id, status, capabilities, model, last_seen, registered_at)
             VALUES ($1, 'active', '[]', NULL, 0, 0)",
            [id],
        )?;
        Ok(())
    }

    /// The ids of the `worker` rows, as committed.
    async fn worker_ids(store: &Store) -> Vec<String> {
        store
            .conn()
            .expect("a SQLite store")
            .call(|c| {
                c.prepare("SELECT id FROM worker ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, rusqlite::Error>>()
            })
            .await
            .expect("read")
    }

    async fn writer() -> (tempfile::TempDir, Store, Writer) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("g.db")).await.expect("store");
        let writer = Writer::start(&store, Arc::default());
        (dir, store, writer)
    }

    /// A job that says when it starts and then holds the writer until told to go on.
    struct Gate {
        started: std_mpsc::Receiver<()>,
        go: std_mpsc::Sender<()>,
    }

    impl Gate {
        fn job(
            order: &Arc<Mutex<Vec<&'static str>>>,
            name: &'static str,
        ) -> (
            Self,
            impl FnOnce(&dyn Sql) -> Result<(), CoreError> + Send + 'static,
        ) {
            let (started_tx, started) = std_mpsc::channel();
            let (go, go_rx) = std_mpsc::channel::<()>();
            let order = order.clone();
            let job = move |_: &dyn Sql| {
                order.lock().expect("order").push(name);
                started_tx.send(()).expect("test waits");
                go_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("test lets the job go on");
                Ok(())
            };
            (Self { started, go }, job)
        }

        /// A job holding the writer, sent and started: what is sent next queues behind it.
        fn hold(writer: &Writer, order: &Arc<Mutex<Vec<&'static str>>>) -> (Self, Sent<()>) {
            let (gate, hold) = Self::job(order, "hold");
            let held = send(writer, Lane::Normal, hold);
            gate.wait_started();
            (gate, held)
        }

        fn wait_started(&self) {
            self.started
                .recv_timeout(Duration::from_secs(30))
                .expect("the job starts");
        }

        fn open(&self) {
            self.go.send(()).expect("job waits");
        }
    }

    fn record(
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> impl FnOnce(&dyn Sql) -> Result<(), CoreError> + Send + 'static {
        let order = order.clone();
        move |_| {
            order.lock().expect("order").push(name);
            Ok(())
        }
    }

    /// A write sent to the writer, its result to come.
    type Sent<T> = futures::future::BoxFuture<'static, Result<T, CoreError>>;

    /// Sends a write to the writer now (a write is sent when first polled) and returns the
    /// future of its result.
    fn send<T: Send + 'static>(
        writer: &Writer,
        lane: Lane,
        op: impl FnOnce(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    ) -> Sent<T> {
        let writer = writer.clone();
        let mut fut = async move { writer.write(lane, op).await }.boxed();
        assert!(
            (&mut fut).now_or_never().is_none(),
            "a write waits for its commit"
        );
        fut
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_the_rest_commit_together() {
        let (_dir, store, writer) = writer().await;
        let order = Arc::default();
        // Hold the writer so the next three queue into one batch.
        let (gate, held) = Gate::hold(&writer, &order);
        let a = send(&writer, Lane::Normal, |c| insert(c, "a"));
        let b = send(&writer, Lane::Normal, |c| {
            insert(c, "b")?;
            Err::<(), _>(CoreError::TaskNotFound(protocol::TaskId::new()))
        });
        let c = send(&writer, Lane::Normal, |c| insert(c, "c"));
        gate.open();
        let (held, a, b, c) = tokio::join!(held, a, b, c);
        assert!(held.is_ok() && a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(CoreError::TaskNotFound(_))));
        let ids = worker_ids(&store).await;
        assert_eq!(ids, ["a", "c"], "the failed job's insert survived");
    }

    #[tokio::test]
    async fn urgent_jobs_run_before_normal_jobs_queued_ahead_of_them() {
        let (_dir, _store, writer) = writer().await;
        let order = Arc::default();
        let (gate, held) = Gate::hold(&writer, &order);
        let n1 = send(&writer, Lane::Normal, record(&order, "n1"));
        let n2 = send(&writer, Lane::Normal, record(&order, "n2"));
        let u = send(&writer, Lane::Urgent, record(&order, "u"));
        gate.open();
        let results = futures::future::join_all([held, n1, n2, u]).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(*order.lock().expect("order"), ["hold", "u", "n1", "n2"]);
    }

    #[tokio::test]
    async fn an_urgent_job_cuts_a_running_batch_short_and_the_rest_still_runs() {
        let (_dir, store, writer) = writer().await;
        let order = Arc::default();
        let (first, held) = Gate::hold(&writer, &order);
        // One batch of three, the first of which holds the writer until the urgent job is sent.
        let (second, n1) = Gate::job(&order, "n1");
        let n1 = send(&writer, Lane::Normal, n1);
        let n2 = {
            let order = order.clone();
            send(&writer, Lane::Normal, move |c| {
                insert(c, "n2")?;
                order.lock().expect("order").push("n2");
                Ok(())
            })
        };
        let n3 = send(&writer, Lane::Normal, record(&order, "n3"));
        first.open();
        second.wait_started();
        let u = send(&writer, Lane::Urgent, record(&order, "u"));
        second.open();
        let results = futures::future::join_all([held, n1, n2, n3, u]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            *order.lock().expect("order"),
            ["hold", "n1", "u", "n2", "n3"]
        );
        assert_eq!(
            worker_ids(&store).await,
            ["n2"],
            "a job put back after a cut still commits"
        );
    }

    #[tokio::test]
    async fn a_write_by_another_connection_clears_the_lease_cursors() {
        let (dir, _store, writer) = writer().await;
        let cursors = |c: &dyn Sql| -> Result<i64, CoreError> {
            Ok(c.query_row("SELECT COUNT(*) FROM temp.lease_cursor", (), |r| r.get(0))?)
        };
        writer
            .write(Lane::Normal, |c| {
                c.execute(
                    "INSERT INTO temp.lease_cursor (worker_id, type, after, since) VALUES ('w', 't', 7, 0)",
                    (),
                )?;
                Ok(())
            })
            .await
            .expect("cursor");
        let n = writer.write(Lane::Normal, cursors).await.expect("count");
        assert_eq!(n, 1, "the writer's own commits keep its cursors");
        let other = Connection::open(dir.path().join("g.db")).expect("second connection");
        insert(&other, "elsewhere").expect("write elsewhere");
        let n = writer.write(Lane::Normal, cursors).await.expect("count");
        assert_eq!(n, 0, "cursors kept after another connection wrote");
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_writer_goes_on() {
        let (_dir, store, writer) = writer().await;
        let (busted, fine) = tokio::join!(
            writer.write(Lane::Normal, |c| -> Result<(), CoreError> {
                insert(c, "half-done")?;
                panic!("a bug in an operation");
            }),
            writer.write(Lane::Normal, |c| insert(c, "fine")),
        );
        assert!(
            matches!(&busted, Err(CoreError::Bug(m)) if m.contains("a bug")),
            "{busted:?}"
        );
        assert!(fine.is_ok());
        writer
            .write(Lane::Normal, |c| insert(c, "later"))
            .await
            .expect("the writer still writes");
        let ids = worker_ids(&store).await;
        assert_eq!(
            ids,
            ["fine", "later"],
            "the panicking job's insert survived"
        );
    }
}
