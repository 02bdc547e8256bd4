//! The seam between the operations and the databases: one small interface ([`Sql`]) that every
//! operation runs over, implemented by SQLite's connection and by a PostgreSQL transaction.
//!
//! It runs the store's statements as written: each engine's own (`store::sqlite`,
//! `store::postgres`), and those both run alike (`store::tx`), which keep to what both accept:
//! numbered parameters (`$1`; SQLite binds each by its number), flags as 0/1 integers compared
//! explicitly. Nothing rewrites a statement. Values cross the seam as one small dynamic type
//! ([`ValueRef`]), bound from typed values with [`ToArg`] and read into them with
//! [`FromValue`]; ids and states are parsed at that boundary, never passed on as text.

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store error, whichever engine raised it; keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query that must return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    /// A column's value does not convert to the type asked for.
    #[error("column {0}: {1}")]
    Conversion(usize, #[source] BoxError),
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error.
    #[error("{}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

impl Error {
    /// PostgreSQL's SQLSTATE, when it is a PostgreSQL error from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code().map(tokio_postgres::error::SqlState::code),
            _ => None,
        }
    }
}

/// PostgreSQL's error with the server's message and SQLSTATE (its `Display` says only "db
/// error").
pub(crate) fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres {}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("postgres: {e}: {source}"),
            None => format!("postgres: {e}"),
        },
    }
}

/// A store result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns "no rows" into `None`, as `rusqlite::OptionalExtension` does.
pub(crate) trait OptionalExtension<T> {
    /// `Ok(None)` for [`Error::NoRows`].
    ///
    /// # Errors
    /// Every other error.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(t) => Ok(Some(t)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What the operations run over: a connection inside a write transaction, or a read.
pub trait Sql {
    /// Runs a statement that returns no rows; the rows it changed.
    ///
    /// # Errors
    /// The engine's.
    fn exec(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<usize>;

    /// Runs a query, handing each row to `each` until it returns `false`.
    ///
    /// # Errors
    /// The engine's, or `each`'s.
    fn rows(
        &self,
        sql: &str,
        args: &[ValueRef<'_>],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()>;

    /// Runs statements separated by `;`, without parameters.
    ///
    /// # Errors
    /// The engine's.
    fn exec_batch(&self, sql: &str) -> Result<()>;

    /// Runs a statement that returns no rows, when its caller needs neither how many rows it
    /// changed nor to know now that it worked. PostgreSQL's writer sessions send it at once and
    /// read its outcome with the next statement's (a statement that fails then fails that one,
    /// and the transaction); others run it as [`Sql::exec`].
    ///
    /// # Errors
    /// The engine's, now or from the next statement on.
    fn defer(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<()> {
        self.exec(sql, args).map(|_| ())
    }

    /// The store's clock, in ms since the epoch: this machine's for SQLite, the database
    /// server's for PostgreSQL (one clock for every coordinator).
    ///
    /// # Errors
    /// The engine's.
    fn now_ms(&self) -> Result<i64> {
        Ok(chrono::Utc::now().timestamp_millis())
    }

    /// Takes `args` for `change`'s statement for many, to be made with other operations' (see
    /// [`Merged`]); `false` when this connection does not merge, and `change` is to be made
    /// alone.
    ///
    /// # Errors
    /// The engine's.
    fn merge(&self, change: &'static Merged, args: &[ValueRef<'_>]) -> Result<bool> {
        let _ = (change, args);
        Ok(false)
    }
}

/// A change (one or more statements, deferred) that PostgreSQL's writer sessions make for the
/// operations of a batch at once: their arguments wait, and go as one statement for all of
/// them (in chunks of at most [`MERGED_MAX`]) with the next statement that is not such a change, or
/// with the commit. Elsewhere each operation makes its own.
///
/// Changes waiting together run in order of `phase`, then in the order they came: a change
/// may run after a change of a lower phase deferred after it. The operations that use one
/// make sure that is the same (they touch other rows), and that nothing they read in between
/// depends on it (a read sends what waits first).
pub struct Merged {
    /// Makes the change for one operation's arguments (as separate deferred statements).
    pub one: fn(&dyn Sql, &[ValueRef<'_>]) -> Result<()>,
    /// The statement for `n` operations' arguments, one operation's after another.
    pub many: fn(usize) -> String,
    /// Lower phases run first.
    pub phase: u8,
    /// The argument that differs between the operations of one statement (their task, say):
    /// a second operation with the same value goes into the next statement.
    pub distinct: usize,
}

/// Most operations a [`Merged`] statement takes at once.
pub(crate) const MERGED_MAX: usize = 32;

/// A statement to run, as `rusqlite::Statement` (preparation and caching are the engine's).
pub struct Stmt<'c> {
    db: &'c dyn Sql,
    sql: String,
}

impl Stmt<'_> {
    /// See [`Sql::exec`].
    ///
    /// # Errors
    /// The engine's.
    pub fn execute<P: Params>(&mut self, p: P) -> Result<usize> {
        self.db.exec(&self.sql, &p.args())
    }

    /// See [`Sql::defer`].
    ///
    /// # Errors
    /// The engine's.
    pub fn defer<P: Params>(&mut self, p: P) -> Result<()> {
        self.db.defer(&self.sql, &p.args())
    }

    /// The first row, through `f`; [`Error::NoRows`] when there is none.
    ///
    /// # Errors
    /// The engine's, or `f`'s.
    pub fn query_row<P: Params, T>(
        &mut self,
        p: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.db.query_row(&self.sql, p, f)
    }

    /// Every row, through `f`.
    ///
    /// # Errors
    /// The engine's (`f`'s errors are in the items).
    pub fn query_map<P: Params, T>(
        &mut self,
        p: P,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        self.db.query_map(&self.sql, p, f)
    }

    /// Whether the query returns a row.
    ///
    /// # Errors
    /// The engine's.
    pub fn exists<P: Params>(&mut self, p: P) -> Result<bool> {
        Ok(self.query_row(p, |_| Ok(())).optional()?.is_some())
    }
}

impl<'c> dyn Sql + 'c {
    /// Makes `change` with `args`: with other operations' on a connection that merges them
    /// (see [`Merged`]), alone elsewhere.
    ///
    /// # Errors
    /// The engine's, now or from the next statement on.
    pub fn defer_merged(&self, change: &'static Merged, args: &[&dyn ToArg]) -> Result<()> {
        let args = args.args();
        if !self.merge(change, &args)? {
            (change.one)(self, &args)?;
        }
        Ok(())
    }

    /// A statement (the engine caches its preparation).
    ///
    /// # Errors
    /// None today; kept for the shape of `rusqlite::Connection::prepare_cached`.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// As `prepare_cached`.
    ///
    /// # Errors
    /// None today.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        self.prepare_cached(sql)
    }

    /// See [`Sql::exec`].
    ///
    /// # Errors
    /// The engine's.
    pub fn execute<P: Params>(&self, sql: &str, p: P) -> Result<usize> {
        self.exec(sql, &p.args())
    }

    /// See [`Sql::exec_batch`].
    ///
    /// # Errors
    /// The engine's.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        self.exec_batch(sql)
    }

    /// The first row, through `f`; [`Error::NoRows`] when there is none.
    ///
    /// # Errors
    /// The engine's, or `f`'s.
    pub fn query_row<P: Params, T>(
        &self,
        sql: &str,
        p: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.rows(sql, &p.args(), &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r));
            }
            Ok(false)
        })?;
        out.unwrap_or(Err(Error::NoRows))
    }

    /// Every row, through `f`.
    ///
    /// # Errors
    /// The engine's (`f`'s errors are in the items).
    pub fn query_map<P: Params, T>(
        &self,
        sql: &str,
        p: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut out = Vec::new();
        self.rows(sql, &p.args(), &mut |r| {
            out.push(f(r));
            Ok(true)
        })?;
        Ok(out.into_iter())
    }
}

