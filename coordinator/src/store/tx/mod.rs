//! The domain store interface the rules call: one transaction's reads and changes, named for
//! what they mean (a task, the answers so far, a vote, a decision, points), never SQL.
//!
//! One implementation per engine ([`super::sqlite::Tx`], [`super::postgres::Tx`]), each owning
//! its SQL where the engines differ. Statements both engines run alike are default methods over
//! a thin executor ([`Exec::sql`]), so that only real differences are written twice. The
//! interface comes in parts by area, and [`Tx`] is all of them:
//! - [`Tasks`]: a task, its transitions (close, fail, an attempt used), lease cursors, workers;
//! - [`Adds`]: tasks and gold items added, the gold rules' reads and writes;
//! - [`Leases`]: the open tasks a worker may take, slots, leases;
//! - [`Votes`]: what a submission is decided from, the vote, the decisions;
//! - [`Scores`]: points and the other per-worker counters, in one engine-aware path;
//! - [`Scoring`]: cross-scoring of generated answers;
//! - [`Truth`]: the posterior policy's calibrations, records, weights and lone finalizations;
//! - [`Views`]: the read side;
//! - [`Admin`]: worker tokens, the operator's reset.

pub(crate) mod adds;
pub(crate) mod admin;
pub(crate) mod leases;
pub(crate) mod scores;
pub(crate) mod scoring;
pub(crate) mod tasks;
pub(crate) mod truth;
pub(crate) mod views;
pub(crate) mod votes;

pub(crate) use adds::{Adds, GoldAnswer, GoldInsert, GoldItem, TaskInsert};
pub(crate) use admin::Admin;
pub(crate) use leases::{Leases, OpenTask};
pub(crate) use scores::{Credit, Scores};
pub(crate) use scoring::{Scoring, ScoringRow, ScoringSlot};
pub(crate) use tasks::{NamedLease, Tasks};
pub(crate) use truth::{Truth, WeighedAnswer};
pub(crate) use views::Views;
pub(crate) use votes::{AnswerContext, Earlier, NewVote, Votes};

use super::sql::{Result, Sql};

/// The executor every part of the interface runs over.
pub(crate) trait Exec {
    /// The connection or session, inside the open transaction.
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
            "INSERT INTO health_probe (id, at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            [now],
        )?;
        Ok(())
    }
}

/// Runs `sql` (flag `$1`, row id `$2`) for each `(row id, flag)` of `flags`.
fn set_flags<S: Exec + ?Sized>(s: &S, sql: &str, flags: &[(i64, bool)]) -> Result<()> {
    let mut set = s.sql().prepare_cached(sql)?;
    for (id, flag) in flags {
        set.execute(super::sql::params![flag, id])?;
    }
    Ok(())
}

/// One open transaction, as the rules see it: every part of the interface.
pub(crate) trait Tx:
    Exec + Tasks + Adds + Leases + Votes + Scores + Scoring + Truth + Views + Admin
{
}

impl<T> Tx for T where
    T: Exec + Tasks + Adds + Leases + Votes + Scores + Scoring + Truth + Views + Admin
{
}
