//! The PostgreSQL store: several coordinators over one database.
//!
//! Writes run on a few writer threads per coordinator, each with its own session, under READ
//! COMMITTED. Operations that say what they lock first (a submission its task, a lease its
//! worker) queue by lane and run in batches of up to 32 in one transaction, sorted by that key,
//! so batches of different sessions take their rows' locks in one order; any other operation
//! runs alone. An operation that fails before changing anything leaves its batch be; one that
//! fails after is answered with its error and the batch runs again without it; a statement the
//! server refuses sends the batch back one operation per transaction. No savepoints: they cost a
//! round trip each and a subtransaction. The operations lock the task row they decide on first
//! (`FOR NO KEY UPDATE`, see `lock_suffix` on `dyn Sql`), lease with `SKIP LOCKED` (a lease
//! never waits on a task row) and guarded counter updates, so two coordinators never both
//! finalize a task or lease past its free slots. Deadlock (40P01), serialization (40001) and
//! lock-timeout (55P03) failures are rolled back and run again. A commit whose outcome is
//! unknown (the connection lost during `COMMIT`) is answered [`CoreError::CommitUnknown`]
//! (`unavailable`), never `ok`, for every operation of the batch.
//!
//! Sessions carry `idle_in_transaction_session_timeout`, `lock_timeout` and
//! `statement_timeout`, so a frozen coordinator cannot hold locks for long, and an
//! `application_name` naming the coordinator. Lease expiry and staleness use the database's
//! clock, read once per transaction. Reads run on a pool of read-only connections, each read in
//! one snapshot (REPEATABLE READ).

use crate::error::{CoreError, StoreError, CONFLICT_SQLSTATES};
use crate::store::postgres::conn::{lock, Conn, Reads};
use crate::store::postgres::PgPipe;
use crate::store::sql::Sql;
use crate::store::Lane;
use crate::store::Probe;
use std::any::Any;
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Writer sessions per coordinator. Two: with the batch's votes and decisions one statement
/// each, fewer and larger batches (fewer commits, fewer reads ahead) did better than four.
const WRITERS: usize = 2;
/// Runs of one operation before a conflict is reported.
const ATTEMPTS: u32 = 8;
/// Most operations in one transaction. A batch holds the row locks its operations take until it
/// commits: other sessions' operations on those rows wait that long.
const MAX_BATCH: usize = 32;
/// Planner settings of the writer sessions. Every statement they run finds its rows by key or
/// by an index made for it; a plan made while the tables looked empty (a new database, the first
/// statements of a coordinator) would otherwise scan a table or hash it whole, and such a plan
/// stays until the table is analyzed. A set statement joined by key (a batch's votes) is such a
/// plan on empty tables: with sequential scans priced out it is an index lookup per row.
pub(crate) const WRITER_SETTINGS: &[(&str, &str)] = &[("enable_seqscan", "off")];
/// The key of the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6169_6d61_726b_0001;
/// The key of the advisory lock one sweep at a time takes.
pub(crate) const SWEEP_LOCK: i64 = 0x6169_6d61_726b_0002;

