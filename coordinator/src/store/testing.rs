//! Stores for tests, on either engine: a fresh in-memory SQLite store, a PostgreSQL server
//! with a fresh set of tables per test, transactions committed on success, and autocommit mode
//! (each statement commits as it runs) for reads and for refusals that must change nothing.

use crate::store::postgres::{PgPipe, StmtCache};
use crate::store::sql::{Row, Sql};
use crate::store::tx::Tx;
use test_support::PgClient;

/// A store for operation tests, on either engine.
pub(crate) enum TestStore {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgTest>),
}

/// A session on a test server's database, emptied when made.
pub(crate) struct PgTest {
    session: test_support::PgClient,
    cache: std::cell::RefCell<crate::store::postgres::StmtCache>,
}

/// What the operation tests' helpers run on: a store that runs a closure in a transaction
/// (committed on `Ok`), and is itself a [`Sql`] in autocommit mode (each statement commits
/// as it runs) for reads and for [`send`].
pub(crate) trait TestDb: Sql {
    fn write<T, E>(&mut self, f: impl FnOnce(&dyn Tx) -> Result<T, E>) -> Result<T, E>;

    /// The store in autocommit mode as the rules see a transaction: each statement commits
    /// as it runs.
    fn tx(&self) -> Box<dyn Tx + '_>;
}

impl TestDb for rusqlite::Connection {
    fn tx(&self) -> Box<dyn Tx + '_> {
        Box::new(crate::store::sqlite::Tx(self))
    }

    fn write<T, E>(&mut self, f: impl FnOnce(&dyn Tx) -> Result<T, E>) -> Result<T, E> {
        let tx = self.transaction().expect("tx");
        let r = f(&crate::store::sqlite::Tx(&tx));
        if r.is_ok() {
            tx.commit().expect("commit");
        }
        r
    }
}

impl TestDb for TestStore {
    fn tx(&self) -> Box<dyn Tx + '_> {
        match self {
            TestStore::Sqlite(_) => Box::new(crate::store::sqlite::Tx(self)),
            TestStore::Postgres(_) => Box::new(crate::store::postgres::Tx(self)),
        }
    }

    fn write<T, E>(&mut self, f: impl FnOnce(&dyn Tx) -> Result<T, E>) -> Result<T, E> {
        match self {
            TestStore::Sqlite(conn) => conn.write(f),
            TestStore::Postgres(pg) => pg.transaction(f),
        }
    }
}

impl PgTest {
    /// This session in autocommit mode.
    fn autocommit<T>(
        &self,
        f: impl FnOnce(&dyn Sql) -> crate::store::sql::Result<T>,
    ) -> crate::store::sql::Result<T> {
        let pipe = self.pipe(PgPipe::within);
        let out = f(&pipe);
        pipe.commit()?;
        out
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    fn transaction<T, E>(&self, f: impl FnOnce(&dyn Tx) -> Result<T, E>) -> Result<T, E> {
        run_in_transaction(&self.session, &self.cache, f)
    }

    fn pipe<'c>(
        &'c self,
        start: fn(
            &'c tokio::runtime::Runtime,
            &'c tokio_postgres::Client,
            &'c std::cell::RefCell<StmtCache>,
        ) -> PgPipe<'c>,
    ) -> PgPipe<'c> {
        start(self.session.runtime(), self.session.client(), &self.cache)
    }
}

/// Runs `f` as the rules would, in a transaction of `session` (committed when `f` returns
/// `Ok`), preparing statements into `cache`.
pub(crate) fn run_in_transaction<T, E>(
    session: &test_support::PgClient,
    cache: &std::cell::RefCell<StmtCache>,
    f: impl FnOnce(&dyn Tx) -> Result<T, E>,
) -> Result<T, E> {
    let pipe = PgPipe::begin(session.runtime(), session.client(), cache);
    let r = f(&crate::store::postgres::Tx(&pipe));
    if r.is_ok() {
        pipe.commit().expect("commit");
    } else {
        pipe.rollback();
    }
    r
}

