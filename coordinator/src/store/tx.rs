//! The domain store interface the rules call: one transaction's reads and changes, named for
//! what they mean (a task, the answers so far, a vote, a decision, points), never SQL.
//!
//! One implementation per engine ([`super::sqlite::Tx`], [`super::postgres::Tx`]), each owning
//! its SQL. Statements both engines run alike are this trait's default methods over a thin
//! executor ([`Tx::sql`]), so that only real differences are written twice.

use super::sql::{Result, Sql};

/// One open transaction, as the rules see it.
pub(crate) trait Tx {
    /// The executor the shared statements run over.
    fn sql(&self) -> &dyn Sql;

    /// The database's clock, in ms since the epoch: one clock for every coordinator.
    fn now_ms(&self) -> Result<i64> {
        self.sql().now_ms()
    }

    /// Whether the store reads: one cheap query.
    fn ping(&self) -> Result<()> {
        self.sql()
            .query_row("SELECT COUNT(*) FROM task LIMIT 1", (), |_| Ok(()))
    }

    /// Whether the store writes: one row written (the health probe's).
    fn probe_write(&self, now: i64) -> Result<()> {
        self.sql().execute(
            "INSERT INTO health_probe (id, at) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            [now],
        )?;
        Ok(())
    }
}
