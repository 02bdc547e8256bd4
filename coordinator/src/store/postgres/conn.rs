//! PostgreSQL connections, each driven by a runtime of its own that the thread using it blocks
//! on ([`Conn`]), and the pool of connections reads run on ([`Reads`]).

use crate::error::CoreError;
use crate::store::postgres::{PgPipe, StmtCache};
use crate::store::sql::Sql;
use std::cell::RefCell;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// A connection (made on first use, and anew once lost) with its prepared statements, driven
/// by a current-thread runtime: the connection makes progress while its thread waits for an
/// answer, which is all that thread does meanwhile.
pub(crate) struct Conn {
    config: tokio_postgres::Config,
    rt: tokio::runtime::Runtime,
    client: Option<tokio_postgres::Client>,
    cache: RefCell<StmtCache>,
}

impl Conn {
    /// A connection to what `config` names, made when first needed.
    ///
    /// # Panics
    /// When no runtime can be made (no thread or timer left to the process).
    pub(crate) fn new(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a connection's runtime starts"),
            client: None,
            cache: RefCell::new(StmtCache::default()),
        }
    }

    /// Connects anew when there is no connection or it was lost.
    ///
    /// # Errors
    /// Why the server cannot be reached.
    pub(crate) fn connect(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.is_closed() {
            self.cache.borrow_mut().clear();
            self.client = None;
            let (client, connection) = self.rt.block_on(self.config.connect(NoTls))?;
            self.rt.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            });
            self.client = Some(client);
        }
        Ok(())
    }

    /// Whether the connection was lost (or never made).
    pub(crate) fn is_closed(&self) -> bool {
        self.client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
    }

    /// A transaction on the connection, pipelined (see [`PgPipe`]), begun by `begin`
    /// ([`PgPipe::begin`], [`PgPipe::read`]).
    ///
    /// # Panics
    /// When not connected ([`Conn::connect`]).
    pub(crate) fn pipe<'c>(
        &'c self,
        begin: fn(
            &'c tokio::runtime::Runtime,
            &'c tokio_postgres::Client,
            &'c RefCell<StmtCache>,
        ) -> PgPipe<'c>,
    ) -> PgPipe<'c> {
        let client = self.client.as_ref().expect("a pipe on a connected session");
        begin(&self.rt, client, &self.cache)
    }
}

/// Most connections reads hold at once, per coordinator.
const READERS: usize = 4;
/// Longest wait for a read connection when all are busy.
const READ_WAIT: Duration = Duration::from_secs(5);

/// The connections reads run on: up to [`READERS`], made as needed and kept.
pub(crate) struct Reads {
    config: tokio_postgres::Config,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    busy: usize,
}

impl Reads {
    pub(crate) fn new(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
        }
    }

    /// Keeps `conn` for later reads.
    pub(crate) fn keep(&self, conn: Conn) {
        lock(&self.pool).idle.push(conn);
    }

    /// Runs `op` in one read-only snapshot (REPEATABLE READ), with the database's clock, on a
    /// connection of the pool. Blocking.
    ///
    /// # Errors
    /// `op`'s, or the store's (`unavailable` while the server is unreachable or every read
    /// connection stays busy).
    pub(crate) fn read<T>(
        &self,
        op: impl FnOnce(&dyn Sql, i64) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let mut conn = self.take()?;
        // A kept connection may have been lost while idle (a server restarted) without its
        // runtime noticing: the snapshot's first statement then fails, before `op` runs, and
        // the read starts over once on a new connection.
        let mut fresh = false;
        let mut op = Some(op);
        loop {
            let out = Self::snapshot(&mut conn, &mut op);
            match out {
                Err(Retry::Lost(_)) if !fresh => {
                    conn = Conn::new(self.config.clone());
                    fresh = true;
                }
                out => {
                    self.give_back(conn);
                    return out.map_err(Retry::into_error);
                }
            }
        }
    }

    /// Runs `op` (taken only once the snapshot began) on `conn` in one read-only snapshot;
    /// [`Retry::Lost`] when the connection was found lost before `op` ran.
    fn snapshot<T>(
        conn: &mut Conn,
        op: &mut Option<impl FnOnce(&dyn Sql, i64) -> Result<T, CoreError>>,
    ) -> Result<T, Retry> {
        if let Err(e) = conn.connect() {
            return Err(Retry::Unreachable(crate::store::sql::pg_message(&e)));
        }
        let db = conn.pipe(PgPipe::read);
        let now = match db.now_ms() {
            Ok(now) => now,
            Err(e) if conn.is_closed() => return Err(Retry::Lost(e)),
            Err(e) => return Err(Retry::Failed(e.into())),
        };
        let op = op.take().expect("a read's operation runs once");
        let out = crate::store::guarded(|| op(&db, now));
        // Read only: ending it either way changes nothing.
        db.rollback();
        out.map_err(Retry::Failed)
    }

    /// Hands `conn` back: kept unless it was lost.
    fn give_back(&self, conn: Conn) {
        let mut pool = lock(&self.pool);
        pool.busy -= 1;
        if !conn.is_closed() {
            pool.idle.push(conn);
        }
        self.freed.notify_one();
    }

    /// An idle connection, or a new one while fewer than [`READERS`] are busy; waits up to
    /// [`READ_WAIT`] for one to come free.
    fn take(&self) -> Result<Conn, CoreError> {
        let deadline = Instant::now() + READ_WAIT;
        let mut pool = lock(&self.pool);
        loop {
            if let Some(conn) = pool.idle.pop() {
                pool.busy += 1;
                return Ok(conn);
            }
            if pool.busy < READERS {
                pool.busy += 1;
                return Ok(Conn::new(self.config.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CoreError::Unreachable(format!(
                    "all {READERS} read connections stayed busy for {} s",
                    READ_WAIT.as_secs()
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// How a read on one connection ended without an answer.
enum Retry {
    /// The connection was lost before the read began: worth one more try on a new one.
    Lost(crate::store::sql::Error),
    /// The server cannot be reached.
    Unreachable(String),
    /// The read's own error (or the store's).
    Failed(CoreError),
}

impl Retry {
    fn into_error(self) -> CoreError {
        match self {
            Retry::Lost(e) => CoreError::Unreachable(e.to_string()),
            Retry::Unreachable(message) => CoreError::Unreachable(message),
            Retry::Failed(e) => e,
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
