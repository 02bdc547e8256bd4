//! HTTP and NATS workers side by side: a worker speaking only the original HTTP API
//! (`/tasks/next`, `/workers/heartbeat`, `/workers/submit`) and two `aimarket worker`s over NATS
//! finalize the same tasks, and the points add up.

mod common;

use common::{wait_until, Cluster};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn an_http_worker_and_two_nats_workers_share_tasks_and_points() {
    let mut c = Cluster::start(&[]);
    let http = reqwest::blocking::Client::new();
    let base = c.http.clone();
    let post = |path: &str, body: Value| -> Value {
        let r = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .expect("request");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().expect("json")
    };
    let texts = ["wonderful, I love it", "awful, I hate it"];
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = post("/tasks", json!({"text": format!("{} ({i})", texts[i % 2])}));
        ids.push(r["task_id"].as_str().expect("id").to_owned());
    }
    post(
        "/workers/register",
        json!({"worker_id": "web", "capabilities_json": "[\"sentiment\"]"}),
    );
    c.start_worker("alice", &[]);
    c.start_worker("bob", &[]);

    // The HTTP worker: lease, heartbeat, answer, submit, until every task is final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    loop {
        assert!(Instant::now() < deadline, "the http worker ran out of time");
        post("/workers/heartbeat", json!({"worker_id": "web"}));
        let next = post("/tasks/next", json!({"worker_id": "web"}));
        let Some(task) = next["task_id"].as_str() else {
            if c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") == 10 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let text = next["text"].as_str().expect("text");
        let label = if text.contains("love") {
            "positive"
        } else {
            "negative"
        };
        let ack = post(
            "/workers/submit",
            json!({"worker_id": "web", "task_id": task, "label": label, "confidence": 0.9}),
        );
        assert_eq!(ack["ok"], true);
        answered += 1;
    }
    assert_eq!(
        answered, 10,
        "required 3 with three workers: every task needs the http worker"
    );
    wait_until("all finalized", Duration::from_secs(10), || {
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'") == 10
    });
    for id in &ids {
        let voters: Vec<String> = c
            .db()
            .prepare("SELECT worker_id FROM submission WHERE task_id = ?1 ORDER BY worker_id")
            .expect("prepare")
            .query_map([id], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(voters, ["alice", "bob", "web"], "task {id}");
    }
    let board: Vec<Value> = http
        .get(format!("{}/leaderboard", c.http))
        .send()
        .expect("leaderboard")
        .json()
        .expect("json");
    let points: i64 = board
        .iter()
        .map(|e| e["points"].as_i64().expect("points"))
        .sum();
    assert_eq!(
        points,
        c.count("SELECT COUNT(*) FROM submission WHERE agreed")
    );
    assert_eq!(points, 30, "all three agree on these texts: {board:?}");
}
