//! PostgreSQL's pipelined sessions ([`PgPipe`]): the writers' transactions, the reads' snapshots,
//! and tests' sessions, all on `tokio-postgres` driven by a runtime the caller blocks on.

use super::exec::{bound, cached, changes_rows, each_row, StmtCache, Value, CLOCK};
use crate::store::sql::{Merged, Result, Row, Sql, ValueRef, MERGED_MAX};
use postgres_types::ToSql;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;

/// A statement sent and not yet answered.
type Pending<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<(), tokio_postgres::Error>> + 'a>>;

/// A PostgreSQL writer session's transaction, pipelined: what runs through [`Sql::defer`] (and
/// the `BEGIN`) is sent with the next statement whose answer is needed, or with the `COMMIT`, in
/// one write, and their answers are read together, so the changes an operation makes cost no
/// round trip of their own. Statements stay in order; after a failure the server refuses the
/// rest of the transaction, which is then only rolled back. For a writer that runs several
/// operations in one transaction it notes what ran: whether an operation changed anything since
/// [`PgPipe::begin_op`], and whether the server refused a statement. Its clock is read once.
pub(crate) struct PgPipe<'a> {
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
    /// Whether it sent a `BEGIN` of its own (and so ends with a `COMMIT` or a `ROLLBACK`).
    begun: bool,
}

/// A read made ahead for an operation of the batch: its text, its arguments and its rows.
struct Probed {
    op: Option<usize>,
    sql: &'static str,
    args: Vec<Option<String>>,
    rows: Vec<tokio_postgres::Row>,
}

impl<'a> PgPipe<'a> {
    /// Begins a transaction on `client` (sent with its first statement), driven by `rt`,
    /// preparing statements into `cache`.
    pub(crate) fn begin(
        rt: &'a tokio::runtime::Runtime,
        client: &'a tokio_postgres::Client,
        cache: &'a RefCell<StmtCache>,
    ) -> Self {
        Self::starting(rt, client, cache, Some("BEGIN"))
    }

    /// Begins a read-only transaction in one snapshot (REPEATABLE READ), sent with its first
    /// statement: what a read of several statements sees is one state of the database.
    pub(crate) fn read(
        rt: &'a tokio::runtime::Runtime,
        client: &'a tokio_postgres::Client,
        cache: &'a RefCell<StmtCache>,
    ) -> Self {
        Self::starting(
            rt,
            client,
            cache,
            Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )
    }

    /// The session as it is, without a `BEGIN`: in autocommit mode each statement commits as
    /// it runs; inside a transaction begun elsewhere, statements join it. [`PgPipe::commit`]
    /// then only sends what is pending.
    #[cfg(test)]
    pub(crate) fn within(
        rt: &'a tokio::runtime::Runtime,
        client: &'a tokio_postgres::Client,
        cache: &'a RefCell<StmtCache>,
    ) -> Self {
        Self::starting(rt, client, cache, None)
    }

    fn starting(
        rt: &'a tokio::runtime::Runtime,
        client: &'a tokio_postgres::Client,
        cache: &'a RefCell<StmtCache>,
        begin: Option<&'static str>,
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
            begun: begin.is_some(),
        };
        if let Some(begin) = begin {
            pipe.pending
                .borrow_mut()
                .push(Box::pin(client.batch_execute(begin)));
        }
        pipe
    }

    /// Commits: the statements not yet answered go with the `COMMIT` (or, without a `BEGIN`
    /// of its own, alone). An error without a SQLSTATE means the connection was lost, and with
    /// it what the server did.
    ///
    /// # Errors
    /// The first statement's that failed, or the commit's.
    pub(crate) fn commit(self) -> Result<()> {
        if self.begun {
            self.answered(self.client.batch_execute("COMMIT"))
        } else {
            self.answered(std::future::ready(Ok(())))
        }
    }

    /// Rolls back, dropping what was not sent yet.
    pub(crate) fn rollback(self) {
        self.merged.borrow_mut().clear();
        self.pending.borrow_mut().clear();
        if self.begun {
            let _ = self.rt.block_on(self.client.batch_execute("ROLLBACK"));
        }
    }

    /// Starts operation `op` (its index in the batch): counts anew what [`PgPipe::op_wrote`]
    /// reports, and answers its reads made ahead ([`PgPipe::probe`]) from then on.
    pub(crate) fn begin_op(&self, op: usize) {
        self.wrote.set(false);
        self.op.set(Some(op));
    }

    /// Whether a statement that may change rows ran since [`PgPipe::begin_op`].
    pub(crate) fn op_wrote(&self) -> bool {
        self.wrote.get()
    }

    /// Whether the server refused a statement (or the connection failed): the transaction can
    /// then only be rolled back.
    pub(crate) fn aborted(&self) -> bool {
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
    pub(crate) fn probe(
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
    fn probed(&self, sql: &str, args: &[ValueRef<'_>]) -> Option<Vec<tokio_postgres::Row>> {
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
        last: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
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

    fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement> {
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
