//! `stream: true`: server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
//!
//! - *verified* (the default): nothing is sent until the task is final, so everything streamed
//!   is verified: the role, the content, then a last chunk with `finish_reason` and the
//!   `aimarket` evidence (and a `usage` chunk with `stream_options.include_usage`).
//! - *optimistic* (`"aimarket": {"stream_mode": "optimistic"}`): the text of the first worker
//!   seen generating is streamed as its progress messages come; once the task is final, the last
//!   chunk carries the verdict, or, when consensus picked another answer, an error chunk says so
//!   and gives the verified one.
//!
//! Errors after the stream has started (a timeout, a task that ended without an answer) are a
//! `data: {"error": {...}}` chunk, which OpenAI's clients raise as an `APIError`.

use super::error::OaiError;
use super::evidence::{self, Answer};
use super::request::ChatRequest;
use super::wait::{NotFinal, Seen, Watch};
use super::OpenAi;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc::{unbounded, UnboundedSender};
use protocol::chat::Progress;
use protocol::messages::TaskDetail;
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::time::Instant;

/// The fields every chunk of one stream repeats.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunks {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
    pub(crate) logprobs: bool,
}

impl Chunks {
    /// One `chat.completion.chunk` with `delta`.
    pub(crate) fn chunk(&self, delta: Value, finish: Option<&str>, fingerprint: &Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// The chunks of a final answer after the role: its content (or what of it was not streamed
    /// yet, `streamed` bytes), then the finish with the evidence, then the usage if asked.
    pub(crate) fn ending(
        &self,
        d: &TaskDetail,
        a: &Answer,
        usage: Value,
        streamed: usize,
    ) -> Vec<Value> {
        let fp = evidence::fingerprint(d);
        let mut out = Vec::new();
        let rest = a.text.get(streamed..).unwrap_or_default();
        if !rest.is_empty() || (streamed == 0 && self.logprobs) {
            let mut c = self.chunk(json!({ "content": rest }), None, &fp);
            if self.logprobs {
                c["choices"][0]["logprobs"] = evidence::logprobs(a);
            }
            out.push(c);
        }
        let mut last = self.chunk(json!({}), Some(a.finish_reason), &fp);
        last["aimarket"] = evidence::evidence(d);
        out.push(last);
        if self.include_usage {
            let mut u = self.chunk(json!({}), None, &fp);
            u["choices"] = json!([]);
            u["usage"] = usage;
            out.push(u);
        }
        out
    }
}

/// What an optimistic stream has sent: whose progress it follows and the text so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Optimistic {
    pub(crate) leader: Option<String>,
    pub(crate) sent: String,
}

impl Optimistic {
    /// The delta to send for `p`: the first worker seen is followed; a message whose text does
    /// not extend what was sent (out of order) sends nothing.
    pub(crate) fn delta(&mut self, p: &Progress) -> Option<String> {
        let worker = p.worker_id.as_str();
        if self.leader.get_or_insert_with(|| worker.to_owned()) != worker {
            return None;
        }
        let rest = p.text.strip_prefix(self.sent.as_str())?;
        if rest.is_empty() {
            return None;
        }
        let rest = rest.to_owned();
        self.sent.push_str(&rest);
        Some(rest)
    }
}

/// The streamed response; the work goes on in a task of its own.
pub(crate) fn respond(api: OpenAi, req: ChatRequest, watch: Watch, deadline: Instant) -> Response {
    let (tx, rx) = unbounded::<Result<Event, Infallible>>();
    let chunks = Chunks {
        id: format!("{}{}", super::chat::ID_PREFIX, watch.task()),
        created: chrono::Utc::now().timestamp(),
        model: req.model.clone(),
        include_usage: req.include_usage,
        logprobs: req.logprobs,
    };
    tokio::spawn(run(api, chunks, req.ext.optimistic, watch, deadline, tx));
    // Comment lines while nothing else is sent (a verified stream waits for its quorum), so
    // proxies keep the connection; clients skip them.
    Sse::new(rx)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
        .into_response()
}

fn send(tx: &UnboundedSender<Result<Event, Infallible>>, v: &Value) {
    let _ = tx.unbounded_send(Ok(Event::default().data(v.to_string())));
}

async fn run(
    api: OpenAi,
    chunks: Chunks,
    optimistic: bool,
    mut watch: Watch,
    deadline: Instant,
    tx: UnboundedSender<Result<Event, Infallible>>,
) {
    let started = Instant::now();
    let mut state = Optimistic::default();
    if optimistic {
        send(
            &tx,
            &chunks.chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                &Value::Null,
            ),
        );
    }
    let mut on_progress = |p: &Progress| {
        if let Some(d) = optimistic.then(|| state.delta(p)).flatten() {
            send(
                &tx,
                &chunks.chunk(json!({ "content": d }), None, &Value::Null),
            );
        }
    };
    let result = watch.until_final(&api, deadline, &mut on_progress).await;
    let out = match result {
        Ok(d) => finished_chunks(&chunks, &d, &watch.seen, optimistic.then_some(&state)),
        Err(NotFinal::TimedOut) => Err(super::chat::timed_out(&watch.task(), deadline - started)),
        Err(NotFinal::Failed(e)) => Err(e),
    };
    match out {
        Ok(values) => values.iter().for_each(|v| send(&tx, v)),
        Err(e) => send(&tx, &e.body()),
    }
    let _ = tx.unbounded_send(Ok(Event::default().data("[DONE]")));
}

