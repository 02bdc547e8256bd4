//! The core operations, one file each. Every operation is a plain function over an open
//! transaction and a [`Ctx`] (the clock reading, the tunables, and the effects to publish after
//! commit), so it runs the same under NATS, HTTP and unit tests.

pub(crate) mod cancel;
pub(crate) mod decide;
pub(crate) mod gold;
pub(crate) mod heartbeat;
#[cfg(test)]
mod invariants;
pub(crate) mod leaderboard;
pub(crate) mod lease;
#[cfg(test)]
mod policy_tests;
pub(crate) mod release;
pub(crate) mod reset;
pub(crate) mod starved;
pub(crate) mod stats;
pub(crate) mod submit;
pub(crate) mod sweep;
pub(crate) mod task;
pub(crate) mod task_add;
pub(crate) mod task_get;
pub(crate) mod task_list;
pub(crate) mod token;
pub(crate) mod verify;
pub(crate) mod worker;
pub(crate) mod workers;

use crate::api::{Effect, Settings};

/// What an operation runs with.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The clock, in ms since the epoch, read once per operation.
    pub now: i64,
    /// The tunables.
    pub settings: Settings,
    /// Effects to publish after commit.
    pub effects: Vec<Effect>,
}

impl Ctx {
    /// A context at time `now`.
    pub(crate) fn new(now: i64, settings: Settings) -> Self {
        Self {
            now,
            settings,
            effects: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh in-memory store and helpers shared by the operation tests.

    use super::*;
    // The tests' prelude: what most operation tests name.
    pub(crate) use super::task::load_task;
    pub(crate) use crate::api::Effect;
    pub(crate) use crate::error::CoreError;
    use crate::store::sql::Dialect;
    pub(crate) use crate::store::sql::{Row, Sql};
    pub(crate) use crate::store::tx::Tx;
    pub(crate) use protocol::messages::FailureReason;
    use protocol::messages::{
        Lease, LeaseReply, LeaseRequest, NewTask, SubmitReply, SubmitRequest, TaskAddRequest,
    };
    pub(crate) use protocol::{LeaseId, TaskId, TaskType, WorkerId};

    /// Each scenario named, a function of a [`TestStore`], as a test of its own on SQLite, and
    /// all of them on one PostgreSQL server (a fresh set of tables each).
    macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(crate::ops::testing::TestStore::sqlite());
                }
            )*
        }

        #[test]
        fn every_scenario_on_postgres() {
            let server = crate::ops::testing::PgServer::start();
            $(
                eprintln!("postgres: {}", stringify!($name));
                $name(server.fresh());
            )*
        }
    };
}
    pub(crate) use on_both_engines;

    /// A store for operation tests, on either engine.
    pub(crate) enum TestStore {
        Sqlite(rusqlite::Connection),
        Postgres(Box<PgTest>),
    }

    /// A session on a test server's database, emptied when made.
    pub(crate) struct PgTest {
        client: std::cell::RefCell<postgres::Client>,
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
                TestStore::Postgres(pg) => {
                    let mut client = pg.client.borrow_mut();
                    let mut tx = client.transaction().expect("tx");
                    let r = f(&crate::store::postgres::Tx(
                        &crate::store::postgres::Pg::new(&mut tx, &pg.cache),
                    ));
                    if r.is_ok() {
                        tx.commit().expect("commit");
                    }
                    r
                }
            }
        }
    }

    impl PgTest {
        /// This session in autocommit mode.
        fn autocommit<T>(&self, f: impl FnOnce(&dyn Sql) -> T) -> T {
            let mut client = self.client.borrow_mut();
            f(&crate::store::postgres::Pg::new(&mut *client, &self.cache))
        }
    }

    impl Sql for TestStore {
        fn dialect(&self) -> Dialect {
            match self {
                TestStore::Sqlite(_) => Dialect::Sqlite,
                TestStore::Postgres(_) => Dialect::Postgres,
            }
        }

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
            let mut client =
                postgres::Client::connect(&self.url, postgres::NoTls).expect("connect");
            client
                .batch_execute(
                    "TRUNCATE task, lease, submission, worker, worker_score, worker_token,
                     verification, gold, gold_answer, task_batch, health_probe, score_delta, lease_cursor
                     RESTART IDENTITY CASCADE",
                )
                .expect("truncate");
            TestStore::Postgres(Box::new(PgTest {
                client: std::cell::RefCell::new(client),
                cache: std::cell::RefCell::default(),
            }))
        }
    }

    impl TestStore {
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

    pub(crate) fn settings() -> Settings {
        Settings {
            lease_ms: 10_000,
            heartbeat_ttl_ms: 6_000,
            max_attempts_default: 3,
            // Traps and gold are random: tests that want them ask for them.
            trap_rate: 0.0,
            gold_rate: 0.0,
            ..Settings::default()
        }
    }

    pub(crate) fn ctx(now: i64) -> Ctx {
        Ctx::new(now, settings())
    }

    pub(crate) fn wid(s: &str) -> WorkerId {
        WorkerId::new(s).expect("worker id")
    }

    pub(crate) fn add(conn: &mut impl TestDb, now: i64, task: NewTask) -> TaskId {
        let reply = conn
            .write(|tx| {
                task_add::run(
                    tx,
                    &mut ctx(now),
                    TaskAddRequest {
                        batch_id: None,
                        tasks: vec![task],
                    },
                )
            })
            .expect("task add");
        reply.task_ids[0]
    }

    /// Runs a lease request in a transaction of its own and commits it.
    pub(crate) fn lease(conn: &mut impl TestDb, now: i64, req: LeaseRequest) -> LeaseReply {
        conn.write(|tx| lease::run(tx, &mut ctx(now), req))
            .expect("lease")
    }

    pub(crate) fn lease_req(worker: &str, max: u32) -> LeaseRequest {
        LeaseRequest {
            worker_id: wid(worker),
            capabilities: vec![TaskType::sentiment()],
            max_tasks: max,
            task_id: None,
            model: Some("test".into()),
            model_hash: None,
        }
    }

    pub(crate) fn dump(conn: &dyn Sql) -> String {
        crate::store::dump(conn).expect("dump")
    }

    /// One lease for `worker` on a `sentiment` task, if any.
    pub(crate) fn take(conn: &mut impl TestDb, now: i64, worker: &str) -> Vec<Lease> {
        lease(conn, now, lease_req(worker, 1)).leases
    }

    /// Runs a submission in autocommit mode: every statement commits as it runs, so a refusal
    /// that wrote anything before refusing leaves it in the store for the tests to see (in the
    /// coordinator it would be rolled back).
    pub(crate) fn send(
        conn: &mut impl TestDb,
        now: i64,
        task: &TaskId,
        req: SubmitRequest,
    ) -> (Result<SubmitReply, CoreError>, Vec<Effect>) {
        let mut c = ctx(now);
        let r = submit::run(&*conn.tx(), &mut c, task, req);
        (r, c.effects)
    }

    /// A label answer on `lease`.
    pub(crate) fn answer(
        lease: &Lease,
        worker: &str,
        label: &str,
        confidence: f64,
    ) -> SubmitRequest {
        vote(lease.lease_id, wid(worker), label, confidence)
    }

    /// A label answer on lease `lease_id`.
    pub(crate) fn vote(
        lease_id: LeaseId,
        worker_id: WorkerId,
        label: impl Into<String>,
        confidence: f64,
    ) -> SubmitRequest {
        SubmitRequest {
            lease_id,
            worker_id,
            label: label.into(),
            embedding: None,
            generation: None,
            verification: None,
            confidence,
            model: None,
            model_hash: None,
        }
    }

    /// `worker`'s points.
    pub(crate) fn points(conn: &dyn Sql, worker: &str) -> i64 {
        conn.query_row(
            "SELECT COALESCE((SELECT points FROM worker_score WHERE worker_id = $1), 0)
                  + CAST(COALESCE((SELECT SUM(points) FROM score_delta WHERE worker_id = $1), 0) AS BIGINT)",
            [worker],
            |r| r.get(0),
        )
        .expect("points")
    }
}
