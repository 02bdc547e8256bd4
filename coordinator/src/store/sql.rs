//! The seam between the operations and the databases: one small interface ([`Sql`]) that every
//! operation runs over, implemented by SQLite's connection and by a PostgreSQL transaction.
//!
//! It runs the store's statements as written: each engine's own (`store::sqlite`,
//! `store::postgres`), and those both run alike (`store::tx`), which keep to what both accept:
//! numbered parameters (`$1`; SQLite binds each by its number), flags as 0/1 integers compared
//! explicitly. Nothing rewrites a statement. Values cross the seam as one small dynamic type
//! ([`ValueRef`]), bound from typed values with [`ToArg`] and read into them with
//! [`FromValue`]; ids and states are parsed at that boundary, never passed on as text.

use postgres_types::{IsNull, ToSql, Type};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which engine a [`Sql`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one writer at a time, so reads inside a write transaction see the last word.
    Sqlite,
    /// PostgreSQL: several coordinators write at once; rows are locked before decisions.
    Postgres,
}

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
    Postgres(#[from] postgres::Error),
}

impl Error {
    /// PostgreSQL's SQLSTATE, when it is a PostgreSQL error from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code().map(postgres::error::SqlState::code),
            _ => None,
        }
    }
}

/// PostgreSQL's error with the server's message and SQLSTATE (its `Display` says only "db
/// error").
pub fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres {}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("postgres: {e}: {source}"),
            None => format!("postgres: {e}"),
        },
    }
}

/// A store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns "no rows" into `None`, as `rusqlite::OptionalExtension` does.
pub trait OptionalExtension<T> {
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

/// A type that binds as a parameter.
pub trait ToArg {
    /// The value to bind.
    fn to_arg(&self) -> ValueRef<'_>;
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn to_arg(&self) -> ValueRef<'_> {
        (**self).to_arg()
    }
}

impl<T: ToArg> ToArg for Option<T> {
    fn to_arg(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, ToArg::to_arg)
    }
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn to_arg(&self) -> ValueRef<'_> {
                ValueRef::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u64, usize, u16, u8);

impl ToArg for bool {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Integer(i64::from(*self))
    }
}

impl ToArg for f64 {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl ToArg for f32 {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Real(f64::from(*self))
    }
}

impl ToArg for str {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToArg for String {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToArg for [u8] {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToArg for Vec<u8> {
    fn to_arg(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToArg for ValueRef<'_> {
    fn to_arg(&self) -> ValueRef<'_> {
        *self
    }
}

/// A statement's parameters: `()`, an array of one type, or [`params!`](crate::params)'s slice.
pub trait Params {
    /// The values, in order.
    fn args(&self) -> Vec<ValueRef<'_>>;
}

impl Params for () {
    fn args(&self) -> Vec<ValueRef<'_>> {
        Vec::new()
    }
}

impl<T: ToArg, const N: usize> Params for [T; N] {
    fn args(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(ToArg::to_arg).collect()
    }
}

impl Params for &[&dyn ToArg] {
    fn args(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(|a| a.to_arg()).collect()
    }
}

/// Parameters of mixed types, as `rusqlite::params!`.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::sql::ToArg]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::sql::ToArg),+] as &[&dyn $crate::store::sql::ToArg]
    };
}
pub use crate::params;

/// A value crossing the seam, borrowed: a parameter as bound, or a column as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// An integer (PostgreSQL's booleans read as 0 and 1).
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// A type a column reads into.
pub trait FromValue: Sized {
    /// Converts the column's value.
    ///
    /// # Errors
    /// When the value is of another kind or out of range.
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError>;
}

