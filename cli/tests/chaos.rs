//! The fault suite (`make test-faults`): 2,000 tasks needing 3 votes, five workers killed
//! (SIGKILL) and restarted at random, the coordinator killed and restarted twice, nats-server
//! restarted once. At the end every task is finalized exactly once, no acknowledged submission
//! is missing, no vote is counted twice, points equal agreeing submissions. Prints the figures.

mod common;

use common::{check_ledger, wait_until, Cluster};
use std::time::{Duration, Instant};

const TASKS: i64 = 2000;
const WORKERS: [&str; 5] = ["w0", "w1", "w2", "w3", "w4"];

#[test]
fn two_thousand_tasks_through_crashes_of_everything() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut c = Cluster::start(&[
        ("HEARTBEAT_TTL_SECONDS", "2"),
        ("LEASE_SECONDS", "3"),
        ("REQUEUE_SWEEP_SECONDS", "1"),
    ]);
    for w in WORKERS {
        c.start_worker(w, &["--batch", "8"]);
    }
    let started = Instant::now();
    common::add_reviews(&c, TASKS as usize);
    let finalized = |c: &Cluster| c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'");

    // The system faults, each once the run has made some progress past the previous one.
    let (mut worker_kills, mut coordinator_kills, mut nats_restarts) = (0, 0, 0);
    let plan = [
        ("coordinator", TASKS / 10),
        ("nats", TASKS / 4),
        ("coordinator", TASKS / 2),
    ];
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while finalized(&c) < TASKS {
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {} of {TASKS}",
            finalized(&c)
        );
        if next < plan.len() && finalized(&c) >= plan[next].1 {
            match plan[next].0 {
                "coordinator" => {
                    c.kill_coordinator();
                    coordinator_kills += 1;
                    std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
                    c.start_coordinator();
                }
                _ => {
                    c.nats.restart();
                    nats_restarts += 1;
                }
            }
            next += 1;
        }
        // A random worker dies and comes back, until the system faults are all done.
        if next < plan.len() || rng.u8(..4) == 0 {
            let w = WORKERS[rng.usize(..WORKERS.len())];
            c.kill_worker(w);
            worker_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
            c.start_worker(w, &["--batch", "8"]);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
    }
    assert_eq!(
        next,
        plan.len(),
        "the run finished before every fault happened"
    );
    wait_until("every lease to end", Duration::from_secs(30), || {
        c.count("SELECT COUNT(*) FROM lease WHERE state = 'active'") == 0
    });
    let acked = check_ledger(&c, TASKS, &WORKERS);
    let submissions = c.count("SELECT COUNT(*) FROM submission");
    let expired = c.count("SELECT COUNT(*) FROM lease WHERE state = 'expired'");
    let failed = c.count("SELECT COUNT(*) FROM task WHERE status = 'failed'");
    let points = c.count("SELECT COALESCE(SUM(points), 0) FROM worker_score");
    let agreeing = c.count("SELECT COUNT(*) FROM submission WHERE agreed");
    eprintln!(
        "chaos: {TASKS} tasks, {} finalized, {failed} failed, {} stuck assigned in {:.1}s\n\
         chaos: {submissions} submissions stored, {acked} acknowledged to workers (all stored), \
         0 duplicates counted\n\
         chaos: points {points} = agreeing submissions {agreeing}\n\
         chaos: {worker_kills} worker kills, {coordinator_kills} coordinator kills, \
         {nats_restarts} nats-server restart, {expired} leases expired",
        finalized(&c),
        c.count("SELECT COUNT(*) FROM task WHERE status = 'queued' AND active_leases > 0"),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!((coordinator_kills, nats_restarts), (2, 1));
}
