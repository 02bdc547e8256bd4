//! Authentication on a real coordinator: API keys guard changes, worker tokens guard every worker
//! message, a refused message changes nothing, and an exposed coordinator without keys does not
//! start.

use async_nats::HeaderMap;
use coordinator::{Auth, Config, RunError};
use protocol::auth::{API_KEY_HEADER, WORKER_TOKEN_HEADER};
use protocol::messages::*;
use protocol::{reply, subject, ApiError, ErrorCode, TaskType, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod common;
use common::Running;

const P: &str = "aimarket";
const KEY: &str = "s3cret-key";

struct Secured {
    run: Running,
}

impl Secured {
    async fn start() -> Self {
        Self {
            run: Running::start(|c| c.auth = Auth::new([KEY.to_owned()])).await,
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        header: Option<(&str, &str)>,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some((k, v)) = header {
            headers.insert(k, v);
        }
        let msg = self
            .run
            .client
            .request_with_headers(subject.to_owned(), headers, encode(req).into())
            .await
            .expect("a reply");
        reply::decode(&msg.payload).expect("an envelope")
    }

    async fn api<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: ApiOp,
        key: Option<&str>,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        self.call(&subject::api(P, op), key.map(|k| (API_KEY_HEADER, k)), req)
            .await
    }

    async fn lease(&self, worker: &str, token: Option<&str>) -> Result<LeaseReply, ApiError> {
        let req = LeaseRequest {
            worker_id: WorkerId::new(worker).expect("id"),
            capabilities: vec![TaskType::sentiment()],
            max_tasks: 1,
            task_id: None,
            model: None,
            model_hash: None,
        };
        self.call(
            &subject::lease(P),
            token.map(|t| (WORKER_TOKEN_HEADER, t)),
            &req,
        )
        .await
    }

    fn dump(&self) -> String {
        self.run.dump()
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ErrorCode {
    r.expect_err("accepted without the right credentials").code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_changes_and_tokens_guard_workers() {
    let s = Secured::start().await;
    let add = TaskAddRequest {
        batch_id: None,
        tasks: vec![NewTask::text("I love it")],
    };

    // Changes need the key; reads stay open.
    assert_eq!(
        code(s.api::<_, TaskAddReply>(ApiOp::TaskAdd, None, &add).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(
            s.api::<_, TaskAddReply>(ApiOp::TaskAdd, Some("guess"), &add)
                .await
        ),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(
            s.api::<_, Empty>(ApiOp::OpsReset, None, &ResetRequest { confirm: true })
                .await
        ),
        ErrorCode::Unauthorized
    );
    let alice_req = WorkerTokenRequest {
        worker_id: WorkerId::new("alice").expect("id"),
    };
    assert_eq!(
        code(
            s.api::<_, WorkerTokenReply>(ApiOp::WorkerTokenCreate, None, &alice_req)
                .await
        ),
        ErrorCode::Unauthorized
    );
    let added: TaskAddReply = s
        .api(ApiOp::TaskAdd, Some(KEY), &add)
        .await
        .expect("with the key");
    let task = added.task_ids[0];
    let stats: StatsReply = s
        .api(ApiOp::Stats, None, &Empty {})
        .await
        .expect("stats are open");
    assert_eq!(stats.tasks_total, 1);

    let alice: WorkerTokenReply = s
        .api(ApiOp::WorkerTokenCreate, Some(KEY), &alice_req)
        .await
        .expect("token");
    let bob: WorkerTokenReply = s
        .api(
            ApiOp::WorkerTokenCreate,
            Some(KEY),
            &WorkerTokenRequest {
                worker_id: WorkerId::new("bob").expect("id"),
            },
        )
        .await
        .expect("token");

    // No token, a wrong one, another worker's: refused, nothing stored.
    let before = s.dump();
    assert_eq!(code(s.lease("alice", None).await), ErrorCode::Unauthorized);
    assert_eq!(
        code(s.lease("alice", Some("amk_0000")).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(s.lease("alice", Some(&bob.token)).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(s.lease("mallory", Some(&alice.token)).await),
        ErrorCode::Unauthorized
    );
    let hb = Heartbeat {
        worker_id: WorkerId::new("alice").expect("id"),
        capabilities: vec![TaskType::sentiment()],
        model: None,
        leases: None,
        model_hash: None,
    };
    let spoofed: Result<HeartbeatReply, _> = s
        .call(
            &subject::heartbeat(P, &hb.worker_id),
            Some((WORKER_TOKEN_HEADER, bob.token.as_str())),
            &hb,
        )
        .await;
    assert_eq!(code(spoofed), ErrorCode::Unauthorized);
    assert_eq!(
        s.dump(),
        before,
        "a refused worker message changed the store"
    );

    // The right token works.
    let lease = s
        .lease("alice", Some(&alice.token))
        .await
        .expect("lease")
        .leases
        .remove(0);
    let submit = SubmitRequest {
        input_tokens: None,
        lease_id: lease.lease_id,
        worker_id: WorkerId::new("alice").expect("id"),
        label: "positive".into(),
        embedding: None,
        confidence: 0.9,
        model: None,
        generation: None,
        verification: None,
        model_hash: None,
    };
    // Bob cannot submit in alice's name, even with his own valid token.
    let before = s.dump();
    let forged: Result<SubmitReply, _> = s
        .call(
            &subject::submit(P, &task),
            Some((WORKER_TOKEN_HEADER, bob.token.as_str())),
            &submit,
        )
        .await;
    assert_eq!(code(forged), ErrorCode::Unauthorized);
    assert_eq!(s.dump(), before);
    let ok: SubmitReply = s
        .call(
            &subject::submit(P, &task),
            Some((WORKER_TOKEN_HEADER, alice.token.as_str())),
            &submit,
        )
        .await
        .expect("alice submits");
    assert!(ok.accepted);

    // Revoked: refused from then on.
    let revoked: WorkerTokenRevoked = s
        .api(ApiOp::WorkerTokenRevoke, Some(KEY), &alice_req)
        .await
        .expect("revoke");
    assert!(revoked.revoked);
    assert_eq!(
        code(s.lease("alice", Some(&alice.token)).await),
        ErrorCode::Unauthorized
    );

    // HTTP: the same rules.
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", s.run.http);
    let status = |r: reqwest::Response| r.status().as_u16();
    let body = serde_json::json!({"text": "hi"});
    assert_eq!(
        status(
            http.post(url("/tasks"))
                .json(&body)
                .send()
                .await
                .expect("post")
        ),
        401
    );
    assert_eq!(
        status(
            http.post(url("/tasks"))
                .header("x-api-key", KEY)
                .json(&body)
                .send()
                .await
                .expect("post")
        ),
        200
    );
    assert_eq!(
        status(
            http.post(url("/tasks"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .expect("post")
        ),
        200
    );
    assert_eq!(
        status(http.post(url("/ops/reset")).send().await.expect("post")),
        401
    );
    let next = serde_json::json!({"worker_id": "bob"});
    assert_eq!(
        status(
            http.post(url("/tasks/next"))
                .json(&next)
                .send()
                .await
                .expect("post")
        ),
        401
    );
    assert_eq!(
        status(
            http.post(url("/tasks/next"))
                .bearer_auth(&alice.token)
                .json(&next)
                .send()
                .await
                .expect("post")
        ),
        401
    );
    assert_eq!(
        status(
            http.post(url("/tasks/next"))
                .bearer_auth(&bob.token)
                .json(&next)
                .send()
                .await
                .expect("post")
        ),
        200
    );
    for open in [
        "/health",
        "/leaderboard",
        "/db/stats",
        "/metrics",
        "/dashboard",
        "/tasks",
    ] {
        assert_eq!(
            status(http.get(url(open)).send().await.expect("get")),
            200,
            "{open}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn an_exposed_coordinator_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new("nats://127.0.0.1:1", dir.path().join("c.db"));
    config.http = Some(([0, 0, 0, 0], test_support::free_port()).into());
    let err = coordinator::run(config, CancellationToken::new())
        .await
        .expect_err("started exposed without keys");
    assert!(matches!(err, RunError::Unprotected(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("AIMARKET_API_KEY") && msg.contains("worker token create"),
        "{msg}"
    );
    assert!(
        !dir.path().join("c.db").exists(),
        "it touched the store before refusing"
    );
}
