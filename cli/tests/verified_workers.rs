//! Verification without a trusted validator, end to end: `aimarket worker --model smollm2`
//! processes over a real nats-server, one of them drilled to misbehave (`--misbehave`). Tasks are
//! verified in `generate_once` mode: one worker generates, the two others score its answer with
//! one teacher-forced pass each.

mod common;

use common::{wait_until, Cluster};
use protocol::messages::{LeaderboardEntry, TaskDetail, TaskView};
use protocol::TaskStatus;
use std::time::Duration;

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Say hello in Spanish.",
    "What do bees make?",
];

/// Adds one `generate_once` task per prompt; their ids.
fn add_tasks(c: &Cluster) -> Vec<String> {
    PROMPTS
        .iter()
        .map(|p| {
            let out = c.cli(&[
                "task",
                "add",
                p,
                "--type",
                "generate",
                "--max-new-tokens",
                "12",
                "--verify",
                "generate-once",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect()
}

/// Waits until `worker` has generated an answer to every task.
fn wait_generated(c: &Cluster, worker: &str) {
    wait_until(
        "the first worker to answer every task",
        Duration::from_secs(300),
        || {
            c.count(&format!(
                "SELECT COUNT(*) FROM submission WHERE worker_id = '{worker}'"
            )) == PROMPTS.len() as i64
        },
    );
}

/// Waits for the tasks to end.
fn wait_all(c: &Cluster, ids: &[String]) -> Vec<TaskView> {
    let mut args = vec!["task", "wait"];
    args.extend(ids.iter().map(String::as_str));
    args.extend_from_slice(&["--timeout", "300"]);
    c.json(&args)
}

/// Asserts every task finalized on the honest answer: what `aimarket infer` generates.
fn assert_honest(c: &Cluster, tasks: &[TaskView]) {
    for (t, prompt) in tasks.iter().zip(PROMPTS) {
        assert_eq!(t.status, TaskStatus::Finalized, "{t:?}");
        let honest = c.smollm2_ids(&["--type", "generate", "--max-new-tokens", "12", prompt]);
        assert_eq!(t.final_token_ids.as_ref(), Some(&honest), "{prompt}");
    }
}

#[test]
fn a_truncating_generator_is_caught_and_the_honest_answer_finalized() {
    let mut c = Cluster::start(&[("AIMARKET_TRAP_RATE", "0")]);
    // The truncating worker generates first; the honest ones come to score.
    c.start_smollm2("cutter", &["--misbehave", "truncate"]);
    let ids = add_tasks(&c);
    wait_generated(&c, "cutter");
    for w in ["h1", "h2"] {
        c.start_smollm2(w, &[]);
    }
    let tasks = wait_all(&c, &ids);
    assert_honest(&c, &tasks);
    for t in &tasks {
        let d: TaskDetail = c.json(&["task", "get", &t.id.to_string()]);
        for s in &d.submissions {
            let is_cutter = s.worker_id.as_str() == "cutter";
            assert_eq!(s.agreed, Some(!is_cutter), "{s:?}");
        }
        // Honest scorers on the same engine: every pass is exact (gaps exactly 0), and no
        // refusal is.
        assert!(!d.verifications.is_empty(), "{d:?}");
        for v in &d.verifications {
            assert_eq!(v.exact, v.passed, "{v:?}");
        }
    }
    // Its truncated answers were scored and refused; none earned it a point.
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'cutter' AND agreed"),
        0
    );
    assert_eq!(
        c.count(
            "SELECT COUNT(*) FROM verification v JOIN submission s ON s.id = v.candidate
             WHERE s.worker_id = 'cutter' AND v.passed"
        ),
        0,
        "an honest verifier passed a truncated answer"
    );
    assert!(
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'cutter'") > 0,
        "the truncating worker generated nothing: the test shows nothing"
    );
}

#[test]
fn a_pass_everything_verifier_misses_traps_and_earns_nothing() {
    // Every verifier's first scoring of a candidate is a trap.
    let mut c = Cluster::start(&[("AIMARKET_TRAP_RATE", "1")]);
    // An honest worker generates every answer; the lying verifier and an honest one score them.
    c.start_smollm2("h1", &[]);
    let ids = add_tasks(&c);
    wait_generated(&c, "h1");
    c.start_smollm2("yes-man", &["--misbehave", "pass-everything"]);
    c.start_smollm2("h2", &[]);
    let tasks = wait_all(&c, &ids);
    assert_honest(&c, &tasks);
    let board: Vec<LeaderboardEntry> = c.json(&["leaderboard"]);
    let entry = |w: &str| board.iter().find(|e| e.worker_id.as_str() == w).cloned();
    let yes = entry("yes-man").expect("on the board");
    let rows = |w: &str| {
        c.count(&format!(
            "SELECT COUNT(*) FROM verification WHERE worker_id = '{w}'"
        ))
    };
    assert!(
        yes.traps_missed > 0,
        "{yes:?}; rows by yes-man {}, h2 {}, all {}, traps {}",
        rows("yes-man"),
        rows("h2"),
        c.count("SELECT COUNT(*) FROM verification"),
        c.count("SELECT COUNT(*) FROM verification WHERE trap IS NOT NULL")
    );
    assert_eq!(yes.traps_caught, 0, "{yes:?}");
    // Points for its own generations at most; every scoring it made lost one.
    let generated =
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'yes-man' AND agreed");
    assert!(
        yes.points < generated,
        "{yes:?} with {generated} good generations"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM verification WHERE worker_id = 'yes-man' AND trap IS NULL AND agreed"),
        0,
        "its made-up scores agreed with an honest verifier"
    );
    for w in ["h1", "h2"] {
        let e = entry(w).expect("on the board");
        assert_eq!(e.traps_missed, 0, "{e:?}");
    }
}
