//! The OpenAI-compatible API over several coordinators: two `aimarket coordinator`s on different
//! nodes of a three-node NATS cluster, over one PostgreSQL, with three smollm2 workers spread
//! over the nodes. A chat asked of one coordinator is decided by whichever coordinator takes the
//! deciding submission from the NATS queue; the one asked still answers it, verified, with its
//! evidence. Chats alternate between the two coordinators until at least two were decided by the
//! coordinator not asked (each is a coin toss: 20 chats leave a one-in-a-million chance of none).

mod common;

use common::{logged, show_log_tails, wait_until, BIN};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;
use test_support::{NatsCluster, Postgres};

/// Kills the processes when dropped, and shows their logs if the test failed.
struct Fleet {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            show_log_tails(self.dir.path(), 15);
        }
    }
}

/// The coordinator whose log says it finalized `task`.
fn decider(dir: &Path, task: &str) -> Option<usize> {
    (0..2).find(|i| {
        std::fs::read_to_string(dir.join(format!("coordinator-{i}.log")))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("task finalized") && l.contains(task))
    })
}

/// What `aimarket infer --messages` generates for a one-turn chat: the answer's text.
fn inferred(dir: &Path, prompt: &str, max_tokens: u32) -> String {
    let chat = dir.join("chat.json");
    let turns = json!([{"role": "user", "content": prompt}]);
    std::fs::write(&chat, turns.to_string()).expect("write the chat");
    let out = Command::new(BIN)
        .env("RUST_LOG", "warn")
        .args(["--json", "infer", "--model", "smollm2", "--model-dir"])
        .arg(test_support::smollm2_dir())
        .arg("--messages")
        .arg(&chat)
        .args(["--max-new-tokens", &max_tokens.to_string()])
        .output()
        .expect("run infer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    rows[0]["generated_text"]
        .as_str()
        .expect("a text")
        .to_owned()
}

#[test]
fn a_chat_asked_of_one_coordinator_is_answered_when_another_decides_it() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = Postgres::start();
    let nats = rt.block_on(NatsCluster::start());
    let mut fleet = Fleet {
        children: Vec::new(),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let dir = fleet.dir.path().to_owned();
    let mut bases = Vec::new();
    for i in 0..2 {
        let http = format!("127.0.0.1:{}", test_support::free_port());
        let child = logged(&dir, &format!("coordinator-{i}.log"), &nats.urls_from(i))
            .args(["coordinator", "--db", &pg.url(), "--http", &http])
            .args(["--gold-rate", "0"])
            .spawn()
            .expect("spawn coordinator");
        fleet.children.push(child);
        bases.push(format!("http://{http}/v1"));
    }
    for (i, id) in ["g1", "g2", "g3"].iter().enumerate() {
        let child = logged(&dir, &format!("worker-{id}.log"), &nats.urls_from(i % 3))
            .args(["worker", "--id", id, "--model", "smollm2", "--model-dir"])
            .arg(test_support::smollm2_dir())
            .spawn()
            .expect("spawn worker");
        fleet.children.push(child);
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("http client");
    wait_until(
        "both coordinators to list three smollm2 workers",
        Duration::from_secs(90),
        || {
            bases.iter().all(|base| {
                http.get(format!("{base}/models"))
                    .send()
                    .and_then(reqwest::blocking::Response::json::<Value>)
                    .is_ok_and(|m| {
                        m["data"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|m| m["id"] == "smollm2" && m["workers"] == 3)
                    })
            })
        },
    );

    let mut crossed = 0;
    for n in 0..20u32 {
        let asked = (n % 2) as usize;
        let prompt = format!("Give one word that rhymes with the number {n}.");
        let reply: Value = http
            .post(format!("{}/chat/completions", bases[asked]))
            .json(&json!({
                "model": "smollm2",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 8,
                "aimarket": {"required": 2},
            }))
            .send()
            .and_then(reqwest::blocking::Response::error_for_status)
            .and_then(reqwest::blocking::Response::json)
            .unwrap_or_else(|e| panic!("chat {n} asked of coordinator {asked}: {e}"));
        let evidence = &reply["aimarket"];
        assert_eq!(evidence["status"], "finalized", "{reply}");
        assert_eq!(evidence["verification"], "exact", "{reply}");
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            inferred(&dir, &prompt, 8),
            "chat {n}: the verified answer is the model's"
        );
        let task = evidence["task_id"].as_str().expect("a task id").to_owned();
        let mut by = None;
        wait_until(
            "the deciding coordinator's log",
            Duration::from_secs(10),
            || {
                by = decider(&dir, &task);
                by.is_some()
            },
        );
        if by != Some(asked) {
            crossed += 1;
            eprintln!("chat {n}: asked of coordinator {asked}, decided by {by:?}");
        }
        if crossed == 2 {
            return;
        }
    }
    panic!("in 20 chats, fewer than two were decided by the coordinator not asked: {crossed}");
}
