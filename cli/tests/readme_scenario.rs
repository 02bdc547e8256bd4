//! The README's walkthrough with real processes: three workers, two tasks, two points each.

mod common;

use common::{wait_until, Cluster};
use protocol::messages::{LeaderboardEntry, TaskView, WorkerView};
use protocol::{TaskStatus, WorkerStatus};
use std::time::Duration;

#[test]
fn three_workers_two_tasks_two_points_each() {
    // Leases and TTLs of ten minutes: the tasks can only finalize in time through parallel
    // leases, never by waiting for one to expire.
    let mut c = Cluster::start(&[("LEASE_SECONDS", "600"), ("HEARTBEAT_TTL_SECONDS", "600")]);
    for w in ["alice", "bob", "carole"] {
        c.start_worker(w, &[]);
    }
    wait_until("three active workers", Duration::from_secs(20), || {
        c.json::<Vec<WorkerView>>(&["workers"]).len() == 3
    });
    // A type nobody advertises stays queued.
    let odd: serde_json::Value = c.json(&["task", "add", "--type", "embedding", "hola"]);
    let odd = odd["task_ids"][0].as_str().expect("id").to_owned();

    let good: Vec<TaskView> = c.json(&[
        "task",
        "add",
        "I absolutely love this product, it works perfectly!",
        "--wait",
        "--timeout",
        "60",
    ]);
    let bad: Vec<TaskView> = c.json(&[
        "task",
        "add",
        "This was the worst purchase I have ever made.",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(good[0].status, TaskStatus::Finalized);
    assert_eq!(good[0].final_label.as_deref(), Some("positive"));
    assert_eq!(bad[0].final_label.as_deref(), Some("negative"));

    let board: Vec<LeaderboardEntry> = c.json(&["leaderboard"]);
    let points: Vec<_> = board
        .iter()
        .map(|e| (e.worker_id.as_str(), e.points))
        .collect();
    assert_eq!(points, vec![("alice", 2), ("bob", 2), ("carole", 2)]);
    for e in &board {
        assert_eq!(e.model.as_deref(), Some("lexicon/vader"));
        assert_eq!(e.agreement_rate, Some(1.0));
    }
    let models: Vec<protocol::messages::ModelAgreement> = c.json(&["leaderboard", "--by-model"]);
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(
        (
            models[0].model.as_str(),
            models[0].task_type.as_str(),
            models[0].submissions,
            models[0].agreed
        ),
        ("lexicon/vader", "sentiment", 6, 6)
    );

    let odd: serde_json::Value = c.json(&["task", "get", &odd]);
    assert_eq!(odd["task"]["status"], "queued");
    assert_eq!(odd["leases"].as_array().map(Vec::len), Some(0));

    // A graceful stop: exit 0, and the registry shows the worker offline.
    let status = c.stop_worker("carole");
    assert!(status.success(), "carole exited with {status}");
    let workers: Vec<WorkerView> = c.json(&["workers"]);
    let carole = workers
        .iter()
        .find(|w| w.worker_id.as_str() == "carole")
        .expect("carole");
    assert_eq!(carole.status, WorkerStatus::Offline);

    // The human output shows the same.
    let table = String::from_utf8(c.cli(&["leaderboard"]).stdout).expect("utf8");
    assert!(
        table.contains("| alice ") && table.contains("| 2 "),
        "{table}"
    );
}
