//! The store: SQLite (the default, one file, one machine) or PostgreSQL ([`postgres`], several
//! coordinators over one database). The rules call its domain interface ([`tx::Tx`]: a task,
//! the answers so far, a vote, a decision, points...), which each engine implements
//! ([`sqlite::Tx`], [`postgres::Tx`]) over a thin executor ([`sql::Sql`]), each with its own SQL,
//! schema and migrations; the statements both run alike are shared.
//!
//! - `tx/`: the interface, in parts by area, with the shared statements; `rows`: typed rows.
//! - `sqlite/`: its statements, executor, schema and migrations, and the group-commit writer.
//! - `postgres/`: its statements (the batch read, merged votes and decisions), executors (a
//!   blocking client for reads and tests, pipelined writer sessions), schema and migrations.
//!
//! SQLite: WAL journal, full sync, two connections. Writes run on the group-commit writer's own
//! thread and connection ([`sqlite::group::Writer`]); reads run on a second connection's thread
//! (tokio-rusqlite), which WAL lets read while the writer writes.
//!
//! Every write runs inside an `IMMEDIATE` transaction, and a reply is sent only after that
//! transaction commits, so a coordinator killed at any instant loses nothing it acknowledged.

pub(crate) mod postgres;
pub(crate) mod rows;
pub(crate) mod sql;
pub(crate) mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod tx;

use crate::error::{CoreError, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which queue a write waits in: leases go ahead of other work on both engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// In arrival order, in batches of up to 512.
    Normal,
    /// Ahead of all queued normal work; a normal batch running when one arrives runs it next
    /// and commits.
    Urgent,
}

impl Lane {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Urgent => "urgent",
        }
    }
}

/// Handle to the store: SQLite's connections, or the PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Sqlite {
        conn: tokio_rusqlite::Connection,
        writer: Arc<Mutex<WriteSide>>,
        path: std::path::PathBuf,
    },
    Postgres(Arc<postgres::PgStore>),
}

/// The write connection until the group-commit writer starts on it, then the writer's thread
/// (for [`Store::close`] to wait for).
enum WriteSide {
    Connection(Connection),
    Thread(JoinHandle<()>),
    Closed,
}

/// Whether `db` names a PostgreSQL database (`postgres://` or `postgresql://`) rather than a
/// SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// `db` for logs and errors: a URL's password replaced by `***`.
pub fn without_password(db: &str) -> String {
    let Some((scheme, rest)) = db.split_once("://") else {
        return db.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => db.to_owned(),
    }
}

impl Store {
    /// Opens the store `db` names: a PostgreSQL URL, else a SQLite file path. `app` names this
    /// process to PostgreSQL (`application_name`).
    ///
    /// # Errors
    /// As [`Store::open`], or PostgreSQL's store for a `postgres://` URL.
    pub async fn open_any(
        db: &str,
        app: &str,
        timeouts: postgres::Timeouts,
    ) -> Result<Self, StoreError> {
        if is_postgres_url(db) {
            let (db, app) = (db.to_owned(), app.to_owned());
            let pg =
                tokio::task::spawn_blocking(move || postgres::PgStore::open(&db, &app, timeouts))
                    .await
                    .map_err(|_| StoreError::Closed)??;
            Ok(Self {
                kind: Kind::Postgres(Arc::new(pg)),
            })
        } else {
            Self::open(Path::new(db)).await
        }
    }