mod value;
pub(crate) use value::*;

/// `n` parameters numbered on from `first`: `?first, ?first+1, ...`.
pub(crate) fn numbered(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_binds_numbered_parameters_by_their_numbers() {
        // SQLite numbers `$n` in the order they first appear: `$2` here is its first.
        let c = rusqlite::Connection::open_in_memory().expect("db");
        let db: &dyn Sql = &c;
        let row: (String, String, String) = db
            .query_row("SELECT $2, $1, $2 || '$1'", params!["a", "b"], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("row");
        assert_eq!(row, ("b".into(), "a".into(), "b$1".into()));
        let short = db.query_row("SELECT $3", params!["a"], |r| r.get::<_, String>(0));
        assert!(short.is_err(), "{short:?}");
    }

    #[test]
    fn sqlite_reads_and_writes_through_the_seam() {
        let c = rusqlite::Connection::open_in_memory().expect("db");
        let db: &dyn Sql = &c;
        db.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB)")
            .expect("table");
        let n = db
            .execute(
                "INSERT INTO t VALUES ($1, $2, $3, $4)",
                params![7u32, "x", 0.5, vec![1u8, 2]],
            )
            .expect("insert");
        assert_eq!(n, 1);
        let row: (u32, String, f64, Vec<u8>, Option<i64>) = db
            .query_row("SELECT a, b, c, d, NULL FROM t", (), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("row");
        assert_eq!(row, (7, "x".to_owned(), 0.5, vec![1, 2], None));
        let none = db
            .query_row("SELECT a FROM t WHERE a = $1", [8], |r| r.get::<_, i64>(0))
            .optional()
            .expect("query");
        assert_eq!(none, None);
        let wrong = db.query_row("SELECT b FROM t", (), |r| r.get::<_, i64>(0));
        assert!(matches!(wrong, Err(Error::Conversion(0, _))), "{wrong:?}");
    }
}
