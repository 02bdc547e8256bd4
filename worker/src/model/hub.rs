//! Weights from the Hugging Face Hub, through hf-hub: the standard cache (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), shared with every other Hugging Face tool;
//! `HF_HUB_OFFLINE=1` honoured (the cache only, never the network); a progress bar while
//! downloading.

use super::transformer::FOLDER_FILES;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::path::PathBuf;

/// The Hub repository each transformer model loads from.
pub fn repo_of(model: &str) -> Option<&'static str> {
    match model {
        "distilbert-sst2" => Some("distilbert/distilbert-base-uncased-finetuned-sst-2-english"),
        "minilm" => Some("sentence-transformers/all-MiniLM-L6-v2"),
        "flan-t5" => Some("google/flan-t5-small"),
        "t5" => Some("google-t5/t5-small"),
        _ => None,
    }
}

/// Whether `HF_HUB_OFFLINE` forbids the network.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The Hub cache in use.
pub fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(dir.into()),
        None => Cache::from_env(),
    }
}

/// Weights could not be had from the Hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not cached, and the network is off limits.
    #[error(
        "{repo} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: pass \
         --model-dir DIR (a folder with config.json, model.safetensors and tokenizer.json), \
         unset HF_HUB_OFFLINE to download it, or use --model lexicon"
    )]
    Offline {
        /// The repository.
        repo: String,
        /// The cache looked in.
        cache: String,
    },
    /// The download failed.
    #[error(
        "downloading {file} of {repo} from the Hugging Face Hub failed ({source}): pass \
         --model-dir DIR, fill the cache ({cache}) on a machine with internet, or use \
         --model lexicon"
    )]
    Download {
        /// The repository.
        repo: String,
        /// The file.
        file: &'static str,
        /// Why.
        #[source]
        source: hf_hub::api::sync::ApiError,
        /// The cache it was downloading into.
        cache: String,
    },
}

/// The cached snapshot folder of `repo`, when it holds every file a model folder needs.
pub fn cached(repo: &str) -> Option<PathBuf> {
    let files = cache().model(repo.to_owned());
    let [config, weights, tokenizer, vocab] = FOLDER_FILES;
    let config = files.get(config)?;
    files.get(weights)?;
    files.get(tokenizer).or_else(|| files.get(vocab))?;
    config.parent().map(PathBuf::from)
}

/// The snapshot folder of `repo`: from the cache, else downloaded into it (unless offline).
///
/// # Errors
/// [`HubError`] naming the way out.
pub fn fetch(repo: &str) -> Result<PathBuf, HubError> {
    if let Some(dir) = cached(repo) {
        return Ok(dir);
    }
    let cache = cache();
    let cache_dir = cache.path().display().to_string();
    if offline() {
        return Err(HubError::Offline {
            repo: repo.to_owned(),
            cache: cache_dir,
        });
    }
    let fail = |file: &'static str, source: hf_hub::api::sync::ApiError| HubError::Download {
        repo: repo.to_owned(),
        file,
        source,
        cache: cache_dir.clone(),
    };
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.path().clone())
        .with_progress(true)
        .build()
        .map_err(|e| fail("anything", e))?;
    let files = api.repo(Repo::model(repo.to_owned()));
    tracing::info!(repo, cache = %cache_dir, "downloading model weights");
    let [config, weights, tokenizer, vocab] = FOLDER_FILES;
    let dir = files.get(config).map_err(|e| fail(config, e))?;
    files.get(weights).map_err(|e| fail(weights, e))?;
    if let Err(e) = files.get(tokenizer) {
        // Older BERT-family uploads have only vocab.txt; without either, the tokenizer's error.
        files.get(vocab).map_err(|_| fail(tokenizer, e))?;
    }
    Ok(dir.parent().map(PathBuf::from).unwrap_or(dir))
}

/// An opus-mt model's folder (`Helsinki-NLP/<name>`): its config, SentencePiece files, vocabulary
/// and weights (`model.safetensors`, else `pytorch_model.bin`), from the cache or downloaded.
///
/// # Errors
/// [`HubError`] naming the file and the way out.
pub fn fetch_opus(name: &str) -> Result<PathBuf, HubError> {
    let repo = format!("Helsinki-NLP/{name}");
    let cache = cache();
    let cache_dir = cache.path().display().to_string();
    let cached = cache.repo(Repo::model(repo.clone()));
    let have = |f: &str| cached.get(f);
    if let (Some(config), true) = (
        have("config.json"),
        super::opus::FILES.iter().all(|f| have(f).is_some())
            && super::opus::WEIGHTS.iter().any(|w| have(w).is_some()),
    ) {
        return Ok(config.parent().map(PathBuf::from).unwrap_or(config));
    }
    if offline() {
        return Err(HubError::Offline {
            repo,
            cache: cache_dir,
        });
    }
    let fail = |file: &'static str, source: hf_hub::api::sync::ApiError| HubError::Download {
        repo: repo.clone(),
        file,
        source,
        cache: cache_dir.clone(),
    };
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.path().clone())
        .with_progress(true)
        .build()
        .map_err(|e| fail("anything", e))?;
    let files = api.repo(Repo::model(repo.clone()));
    tracing::info!(repo, cache = %cache_dir, "downloading model weights");
    let mut dir = None;
    for f in super::opus::FILES {
        let path = files.get(f).map_err(|e| fail(f, e))?;
        dir = path.parent().map(PathBuf::from);
    }
    let [safetensors, bin] = super::opus::WEIGHTS;
    if let Err(e) = files.get(safetensors) {
        files.get(bin).map_err(|_| fail(safetensors, e))?;
    }
    Ok(dir.expect("a file was fetched"))
}
