//! A final generative task in OpenAI's shapes: the answer (the text of the verified token ids),
//! `finish_reason` as the ids end, `usage` with the real counts, log-probabilities, and the
//! `aimarket` object with the evidence: how it was verified, by whom, and each verifier's verdict.

use super::error::OaiError;
use super::request::ChatRequest;
use super::wait::Seen;
use protocol::generation::{token_texts, Decoding, GenerationSpec, VerifyMode};
use protocol::messages::TaskDetail;
use protocol::TaskStatus;
use serde_json::{json, Value};

/// What the reply looks like, from the request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shape {
    /// The model as the request named it.
    pub(crate) model: String,
    /// Whether to return log-probabilities.
    pub(crate) logprobs: bool,
}

impl Shape {
    pub(crate) fn of(req: &ChatRequest) -> Self {
        Self {
            model: req.model.clone(),
            logprobs: req.logprobs,
        }
    }

    /// A completion fetched by id: the task's model, log-probabilities included.
    pub(crate) fn fetched(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            logprobs: true,
        }
    }
}

/// The verified answer of a finalized generative task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) text: String,
    pub(crate) token_ids: Vec<u32>,
    pub(crate) finish_reason: &'static str,
    /// The agreeing answer's per-token log-probabilities.
    pub(crate) logprobs: Option<Vec<f32>>,
    /// Where each token's text ends in `text`, as the agreeing worker said.
    pub(crate) token_ends: Option<Vec<u32>>,
    /// How many prompt tokens the agreeing worker read.
    pub(crate) prompt_tokens: Option<u32>,
}

impl Answer {
    /// The answer of `d`.
    ///
    /// # Errors
    /// 502 for a task that ended without one (failed, cancelled).
    pub(crate) fn of(d: &TaskDetail) -> Result<Self, OaiError> {
        let t = &d.task;
        let (Some(spec), TaskStatus::Finalized, Some(ids)) =
            (&t.generation, t.status, &t.final_token_ids)
        else {
            let why = t
                .error_message
                .clone()
                .or_else(|| t.failure_reason.map(|r| r.to_string()))
                .unwrap_or_else(|| t.status.to_string());
            return Err(OaiError::task_ended(&t.id, &why));
        };
        let agreeing = d
            .submissions
            .iter()
            .find(|s| s.agreed == Some(true) && s.token_ids.as_ref() == Some(ids));
        Ok(Self {
            text: t.final_text.clone().unwrap_or_default(),
            token_ids: ids.clone(),
            finish_reason: finish_reason(ids, spec),
            logprobs: agreeing.and_then(|s| s.logprobs.clone()),
            token_ends: agreeing.and_then(|s| s.token_ends.clone()),
            prompt_tokens: agreeing.and_then(|s| s.input_tokens),
        })
    }
}

/// `stop` when the ids end on a stop id or before the bound (a stop string), `length` at it.
pub(crate) fn finish_reason(ids: &[u32], spec: &GenerationSpec) -> &'static str {
    let on_stop_id = ids.last().is_some_and(|id| spec.stop_ids.contains(id));
    if on_stop_id || ids.len() < spec.max_new_tokens as usize {
        "stop"
    } else {
        "length"
    }
}

/// `system_fingerprint`: the model content the answer was computed with.
pub(crate) fn fingerprint(d: &TaskDetail) -> Value {
    model_hash(d).map_or(Value::Null, |h| {
        json!(format!("sha256:{}", &h[..h.len().min(16)]))
    })
}

/// The model content the task pins.
fn model_hash(d: &TaskDetail) -> Option<&str> {
    d.task
        .generation
        .as_ref()
        .map(|s| s.model_hash.as_str())
        .or(d.task.model_hash.as_deref())
}

/// The whole `chat.completion` object.
///
/// # Errors
/// As [`Answer::of`].
pub(crate) fn completion(d: &TaskDetail, seen: &Seen, shape: &Shape) -> Result<Value, OaiError> {
    let a = Answer::of(d)?;
    Ok(json!({
        "id": format!("{}{}", super::chat::ID_PREFIX, d.task.id),
        "object": "chat.completion",
        "created": super::unix(d.task.created_at),
        "model": shape.model,
        "system_fingerprint": fingerprint(d),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": a.text, "refusal": null},
            "logprobs": if shape.logprobs { logprobs(&a) } else { Value::Null },
            "finish_reason": a.finish_reason,
        }],
        "usage": usage(d, &a, seen),
        "aimarket": evidence(d),
    }))
}

/// `usage`: the prompt's tokens as the agreeing answer says (or, from workers that do not say,
/// as their progress messages did: null when none was seen), and the verified ids' count.
pub(crate) fn usage(d: &TaskDetail, a: &Answer, seen: &Seen) -> Value {
    let agreeing = d
        .submissions
        .iter()
        .filter(|s| s.agreed == Some(true))
        .map(|s| s.worker_id.as_str());
    let prompt = a.prompt_tokens.or_else(|| seen.prompt_tokens_of(agreeing));
    let completion = a.token_ids.len() as u32;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.map_or(completion, |p| p + completion),
    })
}

