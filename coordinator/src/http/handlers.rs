//! One handler per route. Shapes follow the original API; extra fields are additions only.

use super::{HttpError, JsonBody};
use crate::api::{Answered, Submission};
use crate::core::Core;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use protocol::messages::{
    ApiOp, LeaderboardEntry, NewTask, RequeueReply, ResetRequest, StatsReply, TaskAddRequest,
    TaskDetail, TaskListRequest, TaskView, WorkerView,
};
use protocol::policy::{GoldAddReply, GoldAddRequest, TaskIdsRequest};
use protocol::{ErrorCode, LeaseId, ProtocolError, TaskId, TaskStatus, TaskType, WorkerId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

type Reply<T> = Result<Json<T>, HttpError>;

/// The secret in `Authorization: Bearer <secret>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A client's API key: `X-Api-Key`, or the bearer secret.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| bearer(headers))
}

/// `GET /health`: `{"ok": true}`, or 503 when the store does not answer.
pub(super) async fn health(State(core): State<Core>) -> Response {
    match core.health().await {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ok": false, "error": e.to_api(), "detail": e.to_string() })),
        )
            .into_response(),
    }
}

/// `POST /tasks` `{"text", "type"?, "required_submissions"?, "max_attempts"?}` -> `{"task_id"}`.
pub(super) async fn create_task(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(task): JsonBody<NewTask>,
) -> Reply<Value> {
    core.authorize(ApiOp::TaskAdd, api_key(&headers))?;
    let r = core
        .add_tasks(TaskAddRequest {
            batch_id: None,
            tasks: vec![task],
        })
        .await?;
    Ok(Json(json!({ "task_id": r.task_ids[0] })))
}

/// Query of `GET /tasks`.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /tasks[?status=&limit=]` -> `[task, ...]`, oldest first.
pub(super) async fn list_tasks(
    State(core): State<Core>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Reply<Vec<TaskView>> {
    // A malformed query string is refused in JSON like every other refusal.
    let Query(q) = q.map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedRequest,
            format!("malformed query string: {}", e.body_text()),
        )
    })?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()?;
    let r = core
        .list_tasks(TaskListRequest {
            status,
            limit: q.limit,
        })
        .await?;
    Ok(Json(r.tasks))
}

/// A task id from the path; 404 when it cannot be one.
fn task_id(id: &str) -> Result<TaskId, HttpError> {
    id.parse().map_err(|_| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no task with id {id:?}"),
        )
    })
}

/// `GET /tasks/{id}` -> `{"task", "submissions", "leases", "starved"?}`; 404 for an unknown id.
pub(super) async fn get_task(
    State(core): State<Core>,
    Path(id): Path<String>,
) -> Reply<TaskDetail> {
    Ok(Json(core.get_task(task_id(&id)?).await?))
}

