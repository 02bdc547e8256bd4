//! Property tests: random sequences of operations (adds under either vote policy, leases with
//! gold mixed in, submissions honest and forged, resends, heartbeats, releases, cancels,
//! retries, clock jumps, sweeps) on a real SQLite store, with the store's invariants checked
//! after every step.

use super::testing::*;
use super::*;
use crate::error::CoreError;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use protocol::messages::{Heartbeat, NewTask, ReleaseRequest, TaskAddRequest};
use protocol::{ErrorCode, LeaseId, TaskId, TaskStatus, WorkerId};
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Step {
    Add {
        required: u32,
        max_attempts: u32,
        policy: u8,
    },
    Cancel {
        pick: usize,
    },
    Retry {
        pick: usize,
    },
    Lease {
        worker: usize,
        max: u32,
    },
    Submit {
        pick: usize,
        positive: bool,
    },
    Forge {
        pick: usize,
        worker: usize,
    },
    Resend {
        pick: usize,
    },
    Heartbeat {
        worker: usize,
        named: bool,
    },
    Release {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    Sweep,
}

const WORKERS: [&str; 4] = ["w0", "w1", "w2", "w3"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1u32..=4, 1u32..=3, 0u8..3).prop_map(|(required, max_attempts, policy)| Step::Add { required, max_attempts, policy }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Retry { pick }),
        1 => (0usize..4, 1u32..=3).prop_map(|(worker, max)| Step::Lease { worker, max }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, positive)| Step::Submit { pick, positive }),
        1 => (any::<usize>(), 0usize..4).prop_map(|(pick, worker)| Step::Forge { pick, worker }),
        1 => any::<usize>().prop_map(|pick| Step::Resend { pick }),
        1 => (0usize..4, any::<bool>()).prop_map(|(worker, named)| Step::Heartbeat { worker, named }),
        1 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        1 => (0i64..15_000).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Sweep),
    ]
}

/// Runs one operation in its own transaction, committing only on success, as `Core` does.
fn apply<T>(
    db: &mut TestStore,
    now: i64,
    finished: &mut HashMap<TaskId, usize>,
    op: impl FnOnce(&dyn Tx, &mut Ctx) -> Result<T, CoreError>,
) -> Result<T, CoreError> {
    apply_in(db, now, finished, Mode::Transaction, op)
}

/// How a step runs: in a transaction (committed when it succeeds, as the coordinator runs
/// it), or in autocommit mode, each statement committing as it runs, so a step claimed to
/// change nothing shows whatever it wrote before refusing.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Transaction,
    Autocommit,
}

fn apply_in<T>(
    db: &mut TestStore,
    now: i64,
    finished: &mut HashMap<TaskId, usize>,
    mode: Mode,
    op: impl FnOnce(&dyn Tx, &mut Ctx) -> Result<T, CoreError>,
) -> Result<T, CoreError> {
    let mut c = Ctx::new(now, gold_settings());
    let r = match mode {
        Mode::Transaction => db.write(|tx| op(tx, &mut c)),
        Mode::Autocommit => op(&*db.tx(), &mut c),
    };
    if r.is_ok() {
        for e in c.effects {
            if let Effect::Finished(ev) = e {
                if ev.status.is_terminal() {
                    *finished.entry(ev.task_id).or_default() += 1;
                } else if ev.status == TaskStatus::Inconclusive {
                    // A lone decision of a worker since caught wrong: open again.
                    finished.remove(&ev.task_id);
                }
            }
        }
    }
    if let Err(e) = &r {
        assert!(
            !matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable),
            "an operation hit the store: {e}"
        );
    }
    r
}

/// Gold in a quarter of the slots, and a quick quarantine (random answers are right half the
/// time, so workers go in and out of it).
fn gold_settings() -> Settings {
    Settings {
        gold_rate: 0.25,
        gold_min_answers: 3,
        gold_min_accuracy: 0.6,
        ..settings()
    }
}

fn check(conn: &TestStore, finished: &HashMap<TaskId, usize>) {
    for (what, broken) in invariants(conn) {
        assert_eq!(broken, 0, "invariant broken: {what}\n{}", dump(conn));
    }
    let finalized_or_failed = finished_tasks(conn);
    assert!(
        finished.values().all(|n| *n == 1),
        "a task finished twice: {finished:?}"
    );
    assert_eq!(
        finished.len() as i64,
        finalized_or_failed,
        "a finish without its event"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_sequence(steps in prop::collection::vec(step(), 1..80)) {
        run_steps(TestStore::sqlite(), steps)?;
    }
}

/// The same property on PostgreSQL (fewer cases: every statement is a round trip), one server
/// for all of them, emptied between cases.
#[test]
fn invariants_hold_under_any_sequence_on_postgres() {
    let server = PgServer::start();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(step(), 1..60), |steps| {
            run_steps(server.fresh(), steps)
        })
        .expect("the invariants hold on PostgreSQL");
}

