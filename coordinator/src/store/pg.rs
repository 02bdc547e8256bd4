//! The PostgreSQL store: several coordinators over one database.
//!
//! Writes run on a few writer threads per coordinator, each with its own session, one
//! transaction per operation under READ COMMITTED (batching several in one transaction, each in
//! a savepoint, measured slower here: a batch holds its task-row locks until its commit, and
//! batches of different sessions deadlock on them): the operations lock the task row they decide
//! on first (`FOR NO KEY UPDATE`, see `lock_suffix` on `dyn Sql`), lease with `SKIP LOCKED` and guarded
//! counter updates, so two coordinators never both finalize a task or lease past its free
//! slots. Deadlock (40P01), serialization (40001) and lock-timeout (55P03) failures are rolled
//! back and run again. A commit whose outcome is unknown (the connection lost during `COMMIT`)
//! is answered [`CoreError::CommitUnknown`] (`unavailable`), never `ok`.
//!
//! Sessions carry `idle_in_transaction_session_timeout`, `lock_timeout` and
//! `statement_timeout`, so a frozen coordinator cannot hold locks for long, and an
//! `application_name` naming the coordinator. Lease expiry and staleness use the database's
//! clock, read once per transaction. Reads run on a pool of read-only connections, each read in
//! one snapshot (REPEATABLE READ).

use crate::error::{CoreError, StoreError, CONFLICT_SQLSTATES};
use crate::store::sql::{Pg, Sql, StmtCache};
use postgres::{Client, IsolationLevel, NoTls};
use std::any::Any;
use std::cell::RefCell;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Writer sessions per coordinator.
const WRITERS: usize = 4;
/// Runs of one operation before a conflict is reported.
const ATTEMPTS: u32 = 8;
/// The key of the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6169_6d61_726b_0001;
/// The key of the advisory lock one sweep at a time takes.
pub(crate) const SWEEP_LOCK: i64 = 0x6169_6d61_726b_0002;

/// Each entry takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("pg_schema.sql"),
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
pub struct PgStore {
    config: postgres::Config,
    reads: r2d2::Pool<r2d2_postgres::PostgresConnectionManager<NoTls>>,
    /// What the URL names, without its password (for logs and status).
    shown: String,
}

