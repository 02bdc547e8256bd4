//! A Hugging Face model as a generative worker: three `aimarket worker --model flan-t5` processes
//! on a tiny T5 folder (random weights, made by the test) finalize a summarization and a
//! translation by exact match; the tasks pin the content hash the workers report, and a task that
//! names none is refused.

mod common;

use common::Cluster;
use protocol::messages::TaskDetail;
use protocol::TaskStatus;

#[test]
fn three_flan_t5_workers_finalize_tasks_pinned_to_their_content_hash() {
    let model = tempfile::tempdir().expect("model dir");
    test_support::t5::write_model(model.path(), false, true, 11);
    test_support::t5::write_tokenizer(model.path());
    let dir = model.path().to_str().expect("utf8 path");
    let mut c = Cluster::start(&[]);
    for w in ["t1", "t2", "t3"] {
        c.start_worker(w, &["--model", "flan-t5", "--model-dir", dir]);
    }
    let infer: serde_json::Value = c.json(&[
        "infer",
        "--model",
        "flan-t5",
        "--model-dir",
        dir,
        "--type",
        "generate",
        "Hello world",
    ]);
    let hash = infer[0]["model_hash"]
        .as_str()
        .expect("infer names the hash")
        .to_owned();
    // The registry shows what each worker serves.
    common::wait_until(
        "the workers to register",
        std::time::Duration::from_secs(30),
        || {
            let w: Vec<protocol::messages::WorkerView> = c.json(&["workers"]);
            w.len() == 3
                && w.iter()
                    .all(|w| w.model_hash.as_deref() == Some(hash.as_str()))
        },
    );

    // Without the hash, the coordinator cannot know which content to pin.
    let out = c.cli(&[
        "task",
        "add",
        "--type",
        "summarization",
        "--model",
        "flan-t5",
        "the cat",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown_model") && err.contains("model_hash"),
        "{err}"
    );

    let cases: [&[&str]; 2] = [
        &[
            "--type",
            "summarization",
            "the river rose and the old bridge closed",
        ],
        &[
            "--type",
            "translation",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "the cat sleeps",
        ],
    ];
    for args in cases {
        let mut all = vec![
            "task",
            "add",
            "--model",
            "flan-t5",
            "--model-hash",
            &hash,
            "--max-new-tokens",
            "10",
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--wait", "--timeout", "120"]);
        let done: Vec<protocol::messages::TaskView> = c.json(&all);
        assert_eq!(done[0].status, TaskStatus::Finalized, "{:?}", done[0]);
        let d: TaskDetail = c.json(&["task", "get", &done[0].id.to_string()]);
        assert_eq!(
            d.task.generation.as_ref().map(|g| g.model_hash.as_str()),
            Some(hash.as_str())
        );
        assert_eq!(d.submissions.len(), 3);
        assert!(d.submissions.iter().all(|s| s.agreed == Some(true)
            && s.model_hash.as_deref() == Some(hash.as_str())
            && s.token_ids == d.task.final_token_ids));
    }
}
