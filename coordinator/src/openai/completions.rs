//! `POST /v1/completions`, OpenAI's legacy route for raw prompts: one `generate` task whose text
//! is fed to the model as it is (template `raw/v1`, no chat template), answered like a chat
//! completion (same waiting, same evidence) in the `text_completion` shape. One prompt a
//! request, not streamed (streams go through `/v1/chat/completions`).

use super::chat::{prepare, timed_out};
use super::error::OaiError;
use super::evidence::{self, Answer};
use super::request::{self, CompletionRequest};
use super::wait::{NotFinal, Watch};
use super::{Body, OpenAi};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::messages::{NewTask, TaskAddRequest, TaskDetail};
use protocol::TaskType;
use serde_json::{json, Value};
use tokio::time::Instant;

/// `POST /v1/completions`.
pub(super) async fn create(
    State(api): State<OpenAi>,
    headers: HeaderMap,
    body: Result<Body, OaiError>,
) -> Response {
    match create_inner(api, headers, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    api: OpenAi,
    headers: HeaderMap,
    body: Result<Body, OaiError>,
) -> Result<Value, OaiError> {
    api.admit(&headers)?;
    let req = request::completion(&body?.0)?;
    let wait = api.wait_for(req.ext.timeout, &headers)?;
    let task = NewTask {
        raw: Some(true),
        max_new_tokens: req.max_tokens,
        temperature: req.temperature,
        seed: req.temperature.and(req.seed),
        stop: Some(req.stop.clone()).filter(|s| !s.is_empty()),
        verify: req.ext.verify,
        ..NewTask::generated(TaskType::generate(), req.prompt.clone())
    };
    let task = prepare(&api, &req.model, req.ext.required, task).await?;
    let id = api
        .core
        .add_tasks(TaskAddRequest {
            batch_id: None,
            tasks: vec![task],
        })
        .await?
        .task_ids[0];
    tracing::info!(task_id = %id, model = %req.model, user = ?req.user, "completion asked");
    let mut watch = Watch::start(&api, id).await?;
    match watch
        .until_final(&api, Instant::now() + wait, &mut |_| {})
        .await
    {
        Ok(d) => shape(&d, &watch, &req),
        Err(NotFinal::TimedOut) => Err(timed_out(&id, wait)),
        Err(NotFinal::Failed(e)) => Err(e),
    }
}

/// The `text_completion` object of a final task.
fn shape(d: &TaskDetail, watch: &Watch, req: &CompletionRequest) -> Result<Value, OaiError> {
    let a = Answer::of(d)?;
    let logprobs = match (&a.logprobs, req.logprobs) {
        (Some(lp), true) => json!({
            "tokens": a.token_ids.iter().map(|id| format!("id:{id}")).collect::<Vec<_>>(),
            "token_logprobs": lp,
            "top_logprobs": null,
            "text_offset": null,
        }),
        _ => Value::Null,
    };
    Ok(json!({
        "id": format!("cmpl-{}", d.task.id),
        "object": "text_completion",
        "created": super::unix(d.task.created_at),
        "model": req.model,
        "system_fingerprint": evidence::fingerprint(d),
        "choices": [{"text": a.text, "index": 0, "logprobs": logprobs, "finish_reason": a.finish_reason}],
        "usage": evidence::usage(d, &a, &watch.seen),
        "aimarket": evidence::evidence(d),
    }))
}
