//! The OpenAI-compatible API, under `/v1` on the coordinator's HTTP listener: what every LLM
//! application, SDK and tool speaks, answered with verified results and their evidence.
//!
//! - `GET /v1/models`: the generative and embedding models live workers serve ([`models`]).
//! - `POST /v1/chat/completions`: one `generate` task whose input is the whole chat, rendered by
//!   the model's chat template on the workers; the reply waits for the task to be final and
//!   carries an `aimarket` object with the evidence ([`chat`]); `stream: true` is server-sent
//!   events, verified (sent once final) or optimistic (the first generator's tokens as they come,
//!   the verdict last) ([`sse`]). `GET /v1/chat/completions/{id}` fetches one later.
//! - `POST /v1/embeddings`: one `embedding` task per input, the consensus vectors ([`embeddings`]).
//! - `POST /v1/completions`: a raw prompt, no chat template, one `generate` task ([`completions`]).
//!
//! Thin like the rest of the gateway: requests become `task.add` calls on the same [`Core`] as
//! the NATS API; waiting listens to the task's events (and its progress, for the prompt's token
//! count and optimistic streams) on NATS. A refused request adds nothing.

mod chat;
mod completions;
mod embeddings;
mod error;
mod evidence;
mod models;
mod request;
mod sse;
mod wait;

use crate::core::Core;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use error::OaiError;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use protocol::messages::{ApiOp, WorkerView};
use protocol::{TaskType, WorkerStatus};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The key of an `Authorization: Bearer KEY` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// What the API needs beyond the core: NATS (to wait on task events and progress) and the
/// default wait.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    /// The coordinator's NATS client.
    pub(crate) nats: async_nats::Client,
    /// The subject prefix.
    pub(crate) prefix: String,
    /// How long a request waits for its task to be final, unless it says otherwise.
    pub(crate) api_wait: Duration,
    /// Each client's quota of task-making requests (chat, completion, embeddings) per minute;
    /// `None`: no quota.
    pub(crate) quota: Option<NonZeroU32>,
}

/// The state of the `/v1` routes.
#[derive(Clone)]
pub(crate) struct OpenAi {
    core: Core,
    gateway: Arc<Gateway>,
    /// Each client's quota (see [`OpenAi::admit`]).
    quotas: Option<(Arc<DefaultKeyedRateLimiter<String>>, NonZeroU32)>,
}

/// Whose quota a request counts against when no key is asked for (open mode): everyone's.
const ANONYMOUS: &str = "anonymous";

/// The `/v1` routes over `core`.
pub(crate) fn router(core: Core, gateway: Gateway) -> Router {
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/chat/completions/{id}", get(chat::fetch))
        .route("/v1/completions", post(completions::create))
        .route("/v1/embeddings", post(embeddings::create))
        .with_state(OpenAi {
            core,
            quotas: gateway
                .quota
                .map(|n| (Arc::new(RateLimiter::keyed(Quota::per_minute(n))), n)),
            gateway: Arc::new(gateway),
        })
}

impl OpenAi {
    /// Checks the client's key (`Authorization: Bearer KEY`) when keys are configured: every
    /// `/v1` route needs one then, as OpenAI's do.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), OaiError> {
        self.core
            .authorize(ApiOp::TaskAdd, bearer(headers))
            .map_err(OaiError::from)
    }

    /// [`OpenAi::authorize`], then the client's quota of task-making requests: a request past
    /// it is refused with 429 (and `Retry-After`) before it changes anything. The quota is the
    /// client key's in protected mode (each key its own bucket, refilled evenly over the
    /// minute, a minute's worth at most); in open mode every request shares one.
    fn admit(&self, headers: &HeaderMap) -> Result<(), OaiError> {
        self.authorize(headers)?;
        let Some((quotas, per_minute)) = &self.quotas else {
            return Ok(());
        };
        let who = match bearer(headers) {
            Some(key) if self.core.protected() => key,
            _ => ANONYMOUS,
        };
        quotas.check_key(&who.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(quotas.clock().now());
            OaiError::rate_limited(per_minute.get(), wait)
        })
    }

    /// How long to wait: the request's own bound (extension field, else the
    /// `X-Aimarket-Timeout` header in seconds), else the coordinator's.
    fn wait_for(&self, asked: Option<Duration>, headers: &HeaderMap) -> Result<Duration, OaiError> {
        if let Some(d) = asked {
            return Ok(d);
        }
        match headers.get("x-aimarket-timeout") {
            None => Ok(self.gateway.api_wait),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| *s > 0.0 && *s <= request::MAX_WAIT.as_secs_f64())
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    OaiError::bad(
                        "X-Aimarket-Timeout",
                        "the header must be seconds in (0, 3600]",
                    )
                }),
        }
    }

    /// The live workers (active within the TTL), not quarantined.
    async fn live_workers(&self) -> Result<Vec<WorkerView>, OaiError> {
        let all = self.core.workers().await?;
        Ok(all
            .workers
            .into_iter()
            .filter(|w| w.status == WorkerStatus::Active && w.quarantine.is_none())
            .collect())
    }
}

/// The live workers that can do `task_type` with model content `hash`.
fn serving<'a>(workers: &'a [WorkerView], task_type: &TaskType, hash: &str) -> Vec<&'a WorkerView> {
    workers
        .iter()
        .filter(|w| w.capabilities.contains(task_type) && w.model_hash.as_deref() == Some(hash))
        .collect()
}

/// Refuses a task that too few live workers could answer: the starved reason, before anything
/// is stored.
fn check_enough(
    model: &str,
    hash: &str,
    task_type: &TaskType,
    needs: u32,
    live: usize,
) -> Result<(), OaiError> {
    if live >= needs as usize {
        return Ok(());
    }
    Err(OaiError::starved(format!(
        "no answer possible now: a {task_type} task on {model} (content {}…) needs answers from \
         {needs} distinct live workers serving it, and {live} {} live; start more workers, or ask \
         for fewer with \"aimarket\": {{\"required\": N}}",
        &hash[..hash.len().min(12)],
        if live == 1 { "is" } else { "are" }
    )))
}

/// A JSON object body, refused in OpenAI's shape: 413 over the size limit, 400 otherwise.
pub(crate) struct Body(pub(crate) serde_json::Map<String, serde_json::Value>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = OaiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                OaiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: Some("request_too_large"),
                    ..OaiError::bad("body", e.body_text())
                }
            } else {
                OaiError::bad("body", e.body_text())
            }
        })?;
        request::object(&bytes).map(Body)
    }
}

/// Seconds since the epoch of a time.
fn unix(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp()
}
