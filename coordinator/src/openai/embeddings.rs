//! `POST /v1/embeddings`: one `embedding` task per input, pinned to the content of the model
//! named, all added at once (all or none); the reply is each task's consensus vector, as floats
//! or base64 (little-endian f32, as OpenAI encodes it), with each task's evidence.

use super::error::OaiError;
use super::request::{self, EmbeddingsRequest};
use super::wait::{NotFinal, Watch};
use super::{check_enough, serving, Body, OpenAi};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use protocol::limits::DEFAULT_REQUIRED_SUBMISSIONS;
use protocol::messages::{NewTask, TaskAddRequest, TaskDetail, WorkerView};
use protocol::{TaskStatus, TaskType};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// Embedding models known by name even when no worker serves them now (a 503, not a 404).
const KNOWN_EMBEDDERS: &[&str] = &["minilm"];

/// `POST /v1/embeddings`.
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
    let req = request::embeddings(&body?.0)?;
    let wait = api.wait_for(req.ext.timeout, &headers)?;
    let tasks = new_tasks(&api, &req).await?;
    let ids = api
        .core
        .add_tasks(TaskAddRequest {
            batch_id: None,
            tasks,
        })
        .await?
        .task_ids;
    tracing::info!(tasks = ids.len(), model = %req.model, "embeddings asked");
    let deadline = Instant::now() + wait;
    let mut details = Vec::with_capacity(ids.len());
    for id in ids {
        let mut watch = Watch::start(&api, id).await?;
        match watch.until_final(&api, deadline, &mut |_| {}).await {
            Ok(d) => details.push(d),
            Err(NotFinal::TimedOut) => {
                return Err(OaiError::timed_out(
                    &id,
                    wait.as_millis(),
                    &format!("/tasks/{id}"),
                ))
            }
            Err(NotFinal::Failed(e)) => return Err(e),
        }
    }
    reply(&req, &details)
}

/// The tasks of a request: one per input, pinned to the content most live workers of the model
/// serve.
async fn new_tasks(api: &OpenAi, req: &EmbeddingsRequest) -> Result<Vec<NewTask>, OaiError> {
    let live = api.live_workers().await?;
    let embedding = TaskType::embedding();
    let Some(hash) = main_hash(&live, &req.model) else {
        if KNOWN_EMBEDDERS.contains(&req.model.as_str()) {
            return Err(OaiError::starved(format!(
                "no live worker serves the embedding model {}",
                req.model
            )));
        }
        let mut known: Vec<String> = live
            .iter()
            .filter(|w| w.capabilities.contains(&embedding))
            .filter_map(|w| w.model.clone())
            .collect();
        known.dedup();
        return Err(OaiError::model_not_found(&req.model, &known));
    };
    let required = req.ext.required.unwrap_or(DEFAULT_REQUIRED_SUBMISSIONS);
    let tasks: Vec<NewTask> = req
        .inputs
        .iter()
        .map(|text| NewTask {
            model_hash: Some(hash.clone()),
            required_submissions: Some(required),
            ..NewTask::embedding(text.clone())
        })
        .collect();
    let request = TaskAddRequest {
        batch_id: None,
        tasks,
    };
    request.validate(api.core.settings().max_text_bytes)?;
    let n = serving(&live, &embedding, &hash).len();
    check_enough(&req.model, &hash, &embedding, required, n)?;
    Ok(request.tasks)
}

/// The content hash most live embedding workers named `model` serve.
fn main_hash(live: &[WorkerView], model: &str) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for w in live {
        if w.capabilities.contains(&TaskType::embedding()) && w.model.as_deref() == Some(model) {
            if let Some(h) = &w.model_hash {
                *counts.entry(h).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(h, n)| (*n, std::cmp::Reverse(*h)))
        .map(|(h, _)| h.to_owned())
}

/// OpenAI's `list` of embeddings, each with its task's evidence.
fn reply(req: &EmbeddingsRequest, details: &[TaskDetail]) -> Result<Value, OaiError> {
    let mut data = Vec::with_capacity(details.len());
    // Each input's tokens as an agreeing worker read them; unknown (null) if any input's
    // workers did not say.
    let mut read = Some(0u64);
    for (i, d) in details.iter().enumerate() {
        let t = &d.task;
        let (TaskStatus::Finalized, Some(v)) = (t.status, &t.final_embedding) else {
            let why = t
                .error_message
                .clone()
                .unwrap_or_else(|| t.status.to_string());
            return Err(OaiError::task_ended(&t.id, &why));
        };
        let agreeing: Vec<&str> = d
            .submissions
            .iter()
            .filter(|s| s.agreed == Some(true))
            .map(|s| s.worker_id.as_str())
            .collect();
        let tokens = d
            .submissions
            .iter()
            .filter(|s| s.agreed == Some(true))
            .find_map(|s| s.input_tokens);
        read = read.zip(tokens).map(|(sum, n)| sum + u64::from(n));
        data.push(json!({
            "object": "embedding",
            "index": i,
            "embedding": encode(v, req.base64),
            "aimarket": {
                "task_id": t.id, "status": t.status, "model_hash": t.model_hash,
                "verification": if agreeing.len() > 1 { "vector-consensus" } else { "single-answer" },
                "answers": d.submissions.len(), "agreeing_workers": agreeing,
                "mean_cosine": t.final_confidence,
            },
        }));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": read, "total_tokens": read},
    }))
}

/// Floats, or base64 of their little-endian f32 bytes.
pub(crate) fn encode(v: &[f32], base64: bool) -> Value {
    if !base64 {
        return json!(v);
    }
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32_as_openai_sends_it() {
        let v = [1.0f32, -0.5, 0.25];
        let b = encode(&v, true);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.as_str().expect("a string"))
            .expect("base64");
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
        assert_eq!(b, json!("AACAPwAAAL8AAIA+"));
        assert_eq!(encode(&v, false), json!([1.0, -0.5, 0.25]));
    }
}
