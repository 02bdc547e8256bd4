//! The NATS adapter: subscribes (in the coordinators' queue group) to the lease, release,
//! heartbeat, submit and API subjects, decodes each message, calls the [`Core`], and replies with
//! the envelope. It also publishes the core's effects. No logic of its own.

use crate::api::Effect;
use crate::core::Core;
use crate::error::CoreError;
use crate::metrics::Outcome;
use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use protocol::auth::{API_KEY_HEADER, WORKER_TOKEN_HEADER};
use protocol::messages::CoordinatorStatus;
use protocol::messages::{
    decode, ApiOp, Empty, Heartbeat, LeaseRequest, ReleaseRequest, ResetRequest, SubmitRequest,
    TaskAddRequest, TaskGetRequest, TaskListRequest, WorkerTokenRequest,
};
use protocol::policy::{GoldAddRequest, TaskIdsRequest};
use protocol::subject::{self, Route, COORDINATOR_QUEUE};
use protocol::{reply, ApiError, TaskId, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

/// Requests handled at once; past this the adapter stops reading and NATS buffers.
const MAX_IN_FLIGHT: usize = 512;

/// Serves requests until `shutdown`, then stops taking new ones and finishes those in flight
/// (up to `grace`).
///
/// # Errors
/// When a subscription cannot be made.
pub(crate) async fn serve(
    client: Client,
    core: Core,
    prefix: String,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), async_nats::SubscribeError> {
    let subjects = [
        subject::lease(&prefix),
        subject::lease_release(&prefix),
        subject::heartbeat_all(&prefix),
        subject::submit_all(&prefix),
        subject::api_all(&prefix),
    ];
    let mut subs = Vec::with_capacity(subjects.len());
    for s in &subjects {
        subs.push(
            client
                .queue_subscribe(s.clone(), COORDINATOR_QUEUE.to_owned())
                .await?,
        );
    }
    tracing::info!(prefix = %prefix, "serving nats api");
    let mut messages = futures::stream::select_all(subs);
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let prefix: Arc<str> = prefix.into();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = messages.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (client, core, prefix) = (client.clone(), core.clone(), prefix.clone());
        tracker.spawn(async move {
            handle(&client, &core, &prefix, msg).await;
            drop(permit);
        });
    }
    // Stop taking work: unsubscribe, then let in-flight requests commit and reply.
    drop(messages);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            in_flight = tracker.len(),
            "shutdown grace over; abandoning requests"
        );
    }
    Ok(())
}

async fn handle(client: &Client, core: &Core, prefix: &str, msg: Message) {
    let started = Instant::now();
    let Some(answer) = dispatch(
        core,
        prefix,
        msg.subject.as_str(),
        msg.headers.as_ref(),
        &msg.payload,
    )
    .await
    else {
        return;
    };
    match msg.reply {
        Some(reply_to) => {
            let body = fit(answer.body, client.server_info().max_payload);
            if let Err(e) = client.publish(reply_to, body.into()).await {
                warn!(error = %e, "reply not sent");
            }
        }
        None if answer.outcome == Outcome::Error => {
            warn!(subject = %msg.subject, "published message refused")
        }
        None => {}
    }
    core.metrics()
        .observe_nats(answer.kind, answer.outcome, started.elapsed());
}

/// What the coordinator answers to one message.
#[derive(Debug)]
pub struct Answer {
    /// The metric label of the subject (`lease`, `submit`, `api.task.add`...).
    pub kind: &'static str,
    /// The reply envelope.
    pub body: Vec<u8>,
    /// Whether it is a success.
    pub outcome: Outcome,
}

