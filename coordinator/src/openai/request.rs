//! The fields of OpenAI's requests that aimarket honours, read from the JSON one by one so that
//! each refusal names its field (`param`). Unknown fields are ignored, as OpenAI does; wrong
//! types and out-of-range values are a 400.

use super::error::OaiError;
use protocol::chat::{ChatMessage, Role};
use protocol::generation::{VerifyMode, MAX_NEW_TOKENS};
use serde_json::{Map, Value};
use std::time::Duration;

/// The longest wait a request may ask for.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The most alternatives per token OpenAI lets a request ask for.
const MAX_TOP_LOGPROBS: u64 = 20;
/// OpenAI's temperature range.
const MAX_OPENAI_TEMPERATURE: f64 = 2.0;

/// aimarket's own request fields, in the `aimarket` extension object (the Python client's
/// `extra_body`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Extension {
    /// How long to wait for the task to be final (the coordinator's setting when absent).
    pub(crate) timeout: Option<Duration>,
    /// Stream the first generator's tokens as they come, before verification.
    pub(crate) optimistic: bool,
    /// How the answer is verified (the coordinator's default when absent).
    pub(crate) verify: Option<VerifyMode>,
    /// Distinct workers that must answer (3 when absent).
    pub(crate) required: Option<u32>,
}

/// A chat completion request, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) max_tokens: Option<u32>,
    /// `None`: greedy (absent or 0).
    pub(crate) temperature: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) stop: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: u32,
    pub(crate) user: Option<String>,
    pub(crate) ext: Extension,
}

/// A legacy completion request (`/v1/completions`), checked: one prompt, fed to the model as it
/// is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: String,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) stop: Vec<String>,
    pub(crate) logprobs: bool,
    pub(crate) user: Option<String>,
    pub(crate) ext: Extension,
}

/// An embeddings request, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EmbeddingsRequest {
    pub(crate) model: String,
    pub(crate) inputs: Vec<String>,
    pub(crate) base64: bool,
    pub(crate) ext: Extension,
}

/// The body as a JSON object.
///
/// # Errors
/// 400 when it is not one.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, OaiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OaiError::bad("body", "the body must be a JSON object")),
        Err(e) => Err(OaiError::bad("body", format!("the body is not JSON: {e}"))),
    }
}

/// Reads the fields of a chat completion request.
///
/// # Errors
/// 400 naming the first field of the wrong type or out of range.
pub(crate) fn chat(m: &Map<String, Value>) -> Result<ChatRequest, OaiError> {
    let model = string(m, "model")?.ok_or_else(|| OaiError::bad("model", "model is required"))?;
    let messages = messages(m)?;
    let max_tokens = match uint(m, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => uint(m, "max_tokens")?,
    };
    let max_tokens = max_tokens
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_NEW_TOKENS).contains(n))
                .ok_or_else(|| {
                    OaiError::bad(
                        "max_tokens",
                        format!("max_tokens is {n}: it must be between 1 and {MAX_NEW_TOKENS}"),
                    )
                })
        })
        .transpose()?;
    let n = uint(m, "n")?;
    if n.is_some_and(|n| n != 1) {
        return Err(OaiError::bad(
            "n",
            "n must be 1: each choice is one verified task (send more requests for more)",
        ));
    }
    let (logprobs, top_logprobs) = logprobs(m)?;
    let stream = boolean(m, "stream")?.unwrap_or(false);
    let include_usage = stream_options(m, stream)?;
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        temperature: temperature(m)?,
        seed: uint(m, "seed")?,
        stop: stop(m)?,
        stream,
        include_usage,
        logprobs,
        top_logprobs,
        user: string(m, "user")?,
        ext: extension(m)?,
    })
}

/// Reads the fields of a legacy completion request. OpenAI's default `max_tokens` there is 16.
///
/// # Errors
/// 400 naming the first field of the wrong type or out of range, or one not taken (`stream`,
/// `echo`, `suffix`, `best_of`, several prompts).
pub(crate) fn completion(m: &Map<String, Value>) -> Result<CompletionRequest, OaiError> {
    let model = string(m, "model")?.ok_or_else(|| OaiError::bad("model", "model is required"))?;
    let prompt = match m.get("prompt") {
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(OaiError::bad(
                "prompt",
                "prompt must be one non-empty string (one prompt a request)",
            ))
        }
    };
    for (field, why) in [
        ("stream", "stream /v1/chat/completions instead"),
        ("echo", "echo is not taken"),
        ("suffix", "suffix is not taken"),
    ] {
        if m.get(field)
            .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
        {
            return Err(OaiError::bad(field, why));
        }
    }
    if uint(m, "n")?.is_some_and(|n| n != 1) || uint(m, "best_of")?.is_some_and(|n| n != 1) {
        return Err(OaiError::bad("n", "n and best_of must be 1"));
    }
    let max_tokens = match uint(m, "max_tokens")? {
        None => 16,
        Some(n) if (1..=u64::from(MAX_NEW_TOKENS)).contains(&n) => n as u32,
        Some(n) => {
            return Err(OaiError::bad(
                "max_tokens",
                format!("max_tokens is {n}: it must be between 1 and {MAX_NEW_TOKENS}"),
            ))
        }
    };
    Ok(CompletionRequest {
        model,
        prompt,
        max_tokens: Some(max_tokens),
        temperature: temperature(m)?,
        seed: uint(m, "seed")?,
        stop: stop(m)?,
        logprobs: uint(m, "logprobs")?.is_some(),
        user: string(m, "user")?,
        ext: extension(m)?,
    })
}