/// Each entry takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    // Points awarded at finalization, appended (every finalization of the same workers would
    // otherwise update, and lock until commit, the same few worker_score rows: one finalization
    // at a time across all coordinators); the sweeper folds them into worker_score.
    "CREATE TABLE score_delta (
         id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         worker_id TEXT   NOT NULL,
         points    BIGINT NOT NULL
     );
     CREATE INDEX score_delta_by_worker ON score_delta (worker_id);",
    // A statement's generic plan is often made while its tables are still empty, and it stays
    // until they are analyzed: by a worker-only index, the lookup of one worker's submission on
    // a task became a walk over all of that worker's submissions. Either index now finds it
    // exactly.
    "DROP INDEX submission_by_worker;
     CREATE INDEX submission_by_worker ON submission (worker_id, task_id);",
    // The lease cursors (see `lease_cursor` in the SQLite schema), one table for every session
    // of every coordinator, so a worker's cursor is where its last lease left it whichever
    // session served it. Unlogged: a crash empties it, and a missing cursor only means a walk
    // from the head.
    "CREATE UNLOGGED TABLE lease_cursor (
         worker_id TEXT   NOT NULL,
         type      TEXT   NOT NULL,
         after     BIGINT NOT NULL,
         since     BIGINT NOT NULL,
         PRIMARY KEY (worker_id, type)
     );",
    // An open task is stored `queued`, leased or not (`assigned` is derived from its live
    // leases), and the open-task index names no counter: a lease or a vote then changes no
    // indexed column, so PostgreSQL updates the row in place (HOT) instead of adding an entry
    // to each of the task's indexes at every change. The lease walk checks the counters on
    // the row.
    "UPDATE task SET status = 'queued' WHERE status = 'assigned';
     DROP INDEX task_open;
     CREATE INDEX task_open ON task (type, seq) WHERE status IN ('queued', 'assigned');",
    // Every per-worker counter is appended like the points (store::tx::Scores): trap and gold
    // counts too, so no rule updates a score row in place.
    "ALTER TABLE score_delta ADD COLUMN traps_caught BIGINT NOT NULL DEFAULT 0,
                             ADD COLUMN traps_missed BIGINT NOT NULL DEFAULT 0,
                             ADD COLUMN gold_answered BIGINT NOT NULL DEFAULT 0,
                             ADD COLUMN gold_right BIGINT NOT NULL DEFAULT 0;",
    // The posterior policy (see the SQLite migration of the same name): thresholds, posteriors,
    // weights, lone finalizations, the trust reset, and the calibration counts.
    "ALTER TABLE task ADD COLUMN threshold DOUBLE PRECISION,
                     ADD COLUMN posterior DOUBLE PRECISION,
                     ADD COLUMN lone_worker TEXT,
                     DROP CONSTRAINT task_policy_check,
                     ADD CONSTRAINT task_policy_check
                         CHECK (policy IN ('quorum', 'majority', 'posterior'));
     CREATE INDEX task_lone_worker ON task (lone_worker) WHERE lone_worker IS NOT NULL;
     ALTER TABLE submission ADD COLUMN weight DOUBLE PRECISION;
     ALTER TABLE worker ADD COLUMN caught_at BIGINT;
     CREATE TABLE calibration (
         model_hash TEXT             NOT NULL,
         type       TEXT             NOT NULL,
         label      TEXT             NOT NULL,
         bin        BIGINT           NOT NULL,
         answered   BIGINT           NOT NULL,
         correct    BIGINT           NOT NULL,
         conf_sum   DOUBLE PRECISION NOT NULL,
         sq_err     DOUBLE PRECISION NOT NULL,
         PRIMARY KEY (model_hash, type, label, bin)
     );",
    // What the OpenAI-compatible API shows of an answer (see the SQLite migration).
    "ALTER TABLE submission ADD COLUMN token_ends BYTEA,
                           ADD COLUMN input_tokens BIGINT;",
    // Whether a verifier's scoring was exact (see the SQLite migration).
    "ALTER TABLE verification ADD COLUMN exact BIGINT;",
    // The posterior policy's confusion rows (see the SQLite migration).
    "CREATE TABLE confusion (
         model_hash TEXT   NOT NULL,
         type       TEXT   NOT NULL,
         answered   TEXT   NOT NULL,
         truth      TEXT   NOT NULL,
         answers    BIGINT NOT NULL,
         PRIMARY KEY (model_hash, type, answered, truth)
     );
     INSERT INTO confusion (model_hash, type, answered, truth, answers)
         SELECT COALESCE(a.model_hash, a.model, ''), a.type, a.answer, g.answer, COUNT(*)
         FROM gold_answer a JOIN gold g ON g.id = a.gold_id
         WHERE a.correct = 0 AND a.type IN (SELECT DISTINCT type FROM calibration)
         GROUP BY 1, 2, 3, 4;",
];

/// The session settings of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A transaction left idle this long is ended by the server (its locks freed).
    pub idle_in_transaction: Duration,
    /// Longest wait for a row lock before 55P03 (retried).
    pub lock: Duration,
    /// Longest statement.
    pub statement: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle_in_transaction: Duration::from_secs(10),
            lock: Duration::from_secs(5),
            statement: Duration::from_secs(30),
        }
    }
}

/// The PostgreSQL store's connections.
pub(crate) struct PgStore {
    config: tokio_postgres::Config,
    reads: Reads,
    /// What the URL names, without its password (for logs and status).
    shown: String,
}

impl PgStore {
    /// Connects to `url`, migrating the schema under an advisory lock (coordinators starting
    /// together do not race), and opens the read pool. Blocking.
    ///
    /// # Errors
    /// [`StoreError`] for a bad URL, an unreachable server, or a schema from a newer build.
    pub(crate) fn open(url: &str, app: &str, timeouts: Timeouts) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            let shown = crate::store::without_password(url);
            StoreError::Config(format!("{shown:?} is not a PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name(app);
        config.options(format!(
            "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c statement_timeout={}",
            timeouts.idle_in_transaction.as_millis(),
            timeouts.lock.as_millis(),
            timeouts.statement.as_millis()
        ));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let mut first = Conn::new(config.clone());
        first.connect()?;
        migrate(&first)?;
        let reads = Reads::new(config.clone());
        reads.keep(first);
        let shown = format!(
            "postgres {}:{}/{}",
            config
                .get_hosts()
                .first()
                .map_or_else(String::new, |h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                }),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or("postgres")
        );
        Ok(Self {
            config,
            reads,
            shown,
        })
    }

    /// The database, for logs and status (no password).
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `op` in one read-only snapshot, with the database's clock. Blocking.
    ///
    /// # Errors
    /// `op`'s, or the store's (`unavailable` while the server is unreachable).
    pub(crate) fn read<T>(
        &self,
        op: impl FnOnce(&dyn Sql, i64) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        self.reads.read(op)
    }
}