/// Decodes, authenticates and runs one message; `None` for a subject the coordinator does not
/// serve. Every payload gets an answer: malformed input is an error reply, never a panic.
pub async fn dispatch(
    core: &Core,
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Option<Answer> {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let token = header(WORKER_TOKEN_HEADER);
    let token = token.as_deref();
    let (kind, (body, outcome)) = match Route::parse(prefix, subject)? {
        Route::Lease => (
            "lease",
            call(payload, |req: LeaseRequest| async {
                core.authenticate_worker(&req.worker_id, token).await?;
                core.lease(req).await
            })
            .await,
        ),
        Route::Release => (
            "release",
            call(payload, |req: ReleaseRequest| async {
                core.authenticate_worker(&req.worker_id, token).await?;
                core.release(req).await
            })
            .await,
        ),
        Route::Heartbeat(worker) => (
            "heartbeat",
            call(payload, |hb: Heartbeat| async {
                let worker: WorkerId = worker.parse()?;
                core.authenticate_worker(&worker, token).await?;
                core.heartbeat(worker, hb).await
            })
            .await,
        ),
        Route::Submit(task) => (
            "submit",
            call(payload, |req: SubmitRequest| async {
                let task: TaskId = task.parse()?;
                core.authenticate_worker(&req.worker_id, token).await?;
                core.submit(task, req).await
            })
            .await,
        ),
        Route::Api(op) => {
            let op = op.parse::<ApiOp>();
            let key = header(API_KEY_HEADER);
            (
                op.as_ref().map_or("api.unknown", |op| op.label()),
                api(core, op, key.as_deref(), payload).await,
            )
        }
    };
    Some(Answer {
        kind,
        body,
        outcome,
    })
}

/// A reply the server would refuse for its size becomes an error reply saying so, so the caller
/// hears why instead of waiting out its timeout.
fn fit(body: Vec<u8>, max_payload: usize) -> Vec<u8> {
    if max_payload == 0 || body.len() <= max_payload {
        return body;
    }
    warn!(
        bytes = body.len(),
        max_payload, "reply too large for the NATS server"
    );
    reply::encode::<()>(&Err(ApiError::new(
        protocol::ErrorCode::InvalidArgument,
        format!(
            "the reply is {} bytes, over the NATS server's max_payload of {max_payload}: ask for \
             less (a smaller --limit), or raise max_payload",
            body.len()
        ),
    )))
}

/// Encodes a result as a reply, logging the errors a human should see.
fn respond<T: Serialize>(result: Result<T, CoreError>) -> (Vec<u8>, Outcome) {
    let outcome = if result.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Error
    };
    let body = reply::encode(&result.map_err(|e| {
        let api = e.to_api();
        match api.code {
            protocol::ErrorCode::Internal => error!(error = %e, "request failed"),
            protocol::ErrorCode::Unavailable => warn!(error = %e, "store unavailable"),
            _ => debug!(error = %e, "request refused"),
        }
        api
    }));
    (body, outcome)
}

/// Decodes the request, runs `op` on it, and encodes its result as the reply.
async fn call<Req, Resp, F, Fut>(payload: &[u8], op: F) -> (Vec<u8>, Outcome)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, CoreError>>,
{
    match decode::<Req>(payload) {
        Ok(req) => respond(op(req).await),
        Err(e) => respond::<Resp>(Err(e.into())),
    }
}

async fn api(
    core: &Core,
    op: Result<ApiOp, ApiError>,
    key: Option<&str>,
    payload: &[u8],
) -> (Vec<u8>, Outcome) {
    let op = match op {
        Ok(op) => op,
        Err(e) => return (reply::err(&e), Outcome::Error),
    };
    if let Err(e) = core.authorize(op, key) {
        return respond::<Empty>(Err(e));
    }
    // An empty body stands for `{}`, so `nats req aimarket.api.stats ''` works.
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    match op {
        ApiOp::TaskAdd => call(payload, |r: TaskAddRequest| core.add_tasks(r)).await,
        ApiOp::TaskGet => call(payload, |r: TaskGetRequest| core.get_task(r.task_id)).await,
        ApiOp::TaskList => call(payload, |r: TaskListRequest| core.list_tasks(r)).await,
        ApiOp::Leaderboard => call(payload, |Empty {}| core.leaderboard()).await,
        ApiOp::LeaderboardModels => call(payload, |Empty {}| core.agreement_by_model()).await,
        ApiOp::Workers => call(payload, |Empty {}| core.workers()).await,
        ApiOp::Stats => call(payload, |Empty {}| core.stats()).await,
        ApiOp::OpsRequeue => call(payload, |Empty {}| core.sweep()).await,
        ApiOp::OpsReset => {
            call(payload, |r: ResetRequest| async {
                core.reset(r).await.map(|()| Empty {})
            })
            .await
        }
        ApiOp::WorkerTokenCreate => {
            call(payload, |r: WorkerTokenRequest| {
                core.create_token(r.worker_id)
            })
            .await
        }
        ApiOp::WorkerTokenRevoke => {
            call(payload, |r: WorkerTokenRequest| {
                core.revoke_token(r.worker_id)
            })
            .await
        }
        ApiOp::TaskCancel => call(payload, |r: TaskIdsRequest| core.cancel_tasks(r)).await,
        ApiOp::TaskRetry => call(payload, |r: TaskIdsRequest| core.retry_tasks(r)).await,
        ApiOp::GoldAdd => call(payload, |r: GoldAddRequest| core.add_gold(r)).await,
    }
}

