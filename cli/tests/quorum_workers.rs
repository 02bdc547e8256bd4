//! Votes that mean something, end to end: real `aimarket worker` processes over a real
//! nats-server. Two honest lexicon workers and one drilled to answer the opposite label
//! (`--misbehave flip`) on tasks needing two answers: splits are inconclusive and reissued, the
//! honest label is what finalizes, the flipping worker earns nothing and is quarantined by gold
//! (human-rated product-review sentences, `aimarket gold add`); cancel, retry and their bad
//! input over the CLI.

mod common;

use common::Cluster;
use protocol::messages::{LeaderboardEntry, TaskView, WorkerView};
use protocol::TaskStatus;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn splits_are_reissued_the_honest_label_wins_and_a_flipping_worker_is_quarantined() {
    let mut c = Cluster::start(&[
        ("AIMARKET_GOLD_RATE", "0.3"),
        ("AIMARKET_GOLD_MIN_ANSWERS", "6"),
        ("AIMARKET_GOLD_MIN_ACCURACY", "0.5"),
    ]);
    // Gold: product-review sentences people rated clearly (|mean rating| >= 2).
    let gold = test_support::sentences_dir().join("amazonReviewSnippets_GroundTruth.txt");
    let out = ok(&c.cli(&[
        "gold",
        "add",
        "--file",
        gold.to_str().expect("utf8"),
        "--min-rating",
        "2",
    ]));
    assert!(out.contains("added"), "{out}");

    let texts = common::movie_sentences(60, 1);
    let file = c.dir.path().join("tasks.txt");
    std::fs::write(&file, texts.join("\n")).expect("write tasks");
    let out = ok(&c.cli(&[
        "--json",
        "task",
        "add",
        "--file",
        file.to_str().expect("utf8"),
        "--required",
        "2",
    ]));
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&out).expect("json")
        ["task_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), texts.len());
    // The flipper first, so it takes its share of the first answers.
    c.start_worker("flipper", &["--model", "lexicon", "--misbehave", "flip"]);
    c.start_worker("honest-1", &["--model", "lexicon"]);
    c.start_worker("honest-2", &["--model", "lexicon"]);

    let mut args = vec!["task", "wait", "--timeout", "300"];
    args.extend(ids.iter().map(String::as_str));
    let tasks: Vec<TaskView> = c.json(&args);

    // Every task finalized on what the lexicon says (an honest worker's answer).
    let mut infer = vec!["infer", "--model", "lexicon"];
    infer.extend(texts.iter().map(String::as_str));
    let honest: Vec<serde_json::Value> = c.json(&infer);
    for (t, h) in tasks.iter().zip(&honest) {
        assert_eq!(t.status, TaskStatus::Finalized, "{t:?}");
        assert_eq!(t.final_label.as_deref(), h["label"].as_str(), "{}", t.text);
    }
    let real = "SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id
                WHERE t.gold IS NULL";
    let reissued = c.count("SELECT COUNT(*) FROM task WHERE gold IS NULL AND submissions > asked");
    let flipped = c.count(&format!("{real} AND s.worker_id = 'flipper'"));
    assert!(flipped > 0, "the flipping worker answered no real task");
    assert!(reissued > 0, "no split was reissued");
    assert_eq!(
        c.count(&format!("{real} AND s.worker_id = 'flipper' AND s.agreed")),
        0,
        "a flipped answer agreed"
    );

    let board: Vec<LeaderboardEntry> = c.json(&["leaderboard"]);
    let entry = |w: &str| {
        board
            .iter()
            .find(|e| e.worker_id.as_str() == w)
            .unwrap_or_else(|| panic!("{w} on the leaderboard: {board:?}"))
            .clone()
    };
    let flipper = entry("flipper");
    assert_eq!(flipper.points, 0, "{flipper:?}");
    // Gold caught it: quarantined, and the workers view says why.
    common::wait_until(
        "the flipping worker to be quarantined",
        std::time::Duration::from_secs(120),
        || {
            let workers: Vec<WorkerView> = c.json(&["workers"]);
            workers
                .iter()
                .any(|w| w.worker_id.as_str() == "flipper" && w.quarantine.is_some())
        },
    );
    let workers: Vec<WorkerView> = c.json(&["workers"]);
    for w in &workers {
        let acc = w.gold.accuracy().unwrap_or(1.0);
        if w.worker_id.as_str() == "flipper" {
            assert!(acc < 0.5, "{w:?}");
            assert!(w
                .quarantine
                .as_deref()
                .is_some_and(|q| q.contains("gold accuracy")));
        } else {
            assert!(w.quarantine.is_none() && acc > 0.5, "{w:?}");
        }
    }
    let text = ok(&c.cli(&["workers"]));
    assert!(text.contains("flipper is quarantined"), "{text}");
    let text = ok(&c.cli(&["leaderboard", "--by-model"]));
    assert!(text.contains("gold accuracy"), "{text}");
    println!(
        "{} tasks: {reissued} reissued after a split; flipper: {flipped} real answers, none \
         agreed; gold {}/{} right",
        ids.len(),
        flipper.gold.right,
        flipper.gold.answered
    );

    // Cancel and retry over the CLI, with their refusals.
    for w in ["flipper", "honest-1", "honest-2"] {
        c.stop_worker(w);
    }
    let open = ok(&c.cli(&["task", "add", "nobody will answer this"]));
    let open = open.trim();
    let done = ids[0].as_str();
    let before = c.count("SELECT COUNT(*) FROM task WHERE status = 'cancelled'");
    let refused = c.cli(&["task", "cancel", open, done]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("task_closed"));
    let refused = c.cli(&["task", "cancel", "0190f0f0-0000-7000-8000-000000000000"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not_found"));
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE status = 'cancelled'"),
        before
    );
    ok(&c.cli(&["task", "cancel", open]));
    let cancelled: Vec<TaskView> = c.json(&["task", "list", "--status", "cancelled"]);
    assert_eq!(cancelled.len(), 1);
    assert!(cancelled[0].error_message.is_some());
    let refused = c.cli(&["task", "retry", open]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only failed tasks"));
}
