//! Three `aimarket worker --model minilm` processes (the real all-MiniLM-L6-v2, which `make test`
//! fetches) finalize sentiment tasks over NATS, each vote carrying the model's id.

mod common;

use common::{wait_until, Cluster};
use protocol::messages::TaskView;
use std::time::Duration;

#[test]
fn three_minilm_workers_finalize_sentiment_tasks() {
    let dir = test_support::minilm_dir();
    let dir = dir.to_str().expect("utf8 path").to_owned();
    let mut c = Cluster::start(&[]);
    for w in ["m1", "m2", "m3"] {
        c.start_worker(
            w,
            &["--model", "minilm", "--model-dir", &dir, "--batch", "4"],
        );
    }
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