/// Reads the fields of an embeddings request.
///
/// # Errors
/// 400 naming the first field of the wrong type or out of range.
pub(crate) fn embeddings(m: &Map<String, Value>) -> Result<EmbeddingsRequest, OaiError> {
    let model = string(m, "model")?.ok_or_else(|| OaiError::bad("model", "model is required"))?;
    let inputs = match m.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    OaiError::bad(
                        "input",
                        "input must be a string or a list of strings (token arrays are not taken)",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(OaiError::bad("input", "input is an empty list")),
        None | Some(Value::Null) => return Err(OaiError::bad("input", "input is required")),
        Some(_) => {
            return Err(OaiError::bad(
                "input",
                "input must be a string or a list of strings",
            ))
        }
    };
    if inputs.iter().any(String::is_empty) {
        return Err(OaiError::bad("input", "an input is empty"));
    }
    let base64 = match string(m, "encoding_format")?.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OaiError::bad(
                "encoding_format",
                format!("encoding_format {other:?} is not float or base64"),
            ))
        }
    };
    if m.get("dimensions").is_some_and(|v| !v.is_null()) {
        return Err(OaiError::bad(
            "dimensions",
            "dimensions is not taken: the vector is the model's, as its workers agreed on it",
        ));
    }
    Ok(EmbeddingsRequest {
        model,
        inputs,
        base64,
        ext: extension(m)?,
    })
}

/// `messages`: system (or developer), user and assistant turns; string content or a list of
/// text parts.
fn messages(m: &Map<String, Value>) -> Result<Vec<ChatMessage>, OaiError> {
    let Some(Value::Array(items)) = m.get("messages") else {
        return Err(OaiError::bad(
            "messages",
            "messages must be a list of turns",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(turn) = item else {
            return Err(OaiError::bad(&param, "a message must be an object"));
        };
        let role = match turn.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(OaiError::bad(
                    &format!("{param}.role"),
                    format!("role {other:?} is not one of system, developer, user, assistant"),
                ))
            }
            None => return Err(OaiError::bad(&format!("{param}.role"), "role is required")),
        };
        out.push(ChatMessage::new(role, content(turn, &param)?));
    }
    protocol::chat::validate(&out).map_err(|e| OaiError::bad("messages", e.to_string()))?;
    Ok(out)
}

/// A turn's content: a string, or text parts joined.
fn content(turn: &Map<String, Value>, param: &str) -> Result<String, OaiError> {
    let param = format!("{param}.content");
    match turn.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(OaiError::bad(
                            &param,
                            format!("content parts of type {kind:?} are not taken: text only"),
                        ))
                    }
                    _ => return Err(OaiError::bad(&param, "a text part needs its text")),
                }
            }
            Ok(text)
        }
        _ => Err(OaiError::bad(
            &param,
            "content must be a string or a list of text parts",
        )),
    }
}

fn temperature(m: &Map<String, Value>) -> Result<Option<f32>, OaiError> {
    let Some(t) = number(m, "temperature")? else {
        return Ok(None);
    };
    if !(0.0..=MAX_OPENAI_TEMPERATURE).contains(&t) {
        return Err(OaiError::bad(
            "temperature",
            format!("temperature {t} is not between 0 and {MAX_OPENAI_TEMPERATURE}"),
        ));
    }
    Ok((t > 0.0).then_some(t as f32))
}

fn stop(m: &Map<String, Value>) -> Result<Vec<String>, OaiError> {
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| OaiError::bad("stop", "stop must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(OaiError::bad(
                "stop",
                "stop must be a string or a list of up to 4 strings",
            ))
        }
    };
    protocol::chat::validate_stop(&stop).map_err(|e| OaiError::bad("stop", e.to_string()))?;
    Ok(stop)
}

