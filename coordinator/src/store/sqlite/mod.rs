//! SQLite's side of the store: its statements where they differ from PostgreSQL's.

use super::sql::Sql;

/// A SQLite transaction, as the rules see it (see [`super::tx::Tx`]).
pub(crate) struct Tx<'a>(pub(crate) &'a dyn Sql);

impl super::tx::Tx for Tx<'_> {
    fn sql(&self) -> &dyn Sql {
        self.0
    }
}
