//! A cluster of real processes for end-to-end tests: a nats-server, an `aimarket coordinator`
//! on a SQLite file in a temp dir, and `aimarket worker`s, each logging to a file there.

#![allow(dead_code)] // each test binary uses a different part

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use test_support::NatsServer;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_aimarket");

pub(crate) struct Cluster {
    pub nats: NatsServer,
    /// The coordinator's HTTP gateway.
    pub http: String,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    coordinator: Option<Child>,
    coordinator_runs: usize,
    workers: BTreeMap<String, Child>,
}

impl Cluster {
    /// nats-server plus a coordinator with these env vars (tunables), ready to answer.
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        let http = format!("127.0.0.1:{}", test_support::free_port());
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        env.push(("AIMARKET_HTTP".into(), http.clone()));
        let mut c = Self {
            nats: NatsServer::start(),
            http: format!("http://{http}"),
            dir: tempfile::tempdir().expect("temp dir"),
            env,
            coordinator: None,
            coordinator_runs: 0,
            workers: BTreeMap::new(),
        };
        c.start_coordinator();
        c
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.path().join("coordinator.db")
    }

    fn command(&self, log: &str) -> Command {
        let mut cmd = logged(self.dir.path(), log, &self.nats.url());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub(crate) fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "a coordinator is running");
        self.coordinator_runs += 1;
        let log = format!("coordinator-{}.log", self.coordinator_runs);
        let child = self
            .command(&log)
            .arg("coordinator")
            .arg("--db")
            .arg(self.db_path())
            .spawn()
            .expect("spawn coordinator");
        self.coordinator = Some(child);
        wait_until("the coordinator to answer", Duration::from_secs(20), || {
            self.cli(&["stats"]).status.success()
        });
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill_coordinator(&mut self) {
        let mut child = self.coordinator.take().expect("a coordinator");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    pub(crate) fn coordinator_logs(&self) -> String {
        (1..=self.coordinator_runs)
            .map(|i| read(self.dir.path().join(format!("coordinator-{i}.log"))))
            .collect()
    }

    pub(crate) fn start_worker(&mut self, id: &str, extra: &[&str]) {
        let child = self
            .command(&format!("worker-{id}.log"))
            .args(["worker", "--id", id, "--poll-ms", "200"])
            .args(extra)
            .spawn()
            .expect("spawn worker");
        self.workers.insert(id.to_owned(), child);
    }

    pub(crate) fn worker_pid(&self, id: &str) -> u32 {
        self.workers[id].id()
    }

    pub(crate) fn signal_worker(&self, id: &str, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.worker_pid(id).to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill -{signal} {id}");
    }

    pub(crate) fn kill_worker(&mut self, id: &str) {
        let mut child = self.workers.remove(id).expect("worker");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait for the exit.
    pub(crate) fn stop_worker(&mut self, id: &str) -> std::process::ExitStatus {
        self.signal_worker(id, "TERM");
        let mut child = self.workers.remove(id).expect("worker");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "worker {id} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a worker to exit on its own; its exit status.
    pub(crate) fn wait_worker(&mut self, id: &str) -> std::process::ExitStatus {
        let mut child = self.workers.remove(id).expect("worker");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "worker {id} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn worker_log(&self, id: &str) -> String {
        read(self.dir.path().join(format!("worker-{id}.log")))
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .env("NATS_URL", self.nats.url())
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()
            .expect("run aimarket")
    }

    /// Runs a read command with `--json` and parses its output; panics on failure.
    pub(crate) fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "aimarket {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "aimarket {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Starts a smollm2 worker (the fetched model) with extra arguments (its kernel, its
    /// threads, its verification settings).
    pub(crate) fn start_smollm2(&mut self, id: &str, extra: &[&str]) {
        let dir = test_support::smollm2_dir();
        let mut args = vec![
            "--model",
            "smollm2",
            "--model-dir",
            dir.to_str().expect("utf8 path"),
        ];
        args.extend_from_slice(extra);
        self.start_worker(id, &args);
    }

    /// The token ids `aimarket infer --model smollm2 ARGS` generates (the fetched model), as a
    /// worker's answer can be checked by hand.
    pub(crate) fn smollm2_ids(&self, args: &[&str]) -> Vec<u32> {
        let dir = test_support::smollm2_dir();
        let mut all = vec![
            "infer",
            "--model",
            "smollm2",
            "--model-dir",
            dir.to_str().expect("utf8 path"),
        ];
        all.extend_from_slice(args);
        let rows: serde_json::Value = self.json(&all);
        serde_json::from_value(rows[0]["token_ids"].clone()).expect("token ids")
    }

    /// A read-only view of the store, as a second process would have.
    pub(crate) fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        conn
    }

    pub(crate) fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }
}

/// An `aimarket` command on NATS `nats`, logging (worker details included) to `log` in `dir`,
/// appended: a restarted process keeps its predecessor's log.
pub(crate) fn logged(dir: &std::path::Path, log: &str, nats: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("NATS_URL", nats)
        .env("RUST_LOG", "info,worker=debug,async_nats=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(log))
                .expect("log file"),
        );
    cmd
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tails(self.dir.path(), 15);
        }
        for child in self.workers.values_mut().chain(self.coordinator.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_default()
}

/// Leaves the evidence of a failed test: the last `lines` lines of every log in `dir` (which
/// stays), on stderr.
pub(crate) fn show_log_tails(dir: &std::path::Path, lines: usize) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = read(path.clone());
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            eprintln!("==> {} (last lines)", path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `check` until true; panics naming `what` after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `n` reviews, one a line, to `path`: alternating clearly positive and clearly negative,
/// so honest workers agree; `tag` keeps the texts of several files apart.
pub(crate) fn write_reviews(path: &std::path::Path, n: usize, tag: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("tasks file");
    for i in 0..n {
        let mood = if i % 2 == 0 {
            "wonderful, I love it"
        } else {
            "awful, I hate it"
        };
        writeln!(f, "review {tag}{i}: {mood}").expect("write");
    }
}

/// Sends `sig` (`KILL`, `STOP`, `CONT`...) to process `pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Adds `n` sentiment tasks through `task add --file` (see [`write_reviews`]).
pub(crate) fn add_reviews(c: &Cluster, n: usize) {
    let path = c.dir.path().join(format!("tasks-{n}.txt"));
    write_reviews(&path, n, "");
    let out = c.cli(&["task", "add", "--file", path.to_str().expect("utf8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The invariants that must hold once every task is final, whatever crashed on the way:
/// every task finalized once with exactly its required votes from distinct workers, every
/// acknowledged submission stored, points equal to agreeing submissions. Returns how many
/// acknowledgements the worker logs hold.
pub(crate) fn check_ledger(c: &Cluster, tasks: i64, workers: &[&str]) -> usize {
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'"),
        tasks
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE submissions != required OR active_leases != 0"),
        0,
        "a task with a wrong vote count or a live lease"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission"),
        c.count("SELECT SUM(required) FROM task"),
        "submissions do not add up to what the tasks required"
    );
    assert_eq!(
        c.count(
            "SELECT COUNT(*) FROM (SELECT task_id, worker_id FROM submission GROUP BY 1, 2 HAVING COUNT(*) > 1)"
        ),
        0,
        "a worker voted twice on a task"
    );
    assert_eq!(
        c.count("SELECT COALESCE(SUM(points), 0) FROM worker_score"),
        c.count("SELECT COUNT(*) FROM submission WHERE agreed"),
        "points differ from agreeing submissions"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE agreed IS NULL"),
        0
    );
    let db = c.db();
    let mut stmt = db
        .prepare("SELECT COUNT(*) FROM submission WHERE task_id = ?1 AND lease_id = ?2")
        .expect("prepare");
    let mut acked = 0;
    for w in workers {
        for (task, lease) in acknowledged(&c.worker_log(w)) {
            let n: i64 = stmt
                .query_row([&task, &lease], |r| r.get(0))
                .expect("query");
            assert_eq!(
                n, 1,
                "worker {w}: acknowledged submission for {task} on {lease} is missing"
            );
            acked += 1;
        }
    }
    assert!(acked > 0, "no acknowledgements in the worker logs");
    acked
}

/// Every (task id, lease id) a worker's log says the coordinator acknowledged.
pub(crate) fn acknowledged(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("submission acknowledged"))
        .map(|l| (field(l, "task_id"), field(l, "lease_id")))
        .collect()
}

fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[start..]
        .split_whitespace()
        .next()
        .expect("value")
        .to_owned()
}

/// Movie-review sentences from the VADER study with a non-zero rating, every `step`-th, the
/// first `n` of them.
pub(crate) fn movie_sentences(n: usize, step: usize) -> Vec<String> {
    let path = test_support::sentences_dir().join("movieReviewSnippets_GroundTruth.txt");
    std::fs::read_to_string(&path)
        .expect("ground truth readable")
        .lines()
        .filter_map(|l| {
            let mut cols = l.splitn(3, '\t');
            let (_, rating, text) = (cols.next()?, cols.next()?, cols.next()?);
            (rating.trim().parse::<f64>().ok()? != 0.0).then(|| text.to_owned())
        })
        .step_by(step)
        .take(n)
        .collect()
}