fn logprobs(m: &Map<String, Value>) -> Result<(bool, u32), OaiError> {
    let on = boolean(m, "logprobs")?.unwrap_or(false);
    let top = uint(m, "top_logprobs")?.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(OaiError::bad(
            "top_logprobs",
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    if top > 0 && !on {
        return Err(OaiError::bad(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    Ok((on, top as u32))
}

fn stream_options(m: &Map<String, Value>, stream: bool) -> Result<bool, OaiError> {
    match m.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(o)) if stream => match o.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(OaiError::bad(
                "stream_options.include_usage",
                "include_usage must be a boolean",
            )),
        },
        Some(Value::Object(_)) => Err(OaiError::bad(
            "stream_options",
            "stream_options is only taken with stream: true",
        )),
        Some(_) => Err(OaiError::bad(
            "stream_options",
            "stream_options must be an object",
        )),
    }
}

/// The `aimarket` extension object.
fn extension(m: &Map<String, Value>) -> Result<Extension, OaiError> {
    let ext = match m.get("aimarket") {
        None | Some(Value::Null) => return Ok(Extension::default()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(OaiError::bad("aimarket", "aimarket must be an object")),
    };
    let timeout = number(ext, "timeout_seconds")?
        .map(|s| {
            if s > 0.0 && s <= MAX_WAIT.as_secs_f64() {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(OaiError::bad(
                    "aimarket.timeout_seconds",
                    format!("timeout_seconds must be in (0, {}]", MAX_WAIT.as_secs()),
                ))
            }
        })
        .transpose()?;
    let optimistic = match string(ext, "stream_mode")?.as_deref() {
        None | Some("verified") => false,
        Some("optimistic") => true,
        Some(other) => {
            return Err(OaiError::bad(
                "aimarket.stream_mode",
                format!("stream_mode {other:?} is not verified or optimistic"),
            ))
        }
    };
    let verify = string(ext, "verify")?
        .map(|v| v.parse::<VerifyMode>())
        .transpose()
        .map_err(|e| OaiError::bad("aimarket.verify", e.to_string()))?;
    let required = uint(ext, "required")?
        .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
        .filter(|r| *r > 0);
    Ok(Extension {
        timeout,
        optimistic,
        verify,
        required,
    })
}

fn string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, OaiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(OaiError::bad(key, format!("{key} must be a string"))),
    }
}

fn boolean(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, OaiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(OaiError::bad(key, format!("{key} must be a boolean"))),
    }
}

fn uint(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, OaiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| OaiError::bad(key, format!("{key} must be a non-negative integer"))),
    }
}