fn wrong(v: ValueRef<'_>, want: &str) -> BoxError {
    format!("{v:?} is not {want}").into()
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
                match v {
                    ValueRef::Integer(i) => Ok(<$t>::try_from(i)?),
                    _ => Err(wrong(v, "an integer")),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u64, usize, u16, u8);

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
        match v {
            ValueRef::Integer(i) => Ok(i != 0),
            _ => Err(wrong(v, "a flag")),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
        match v {
            ValueRef::Real(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            ValueRef::Integer(i) => Ok(i as f64),
            _ => Err(wrong(v, "a number")),
        }
    }
}

impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
        match v {
            ValueRef::Text(s) => Ok(s.to_owned()),
            _ => Err(wrong(v, "text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            _ => Err(wrong(v, "bytes")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, BoxError> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column index (`usize`; a trait so `row.get::<_, T>(i)` reads as with rusqlite).
pub trait RowIndex {
    /// The index.
    fn index(&self) -> usize;
}

impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One result row, borrowed from its engine.
pub enum Row<'a> {
    /// A SQLite row.
    Sqlite(&'a rusqlite::Row<'a>),
    /// A PostgreSQL row.
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// How many columns the row has.
    pub fn column_count(&self) -> usize {
        match self {
            Row::Sqlite(r) => r.as_ref().column_count(),
            Row::Postgres(r) => r.len(),
        }
    }

    /// Column `idx` as a `T`.
    ///
    /// # Errors
    /// [`Error::Conversion`] when it is not one; the engine's error for a bad index.
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        let i = idx.index();
        self.with_value(i, |v| T::from_value(v).map_err(|e| Error::Conversion(i, e)))
    }

    /// Column `idx` as its engine-neutral value, printed (for dumps).
    ///
    /// # Errors
    /// The engine's error for a bad index.
    pub fn debug(&self, idx: usize) -> Result<String> {
        self.with_value(idx, |v| Ok(format!("{v:?}")))
    }

    /// Whether column `idx` is NULL.
    ///
    /// # Errors
    /// The engine's error for a bad index.
    pub fn is_null(&self, idx: usize) -> Result<bool> {
        self.with_value(idx, |v| Ok(v == ValueRef::Null))
    }

    fn with_value<T>(&self, i: usize, f: impl FnOnce(ValueRef<'_>) -> Result<T>) -> Result<T> {
        match self {
            Row::Sqlite(r) => {
                use rusqlite::types::ValueRef as V;
                let v = match r.get_ref(i)? {
                    V::Null => ValueRef::Null,
                    V::Integer(i) => ValueRef::Integer(i),
                    V::Real(f) => ValueRef::Real(f),
                    V::Text(t) => ValueRef::Text(
                        std::str::from_utf8(t).map_err(|e| Error::Conversion(i, e.into()))?,
                    ),
                    V::Blob(b) => ValueRef::Blob(b),
                };
                f(v)
            }
            Row::Postgres(r) => pg_value(r, i, f),
        }
    }
}

/// What the operations run over: a connection inside a write transaction, or a read.
pub trait Sql {
    /// The engine.
    fn dialect(&self) -> Dialect;

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
pub const MERGED_MAX: usize = 32;

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

// --- SQLite ---------------------------------------------------------------------------------

impl rusqlite::ToSql for ValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as V};
        Ok(ToSqlOutput::Borrowed(match self {
            ValueRef::Null => V::Null,
            ValueRef::Integer(i) => V::Integer(*i),
            ValueRef::Real(f) => V::Real(*f),
            ValueRef::Text(s) => V::Text(s.as_bytes()),
            ValueRef::Blob(b) => V::Blob(b),
        }))
    }
}

/// Binds `args` to `stmt`'s numbered parameters by their numbers: `$n` takes `args[n - 1]`,
/// wherever it first appears (SQLite numbers named parameters in the order they appear).
fn lite_bind(stmt: &mut rusqlite::Statement<'_>, args: &[ValueRef<'_>]) -> Result<()> {
    for i in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(i)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(i);
        let arg = args
            .get(n - 1)
            .ok_or(rusqlite::Error::InvalidParameterCount(n, args.len()))?;
        stmt.raw_bind_parameter(i, arg)?;
    }
    Ok(())
}