/// Brings the schema up to date inside one transaction holding [`MIGRATION_LOCK`].
fn migrate(conn: &Conn) -> Result<(), StoreError> {
    let pipe = conn.pipe(PgPipe::begin);
    let tx: &dyn Sql = &pipe;
    let out = (|| {
        tx.query_row("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK], |_| {
            Ok(())
        })?;
        tx.exec_batch(
            "CREATE TABLE IF NOT EXISTS aimarket_schema (version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM aimarket_schema",
            (),
            |r| r.get(0),
        )?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.exec_batch(sql)?;
            tx.execute(
                "INSERT INTO aimarket_schema (version) VALUES ($1)",
                [i as i64 + 1],
            )?;
            tracing::info!(version = i + 1, "postgres schema migrated");
        }
        Ok(())
    })();
    match out {
        Ok(()) => Ok(pipe.commit()?),
        Err(e) => {
            pipe.rollback();
            Err(e)
        }
    }
}

type Output = Box<dyn Any + Send>;
type Run = Box<dyn FnMut(&dyn Sql) -> Result<Output, CoreError> + Send>;
type Outcome = Result<Output, CoreError>;

struct Job {
    run: Run,
    done: oneshot::Sender<Outcome>,
    key: Option<String>,
    probe: Option<Probe>,
}

impl Job {
    fn finish(self, outcome: Outcome) {
        // The caller may have given up waiting; the outcome stands either way.
        let _ = self.done.send(outcome);
    }
}

/// Answers every job of `jobs` with the error `error` makes.
fn fail_all(jobs: Vec<Job>, error: impl Fn() -> CoreError) {
    for job in jobs {
        job.finish(Err(error()));
    }
}

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Job>,
    normal: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// Closes the queues when the last [`Writer`] goes: the threads finish what is queued and stop.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.0.queues).closed = true;
        self.0.ready.notify_all();
    }
}

/// Handle to the writer threads. Cheap to clone; they stop when the last is gone.
#[derive(Clone)]
pub(crate) struct Writer {
    handle: Arc<Handle>,
}

impl Writer {
    /// Starts the writer threads (`WRITERS`, two), each with its own session.
    ///
    /// # Panics
    /// When no thread can be started.
    pub(crate) fn start(store: &Arc<PgStore>) -> Self {
        let shared = Arc::new(Shared::default());
        let mut config = store.config.clone();
        let settings: Vec<String> = WRITER_SETTINGS
            .iter()
            .map(|(name, value)| format!("-c {name}={value}"))
            .collect();
        let options = format!(
            "{} {}",
            config.get_options().unwrap_or_default(),
            settings.join(" ")
        );
        config.options(options.trim());
        for i in 0..WRITERS {
            let shared = shared.clone();
            let mut session = Session(Conn::new(config.clone()));
            std::thread::Builder::new()
                .name(format!("pg-writer-{i}"))
                .spawn(move || {
                    while let Some(batch) = next_batch(&shared) {
                        session.run(batch);
                    }
                })
                .expect("a writer thread starts");
        }
        Self {
            handle: Arc::new(Handle(shared)),
        }
    }

    /// Runs `op` in a write transaction, with other operations of its lane that carry a `key`
    /// (in the order of their keys), or alone without one; again, from the start, after a
    /// conflict. Its result once committed. `probe` is the read `op` makes first, made for the
    /// whole batch in one statement.
    ///
    /// # Errors
    /// `op`'s, or the store's.
    pub(crate) async fn write<T, F>(
        &self,
        lane: Lane,
        key: Option<String>,
        probe: Option<Probe>,
        mut op: F,
    ) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnMut(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let run: Run = Box::new(move |c| op(c).map(|t| Box::new(t) as Output));
        let job = Job {
            run,
            done,
            key,
            probe,
        };
        {
            let shared = &self.handle.0;
            let mut queues = lock(&shared.queues);
            match lane {
                Lane::Urgent => queues.urgent.push_back(job),
                Lane::Normal => queues.normal.push_back(job),
            }
            shared.ready.notify_one();
        }
        let out = result.await.map_err(|_| CoreError::StoreClosed)??;
        Ok(*out
            .downcast::<T>()
            .expect("a job's output has the type its caller asked for"))
    }
}

/// The next batch a writer runs, urgent work first: the job at the head of its queue and, when
/// it has a key, the keyed jobs right behind it (up to [`MAX_BATCH`]), sorted by key. `None`
/// once the queues are closed and empty.
fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let mut queues = lock(&shared.queues);
    loop {
        let queues_ = &mut *queues;
        let queue = if !queues_.urgent.is_empty() {
            &mut queues_.urgent
        } else if !queues_.normal.is_empty() {
            &mut queues_.normal
        } else if queues_.closed {
            return None;
        } else {
            queues = shared
                .ready
                .wait(queues)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        };
        let mut batch = vec![queue.pop_front().expect("a queue with work")];
        if batch[0].key.is_some() {
            while batch.len() < MAX_BATCH && queue.front().is_some_and(|j| j.key.is_some()) {
                batch.extend(queue.pop_front());
            }
        }
        if !queues_.urgent.is_empty() || !queues_.normal.is_empty() {
            shared.ready.notify_one();
        }
        batch.sort_by(|a, b| a.key.cmp(&b.key));
        return Some(batch);
    }
}

/// Why a batch did not commit.
enum Failure {
    /// Operation `i` failed after changing rows: its error is its answer, the others run again
    /// without it.
    Refused(usize, CoreError),
    /// The transaction failed (a statement refused, a conflict, the connection lost).
    Batch(CoreError),
    /// The connection was lost during `COMMIT`: the server may or may not have committed.
    CommitUnknown(String),
}

