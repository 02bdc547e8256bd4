//! Several coordinators at once: two `aimarket coordinator`s on different nodes of a three-node
//! NATS cluster, over one PostgreSQL, with five workers spread over the nodes. While 2,000
//! tasks needing three votes each are worked on (topped up before each fault so work is in
//! flight), one coordinator is killed (SIGKILL) and restarted, the other frozen (SIGSTOP) past
//! PostgreSQL's idle-in-transaction timeout and resumed, PostgreSQL itself crashed and
//! restarted, and the NATS node one coordinator and two workers use killed and restarted.
//!
//! Then the ledger: every task finalized exactly once (no task id in two coordinators'
//! "finalized" logs), with exactly its votes from distinct workers; every submission a worker
//! saw acknowledged is stored; points equal agreeing submissions; no lease left live; and both
//! coordinators served work.

mod common;

use common::{acknowledged, signal, wait_until, write_reviews, BIN};
use protocol::messages::CoordinatorStatus;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use test_support::{NatsCluster, Postgres};

const WORKERS: [&str; 5] = ["w1", "w2", "w3", "w4", "w5"];
/// `--pg-idle-seconds` of both coordinators.
const PG_IDLE_SECONDS: u64 = 2;

struct Scale {
    pg: Postgres,
    nats: NatsCluster,
    dir: tempfile::TempDir,
    coordinators: Vec<Option<Child>>,
    runs: Vec<usize>,
    workers: BTreeMap<&'static str, Child>,
}