fn lite_exec(c: &rusqlite::Connection, sql: &str, args: &[ValueRef<'_>]) -> Result<usize> {
    let mut stmt = c.prepare_cached(sql)?;
    lite_bind(&mut stmt, args)?;
    Ok(stmt.raw_execute()?)
}

fn lite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[ValueRef<'_>],
    each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
) -> Result<()> {
    let mut stmt = c.prepare_cached(sql)?;
    lite_bind(&mut stmt, args)?;
    let mut rows = stmt.raw_query();
    while let Some(r) = rows.next()? {
        if !each(&Row::Sqlite(r))? {
            break;
        }
    }
    Ok(())
}

macro_rules! sqlite_sql {
    ($($t:ty),*) => {$(
        impl Sql for $t {
            fn dialect(&self) -> Dialect {
                Dialect::Sqlite
            }
            fn exec(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<usize> {
                lite_exec(self, sql, args)
            }
            fn rows(
                &self,
                sql: &str,
                args: &[ValueRef<'_>],
                each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
            ) -> Result<()> {
                lite_rows(self, sql, args, each)
            }
            fn exec_batch(&self, sql: &str) -> Result<()> {
                Ok(rusqlite::Connection::execute_batch(self, sql)?)
            }
        }
    )*};
}
sqlite_sql!(
    rusqlite::Connection,
    rusqlite::Transaction<'_>,
    rusqlite::Savepoint<'_>
);

// --- PostgreSQL -----------------------------------------------------------------------------

/// A PostgreSQL transaction (or, for reads and tests, a client) with its prepared statements,
/// seen through [`Sql`], on the blocking client.
pub struct Pg<'a, C: postgres::GenericClient> {
    client: RefCell<&'a mut C>,
    cache: &'a RefCell<StmtCache>,
}

/// Prepared statements of one PostgreSQL connection, by their text.
#[derive(Default)]
pub struct StmtCache {
    stmts: HashMap<String, postgres::Statement>,
}

impl StmtCache {
    /// Forgets every statement (after the connection they were prepared on is gone).
    pub fn clear(&mut self) {
        self.stmts.clear();
    }
}

/// `sql`'s statement from `cache`, prepared by `prepare` the first
/// time.
fn cached(
    cache: &RefCell<StmtCache>,
    sql: &str,
    prepare: impl FnOnce(&str) -> std::result::Result<postgres::Statement, postgres::Error>,
) -> std::result::Result<postgres::Statement, postgres::Error> {
    if let Some(s) = cache.borrow().stmts.get(sql) {
        return Ok(s.clone());
    }
    let stmt = prepare(sql)?;
    cache
        .borrow_mut()
        .stmts
        .insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

impl<'a, C: postgres::GenericClient> Pg<'a, C> {
    /// `client` seen through [`Sql`], preparing statements into `cache`.
    pub fn new(client: &'a mut C, cache: &'a RefCell<StmtCache>) -> Self {
        Self {
            client: RefCell::new(client),
            cache,
        }
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        Ok(cached(self.cache, sql, |q| {
            self.client.borrow_mut().prepare(q)
        })?)
    }
}

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<usize> {
        let stmt = self.statement(sql)?;
        let params = bound(args);
        let n = self.client.borrow_mut().execute(&stmt, &params)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn rows(
        &self,
        sql: &str,
        args: &[ValueRef<'_>],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        let stmt = self.statement(sql)?;
        let params = bound(args);
        each_row(&self.client.borrow_mut().query(&stmt, &params)?, each)
    }

    fn exec_batch(&self, sql: &str) -> Result<()> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }

    fn now_ms(&self) -> Result<i64> {
        let stmt = self.statement(CLOCK)?;
        Ok(self.client.borrow_mut().query_one(&stmt, &[])?.get(0))
    }
}

/// `args` as the PostgreSQL client binds them.
fn bound<'a>(args: &'a [ValueRef<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as _).collect()
}

/// Hands each of `rows` to `each` until it returns `false`.
fn each_row(rows: &[postgres::Row], each: &mut dyn FnMut(&Row<'_>) -> Result<bool>) -> Result<()> {
    for r in rows {
        if !each(&Row::Postgres(r))? {
            break;
        }
    }
    Ok(())
}

/// `n` parameters numbered on from `first`: `?first, ?first+1, ...`.
pub fn numbered(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statements, each with its count of parameters (`$1`..`?n`, every one used), as one: all
/// but the last become `WITH` terms, and each one's parameters are numbered after those of the
/// statements before it. PostgreSQL runs every data-modifying `WITH` term once, whether or not
/// the rest of the statement reads it.
pub fn with_terms(stmts: &[(&str, usize)]) -> String {
    let mut offset = 0;
    let mut parts: Vec<String> = stmts
        .iter()
        .map(|(sql, params)| {
            let by = offset;
            offset += params;
            each_param(sql, |n| match n.parse::<usize>() {
                Ok(n) => format!("${}", n + by),
                Err(_) => format!("${n}"),
            })
        })
        .collect();
    let Some(last) = parts.pop() else {
        return String::new();
    };
    if parts.is_empty() {
        return last;
    }
    let terms: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, sql)| format!("w{i} AS ({sql})"))
        .collect();
    format!("WITH {} {last}", terms.join(", "))
}

/// `sql` with each parameter outside quotes (`$` and the digits after it) replaced by what `f`
/// makes of its digits.
fn each_param(sql: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted || !chars.peek().is_some_and(char::is_ascii_digit) {
            out.push(c);
            continue;
        }
        let mut n = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            n.push(d);
        }
        out.push_str(&f(&n));
    }
    out
}

