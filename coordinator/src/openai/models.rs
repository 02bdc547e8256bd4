//! `GET /v1/models`: the generative and embedding models that live workers serve, with their
//! content hashes and live worker counts as extra fields.

use super::error::OaiError;
use super::OpenAi;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::messages::WorkerView;
use protocol::TaskType;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A model as `/v1/models` lists it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Served {
    created: i64,
    hashes: BTreeMap<String, u32>,
    workers: u32,
    capabilities: Vec<String>,
}

/// The name a live worker's model goes by here: a catalog name for a generative model whose
/// content is the catalog's (`smollm2`), else the worker's model id (`minilm`).
fn name_of(w: &WorkerView) -> Option<String> {
    let catalog = w.model_hash.as_deref().and_then(|h| {
        protocol::generation::CATALOG
            .iter()
            .find(|c| c.hash == Some(h))
            .map(|c| c.name.to_owned())
    });
    catalog.or_else(|| w.model.clone())
}

/// Whether a worker serves what `/v1` asks of models: chats or embeddings.
fn useful(w: &WorkerView) -> bool {
    w.capabilities.contains(&TaskType::generate())
        || w.capabilities.contains(&TaskType::embedding())
}

/// The names of the generative models live workers serve (for a 404's message).
pub(crate) fn generative_names(live: &[WorkerView]) -> Vec<String> {
    let mut names: Vec<String> = live
        .iter()
        .filter(|w| w.capabilities.contains(&TaskType::generate()))
        .filter_map(name_of)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The list, from the live workers.
fn list_of(live: &[WorkerView]) -> Value {
    let mut models: BTreeMap<String, Served> = BTreeMap::new();
    for w in live.iter().filter(|w| useful(w)) {
        let Some(name) = name_of(w) else { continue };
        let m = models.entry(name).or_default();
        let since = w.registered_at.timestamp();
        m.created = if m.workers == 0 {
            since
        } else {
            m.created.min(since)
        };
        m.workers += 1;
        if let Some(h) = &w.model_hash {
            *m.hashes.entry(h.clone()).or_default() += 1;
        }
        for c in &w.capabilities {
            if !m.capabilities.contains(&c.to_string()) {
                m.capabilities.push(c.to_string());
            }
        }
    }
    let data: Vec<Value> = models
        .into_iter()
        .map(|(id, m)| {
            json!({
                "id": id, "object": "model", "created": m.created, "owned_by": "aimarket",
                "workers": m.workers,
                "content_hashes": m.hashes.iter().map(|(h, n)| json!({"sha256": h, "workers": n})).collect::<Vec<_>>(),
                "capabilities": m.capabilities,
            })
        })
        .collect();
    json!({ "object": "list", "data": data })
}

/// `GET /v1/models`.
pub(super) async fn list(State(api): State<OpenAi>, headers: HeaderMap) -> Response {
    let run = async {
        api.authorize(&headers)?;
        Ok::<_, OaiError>(list_of(&api.live_workers().await?))
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::WorkerStatus;

    fn worker(id: &str, model: &str, hash: &str, caps: &[&str]) -> WorkerView {
        let now = chrono::Utc::now();
        WorkerView {
            worker_id: id.parse().expect("id"),
            status: WorkerStatus::Active,
            capabilities: caps.iter().map(|c| c.parse().expect("type")).collect(),
            model: Some(model.to_owned()),
            model_hash: Some(hash.to_owned()),
            last_seen: now,
            registered_at: now,
            active_leases: 0,
            traps_caught: 0,
            traps_missed: 0,
            gold: Default::default(),
            quarantine: None,
        }
    }

    #[test]
    fn models_are_grouped_by_name_with_hashes_and_worker_counts() {
        let smol = protocol::generation::SMOLLM2_HASH;
        let live = vec![
            worker("a", "smollm2/q4_1", smol, &["generate", "sentiment"]),
            worker("b", "smollm2/q4_1", smol, &["generate"]),
            worker("c", "minilm", &"c".repeat(64), &["embedding", "sentiment"]),
            worker("d", "lexicon/vader", &"d".repeat(64), &["sentiment"]),
        ];
        let v = list_of(&live);
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().expect("a list");
        let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(
            ids,
            vec!["minilm", "smollm2"],
            "sentiment-only models are left out"
        );
        assert_eq!(data[1]["workers"], 2);
        assert_eq!(
            data[1]["content_hashes"],
            json!([{"sha256": smol, "workers": 2}])
        );
        assert_eq!(data[1]["owned_by"], "aimarket");
        assert_eq!(generative_names(&live), vec!["smollm2".to_owned()]);
    }
}
