//! A task that fewer live workers can do than it needs distinct answers from is *starved*: a
//! client waiting on it hears so within seconds, and which type is short of how many workers,
//! and keeps waiting; `stats`, `task get`, `/metrics` and the dashboard's data say it too. When
//! enough workers join, it finishes.

mod common;

use common::{wait_until, Cluster, BIN};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn a_starved_task_says_why_and_finishes_once_workers_join() {
    let mut c = Cluster::start(&[]);
    c.start_worker("only", &[]);
    wait_until("the worker to register", Duration::from_secs(20), || {
        let w: Value = c.json(&["workers"]);
        w.as_array().is_some_and(|a| a.len() == 1)
    });

    // `task add --wait`: one live sentiment worker, three distinct answers needed.
    let mut waiting = Command::new(BIN)
        .env("NATS_URL", c.nats.url())
        .env_remove("RUST_LOG")
        .args([
            "task",
            "add",
            "Great value, works well",
            "--wait",
            "--timeout",
            "120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn task add");
    let (tx, lines) = mpsc::channel();
    let stderr = waiting.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let said = lines
        .recv_timeout(Duration::from_secs(15))
        .expect("the waiting client explains itself within seconds");
    assert!(
        said.contains("1 sentiment task is starved") && said.contains("more sentiment worker"),
        "{said}"
    );
    assert!(said.contains("still waiting"), "{said}");

    let stats: Value = c.json(&["stats"]);
    assert_eq!(stats["tasks_starved"], 1, "{stats}");
    assert_eq!(stats["starved"][0]["type"], "sentiment", "{stats}");
    assert_eq!(stats["starved"][0]["live_workers"], 1, "{stats}");
    let list: Value = c.json(&["task", "list"]);
    let id = list[0]["id"].as_str().expect("task id").to_owned();
    let detail: Value = c.json(&["task", "get", &id]);
    let starved = &detail["starved"];
    assert!(
        starved["needs"].as_u64() > starved["capable"].as_u64(),
        "{detail}"
    );
    let human = c.cli(&["task", "get", &id]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("starved      needs answers from"));
    let metrics = reqwest::blocking::get(format!("{}/metrics", c.http))
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        metrics.contains("tasks_starved{type=\"sentiment\"} 1"),
        "{metrics}"
    );
    let feed: Value = reqwest::blocking::get(format!("{}/dashboard/data", c.http))
        .and_then(|r| r.json())
        .expect("dashboard data");
    assert!(feed["recent"][0]["starved"].is_object(), "{feed}");

    // Two more workers join: the task is no longer starved, and finishes.
    c.start_worker("second", &[]);
    c.start_worker("third", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = waiting.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the task never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "task add --wait failed: {rest:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut waiting.stdout.take().expect("stdout"), &mut out)
        .expect("stdout");
    assert!(out.contains("finalized: positive"), "{out}");
    let stats: Value = c.json(&["stats"]);
    assert_eq!(stats["tasks_starved"], 0, "{stats}");
}