impl PgStore {
    /// Connects to `url`, migrating the schema under an advisory lock (coordinators starting
    /// together do not race), and opens the read pool. Blocking.
    ///
    /// # Errors
    /// [`StoreError`] for a bad URL, an unreachable server, or a schema from a newer build.
    pub fn open(url: &str, app: &str, timeouts: Timeouts) -> Result<Self, StoreError> {
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            let shown = crate::store::without_password(url);
            StoreError::Config(format!("{shown:?} is not a PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name(app);
        config.options(&format!(
            "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c statement_timeout={}",
            timeouts.idle_in_transaction.as_millis(),
            timeouts.lock.as_millis(),
            timeouts.statement.as_millis()
        ));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let mut client = config.connect(NoTls)?;
        migrate(&mut client)?;
        let manager = r2d2_postgres::PostgresConnectionManager::new(config.clone(), NoTls);
        let reads = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .build_unchecked(manager);
        let shown = format!(
            "postgres {}:{}/{}",
            config
                .get_hosts()
                .first()
                .map_or_else(String::new, |h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
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
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `op` in one read-only snapshot, with the database's clock. Blocking.
    ///
    /// # Errors
    /// `op`'s, or the store's (`unavailable` while the server is unreachable).
    pub fn read<T>(
        &self,
        op: impl FnOnce(&dyn Sql, i64) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let mut client = self
            .reads
            .get()
            .map_err(|e| CoreError::Unreachable(e.to_string()))?;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| CoreError::Store(e.into()))?;
        let cache = RefCell::new(StmtCache::default());
        let db = Pg::new(&mut tx, &cache);
        let now = db.now_ms()?;
        crate::store::guarded(|| op(&db, now))
    }
}

/// Brings the schema up to date inside one transaction holding [`MIGRATION_LOCK`].
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS aimarket_schema (version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM aimarket_schema", &[])?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO aimarket_schema (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )?;
        tracing::info!(version = i + 1, "postgres schema migrated");
    }
    tx.commit()?;
    Ok(())
}

type Output = Box<dyn Any + Send>;
type Run = Box<dyn FnMut(&dyn Sql) -> Result<Output, CoreError> + Send>;
type Outcome = Result<Output, CoreError>;

struct Job {
    run: Run,
    done: oneshot::Sender<Outcome>,
}

/// Handle to the writer threads. Cheap to clone; they stop when the last is gone.
#[derive(Clone)]
pub struct Writer {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer threads (four), each with its own session.
    ///
    /// # Panics
    /// When no thread can be started.
    pub fn start(store: &Arc<PgStore>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WRITERS {
            let rx = rx.clone();
            let config = store.config.clone();
            std::thread::Builder::new()
                .name(format!("pg-writer-{i}"))
                .spawn(move || write_loop(&config, &rx))
                .expect("a writer thread starts");
        }
        Self { jobs: tx }
    }

    /// Runs `op` in a transaction of its own (again, from the start, after a conflict); its
    /// result once committed.
    ///
    /// # Errors
    /// `op`'s, or the store's.
    pub async fn write<T, F>(&self, mut op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnMut(&dyn Sql) -> Result<T, CoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let run: Run = Box::new(move |c| op(c).map(|t| Box::new(t) as Output));
        self.jobs
            .send(Job { run, done })
            .map_err(|_| CoreError::StoreClosed)?;
        let out = result.await.map_err(|_| CoreError::StoreClosed)??;
        Ok(*out
            .downcast::<T>()
            .expect("a job's output has the type its caller asked for"))
    }
}

fn write_loop(config: &postgres::Config, rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    let mut client: Option<Client> = None;
    let cache = RefCell::new(StmtCache::default());
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job { mut run, done } = job;
        let outcome = run_job(config, &mut client, &cache, &mut run);
        let _ = done.send(outcome);
    }
}

/// Whether a failed run may simply run again: a conflict with another transaction.
fn conflict(e: &CoreError) -> bool {
    matches!(e, CoreError::Store(e) if e.sqlstate().is_some_and(|c| CONFLICT_SQLSTATES.contains(&c)))
}

fn run_job(
    config: &postgres::Config,
    client: &mut Option<Client>,
    cache: &RefCell<StmtCache>,
    run: &mut Run,
) -> Outcome {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if client.as_ref().is_none_or(Client::is_closed) {
            cache.borrow_mut().clear();
            *client = None;
            match config.connect(NoTls) {
                Ok(c) => *client = Some(c),
                Err(e) => return Err(CoreError::Unreachable(e.to_string())),
            }
        }
        let c = client.as_mut().expect("connected above");
        let failure = match once(c, cache, run) {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        if c.is_closed() {
            *client = None;
        }
        if let CoreError::Unreachable(_) = failure {
            if attempt < 2 {
                continue;
            }
        }
        if conflict(&failure) && attempt < ATTEMPTS {
            tracing::debug!(attempt, error = %failure, "transaction conflict; running it again");
            std::thread::sleep(Duration::from_millis(
                u64::from(attempt) * fastrand::u64(1..=5),
            ));
            continue;
        }
        return Err(failure);
    }
}

/// One run of `run` in a transaction of its own.
fn once(c: &mut Client, cache: &RefCell<StmtCache>, run: &mut Run) -> Outcome {
    let mut tx = c
        .transaction()
        .map_err(|e| CoreError::Unreachable(e.to_string()))?;
    let result = {
        let db = Pg::new(&mut tx, cache);
        crate::store::guarded(|| run(&db))
    };
    match result {
        Ok(out) => match tx.commit() {
            Ok(()) => Ok(out),
            // The server may or may not have committed: say so, never "ok".
            Err(e) if e.code().is_none() => Err(CoreError::CommitUnknown(e.to_string())),
            Err(e) => Err(CoreError::Store(e.into())),
        },
        Err(e) => {
            let _ = tx.rollback();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::PgServer;

    /// A generic plan made while the tables are empty (a new database, a coordinator's first
    /// statements) stays until they are analyzed. The lookup every submission starts with must
    /// then still find its row by both columns, not walk one worker's submissions.
    #[test]
    fn a_plan_made_on_empty_tables_finds_a_submission_by_task_and_worker() {
        let server = PgServer::start();
        let mut c = postgres::Client::connect(server.url(), postgres::NoTls).expect("connect");
        c.batch_execute(
            "SET plan_cache_mode = force_generic_plan;
             PREPARE earlier (text, text) AS
                 SELECT lease_id FROM submission WHERE task_id = $1 AND worker_id = $2",
        )
        .expect("prepare");
        let plan: Vec<String> = c
            .query("EXPLAIN EXECUTE earlier('t', 'w')", &[])
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let cond = plan
            .iter()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("no index lookup: {plan:#?}"));
        assert!(
            cond.contains("task_id") && cond.contains("worker_id"),
            "the lookup scans by one column: {plan:#?}"
        );
    }
}