    /// Opens (creating if needed) and migrates the SQLite database at `path`.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened, is not a database, or is from a newer build.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // Each connection is used only from its own thread: SQLite's per-call mutexes are waste.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = tokio_rusqlite::Connection::open_with_flags(path, flags).await?;
        conn.call(prepare).await.map_err(|e| match e {
            tokio_rusqlite::Error::Error(e) => e,
            _ => StoreError::Closed,
        })?;
        let owned = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            let mut writer = Connection::open_with_flags(owned, flags)?;
            prepare(&mut writer)?;
            Ok::<_, StoreError>(writer)
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        Ok(Self {
            kind: Kind::Sqlite {
                conn,
                writer: Arc::new(Mutex::new(WriteSide::Connection(writer))),
                path: path.to_owned(),
            },
        })
    }

    /// What the store is, for logs and status: `sqlite <path>` or `postgres <host:port/db>`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Sqlite { path, .. } => format!("sqlite {}", path.display()),
            Kind::Postgres(pg) => pg.shown().to_owned(),
        }
    }

    /// Closes the store once nothing writes any more (every `Core` on it is gone): waits up to
    /// `grace` for the writer's thread to finish its queue and close its connection, then closes
    /// the read connection. The last connection to close copies the WAL into the database file
    /// and removes it, so a cleanly stopped coordinator leaves one self-contained file.
    /// PostgreSQL's connections close as their threads end.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer is still running after `grace`; SQLite's error when
    /// the read connection does not close.
    pub async fn close(self, grace: Duration) -> Result<(), StoreError> {
        let Kind::Sqlite { conn, writer, .. } = self.kind else {
            return Ok(());
        };
        let side = std::mem::replace(&mut *lock(&writer), WriteSide::Closed);
        if let WriteSide::Thread(thread) = side {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(grace, joined).await.is_err() {
                return Err(StoreError::Closed);
            }
        }
        conn.close().await.map_err(|e| match e {
            tokio_rusqlite::Error::Close((_, e)) => StoreError::Sqlite(e),
            _ => StoreError::Closed,
        })
    }

    /// SQLite's read connection's thread; `None` on PostgreSQL.
    pub fn conn(&self) -> Option<&tokio_rusqlite::Connection> {
        match &self.kind {
            Kind::Sqlite { conn, .. } => Some(conn),
            Kind::Postgres(_) => None,
        }
    }

    /// Runs `op` in one read transaction (one snapshot), with the store's clock.
    ///
    /// # Errors
    /// `op`'s, or the store's.
    pub(crate) async fn read<T, F>(&self, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn tx::Tx, i64) -> Result<T, CoreError> + Send + 'static,
    {
        match &self.kind {
            Kind::Sqlite { conn, .. } => Ok(conn
                .call(move |conn| {
                    let tx = conn.transaction()?;
                    let now = sql::Sql::now_ms(&tx)?;
                    guarded(|| op(&sqlite::Tx(&tx), now))
                })
                .await?),
            Kind::Postgres(pg) => {
                let pg = pg.clone();
                let op = move |c: &dyn sql::Sql, now| op(&postgres::Tx(c), now);
                tokio::task::spawn_blocking(move || pg.read(op))
                    .await
                    .map_err(|_| CoreError::StoreClosed)?
            }
        }
    }

    /// Hands the write connection to `start`, which starts the writer's thread on it.
    ///
    /// # Panics
    /// When the store already has a writer, is closed, or is not SQLite.
    pub(crate) fn start_writer(&self, start: impl FnOnce(Connection) -> JoinHandle<()>) {
        let Kind::Sqlite { writer, .. } = &self.kind else {
            panic!("group commit is SQLite's writer");
        };
        let mut side = lock(writer);
        match std::mem::replace(&mut *side, WriteSide::Closed) {
            WriteSide::Connection(conn) => *side = WriteSide::Thread(start(conn)),
            _ => panic!("a store has one writer"),
        }
    }
}

/// Where writes go: SQLite's group-commit writer, or PostgreSQL's writer sessions.
#[derive(Clone)]
pub(crate) enum Writer {
    /// One thread, batches in one transaction each.
    Sqlite(sqlite::group::Writer),
    /// Several sessions, batches of keyed operations in one transaction each.
    Postgres(postgres::Writer),
}

impl Writer {
    /// Starts the store's writer.
    ///
    /// # Panics
    /// When a SQLite store already has a writer.
    pub(crate) fn start(store: &Store, metrics: Arc<crate::metrics::Metrics>) -> Self {
        match &store.kind {
            Kind::Sqlite { .. } => Writer::Sqlite(sqlite::group::Writer::start(store, metrics)),
            Kind::Postgres(pg) => Writer::Postgres(postgres::Writer::start(pg)),
        }
    }