impl ToSql for ValueRef<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let name = ty.name();
        match self {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Integer(i) => match name {
                "int8" => i.to_sql(ty, out),
                "int4" => i32::try_from(*i)?.to_sql(ty, out),
                "int2" => i16::try_from(*i)?.to_sql(ty, out),
                "bool" => (*i != 0).to_sql(ty, out),
                #[allow(clippy::cast_precision_loss)]
                "float8" => (*i as f64).to_sql(ty, out),
                #[allow(clippy::cast_precision_loss)]
                "float4" => (*i as f32).to_sql(ty, out),
                "text" | "varchar" | "bpchar" | "unknown" => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot bind to {name}").into()),
            },
            ValueRef::Real(f) => match name {
                "float8" => f.to_sql(ty, out),
                #[allow(clippy::cast_possible_truncation)]
                "float4" => (*f as f32).to_sql(ty, out),
                _ => Err(format!("a float cannot bind to {name}").into()),
            },
            ValueRef::Text(s) => match name {
                "text" | "varchar" | "bpchar" | "name" | "unknown" | "json" | "jsonb" => {
                    s.to_sql(ty, out)
                }
                _ => Err(format!("text cannot bind to {name}").into()),
            },
            ValueRef::Blob(b) => match name {
                "bytea" => b.to_sql(ty, out),
                _ => Err(format!("bytes cannot bind to {name}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

/// A value crossing the seam, owned: a parameter of a statement whose outcome is read later.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&ValueRef<'_>> for Value {
    fn from(v: &ValueRef<'_>) -> Self {
        match *v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(t.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let v = match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        };
        v.to_sql(ty, out)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

/// A statement sent and not yet answered.
type Pending<'a> = Pin<Box<dyn Future<Output = std::result::Result<(), postgres::Error>> + 'a>>;

/// A PostgreSQL writer session's transaction, pipelined: what runs through [`Sql::defer`] (and
/// the `BEGIN`) is sent with the next statement whose answer is needed, or with the `COMMIT`, in
/// one write, and their answers are read together, so the changes an operation makes cost no
/// round trip of their own. Statements stay in order; after a failure the server refuses the
/// rest of the transaction, which is then only rolled back. For a writer that runs several
/// operations in one transaction it notes what ran: whether an operation changed anything since
/// [`PgPipe::begin_op`], and whether the server refused a statement. Its clock is read once.
pub struct PgPipe<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a tokio_postgres::Client,
    cache: &'a RefCell<StmtCache>,
    pending: RefCell<Vec<Pending<'a>>>,
    wrote: Cell<bool>,
    aborted: Cell<bool>,
    now: Cell<Option<i64>>,
    /// Reads made ahead for the batch's operations ([`PgPipe::probe`]), each served once.
    probed: RefCell<Vec<Probed>>,
    /// The operation running.
    op: Cell<Option<usize>>,
    /// Changes waiting to be merged ([`Merged`]), with their arguments, in the order they came.
    merged: RefCell<Vec<(&'static Merged, Vec<Value>)>>,
}

/// A read made ahead for an operation of the batch: its text, its arguments and its rows.
struct Probed {
    op: Option<usize>,
    sql: &'static str,
    args: Vec<Option<String>>,
    rows: Vec<postgres::Row>,
}

impl<'a> PgPipe<'a> {
    /// Begins a transaction on `client` (sent with its first statement), driven by `rt`,
    /// preparing statements into `cache`.
    pub fn begin(
        rt: &'a tokio::runtime::Runtime,
        client: &'a tokio_postgres::Client,
        cache: &'a RefCell<StmtCache>,
    ) -> Self {
        let pipe = Self {
            rt,
            client,
            cache,
            pending: RefCell::new(Vec::new()),
            wrote: Cell::new(false),
            aborted: Cell::new(false),
            now: Cell::new(None),
            probed: RefCell::new(Vec::new()),
            op: Cell::new(None),
            merged: RefCell::new(Vec::new()),
        };
        pipe.pending
            .borrow_mut()
            .push(Box::pin(client.batch_execute("BEGIN")));
        pipe
    }

    /// Commits: the statements not yet answered go with the `COMMIT`. An error without a
    /// SQLSTATE means the connection was lost, and with it what the server did.
    ///
    /// # Errors
    /// The first statement's that failed, or the commit's.
    pub fn commit(self) -> Result<()> {
        self.answered(self.client.batch_execute("COMMIT"))
    }

    /// Rolls back, dropping what was not sent yet.
    pub fn rollback(self) {
        self.merged.borrow_mut().clear();
        self.pending.borrow_mut().clear();
        let _ = self.rt.block_on(self.client.batch_execute("ROLLBACK"));
    }

    /// Starts operation `op` (its index in the batch): counts anew what [`PgPipe::op_wrote`]
    /// reports, and answers its reads made ahead ([`PgPipe::probe`]) from then on.
    pub fn begin_op(&self, op: usize) {
        self.wrote.set(false);
        self.op.set(Some(op));
    }

    /// Whether a statement that may change rows ran since [`PgPipe::begin_op`].
    pub fn op_wrote(&self) -> bool {
        self.wrote.get()
    }

    /// Whether the server refused a statement (or the connection failed): the transaction can
    /// then only be rolled back.
    pub fn aborted(&self) -> bool {
        self.aborted.get()
    }

    /// Makes the read `many` (in the writer's batch form, see [`crate::store::Probe`]) for
    /// every argument list of `each`, in one statement, and keeps the rows of each list whose
    /// operation (its index in the batch) is given, for that operation's first read of `one`
    /// with those arguments, which is then answered without a statement. A list without one
    /// (its rows may have changed by its operation's turn) is read again then; its rows' locks
    /// are taken all the same, in the order `many` sorts them.
    ///
    /// # Errors
    /// The statement's.
    pub fn probe(
        &self,
        one: &'static str,
        many: &'static str,
        each: &[(&[Option<String>], Option<usize>)],
    ) -> Result<()> {
        let width = each.first().map_or(0, |(args, _)| args.len());
        let columns: Vec<Vec<Option<&str>>> = (0..width)
            .map(|c| each.iter().map(|(args, _)| args[c].as_deref()).collect())
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as _).collect();
        let stmt = self.statement(many)?;
        let rows = self.answered(self.client.query(&stmt, &params))?;
        let mut kept: Vec<Probed> = each
            .iter()
            .map(|(args, _)| Probed {
                op: None,
                sql: one,
                args: args.to_vec(),
                rows: Vec::new(),
            })
            .collect();
        for row in rows {
            // Each row ends with the 1-based ordinal of the argument list it answers.
            let at: i64 = row.get(row.len() - 1);
            let at = usize::try_from(at - 1).ok().filter(|&i| i < kept.len());
            kept[at.expect("a probe's ordinal names one of its argument lists")]
                .rows
                .push(row);
        }
        self.probed.borrow_mut().extend(
            kept.into_iter()
                .zip(each)
                .filter_map(|(p, (_, op))| op.map(|op| Probed { op: Some(op), ..p })),
        );
        Ok(())
    }

    /// The rows made ahead for the read `sql` with `args`, taken (served once).
    fn probed(&self, sql: &str, args: &[ValueRef<'_>]) -> Option<Vec<postgres::Row>> {
        let op = self.op.get();
        let same = |p: &Probed| {
            p.op == op
                && p.sql == sql
                && p.args.len() == args.len()
                && p.args.iter().zip(args).all(|(a, b)| match (a, b) {
                    (None, ValueRef::Null) => true,
                    (Some(a), ValueRef::Text(b)) => a == b,
                    _ => false,
                })
        };
        let mut probed = self.probed.borrow_mut();
        let at = probed.iter().position(same)?;
        Some(probed.swap_remove(at).rows)
    }

    /// Sends what is pending and then `last`, and waits for all their answers: `last`'s, or
    /// the first failure among them.
    fn answered<T>(
        &self,
        last: impl Future<Output = std::result::Result<T, postgres::Error>>,
    ) -> Result<T> {
        self.send_merged()?;
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        // Both join in order: each request is sent when first polled.
        let (earlier, out) = self
            .rt
            .block_on(async { futures::join!(futures::future::join_all(pending), last) });
        let out = earlier
            .into_iter()
            .collect::<std::result::Result<Vec<()>, _>>()
            .and(out);
        if out.is_err() {
            self.aborted.set(true);
        }
        Ok(out?)
    }

    /// Queues the changes waiting to be merged, by phase, each kind as statements of up to
    /// [`MERGED_MAX`] operations.
    fn send_merged(&self) -> Result<()> {
        let mut waiting = std::mem::take(&mut *self.merged.borrow_mut());
        if waiting.is_empty() {
            return Ok(());
        }
        waiting.sort_by_key(|(change, _)| change.phase);
        let mut rest = waiting.as_slice();
        while let Some((change, _)) = rest.first() {
            let mut seen: Vec<&Value> = Vec::new();
            let same = rest
                .iter()
                .take(MERGED_MAX)
                .take_while(|(c, args)| {
                    let key = &args[change.distinct];
                    let fits = std::ptr::eq(*c, *change) && !seen.contains(&key);
                    seen.push(key);
                    fits
                })
                .count();
            let (chunk, after) = rest.split_at(same);
            rest = after;
            let stmt = self.statement(&(change.many)(chunk.len()))?;
            let owned: Vec<Value> = chunk.iter().flat_map(|(_, a)| a.iter().cloned()).collect();
            let client = self.client;
            self.pending.borrow_mut().push(Box::pin(async move {
                let params = owned.iter().map(|v| v as &(dyn ToSql + Sync));
                client.execute_raw(&stmt, params).await.map(|_| ())
            }));
        }
        Ok(())
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        let stmt = cached(self.cache, sql, |q| {
            self.rt.block_on(self.client.prepare(q))
        });
        if stmt.is_err() {
            self.aborted.set(true);
        }
        Ok(stmt?)
    }
}

impl Sql for PgPipe<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<usize> {
        let stmt = self.statement(sql)?;
        let params = bound(args);
        self.wrote.set(true);
        let n = self.answered(self.client.execute(&stmt, &params))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn defer(&self, sql: &str, args: &[ValueRef<'_>]) -> Result<()> {
        self.send_merged()?;
        let stmt = self.statement(sql)?;
        let owned: Vec<Value> = args.iter().map(Value::from).collect();
        let client = self.client;
        self.wrote.set(true);
        self.pending.borrow_mut().push(Box::pin(async move {
            let params = owned.iter().map(|v| v as &(dyn ToSql + Sync));
            client.execute_raw(&stmt, params).await.map(|_| ())
        }));
        Ok(())
    }

    fn rows(
        &self,
        sql: &str,
        args: &[ValueRef<'_>],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        if let Some(rows) = self.probed(sql, args) {
            return each_row(&rows, each);
        }
        let stmt = self.statement(sql)?;
        let params = bound(args);
        if changes_rows(sql) {
            self.wrote.set(true);
        }
        each_row(&self.answered(self.client.query(&stmt, &params))?, each)
    }

    fn exec_batch(&self, sql: &str) -> Result<()> {
        self.wrote.set(true);
        self.answered(self.client.batch_execute(sql))
    }

    fn now_ms(&self) -> Result<i64> {
        if let Some(now) = self.now.get() {
            return Ok(now);
        }
        // Prepared once per session, like every statement: a text would be parsed and planned
        // anew, in a round trip of its own.
        let stmt = self.statement(CLOCK)?;
        let row = self.answered(self.client.query_one(&stmt, &[]))?;
        let now = row.get(0);
        self.now.set(Some(now));
        Ok(now)
    }

    fn merge(&self, change: &'static Merged, args: &[ValueRef<'_>]) -> Result<bool> {
        self.wrote.set(true);
        let owned = args.iter().map(Value::from).collect();
        self.merged.borrow_mut().push((change, owned));
        Ok(true)
    }
}

/// The database server's clock, in ms since the epoch.
const CLOCK: &str = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Whether a statement that returns rows may change some: `INSERT ... RETURNING` and the like
/// do, a `SELECT` does not (its row locks are the transaction's, harmless to the operations
/// after it).
fn changes_rows(sql: &str) -> bool {
    !sql.trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("SELECT"))
}

/// A NUMERIC (what PostgreSQL's `SUM` of integers returns), read as an integer when it has no
/// fraction and fits, else as a float.
struct Numeric(ValueRef<'static>);

impl<'r> postgres_types::FromSql<'r> for Numeric {
    fn from_sql(_: &Type, raw: &'r [u8]) -> Result<Self, BoxError> {
        let word = |i: usize| -> Result<u16, BoxError> {
            raw.get(i..i + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "short NUMERIC".into())
        };
        let ndigits = usize::from(word(0)?);
        #[allow(clippy::cast_possible_wrap)]
        let weight = word(2)? as i16;
        let sign = word(4)?;
        let dscale = word(6)?;
        if sign == 0xC000 {
            return Ok(Numeric(ValueRef::Real(f64::NAN)));
        }
        let mut exact: Option<i128> = Some(0);
        let mut approx = 0f64;
        for k in 0..ndigits {
            let d = word(8 + 2 * k)?;
            let power = i32::from(weight) - i32::try_from(k)?;
            approx += f64::from(d) * 10000f64.powi(power);
            exact = match (exact, u32::try_from(power)) {
                (Some(e), Ok(p)) if p < 8 => Some(e + i128::from(d) * 10000i128.pow(p)),
                (Some(e), Ok(_)) => Some(e).filter(|_| d == 0).and(None),
                _ if d == 0 => exact,
                _ => None,
            };
        }
        let negative = sign == 0x4000;
        if dscale == 0 {
            if let Some(e) = exact.and_then(|e| i64::try_from(if negative { -e } else { e }).ok()) {
                return Ok(Numeric(ValueRef::Integer(e)));
            }
        }
        Ok(Numeric(ValueRef::Real(if negative {
            -approx
        } else {
            approx
        })))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn pg_value<T>(
    r: &postgres::Row,
    i: usize,
    f: impl FnOnce(ValueRef<'_>) -> Result<T>,
) -> Result<T> {
    /// Column `i` as a `C`, NULL as such.
    fn read<'r, C: postgres_types::FromSql<'r>>(
        r: &'r postgres::Row,
        i: usize,
        to: impl FnOnce(C) -> ValueRef<'r>,
    ) -> Result<ValueRef<'r>> {
        Ok(r.try_get::<_, Option<C>>(i)?.map_or(ValueRef::Null, to))
    }
    let column = r
        .columns()
        .get(i)
        .ok_or_else(|| Error::Conversion(i, "no such column".into()))?;
    let v = match column.type_().name() {
        "int8" => read(r, i, ValueRef::Integer)?,
        "int4" => read(r, i, |v: i32| ValueRef::Integer(v.into()))?,
        "int2" => read(r, i, |v: i16| ValueRef::Integer(v.into()))?,
        "bool" => read(r, i, |v: bool| ValueRef::Integer(v.into()))?,
        "float8" => read(r, i, ValueRef::Real)?,
        "float4" => read(r, i, |v: f32| ValueRef::Real(v.into()))?,
        "numeric" => read(r, i, |n: Numeric| n.0)?,
        "bytea" => read(r, i, ValueRef::Blob)?,
        _ => read(r, i, ValueRef::Text)?,
    };
    f(v)
}

/// `n` rows of parameters, numbered on from 1, the first row's cast to `types`.
pub fn typed_rows(n: usize, types: &[&str]) -> String {
    let w = types.len();
    let first: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("CAST(${} AS {ty})", i + 1))
        .collect();
    let mut rows = vec![format!("({})", first.join(", "))];
    rows.extend((1..n).map(|k| format!("({})", numbered(k * w + 1, w))));
    rows.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_become_with_terms_with_their_parameters_numbered_on() {
        assert_eq!(
            with_terms(&[
                ("INSERT INTO a (x, y) VALUES ($1, $2)", 2),
                ("UPDATE b SET s = '$1' WHERE id = $1", 1),
                ("UPDATE c SET n = n + 1 WHERE id = $1 AND k = $2", 2),
            ]),
            "WITH w0 AS (INSERT INTO a (x, y) VALUES ($1, $2)), \
             w1 AS (UPDATE b SET s = '$1' WHERE id = $3) \
             UPDATE c SET n = n + 1 WHERE id = $4 AND k = $5"
        );
        assert_eq!(
            with_terms(&[("DELETE FROM a WHERE id = $1", 1)]),
            "DELETE FROM a WHERE id = $1"
        );
    }

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
