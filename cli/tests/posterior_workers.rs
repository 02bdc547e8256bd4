//! The posterior policy end to end: real `aimarket worker` processes (lexicon, MiniLM and
//! SmolLM2, and a lexicon worker drilled to answer the opposite label, `--misbehave flip`) over
//! a real nats-server, on human-rated movie-review sentences, with gold from the product-review
//! set. Each model content is calibrated on gold as it answers; no task finalizes below its
//! threshold; the flipping worker's answers come to weigh nothing, it decides no task, and gold
//! quarantines it; every model's calibration is shown, and /metrics counts answers per finalized
//! task and the posterior at finalization.

mod common;

use common::Cluster;
use protocol::messages::{ModelAgreement, TaskDetail};
use protocol::TaskStatus;

#[test]
fn calibrated_answers_decide_and_a_flipping_worker_comes_to_weigh_nothing() {
    let mut c = Cluster::start(&[
        ("AIMARKET_LABEL_POLICY", "posterior"),
        ("AIMARKET_POSTERIOR_THRESHOLD", "0.8"),
        ("AIMARKET_GOLD_RATE", "0.5"),
        ("AIMARKET_GOLD_MIN_ANSWERS", "8"),
        ("AIMARKET_GOLD_MIN_ACCURACY", "0.5"),
    ]);
    let gold = test_support::sentences_dir().join("amazonReviewSnippets_GroundTruth.txt");
    let out = c.cli(&[
        "gold",
        "add",
        "--file",
        gold.to_str().expect("utf8"),
        "--min-rating",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let texts = common::movie_sentences(40, 50);
    let file = c.dir.path().join("tasks.txt");
    std::fs::write(&file, texts.join("\n")).expect("write tasks");
    let added: serde_json::Value = c.json(&[
        "task",
        "add",
        "--file",
        file.to_str().expect("utf8"),
        "--required",
        "2",
        // Four workers, one of them soon quarantined (gold only): three can answer.
        "--max-answers",
        "3",
    ]);
    let ids: Vec<String> = added["task_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    c.start_worker("flipper", &["--model", "lexicon", "--misbehave", "flip"]);
    c.start_worker("lexicon", &["--model", "lexicon"]);
    let minilm = test_support::minilm_dir();
    c.start_worker(
        "minilm",
        &[
            "--model",
            "minilm",
            "--model-dir",
            minilm.to_str().expect("utf8"),
        ],
    );
    c.start_smollm2("smollm2", &["--threads", "1"]);

    let mut wait = vec!["task", "wait", "--timeout", "300"];
    wait.extend(ids.iter().map(String::as_str));
    let _ = c.cli(&wait);
    let details: Vec<TaskDetail> = ids.iter().map(|id| c.json(&["task", "get", id])).collect();

    let mut finalized = 0;
    for d in &details {
        let t = &d.task;
        assert!(
            matches!(t.status, TaskStatus::Finalized | TaskStatus::Failed),
            "{t:?}"
        );
        if t.status != TaskStatus::Finalized {
            continue;
        }
        finalized += 1;
        let post = t
            .posterior
            .expect("a finalized posterior task shows its posterior");
        assert!(post >= 0.8, "finalized below its threshold: {t:?}");
        assert_eq!(t.final_confidence, Some(post));
        assert!(
            d.submissions.iter().all(|s| s.weight.is_some()),
            "every counted answer shows its weight: {d:?}"
        );
        // The flipper never decides alone: an honest worker's answer agrees with every label.
        assert!(
            d.submissions
                .iter()
                .any(|s| s.worker_id.as_str() != "flipper" && s.agreed == Some(true)),
            "decided without an honest answer: {d:?}"
        );
    }
    // Early on, calibrations rest on few gold answers and splits fall short of the threshold.
    assert!(
        finalized * 4 >= ids.len(),
        "{finalized} of {} finalized",
        ids.len()
    );

    // Gold catches the flipper: quarantined, and its last answers weigh (about) nothing, while
    // SmolLM2's, calibrated on its gold, weigh more on the whole (not each: an answer in a cell
    // where its gold answers were right half the time or less weighs nothing too).
    common::wait_until(
        "the flipping worker to be quarantined",
        std::time::Duration::from_secs(120),
        || {
            c.count("SELECT COUNT(*) FROM worker WHERE id = 'flipper' AND quarantine IS NOT NULL")
                == 1
        },
    );
    let last_weight = |worker: &str| -> Option<f64> {
        c.db()
            .query_row(
                "SELECT weight FROM submission WHERE worker_id = ?1 AND weight IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                [worker],
                |r| r.get(0),
            )
            .ok()
    };
    let mean_weight = |worker: &str| -> f64 {
        c.db()
            .query_row(
                "SELECT AVG(weight) FROM submission WHERE worker_id = ?1 AND weight IS NOT NULL",
                [worker],
                |r| r.get(0),
            )
            .expect("a mean weight")
    };
    let flipper = last_weight("flipper").expect("the flipper answered a real task");
    last_weight("smollm2").expect("smollm2 answered a real task");
    let (flipper_mean, smollm2_mean) = (mean_weight("flipper"), mean_weight("smollm2"));
    assert!(
        flipper < 0.5 && smollm2_mean > flipper_mean,
        "flipper's last {flipper}, means: flipper {flipper_mean}, smollm2 {smollm2_mean}"
    );
    let flipped_agreed = c.count(
        "SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id
         WHERE t.gold IS NULL AND s.worker_id = 'flipper' AND s.agreed = 1",
    );
    let flipped = c.count(
        "SELECT COUNT(*) FROM submission s JOIN task t ON t.id = s.task_id
         WHERE t.gold IS NULL AND s.worker_id = 'flipper' AND s.agreed IS NOT NULL",
    );
    assert!(
        flipped_agreed * 2 < flipped.max(1),
        "the flipper agreed on {flipped_agreed} of {flipped} decided answers"
    );

    // Calibration shown per model content, with its Brier score and reliability bins.
    let models: Vec<ModelAgreement> = c.json(&["leaderboard", "--by-model"]);
    let smollm2_cal = models
        .iter()
        .find(|m| m.model.starts_with("smollm2") && m.task_type == "sentiment")
        .and_then(|m| m.calibration.clone())
        .expect("smollm2's calibration");
    assert!(smollm2_cal.brier > 0.0 && smollm2_cal.brier < 0.5);
    assert!(!smollm2_cal.bins.is_empty());
    // Each model's wrong gold answers are in its confusion rows, the flipper's among them.
    for cal in models.iter().filter_map(|m| m.calibration.as_ref()) {
        let wrong: f64 = cal
            .bins
            .iter()
            .map(|b| b.answered as f64 * (1.0 - b.accuracy))
            .sum();
        let confused: u64 = cal.confusion.iter().map(|x| x.answers).sum();
        assert_eq!(confused, wrong.round() as u64, "{cal:?}");
    }
    assert!(
        models
            .iter()
            .filter(|m| m.model.starts_with("lexicon"))
            .any(|m| m
                .calibration
                .as_ref()
                .is_some_and(|c| !c.confusion.is_empty())),
        "the flipper's wrong gold answers are in the lexicon's confusion rows"
    );
    let table = c.cli(&["leaderboard", "--by-model"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("Brier"));

    let metrics = reqwest::blocking::get(format!("{}/metrics", c.http))
        .and_then(reqwest::blocking::Response::text)
        .expect("metrics");
    for name in [
        "answers_per_finalized_task_count",
        "posterior_at_finalization_count",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0")),
            "{name} missing or zero in /metrics"
        );
    }
    println!(
        "{finalized} of {} finalized; flipper's last weight {flipper:.2}; mean weights: \
         flipper {flipper_mean:.2}, smollm2 {smollm2_mean:.2}; smollm2 Brier {:.3}",
        ids.len(),
        smollm2_cal.brier
    );
}
