//! Processes dying mid-run: a worker killed while it holds leases, and the coordinator killed
//! (SIGKILL, no shutdown code) in the middle of 200 tasks. Nothing acknowledged may be lost and
//! nothing may be counted twice.

mod common;

use common::{acknowledged, wait_until, Cluster};
use std::io::Write;
use std::time::Duration;

const QUICK: &[(&str, &str)] = &[
    ("HEARTBEAT_TTL_SECONDS", "2"),
    ("LEASE_SECONDS", "3"),
    ("REQUEUE_SWEEP_SECONDS", "1"),
];

fn add_tasks(c: &Cluster, n: usize) {
    let path = c.dir.path().join("tasks.txt");
    let mut f = std::fs::File::create(&path).expect("tasks file");
    for i in 0..n {
        let mood = if i % 2 == 0 {
            "wonderful, I love it"
        } else {
            "awful, I hate it"
        };
        writeln!(f, "review {i}: {mood}").expect("write");
    }
    let out = c.cli(&["task", "add", "--file", path.to_str().expect("utf8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The invariants that must hold once every task is final.
fn check_ledger(c: &Cluster, tasks: i64, workers: &[&str]) {
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'"),
        tasks
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE submissions != required OR active_leases != 0"),
        0,
        "a task with a wrong vote count or a live lease"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission"),
        c.count("SELECT SUM(required) FROM task"),
        "submissions do not add up to what the tasks required"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM (SELECT task_id, worker_id FROM submission GROUP BY 1, 2 HAVING COUNT(*) > 1)"),
        0,
        "a worker voted twice on a task"
    );
    assert_eq!(
        c.count("SELECT COALESCE(SUM(points), 0) FROM worker_score"),
        c.count("SELECT COUNT(*) FROM submission WHERE agreed"),
        "points differ from agreeing submissions"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE agreed IS NULL"),
        0
    );
    // Every submission a worker saw acknowledged is in the store, on the lease it was made on.
    let db = c.db();
    let mut stmt = db
        .prepare("SELECT COUNT(*) FROM submission WHERE task_id = ?1 AND lease_id = ?2")
        .expect("prepare");
    let mut acked = 0;
    for w in workers {
        for (task, lease) in acknowledged(&c.worker_log(w)) {
            let n: i64 = stmt
                .query_row([&task, &lease], |r| r.get(0))
                .expect("query");
            assert_eq!(
                n, 1,
                "worker {w}: acknowledged submission for {task} on {lease} is missing"
            );
            acked += 1;
        }
    }
    assert!(acked > 0, "no acknowledgements in the worker logs");
}

#[test]
fn a_worker_killed_while_holding_leases_loses_them_to_the_others() {
    let mut c = Cluster::start(QUICK);
    for w in ["a", "b", "doomed"] {
        c.start_worker(w, &["--batch", "16"]);
    }
    add_tasks(&c, 300);
    // Freeze the doomed worker at a moment it holds leases (a hung machine), then kill it.
    wait_until(
        "the doomed worker to be frozen holding leases",
        Duration::from_secs(60),
        || {
            c.signal_worker("doomed", "STOP");
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
    wait_until(
        "all 300 tasks to finalize",
        Duration::from_secs(120),
        || c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") == 300,
    );
    assert!(
        c.count("SELECT COUNT(*) FROM lease WHERE worker_id = 'doomed' AND state = 'expired'") > 0,
        "the dead worker's leases were not freed by expiry"
    );
    check_ledger(&c, 300, &["a", "b", "d"]);
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
    add_tasks(&c, 200);
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
