//! The OpenAI-compatible API end to end, driven by the official `openai` Python package (from
//! PyPI, in the venv `scripts/openai-venv.sh` makes; `make test` makes it first) against real
//! processes: nats-server, a coordinator, two smollm2 workers and a minilm worker. A chat
//! completion equals `aimarket infer --messages` on the same chat (content, token counts), a
//! legacy completion `infer --raw` on the same prompt,
//! streamed too (verified and optimistic); embeddings equal `infer`'s; each error class the
//! client raises is met, and the store is unchanged after each refusal.
//!
//! The driver is `openai_client.py` next to this file. Without Python or PyPI the test says so
//! and skips.

mod common;

use base64::Engine as _;
use common::{wait_until, Cluster};
use protocol::messages::TaskView;
use protocol::TaskStatus;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The venv's python: `$AIMARKET_OPENAI_PYTHON`, else what `scripts/openai-venv.sh` prints
/// (it installs the `openai` package from PyPI into a venv once; `make test` runs it first).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("AIMARKET_OPENAI_PYTHON") {
        return PathBuf::from(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/openai-venv.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the openai package could not be installed from PyPI ({}): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The driver's command for one phase.
fn phase_command(py: &PathBuf, name: &str, base: &str, key: &str, arg: Option<&str>) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script).args([name, base, key]);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    cmd
}

/// One phase of the driver, its JSON.
fn phase(py: &PathBuf, name: &str, base: &str, key: &str, arg: Option<&str>) -> Value {
    let out = phase_command(py, name, base, key, arg)
        .output()
        .expect("run the openai client");
    phase_output(name, &out)
}

/// A phase's JSON from its finished process.
fn phase_output(name: &str, out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "phase {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "phase {name} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn floats(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).expect("a vector")
}

/// A multi-turn chat with a system prompt, as a file `--messages` and the client both read.
const CHAT: &str = r#"[
  {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
  {"role": "user", "content": "What is the capital of France?"},
  {"role": "assistant", "content": "The capital of France is Paris."},
  {"role": "user", "content": "And of Italy?"}
]"#;

#[test]
fn the_official_openai_client_gets_verified_answers_with_evidence() {
    let py = python();
    let mut c = Cluster::start(&[]);
    c.start_smollm2("g1", &[]);
    c.start_smollm2("g2", &[]);
    let minilm = test_support::minilm_dir();
    c.start_worker(
        "m1",
        &[
            "--model",
            "minilm",
            "--model-dir",
            minilm.to_str().expect("utf8"),
        ],
    );
    let base = format!("{}/v1", c.http);
    wait_until("three workers live", Duration::from_secs(60), || {
        let w: Value = c.json(&["workers"]);
        w.as_array().map_or(0, Vec::len) == 3
    });

    let models = phase(&py, "models", &base, "none", None);
    let smol = models
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == "smollm2"))
        .expect("smollm2 listed");
    assert_eq!(smol["workers"], 2);
    assert_eq!(
        smol["content_hashes"][0]["sha256"],
        protocol::generation::SMOLLM2_HASH
    );
    assert!(models
        .as_array()
        .expect("list")
        .iter()
        .any(|m| m["id"] == "minilm"));

    chat_equals_infer(&c, &py, &base);
    completion_equals_infer(&c, &py, &base);
    embeddings_equal_infer(&c, &py, &base, &minilm);
    refusals_change_nothing(&c, &py, &base);
}

