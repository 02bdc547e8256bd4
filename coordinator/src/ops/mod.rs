//! The core operations, one file each. Every operation is a plain function over an open
//! transaction and a [`Ctx`] (the clock reading, the tunables, and the effects to publish after
//! commit), so it runs the same under NATS, HTTP and unit tests.

pub(crate) mod cancel;
pub(crate) mod decide;
pub(crate) mod events;
pub(crate) mod gold;
pub(crate) mod heartbeat;
#[cfg(test)]
mod invariants;
pub(crate) mod leaderboard;
pub(crate) mod lease;
#[cfg(test)]
mod policy_tests;
pub(crate) mod posterior;
#[cfg(test)]
mod posterior_tests;
pub(crate) mod release;
pub(crate) mod reset;
pub(crate) mod series;
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
    //! Helpers shared by the operation tests, over the store's test stores
    //! (`crate::store::testing`).

    use super::*;
    pub(crate) use crate::store::testing::*;
    // The tests' prelude: what most operation tests name.
    pub(crate) use super::task::load_task;
    pub(crate) use crate::api::Effect;
    pub(crate) use crate::error::CoreError;
    pub(crate) use crate::store::sql::Sql;
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

    pub(crate) fn settings() -> Settings {
        Settings {
            lease_ms: 10_000,
            heartbeat_ttl_ms: 6_000,
            max_attempts_default: 3,
            // Traps and gold are random: tests that want them ask for them.
            trap_rate: 0.0,
            gold_rate: 0.0,
            // Spot checks are random too.
            spot_check_rate: 0.0,
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
            input_tokens: None,
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

    /// `worker`'s points (with those appended and not folded in yet).
    pub(crate) fn points(conn: &impl TestDb, worker: &str) -> i64 {
        conn.tx().score(&wid(worker)).expect("points").points
    }
}