/// OpenAI's `logprobs.content`: one entry per verified token, its text and bytes cut from the
/// answer's text where the agreeing worker said its tokens end (a token that ends inside a
/// character carries no bytes, the one that completes it all of them; a stop id none). From a
/// worker that does not say, `token` names the id (`id:N`) and `bytes` is null. `token_id` is
/// aimarket's own field. No alternatives are carried (`top_logprobs` empty): answers hold the
/// chosen tokens' log-probabilities only.
pub(crate) fn logprobs(a: &Answer) -> Value {
    let Some(lp) = &a.logprobs else {
        return Value::Null;
    };
    let pieces = a
        .token_ends
        .as_ref()
        .filter(|ends| ends.len() == a.token_ids.len())
        .and_then(|ends| token_texts(a.text.as_bytes(), ends));
    let content: Vec<Value> = a
        .token_ids
        .iter()
        .zip(lp)
        .enumerate()
        .map(|(i, (id, l))| {
            let (token, bytes) = match &pieces {
                Some(p) => (String::from_utf8_lossy(p[i]).into_owned(), json!(p[i])),
                None => (format!("id:{id}"), Value::Null),
            };
            json!({"token": token, "token_id": id, "logprob": l, "bytes": bytes, "top_logprobs": []})
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// The `aimarket` object: who stood behind the answer, and how it was checked.
pub(crate) fn evidence(d: &TaskDetail) -> Value {
    let t = &d.task;
    let spec = t.generation.as_ref();
    let agreeing: Vec<&str> = d
        .submissions
        .iter()
        .filter(|s| s.agreed == Some(true))
        .map(|s| s.worker_id.as_str())
        .collect();
    let final_ids = t.final_token_ids.as_ref();
    let verifiers: Vec<Value> = d
        .verifications
        .iter()
        .filter(|v| final_ids.is_none_or(|ids| *ids == v.token_ids))
        .map(|v| json!({"worker": v.worker_id, "passed": v.passed, "exact": v.exact, "max_gap": v.max_gap, "agreed": v.agreed}))
        .collect();
    let (decoding, temperature, seed) = match spec.map(|s| s.decoding) {
        Some(Decoding::Sample { temperature, seed }) => ("sample", Some(temperature), Some(seed)),
        _ => ("greedy", None, None),
    };
    json!({
        "task_id": t.id,
        "status": t.status,
        "verification": verification(d, agreeing.len(), verifiers.len()),
        "model": spec.map(|s| s.model.as_str()),
        "model_hash": model_hash(d),
        "decoding": decoding,
        "temperature": temperature,
        "seed": seed,
        "answers": d.submissions.len(),
        "agreeing_workers": agreeing,
        "verifiers": verifiers,
        "confidence": t.final_confidence,
        "finished_at": t.finished_at,
    })
}

/// `exact` (identical ids from a majority), `cross-scored` (a split scored by the others),
/// `generate-once` (one generator, scored by the others), or `single-answer` (one worker
/// asked, nobody checked it).
fn verification(d: &TaskDetail, agreeing: usize, verifiers: usize) -> &'static str {
    let mode = d.task.generation.as_ref().map(|s| s.verify);
    match mode {
        Some(VerifyMode::GenerateOnce) => "generate-once",
        _ if verifiers > 0 => "cross-scored",
        _ if agreeing < 2 => "single-answer",
        _ => "exact",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use protocol::generation::{resolve, SpecRequest};
    use protocol::messages::{SubmissionView, TaskView, VerificationView};
    use protocol::{TaskId, TaskType};

    fn spec(max: u32, verify: VerifyMode) -> GenerationSpec {
        let mut s = resolve(
            &TaskType::generate(),
            &SpecRequest {
                max_new_tokens: Some(max),
                ..SpecRequest::default()
            },
        )
        .expect("spec");
        s.verify = verify;
        s
    }

    /// A finalized generate task whose answer is `ids` ("Blue."), two of three agreeing.
    pub(crate) fn task(ids: &[u32], verify: VerifyMode) -> TaskDetail {
        let now = chrono::Utc::now();
        let sub = |w: &str, agreed| SubmissionView {
            worker_id: w.parse().expect("id"),
            label: None,
            embedding: None,
            text: Some("Blue.".into()),
            token_ids: Some(ids.to_vec()),
            confidence: 0.9,
            model: Some("smollm2/q4_1".into()),
            model_hash: None,
            agreed,
            logprobs: Some(vec![-0.5; ids.len()]),
            weight: None,
            token_ends: None,
            input_tokens: None,
            created_at: now,
        };
        let view: TaskView = serde_json::from_value(json!({
            "id": TaskId::new(), "type": "generate", "text": "[]", "status": "finalized",
            "final_label": null, "final_confidence": 0.9, "final_text": "Blue.",
            "final_token_ids": ids, "generation": spec(4, verify), "model_hash": "ab".repeat(32),
            "required_submissions": 3, "submissions": 3, "active_leases": 0, "attempts": 0,
            "max_attempts": 5, "reserved_by": null, "lease_expires_at": null,
            "error_message": null, "created_at": now, "finished_at": now
        }))
        .expect("a task view");
        TaskDetail {
            task: view,
            submissions: vec![
                sub("alice", Some(true)),
                sub("bob", Some(true)),
                sub("carol", Some(false)),
            ],
            leases: Vec::new(),
            verifications: Vec::new(),
            starved: None,
        }
    }

    #[test]
    fn finish_reasons_follow_how_the_ids_end() {
        let s = spec(4, VerifyMode::Exact);
        assert_eq!(finish_reason(&[5, 2], &s), "stop", "stop id");
        assert_eq!(finish_reason(&[5, 6], &s), "stop", "stop string");
        assert_eq!(finish_reason(&[5, 6, 7, 8], &s), "length");
    }

    #[test]
    fn a_completion_carries_the_verified_answer_its_usage_and_evidence() {
        let d = task(&[5, 6, 2], VerifyMode::Exact);
        let mut seen = Seen::default();
        seen.prompt_tokens.insert("bob".into(), 30);
        let shape = Shape {
            model: "smollm2".into(),
            logprobs: true,
        };
        let c = completion(&d, &seen, &shape).expect("final");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["id"], format!("chatcmpl-{}", d.task.id));
        assert_eq!(c["choices"][0]["message"]["content"], "Blue.");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33})
        );
        assert_eq!(
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
        assert_eq!(c["choices"][0]["logprobs"]["content"][1]["token_id"], 6);
        assert!(c["system_fingerprint"]
            .as_str()
            .is_some_and(|f| f == "sha256:b179c9523d0e6a0f"));
        let e = &c["aimarket"];
        assert_eq!(e["verification"], "exact");
        assert_eq!(e["agreeing_workers"], json!(["alice", "bob"]));
        assert_eq!(
            (e["answers"].as_u64(), e["decoding"].as_str()),
            (Some(3), Some("greedy"))
        );
        let plain = completion(
            &d,
            &Seen::default(),
            &Shape {
                logprobs: false,
                ..shape
            },
        )
        .expect("final");
        assert!(plain["choices"][0]["logprobs"].is_null());
        assert!(
            plain["usage"]["prompt_tokens"].is_null(),
            "unknown, not made up"
        );
    }

    #[test]
    fn tokens_read_as_the_agreeing_worker_cut_them_and_usage_is_its_count() {
        let mut d = task(&[5, 6, 2], VerifyMode::Exact);
        d.submissions[0].token_ends = Some(vec![4, 5, 5]);
        d.submissions[0].input_tokens = Some(41);
        let shape = Shape::fetched("smollm2");
        // Fetched later: no progress seen, the answer's own count.
        let c = completion(&d, &Seen::default(), &shape).expect("final");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44})
        );
        let content = &c["choices"][0]["logprobs"]["content"];
        let tokens: Vec<&str> = (0..3)
            .filter_map(|i| content[i]["token"].as_str())
            .collect();
        assert_eq!(tokens, ["Blue", ".", ""]);
        assert_eq!(content[0]["bytes"], json!([66, 108, 117, 101]));
        assert_eq!(content[2]["bytes"], json!([]));
        // Offsets that do not fit the text are not trusted: ids are named instead.
        d.submissions[0].token_ends = Some(vec![4, 9, 9]);
        let c = completion(&d, &Seen::default(), &shape).expect("final");
        let content = &c["choices"][0]["logprobs"]["content"];
        assert_eq!(
            (content[1]["token"].as_str(), &content[1]["bytes"]),
            (Some("id:6"), &Value::Null)
        );
    }

    #[test]
    fn the_evidence_names_each_verifier_of_the_final_answer() {
        let mut d = task(&[5, 6, 7, 8], VerifyMode::GenerateOnce);
        let v = |w: &str, ids: &[u32], passed| VerificationView {
            worker_id: w.parse().expect("id"),
            token_ids: ids.to_vec(),
            passed,
            max_gap: if passed { 0.0 } else { 3.5 },
            agreed: Some(true),
            exact: passed,
        };
        d.verifications = vec![v("dave", &[5, 6, 7, 8], true), v("erin", &[9], false)];
        let e = evidence(&d);
        assert_eq!(e["verification"], "generate-once");
        assert_eq!(
            e["verifiers"],
            json!([{"worker": "dave", "passed": true, "exact": true, "max_gap": 0.0, "agreed": true}])
        );
        d.task.generation = Some(spec(4, VerifyMode::Exact));
        assert_eq!(evidence(&d)["verification"], "cross-scored");
        assert_eq!(
            finish_reason(&[5, 6, 7, 8], &spec(4, VerifyMode::Exact)),
            "length"
        );
    }

    #[test]
    fn a_task_without_an_answer_is_a_502_naming_it() {
        let mut d = task(&[5, 2], VerifyMode::Exact);
        d.task.status = TaskStatus::Failed;
        d.task.error_message = Some("no consensus".into());
        let e = Answer::of(&d).expect_err("no answer");
        assert_eq!(e.status, axum::http::StatusCode::BAD_GATEWAY);
        assert!(e.message.contains(&d.task.id.to_string()) && e.message.contains("no consensus"));
    }
}