    /// Runs `op` in a write transaction; its result once committed. On PostgreSQL `op` may run
    /// more than once (after a conflict another transaction won), each time from the start.
    ///
    /// `key` says what `op` locks first (the task it submits to, the worker it leases for).
    /// SQLite batches every operation of a lane (one writer, nothing to wait on); PostgreSQL
    /// batches only keyed ones, sorted by key, so that batches of different sessions take
    /// their rows' locks in one order, and runs an operation without a key alone.
    ///
    /// `probe`, when given, is the read `op` makes first (see [`Probe`]).
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
        F: FnMut(&dyn tx::Tx) -> Result<T, CoreError> + Send + 'static,
    {
        match self {
            Writer::Sqlite(w) => w.write(lane, move |c| op(&sqlite::Tx(c))).await,
            Writer::Postgres(w) => {
                let op = move |c: &dyn sql::Sql| op(&postgres::Tx(c));
                w.write(lane, key, probe, op).await
            }
        }
    }
}

/// A read an operation makes before anything else, described so that PostgreSQL's writer
/// sessions make it for a whole batch of keyed operations in one statement instead of one
/// round trip each, taking the batch's row locks in one go in key order. SQLite, with no round
/// trip to save, ignores it. Only the first operation of a key is answered from it (the rows
/// of a later one may have changed by its turn); the operations of a batch change no rows
/// another key's read returns.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The read as the operation makes it (in the SQL [`sql::Sql`] takes).
    pub one: &'static str,
    /// The same read for many operations: parameter `?i` is the text array of every
    /// operation's argument `i`, each row ends with the 1-based ordinal of the operation it
    /// answers, and the rows are locked in key order.
    pub many: &'static str,
    /// The read's arguments, text or NULL.
    pub args: Vec<Option<String>>,
}

impl Probe {
    /// The joined read a submission starts with ([`tx::Votes::answer_context`]), for
    /// PostgreSQL's writer sessions to make for a whole batch of submissions at once.
    pub(crate) fn answer(
        task: &protocol::TaskId,
        worker: &protocol::WorkerId,
        lease: Option<protocol::LeaseId>,
    ) -> Self {
        Probe {
            one: postgres::vote::answer_sql(),
            many: postgres::vote::answer_many_sql(),
            args: vec![
                Some(task.to_string()),
                Some(worker.as_str().to_owned()),
                lease.map(|l| l.to_string()),
            ],
        }
    }
}

/// Runs `op`, turning a panic into [`CoreError::Bug`]: a bug in one operation fails that request,
/// not the store's thread and every request after it.
pub(crate) fn guarded<T>(op: impl FnOnce() -> Result<T, CoreError>) -> Result<T, CoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(op)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        tracing::error!(panic = %what, "a store operation panicked; rolled back");
        Err(CoreError::Bug(what))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets the pragmas, migrates and creates the connection's own tables; used for files and for
/// in-memory test databases alike.
///
/// # Errors
/// [`StoreError`] when SQLite refuses a pragma or a migration.
pub(crate) fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    // WAL: readers never block the writer. FULL: a commit survives power loss, not just a crash.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" && mode != "memory" {
        tracing::warn!(mode, "sqlite refused WAL journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoint journals (one per operation in a group commit) in memory, not in temp files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    // One plan per statement, whatever its parameters hold. Without this SQLite recompiles a
    // statement each time a parameter it planned with is bound, and it plans with a bound
    // `LIMIT`: the lease query was compiled anew on every lease (~35 µs of the writer's time).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    sqlite::schema::migrate(conn)?;
    conn.execute_batch(sqlite::schema::CONNECTION_TABLES)?;
    Ok(())
}

/// A vector as stored: little-endian f32s.
pub(crate) fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reads a vector written by [`vector_to_blob`].
pub(crate) fn blob_to_vector(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A stored timestamp as a date.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Every row of every table as text, in a stable order: two equal dumps mean an unchanged store.
/// For tests and for debugging a database by hand.
///
/// # Errors
/// The engine's.
pub fn dump(conn: &dyn sql::Sql) -> sql::Result<String> {
    let mut out = String::new();
    for table in [
        "task",
        "lease",
        "submission",
        "worker",
        "worker_score",
        "worker_token",
        "verification",
    ] {
        let rows = conn.query_map(&format!("SELECT * FROM {table} ORDER BY 1"), (), |r| {
            (0..r.column_count())
                .map(|i| r.debug(i))
                .collect::<sql::Result<Vec<_>>>()
        })?;
        for row in rows {
            out.push_str(table);
            out.push_str(": ");
            out.push_str(&row?.join(" | "));
            out.push('\n');
        }
    }
    Ok(out)
}