fn number(m: &Map<String, Value>, key: &str) -> Result<Option<f64>, OaiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| OaiError::bad(key, format!("{key} must be a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, OaiError> {
        chat(v.as_object().expect("an object"))
    }

    fn base() -> Value {
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn refused(v: Value) -> String {
        let e = parse(v).expect_err("refused");
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        e.param.expect("names its field")
    }

    #[test]
    fn the_defaults_are_greedy_one_choice_unstreamed() {
        let r = parse(with("frobnicate", json!(1))).expect("unknown fields are ignored");
        assert_eq!(r.model, "smollm2");
        assert_eq!(r.messages, vec![ChatMessage::new(Role::User, "Hi")]);
        assert_eq!((r.max_tokens, r.temperature, r.seed), (None, None, None));
        assert!(!r.stream && !r.include_usage && !r.logprobs && r.stop.is_empty());
        assert_eq!(r.ext, Extension::default());
    }

    #[test]
    fn every_field_is_read() {
        let r = parse(json!({
            "model": "smollm2",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}
            ],
            "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "seed": 42,
            "stop": ["\n", "."], "n": 1, "stream": true, "stream_options": {"include_usage": true},
            "logprobs": true, "top_logprobs": 2, "user": "u1",
            "aimarket": {"timeout_seconds": 2.5, "stream_mode": "optimistic", "verify": "generate-once", "required": 2}
        }))
        .expect("valid");
        assert_eq!(r.messages[0], ChatMessage::new(Role::System, "Be brief."));
        assert_eq!(r.messages[1].content, "Hi there");
        assert_eq!(r.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!((r.temperature, r.seed), (Some(0.5), Some(42)));
        assert_eq!(r.stop, vec!["\n".to_owned(), ".".to_owned()]);
        assert!(r.stream && r.include_usage && r.logprobs);
        assert_eq!((r.top_logprobs, r.user.as_deref()), (2, Some("u1")));
        assert_eq!(r.ext.timeout, Some(Duration::from_millis(2500)));
        assert!(r.ext.optimistic);
        assert_eq!(r.ext.verify, Some(VerifyMode::GenerateOnce));
        assert_eq!(r.ext.required, Some(2));
        let zero = parse(with("temperature", json!(0))).expect("valid");
        assert_eq!(zero.temperature, None, "0 is greedy");
        let one = parse(with("stop", json!("END"))).expect("valid");
        assert_eq!(one.stop, vec!["END".to_owned()]);
        assert_eq!(
            parse(with("max_tokens", json!(512)))
                .expect("valid")
                .max_tokens,
            Some(512)
        );
    }

    #[test]
    fn wrong_types_and_ranges_are_refused_naming_the_field() {
        assert_eq!(refused(json!({"messages": []})), "model");
        assert_eq!(refused(with("messages", json!([]))), "messages");
        assert_eq!(refused(with("messages", json!("hi"))), "messages");
        assert_eq!(
            refused(with("messages", json!([{"role": "robot", "content": "x"}]))),
            "messages[0].role"
        );
        assert_eq!(
            refused(with("messages", json!([{"role": "user", "content": 5}]))),
            "messages[0].content"
        );
        assert_eq!(
            refused(with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url"}]}])
            )),
            "messages[0].content"
        );
        assert_eq!(
            refused(with(
                "messages",
                json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
            )),
            "messages"
        );
        for (k, v) in [
            ("max_tokens", json!(0)),
            ("max_tokens", json!(513)),
            ("max_tokens", json!("ten")),
            ("max_completion_tokens", json!(-1)),
            ("temperature", json!(2.5)),
            ("temperature", json!("hot")),
            ("seed", json!(-3)),
            ("stop", json!(["a", "b", "c", "d", "e"])),
            ("stop", json!(7)),
            ("n", json!(2)),
            ("stream", json!("yes")),
            ("logprobs", json!(1)),
            ("top_logprobs", json!(21)),
            ("user", json!(5)),
            ("aimarket", json!(3)),
        ] {
            let param = refused(with(k, v.clone()));
            assert!(param.starts_with(k), "{k}={v} named {param}");
        }
        assert_eq!(refused(with("top_logprobs", json!(2))), "top_logprobs");
        assert_eq!(
            refused(with("stream_options", json!({"include_usage": true}))),
            "stream_options"
        );
        assert_eq!(
            refused(with("aimarket", json!({"stream_mode": "eager"}))),
            "aimarket.stream_mode"
        );
        assert_eq!(
            refused(with("aimarket", json!({"timeout_seconds": 0}))),
            "aimarket.timeout_seconds"
        );
    }

    #[test]
    fn a_legacy_completion_takes_one_prompt_and_defaults_to_16_tokens() {
        let c = |v: Value| completion(v.as_object().expect("object"));
        let one = c(json!({"model": "smollm2", "prompt": "Once", "stop": "\n", "logprobs": 0}))
            .expect("valid");
        assert_eq!((one.prompt.as_str(), one.max_tokens), ("Once", Some(16)));
        assert_eq!(one.stop, vec!["\n".to_owned()]);
        assert!(one.logprobs);
        let listed =
            c(json!({"model": "smollm2", "prompt": ["Once"], "max_tokens": 4})).expect("valid");
        assert_eq!(
            (listed.prompt.as_str(), listed.max_tokens),
            ("Once", Some(4))
        );
        for (bad, param) in [
            (json!({"model": "smollm2"}), "prompt"),
            (json!({"model": "smollm2", "prompt": ["a", "b"]}), "prompt"),
            (
                json!({"model": "smollm2", "prompt": "a", "stream": true}),
                "stream",
            ),
            (
                json!({"model": "smollm2", "prompt": "a", "echo": true}),
                "echo",
            ),
            (json!({"model": "smollm2", "prompt": "a", "n": 2}), "n"),
            (
                json!({"model": "smollm2", "prompt": "a", "max_tokens": 0}),
                "max_tokens",
            ),
        ] {
            let e = c(bad.clone()).expect_err("refused");
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn embeddings_take_a_string_or_strings_as_floats_or_base64() {
        let e = |v: Value| embeddings(v.as_object().expect("object"));
        let one = e(json!({"model": "minilm", "input": "hi"})).expect("valid");
        assert_eq!((one.inputs, one.base64), (vec!["hi".to_owned()], false));
        let many = e(json!({"model": "minilm", "input": ["a", "b"], "encoding_format": "base64"}))
            .expect("valid");
        assert_eq!((many.inputs.len(), many.base64), (2, true));
        for bad in [
            json!({"input": "x"}),
            json!({"model": "minilm"}),
            json!({"model": "minilm", "input": []}),
            json!({"model": "minilm", "input": [[1, 2]]}),
            json!({"model": "minilm", "input": ""}),
            json!({"model": "minilm", "input": "x", "encoding_format": "hex"}),
            json!({"model": "minilm", "input": "x", "dimensions": 8}),
        ] {
            assert!(e(bad.clone()).is_err(), "{bad} passed");
        }
    }
}
