//! The HTTP gateway: every endpoint of the original API with its shapes, errors with fitting
//! statuses, metrics that parse and move. A real coordinator, nats-server and SQLite file.

mod common;

use common::Running;
use serde_json::{json, Value};

struct Gateway {
    run: Running,
    http: reqwest::Client,
}

impl Gateway {
    async fn start() -> Self {
        Self {
            run: Running::start(|_| {}).await,
            // A fresh connection per request: the server closes one on which it refused an
            // oversize body unread, and a pooled client could race that close with its next
            // request (a broken pipe that says nothing about the gateway).
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.run.http)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn has_all(v: &Value, want: &[&str]) {
    let have = keys(v);
    for k in want {
        assert!(have.contains(k), "missing {k:?} in {v}");
    }
}

fn is_utc_timestamp(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| t.offset().local_minus_utc() == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_in_the_original_shape() {
    let g = Gateway::start().await;
    assert_eq!(g.get("/health").await, (200, json!({"ok": true})));

    let (s, created) = g
        .post(
            "/tasks",
            json!({"text": "I love it", "required_submissions": 1}),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(keys(&created), vec!["task_id"]);
    let id = created["task_id"].as_str().expect("id").to_owned();

    let (s, list) = g.get("/tasks").await;
    assert_eq!(s, 200);
    let first = &list.as_array().expect("a list")[0];
    has_all(
        first,
        &[
            "id",
            "text",
            "status",
            "final_label",
            "required_submissions",
            "attempts",
            "max_attempts",
            "reserved_by",
            "lease_expires_at",
            "created_at",
        ],
    );
    assert_eq!(first["status"], "queued");
    assert!(is_utc_timestamp(&first["created_at"]), "{first}");
    assert_eq!(
        g.get("/tasks?status=queued")
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        g.get("/tasks?status=finalized")
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(g.get("/tasks?status=bogus").await.0, 422);

    let (s, reg) = g
        .post(
            "/workers/register",
            json!({"worker_id": "web", "capabilities_json": "[\"sentiment\"]"}),
        )
        .await;
    assert_eq!((s, &reg["ok"]), (200, &json!(true)), "{reg}");

    // Nothing leased yet: submitting is refused.
    let submit = json!({"worker_id": "web", "task_id": id, "label": "positive", "confidence": 0.9});
    let (s, refused) = g.post("/workers/submit", submit.clone()).await;
    assert_eq!(
        (s, &refused["error"]["code"]),
        (409, &json!("no_lease")),
        "{refused}"
    );

    let (s, next) = g.post("/tasks/next", json!({"worker_id": "web"})).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&next["task_id"], &next["text"]),
        (&json!(id), &json!("I love it"))
    );
    let (_, detail) = g.get(&format!("/tasks/{id}")).await;
    assert_eq!(detail["task"]["reserved_by"], "web");
    assert!(is_utc_timestamp(&detail["task"]["lease_expires_at"]));

    let (s, hb) = g
        .post("/workers/heartbeat", json!({"worker_id": "web"}))
        .await;
    assert_eq!((s, &hb["ok"]), (200, &json!(true)));
    assert!(is_utc_timestamp(&hb["ts"]), "{hb}");
    assert_eq!(hb["renewed"], 1);

    let (s, ack) = g.post("/workers/submit", submit.clone()).await;
    assert_eq!((s, &ack["ok"]), (200, &json!(true)), "{ack}");
    assert!(ack.get("duplicate").is_none(), "{ack}");
    let (s, again) = g.post("/workers/submit", submit).await;
    assert_eq!((s, &again["duplicate"]), (200, &json!(true)), "{again}");

    let (s, detail) = g.get(&format!("/tasks/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(detail["task"]["status"], "finalized");
    assert_eq!(detail["task"]["final_label"], "positive");
    let sub = &detail["submissions"][0];
    has_all(sub, &["worker_id", "label", "confidence", "created_at"]);
    assert!(is_utc_timestamp(&sub["created_at"]));

    // Nothing left: both null.
    let (_, none) = g.post("/tasks/next", json!({"worker_id": "web"})).await;
    assert_eq!(
        (&none["task_id"], &none["text"]),
        (&Value::Null, &Value::Null)
    );

    let (s, board) = g.get("/leaderboard").await;
    assert_eq!(s, 200);
    assert_eq!(board[0]["worker_id"], "web");
    assert_eq!(board[0]["points"], 1);

    let (s, stats) = g.get("/db/stats").await;
    assert_eq!(s, 200);
    has_all(
        &stats,
        &[
            "tasks_total",
            "tasks_by_status",
            "submissions",
            "workers",
            "workers_stale",
        ],
    );
    assert_eq!(stats["tasks_by_status"]["finalized"], 1);

    assert_eq!(
        g.post("/ops/requeue-stale", json!({})).await,
        (200, json!({"requeued": 0, "failed": 0, "stale_workers": 0}))
    );

    let page = g
        .http
        .get(g.url("/dashboard"))
        .send()
        .await
        .expect("dashboard");
    assert!(page.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    let html = page.text().await.expect("html");
    // SVG's namespace is a name, not something fetched.
    let fetched = html.replace("http://www.w3.org/2000/svg", "");
    assert!(
        html.contains("<title>aimarket dashboard</title>")
            && !fetched.contains("http://")
            && !fetched.contains("https://"),
        "the dashboard must not load anything external"
    );
    let (s, data) = g.get("/dashboard/data").await;
    assert_eq!(s, 200);
    has_all(
        &data,
        &["stats", "workers", "leaderboard", "models", "recent"],
    );

    let (s, spec) = g.get("/openapi.json").await;
    assert_eq!(s, 200);
    for path in [
        "/health",
        "/tasks",
        "/tasks/{id}",
        "/tasks/next",
        "/workers/submit",
        "/workers/register",
        "/workers/heartbeat",
        "/leaderboard",
        "/db/stats",
        "/ops/requeue-stale",
        "/ops/reset",
        "/metrics",
        "/dashboard",
        "/openapi.json",
        "/tasks/{id}/cancel",
        "/tasks/{id}/retry",
        "/gold",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }

    assert_eq!(
        g.post("/ops/reset", json!({})).await,
        (200, json!({"ok": true}))
    );
    assert_eq!(g.get("/db/stats").await.1["tasks_total"], 0);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_fitting_statuses() {
    let g = Gateway::start().await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/tasks", "{\"text\":".into(), 400, "malformed_request"),
        ("/tasks", json!({"text": 5}).to_string(), 422, "malformed_request"),
        ("/tasks", json!({"text": ""}).to_string(), 422, "invalid_argument"),
        ("/tasks", json!({"text": "x", "required_submissions": 0}).to_string(), 422, "invalid_argument"),
        ("/tasks", json!({"text": "x", "required_submissions": 101}).to_string(), 422, "invalid_argument"),
        ("/tasks", json!({"text": "x".repeat(70_000)}).to_string(), 413, "text_too_large"),
        ("/tasks", json!({"text": "x".repeat(1_000_000)}).to_string(), 413, "text_too_large"),
        ("/tasks/next", json!({"worker_id": "a.b"}).to_string(), 422, "malformed_request"),
        ("/workers/submit", json!({"worker_id": "w", "task_id": "01a21e3b-a1bf-760b-b3f1-68ba93059300", "label": "x", "confidence": 0.5}).to_string(), 404, "not_found"),
        ("/workers/submit", json!({"worker_id": "w"}).to_string(), 422, "malformed_request"),
        ("/workers/register", json!({"worker_id": "w", "capabilities_json": "[5]"}).to_string(), 422, "invalid_argument"),
        ("/tasks", json!({"text": "x", "type": "sentimnet"}).to_string(), 422, "invalid_argument"),
    ];
    for (path, body, status, code) in cases {
        let (s, err) = g.post_raw(path, body.clone()).await;
        assert_eq!(s, status, "{path} {body:.60}: {err}");
        assert_eq!(err["error"]["code"], code, "{path} {body:.60}: {err}");
        assert_eq!(err["ok"], false);
        assert!(err["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    for path in [
        "/tasks/01a21e3b-a1bf-760b-b3f1-68ba93059300",
        "/tasks/not-an-id",
        "/nope",
    ] {
        let (s, err) = g.get(path).await;
        assert_eq!(
            (s, &err["error"]["code"]),
            (404, &json!("not_found")),
            "{path}"
        );
    }
    // A misspelt type names the known ones; a malformed query string is refused in JSON too.
    let (_, err) = g
        .post("/tasks", json!({"text": "x", "type": "sentimnet"}))
        .await;
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("sentiment, zero-shot, embedding"), "{err}");
    for query in ["limit=-5", "limit=ten", "status=nope"] {
        let (s, err) = g.get(&format!("/tasks?{query}")).await;
        assert_eq!(
            s,
            400 + 22 * u16::from(query.starts_with("status")),
            "{query}: {err}"
        );
        assert_eq!(err["ok"], false, "{query}: {err}");
        assert!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        g.get("/db/stats").await.1["tasks_total"],
        0,
        "a refused request stored a task"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_routes_refuse_in_openai_s_shape_and_store_nothing() {
    let g = Gateway::start().await;
    let (s, models) = g.get("/v1/models").await;
    assert_eq!((s, &models), (200, &json!({"object": "list", "data": []})));
    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases = vec![
        (
            json!({"model": "smollm2", "messages": user, "n": 3}),
            400,
            "n",
        ),
        (json!({"model": "smollm2", "messages": []}), 400, "messages"),
        (
            json!({"model": "smollm2", "messages": user, "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (
            json!({"model": "smollm2", "messages": user, "temperature": "hot"}),
            400,
            "temperature",
        ),
        (json!({"model": "gpt-4o", "messages": user}), 404, "model"),
        // No live worker serves it: the starved reason, not a silent wait.
        (json!({"model": "smollm2", "messages": user}), 503, ""),
        (
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "x".repeat(70_000)}]}),
            413,
            "",
        ),
    ];
    for (body, status, param) in cases {
        let (s, err) = g.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(s, status, "{body:.80}: {err}");
        let e = &err["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
        assert!(e["type"].is_string(), "{err}");
        if !param.is_empty() {
            assert_eq!(e["param"], param, "{err}");
        }
    }
    let (s, err) = g
        .post_raw("/v1/chat/completions", "{\"model\":".into())
        .await;
    assert_eq!((s, err["error"]["param"].as_str()), (400, Some("body")));
    let (s, err) = g
        .post("/v1/embeddings", json!({"model": "minilm", "input": "x"}))
        .await;
    assert_eq!(s, 503, "{err}");
    let (s, err) = g.get("/v1/chat/completions/chatcmpl-nope").await;
    assert_eq!((s, err["error"]["code"].as_str()), (404, Some("not_found")));
    assert_eq!(
        g.get("/db/stats").await.1["tasks_total"],
        0,
        "a refused request stored a task"
    );
    g.stop().await;
}

/// The value of a sample (no labels) in a scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.is_empty())
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

async fn scrape(g: &Gateway) -> prometheus_parse::Scrape {
    let text = g
        .http
        .get(g.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_the_work() {
    let g = Gateway::start().await;
    let before = scrape(&g).await;
    for name in [
        "tasks_created_total",
        "tasks_claimed_total",
        "tasks_finalized_total",
        "tasks_failed_total",
        "worker_heartbeats_total",
        "queue_depth",
        "workers_active",
    ] {
        assert_eq!(sample(&before, name), 0.0, "{name}");
    }
    for i in 0..3 {
        g.post(
            "/tasks",
            json!({"text": format!("t{i}"), "required_submissions": 1}),
        )
        .await;
    }
    g.post("/workers/heartbeat", json!({"worker_id": "w"}))
        .await;
    let (_, next) = g.post("/tasks/next", json!({"worker_id": "w"})).await;
    g.post("/workers/submit", json!({"worker_id": "w", "task_id": next["task_id"], "label": "positive", "confidence": 1.0})).await;
    let after = scrape(&g).await;
    assert_eq!(sample(&after, "tasks_created_total"), 3.0);
    assert_eq!(sample(&after, "tasks_claimed_total"), 1.0);
    assert_eq!(sample(&after, "tasks_finalized_total"), 1.0);
    assert_eq!(sample(&after, "worker_heartbeats_total"), 1.0);
    assert_eq!(sample(&after, "queue_depth"), 2.0);
    assert_eq!(sample(&after, "workers_active"), 1.0);
    let latency = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "api_request_latency_seconds" && s.labels.get("route") == Some("/tasks")
        })
        .expect("latency of POST /tasks");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.iter().any(|b| b.count >= 3.0), "{buckets:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // The writer: three adds, a heartbeat, a submission (normal) and a lease (urgent), committed.
    let observed = |name: &str, lane: Option<&str>| -> f64 {
        let s = after
            .samples
            .iter()
            .find(|s| s.metric == name && lane.is_none_or(|l| s.labels.get("lane") == Some(l)))
            .unwrap_or_else(|| panic!("{name} {lane:?} missing"));
        match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    };
    assert!(observed("store_queue_seconds", Some("normal")) >= 5.0);
    assert_eq!(observed("store_queue_seconds", Some("urgent")), 1.0);
    assert!(observed("store_batch_operations", None) >= 1.0);
    assert!(observed("store_commit_seconds", None) >= 1.0);
    g.stop().await;
}

#[tokio::test]
async fn zero_shot_and_embedding_tasks_over_http() {
    let g = Gateway::start().await;
    for w in ["v1", "v2"] {
        let caps = json!(["zero-shot", "embedding"]).to_string();
        let (s, _) = g
            .post(
                "/workers/register",
                json!({"worker_id": w, "capabilities_json": caps}),
            )
            .await;
        assert_eq!(s, 200);
    }

    // Zero-shot: the lease carries the candidates; an answer outside them is refused.
    let (s, z) = g
        .post(
            "/tasks",
            json!({"text": "goal!", "type": "zero-shot", "labels": ["sports", "politics"],
                   "required_submissions": 1}),
        )
        .await;
    assert_eq!(s, 200, "{z}");
    let (_, next) = g.post("/tasks/next", json!({"worker_id": "v1"})).await;
    assert_eq!(next["labels"], json!(["sports", "politics"]), "{next}");
    let submit = |label: &str| json!({"worker_id": "v1", "task_id": z["task_id"], "label": label, "confidence": 0.8});
    let (s, err) = g.post("/workers/submit", submit("weather")).await;
    assert_eq!(
        (s, &err["error"]["code"]),
        (422, &json!("invalid_argument"))
    );
    let (s, ok) = g.post("/workers/submit", submit("sports")).await;
    assert_eq!((s, &ok["final_label"]), (200, &json!("sports")), "{ok}");

    // Embedding: two near vectors agree at the task's threshold; the result is their mean.
    let (s, e) = g
        .post(
            "/tasks",
            json!({"text": "I love it", "type": "embedding", "similarity": 0.99,
                   "required_submissions": 2}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    for (w, v) in [("v1", [1.0, 0.0]), ("v2", [0.995, 0.0998])] {
        let (_, next) = g.post("/tasks/next", json!({"worker_id": w})).await;
        assert_eq!(next["task_id"], e["task_id"], "{next}");
        let (s, r) = g
            .post(
                "/workers/submit",
                json!({"worker_id": w, "task_id": e["task_id"], "embedding": v, "confidence": 1.0}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
    }
    let id = e["task_id"].as_str().expect("id");
    let (s, d) = g.get(&format!("/tasks/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(d["task"]["status"], "finalized", "{d}");
    assert_eq!(d["task"]["similarity"], 0.99);
    let v = d["task"]["final_embedding"].as_array().expect("a vector");
    assert!((v[0].as_f64().expect("x") - 0.9975).abs() < 1e-6, "{v:?}");
    assert!(d["submissions"]
        .as_array()
        .expect("submissions")
        .iter()
        .all(|s| s["agreed"] == true && s["embedding"].is_array()));
    // Lists leave the vector out; the task is still there, finalized.
    let (_, list) = g.get("/tasks?status=finalized").await;
    let listed = list
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == e["task_id"])
        .expect("the embedding task");
    assert!(listed.get("final_embedding").is_none(), "{listed}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generative_tasks_over_http_pin_their_spec_and_refuse_bad_ones() {
    let g = Gateway::start().await;
    let refused = [
        (
            json!({"text": "x", "type": "generate", "model": "gpt-9"}),
            "unknown_model",
        ),
        (
            json!({"text": "x", "type": "generate", "model_hash": "abc"}),
            "unknown_model",
        ),
        (
            json!({"text": "x", "type": "translation", "source_lang": "en", "target_lang": "ja"}),
            "unsupported_spec",
        ),
        (
            json!({"text": "x", "type": "translation"}),
            "invalid_argument",
        ),
        (
            json!({"text": "x", "type": "summarization", "max_new_tokens": 513}),
            "invalid_argument",
        ),
        (
            json!({"text": "x", "max_new_tokens": 16}),
            "invalid_argument",
        ),
    ];
    for (body, code) in refused {
        let (s, err) = g.post("/tasks", body.clone()).await;
        assert_eq!(
            (s, &err["error"]["code"]),
            (422, &json!(code)),
            "{body}: {err}"
        );
    }
    let (_, list) = g.get("/tasks").await;
    assert_eq!(list, json!([]), "a refused task was stored");

    let (s, t) = g
        .post(
            "/tasks",
            json!({"text": "Bonjour", "type": "translation", "source_lang": "fr",
                   "target_lang": "en", "max_new_tokens": 32}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let id = t["task_id"].as_str().expect("id");
    let (_, d) = g.get(&format!("/tasks/{id}")).await;
    let spec = &d["task"]["generation"];
    assert_eq!(spec["model"], "smollm2");
    assert_eq!(spec["model_hash"], protocol::generation::SMOLLM2_HASH);
    assert_eq!(spec["template"], "translate/v1");
    assert_eq!(
        (&spec["max_new_tokens"], &spec["stop_ids"]),
        (&json!(32), &json!([2]))
    );

    // A worker of the original API names no model content: it is never leased generative work.
    let caps = json!(["generate", "translation"]).to_string();
    let (s, _) = g
        .post(
            "/workers/register",
            json!({"worker_id": "plain", "capabilities_json": caps}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, next) = g.post("/tasks/next", json!({"worker_id": "plain"})).await;
    assert_eq!(next["task_id"], Value::Null, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_and_gold_over_http() {
    let g = Gateway::start().await;
    let (s, created) = g.post("/tasks", json!({"text": "cancel me"})).await;
    assert_eq!(s, 200);
    let id = created["task_id"].as_str().expect("id").to_owned();

    let (s, body) = g.post(&format!("/tasks/{id}/retry"), json!({})).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("invalid_argument")),
        "{body}"
    );
    let (s, body) = g.post(&format!("/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    let (_, task) = g.get(&format!("/tasks/{id}")).await;
    assert_eq!(task["task"]["status"], "cancelled");
    let (s, body) = g.post(&format!("/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("task_closed")),
        "{body}"
    );
    let (s, _) = g
        .post(
            "/tasks/0190f0f0-0000-7000-8000-000000000000/cancel",
            json!({}),
        )
        .await;
    assert_eq!(s, 404);
    let (_, list) = g.get("/tasks?status=cancelled").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let items = json!({"items": [
        {"text": "a wonderful day", "answer": "positive"},
        {"text": "x", "type": "zero-shot", "labels": ["a", "b"], "answer": "b"},
    ]});
    let (s, body) = g.post("/gold", items).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["added"].as_u64(), body["total"].as_u64()),
        (Some(2), Some(2))
    );
    let bad = json!({"items": [{"text": "meh", "answer": "neutral"}]});
    let (s, body) = g.post("/gold", bad).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("invalid_argument")),
        "{body}"
    );
    let (s, body) = g.post_raw("/gold", "{not json".into()).await;
    assert_eq!(s, 400, "{body}");
    g.stop().await;
}