/// `POST /tasks/{id}/cancel` -> `{"task_id", "status": "cancelled"}`; 404 for an unknown id,
/// 409 (`task_closed`) for a task already finalized, failed or cancelled.
pub(super) async fn cancel_task(
    State(core): State<Core>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply<Value> {
    core.authorize(ApiOp::TaskCancel, api_key(&headers))?;
    let id = task_id(&id)?;
    core.cancel_tasks(TaskIdsRequest { task_ids: vec![id] })
        .await?;
    Ok(Json(
        json!({ "task_id": id, "status": TaskStatus::Cancelled }),
    ))
}

/// `POST /tasks/{id}/retry` -> `{"task_id", "status": "queued"}`; 404 for an unknown id, 400
/// for a task that is not `failed`.
pub(super) async fn retry_task(
    State(core): State<Core>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply<Value> {
    core.authorize(ApiOp::TaskRetry, api_key(&headers))?;
    let id = task_id(&id)?;
    core.retry_tasks(TaskIdsRequest { task_ids: vec![id] })
        .await?;
    Ok(Json(json!({ "task_id": id, "status": TaskStatus::Queued })))
}

/// `POST /gold` `{"items": [{"text", "answer", "type"?, "labels"?}, ...]}` ->
/// `{"added", "already_known", "total"}`.
pub(super) async fn add_gold(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<GoldAddRequest>,
) -> Reply<GoldAddReply> {
    core.authorize(ApiOp::GoldAdd, api_key(&headers))?;
    Ok(Json(core.add_gold(req).await?))
}

/// A body naming a worker.
#[derive(Debug, Deserialize)]
pub(super) struct WorkerRef {
    worker_id: WorkerId,
}

/// What `POST /tasks/next` returns: both null when there is no work.
#[derive(Debug, Serialize)]
pub(super) struct NextTask {
    task_id: Option<TaskId>,
    text: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<TaskType>,
    /// The candidate labels of a `zero-shot` task.
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Vec<String>>,
    lease_id: Option<LeaseId>,
    lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /tasks/next` `{"worker_id"}` -> `{"task_id", "text"}`: a lease on the oldest task this
/// worker can take.
pub(super) async fn next_task(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(w): JsonBody<WorkerRef>,
) -> Reply<NextTask> {
    core.authenticate_worker(&w.worker_id, bearer(&headers))
        .await?;
    let lease = core.next_for(w.worker_id).await?;
    Ok(Json(match lease {
        Some(l) => NextTask {
            task_id: Some(l.task_id),
            text: Some(l.text),
            task_type: Some(l.task_type),
            labels: l.labels,
            lease_id: Some(l.lease_id),
            lease_expires_at: Some(l.expires_at),
        },
        None => NextTask {
            task_id: None,
            text: None,
            task_type: None,
            labels: None,
            lease_id: None,
            lease_expires_at: None,
        },
    }))
}

/// Body of `POST /workers/submit`.
#[derive(Debug, Deserialize)]
pub(super) struct SubmitBody {
    worker_id: WorkerId,
    task_id: TaskId,
    /// The answer of a label task.
    #[serde(default)]
    label: String,
    /// The answer of an `embedding` task.
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    confidence: f64,
    /// Optional: clients that track leases may name theirs.
    #[serde(default)]
    lease_id: Option<LeaseId>,
    #[serde(default)]
    model: Option<String>,
}

/// `POST /workers/submit` -> `{"ok": true}` (`"duplicate": true` on a resend).
pub(super) async fn submit(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<SubmitBody>,
) -> Reply<Value> {
    core.authenticate_worker(&b.worker_id, bearer(&headers))
        .await?;
    let r = core
        .accept(
            b.task_id,
            // The original API's workers register no model content: they are never leased a
            // generative task.
            Submission::new(
                b.lease_id,
                b.worker_id,
                Answered::from_parts(b.label, b.embedding, None, None)?,
                b.confidence,
                b.model,
                None,
            )?,
        )
        .await?;
    let mut body = json!({ "ok": true, "finalized": r.finalized });
    if r.duplicate {
        body["duplicate"] = json!(true);
    }
    if let Some(label) = r.final_label {
        body["final_label"] = json!(label);
    }
    Ok(Json(body))
}

/// Body of `POST /workers/register`.
#[derive(Debug, Deserialize)]
pub(super) struct RegisterBody {
    worker_id: WorkerId,
    /// The original's free-form capabilities: a JSON string or value. A list of task types (or
    /// an object with a `task_types` list) sets the worker's capabilities.
    #[serde(default)]
    capabilities_json: Option<Value>,
}

/// `POST /workers/register` `{"worker_id", "capabilities_json"?}` -> `{"ok": true}`.
pub(super) async fn register(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<RegisterBody>,
) -> Reply<Value> {
    core.authenticate_worker(&b.worker_id, bearer(&headers))
        .await?;
    let caps = b.capabilities_json.map(task_types).transpose()?.flatten();
    let r = core.heartbeat_known(b.worker_id.clone(), caps).await?;
    Ok(Json(
        json!({ "ok": true, "worker_id": b.worker_id, "ts": r.ts }),
    ))
}

/// Task types out of the original's `capabilities_json`; `None` when it names none.
fn task_types(v: Value) -> Result<Option<Vec<TaskType>>, ProtocolError> {
    let v = match v {
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => serde_json::from_str(&s)
            .map_err(|e| ProtocolError::invalid("capabilities_json", format!("not JSON: {e}")))?,
        other => other,
    };
    let list = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("task_types") {
            Some(Value::Array(a)) => a,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let types = list
        .into_iter()
        .map(|t| match t {
            Value::String(s) => TaskType::new(s),
            other => Err(ProtocolError::invalid(
                "capabilities_json",
                format!("{other} is not a task type"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!types.is_empty()).then_some(types))
}

/// `POST /workers/heartbeat` `{"worker_id"}` -> `{"ok": true, "ts"}`; renews the worker's leases.
pub(super) async fn heartbeat(
    State(core): State<Core>,
    headers: HeaderMap,
    JsonBody(w): JsonBody<WorkerRef>,
) -> Reply<Value> {
    core.authenticate_worker(&w.worker_id, bearer(&headers))
        .await?;
    let r = core.heartbeat_known(w.worker_id, None).await?;
    Ok(Json(
        json!({ "ok": true, "ts": r.ts, "renewed": r.renewed }),
    ))
}

/// `GET /leaderboard` -> `[{"worker_id", "points"}]`, highest first.
pub(super) async fn leaderboard(State(core): State<Core>) -> Reply<Vec<LeaderboardEntry>> {
    Ok(Json(core.leaderboard().await?.entries))
}

/// `GET /leaderboard/models`: agreement, gold accuracy and calibration per model content and
/// task type.
pub(super) async fn leaderboard_models(
    State(core): State<Core>,
) -> Reply<Vec<protocol::messages::ModelAgreement>> {
    Ok(Json(core.agreement_by_model().await?.models))
}

/// `GET /db/stats`.
pub(super) async fn db_stats(State(core): State<Core>) -> Reply<StatsReply> {
    Ok(Json(core.stats().await?))
}

/// `POST /ops/requeue-stale` -> `{"requeued": n}`.
pub(super) async fn requeue_stale(
    State(core): State<Core>,
    headers: HeaderMap,
) -> Reply<RequeueReply> {
    core.authorize(ApiOp::OpsRequeue, api_key(&headers))?;
    Ok(Json(core.sweep().await?))
}

/// `POST /ops/reset`: deletes everything.
pub(super) async fn reset(State(core): State<Core>, headers: HeaderMap) -> Reply<Value> {
    core.authorize(ApiOp::OpsReset, api_key(&headers))?;
    core.reset(ResetRequest { confirm: true }).await?;
    Ok(Json(json!({ "ok": true })))
}

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(State(core): State<Core>) -> Result<Response, HttpError> {
    let body = core.render_metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /dashboard`: one self-contained page that polls `/dashboard/data`.
pub(super) async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// Everything the dashboard shows, in one request.
#[derive(Debug, Serialize)]
pub(super) struct DashboardData {
    stats: StatsReply,
    workers: Vec<WorkerView>,
    leaderboard: Vec<LeaderboardEntry>,
    models: Vec<protocol::messages::ModelAgreement>,
    recent: Vec<TaskDetail>,
    now: chrono::DateTime<chrono::Utc>,
}

/// `GET /dashboard/data`.
pub(super) async fn dashboard_data(State(core): State<Core>) -> Reply<DashboardData> {
    let (stats, workers, leaderboard, models, mut recent) = tokio::try_join!(
        core.stats(),
        core.workers(),
        core.leaderboard(),
        core.agreement_by_model(),
        core.recent(20)
    )?;
    // The page shows a vote as "vector" or its text; the numbers would only weigh down each poll.
    for s in recent.iter_mut().flat_map(|d| d.submissions.iter_mut()) {
        s.embedding = None;
        s.token_ids = None;
        s.logprobs = None;
        s.token_ends = None;
    }
    Ok(Json(DashboardData {
        stats,
        workers: workers.workers,
        leaderboard: leaderboard.entries,
        models: models.models,
        recent,
        now: chrono::Utc::now(),
    }))
}

/// `GET /dashboard/series`: the charts' data, the last hour by minute: tasks finalized and
/// failed with their mean latency (from the store), HTTP requests answered with their mean and
/// largest latency (counted in memory since the coordinator started).
pub(super) async fn dashboard_series(State(core): State<Core>) -> Reply<Value> {
    let tasks = core.task_minutes().await?;
    let now = chrono::Utc::now();
    Ok(Json(json!({
        "now": now,
        "minutes": crate::ops::series::MINUTES,
        "tasks": tasks,
        "requests": core.metrics().api_minutes.snapshot(now.timestamp_millis()),
    })))
}

/// Query of `GET /dashboard/events`.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    task: Option<String>,
    worker: Option<String>,
    limit: Option<u32>,
}

/// `GET /dashboard/events[?task=&worker=&limit=]`: the event log, newest first (100 entries by
/// default, at most 500), of one task or one worker if given.
pub(super) async fn dashboard_events(
    State(core): State<Core>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Reply<Vec<protocol::messages::LogEvent>> {
    let Query(q) = q.map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedRequest,
            format!("malformed query string: {}", e.body_text()),
        )
    })?;
    let blank = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let task = blank(q.task).map(|t| task_id(t.trim())).transpose()?;
    let worker = blank(q.worker)
        .map(|w| w.trim().parse::<WorkerId>())
        .transpose()?;
    Ok(Json(
        core.events(task, worker, q.limit.unwrap_or(100)).await?,
    ))
}

/// `GET /openapi.json`.
pub(super) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Any other path: a JSON 404.
pub(super) async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route {}", uri.path()),
    )
}
