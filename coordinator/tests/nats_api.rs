//! The coordinator's NATS API against a real nats-server and a real SQLite file.

mod common;

use common::Running;
use coordinator::Settings;
use protocol::messages::*;
use protocol::{reply, subject, ErrorCode, LeaseId, TaskId, TaskStatus, TaskType, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use test_support::wait_for;

const P: &str = "aimarket";

struct Harness {
    run: Running,
}

impl Harness {
    async fn start(settings: Settings, sweep: Duration) -> Self {
        Self {
            run: Running::start(|c| {
                c.settings = settings;
                c.sweep_interval = sweep;
                c.http = None;
            })
            .await,
        }
    }

    /// Stops the coordinator and starts a fresh one on the same database and server.
    async fn restart(self) -> Self {
        let (nats, dir) = self.run.stop().await;
        Self {
            run: Running::start_on(nats, dir, |c| c.http = None).await,
        }
    }

    async fn raw(&self, subject: &str, body: &[u8]) -> Result<Vec<u8>, async_nats::RequestError> {
        let msg = self
            .run
            .client
            .request(subject.to_owned(), body.to_vec().into())
            .await?;
        Ok(msg.payload.to_vec())
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        req: &Req,
    ) -> Result<Resp, protocol::ApiError> {
        let bytes = self
            .raw(subject, &encode(req))
            .await
            .expect("coordinator answers");
        reply::decode(&bytes).expect("a reply envelope")
    }

    async fn add(&self, task: NewTask) -> TaskId {
        let r: TaskAddReply = self
            .call(
                &subject::api(P, ApiOp::TaskAdd),
                &TaskAddRequest {
                    batch_id: None,
                    tasks: vec![task],
                },
            )
            .await
            .expect("task add");
        r.task_ids[0]
    }

    async fn lease(&self, worker: &str, caps: &[&str], max: u32) -> Vec<Lease> {
        let r: LeaseReply = self
            .call(
                &subject::lease(P),
                &LeaseRequest {
                    worker_id: WorkerId::new(worker).expect("id"),
                    capabilities: caps
                        .iter()
                        .map(|c| TaskType::new(*c).expect("type"))
                        .collect(),
                    max_tasks: max,
                    task_id: None,
                    model: None,
                    model_hash: None,
                },
            )
            .await
            .expect("lease");
        r.leases
    }

    async fn submit(
        &self,
        lease: &Lease,
        worker: &str,
        label: &str,
    ) -> Result<SubmitReply, protocol::ApiError> {
        self.call(
            &subject::submit(P, &lease.task_id),
            &SubmitRequest {
                input_tokens: None,
                lease_id: lease.lease_id,
                worker_id: WorkerId::new(worker).expect("id"),
                label: label.into(),
                embedding: None,
                confidence: 0.9,
                model: None,
                generation: None,
                verification: None,
                model_hash: None,
            },
        )
        .await
    }

    async fn task(&self, id: TaskId) -> TaskDetail {
        self.call(
            &subject::api(P, ApiOp::TaskGet),
            &TaskGetRequest { task_id: id },
        )
        .await
        .expect("task get")
    }

    fn dump(&self) -> String {
        self.run.dump()
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

fn quick() -> Settings {
    Settings {
        lease_ms: 1_000,
        heartbeat_ttl_ms: 1_000,
        max_attempts_default: 5,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_leases_finalize_without_waiting_for_expiry() {
    // Leases last ten minutes: only parallel leases can finalize within the test's timeout.
    let settings = Settings {
        lease_ms: 600_000,
        heartbeat_ttl_ms: 600_000,
        ..Settings::default()
    };
    let h = Harness::start(settings, Duration::from_secs(600)).await;
    let task = h.add(NewTask::text("I love it")).await;
    let mut events = h
        .run
        .client
        .subscribe(subject::task_event(P, &task))
        .await
        .expect("subscribe");
    let (a, b, c) = tokio::join!(
        h.lease("alice", &["sentiment"], 1),
        h.lease("bob", &["sentiment"], 1),
        h.lease("carole", &["sentiment"], 1)
    );
    for l in [&a, &b, &c] {
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].task_id, task);
    }
    assert!(
        h.lease("dave", &["sentiment"], 1).await.is_empty(),
        "a fourth lease"
    );
    assert!(
        !h.submit(&a[0], "alice", "positive")
            .await
            .expect("a")
            .finalized
    );
    assert!(
        !h.submit(&b[0], "bob", "positive")
            .await
            .expect("b")
            .finalized
    );
    let last = h.submit(&c[0], "carole", "negative").await.expect("c");
    assert!(last.finalized);
    assert_eq!(last.final_label.as_deref(), Some("positive"));
    let event = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut events),
    )
    .await
    .expect("event in time")
    .expect("event");
    let event: TaskEvent = decode(&event.payload).expect("event body");
    assert_eq!(event.status, TaskStatus::Finalized);
    assert_eq!(event.final_label.as_deref(), Some("positive"));
    let lb: LeaderboardReply = h
        .call(&subject::api(P, ApiOp::Leaderboard), &Empty {})
        .await
        .expect("leaderboard");
    let points: Vec<_> = lb
        .entries
        .iter()
        .map(|e| (e.worker_id.as_str(), e.points))
        .collect();
    assert_eq!(
        points,
        vec![("alice", 1), ("bob", 1), ("carole", 0), ("dave", 0)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_routing() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    let odd = h
        .add(NewTask {
            task_type: Some(TaskType::embedding()),
            ..NewTask::text("hola")
        })
        .await;
    let plain = h.add(NewTask::text("fine")).await;
    let got = h.lease("alice", &["sentiment"], 10).await;
    assert_eq!(
        got.iter().map(|l| l.task_id).collect::<Vec<_>>(),
        vec![plain]
    );
    assert_eq!(h.task(odd).await.task.status, TaskStatus::Queued);
    let got = h.lease("polyglot", &["embedding"], 10).await;
    assert_eq!(got.iter().map(|l| l.task_id).collect::<Vec<_>>(), vec![odd]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_workers_lose_leases_and_exhaust_attempts() {
    let h = Harness::start(quick(), Duration::from_millis(200)).await;
    let healthy = h.add(NewTask::text("good")).await;
    // A worker takes the task and dies: no heartbeat, no submission.
    assert_eq!(h.lease("ghost", &["sentiment"], 1).await.len(), 1);
    wait_for(
        "the ghost's lease to be freed",
        Duration::from_secs(10),
        || async {
            let t = h.task(healthy).await.task;
            (t.attempts == 1 && t.active_leases == 0).then_some(())
        },
    )
    .await;
    for w in ["a", "b", "c"] {
        let l = h.lease(w, &["sentiment"], 1).await;
        h.submit(&l[0], w, "positive").await.expect("submit");
    }
    assert_eq!(h.task(healthy).await.task.status, TaskStatus::Finalized);

    // A task whose workers keep dying fails after max_attempts, with the reason.
    let doomed = h
        .add(NewTask {
            max_attempts: Some(2),
            ..NewTask::text("cursed")
        })
        .await;
    for w in ["ghost1", "ghost2"] {
        wait_for(
            "a lease on the doomed task",
            Duration::from_secs(10),
            || async { (!h.lease(w, &["sentiment"], 1).await.is_empty()).then_some(()) },
        )
        .await;
    }
    let t = wait_for(
        "the doomed task to fail",
        Duration::from_secs(10),
        || async {
            let t = h.task(doomed).await.task;
            (t.status == TaskStatus::Failed).then_some(t)
        },
    )
    .await;
    assert_eq!(t.attempts, 2);
    assert!(t.error_message.expect("message").contains("2 attempts"));
    let workers: WorkersReply = h
        .call(&subject::api(P, ApiOp::Workers), &Empty {})
        .await
        .expect("workers");
    let ghost = workers
        .workers
        .iter()
        .find(|w| w.worker_id.as_str() == "ghost")
        .expect("ghost");
    assert_eq!(ghost.status, protocol::WorkerStatus::Stale);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_subject_is_refused_and_changes_nothing() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    let task = h.add(NewTask::text("something")).await;
    let lease = h.lease("alice", &["sentiment"], 1).await.remove(0);
    h.submit(&lease, "alice", "positive")
        .await
        .expect("first submission");
    let before = h.dump();

    let unknown = TaskId::new();
    let too_big = "x".repeat(protocol::limits::DEFAULT_MAX_TEXT_BYTES + 1);
    let add = |task: serde_json::Value| serde_json::json!({ "tasks": [task] }).to_string();
    let submit_body = |lease: LeaseId, worker: &str, label: &str, confidence: f64| {
        serde_json::json!({"lease_id": lease, "worker_id": worker, "label": label, "confidence": confidence}).to_string()
    };
    let cases: Vec<(String, String, ErrorCode)> = vec![
        (
            subject::lease(P),
            "not json".into(),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::lease(P),
            r#"{"worker_id":"a.b","capabilities":["sentiment"]}"#.into(),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::lease(P),
            r#"{"worker_id":"bob","capabilities":[]}"#.into(),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::lease(P),
            r#"{"worker_id":"bob","capabilities":["sentiment"],"max_tasks":0}"#.into(),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::lease_release(P),
            "[1,2]".into(),
            ErrorCode::MalformedRequest,
        ),
        (
            format!("{P}.heartbeat.bob"),
            "{".into(),
            ErrorCode::MalformedRequest,
        ),
        (
            format!("{P}.heartbeat.bob"),
            r#"{"worker_id":"alice","capabilities":["sentiment"]}"#.into(),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::submit(P, &task),
            "{}".into(),
            ErrorCode::MalformedRequest,
        ),
        (
            format!("{P}.submit.not-a-uuid"),
            submit_body(lease.lease_id, "alice", "positive", 0.5),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::submit(P, &unknown),
            submit_body(lease.lease_id, "alice", "positive", 0.5),
            ErrorCode::NotFound,
        ),
        (
            subject::submit(P, &task),
            submit_body(LeaseId::new(), "bob", "positive", 0.5),
            ErrorCode::NoLease,
        ),
        (
            subject::submit(P, &task),
            submit_body(lease.lease_id, "alice", "negative", 0.5),
            ErrorCode::DuplicateSubmission,
        ),
        (
            subject::submit(P, &task),
            submit_body(lease.lease_id, "mallory", "negative", 0.5),
            ErrorCode::LeaseMismatch,
        ),
        (
            subject::submit(P, &task),
            submit_body(lease.lease_id, "bob", "", 0.5),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::submit(P, &task),
            submit_body(lease.lease_id, "bob", "positive", 7.0),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            "nope".into(),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": ""})),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": too_big})),
            ErrorCode::TextTooLarge,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "required_submissions": 0})),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "required_submissions": 101})),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "colour": "red"})),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            r#"{"tasks":[]}"#.into(),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "type": "generate", "model": "gpt-9"})),
            ErrorCode::UnknownModel,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "type": "translation",
                                   "source_lang": "en", "target_lang": "ja"})),
            ErrorCode::UnsupportedSpec,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "type": "summarization", "max_new_tokens": 0})),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskAdd),
            add(serde_json::json!({"text": "x", "type": "sentiment", "source_lang": "en"})),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::TaskGet),
            serde_json::json!({"task_id": unknown}).to_string(),
            ErrorCode::NotFound,
        ),
        (
            subject::api(P, ApiOp::TaskGet),
            r#"{"task_id":"zzz"}"#.into(),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::api(P, ApiOp::TaskList),
            r#"{"status":"done"}"#.into(),
            ErrorCode::MalformedRequest,
        ),
        (
            subject::api(P, ApiOp::TaskList),
            r#"{"limit":0}"#.into(),
            ErrorCode::InvalidArgument,
        ),
        (
            subject::api(P, ApiOp::OpsReset),
            "{}".into(),
            ErrorCode::InvalidArgument,
        ),
        (
            format!("{P}.api.nope"),
            "{}".into(),
            ErrorCode::UnknownOperation,
        ),
    ];
    for (subject, body, code) in cases {
        let bytes = h.raw(&subject, body.as_bytes()).await.expect("a reply");
        let got = reply::decode::<serde_json::Value>(&bytes).expect("an envelope");
        let err = got.expect_err(&format!("{subject} accepted {body:.80}"));
        assert_eq!(err.code, code, "{subject} {body:.80}: {}", err.message);
        assert!(!err.message.is_empty());
    }
    assert_eq!(h.dump(), before, "a refused request changed the store");
    // And it keeps serving.
    let stats: StatsReply = h
        .call(&subject::api(P, ApiOp::Stats), &Empty {})
        .await
        .expect("stats");
    assert_eq!((stats.tasks_total, stats.submissions), (1, 1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    let task = h.add(NewTask::text("keep me")).await;
    let lease = h.lease("alice", &["sentiment"], 1).await.remove(0);
    h.submit(&lease, "alice", "positive").await.expect("submit");
    let before = h.task(task).await;
    let h = h.restart().await;
    let after = h.task(task).await;
    assert_eq!(after, before);
    // The resend of an acknowledged submission is recognised after the restart.
    let again = h.submit(&lease, "alice", "positive").await.expect("resend");
    assert!(again.duplicate);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_one_self_contained_database_file() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    let task = h.add(NewTask::text("keep me")).await;
    let before = h.task(task).await;
    let (nats, dir) = h.run.stop().await;
    let db = dir.path().join("coordinator.db");
    let wal = dir.path().join("coordinator.db-wal");
    assert!(!wal.exists(), "the WAL is left after a clean stop");
    // The file alone holds everything: read it where the WAL could not have helped.
    let copy = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&db, copy.path().join("coordinator.db")).expect("copy");
    let h = Harness {
        run: Running::start_on(nats, copy, |c| c.http = None).await,
    };
    assert_eq!(h.task(task).await, before);
    h.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_worker_loses_and_resending_earns_one_vote() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    // Ten tasks whose true label is known: half positive, half negative.
    let mut truth = std::collections::HashMap::new();
    for i in 0..10 {
        let label = if i % 2 == 0 { "positive" } else { "negative" };
        truth.insert(h.add(NewTask::text(format!("{label} {i}"))).await, label);
    }
    // Two honest workers answer the truth; the liar always says "positive" and resends each
    // of its answers twenty times.
    for _ in 0..10 {
        for w in ["honest1", "honest2", "liar"] {
            let leases = h.lease(w, &["sentiment"], 1).await;
            let Some(l) = leases.first() else { continue };
            let label = if w == "liar" {
                "positive"
            } else {
                truth[&l.task_id]
            };
            let first = h.submit(l, w, label).await.expect("submit");
            assert!(first.accepted && !first.duplicate);
            if w == "liar" {
                for _ in 0..20 {
                    let again = h.submit(l, w, label).await.expect("resend");
                    assert!(again.duplicate, "a resend counted as new");
                }
            }
        }
    }
    let lb: LeaderboardReply = h
        .call(&subject::api(P, ApiOp::Leaderboard), &Empty {})
        .await
        .expect("leaderboard");
    let points: std::collections::HashMap<_, _> = lb
        .entries
        .iter()
        .map(|e| (e.worker_id.as_str().to_owned(), (e.points, e.submissions)))
        .collect();
    assert_eq!(points["honest1"], (10, 10));
    assert_eq!(points["honest2"], (10, 10));
    assert_eq!(
        points["liar"],
        (5, 10),
        "the liar: one vote per task however often it resends"
    );
    for (task, label) in truth {
        let t = h.task(task).await.task;
        assert_eq!(
            t.final_label.as_deref(),
            Some(label),
            "the liar swayed a vote"
        );
        assert_eq!(t.submissions, 3);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_for_nats_says_so() {
    let h = Harness::start(Settings::default(), Duration::from_secs(600)).await;
    // Twenty texts of 60 KB: a list of them is over the test server's 1 MB max_payload.
    for i in 0..20 {
        h.add(NewTask::text(format!("{i} {}", "x".repeat(60_000))))
            .await;
    }
    let list = |limit| TaskListRequest {
        status: None,
        limit: Some(limit),
    };
    let err = h
        .call::<_, TaskListReply>(&subject::api(P, ApiOp::TaskList), &list(20))
        .await
        .expect_err("an oversize reply");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("max_payload"), "{}", err.message);
    let r: TaskListReply = h
        .call(&subject::api(P, ApiOp::TaskList), &list(5))
        .await
        .expect("a smaller list fits");
    assert_eq!(r.tasks.len(), 5);
    h.stop().await;
}
