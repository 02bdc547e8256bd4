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

/// The files a model folder needs: all of `all`, and from each group of `one_of` the first the
/// repository has.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Files it must have.
    pub all: &'static [&'static str],
    /// Groups of alternatives (older uploads, other weight formats).
    pub one_of: &'static [&'static [&'static str]],
}

/// A transformer folder: config and weights, and `tokenizer.json` or (older BERT-family uploads)
/// `vocab.txt`.
pub const TRANSFORMER: Needs = Needs {
    all: &[FOLDER_FILES[0], FOLDER_FILES[1]],
    one_of: &[&[FOLDER_FILES[2], FOLDER_FILES[3]]],
};

/// The cached snapshot folder of `repo`, when it holds every file a transformer folder needs.
pub fn cached(repo: &str) -> Option<PathBuf> {
    cached_with(repo, &TRANSFORMER)
}

/// The cached snapshot folder of `repo`, when it holds what `needs` names.
pub fn cached_with(repo: &str, needs: &Needs) -> Option<PathBuf> {
    let files = cache().model(repo.to_owned());
    let mut dir = None;
    for f in needs.all {
        dir = Some(files.get(f)?);
    }
    for group in needs.one_of {
        group.iter().find_map(|f| files.get(f))?;
    }
    dir?.parent().map(PathBuf::from)
}

/// The snapshot folder of transformer `repo`: from the cache, else downloaded into it (unless
/// offline).
///
/// # Errors
/// [`HubError`] naming the way out.
pub fn fetch(repo: &str) -> Result<PathBuf, HubError> {
    fetch_with(repo, &TRANSFORMER)
}

/// The snapshot folder of `repo` holding what `needs` names: from the cache, else downloaded
/// into it (unless offline), with a progress bar.
///
/// # Errors
/// [`HubError`] naming the way out.
pub fn fetch_with(repo: &str, needs: &Needs) -> Result<PathBuf, HubError> {
    if let Some(dir) = cached_with(repo, needs) {
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
    let mut dir = None;
    for f in needs.all {
        let path = files.get(f).map_err(|e| fail(f, e))?;
        dir = path.parent().map(PathBuf::from);
    }
    for group in needs.one_of {
        // Without any of the group, the first one's error.
        let mut first = None;
        if !group.iter().any(|f| match files.get(f) {
            Ok(_) => true,
            Err(e) => {
                first.get_or_insert((*f, e));
                false
            }
        }) {
            let (f, e) = first.expect("a group names a file");
            return Err(fail(f, e));
        }
    }
    Ok(dir.expect("a folder names at least one file it needs"))
}

/// An opus-mt folder: its config, SentencePiece files and vocabulary, and its weights as
/// `model.safetensors` or `pytorch_model.bin`.
pub const OPUS: Needs = Needs {
    all: &super::opus::FILES,
    one_of: &[&super::opus::WEIGHTS],
};

/// The folder of opus-mt model `name` (`Helsinki-NLP/<name>`), cached or downloaded.
///
/// # Errors
/// [`HubError`] naming the way out.
pub fn fetch_opus(name: &str) -> Result<PathBuf, HubError> {
    fetch_with(&format!("Helsinki-NLP/{name}"), &OPUS)
}
