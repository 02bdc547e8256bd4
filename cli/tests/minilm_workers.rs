//! Three `aimarket worker --model minilm` processes (the real all-MiniLM-L6-v2, which `make test`
//! fetches) finalize sentiment, zero-shot and embedding tasks over NATS, each vote carrying the
//! model's id.

mod common;

use common::{wait_until, Cluster};
use protocol::messages::{LeaderboardEntry, TaskDetail, TaskView};
use std::time::Duration;

/// A cluster with three `--model minilm` workers, each also given `extra` arguments.
fn minilm_cluster(ids: [&str; 3], extra: &[&str]) -> Cluster {
    let dir = test_support::minilm_dir();
    let dir = dir.to_str().expect("utf8 path");
    let mut c = Cluster::start(&[]);
    for w in ids {
        let mut args = vec!["--model", "minilm", "--model-dir", dir];
        args.extend_from_slice(extra);
        c.start_worker(w, &args);
    }
    c
}

#[test]
fn three_minilm_workers_finalize_sentiment_tasks() {
    let c = minilm_cluster(["m1", "m2", "m3"], &["--batch", "4"]);
    let cases = [
        ("I absolutely love it, best purchase ever", "positive"),
        ("This is terrible, it broke after one day", "negative"),
    ];
    for (text, want) in cases {
        let done: Vec<TaskView> = c.json(&["task", "add", text, "--wait", "--timeout", "120"]);
        assert_eq!(done[0].final_label.as_deref(), Some(want), "{text}");
    }
    wait_until("the votes to be stored", Duration::from_secs(10), || {
        c.count("SELECT COUNT(*) FROM submission WHERE model = 'minilm'") == 6
    });
    assert_eq!(
        c.count("SELECT COUNT(DISTINCT worker_id) FROM submission"),
        3
    );
}

#[test]
fn three_minilm_workers_finalize_zero_shot_and_embedding_tasks() {
    let c = minilm_cluster(["z1", "z2", "z3"], &[]);

    let text = "The striker scored twice and the team won the championship final";
    let done: Vec<TaskView> = c.json(&[
        "task",
        "add",
        text,
        "--labels",
        "sports,politics,cooking",
        "--wait",
        "--timeout",
        "120",
    ]);
    let zero_shot = &done[0];
    assert_eq!(zero_shot.task_type.as_str(), "zero-shot");
    assert_eq!(zero_shot.final_label.as_deref(), Some("sports"));

    let done: Vec<TaskView> = c.json(&[
        "task",
        "add",
        "I love this movie",
        "--type",
        "embedding",
        "--wait",
        "--timeout",
        "120",
    ]);
    let embedded = &done[0];
    assert_eq!(embedded.final_label, None);
    let v = embedded
        .final_embedding
        .as_ref()
        .expect("a consensus vector");
    assert_eq!(v.len(), 384, "all-MiniLM-L6-v2 embeds in 384 dimensions");
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-3,
        "mean of unit vectors that agree: {norm}"
    );
    assert!(embedded.final_confidence.expect("confidence") > 0.999);

    // Every worker's vector agreed, so each earned a point per task, and `task get` shows them.
    let detail: TaskDetail = c.json(&["task", "get", &embedded.id.to_string()]);
    assert_eq!(detail.submissions.len(), 3);
    for s in &detail.submissions {
        assert_eq!((s.agreed, s.label.as_deref()), (Some(true), None), "{s:?}");
        assert_eq!(s.embedding.as_ref().map(Vec::len), Some(384));
    }
    let board: Vec<LeaderboardEntry> = c.json(&["leaderboard"]);
    assert_eq!(board.len(), 3);
    assert!(board.iter().all(|e| e.points == 2), "{board:?}");
}