impl Scale {
    fn command(&self, log: &str, nats: String) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("NATS_URL", nats)
            .env("RUST_LOG", "info,worker=debug,async_nats=warn")
            .env("AIMARKET_NATS_PING_SECONDS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(log))
                    .expect("log file"),
            );
        cmd
    }

    /// Coordinator `i` (0 or 1), connected to NATS node `i` first.
    fn start_coordinator(&mut self, i: usize) {
        self.runs[i] += 1;
        let http = format!("127.0.0.1:{}", test_support::free_port());
        let child = self
            .command(&format!("coordinator-{i}.log"), self.nats.urls_from(i))
            .args(["coordinator", "--db", &self.pg.url(), "--http", &http])
            .args(["--pg-idle-seconds", &PG_IDLE_SECONDS.to_string()])
            .args(["--heartbeat-ttl-seconds", "6", "--lease-seconds", "8"])
            .args(["--requeue-sweep-seconds", "1", "--gold-rate", "0"])
            .spawn()
            .expect("spawn coordinator");
        self.coordinators[i] = Some(child);
    }

    fn coordinator_pid(&self, i: usize) -> u32 {
        self.coordinators[i].as_ref().expect("running").id()
    }

    fn kill_coordinator(&mut self, i: usize) {
        let mut child = self.coordinators[i].take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    fn start_worker(&mut self, i: usize) {
        let id = WORKERS[i];
        let child = self
            .command(&format!("worker-{id}.log"), self.nats.urls_from(i % 3))
            .args(["worker", "--id", id, "--poll-ms", "200", "--batch", "8"])
            .args(["--extra-latency-ms", "20"])
            .spawn()
            .expect("spawn worker");
        self.workers.insert(id, child);
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .env("NATS_URL", self.nats.urls_from(2))
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("run aimarket")
    }

    fn add_reviews(&self, n: usize, round: usize) {
        let path = self.dir.path().join(format!("tasks-{round}.txt"));
        write_reviews(&path, n, &format!("{round}-"));
        let out = self.cli(&["task", "add", "--file", path.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.pg.url(), postgres::NoTls).expect("connect")
    }

    fn count(&self, sql: &str) -> i64 {
        self.try_count(sql).expect(sql)
    }

    /// `None` while PostgreSQL is down.
    fn try_count(&self, sql: &str) -> Option<i64> {
        let mut db = postgres::Client::connect(&self.pg.url(), postgres::NoTls).ok()?;
        db.query_one(sql, &[]).ok().map(|r| r.get(0))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Scale {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path: PathBuf = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(12).collect();
                    eprintln!("==> {} (last lines)", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        for child in self
            .workers
            .values_mut()
            .chain(self.coordinators.iter_mut().flatten())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn two_coordinators_share_one_postgres_through_every_fault() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut s = Scale {
        pg: Postgres::start(),
        nats: rt.block_on(NatsCluster::start()),
        dir: tempfile::tempdir().expect("temp dir"),
        coordinators: vec![None, None],
        runs: vec![0, 0],
        workers: BTreeMap::new(),
    };
    s.start_coordinator(0);
    s.start_coordinator(1);
    wait_until(
        "both coordinators to answer",
        Duration::from_secs(30),
        || {
            let out = s.cli(&["coordinators", "--json"]);
            out.status.success()
                && serde_json::from_slice::<Vec<CoordinatorStatus>>(&out.stdout)
                    .is_ok_and(|v| v.len() == 2)
        },
    );
    for i in 0..WORKERS.len() {
        s.start_worker(i);
    }
    let mut tasks = 2000;
    let mut rounds = 1;
    s.add_reviews(tasks, 0);
    let started = Instant::now();
    let done = |s: &Scale| {
        s.try_count("SELECT COUNT(*) FROM task WHERE status = 'finalized'")
            .unwrap_or(-1)
    };
    let mut open_at_faults = Vec::new();
    let mut top_up = |s: &Scale, tasks: &mut usize| {
        let open = s.count("SELECT COUNT(*) FROM task WHERE status IN ('queued', 'assigned')");
        if open < 300 {
            s.add_reviews(400, rounds);
            rounds += 1;
            *tasks += 400;
        }
        open_at_faults.push(open.max(300));
    };
    let say = |what: &str, s: &Scale| {
        println!(
            "{:>5.1}s {what}, {} finalized",
            started.elapsed().as_secs_f64(),
            done(s)
        );
    };

    std::thread::sleep(Duration::from_millis(1500));
    top_up(&s, &mut tasks);
    s.kill_coordinator(0);
    say("coordinator 0 killed", &s);
    std::thread::sleep(Duration::from_secs(2));
    s.start_coordinator(0);
    say("coordinator 0 restarted", &s);

    std::thread::sleep(Duration::from_secs(1));
    top_up(&s, &mut tasks);
    let frozen = s.coordinator_pid(1);
    signal(frozen, "STOP");
    say("coordinator 1 frozen", &s);
    std::thread::sleep(Duration::from_secs(PG_IDLE_SECONDS + 2));
    signal(frozen, "CONT");
    say("coordinator 1 resumed", &s);

    std::thread::sleep(Duration::from_secs(1));
    top_up(&s, &mut tasks);
    s.pg.crash();
    say("postgres crashed", &s);
    std::thread::sleep(Duration::from_secs(2));
    s.pg.restart();
    say("postgres restarted", &s);

    std::thread::sleep(Duration::from_secs(1));
    top_up(&s, &mut tasks);
    s.nats.nodes[0].crash();
    say("nats node 0 killed", &s);
    std::thread::sleep(Duration::from_secs(2));
    s.nats.nodes[0].restart();
    rt.block_on(s.nats.wait_routed());
    say("nats node 0 back", &s);

    wait_until("every task to finalize", Duration::from_secs(300), || {
        done(&s) == tasks as i64
    });
    say("all finalized", &s);
    println!("open tasks at each fault: {open_at_faults:?}");

    // The ledger.
    assert_eq!(
        s.count("SELECT COUNT(*) FROM task WHERE submissions != required OR active_leases != 0"),
        0,
        "a task with a wrong vote count or a live lease"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM submission"),
        3 * tasks as i64,
        "submissions do not add up to what the tasks required"
    );
    assert_eq!(
        s.count(
            "SELECT COUNT(*) FROM (SELECT task_id, worker_id FROM submission GROUP BY 1, 2 HAVING COUNT(*) > 1) AS twice"
        ),
        0,
        "a worker voted twice on a task"
    );
    assert_eq!(
        s.count(
            "SELECT CAST((SELECT COALESCE(SUM(points), 0) FROM worker_score)
                       + (SELECT COALESCE(SUM(points), 0) FROM score_delta) AS BIGINT)"
        ),
        s.count("SELECT COUNT(*) FROM submission WHERE agreed = 1"),
        "points differ from agreeing submissions"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM lease WHERE state = 'active'"),
        0
    );
    let mut db = s.db();
    let mut acked = 0;
    for w in WORKERS {
        for (task, lease) in acknowledged(&s.log(&format!("worker-{w}.log"))) {
            let n: i64 = db
                .query_one(
                    "SELECT COUNT(*) FROM submission WHERE task_id = $1 AND lease_id = $2",
                    &[&task, &lease],
                )
                .expect("query")
                .get(0);
            assert_eq!(n, 1, "{w}: acknowledged {task} on {lease} is missing");
            acked += 1;
        }
    }
    // Finalized exactly once: no task announced finalized by two coordinators (or twice by one).
    let mut finalized: HashMap<String, usize> = HashMap::new();
    for i in 0..2 {
        for line in s.log(&format!("coordinator-{i}.log")).lines() {
            if line.contains("task finalized") {
                let id = line
                    .split(" task_id=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .expect("task id")
                    .to_owned();
                *finalized.entry(id).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = finalized.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "finalized more than once: {twice:?}");
    // Both coordinators served: each finalized tasks since it last started.
    let found: Vec<CoordinatorStatus> =
        serde_json::from_slice(&s.cli(&["coordinators", "--json"]).stdout).expect("status");
    assert_eq!(found.len(), 2, "{found:?}");
    for c in &found {
        assert!(c.store.starts_with("postgres "), "{c:?}");
        assert!(
            c.submissions > 0,
            "a coordinator served no submission: {c:?}"
        );
    }
    let served: u64 = found.iter().map(|c| c.tasks_finalized).sum();
    println!(
        "{tasks} tasks x 3 votes finalized in {:.1}s through a coordinator kill, a coordinator \
         freeze, a PostgreSQL crash and a NATS node kill; {acked} acknowledged submissions all \
         stored; {} finalizations logged, none twice; the two coordinators finalized {} and {} \
         since their last start ({served} in all)",
        started.elapsed().as_secs_f64(),
        finalized.len(),
        found[0].tasks_finalized,
        found[1].tasks_finalized,
    );
}
