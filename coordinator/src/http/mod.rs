//! The HTTP gateway: the original Python coordinator's endpoints, with its request and response
//! shapes, over the same [`Core`] operations as the NATS API, so HTTP and NATS workers share
//! leases, votes and points. Also `/metrics`, `/dashboard`, `/openapi.json`, and the
//! OpenAI-compatible API under `/v1` (`crate::openai`).
//!
//! Thin by design: each handler decodes, calls one `Core` method, and shapes the reply. Errors
//! are JSON (`{"ok":false,"error":{code,message},"detail":message}`) with a fitting status.

mod handlers;

use crate::core::Core;
use crate::error::CoreError;
use crate::metrics::HttpLabels;
use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::openai::Gateway;

/// The gateway's routes over `core`, the OpenAI-compatible `/v1` routes with them.
pub(crate) fn router(core: Core, gateway: Gateway) -> Router {
    // Room for a text at the limit even with every character JSON-escaped, and for the longest
    // vector a submission may carry (at most 16 characters a number).
    let text = core.settings().max_text_bytes * 6;
    let vector = protocol::limits::MAX_EMBEDDING_DIM * 16;
    let body_limit = text.max(vector) + 16 * 1024;
    Router::new()
        .route("/health", get(handlers::health))
        .route(
            "/tasks",
            post(handlers::create_task).get(handlers::list_tasks),
        )
        .route("/tasks/next", post(handlers::next_task))
        .route("/tasks/{id}", get(handlers::get_task))
        .route("/tasks/{id}/cancel", post(handlers::cancel_task))
        .route("/tasks/{id}/retry", post(handlers::retry_task))
        .route("/gold", post(handlers::add_gold))
        .route("/workers/register", post(handlers::register))
        .route("/workers/heartbeat", post(handlers::heartbeat))
        .route("/workers/submit", post(handlers::submit))
        .route("/leaderboard", get(handlers::leaderboard))
        .route("/leaderboard/models", get(handlers::leaderboard_models))
        .route("/db/stats", get(handlers::db_stats))
        .route("/ops/requeue-stale", post(handlers::requeue_stale))
        .route("/ops/reset", post(handlers::reset))
        .route("/metrics", get(handlers::metrics))
        .route("/dashboard", get(handlers::dashboard))
        .route("/dashboard/data", get(handlers::dashboard_data))
        .route("/dashboard/series", get(handlers::dashboard_series))
        .route("/dashboard/events", get(handlers::dashboard_events))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .with_state(core.clone())
        .merge(crate::openai::router(core.clone(), gateway))
        .layer(axum::middleware::from_fn_with_state(core, track))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
}

/// Serves `router` on `listener` until `shutdown`, then finishes in-flight requests.
///
/// # Errors
/// I/O errors of the listener.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    core: Core,
    gateway: Gateway,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(core, gateway))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Records each request's latency under its route template.
async fn track(State(core): State<Core>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    core.metrics().observe_http(
        HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        },
        started.elapsed(),
    );
    response
}

/// An error reply: a status and the wire error.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    error: ApiError,
}

impl HttpError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ApiError::new(code, message),
        }
    }
}

/// The status each error code answers with.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidArgument | ErrorCode::UnknownModel | ErrorCode::UnsupportedSpec => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::TextTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound | ErrorCode::UnknownOperation => StatusCode::NOT_FOUND,
        ErrorCode::NoLease
        | ErrorCode::LeaseExpired
        | ErrorCode::DuplicateSubmission
        | ErrorCode::TaskClosed => StatusCode::CONFLICT,
        ErrorCode::LeaseMismatch | ErrorCode::ModelMismatch => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CoreError> for HttpError {
    fn from(e: CoreError) -> Self {
        let error = e.to_api();
        if error.code == ErrorCode::Internal {
            tracing::error!(error = %e, "http request failed");
        }
        Self {
            status: status_of(error.code),
            error,
        }
    }
}

impl From<protocol::ProtocolError> for HttpError {
    fn from(e: protocol::ProtocolError) -> Self {
        CoreError::from(e).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "ok": false,
            "detail": self.error.message,
            "error": self.error,
        });
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body decoded with the project's errors: 413 over the size limit, 400 for bad JSON,
/// 422 for JSON of the wrong shape.
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::new(e.status(), ErrorCode::TextTooLarge, e.body_text())
            } else {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MalformedRequest,
                    e.body_text(),
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let status = if e.classify() == serde_json::error::Category::Data {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            HttpError::new(
                status,
                ErrorCode::MalformedRequest,
                format!("malformed request: {e}"),
            )
        })
    }
}