/// Optimistic streaming sends the first generator's tokens before anything is verified; when
/// consensus keeps another answer the stream ends in an error chunk (`answer_replaced`) that
/// names the worker streamed from and carries the verified answer. A worker that samples with a
/// seed of its own generates first, alone (the two honest workers are paused, still live); they
/// go on once it has answered.
#[test]
fn an_optimistic_stream_ends_in_an_error_when_consensus_keeps_another_answer() {
    let py = python();
    let mut c = Cluster::start(&[]);
    c.start_smollm2("liar", &["--misbehave", "other-seed"]);
    c.start_smollm2("h1", &[]);
    c.start_smollm2("h2", &[]);
    wait_until("three workers live", Duration::from_secs(60), || {
        let w: Value = c.json(&["workers"]);
        w.as_array().map_or(0, Vec::len) == 3
    });
    c.signal_worker("h1", "STOP");
    c.signal_worker("h2", "STOP");
    let base = format!("{}/v1", c.http);
    let prompt = "Write a short poem about the sea.";
    let client = phase_command(&py, "replaced", &base, "none", Some(prompt))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the openai client");
    wait_until("the liar's answer", Duration::from_secs(120), || {
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'liar'") == 1
    });
    c.signal_worker("h1", "CONT");
    c.signal_worker("h2", "CONT");
    let got = phase_output("replaced", &client.wait_with_output().expect("the client"));

    let tasks: Vec<TaskView> = c.json(&["task", "list"]);
    let task = tasks.first().expect("the chat's task");
    assert_eq!(task.status, TaskStatus::Finalized, "{task:?}");
    let detail: Value = c.json(&["task", "get", &task.id.to_string()]);
    let liar = detail["submissions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["worker_id"] == "liar"))
        .expect("the liar's answer");
    assert_eq!(liar["agreed"], false, "{detail}");
    let streamed = got["streamed"].as_str().expect("streamed text");
    let told = liar["text"].as_str().expect("the liar's text");
    assert!(
        !streamed.is_empty() && told.starts_with(streamed),
        "the stream carried the liar's tokens: {streamed:?} of {told:?}"
    );
    let verified = task.final_text.as_deref().expect("a verified text");
    assert_ne!(verified, told);
    assert_eq!(got["raised"], "APIError", "{got}");
    let error = &got["body"];
    assert_eq!(error["code"], "answer_replaced", "{got}");
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.contains("from worker liar") && message.ends_with(verified),
        "{message}"
    );
}

