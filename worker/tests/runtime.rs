//! The worker runtime against a scripted coordinator on a real nats-server: it registers, leases,
//! retries a submission whose acknowledgement was lost, and says goodbye on shutdown.

use futures::StreamExt;
use protocol::messages::*;
use protocol::{reply, subject, LeaseId, TaskId, TaskType, WorkerId};
use std::sync::Arc;
use std::time::Duration;
use test_support::NatsServer;
use tokio_util::sync::CancellationToken;
use worker::model::{Input, Model, ModelError, Prediction};
use worker::WorkerConfig;

/// Answers with the text's first word, fully confident: enough to follow the loop.
struct FirstWord;

impl Model for FirstWord {
    fn id(&self) -> &str {
        "test/first-word"
    }
    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::sentiment()]
    }
    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        inputs
            .iter()
            .map(|i| {
                Ok(Prediction {
                    input_tokens: None,
                    label: i
                        .text
                        .split_whitespace()
                        .next()
                        .unwrap_or("none")
                        .to_owned(),
                    embedding: None,
                    confidence: 1.0,
                    scores: Vec::new(),
                    generation: None,
                })
            })
            .collect()
    }
}

async fn next(s: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

fn timings() -> Timings {
    Timings {
        lease_seconds: 30,
        heartbeat_ttl_seconds: 30,
    }
}

/// A scripted coordinator: the subjects a worker talks to, answered by the test.
struct Script {
    client: async_nats::Client,
    heartbeats: async_nats::Subscriber,
    leases: async_nats::Subscriber,
    submits: async_nats::Subscriber,
    releases: async_nats::Subscriber,
}

impl Script {
    async fn start(nats: &NatsServer) -> Self {
        let client = test_support::connect(&nats.url()).await;
        let p = subject::DEFAULT_PREFIX;
        let sub = |s: String| {
            let client = client.clone();
            async move { client.subscribe(s).await.expect("subscribe") }
        };
        Self {
            heartbeats: sub(subject::heartbeat_all(p)).await,
            leases: sub(subject::lease(p)).await,
            submits: sub(subject::submit_all(p)).await,
            releases: sub(subject::lease_release(p)).await,
            client,
        }
    }

    /// Answers a request with `body`.
    async fn reply<T: serde::Serialize>(&self, request: async_nats::Message, body: &T) {
        self.client
            .publish(request.reply.expect("a request"), reply::ok(body).into())
            .await
            .expect("reply");
    }

    /// Takes the worker's registration (a heartbeat sent as a request) and answers it.
    async fn register(&mut self) -> Heartbeat {
        let hb = next(&mut self.heartbeats).await;
        let body: Heartbeat = decode(&hb.payload).expect("heartbeat");
        let answer = HeartbeatReply {
            ts: chrono::Utc::now(),
            renewed: 0,
            closed: vec![],
            timings: timings(),
        };
        self.reply(hb, &answer).await;
        body
    }

    /// Takes the next lease request and grants `leases`.
    async fn grant(&mut self, leases: Vec<Lease>) -> LeaseRequest {
        let req = next(&mut self.leases).await;
        let body: LeaseRequest = decode(&req.payload).expect("lease request");
        let answer = LeaseReply {
            leases,
            timings: timings(),
        };
        self.reply(req, &answer).await;
        body
    }
}

/// A lease on a new sentiment task.
fn lease(lease_id: LeaseId, text: &str) -> Lease {
    Lease {
        lease_id,
        task_id: TaskId::new(),
        task_type: TaskType::sentiment(),
        text: text.into(),
        labels: None,
        generation: None,
        verify: None,
        expires_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_lost_acknowledgement_and_says_goodbye() {
    let nats = NatsServer::start();
    let mut script = Script::start(&nats).await;
    let mut config = WorkerConfig::new(WorkerId::new("w1").expect("id"), nats.url());
    config.request_timeout = Duration::from_millis(300);
    config.poll_interval = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker::run(config, Arc::new(FirstWord), shutdown.clone()));

    let registration = script.register().await;
    assert_eq!(registration.model.as_deref(), Some("test/first-word"));

    // One lease.
    let granted = lease(LeaseId::new(), "positive vibes");
    let (task, lease_id) = (granted.task_id, granted.lease_id);
    let lease_req = script.grant(vec![granted]).await;
    assert_eq!(lease_req.capabilities, vec![TaskType::sentiment()]);

    // The first submission's acknowledgement is "lost": no reply. The worker must send again.
    let first = next(&mut script.submits).await;
    assert_eq!(
        first.subject.as_str(),
        subject::submit(subject::DEFAULT_PREFIX, &task)
    );
    let second = next(&mut script.submits).await;
    assert_eq!(first.payload, second.payload, "the resend differs");
    let sub: SubmitRequest = decode(&second.payload).expect("submit");
    assert_eq!((sub.lease_id, sub.label.as_str()), (lease_id, "positive"));
    script.reply(second, &SubmitReply::stored()).await;

    // Idle polling goes on (empty leases) until shutdown; then the goodbye.
    script.grant(vec![]).await;
    shutdown.cancel();
    let bye = loop {
        tokio::select! {
            m = next(&mut script.releases) => break m,
            m = next(&mut script.leases) => {
                script.reply(m, &LeaseReply { leases: vec![], timings: timings() }).await;
            }
        }
    };
    let release: ReleaseRequest = decode(&bye.payload).expect("release");
    assert!(
        release.offline && release.lease_ids.is_empty(),
        "{release:?}"
    );
    script.reply(bye, &ReleaseReply { released: 0 }).await;

    let report = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker ran");
    assert_eq!(report.acknowledged, 1);
    assert_eq!(report.refused, 0);
}

/// Answers "ok" once its gate opens; a text starting with "fail" gets an error instead. Lets the
/// test watch the heartbeats while a batch is being worked on.
struct Gated(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl Model for Gated {
    fn id(&self) -> &str {
        "test/gated"
    }
    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::sentiment()]
    }
    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        self.0
            .lock()
            .expect("gate lock")
            .recv_timeout(Duration::from_secs(30))
            .expect("the gate opens");
        inputs
            .iter()
            .map(|i| {
                if i.text.starts_with("fail") {
                    return Err(ModelError::Inference("told to fail".into()));
                }
                Ok(Prediction {
                    input_tokens: None,
                    label: "ok".into(),
                    embedding: None,
                    confidence: 1.0,
                    scores: Vec::new(),
                    generation: None,
                })
            })
            .collect()
    }
}

