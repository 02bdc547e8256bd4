//! The dashboard in a real browser: headless Chromium (driven through chromedriver's WebDriver
//! API) loads `/dashboard`, a task is added, and the page shows it finalized without a reload;
//! then a starved task with the reason (then cancelled), a generated one with its agreed
//! text, and a chat asked through the OpenAI-compatible API, turn by turn, with its answer; the
//! charts count them, and the event log shows a task's life and a worker's, across a restart.
//! The screenshot is kept in `target/tmp/dashboard.png`.

mod common;

use base64::Engine;
use common::Cluster;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: `make test` installs chromium and chromium-driver")
        })
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl Driver {
    fn start() -> Self {
        let port = test_support::free_port();
        let child = Command::new(find("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let d = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        common::wait_until("chromedriver", Duration::from_secs(20), || {
            d.http
                .get(format!("{}/status", d.base))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        d
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().expect("webdriver request");
        let status = r.status();
        let v: Value = r.json().expect("webdriver json");
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_shows_a_task_finalize_without_a_reload() {
    // Gold rides along in half the slots once there is any (the calibration check at the end).
    let mut c = Cluster::start(&[("AIMARKET_GOLD_RATE", "0.5")]);
    for w in ["alice", "bob", "carole"] {
        c.start_worker(w, &[]);
    }
    let smollm2 = test_support::smollm2_dir();
    // Generative tasks only: the sentiment votes stay the lexicon workers'.
    c.start_worker(
        "dave",
        &[
            "--model",
            "smollm2",
            "--model-dir",
            smollm2.to_str().expect("utf8 path"),
            "--capabilities",
            "generate",
        ],
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver::start();
    let session = driver.call(
        reqwest::Method::POST,
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display())],
            }
        }}})),
    );
    let id = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    let s = |path: &str| format!("/session/{id}{path}");
    let script = |js: &str| {
        driver.call(
            reqwest::Method::POST,
            &s("/execute/sync"),
            Some(json!({"script": js, "args": []})),
        )
    };

    driver.call(
        reqwest::Method::POST,
        &s("/url"),
        Some(json!({"url": format!("{}/dashboard", c.http)})),
    );
    script("window.__sameDocument = 'yes'; return true;");

    let http = reqwest::blocking::Client::new();
    // POST /tasks; the new task's id.
    let base = c.http.clone();
    let add = |task: Value| -> String {
        let r: Value = http
            .post(format!("{base}/tasks"))
            .json(&task)
            .send()
            .expect("add task")
            .json()
            .expect("json");
        r["task_id"].as_str().expect("task id").to_owned()
    };
    let task_id = add(json!({"text": "The dashboard is lovely and fast!"}));

    let probe = format!(
        "const row = document.querySelector('[data-task=\"{task_id}\"]'); \
         return row ? [row.dataset.status, row.textContent] : null;"
    );
    // Runs `probe` on the page until its first value is `want`; returns what it found.
    let until = |probe: &str, want: &str, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = script(probe);
            if found[0] == want {
                return found;
            }
            assert!(Instant::now() < deadline, "the page never {what}: {found}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let row = until(&probe, "finalized", "showed the task finalized");
    let text = row[1].as_str().expect("row text");
    assert!(
        text.contains("positive") && text.contains("alice"),
        "{text}"
    );
    assert_eq!(
        script("return window.__sameDocument || null;"),
        "yes",
        "the page reloaded"
    );
    let finalized =
        script("return document.querySelector('[data-key=\"finalized\"] .n').textContent;");
    assert_eq!(finalized, "1");

    // A zero-shot task none of the (lexicon) workers can do: starved, and the page says why.
    let starved_id = add(
        json!({"text": "The striker scored twice", "type": "zero-shot",
        "labels": ["sports", "politics"]}),
    );
    let probe = format!(
        "const row = document.querySelector('[data-task=\"{starved_id}\"]'); \
         const banner = document.querySelector('#alerts [data-starved=\"zero-shot\"]'); \
         return row && banner ? [row.dataset.starved, row.textContent, banner.textContent] : null;"
    );
    let marked = until(&probe, "yes", "marked the task starved");
    let row = marked[1].as_str().expect("row text");
    assert!(
        row.contains("starved")
            && row.contains("needs 3 more distinct workers; 0 live can do zero-shot"),
        "{row}"
    );
    let banner = marked[2].as_str().expect("banner text");
    assert!(
        banner.contains("1 zero-shot task is starved") && banner.contains("3 more needed"),
        "{banner}"
    );

    // Cancelled over HTTP: the row and the cards follow.
    let r = http
        .post(format!("{}/tasks/{starved_id}/cancel", c.http))
        .send()
        .expect("cancel");
    assert!(r.status().is_success(), "{:?}", r.text());
    let probe = format!(
        "const row = document.querySelector('[data-task=\"{starved_id}\"]'); \
         const n = document.querySelector('[data-key=\"cancelled\"] .n'); \
         return row && n ? [row.dataset.status, n.textContent] : null;"
    );
    let cancelled = until(&probe, "cancelled", "showed the task cancelled");
    assert_eq!(cancelled[1], "1", "{cancelled}");

    // A generated task, answered by the smollm2 worker: the row shows the agreed text.
    let generated_id = add(
        json!({"text": "Name a colour.", "type": "generate", "max_new_tokens": 8,
        "required_submissions": 1}),
    );
    let probe = format!(
        "const row = document.querySelector('[data-task=\"{generated_id}\"]'); \
         return row ? [row.dataset.status, row.textContent] : null;"
    );
    let row = until(&probe, "finalized", "showed the generated task finalized");
    let text = row[1].as_str().expect("row text");
    assert!(
        text.contains("8 tokens; 1 answer)") && text.contains("dave: \u{201c}"),
        "{text}"
    );

    // A chat through the OpenAI-compatible API: the row shows it turn by turn, and the answer.
    let reply: Value = http
        .post(format!("{}/v1/chat/completions", c.http))
        .json(
            &json!({"model": "smollm2", "max_tokens": 8, "aimarket": {"required": 1},
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Name a fruit."}]}),
        )
        .send()
        .expect("chat completion")
        .json()
        .expect("json");
    let chat_id = reply["aimarket"]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task id: {reply}"))
        .to_owned();
    let probe = format!(
        "const row = document.querySelector('[data-task=\"{chat_id}\"]'); \
         const chat = row && row.querySelector('[data-chat]'); \
         return row && chat ? [row.dataset.status, row.textContent, chat.dataset.chat] : null;"
    );
    let row = until(&probe, "finalized", "showed the chat finalized");
    let text = row[1].as_str().expect("row text");
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(row[2], "2", "two turns: {text}");
    assert!(
        text.contains("system: Be brief.") && text.contains("user: Name a fruit."),
        "{text}"
    );
    assert!(text.contains(content.trim()), "{text} lacks {content:?}");

    // The charts: the three finalized tasks in the hour, and the HTTP requests answered (the
    // page's own polls not counted).
    let probe = "const t = document.querySelector('[data-chart=\"tasks\"]'); \
                 const r = document.querySelector('[data-chart=\"requests\"]'); \
                 return t && r && t.dataset.total === '3' ? [t.dataset.total, r.dataset.total, \
                 t.textContent] : [t && t.dataset.total];";
    let charts = until(probe, "3", "charted the finalized tasks");
    let requests: u64 = charts[1]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(
        requests >= 6,
        "adds, cancel and chat were HTTP requests: {charts}"
    );
    assert!(
        charts[2]
            .as_str()
            .is_some_and(|t| t.contains("finalized / failed: 3")),
        "{charts}"
    );

    // The event log, filtered by the chat's task: its life, newest first, on the page.
    script(&format!(
        "const i = document.getElementById('log-task'); i.value = '{chat_id}'; \
         i.dispatchEvent(new Event('change')); return true;"
    ));
    let probe = format!(
        "const box = document.querySelector('#log [data-filter]'); \
         if (!box || box.dataset.filter !== '{chat_id}|') return [null]; \
         return ['shown', [...box.querySelectorAll('[data-event]')].map(r => r.dataset.event)];"
    );
    let log = until(&probe, "shown", "showed the chat's events");
    assert_eq!(
        log[1],
        json!(["task finalized", "answered", "leased", "task created"]),
        "{log}"
    );
    // By worker: dave's answers and its joining.
    let by_dave: Value = http
        .get(format!("{}/dashboard/events?worker=dave", c.http))
        .send()
        .expect("events")
        .json()
        .expect("json");
    let kinds: Vec<&str> = by_dave
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"answered") && kinds.last() == Some(&"worker joined"),
        "{kinds:?}"
    );
    // Durable: a restarted coordinator tells the same story.
    c.kill_coordinator();
    c.start_coordinator();
    let again: Value = http
        .get(format!("{}/dashboard/events?task={chat_id}", c.http))
        .send()
        .expect("events")
        .json()
        .expect("json");
    let kinds: Vec<&str> = again
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["task finalized", "answered", "leased", "task created"]
    );
    let (status, bad) = {
        let r = http
            .get(format!("{}/dashboard/events?limit=-1", c.http))
            .send()
            .expect("events");
        (r.status().as_u16(), r.json::<Value>().expect("json"))
    };
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &json!("malformed_request"))
    );
    // Gold, and posterior tasks it rides along with: the lexicon's calibration on gold is
    // drawn (a reliability diagram), and a posterior task shows its posterior and weights.
    let gold = c.dir.path().join("gold.tsv");
    let items: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "g{i}\t{}\tgold sentence {i} is {}",
                if i % 2 == 0 { 2.5 } else { -2.5 },
                if i % 2 == 0 {
                    "wonderful and great"
                } else {
                    "awful and terrible"
                }
            )
        })
        .collect();
    std::fs::write(&gold, items.join("\n")).expect("gold file");
    let out = c.cli(&["gold", "add", "--file", gold.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut posterior_id = String::new();
    for i in 0..10 {
        posterior_id = add(json!({"text": format!("A great, happy day number {i}"),
            "policy": "posterior", "threshold": 0.75}));
    }
    let probe = "const svg = document.querySelector('#models tr[data-model=\"lexicon/vader\"] svg.reliability'); \
         return svg ? [String(svg.querySelectorAll('circle').length), svg.outerHTML] : null;";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = script(probe);
        if found.as_array().is_some_and(|f| f[0] != "0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reliability diagram for the lexicon: {found}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let probe = format!(
        "const row = document.querySelector('[data-task=\"{posterior_id}\"]'); \
         return row ? [row.dataset.status, row.textContent] : null;"
    );
    let row = until(&probe, "finalized", "showed the posterior task finalized");
    let text = row[1].as_str().expect("row text");
    assert!(
        text.contains("(posterior ") && text.contains("weight "),
        "{text}"
    );

    let png = driver.call(reqwest::Method::GET, &s("/screenshot"), None);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64"))
        .expect("png");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, bytes).expect("save screenshot");
    eprintln!("screenshot: {}", out.display());
    driver.call(reqwest::Method::DELETE, &s(""), None);
}