fn chat_equals_infer(c: &Cluster, py: &PathBuf, base: &str) {
    let chat_file = c.dir.path().join("chat.json");
    std::fs::write(&chat_file, CHAT).expect("write the chat");
    let chat_path = chat_file.to_str().expect("utf8");
    let dir = test_support::smollm2_dir();
    let inferred: Value = c.json(&[
        "infer",
        "--model",
        "smollm2",
        "--model-dir",
        dir.to_str().expect("utf8"),
        "--messages",
        chat_path,
        "--max-new-tokens",
        "24",
    ]);
    let want = &inferred[0];
    let want_text = want["generated_text"].as_str().expect("text");
    let want_ids = want["token_ids"].as_array().expect("ids").len();
    let want_prompt = want["prompt_token_ids"].as_array().expect("ids").len();

    let got = phase(py, "chat", base, "none", Some(chat_path));
    let plain = &got["plain"];
    assert_eq!(plain["content"], want_text, "{got}");
    assert_eq!(plain["completion_tokens"], want_ids);
    assert_eq!(plain["prompt_tokens"], want_prompt);
    assert_eq!(plain["logprobs"].as_array().map(Vec::len), Some(want_ids));
    // Each token reads as the worker's tokenizer cut the text: the tokens' bytes join to the
    // content, and each token's text is its bytes.
    let bytes: Vec<u8> = plain["bytes"]
        .as_array()
        .expect("bytes")
        .iter()
        .flat_map(|b| serde_json::from_value::<Vec<u8>>(b.clone()).expect("a token's bytes"))
        .collect();
    assert_eq!(String::from_utf8(bytes).expect("utf8"), want_text);
    let joined: String = plain["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(joined, want_text, "tokens: {}", plain["tokens"]);
    let finish = if want["stop"] == "length" {
        "length"
    } else {
        "stop"
    };
    assert_eq!(plain["finish_reason"], finish);
    let evidence = &plain["aimarket"];
    assert_eq!(evidence["status"], "finalized");
    assert_eq!(evidence["verification"], "exact");
    assert_eq!(evidence["model_hash"], protocol::generation::SMOLLM2_HASH);
    let mut agreeing: Vec<&str> = evidence["agreeing_workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    agreeing.sort_unstable();
    assert_eq!(agreeing, ["g1", "g2"]);
    assert_eq!(
        got["fetched_content"], want_text,
        "fetched later, same answer"
    );
    assert_eq!(
        got["fetched_usage"]["prompt_tokens"], want_prompt,
        "fetched later, the prompt's count is the answer's own"
    );
    // Past its wait: 504 naming the task; the answer fetched later is the same.
    let late = &got["late"];
    assert_eq!(
        (
            late["raised"].as_str(),
            late["status"].as_u64(),
            late["code"].as_str()
        ),
        (Some("InternalServerError"), Some(504), Some("task_pending")),
        "{late}"
    );
    assert_eq!(late["content"], want_text, "{late}");
    assert_eq!(late["evidence_task"], late["task"]);
    // A stop string (a space): the same cut as `infer --stop`, verified by the workers' exact match.
    let cut: Value = c.json(&[
        "infer",
        "--model",
        "smollm2",
        "--model-dir",
        dir.to_str().expect("utf8"),
        "--messages",
        chat_path,
        "--max-new-tokens",
        "24",
        "--stop",
        " ",
    ]);
    let stopped = &got["stopped"];
    assert_eq!(stopped["content"], cut[0]["generated_text"], "{stopped}");
    assert_eq!(
        stopped["completion_tokens"],
        cut[0]["token_ids"].as_array().map(Vec::len).expect("ids")
    );
    let short = stopped["content"].as_str().expect("text");
    assert!(
        !short.contains(' ') && want_text.starts_with(short) && short.len() < want_text.len(),
        "cut at the first space of {want_text:?}: {short:?}"
    );
    assert_eq!(stopped["finish_reason"], "stop");
    // Sampling: the same seed gives the same verified answer; without one the coordinator
    // picks it and says which.
    let sampled = got["sampled"].as_array().expect("sampled");
    assert_eq!(sampled[0]["content"], sampled[1]["content"], "{sampled:?}");
    assert_eq!(
        (sampled[0]["seed"].as_u64(), sampled[0]["decoding"].as_str()),
        (Some(7), Some("sample"))
    );
    assert!(sampled[2]["seed"].as_u64().is_some(), "{sampled:?}");
    for mode in ["verified", "optimistic"] {
        let s = &got[mode];
        assert_eq!(s["content"], want_text, "{mode} stream: {s}");
        assert_eq!(s["completion_tokens"], want_ids, "{mode}");
        assert_eq!(s["finish_reason"], finish, "{mode}");
        assert_eq!(s["aimarket"]["status"], "finalized", "{mode}");
        eprintln!(
            "{mode} stream: time to first token {:.3} s, total {:.3} s, {} content chunks",
            s["ttft_seconds"].as_f64().unwrap_or(f64::NAN),
            s["total_seconds"].as_f64().unwrap_or(f64::NAN),
            s["chunks"]
        );
    }
    assert!(
        got["optimistic"]["chunks"].as_u64() > Some(1),
        "optimistic streaming sends the tokens as they come: {}",
        got["optimistic"]
    );
}

fn completion_equals_infer(c: &Cluster, py: &PathBuf, base: &str) {
    let prompt = "The capital of France is";
    let dir = test_support::smollm2_dir();
    let inferred: Value = c.json(&[
        "infer",
        "--model",
        "smollm2",
        "--model-dir",
        dir.to_str().expect("utf8"),
        "--raw",
        "--max-new-tokens",
        "8",
        prompt,
    ]);
    let want = &inferred[0];
    let got = phase(py, "completion", base, "none", Some(prompt));
    assert_eq!(got["text"], want["generated_text"], "{got}");
    let ids = want["token_ids"].as_array().expect("ids").len();
    assert_eq!(got["completion_tokens"], ids);
    assert_eq!(
        got["prompt_tokens"],
        want["prompt_token_ids"].as_array().expect("ids").len(),
        "the prompt as it is, no chat template"
    );
    assert_eq!(got["token_logprobs"].as_array().map(Vec::len), Some(ids));
    assert_eq!(got["aimarket"]["verification"], "exact");
    assert!(got["id"].as_str().is_some_and(|i| i.starts_with("cmpl-")));
}

fn embeddings_equal_infer(c: &Cluster, py: &PathBuf, base: &str, minilm: &std::path::Path) {
    let got = phase(py, "embeddings", base, "none", None);
    let texts: Vec<String> = serde_json::from_value(got["texts"].clone()).expect("texts");
    let mut args = vec![
        "infer",
        "--model",
        "minilm",
        "--model-dir",
        minilm.to_str().expect("utf8"),
        "--type",
        "embedding",
    ];
    args.extend(texts.iter().map(String::as_str));
    let inferred: Value = c.json(&args);
    let read: u64 = inferred
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["input_tokens"].as_u64())
        .sum();
    assert!(read > 0, "{inferred}");
    assert_eq!(
        got["prompt_tokens"].as_u64(),
        Some(read),
        "the tokens MiniLM read"
    );
    for (i, row) in inferred.as_array().expect("rows").iter().enumerate() {
        let want = floats(&row["embedding"]);
        let api = floats(&got["floats"][i]);
        let cos = cosine(&want, &api);
        assert!(cos > 0.999, "input {i}: cosine {cos}");
        assert_eq!(got["aimarket"][i]["status"], "finalized");
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(got["base64"].as_str().expect("base64 text"))
        .expect("base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(cosine(&decoded, &floats(&got["floats"][0])) > 0.999);
}

fn refusals_change_nothing(c: &Cluster, py: &PathBuf, base: &str) {
    let before = c.count("SELECT COUNT(*) FROM task");
    let got = phase(py, "errors", base, "none", None);
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task"),
        before,
        "a refused request adds nothing: {got}"
    );
    let want = [
        ("n=2", "BadRequestError", 400),
        ("max_tokens=0", "BadRequestError", 400),
        ("max_tokens=100000", "BadRequestError", 400),
        ("empty messages", "BadRequestError", 400),
        ("unknown role", "BadRequestError", 400),
        ("temperature type", "BadRequestError", 400),
        ("five stops", "BadRequestError", 400),
        ("unknown model", "NotFoundError", 404),
        ("unknown embedding model", "NotFoundError", 404),
        ("oversize body", "APIStatusError", 413),
        ("oversize text", "APIStatusError", 413),
        ("too few workers", "InternalServerError", 503),
    ];
    let cases = got.as_array().expect("cases");
    assert_eq!(cases.len(), want.len(), "{got}");
    for (case, (name, class, status)) in cases.iter().zip(want) {
        assert_eq!(case["case"], name);
        assert_eq!(case["raised"], class, "{case}");
        assert_eq!(case["status"], status, "{case}");
    }
    assert_eq!(cases[7]["body"]["code"], "model_not_found");
}

#[test]
fn protected_mode_refuses_a_missing_or_wrong_key() {
    let py = python();
    let c = Cluster::start(&[
        ("AIMARKET_API_KEY", "sekrit,other"),
        ("AIMARKET_API_REQUESTS_PER_MINUTE", "2"),
    ]);
    let before = c.count("SELECT COUNT(*) FROM task");
    let got = phase(&py, "auth", &format!("{}/v1", c.http), "sekrit", None);
    let cases = got.as_array().expect("cases");
    for case in &cases[..4] {
        assert_eq!(case["raised"], "AuthenticationError", "{case}");
        assert_eq!(case["status"], 401, "{case}");
    }
    assert_eq!(cases[4]["case"], "right key models");
    assert_eq!(
        cases[4]["ids"],
        serde_json::json!([]),
        "no workers: an empty list"
    );
    // Each key's quota: two requests a minute. With no worker live each is a 503 until the
    // third, a 429 (the client's RateLimitError) with Retry-After; the other key has its own.
    let got = phase(
        &py,
        "quota",
        &format!("{}/v1", c.http),
        "sekrit",
        Some("other"),
    );
    let statuses: Vec<Option<u64>> = got["mine"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["status"].as_u64())
        .collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(429)], "{got}");
    let limited = &got["mine"][2];
    assert_eq!(
        (limited["raised"].as_str(), limited["code"].as_str()),
        (Some("RateLimitError"), Some("rate_limit_exceeded")),
        "{got}"
    );
    let retry: u64 = limited["retry_after"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry), "{got}");
    assert_eq!(
        got["other"]["status"], 503,
        "another key, its own quota: {got}"
    );
    assert_eq!(c.count("SELECT COUNT(*) FROM task"), before);
}