impl Sql for TestStore {
    fn exec(
        &self,
        sql: &str,
        args: &[crate::store::sql::ValueRef<'_>],
    ) -> crate::store::sql::Result<usize> {
        match self {
            TestStore::Sqlite(c) => c.exec(sql, args),
            TestStore::Postgres(pg) => pg.autocommit(|c| c.exec(sql, args)),
        }
    }

    fn rows(
        &self,
        sql: &str,
        args: &[crate::store::sql::ValueRef<'_>],
        each: &mut dyn FnMut(&Row<'_>) -> crate::store::sql::Result<bool>,
    ) -> crate::store::sql::Result<()> {
        match self {
            TestStore::Sqlite(c) => c.rows(sql, args, each),
            TestStore::Postgres(pg) => pg.autocommit(|c| c.rows(sql, args, each)),
        }
    }

    fn exec_batch(&self, sql: &str) -> crate::store::sql::Result<()> {
        match self {
            TestStore::Sqlite(c) => c.exec_batch(sql),
            TestStore::Postgres(pg) => pg.autocommit(|c| c.exec_batch(sql)),
        }
    }
}

/// A PostgreSQL server for operation tests, schema migrated once.
pub(crate) struct PgServer {
    _server: test_support::Postgres,
    url: String,
}

impl PgServer {
    pub(crate) fn start() -> Self {
        let server = test_support::Postgres::start();
        let url = server.url();
        crate::store::postgres::PgStore::open(&url, "ops-test", Default::default())
            .expect("migrate");
        Self {
            _server: server,
            url,
        }
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A session on the database with every table emptied.
    pub(crate) fn fresh(&self) -> TestStore {
        let session = PgClient::connect(&self.url);
        session
            .batch_execute(
                "TRUNCATE task, lease, submission, worker, worker_score, worker_token,
                 verification, gold, gold_answer, task_batch, health_probe, score_delta, lease_cursor,
                 calibration, confusion
                 RESTART IDENTITY CASCADE",
            )
            .expect("truncate");
        TestStore::Postgres(Box::new(PgTest {
            session,
            cache: std::cell::RefCell::default(),
        }))
    }
}

impl TestStore {
    /// Whether it is the PostgreSQL store.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, TestStore::Postgres(_))
    }

    pub(crate) fn sqlite() -> Self {
        TestStore::Sqlite(store())
    }

    /// See `Sql::query_row`, in autocommit mode.
    pub(crate) fn query_row<P: crate::store::sql::Params, T>(
        &self,
        sql: &str,
        p: P,
        f: impl FnOnce(&Row<'_>) -> crate::store::sql::Result<T>,
    ) -> crate::store::sql::Result<T> {
        (self as &dyn Sql).query_row(sql, p, f)
    }
}

pub(crate) fn store() -> rusqlite::Connection {
    let mut conn = rusqlite::Connection::open_in_memory().expect("in-memory sqlite");
    crate::store::prepare(&mut conn).expect("schema");
    conn
}

pub(crate) fn dump(conn: &dyn Sql) -> String {
    crate::store::dump(conn).expect("dump")
}

/// The store's invariants, each a count of the rows that break it (0 when it holds); the
/// property test checks them after every step. (A lease cursor is checked on SQLite alone, where
/// cursors are exact.)
pub(crate) fn invariants(conn: &TestStore) -> Vec<(&'static str, i64)> {
    let broken: [(&str, &str); 21] = [
        ("counter of live leases", "SELECT COUNT(*) FROM task t WHERE active_leases != (SELECT COUNT(*) FROM lease l WHERE l.task_id = t.id AND l.state = 'active')"),
        ("counter of submissions", "SELECT COUNT(*) FROM task t WHERE submissions != (SELECT COUNT(*) FROM submission s WHERE s.task_id = t.id)"),
        ("more slots taken than required", "SELECT COUNT(*) FROM task WHERE active_leases + submissions > required"),
        ("finalized without all votes or an answer", "SELECT COUNT(*) FROM task WHERE status = 'finalized' AND (submissions != required OR (final_label IS NULL AND final_embedding IS NULL AND final_token_ids IS NULL) OR active_leases != 0)"),
        ("all votes in but not decided", "SELECT COUNT(*) FROM task WHERE submissions = required AND status NOT IN ('finalized', 'cancelled') AND failure_reason IS DISTINCT FROM 'no_consensus'"),
        ("no consensus declared before all votes", "SELECT COUNT(*) FROM task WHERE failure_reason = 'no_consensus' AND submissions != max_answers"),
        ("more answers than max_answers", "SELECT COUNT(*) FROM task WHERE submissions > max_answers OR required > max_answers"),
        ("decided without a quorum", "SELECT COUNT(*) FROM task t WHERE t.status = 'finalized' AND t.policy = 'quorum' AND t.gold IS NULL
            AND (SELECT COUNT(*) FROM submission s WHERE s.task_id = t.id AND s.agreed = 1) < t.min_quorum"),
        ("decided on a tie", "SELECT COUNT(*) FROM task t WHERE t.status = 'finalized' AND t.policy = 'quorum' AND t.gold IS NULL
            AND EXISTS (SELECT 1 FROM submission s WHERE s.task_id = t.id AND s.agreed = 0 GROUP BY s.label
                        HAVING COUNT(*) >= (SELECT COUNT(*) FROM submission a WHERE a.task_id = t.id AND a.agreed = 1))"),
        ("inconclusive with a quorum", "SELECT COUNT(*) FROM task t WHERE t.inconclusive = 1 AND t.status IN ('queued', 'assigned')
            AND t.policy = 'quorum' AND (SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM submission s WHERE s.task_id = t.id GROUP BY s.label) AS g) >= t.min_quorum
            AND (SELECT COUNT(*) FROM (SELECT COUNT(*) AS n FROM submission s WHERE s.task_id = t.id GROUP BY s.label) AS g1
                 WHERE n = (SELECT MAX(m) FROM (SELECT COUNT(*) AS m FROM submission s WHERE s.task_id = t.id GROUP BY s.label) AS g2)) = 1"),
        ("a gold answer voted", "SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id WHERE t.gold IS NOT NULL AND s.agreed IS NOT NULL"),
        ("gold answers not counted", "SELECT (SELECT COALESCE(SUM(gold_answered), 0) FROM worker_score) + (SELECT COALESCE(SUM(gold_answered), 0) FROM score_delta) != (SELECT COUNT(*) FROM gold_answer)
            OR (SELECT COUNT(*) FROM gold_answer) != (SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id WHERE t.gold IS NOT NULL)"),
        ("finalized below its threshold", "SELECT COUNT(*) FROM task WHERE status = 'finalized' AND policy = 'posterior' AND gold IS NULL
            AND (posterior IS NULL OR posterior < threshold OR final_confidence IS DISTINCT FROM posterior)"),
        ("a lone decision not lone", "SELECT COUNT(*) FROM task WHERE lone_worker IS NOT NULL AND (status != 'finalized' OR submissions != 1)"),
        // `assigned` is derived from the live leases, never stored.
        ("assigned stored", "SELECT COUNT(*) FROM task WHERE status = 'assigned'"),
        ("failed early or still leased", "SELECT COUNT(*) FROM task WHERE status = 'failed' AND ((failure_reason = 'max_attempts' AND attempts < max_attempts) OR failure_reason IS NULL OR active_leases != 0)"),
        ("a live lease on a closed task", "SELECT COUNT(*) FROM lease l JOIN task t ON t.id = l.task_id WHERE l.state = 'active' AND t.status IN ('finalized', 'failed', 'cancelled')"),
        ("a worker leasing a task it answered", "SELECT COUNT(*) FROM lease l JOIN submission s ON s.task_id = l.task_id AND s.worker_id = l.worker_id WHERE l.state = 'active'"),
        ("agreement set before finalization", "SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id WHERE t.gold IS NULL AND (t.status = 'finalized') != (s.agreed IS NOT NULL)"),
        ("points differ from agreeing votes", "SELECT (SELECT COALESCE(SUM(points), 0) FROM worker_score) + (SELECT COALESCE(SUM(points), 0) FROM score_delta) != (SELECT COUNT(*) FROM submission WHERE agreed = 1)"),
        // A lease cursor may only pass open tasks its worker holds or has answered.
        ("a lease cursor past a task its worker could take", "SELECT COUNT(*) FROM temp.lease_cursor c JOIN task t ON t.type = c.type AND t.seq <= c.after
            WHERE t.status IN ('queued', 'assigned') AND t.required > t.active_leases + t.submissions
              AND (t.model_hash IS NULL OR t.model_hash IS (SELECT model_hash FROM worker w WHERE w.id = c.worker_id))
              AND NOT EXISTS (SELECT 1 FROM lease l WHERE l.task_id = t.id AND l.worker_id = c.worker_id AND l.state = 'active')
              AND NOT EXISTS (SELECT 1 FROM submission s WHERE s.task_id = t.id AND s.worker_id = c.worker_id)"),
    ];
    broken
        .into_iter()
        .filter(|(_, sql)| !sql.contains("temp.lease_cursor") || !conn.is_postgres())
        .map(|(what, sql)| (what, count(conn, sql)))
        .collect()
}

/// Tasks finished (finalized, failed or cancelled), gold ones left out.
pub(crate) fn finished_tasks(conn: &dyn Sql) -> i64 {
    count(
        conn,
        "SELECT COUNT(*) FROM task WHERE status IN ('finalized', 'failed', 'cancelled') AND gold IS NULL",
    )
}

fn count(conn: &dyn Sql, sql: &str) -> i64 {
    conn.query_row(sql, (), |r| r.get(0)).expect(sql)
}

/// The status task `task` is stored with (not as views read it).
pub(crate) fn stored_status(conn: &dyn Sql, task: &protocol::TaskId) -> String {
    conn.query_row(
        "SELECT status FROM task WHERE id = $1",
        [task.to_string()],
        |r| r.get(0),
    )
    .expect("task")
}

/// The definitions of the `task` table's indexes (PostgreSQL).
pub(crate) fn task_index_defs(conn: &dyn Sql) -> Vec<String> {
    conn.query_map(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'task'::regclass",
        (),
        |r| r.get(0),
    )
    .expect("indexes")
    .collect::<Result<_, _>>()
    .expect("indexes")
}

/// The workers holding live leases, by lease id.
pub(crate) fn live_lease_holders(conn: &dyn Sql) -> Vec<String> {
    conn.query_map(
        "SELECT worker_id FROM lease WHERE state = 'active' ORDER BY id",
        (),
        |r| r.get(0),
    )
    .expect("leases")
    .collect::<Result<_, _>>()
    .expect("leases")
}

/// A transaction of another session holding task `id`'s row lock (PostgreSQL), as another
/// coordinator deciding on it would.
pub(crate) fn hold_task<'c>(
    c: &'c mut PgClient,
    id: &protocol::TaskId,
) -> test_support::pg_client::Transaction<'c> {
    let held = c.transaction().expect("tx");
    held.execute(
        "SELECT 1 FROM task WHERE id = $1 FOR NO KEY UPDATE",
        &[&id.to_string()],
    )
    .expect("lock");
    held
}

/// Expires lease `lease` on task `task` in `tx` (another session's transaction), as the
/// sweeper does, without committing.
pub(crate) fn expire_elsewhere(
    tx: &test_support::pg_client::Transaction<'_>,
    lease: &protocol::LeaseId,
    task: &protocol::TaskId,
) {
    tx.execute(
        "UPDATE lease SET state = 'expired', ended_at = 2 WHERE id = $1",
        &[&lease.to_string()],
    )
    .expect("expire");
    tx.execute(
        "UPDATE task SET active_leases = active_leases - 1, attempts = attempts + 1 WHERE id = $1",
        &[&task.to_string()],
    )
    .expect("count");
}

/// Waits until a session of the server at `url` waits for a lock.
///
/// # Panics
/// When none does within 30 s.
pub(crate) fn until_one_waits(url: &str) {
    let watch = PgClient::connect(url);
    for _ in 0..1_500 {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .expect("activity")
            .get(0);
        if waiting > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no session waited for a lock within 30 s");
}

/// How many tasks the database at `c` holds.
pub(crate) fn count_tasks(c: &PgClient) -> i64 {
    c.query_one("SELECT COUNT(*) FROM task", &[])
        .expect("count")
        .get(0)
}

/// The label submitted on lease `lease`.
pub(crate) fn answered_label(conn: &dyn Sql, lease: &protocol::LeaseId) -> String {
    conn.query_row(
        "SELECT label FROM submission WHERE lease_id = $1",
        [lease.to_string()],
        |r| r.get(0),
    )
    .expect("sent")
}