/// A worker with batches of two on a [`Gated`] model, heartbeating every 100 ms, registered with
/// a scripted coordinator.
struct Gate {
    script: Script,
    gate: std::sync::mpsc::Sender<()>,
    worker: tokio::task::JoinHandle<Result<worker::Report, worker::WorkerError>>,
    shutdown: CancellationToken,
}

impl Gate {
    async fn start(nats: &NatsServer, id: &str) -> Self {
        let mut script = Script::start(nats).await;
        let mut config = WorkerConfig::new(WorkerId::new(id).expect("id"), nats.url());
        config.batch = 2;
        config.heartbeat_interval = Duration::from_millis(100);
        config.poll_interval = Duration::from_millis(100);
        let (gate, gated) = std::sync::mpsc::channel();
        let model = Arc::new(Gated(std::sync::Mutex::new(gated)));
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(worker::run(config, model, shutdown.clone()));
        script.register().await;
        Self {
            script,
            gate,
            worker,
            shutdown,
        }
    }
}

/// The leases the next heartbeat names, sorted.
async fn named(s: &mut async_nats::Subscriber) -> Vec<LeaseId> {
    let hb = next(s).await;
    let body: Heartbeat = decode(&hb.payload).expect("heartbeat");
    let mut leases = body.leases.expect("the runtime always names its leases");
    leases.sort();
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_name_each_lease_from_its_grant_until_it_is_answered_or_released() {
    let nats = NatsServer::start();
    let Gate {
        mut script,
        gate,
        worker,
        shutdown,
    } = Gate::start(&nats, "w2").await;

    // Two leases in one batch: one will be answered, the model fails the other (released).
    let (answered, failed) = (LeaseId::new(), LeaseId::new());
    script
        .grant(vec![lease(answered, "answer me"), lease(failed, "fail me")])
        .await;

    // While the model works, every heartbeat renews both leases. One sent before the grant was
    // seen may still name none; none after the first that names them may drop them.
    let mut both = vec![answered, failed];
    both.sort();
    let mut beats = 0;
    while named(&mut script.heartbeats).await != both {
        beats += 1;
        assert!(
            beats < 5,
            "heartbeats after the grant do not name the granted leases"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            named(&mut script.heartbeats).await,
            both,
            "a held lease went unrenewed"
        );
    }

    // The answer is submitted first, then the failed lease released.
    gate.send(()).expect("open the gate");
    let submit = next(&mut script.submits).await;
    let sub: SubmitRequest = decode(&submit.payload).expect("submit");
    assert_eq!(sub.lease_id, answered);
    script.reply(submit, &SubmitReply::stored()).await;
    let release = next(&mut script.releases).await;
    let body: ReleaseRequest = decode(&release.payload).expect("release");
    assert_eq!((body.lease_ids, body.offline), (vec![failed], false));
    script.reply(release, &ReleaseReply { released: 1 }).await;

    // Once answered and released, they are no longer named (idle lease polls get nothing).
    let Script {
        client,
        mut heartbeats,
        mut leases,
        mut releases,
        ..
    } = script;
    let idle = tokio::spawn({
        let client = client.clone();
        async move {
            while let Some(m) = leases.next().await {
                let r = reply::ok(&LeaseReply {
                    leases: vec![],
                    timings: timings(),
                });
                client
                    .publish(m.reply.expect("reply"), r.into())
                    .await
                    .expect("reply");
            }
        }
    });
    let mut beats = 0;
    while !named(&mut heartbeats).await.is_empty() {
        beats += 1;
        assert!(beats < 5, "heartbeats still name finished leases");
    }
    for _ in 0..3 {
        assert_eq!(
            named(&mut heartbeats).await,
            vec![],
            "a finished lease came back"
        );
    }

    shutdown.cancel();
    let bye = next(&mut releases).await;
    client
        .publish(
            bye.reply.expect("reply"),
            reply::ok(&ReleaseReply { released: 0 }).into(),
        )
        .await
        .expect("reply");
    let report = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker ran");
    idle.abort();
    assert_eq!((report.acknowledged, report.released), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_heartbeat_reply_closes_is_dropped_not_submitted() {
    let nats = NatsServer::start();
    let Gate {
        mut script,
        gate,
        worker,
        shutdown,
    } = Gate::start(&nats, "w3").await;
    let (kept, cancelled) = (LeaseId::new(), LeaseId::new());
    script
        .grant(vec![lease(kept, "keep me"), lease(cancelled, "cancel me")])
        .await;

    // While the model works, a heartbeat naming both is answered: one lease closed (its task
    // was cancelled).
    let mut both = vec![kept, cancelled];
    both.sort();
    loop {
        let hb = next(&mut script.heartbeats).await;
        let body: Heartbeat = decode(&hb.payload).expect("heartbeat");
        let mut named = body.leases.clone().unwrap_or_default();
        named.sort();
        let closed = if named == both {
            vec![cancelled]
        } else {
            vec![]
        };
        let done = !closed.is_empty();
        let answer = HeartbeatReply {
            ts: chrono::Utc::now(),
            renewed: named.len() as u32,
            closed,
            timings: timings(),
        };
        script.reply(hb, &answer).await;
        if done {
            break;
        }
    }
    // The next heartbeats name only the kept lease.
    let mut beats = 0;
    while named(&mut script.heartbeats).await != vec![kept] {
        beats += 1;
        assert!(beats < 5, "a closed lease is still renewed");
    }
    // Only the kept lease's answer is submitted; nothing is released for the closed one.
    gate.send(()).expect("open the gate");
    let submit = next(&mut script.submits).await;
    let sub: SubmitRequest = decode(&submit.payload).expect("submit");
    assert_eq!(sub.lease_id, kept);
    script.reply(submit, &SubmitReply::stored()).await;

    shutdown.cancel();
    let bye = loop {
        tokio::select! {
            m = next(&mut script.releases) => break m,
            m = next(&mut script.leases) => {
                script.reply(m, &LeaseReply { leases: vec![], timings: timings() }).await;
            }
            m = next(&mut script.submits) => panic!("a closed lease was submitted: {m:?}"),
        }
    };
    let release: ReleaseRequest = decode(&bye.payload).expect("release");
    assert!(release.lease_ids.is_empty(), "{release:?}");
    script.reply(bye, &ReleaseReply { released: 0 }).await;
    let report = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker ran");
    assert_eq!((report.acknowledged, report.released), (1, 0));
}
