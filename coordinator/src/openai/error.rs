//! OpenAI's error body, `{"error":{"message","type","param","code"}}`, with the status codes its
//! clients map to their exception classes (400 `BadRequestError`, 401 `AuthenticationError`,
//! 404 `NotFoundError`, 413, 503, 504...).

use crate::error::CoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ErrorCode, ProtocolError, TaskId};

/// A refused or failed OpenAI-compatible request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OaiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`...
    pub(crate) kind: &'static str,
    pub(crate) param: Option<String>,
    pub(crate) code: Option<&'static str>,
    /// Seconds to wait before trying again (`Retry-After`), for a 429.
    pub(crate) retry_after: Option<u64>,
}

impl OaiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 429 `rate_limit_exceeded`: the client's quota of `per_minute` requests is spent until
    /// `wait` has passed.
    pub(crate) fn rate_limited(per_minute: u32, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                format!(
                    "Rate limit reached: {per_minute} requests per minute for this client \
                     (--api-requests-per-minute). Try again in {seconds} s."
                ),
            )
            .with_code("rate_limit_exceeded")
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400: a field of the wrong type or out of range.
    pub(crate) fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404 `model_not_found`.
    pub(crate) fn model_not_found(model: &str, known: &[String]) -> Self {
        let known = if known.is_empty() {
            "none is served now".to_owned()
        } else {
            format!("served now: {}", known.join(", "))
        };
        Self {
            param: Some("model".to_owned()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist here ({known})"),
            )
            .with_code("model_not_found")
        }
    }

    /// 404 for an unknown completion id.
    pub(crate) fn no_completion(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no completion with id {id:?}"),
        )
        .with_code("not_found")
    }

    /// 503: no live worker can answer (the starved reason).
    pub(crate) fn starved(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("no_live_worker")
    }

    /// 504: the task was not final in time; it goes on, and the error names it.
    pub(crate) fn timed_out(task: &TaskId, waited_ms: u128, fetch: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "task {task} is not final after {waited_ms} ms; it goes on: fetch the answer \
                 later with GET {fetch}"
            ),
        )
        .with_code("task_pending")
    }

    /// 502: the task ended without an answer (failed, no consensus, cancelled).
    pub(crate) fn task_ended(task: &TaskId, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            format!("task {task} ended without a verified answer: {why}"),
        )
        .with_code("no_verified_answer")
    }

    /// The error chunk of an optimistic stream whose streamed answer consensus did not keep.
    pub(crate) fn replaced(task: &TaskId, streamed_from: Option<&str>, verified: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "verification_error",
            format!(
                "task {task}: consensus picked another answer than the one streamed (from worker {}); the verified answer is: {verified}",
                streamed_from.unwrap_or("unknown")
            ),
        )
        .with_code("answer_replaced")
    }

    /// The JSON body, as a value (also the `error` chunk of a stream).
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<CoreError> for OaiError {
    fn from(e: CoreError) -> Self {
        let api = e.to_api();
        let (status, kind, code) = match api.code {
            ErrorCode::MalformedRequest
            | ErrorCode::InvalidArgument
            | ErrorCode::UnknownModel
            | ErrorCode::UnsupportedSpec => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
            ),
            ErrorCode::TextTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "input_too_large",
            ),
            ErrorCode::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            ErrorCode::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
            ),
            _ => {
                tracing::error!(error = %e, "openai-compatible request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal",
                )
            }
        };
        Self::new(status, kind, api.message).with_code(code)
    }
}

impl From<ProtocolError> for OaiError {
    fn from(e: ProtocolError) -> Self {
        let param = match &e {
            ProtocolError::Invalid { field, .. } => Some((*field).to_owned()),
            _ => None,
        };
        Self {
            param,
            ..CoreError::from(e).into()
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_quota_is_a_429_that_says_when_to_try_again() {
        let e = OaiError::rate_limited(2, std::time::Duration::from_millis(29_200));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let body = e.body();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 requests per minute") && m.contains("30 s")));
        let r = e.into_response();
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "30");
        // Never "0": a client told to wait 0 s would ask again at once.
        let soon = OaiError::rate_limited(600, std::time::Duration::from_millis(40));
        assert_eq!(soon.retry_after, Some(1));
    }

    #[test]
    fn errors_have_openai_s_shape_and_status() {
        let e = OaiError::bad("n", "n must be 1");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "n");
        assert_eq!(body["error"]["message"], "n must be 1");
        assert!(body["error"]["code"].is_null());
        let nf = OaiError::model_not_found("gpt-4", &["smollm2".to_owned()]);
        assert_eq!(nf.status, StatusCode::NOT_FOUND);
        assert_eq!(nf.body()["error"]["code"], "model_not_found");
        assert!(nf.message.contains("smollm2"));
        let id = TaskId::new();
        let t = OaiError::timed_out(&id, 5, "/v1/chat/completions/x");
        assert_eq!(t.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(t.message.contains(&id.to_string()));
        let auth: OaiError = CoreError::Unauthorized("no key".into()).into();
        assert_eq!(auth.status, StatusCode::UNAUTHORIZED);
        let big: OaiError = ProtocolError::TextTooLarge { len: 10, limit: 5 }.into();
        assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
        let invalid: OaiError = ProtocolError::invalid("messages", "empty").into();
        assert_eq!(invalid.param.as_deref(), Some("messages"));
    }
}
