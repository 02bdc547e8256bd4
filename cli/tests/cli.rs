//! The CLI's behaviour at the edges: no server, no coordinator, bad input, bulk files, ops.

mod common;

use common::{Cluster, BIN};
use protocol::messages::{StatsReply, TaskView};
use protocol::TaskStatus;
use std::process::Command;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_nats_and_missing_coordinator_give_one_clear_line() {
    let port = test_support::free_port();
    let out = Command::new(BIN)
        .args(["--nats", &format!("nats://127.0.0.1:{port}"), "leaderboard"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach NATS at nats://127.0.0.1:") && err.contains("make nats"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let nats = test_support::NatsServer::start();
    let out = Command::new(BIN)
        .args(["--nats", &nats.url(), "stats"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no coordinator is answering") && err.contains("aimarket coordinator"),
        "{err}"
    );
}

#[test]
fn bad_input_gets_the_coordinators_error_code() {
    let c = Cluster::start(&[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["task", "get", "01a21e3b-a1bf-760b-b3f1-68ba93059300"],
            "not_found",
        ),
        (&["task", "add", "   "], "invalid_argument"),
        (&["task", "add", "x", "--required", "0"], "invalid_argument"),
        (
            &["task", "add", "x", "--required", "101"],
            "invalid_argument",
        ),
        (&["ops", "reset"], "--yes"),
    ];
    for (args, expect) in cases {
        let out = c.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let big = c.dir.path().join("big.jsonl");
    std::fs::write(&big, format!("{{\"text\": \"{}\"}}\n", "x".repeat(70_000))).expect("write");
    let out = c.cli(&["task", "add", "--file", big.to_str().expect("path")]);
    assert!(stderr(&out).contains("text_too_large"), "{}", stderr(&out));

    let broken = c.dir.path().join("broken.jsonl");
    std::fs::write(&broken, "fine text\n{\"text\": 5}\n").expect("write");
    let out = c.cli(&["task", "add", "--file", broken.to_str().expect("path")]);
    assert!(stderr(&out).contains("broken.jsonl:2"), "{}", stderr(&out));

    let stats: StatsReply = c.json(&["stats"]);
    assert_eq!(stats.tasks_total, 0, "a refused add stored something");
}

#[test]
fn bulk_add_list_requeue_and_reset() {
    let c = Cluster::start(&[]);
    let file = c.dir.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        "plain text line\n\n{\"text\": \"json line\", \"required_submissions\": 1}\n{\"text\": \"typed\", \"type\": \"embedding\"}\n",
    )
    .expect("write");
    let added: serde_json::Value = c.json(&[
        "task",
        "add",
        "--file",
        file.to_str().expect("path"),
        "--required",
        "2",
    ]);
    assert_eq!(added["task_ids"].as_array().map(Vec::len), Some(3));
    let tasks: Vec<TaskView> = c.json(&["task", "list", "--status", "queued"]);
    let shape: Vec<_> = tasks
        .iter()
        .map(|t| {
            (
                t.text.as_str(),
                t.task_type.as_str(),
                t.required_submissions,
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("plain text line", "sentiment", 2),
            ("json line", "sentiment", 1),
            ("typed", "embedding", 2)
        ]
    );
    let requeued: serde_json::Value = c.json(&["ops", "requeue-stale"]);
    assert_eq!(requeued["requeued"], 0);
    let out = c.cli(&["ops", "reset", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: StatsReply = c.json(&["stats"]);
    assert_eq!(stats.tasks_total, 0);
    assert_eq!(stats.tasks_by_status[&TaskStatus::Queued], 0);
}

#[test]
fn with_an_api_key_workers_need_their_tokens() {
    let mut c = Cluster::start(&[("AIMARKET_API_KEY", "k-123")]);
    let out = c.cli(&["worker", "token", "create", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(token.starts_with("amk_"), "{token}");
    // Without the key, no token.
    let out = Command::new(BIN)
        .args([
            "--nats",
            &c.nats.url(),
            "worker",
            "token",
            "create",
            "mallory",
        ])
        .output()
        .expect("run");
    assert!(
        !out.status.success() && stderr(&out).contains("unauthorized"),
        "{}",
        stderr(&out)
    );

    c.start_worker("alice", &["--token", &token]);
    c.start_worker("intruder", &[]);
    let status = c.wait_worker("intruder");
    assert!(!status.success(), "a worker without a token kept running");
    assert!(
        c.worker_log("intruder").contains("unauthorized"),
        "{}",
        c.worker_log("intruder")
    );

    let added: serde_json::Value = c.json(&[
        "task",
        "add",
        "good stuff",
        "--required",
        "1",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_eq!(added[0]["status"], "finalized");
    assert_eq!(added[0]["final_label"], "positive");
    let out = c.cli(&["worker", "token", "revoke", "alice"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn infer_and_eval_run_models_locally() {
    let out = Command::new(BIN)
        .args([
            "--json",
            "infer",
            "I love this, it is wonderful",
            "This is awful and I hate it",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["label"], "positive");
    assert_eq!(rows[1]["label"], "negative");
    assert!(rows[0]["confidence"].as_f64().is_some_and(|c| c > 0.5));

    let dir = tempfile::tempdir().expect("temp dir");
    let truth = dir.path().join("truth.txt");
    std::fs::write(
        &truth,
        "1\t2.5\tI love this, it is wonderful\n2\t-3.1\tThis is awful and I hate it\n\
         3\t0\tThe box is on the table\n4\t1.2\tThe box is on the table\nnot a rating line\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args([
            "--json",
            "eval",
            "--model",
            "lexicon",
            truth.to_str().expect("path"),
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let scores: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // The rating-0 line and the malformed one are skipped; a sentence without sentiment words
    // counts as positive, which is right for line 4.
    assert_eq!(scores[0]["sentences"], 3);
    assert_eq!(scores[0]["correct"], 3);
    assert_eq!(scores[0]["accuracy"], 1.0);

    // Several models: each is scored, then the vote the coordinator would finalize.
    let out = Command::new(BIN)
        .args(["--json", "eval", "--model", "lexicon", "--model", "lexicon"])
        .arg(&truth)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let scores: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(scores.as_array().map(Vec::len), Some(3));
    assert_eq!(scores[2]["model"], "vote of lexicon/vader + lexicon/vader");
    assert_eq!(scores[2]["correct"], 3);

    let out = Command::new(BIN)
        .args(["infer", "--model", "distilbert-sst2", "hi"])
        .env("HF_HOME", dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--model-dir"), "{}", stderr(&out));
    let out = Command::new(BIN)
        .args(["infer", "--model", "gpt", "hi"])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("known models: auto, lexicon, distilbert-sst2, minilm"),
        "{}",
        stderr(&out)
    );
}