/// The chunks once the task is final; `optimistic`: what an optimistic stream has sent.
fn finished_chunks(
    chunks: &Chunks,
    d: &TaskDetail,
    seen: &Seen,
    optimistic: Option<&Optimistic>,
) -> Result<Vec<Value>, OaiError> {
    let a = Answer::of(d)?;
    let usage = evidence::usage(d, &a, seen);
    let Some(state) = optimistic else {
        let role = chunks.chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            &evidence::fingerprint(d),
        );
        let mut out = vec![role];
        out.extend(chunks.ending(d, &a, usage, 0));
        return Ok(out);
    };
    if !a.text.starts_with(&state.sent) {
        return Err(OaiError::replaced(
            &d.task.id,
            state.leader.as_deref(),
            &a.text,
        ));
    }
    Ok(chunks.ending(d, &a, usage, state.sent.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{LeaseId, TaskId};

    fn progress(worker: &str, text: &str) -> Progress {
        Progress {
            task_id: TaskId::new(),
            worker_id: worker.parse().expect("id"),
            lease_id: LeaseId::new(),
            prompt_tokens: 10,
            tokens: 1,
            text: text.to_owned(),
            done: false,
        }
    }

    #[test]
    fn an_optimistic_stream_follows_its_first_worker_in_deltas() {
        let mut s = Optimistic::default();
        assert_eq!(s.delta(&progress("alice", "The")).as_deref(), Some("The"));
        assert_eq!(s.delta(&progress("bob", "The sky")), None, "not the leader");
        assert_eq!(
            s.delta(&progress("alice", "The sky")).as_deref(),
            Some(" sky")
        );
        assert_eq!(s.delta(&progress("alice", "The sky")), None, "nothing new");
        assert_eq!(s.delta(&progress("alice", "The")), None, "late message");
        assert_eq!(s.sent, "The sky");
    }

    fn chunks(include_usage: bool) -> Chunks {
        Chunks {
            id: "chatcmpl-x".into(),
            created: 7,
            model: "smollm2".into(),
            include_usage,
            logprobs: false,
        }
    }

    fn joined(values: &[Value]) -> String {
        values
            .iter()
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    #[test]
    fn a_verified_stream_sends_the_answer_its_verdict_and_usage() {
        let d = crate::openai::evidence::tests::task(
            &[5, 6, 2],
            protocol::generation::VerifyMode::Exact,
        );
        let mut seen = crate::openai::wait::Seen::default();
        seen.prompt_tokens.insert("alice".into(), 12);
        let watch_free = finished_chunks(&chunks(true), &d, &seen, None).expect("final");
        assert_eq!(watch_free[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(joined(&watch_free), "Blue.");
        let last = &watch_free[watch_free.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["aimarket"]["verification"], "exact");
        let usage = &watch_free[watch_free.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(usage["usage"]["prompt_tokens"], 12);
        let no_usage = finished_chunks(&chunks(false), &d, &seen, None).expect("final");
        assert!(no_usage.iter().all(|v| v.get("usage").is_none()));
    }

    #[test]
    fn an_optimistic_stream_ends_with_the_rest_or_an_error_when_replaced() {
        let d = crate::openai::evidence::tests::task(
            &[5, 6, 2],
            protocol::generation::VerifyMode::Exact,
        );
        let seen = crate::openai::wait::Seen::default();
        let mut state = Optimistic::default();
        state.delta(&progress("alice", "Bl"));
        let rest = finished_chunks(&chunks(false), &d, &seen, Some(&state)).expect("kept");
        assert_eq!(
            format!("Bl{}", joined(&rest)),
            "Blue.",
            "the rest, then the verdict"
        );
        assert_eq!(
            rest.last().expect("last")["choices"][0]["finish_reason"],
            "stop"
        );
        let mut other = Optimistic::default();
        other.delta(&progress("mallory", "Red"));
        let e = finished_chunks(&chunks(false), &d, &seen, Some(&other)).expect_err("replaced");
        assert_eq!(e.code, Some("answer_replaced"));
        assert!(
            e.message.contains("mallory") && e.message.contains("Blue."),
            "{}",
            e.message
        );
        assert!(e.body()["error"]["message"].is_string());
    }

    #[test]
    fn chunks_have_openai_s_shape() {
        let c = Chunks {
            id: "chatcmpl-x".into(),
            created: 7,
            model: "smollm2".into(),
            include_usage: true,
            logprobs: false,
        };
        let v = c.chunk(json!({"content": "Hi"}), None, &json!("fp"));
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["delta"]["content"], "Hi");
        assert!(v["choices"][0]["finish_reason"].is_null());
        let line = Event::default().data(v.to_string());
        let text = format!("{line:?}");
        assert!(text.contains("chat.completion.chunk"), "{text}");
    }
}