/// Whether a failed run may simply run again: a conflict with another transaction.
fn conflict(e: &CoreError) -> bool {
    matches!(e, CoreError::Store(e) if e.sqlstate().is_some_and(|c| CONFLICT_SQLSTATES.contains(&c)))
}

/// One writer thread's session (see [`Conn`]).
struct Session(Conn);

impl Session {
    /// Runs `jobs` in one transaction and answers each: again after a conflict or a lost
    /// connection, without an operation that failed after changing rows, one per transaction
    /// after any other failure (so one operation's error is not every operation's).
    fn run(&mut self, mut jobs: Vec<Job>) {
        let mut attempt = 0;
        while !jobs.is_empty() {
            attempt += 1;
            if let Err(e) = self.0.connect() {
                let message = e.to_string();
                fail_all(jobs, || CoreError::Unreachable(message.clone()));
                return;
            }
            let failure = match once(&self.0, &mut jobs) {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        job.finish(outcome);
                    }
                    return;
                }
                Err(failure) => failure,
            };
            let lost = self.0.is_closed();
            let e = match failure {
                Failure::Refused(i, e) => {
                    jobs.remove(i).finish(Err(e));
                    continue;
                }
                Failure::CommitUnknown(message) => {
                    fail_all(jobs, || CoreError::CommitUnknown(message.clone()));
                    return;
                }
                // Lost before the commit: nothing was committed; once more on a new connection.
                Failure::Batch(e) if lost && attempt < 2 => {
                    tracing::debug!(error = %e, "postgres connection lost; running the batch again");
                    continue;
                }
                Failure::Batch(e) => e,
            };
            if conflict(&e) && attempt < ATTEMPTS {
                tracing::debug!(attempt, error = %e, "transaction conflict; running it again");
                std::thread::sleep(Duration::from_millis(
                    u64::from(attempt) * fastrand::u64(1..=5),
                ));
                continue;
            }
            match e {
                CoreError::Unreachable(message) => {
                    fail_all(jobs, || CoreError::Unreachable(message.clone()));
                }
                e if jobs.len() == 1 => jobs.remove(0).finish(Err(e)),
                _ => {
                    for job in jobs {
                        self.run(vec![job]);
                    }
                }
            }
            return;
        }
    }
}

