//! Values crossing the seam: parameters bound from typed values ([`ToArg`], [`Params`]),
//! results read into them ([`FromValue`]) from a borrowed [`Row`] of either engine.

use super::{Error, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
pub(crate) use crate::params;

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
    Postgres(&'a tokio_postgres::Row),
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
            Row::Postgres(r) => crate::store::postgres::pg_value(r, i, f),
        }
    }
}
