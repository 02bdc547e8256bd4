//! `deploy/nats-secure.conf` on a real nats-server: the coordinator runs under its role, a worker
//! can lease but cannot reach the API, a client can add tasks but cannot act as a worker.

use coordinator::Config;
use futures::StreamExt;
use protocol::messages::{
    encode, ApiOp, Empty, LeaseReply, LeaseRequest, NewTask, StatsReply, TaskAddRequest,
};
use protocol::{reply, subject, TaskType, WorkerId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{wait_for, NatsServer};
use tokio_util::sync::CancellationToken;

const P: &str = "aimarket";

/// A client that records the server's errors (permission violations arrive that way).
async fn connect(url: String) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let (url, credentials) = protocol::auth::split_credentials(&url);
    let (user, password) = credentials.expect("a url with credentials");
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user, password)
        .request_timeout(Some(Duration::from_millis(500)))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().expect("lock").push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("connect");
    (client, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_only_its_subjects() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats-secure.conf");
    let nats = NatsServer::start_with_env(
        &["-c", conf],
        &[
            ("AIMARKET_NATS_COORDINATOR_PASSWORD", "cpw"),
            ("AIMARKET_NATS_WORKER_PASSWORD", "wpw"),
            ("AIMARKET_NATS_CLIENT_PASSWORD", "kpw"),
        ],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(nats.url_as("coordinator", "cpw"), dir.path().join("c.db"));
    config.sweep_interval = Duration::from_secs(600);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let coordinator =
        tokio::spawn(async move { coordinator::run(config, token).await.expect("runs") });

    let (client, _) = connect(nats.url_as("client", "kpw")).await;
    let stats = |c: async_nats::Client| async move {
        let msg = c
            .request(subject::api(P, ApiOp::Stats), "{}".into())
            .await
            .ok()?;
        reply::decode::<StatsReply>(&msg.payload).ok()?.ok()
    };
    wait_for(
        "the coordinator under its role",
        Duration::from_secs(10),
        || stats(client.clone()),
    )
    .await;
    // The client adds a task.
    let add = TaskAddRequest {
        batch_id: None,
        tasks: vec![NewTask::text("hello")],
    };
    let msg = client
        .request(subject::api(P, ApiOp::TaskAdd), encode(&add).into())
        .await
        .expect("client may add");
    assert!(reply::decode::<serde_json::Value>(&msg.payload)
        .expect("envelope")
        .is_ok());

    // The worker leases it...
    let (worker, worker_errors) = connect(nats.url_as("worker", "wpw")).await;
    let req = LeaseRequest {
        worker_id: WorkerId::new("w1").expect("id"),
        capabilities: vec![TaskType::sentiment()],
        max_tasks: 1,
        task_id: None,
        model: None,
        model_hash: None,
    };
    let msg = worker
        .request(subject::lease(P), encode(&req).into())
        .await
        .expect("worker may lease");
    let leases: LeaseReply = reply::decode(&msg.payload).expect("envelope").expect("ok");
    assert_eq!(leases.leases.len(), 1);

    // ...but cannot reach the API: no task is added, no reset happens, and the server says why.
    let denied = worker
        .request(subject::api(P, ApiOp::TaskAdd), encode(&add).into())
        .await;
    assert!(denied.is_err(), "a worker reached the API");
    let denied = worker
        .request(
            subject::api(P, ApiOp::OpsReset),
            "{\"confirm\":true}".into(),
        )
        .await;
    assert!(denied.is_err(), "a worker reset the store");
    // Nor snoop on the API or events.
    let mut snoop = worker
        .subscribe(format!("{P}.api.>"))
        .await
        .expect("subscribe call");
    worker.flush().await.expect("flush");
    client
        .request(subject::api(P, ApiOp::Stats), encode(&Empty {}).into())
        .await
        .expect("stats");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), snoop.next())
            .await
            .is_err(),
        "a worker saw API traffic"
    );
    wait_for("the permission errors", Duration::from_secs(5), || {
        let errors = worker_errors.clone();
        async move {
            let e = errors.lock().expect("lock").join("\n").to_lowercase();
            (e.contains("permissions violation for publish")
                && e.contains("permissions violation for subscription"))
            .then_some(())
        }
    })
    .await;
    let after = stats(client.clone()).await.expect("stats");
    assert_eq!(
        (after.tasks_total, after.active_leases),
        (1, 1),
        "the denied requests changed the store"
    );

    // A client cannot act as a worker.
    let as_worker = client.request(subject::lease(P), encode(&req).into()).await;
    assert!(as_worker.is_err(), "a client leased");

    shutdown.cancel();
    coordinator.await.expect("stopped");
}