fn run_steps(mut db: TestStore, steps: Vec<Step>) -> Result<(), TestCaseError> {
    {
        let mut now = 0i64;
        let mut leases: Vec<(LeaseId, TaskId, WorkerId, bool)> = Vec::new();
        let mut finished = HashMap::new();
        let mut tasks: Vec<TaskId> = Vec::new();
        let gold = protocol::policy::GoldAddRequest {
            items: (0..6)
                .map(|i| protocol::policy::GoldItem::sentiment(format!("gold {i}"), true))
                .collect(),
        };
        apply(&mut db, now, &mut finished, |c, x| gold::add(c, x, gold)).expect("gold");
        for s in steps {
            match s {
                Step::Add {
                    required,
                    max_attempts,
                    policy,
                } => {
                    let req = TaskAddRequest {
                        batch_id: None,
                        tasks: vec![NewTask {
                            required_submissions: Some(required),
                            max_attempts: Some(max_attempts),
                            policy: [
                                None,
                                Some(protocol::policy::Policy::Majority),
                                Some(protocol::policy::Policy::Posterior),
                            ][usize::from(policy)],
                            ..NewTask::text("t")
                        }],
                    };
                    let r = apply(&mut db, now, &mut finished, |c, x| task_add::run(c, x, req))
                        .expect("add");
                    tasks.extend(r.task_ids);
                }
                Step::Lease { worker, max } => {
                    let quarantined = gold::quarantine(&*db.tx(), &wid(WORKERS[worker]))
                        .expect("read")
                        .is_some();
                    let req = lease_req(WORKERS[worker], max);
                    let r = apply(&mut db, now, &mut finished, |c, x| lease::run(c, x, req))
                        .expect("lease");
                    for l in &r.leases {
                        let t = load_task(&*db.tx(), &l.task_id).expect("leased task");
                        prop_assert!(
                            !quarantined || t.gold.is_some(),
                            "a quarantined worker got a real task"
                        );
                    }
                    leases.extend(
                        r.leases
                            .into_iter()
                            .map(|l| (l.lease_id, l.task_id, wid(WORKERS[worker]), false)),
                    );
                }
                Step::Cancel { pick } if !tasks.is_empty() => {
                    let id = tasks[pick % tasks.len()];
                    let open = !load_task(&*db.tx(), &id)
                        .expect("task")
                        .status
                        .is_terminal();
                    let before = dump(&db);
                    let req = protocol::policy::TaskIdsRequest { task_ids: vec![id] };
                    let r = apply_in(&mut db, now, &mut finished, Mode::Autocommit, |c, x| {
                        cancel::cancel(c, x, req)
                    });
                    prop_assert_eq!(r.is_ok(), open);
                    if !open {
                        prop_assert_eq!(r.expect_err("closed").code(), ErrorCode::TaskClosed);
                        prop_assert_eq!(dump(&db), before);
                    }
                }
                Step::Retry { pick } if !tasks.is_empty() => {
                    let id = tasks[pick % tasks.len()];
                    let failed = load_task(&*db.tx(), &id).expect("task").status
                        == protocol::TaskStatus::Failed;
                    let req = protocol::policy::TaskIdsRequest { task_ids: vec![id] };
                    let r = apply(&mut db, now, &mut finished, |c, x| cancel::retry(c, x, req));
                    prop_assert_eq!(r.is_ok(), failed);
                    if failed {
                        finished.remove(&id);
                    }
                }
                Step::Submit { pick, positive } if !leases.is_empty() => {
                    let i = pick % leases.len();
                    let (lease_id, task, worker, _) = leases[i].clone();
                    let label = if positive { "positive" } else { "negative" };
                    let req = vote(lease_id, worker, label, 0.7);
                    if apply(&mut db, now, &mut finished, |c, x| {
                        submit::run(c, x, &task, req)
                    })
                    .is_ok()
                    {
                        leases[i].3 = true;
                    }
                }
                Step::Forge { pick, worker } if !leases.is_empty() => {
                    let (lease_id, task, holder, _) = leases[pick % leases.len()].clone();
                    let forger = wid(WORKERS[worker]);
                    if forger != holder {
                        let req = vote(lease_id, forger, "positive", 1.0);
                        let r = apply(&mut db, now, &mut finished, |c, x| {
                            submit::run(c, x, &task, req)
                        });
                        prop_assert!(r.is_err(), "a forged submission was accepted");
                    }
                }
                Step::Resend { pick } if !leases.is_empty() => {
                    let (lease_id, task, worker, sent) = leases[pick % leases.len()].clone();
                    if sent {
                        let before = dump(&db);
                        let label = answered_label(&db, &lease_id);
                        let req = vote(lease_id, worker, label, 0.7);
                        let r = apply_in(&mut db, now, &mut finished, Mode::Autocommit, |c, x| {
                            submit::run(c, x, &task, req)
                        })
                        .expect("resend");
                        prop_assert!(r.duplicate);
                        prop_assert_eq!(dump(&db), before);
                    }
                }
                Step::Heartbeat { worker, named } => {
                    let w = wid(WORKERS[worker]);
                    let mine = leases
                        .iter()
                        .filter(|l| l.2 == w && !l.3)
                        .map(|l| l.0)
                        .collect();
                    let hb = Heartbeat {
                        worker_id: w.clone(),
                        capabilities: vec![protocol::TaskType::sentiment()],
                        model: None,
                        model_hash: None,
                        leases: named.then_some(mine),
                    };
                    apply(&mut db, now, &mut finished, |c, x| {
                        heartbeat::run(c, x, &w, hb)
                    })
                    .expect("heartbeat");
                }
                Step::Release { pick } if !leases.is_empty() => {
                    let (lease_id, _, worker, _) = leases[pick % leases.len()].clone();
                    let req = ReleaseRequest {
                        worker_id: worker,
                        lease_ids: vec![lease_id],
                        offline: false,
                    };
                    apply(&mut db, now, &mut finished, |c, x| release::run(c, x, req))
                        .expect("release");
                }
                Step::Advance { ms } => now += ms,
                Step::Sweep => {
                    apply(&mut db, now, &mut finished, sweep::run).expect("sweep");
                }
                _ => {}
            }
            check(&db, &finished);
        }
    }
    Ok(())
}
