//! What PostgreSQL's executor ([`super::PgPipe`]) is made of: prepared statements by their text,
//! the binding of values to PostgreSQL's types and the reading of its rows.

use crate::store::sql::{Error, Result, Row, ValueRef};
use postgres_types::{IsNull, ToSql, Type};
use std::cell::RefCell;
use std::collections::HashMap;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Prepared statements of one PostgreSQL connection, by their text.
#[derive(Default)]
pub(crate) struct StmtCache {
    stmts: HashMap<String, tokio_postgres::Statement>,
}

impl StmtCache {
    /// Forgets every statement (after the connection they were prepared on is gone).
    pub(crate) fn clear(&mut self) {
        self.stmts.clear();
    }
}

/// `sql`'s statement from `cache`, prepared by `prepare` the first
/// time.
pub(super) fn cached(
    cache: &RefCell<StmtCache>,
    sql: &str,
    prepare: impl FnOnce(&str) -> std::result::Result<tokio_postgres::Statement, tokio_postgres::Error>,
) -> std::result::Result<tokio_postgres::Statement, tokio_postgres::Error> {
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

/// `args` as the PostgreSQL client binds them.
pub(super) fn bound<'a>(args: &'a [ValueRef<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as _).collect()
}

/// Hands each of `rows` to `each` until it returns `false`.
pub(super) fn each_row(
    rows: &[tokio_postgres::Row],
    each: &mut dyn FnMut(&Row<'_>) -> Result<bool>,
) -> Result<()> {
    for r in rows {
        if !each(&Row::Postgres(r))? {
            break;
        }
    }
    Ok(())
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
pub(super) enum Value {
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

/// The database server's clock, in ms since the epoch.
pub(super) const CLOCK: &str =
    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Whether a statement that returns rows may change some: `INSERT ... RETURNING` and the like
/// do, a `SELECT` does not (its row locks are the transaction's, harmless to the operations
/// after it).
pub(super) fn changes_rows(sql: &str) -> bool {
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

pub(crate) fn pg_value<T>(
    r: &tokio_postgres::Row,
    i: usize,
    f: impl FnOnce(ValueRef<'_>) -> Result<T>,
) -> Result<T> {
    /// Column `i` as a `C`, NULL as such.
    fn read<'r, C: postgres_types::FromSql<'r>>(
        r: &'r tokio_postgres::Row,
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
