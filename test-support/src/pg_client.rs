//! A blocking PostgreSQL session for tests: `tokio-postgres` driven by a runtime of its own
//! (one worker thread, so the connection makes progress while the test thread does other
//! things: a transaction dropped is rolled back at once, not at the session's next statement).

use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// A session on a test server, for setting up, holding locks and checking what is stored.
pub struct PgClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl PgClient {
    /// Connects to `url`.
    ///
    /// # Errors
    /// The connection's.
    pub fn try_connect(url: &str) -> Result<Self, tokio_postgres::Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a test session's runtime starts");
        let (client, connection) = rt.block_on(tokio_postgres::connect(url, NoTls))?;
        rt.spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { rt, client })
    }

    /// Connects to `url`.
    ///
    /// # Panics
    /// When it cannot.
    pub fn connect(url: &str) -> Self {
        Self::try_connect(url).expect("connect to the test server")
    }

    /// The runtime that drives the session, to run its client's futures on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The session's client.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Runs `sql` (statements separated by `;`, no parameters).
    ///
    /// # Errors
    /// The server's.
    pub fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.rt.block_on(self.client.batch_execute(sql))
    }

    /// Runs `sql` with `params`; the rows it changed.
    ///
    /// # Errors
    /// The server's.
    pub fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.rt.block_on(self.client.execute(sql, params))
    }

    /// The rows of `sql` with `params`.
    ///
    /// # Errors
    /// The server's.
    pub fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.rt.block_on(self.client.query(sql, params))
    }

    /// The one row of `sql` with `params`.
    ///
    /// # Errors
    /// The server's, or when it returns no row or several.
    pub fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.rt.block_on(self.client.query_one(sql, params))
    }

    /// Begins a transaction, rolled back when dropped unless committed.
    ///
    /// # Errors
    /// The server's.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        self.batch_execute("BEGIN")?;
        Ok(Transaction {
            session: self,
            open: true,
        })
    }
}

/// A transaction of a [`PgClient`], rolled back when dropped unless committed.
pub struct Transaction<'a> {
    session: &'a mut PgClient,
    open: bool,
}

impl Transaction<'_> {
    /// The session, to run statements in the transaction.
    pub fn session(&self) -> &PgClient {
        self.session
    }

    /// Runs `sql` with `params` in the transaction; the rows it changed.
    ///
    /// # Errors
    /// The server's.
    pub fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.session.execute(sql, params)
    }

    /// Commits.
    ///
    /// # Errors
    /// The server's.
    pub fn commit(mut self) -> Result<(), tokio_postgres::Error> {
        self.open = false;
        self.session.batch_execute("COMMIT")
    }

    /// Rolls back.
    ///
    /// # Errors
    /// The server's.
    pub fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        self.open = false;
        self.session.batch_execute("ROLLBACK")
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.session.batch_execute("ROLLBACK");
        }
    }
}