/// Publishes effects of committed operations until every [`Core`] clone is gone.
pub(crate) async fn publish_effects(
    client: Client,
    prefix: String,
    mut effects: mpsc::UnboundedReceiver<Effect>,
) {
    while let Some(effect) = effects.recv().await {
        let (subject, body) = match &effect {
            Effect::Announce(a) => (
                subject::tasks(&prefix, &a.task_type),
                protocol::messages::encode(a),
            ),
            Effect::Finished(e) => (
                subject::task_event(&prefix, &e.task_id),
                protocol::messages::encode(e),
            ),
        };
        if let Err(e) = client.publish(subject, body.into()).await {
            warn!(error = %e, "event not published");
        }
    }
}

/// What this coordinator says of itself: its identity and the counters of its [`Core`].
fn status(
    core: &Core,
    id: &str,
    prefix: &str,
    store: &str,
    http: Option<&str>,
) -> CoordinatorStatus {
    let m = core.metrics();
    CoordinatorStatus {
        id: id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        prefix: prefix.to_owned(),
        store: store.to_owned(),
        http: http.map(str::to_owned),
        started: core.started(),
        tasks_created: m.tasks_created.get(),
        leases_granted: m.tasks_claimed.get(),
        submissions: m.submissions.get(),
        tasks_finalized: m.tasks_finalized.get(),
        tasks_failed: m.tasks_failed.get(),
        heartbeats: m.worker_heartbeats.get(),
    }
}

/// Registers the coordinator as the NATS micro service [`subject::SERVICE_NAME`]:
/// `$SRV.PING/INFO/STATS` reach it (so `nats micro ls` and `aimarket coordinators` list every
/// running coordinator), its stats carry its [`CoordinatorStatus`], and it answers on its own
/// status subject until `shutdown`.
///
/// # Errors
/// When the service or its endpoint cannot subscribe.
pub(crate) async fn register(
    client: &Client,
    core: Core,
    prefix: &str,
    store: String,
    http: Option<String>,
    shutdown: CancellationToken,
) -> Result<async_nats::service::Service, async_nats::Error> {
    use async_nats::service::ServiceExt;
    let metadata = std::collections::HashMap::from([
        ("prefix".to_owned(), prefix.to_owned()),
        ("store".to_owned(), store.clone()),
        ("http".to_owned(), http.clone().unwrap_or_default()),
    ]);
    // The service id is known only once it starts: the stats handler reads it from here.
    let id = Arc::new(std::sync::OnceLock::<String>::new());
    let service = {
        let (core, prefix, store, http, id) = (
            core.clone(),
            prefix.to_owned(),
            store.clone(),
            http.clone(),
            id.clone(),
        );
        client
            .service_builder()
            .description("aimarket coordinator: leases, submissions, consensus")
            .metadata(metadata)
            .stats_handler(move |_, _| {
                let id = id.get().map_or("", String::as_str);
                serde_json::to_value(status(&core, id, &prefix, &store, http.as_deref()))
                    .unwrap_or_default()
            })
            .start(subject::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await?
    };
    let me = service.info().await.id;
    let _ = id.set(me.clone());
    let mut endpoint = service
        .endpoint_builder()
        .name("status")
        .add(subject::coordinator_status(prefix, &me))
        .await?;
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = endpoint.next() => match r { Some(r) => r, None => return },
            };
            let body =
                protocol::messages::encode(&status(&core, &me, &prefix, &store, http.as_deref()));
            if let Err(e) = request.respond(Ok(body.into())).await {
                debug!(error = %e, "status reply not sent");
            }
        }
    });
    Ok(service)
}
