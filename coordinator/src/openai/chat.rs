//! `POST /v1/chat/completions` and `GET /v1/chat/completions/{id}`: a chat becomes one
//! `generate` task (template `chat-messages/v1`), the reply is its verified answer in OpenAI's
//! shape with the `aimarket` evidence ([`super::evidence`]).

use super::error::OaiError;
use super::evidence::{self, Shape};
use super::request::{self, ChatRequest};
use super::wait::{NotFinal, Watch};
use super::{check_enough, serving, Body, OpenAi};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::limits::DEFAULT_REQUIRED_SUBMISSIONS;
use protocol::messages::{NewTask, TaskAddRequest};
use protocol::{TaskId, TaskType};
use std::time::Duration;
use tokio::time::Instant;

/// The prefix of a completion's id; the rest is its task's id.
pub(super) const ID_PREFIX: &str = "chatcmpl-";

/// `POST /v1/chat/completions`.
pub(super) async fn create(
    State(api): State<OpenAi>,
    headers: HeaderMap,
    body: Result<Body, OaiError>,
) -> Response {
    match create_inner(api, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    api: OpenAi,
    headers: HeaderMap,
    body: Result<Body, OaiError>,
) -> Result<Response, OaiError> {
    api.admit(&headers)?;
    let req = request::chat(&body?.0)?;
    let wait = api.wait_for(req.ext.timeout, &headers)?;
    let task = new_task(&api, &req).await?;
    let reply = api
        .core
        .add_tasks(TaskAddRequest {
            batch_id: None,
            tasks: vec![task],
        })
        .await?;
    let id = reply.task_ids[0];
    tracing::info!(task_id = %id, model = %req.model, user = ?req.user, stream = req.stream, "chat completion asked");
    let started = Instant::now();
    let watch = Watch::start(&api, id).await?;
    if req.stream {
        return Ok(super::sse::respond(api, req, watch, started + wait));
    }
    finish(&api, watch, &Shape::of(&req), started + wait, wait)
        .await
        .map(|v| Json(v).into_response())
}

/// Waits for the task of `watch` and shapes its answer.
async fn finish(
    api: &OpenAi,
    mut watch: Watch,
    shape: &Shape,
    deadline: Instant,
    wait: Duration,
) -> Result<serde_json::Value, OaiError> {
    match watch.until_final(api, deadline, &mut |_| {}).await {
        Ok(detail) => evidence::completion(&detail, &watch.seen, shape),
        Err(NotFinal::TimedOut) => Err(timed_out(&watch.task(), wait)),
        Err(NotFinal::Failed(e)) => Err(e),
    }
}

/// The 504 of a task not final in time.
pub(super) fn timed_out(task: &TaskId, wait: Duration) -> OaiError {
    OaiError::timed_out(
        task,
        wait.as_millis(),
        &format!("/v1/chat/completions/{ID_PREFIX}{task}"),
    )
}

/// The task a request asks for, once the model is known and enough live workers serve it.
///
/// # Errors
/// As [`prepare`].
async fn new_task(api: &OpenAi, req: &ChatRequest) -> Result<NewTask, OaiError> {
    let task = NewTask {
        max_new_tokens: req.max_tokens,
        temperature: req.temperature,
        seed: req.temperature.and(req.seed),
        stop: Some(req.stop.clone()).filter(|s| !s.is_empty()),
        verify: req.ext.verify,
        ..NewTask::chat(req.messages.clone())
    };
    prepare(api, &req.model, req.ext.required, task).await
}

/// `task` (a `generate` task) pinned to `model` and its `required` answers (3 when absent),
/// validated, once enough live workers serve the model: nothing is stored.
///
/// # Errors
/// 404 for a model this coordinator does not know for generation; 400/413 for a task out of
/// bounds; 503 when too few live workers serve the model.
pub(super) async fn prepare(
    api: &OpenAi,
    model: &str,
    required: Option<u32>,
    task: NewTask,
) -> Result<NewTask, OaiError> {
    let live = api.live_workers().await?;
    let generate = TaskType::generate();
    let card = protocol::generation::card(model)
        .filter(|c| c.types.contains(&"generate"))
        .and_then(|c| c.hash.map(|h| (c, h)));
    let Some((card, hash)) = card else {
        let known = super::models::generative_names(&live);
        return Err(OaiError::model_not_found(model, &known));
    };
    let required = required.unwrap_or(DEFAULT_REQUIRED_SUBMISSIONS);
    let task = NewTask {
        model: Some(card.name.to_owned()),
        required_submissions: Some(required),
        ..task
    };
    // The task's own bounds (size: 413) come before whether workers could answer it.
    task.validate(api.core.settings().max_text_bytes)?;
    let serving = serving(&live, &generate, hash).len();
    check_enough(card.name, hash, &generate, required, serving)?;
    Ok(task)
}

/// `GET /v1/chat/completions/{id}`: a completion asked earlier (its id, or its task's), in the
/// same shape, once final; it waits up to `X-Aimarket-Timeout` seconds (default: not at all),
/// then 504.
pub(super) async fn fetch(
    State(api): State<OpenAi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let run = async {
        api.authorize(&headers)?;
        let task: TaskId = id
            .strip_prefix(ID_PREFIX)
            .unwrap_or(&id)
            .parse()
            .map_err(|_| OaiError::no_completion(&id))?;
        let detail = api.core.get_task(task).await.map_err(|e| match e {
            crate::error::CoreError::TaskNotFound(_) => OaiError::no_completion(&id),
            other => other.into(),
        })?;
        let Some(spec) = detail.task.generation.as_ref() else {
            return Err(OaiError::no_completion(&id));
        };
        let shape = Shape::fetched(&spec.model);
        let wait = match headers.get("x-aimarket-timeout") {
            Some(_) => api.wait_for(None, &headers)?,
            None => Duration::ZERO,
        };
        let watch = Watch::start(&api, task).await?;
        finish(&api, watch, &shape, Instant::now() + wait, wait).await
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
