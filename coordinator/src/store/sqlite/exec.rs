//! SQLite's executor: the store's [`Sql`] seam over a rusqlite connection, transaction or
//! savepoint; numbered parameters bound by their numbers.

use crate::store::sql::{Result, Row, Sql, ValueRef};

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
