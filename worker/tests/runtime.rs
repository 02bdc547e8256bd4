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
                    label: i
                        .text
                        .split_whitespace()
                        .next()
                        .unwrap_or("none")
                        .to_owned(),
                    embedding: None,
                    confidence: 1.0,
                    scores: Vec::new(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_lost_acknowledgement_and_says_goodbye() {
    let nats = NatsServer::start();
    let client = test_support::connect(&nats.url()).await;
    let p = subject::DEFAULT_PREFIX;
    let mut heartbeats = client
        .subscribe(subject::heartbeat_all(p))
        .await
        .expect("sub");
    let mut leases = client.subscribe(subject::lease(p)).await.expect("sub");
    let mut submits = client.subscribe(subject::submit_all(p)).await.expect("sub");
    let mut releases = client
        .subscribe(subject::lease_release(p))
        .await
        .expect("sub");

    let mut config = WorkerConfig::new(WorkerId::new("w1").expect("id"), nats.url());
    config.request_timeout = Duration::from_millis(300);
    config.poll_interval = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker::run(config, Arc::new(FirstWord), shutdown.clone()));

    // Registration: a heartbeat sent as a request.
    let hb = next(&mut heartbeats).await;
    let body: Heartbeat = decode(&hb.payload).expect("heartbeat");
    assert_eq!(body.model.as_deref(), Some("test/first-word"));
    client
        .publish(
            hb.reply.expect("registration is a request"),
            reply::ok(&HeartbeatReply {
                ts: chrono::Utc::now(),
                renewed: 0,
                timings: timings(),
            })
            .into(),
        )
        .await
        .expect("reply");

    // One lease.
    let task = TaskId::new();
    let lease_id = LeaseId::new();
    let req = next(&mut leases).await;
    let lease_req: LeaseRequest = decode(&req.payload).expect("lease request");
    assert_eq!(lease_req.capabilities, vec![TaskType::sentiment()]);
    client
        .publish(
            req.reply.expect("reply subject"),
            reply::ok(&LeaseReply {
                leases: vec![Lease {
                    lease_id,
                    task_id: task,
                    task_type: TaskType::sentiment(),
                    text: "positive vibes".into(),
                    labels: None,
                    expires_at: chrono::Utc::now(),
                }],
                timings: timings(),
            })
            .into(),
        )
        .await
        .expect("reply");

    // The first submission's acknowledgement is "lost": no reply. The worker must send again.
    let first = next(&mut submits).await;
    assert_eq!(first.subject.as_str(), subject::submit(p, &task));
    let second = next(&mut submits).await;
    assert_eq!(first.payload, second.payload, "the resend differs");
    let sub: SubmitRequest = decode(&second.payload).expect("submit");
    assert_eq!((sub.lease_id, sub.label.as_str()), (lease_id, "positive"));
    client
        .publish(
            second.reply.expect("reply subject"),
            reply::ok(&SubmitReply {
                accepted: true,
                duplicate: false,
                finalized: false,
                final_label: None,
            })
            .into(),
        )
        .await
        .expect("reply");

    // Idle polling goes on (empty leases) until shutdown; then the goodbye.
    let idle = next(&mut leases).await;
    client
        .publish(
            idle.reply.expect("reply"),
            reply::ok(&LeaseReply {
                leases: vec![],
                timings: timings(),
            })
            .into(),
        )
        .await
        .expect("reply");
    shutdown.cancel();
    let bye = loop {
        tokio::select! {
            m = next(&mut releases) => break m,
            m = next(&mut leases) => {
                let r = reply::ok(&LeaseReply { leases: vec![], timings: timings() });
                client.publish(m.reply.expect("reply"), r.into()).await.expect("reply");
            }
        }
    };
    let release: ReleaseRequest = decode(&bye.payload).expect("release");
    assert!(
        release.offline && release.lease_ids.is_empty(),
        "{release:?}"
    );
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
                    label: "ok".into(),
                    embedding: None,
                    confidence: 1.0,
                    scores: Vec::new(),
                })
            })
            .collect()
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
    let client = test_support::connect(&nats.url()).await;
    let p = subject::DEFAULT_PREFIX;
    let mut heartbeats = client
        .subscribe(subject::heartbeat_all(p))
        .await
        .expect("sub");
    let mut leases = client.subscribe(subject::lease(p)).await.expect("sub");
    let mut submits = client.subscribe(subject::submit_all(p)).await.expect("sub");
    let mut releases = client
        .subscribe(subject::lease_release(p))
        .await
        .expect("sub");

    let mut config = WorkerConfig::new(WorkerId::new("w2").expect("id"), nats.url());
    config.batch = 2;
    config.heartbeat_interval = Duration::from_millis(100);
    config.poll_interval = Duration::from_millis(100);
    let (gate, gated) = std::sync::mpsc::channel();
    let model = Arc::new(Gated(std::sync::Mutex::new(gated)));
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker::run(config, model, shutdown.clone()));

    let hb = next(&mut heartbeats).await;
    client
        .publish(
            hb.reply.expect("registration is a request"),
            reply::ok(&HeartbeatReply {
                ts: chrono::Utc::now(),
                renewed: 0,
                timings: timings(),
            })
            .into(),
        )
        .await
        .expect("reply");

    // Two leases in one batch: one will be answered, the model fails the other (released).
    let (answered, failed) = (LeaseId::new(), LeaseId::new());
    let lease = |lease_id, text: &str| Lease {
        lease_id,
        task_id: TaskId::new(),
        task_type: TaskType::sentiment(),
        text: text.into(),
        labels: None,
        expires_at: chrono::Utc::now(),
    };
    let req = next(&mut leases).await;
    client
        .publish(
            req.reply.expect("reply subject"),
            reply::ok(&LeaseReply {
                leases: vec![lease(answered, "answer me"), lease(failed, "fail me")],
                timings: timings(),
            })
            .into(),
        )
        .await
        .expect("reply");

    // While the model works, every heartbeat renews both leases. One sent before the grant was
    // seen may still name none; none after the first that names them may drop them.
    let mut both = vec![answered, failed];
    both.sort();
    let mut beats = 0;
    while named(&mut heartbeats).await != both {
        beats += 1;
        assert!(
            beats < 5,
            "heartbeats after the grant do not name the granted leases"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            named(&mut heartbeats).await,
            both,
            "a held lease went unrenewed"
        );
    }

    // The answer is submitted first, then the failed lease released.
    gate.send(()).expect("open the gate");
    let submit = next(&mut submits).await;
    let sub: SubmitRequest = decode(&submit.payload).expect("submit");
    assert_eq!(sub.lease_id, answered);
    client
        .publish(
            submit.reply.expect("reply"),
            reply::ok(&SubmitReply {
                accepted: true,
                duplicate: false,
                finalized: false,
                final_label: None,
            })
            .into(),
        )
        .await
        .expect("reply");

    let release = next(&mut releases).await;
    let body: ReleaseRequest = decode(&release.payload).expect("release");
    assert_eq!((body.lease_ids, body.offline), (vec![failed], false));
    client
        .publish(
            release.reply.expect("reply"),
            reply::ok(&ReleaseReply { released: 1 }).into(),
        )
        .await
        .expect("reply");
    // Once answered and released, they are no longer named (idle lease polls get nothing).
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