/// One run of `jobs` in one transaction, with the database's clock read once. An operation's
/// error leaves the others be when it changed nothing and the server refused nothing.
fn once(conn: &Conn, jobs: &mut [Job]) -> Result<Vec<Outcome>, Failure> {
    let db = conn.pipe(PgPipe::begin);
    if let Err(e) = probe(&db, jobs) {
        db.rollback();
        return Err(Failure::Batch(CoreError::Store(e)));
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter_mut().enumerate() {
        db.begin_op(i);
        let outcome = crate::store::guarded(|| (job.run)(&db));
        let failure = match outcome {
            Err(e) if db.aborted() => Failure::Batch(e),
            Err(e) if db.op_wrote() => Failure::Refused(i, e),
            outcome => {
                outcomes.push(outcome);
                continue;
            }
        };
        db.rollback();
        return Err(failure);
    }
    match db.commit() {
        Ok(()) => Ok(outcomes),
        // The server may or may not have committed: say so, never "ok".
        Err(e) if e.sqlstate().is_none() && conn.is_closed() => {
            Err(Failure::CommitUnknown(e.to_string()))
        }
        Err(e) => Err(Failure::Batch(CoreError::Store(e))),
    }
}

/// Makes the reads the jobs of a batch announced ([`Probe`]), one statement per kind of read.
/// A job is answered from it when it is the first of its key (the batch is sorted by key).
fn probe(db: &PgPipe<'_>, jobs: &[Job]) -> Result<(), crate::store::sql::Error> {
    let mut kinds: Vec<(&'static str, &'static str)> = Vec::new();
    for p in jobs.iter().filter_map(|j| j.probe.as_ref()) {
        if !kinds.contains(&(p.one, p.many)) {
            kinds.push((p.one, p.many));
        }
    }
    for (one, many) in kinds {
        let each: Vec<(&[Option<String>], Option<usize>)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| {
                let p = j
                    .probe
                    .as_ref()
                    .filter(|p| (p.one, p.many) == (one, many))?;
                let first = i == 0 || jobs[i - 1].key != j.key;
                Some((p.args.as_slice(), first.then_some(i)))
            })
            .collect();
        // One alone reads as it would anyway.
        if each.len() > 1 {
            db.probe(one, many, &each)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::PgServer;
    use crate::store::sql::{params, OptionalExtension, MERGED_MAX};
    use futures::executor::block_on;
    use futures::FutureExt;
    use std::sync::mpsc as std_mpsc;

    /// A write sent to the writer now, its result to come.
    type Sent<T> = futures::future::BoxFuture<'static, Result<T, CoreError>>;

    fn send<T: Send + 'static>(
        writer: &Writer,
        key: Option<&str>,
        op: impl FnMut(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    ) -> Sent<T> {
        send_probed(writer, key, None, op)
    }

    /// [`send`], with the read `op` makes first announced.
    fn send_probed<T: Send + 'static>(
        writer: &Writer,
        key: Option<&str>,
        probe: Option<Probe>,
        op: impl FnMut(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    ) -> Sent<T> {
        let writer = writer.clone();
        let key = key.map(str::to_owned);
        let mut fut = async move { writer.write(Lane::Normal, key, probe, op).await }.boxed();
        assert!(
            (&mut fut).now_or_never().is_none(),
            "a write waits for its commit"
        );
        fut
    }

    /// Occupies every writer thread until the returned senders are dropped, so what is sent
    /// meanwhile queues into one batch.
    fn hold_all(writer: &Writer) -> (Vec<std_mpsc::Sender<()>>, Vec<Sent<()>>) {
        let (started_tx, started) = std_mpsc::channel();
        let mut gates = Vec::new();
        let mut held = Vec::new();
        for _ in 0..WRITERS {
            let (go, wait) = std_mpsc::channel::<()>();
            let started_tx = started_tx.clone();
            let wait = Mutex::new(wait);
            held.push(send(writer, None, move |_| {
                started_tx.send(()).expect("test waits");
                let _ = lock(&wait).recv_timeout(Duration::from_secs(30));
                Ok(())
            }));
            gates.push(go);
        }
        for _ in 0..WRITERS {
            started.recv_timeout(Duration::from_secs(30)).expect("held");
        }
        (gates, held)
    }

    fn insert(key: &'static str) -> impl FnMut(&dyn Sql) -> Result<i64, CoreError> + Send {
        move |c| {
            c.execute("INSERT INTO batch_probe (k) VALUES ($1)", [key])?;
            Ok(c.query_row("SELECT CAST(txid_current() AS BIGINT)", (), |r| r.get(0))?)
        }
    }

    fn writer_on(server: &PgServer) -> (Arc<PgStore>, Writer) {
        let store = Arc::new(
            PgStore::open(server.url(), "writer-test", Timeouts::default()).expect("open"),
        );
        let c = test_support::PgClient::connect(server.url());
        c.batch_execute(
            "DROP TABLE IF EXISTS batch_probe; CREATE TABLE batch_probe (k TEXT PRIMARY KEY)",
        )
        .expect("probe table");
        let writer = Writer::start(&store);
        (store, writer)
    }

    fn stored(store: &PgStore) -> Vec<String> {
        store
            .read(|c, _| {
                Ok(
                    c.query_map("SELECT k FROM batch_probe ORDER BY k", (), |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()?,
                )
            })
            .expect("read")
    }

    /// Reads announced ahead ([`Probe`]) are made for the whole batch in one statement and
    /// each answers its job's first read of that text with those arguments; a later job of the
    /// same key reads for itself (the job before it may have changed its rows). The batch form
    /// here marks what it returns (+100) to tell the two apart.
    #[test]
    fn reads_announced_ahead_are_made_once_for_the_batch() {
        const ONE: &str = "SELECT v FROM probe_row WHERE k = $1";
        const MANY: &str = "SELECT v + 100, r.i
             FROM unnest(CAST($1 AS TEXT[])) WITH ORDINALITY AS r (k, i)
             JOIN probe_row ON probe_row.k = r.k ORDER BY r.k COLLATE \"C\", r.i";
        let server = PgServer::start();
        let (_store, writer) = writer_on(&server);
        let c = test_support::PgClient::connect(server.url());
        c.batch_execute(
            "CREATE TABLE probe_row (k TEXT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO probe_row VALUES ('a', 1), ('b', 1), ('c', 1);",
        )
        .expect("rows");
        // Reads row `key` (announced ahead when `probed`), then adds one to it.
        let job = |key: &'static str, probed: bool| {
            let probe = probed.then(|| Probe {
                one: ONE,
                many: MANY,
                args: vec![Some(key.to_owned())],
            });
            send_probed(&writer, Some(key), probe, move |c: &dyn Sql| {
                let v: Vec<i64> = c
                    .query_map(ONE, [key], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                c.execute("UPDATE probe_row SET v = v + 1 WHERE k = $1", [key])?;
                Ok(v)
            })
        };
        let (gates, held) = hold_all(&writer);
        let sent = [
            job("b", true),
            job("a", true),
            job("z", true),
            job("b", true),
            job("c", false),
        ];
        drop(gates);
        for h in held {
            block_on(h).expect("held");
        }
        let got: Vec<Vec<i64>> = sent
            .into_iter()
            .map(|f| block_on(f).expect("job"))
            .collect();
        // b (made ahead), a (made ahead), z (none), b again (read after the first b's change),
        // c (not announced).
        assert_eq!(got, [vec![101], vec![101], vec![], vec![2], vec![1]]);

        // One job alone reads for itself.
        let (gates, held) = hold_all(&writer);
        let alone = job("a", true);
        drop(gates);
        for h in held {
            block_on(h).expect("held");
        }
        assert_eq!(block_on(alone).expect("alone"), [2]);
    }

    /// Changes to merge ([`Merged`]) wait and go as one statement for several operations: never
    /// two with the same `distinct` argument in one, never more than [`MERGED_MAX`], lower
    /// phases first. Each statement here logs how many operations it took and their keys.
    #[test]
    fn merged_changes_go_as_one_statement_by_phase() {
        use crate::store::sql::{Merged, ValueRef, MERGED_MAX};
        fn many(n: usize, phase: u8) -> String {
            let rows: Vec<String> = (1..=n).map(|i| format!("({n}, {phase}, ${i})")).collect();
            format!(
                "INSERT INTO merge_log (n, phase, k) VALUES {}",
                rows.join(", ")
            )
        }
        // Made alone only where nothing merges (not in a writer session).
        fn alone(c: &dyn Sql, a: &[ValueRef<'_>]) -> crate::store::sql::Result<()> {
            c.defer("INSERT INTO merge_log (n, phase, k) VALUES (0, -1, $1)", a)
        }
        const fn merged(many: fn(usize) -> String, phase: u8) -> Merged {
            Merged {
                one: alone,
                many,
                phase,
                distinct: 0,
            }
        }
        static FIRST: Merged = merged(|n| many(n, 0), 0);
        static SECOND: Merged = merged(|n| many(n, 1), 1);
        let server = PgServer::start();
        let (store, writer) = writer_on(&server);
        let c = test_support::PgClient::connect(server.url());
        c.batch_execute("CREATE TABLE merge_log (id SERIAL PRIMARY KEY, n INT, phase INT, k TEXT)")
            .expect("log");
        let (gates, held) = hold_all(&writer);
        // Keys order the batch; each job defers its changes with arguments of its own.
        let jobs: Vec<(&str, &'static Merged, &str)> = vec![
            ("1", &SECOND, "x"),
            ("2", &FIRST, "a"),
            ("3", &FIRST, "b"),
            ("4", &FIRST, "a"),
            ("5", &SECOND, "y"),
        ];
        let sent: Vec<Sent<()>> = jobs
            .into_iter()
            .map(|(key, change, arg)| {
                send(&writer, Some(key), move |c: &dyn Sql| {
                    c.defer_merged(change, &[&arg])?;
                    Ok(())
                })
            })
            .collect();
        drop(gates);
        for h in held {
            block_on(h).expect("held");
        }
        for s in sent {
            block_on(s).expect("job");
        }
        let log: Vec<(i32, i32, String)> = store
            .read(|c, _| {
                Ok(
                    c.query_map("SELECT n, phase, k FROM merge_log ORDER BY id", (), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?,
                )
            })
            .expect("log");
        let want = [
            (2, 0, "a"),
            (2, 0, "b"),
            (1, 0, "a"),
            (2, 1, "x"),
            (2, 1, "y"),
        ];
        let want: Vec<(i32, i32, String)> =
            want.iter().map(|&(n, p, k)| (n, p, k.to_owned())).collect();
        assert_eq!(log, want, "a, b | a (again) | x, y after the lower phase");

        // More than MERGED_MAX waiting: statements of at most that many.
        c.batch_execute("TRUNCATE merge_log").expect("empty");
        block_on(send(&writer, Some("1"), |c: &dyn Sql| {
            for i in 0..=MERGED_MAX {
                c.defer_merged(&FIRST, &[&format!("{i:03}")])?;
            }
            Ok(())
        }))
        .expect("job");
        let sizes: Vec<(i32, i64)> = c
            .query(
                "SELECT n, COUNT(*) FROM merge_log GROUP BY n ORDER BY n",
                &[],
            )
            .expect("sizes")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let most = i32::try_from(MERGED_MAX).expect("small");
        assert_eq!(sizes, [(1, 1), (most, i64::from(most))]);
    }

    /// Votes in one batch of a writer session: the first vote on each task answered from the
    /// batch's read, the votes and the decisions merged, a second vote on a task in the same
    /// batch stored after the first. They end as votes one at a time would: every vote stored
    /// and its lease completed, each task decided once, points to the agreeing workers.
    #[test]
    fn a_batch_of_votes_ends_as_votes_one_at_a_time() {
        use crate::ops::submit;
        use crate::ops::task::load_task;
        use crate::ops::testing::{add, answer, ctx, points, send as alone, take};
        use protocol::messages::{NewTask, SubmitReply};
        use protocol::{TaskId, TaskStatus};
        let server = PgServer::start();
        let mut conn = server.fresh();
        let (_store, writer) = writer_on(&server);
        let tasks: Vec<TaskId> = (0..4)
            .map(|i| add(&mut conn, 0, NewTask::text(format!("t{i}"))))
            .collect();
        let mut leases = std::collections::HashMap::new();
        for w in ["a", "b", "c"] {
            for _ in &tasks {
                let l = take(&mut conn, 1, w).remove(0);
                leases.insert((w, l.task_id), l);
            }
        }
        for t in &tasks {
            let (r, _) = alone(
                &mut conn,
                2,
                t,
                answer(&leases[&("a", *t)], "a", "positive", 0.9),
            );
            r.expect("a's vote");
        }
        // b and c in one batch; c disagrees on the first two tasks.
        let (gates, held) = hold_all(&writer);
        let mut sent: Vec<Sent<SubmitReply>> = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            for w in ["b", "c"] {
                let label = if w == "c" && i < 2 {
                    "negative"
                } else {
                    "positive"
                };
                let req = answer(&leases[&(w, *t)], w, label, 0.8);
                let t = *t;
                let probe = crate::store::Probe::answer(&t, &req.worker_id, Some(req.lease_id));
                sent.push(send_probed(
                    &writer,
                    Some(&t.to_string()),
                    Some(probe),
                    move |c: &dyn Sql| {
                        submit::run(&crate::store::postgres::Tx(c), &mut ctx(3), &t, req.clone())
                    },
                ));
            }
        }
        drop(gates);
        for h in held {
            block_on(h).expect("held");
        }
        let replies: Vec<SubmitReply> = sent
            .into_iter()
            .map(|f| block_on(f).expect("vote"))
            .collect();
        for (i, r) in replies.iter().enumerate() {
            let last = i % 2 == 1;
            assert!(
                r.accepted && !r.duplicate && r.finalized == last,
                "{i}: {r:?}"
            );
            if last {
                assert_eq!(r.final_label.as_deref(), Some("positive"));
            }
        }
        for t in &tasks {
            let task = load_task(&*crate::ops::testing::TestDb::tx(&conn), t).expect("task");
            assert_eq!(task.status, TaskStatus::Finalized);
            assert_eq!(task.final_label.as_deref(), Some("positive"));
            assert_eq!((task.submissions, task.active_leases), (3, 0));
        }
        assert_eq!(
            (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
            (4, 4, 2)
        );
        let tally: (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM lease WHERE state = 'completed'),
                        (SELECT COUNT(*) FROM submission WHERE agreed = 1),
                        (SELECT COUNT(*) FROM submission WHERE agreed = 0)",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("tally");
        assert_eq!(tally, (12, 10, 2));
    }

    /// A read session kept idle across a server restart is found lost at the read's first
    /// statement and replaced: the read is answered, not refused `unavailable`.
    #[test]
    fn a_read_after_the_server_restarted_is_answered() {
        let mut server = test_support::Postgres::start();
        let store =
            PgStore::open(&server.url(), "restart-test", Timeouts::default()).expect("open");
        let read = || store.read(|c, _| Ok(c.query_row("SELECT 7", (), |r| r.get::<_, i64>(0))?));
        assert_eq!(read().expect("a read before"), 7);
        server.restart();
        assert_eq!(read().expect("a read after the restart"), 7);
    }

    /// Writer sessions carry [`WRITER_SETTINGS`], the other sessions not.
    #[test]
    fn writer_sessions_plan_with_their_settings() {
        let server = PgServer::start();
        let (store, writer) = writer_on(&server);
        let setting = |c: &dyn Sql| -> Result<String, CoreError> {
            Ok(c.query_row("SELECT current_setting('enable_seqscan')", (), |r| r.get(0))?)
        };
        let written = block_on(send(&writer, None, setting)).expect("write");
        assert_eq!(written, "off");
        let read = store.read(|c, _| setting(c)).expect("read");
        assert_eq!(read, "on");
    }

    /// Keyed writes queued together share one transaction; one that fails after writing is
    /// answered with its error and rolled back alone, one that fails before writing leaves the
    /// batch be, and a statement the server refuses costs the others nothing.
    /// (The store's calls block: this test runs its futures on a plain executor, not tokio's.)
    #[test]
    fn keyed_writes_share_a_transaction_and_fail_alone() {
        let server = PgServer::start();
        let (store, writer) = writer_on(&server);
        let (gates, held) = hold_all(&writer);
        let b = send(&writer, Some("b"), insert("b"));
        let e = send(&writer, Some("e"), insert("e"));
        let a = send(
            &writer,
            Some("a"),
            |c: &dyn Sql| -> Result<i64, CoreError> {
                insert("a")(c)?;
                Err(CoreError::Invalid(protocol::ProtocolError::invalid(
                    "a",
                    "refused after writing",
                )))
            },
        );
        let c = send(
            &writer,
            Some("c"),
            |_: &dyn Sql| -> Result<i64, CoreError> {
                Err(CoreError::Invalid(protocol::ProtocolError::invalid(
                    "c", "refused",
                )))
            },
        );
        drop(gates);
        for h in held {
            block_on(h).expect("held");
        }
        let (tb, te) = (block_on(b).expect("b"), block_on(e).expect("e"));
        assert_eq!(tb, te, "b and e committed in one transaction");
        assert!(block_on(a).is_err() && block_on(c).is_err());
        assert_eq!(stored(&store), ["b", "e"]);

        // The server refuses one statement: the others are run again, one per transaction.
        let (gates, held) = hold_all(&writer);
        let f = send(&writer, Some("f"), insert("f"));
        let dup = send(&writer, Some("g"), insert("b"));
        let h = send(&writer, Some("h"), insert("h"));
        drop(gates);
        for x in held {
            block_on(x).expect("held");
        }
        let (tf, th) = (block_on(f).expect("f"), block_on(h).expect("h"));
        assert_ne!(tf, th, "after a refused statement each runs alone");
        let refused = block_on(dup).expect_err("a duplicate key");
        assert!(
            matches!(&refused, CoreError::Store(e) if e.sqlstate() == Some("23505")),
            "{refused}"
        );
        assert_eq!(stored(&store), ["b", "e", "f", "h"]);
        let none: Option<i64> = store
            .read(|c, _| {
                Ok(
                    c.query_row("SELECT 1 FROM batch_probe WHERE k = 'a'", (), |r| r.get(0))
                        .optional()?,
                )
            })
            .expect("read");
        assert!(none.is_none());
    }

    /// Statements deferred together run as one on a writer session: every part takes effect,
    /// each with its own parameters, and a part the server refuses fails the operation and
    /// leaves none of them.
    #[test]
    fn statements_deferred_together_run_as_one() {
        let server = PgServer::start();
        let (store, writer) = writer_on(&server);
        let group = |c: &dyn Sql, keys: [&'static str; 3]| -> Result<(), CoreError> {
            crate::store::postgres::vote::defer_all(
                c,
                &[
                    ("INSERT INTO batch_probe (k) VALUES ($1)", params![keys[0]]),
                    (
                        "INSERT INTO batch_probe (k) SELECT $1 || $2",
                        params![keys[1], "!"],
                    ),
                    ("INSERT INTO batch_probe (k) VALUES ($1)", params![keys[2]]),
                ],
            )?;
            Ok(())
        };
        let ok = send(&writer, None, move |c| group(c, ["a", "b", "c"]));
        block_on(ok).expect("grouped");
        assert_eq!(stored(&store), ["a", "b!", "c"]);
        let dup = send(&writer, None, move |c| group(c, ["d", "e", "a"]));
        let refused = block_on(dup).expect_err("a duplicate key in the last part");
        assert!(
            matches!(&refused, CoreError::Store(e) if e.sqlstate() == Some("23505")),
            "{refused}"
        );
        assert_eq!(stored(&store), ["a", "b!", "c"]);
    }

    /// `sql`'s generic plan, made on empty tables, with `args` (PostgreSQL literals) for its
    /// parameters.
    fn generic_plan(c: &test_support::PgClient, sql: &str, args: &str) -> String {
        c.batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; DEALLOCATE ALL; PREPARE probe AS {sql}"
        ))
        .expect("prepare");
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN EXECUTE probe({args})"), &[])
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        plan.join("\n")
    }

    /// A generic plan made while the tables are empty (a new database, a coordinator's first
    /// statements) stays until they are analyzed. The statements every submission and every
    /// lease run must then still find their rows by key, not walk one worker's submissions or
    /// every open task.
    #[test]
    fn plans_made_on_empty_tables_find_rows_by_key() {
        let server = PgServer::start();
        let c = test_support::PgClient::connect(server.url());
        let plan = generic_plan(
            &c,
            "SELECT lease_id FROM submission WHERE task_id = $1 AND worker_id = $2",
            "'t', 'w'",
        );
        let cond = plan
            .lines()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_default();
        assert!(
            cond.contains("task_id") && cond.contains("worker_id"),
            "the submission lookup scans by one column:\n{plan}"
        );
        let plan = generic_plan(
            &c,
            &crate::store::tx::leases::assign_sql(3),
            "'a', 'b', 'c'",
        );
        assert!(
            plan.contains("Index Cond: (id = ANY"),
            "taking slots walks the table:\n{plan}"
        );
        let read = crate::store::postgres::vote::answer_sql();
        let plan = generic_plan(&c, read, "'t', 'w', 'l'");
        // The task, the worker's submission on it, the lease; the answers so far, the task row
        // in the statement's snapshot.
        assert!(
            !plan.contains("Seq Scan") && plan.matches("Index Cond").count() == 5,
            "a submission's read scans:\n{plan}"
        );
        let many = crate::store::postgres::vote::answer_many_sql();
        let plan = generic_plan(&c, many, "'{t,u}', '{w,w}', '{l,NULL}'");
        assert!(
            !plan.contains("Seq Scan") && plan.matches("Index Cond").count() == 5,
            "a batch's submission read scans:\n{plan}"
        );
        let walk = crate::store::postgres::walk_sql();
        let plan = generic_plan(&c, walk, "'w', 'sentiment', 32, NULL, 7");
        assert!(
            plan.contains("Index Scan using task_open on task")
                && plan.contains("Index Cond: ((type = $2) AND (seq > $5))"),
            "the lease walk does not start at the cursor:\n{plan}"
        );
        // A batch's votes and its decisions (one statement each), as writer sessions plan them.
        for (name, value) in WRITER_SETTINGS {
            c.batch_execute(&format!("SET {name} = {value}"))
                .expect("writer settings");
        }
        let vote = "'t', 'w', 'l', 'x', 1, NULL, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL";
        for (what, change, row) in [
            ("votes", &crate::store::postgres::vote::VOTE, vote),
            (
                "decisions",
                &crate::store::postgres::vote::DECIDED,
                "'t', 'x', 1, 1",
            ),
        ] {
            let args = vec![row; MERGED_MAX].join(", ");
            let plan = generic_plan(&c, &(change.many)(MERGED_MAX), &args);
            assert!(
                !plan.contains("Seq Scan on"),
                "a batch's {what} scan:\n{plan}"
            );
        }
    }
}
