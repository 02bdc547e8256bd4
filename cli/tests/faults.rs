//! Processes dying mid-run: a worker killed while it holds leases, and the coordinator killed
//! (SIGKILL, no shutdown code) in the middle of 200 tasks. Nothing acknowledged may be lost and
//! nothing may be counted twice.

mod common;

use common::{check_ledger, wait_until, Cluster};
use std::time::Duration;

const QUICK: &[(&str, &str)] = &[
    ("HEARTBEAT_TTL_SECONDS", "2"),
    ("LEASE_SECONDS", "3"),
    ("REQUEUE_SWEEP_SECONDS", "1"),
];

#[test]
fn a_worker_killed_while_holding_leases_loses_them_to_the_others() {
    let mut c = Cluster::start(QUICK);
    for w in ["a", "b", "doomed"] {
        c.start_worker(w, &["--batch", "16"]);
    }
    let mut added: i64 = 300;
    common::add_reviews(&c, 300);
    // Freeze the doomed worker at a moment it holds leases (a hung machine), then kill it. The
    // workers may finish every task before that moment comes: then add more.
    wait_until(
        "the doomed worker to be frozen holding leases",
        Duration::from_secs(60),
        || {
            if c.count("SELECT COUNT(*) FROM task WHERE status IN ('queued', 'assigned')") == 0 {
                common::add_reviews(&c, 100);
                added += 100;
            }
            c.signal_worker("doomed", "STOP");
            // Results it had already sent still reach the coordinator; let them land, so the
            // leases counted are ones the frozen worker really still holds.
            std::thread::sleep(Duration::from_millis(300));
            let held = c.count(
                "SELECT COUNT(*) FROM lease WHERE worker_id = 'doomed' AND state = 'active'",
            );
            if held == 0 {
                c.signal_worker("doomed", "CONT");
            }
            held > 0
        },
    );
    c.kill_worker("doomed");
    c.start_worker("d", &["--batch", "16"]);
    wait_until("every task to finalize", Duration::from_secs(120), || {
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") == added
    });
    assert!(
        c.count("SELECT COUNT(*) FROM lease WHERE worker_id = 'doomed' AND state = 'expired'") > 0,
        "the dead worker's leases were not freed by expiry"
    );
    check_ledger(&c, added, &["a", "b", "d"]);
    let workers: serde_json::Value = c.json(&["workers"]);
    let doomed = workers
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["worker_id"] == "doomed"))
        .expect("doomed listed");
    assert_eq!(doomed["status"], "stale");
}

#[test]
fn a_coordinator_killed_mid_run_loses_nothing_it_acknowledged() {
    let mut c = Cluster::start(&[
        ("LEASE_SECONDS", "10"),
        ("HEARTBEAT_TTL_SECONDS", "5"),
        ("REQUEUE_SWEEP_SECONDS", "1"),
    ]);
    for w in ["a", "b", "c"] {
        c.start_worker(w, &["--batch", "4"]);
    }
    common::add_reviews(&c, 200);
    wait_until("some tasks to finalize", Duration::from_secs(60), || {
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") >= 40
    });
    c.kill_coordinator();
    let at_kill = c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'");
    assert!(
        at_kill < 200,
        "the run was over before the kill ({at_kill} finalized)"
    );
    c.start_coordinator();
    wait_until(
        "all 200 tasks to finalize after the restart",
        Duration::from_secs(120),
        || c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") == 200,
    );
    check_ledger(&c, 200, &["a", "b", "c"]);
    // Each finalization is logged once, after its commit: never twice across the two runs.
    let logs = c.coordinator_logs();
    let finalized: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("task finalized"))
        .collect();
    let distinct: std::collections::HashSet<_> = finalized
        .iter()
        .map(|l| {
            l.split("task_id=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
        })
        .collect();
    assert_eq!(
        distinct.len(),
        finalized.len(),
        "a task was finalized twice"
    );
}
