//! Loading a model by name: the catalog of what `--model` accepts, one loader for the encoder
//! models (DistilBERT, MiniLM), one for the seq2seq ones (T5, Marian), and the generative
//! engine's GGUF models.

use super::interface::Model;
use super::{chat, distilbert, hub, kernel, lexicon, minilm, opus, seq2seq, t5, transformer};

/// The models `--model` accepts.
pub const KNOWN: &[&str] = &[
    "auto",
    "lexicon",
    "distilbert-sst2",
    "minilm",
    "smollm2",
    "flan-t5",
    "t5",
    "opus-mt-SRC-TGT",
    "gguf:PATH",
];

/// `--model gguf:PATH`: any llama- or qwen2-architecture chat model from its GGUF file.
pub const GGUF_PREFIX: &str = "gguf:";

/// The transformer `auto` prefers: the original's model.
pub const AUTO_PREFERS: &str = "distilbert-sst2";

/// Loads a model by name. Transformer models read their weights from `dir` (Hugging Face
/// layout: `config.json`, `model.safetensors`, `tokenizer.json` or `vocab.txt`), or without one
/// from the Hugging Face cache, downloading them there first unless `HF_HUB_OFFLINE` is set.
///
/// `auto` is [`AUTO_PREFERS`] when its weights are in `dir`, cached or downloadable, else the
/// lexicon; it logs which one it chose and why. `smollm2` needs `dir`: the folder holding its
/// GGUF file (or the file). `gguf:PATH` loads any llama- or qwen2-architecture chat GGUF file.
///
/// Blocking: it may download. Call it off the async runtime.
///
/// # Errors
/// [`LoadModelError`] naming the way out.
pub fn load(name: &str, dir: Option<&std::path::Path>) -> Result<Box<dyn Model>, LoadModelError> {
    load_with(name, dir, &kernel::EngineConfig::default())
}

/// As [`load`], the generative engine's threads and kernel path taken from `engine`
/// (`--threads`, `--kernel`); models without that engine ignore it.
///
/// # Errors
/// [`LoadModelError`] naming the way out.
pub fn load_with(
    name: &str,
    dir: Option<&std::path::Path>,
    engine: &kernel::EngineConfig,
) -> Result<Box<dyn Model>, LoadModelError> {
    match name {
        "lexicon" => Ok(Box::new(lexicon::Lexicon::new())),
        // A folder given by hand must load: only the Hub's absence falls back.
        "auto" if dir.is_some() => load_with(AUTO_PREFERS, dir, engine),
        "auto" => Ok(match load(AUTO_PREFERS, None) {
            Ok(model) => {
                tracing::info!(
                    model = model.id(),
                    "auto: using the transformer, its weights are at hand"
                );
                model
            }
            Err(e) => {
                tracing::warn!(reason = %e, "auto: using the lexicon, {AUTO_PREFERS} cannot be loaded");
                Box::new(lexicon::Lexicon::new())
            }
        }),
        "distilbert-sst2" | "minilm" => load_encoder(name, dir),
        name if opus::languages(name).is_some() || matches!(name, "flan-t5" | "t5") => {
            load_seq2seq(name, dir)
        }
        name if name.starts_with(GGUF_PREFIX) => Ok(Box::new(chat::ChatModel::load_gguf(
            std::path::Path::new(&name[GGUF_PREFIX.len()..]),
            engine,
        )?)),
        chat::NAME => Ok(Box::new(chat::ChatModel::load_with(
            dir.ok_or(chat::ChatLoadError::NoDir)?,
            engine,
        )?)),
        other => Err(LoadModelError::Unknown(other.to_owned())),
    }
}

/// An encoder model (`distilbert-sst2`, `minilm`) from `dir`, or from the Hub's cache.
fn load_encoder(
    name: &str,
    dir: Option<&std::path::Path>,
) -> Result<Box<dyn Model>, LoadModelError> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => hub::fetch(hub::repo_of(name).expect("a hub model"))?,
    };
    Ok(if name == "minilm" {
        Box::new(minilm::MiniLm::load(&dir)?)
    } else {
        Box::new(distilbert::Sst2::load(&dir)?)
    })
}

/// A seq2seq model (`flan-t5`, `t5`, `opus-mt-SRC-TGT`) from `dir`, or from the Hub's cache.
fn load_seq2seq(
    name: &str,
    dir: Option<&std::path::Path>,
) -> Result<Box<dyn Model>, LoadModelError> {
    if opus::languages(name).is_some() {
        let dir = match dir {
            Some(dir) => dir.to_owned(),
            None => hub::fetch_opus(name)?,
        };
        return Ok(Box::new(opus::OpusModel::load(name, &dir)?));
    }
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => hub::fetch(hub::repo_of(name).expect("a hub model"))?,
    };
    Ok(Box::new(t5::T5Model::load(name, &dir)?))
}

/// A model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// `--model` named a model this build does not have.
    #[error("unknown model {0:?}; known models: {known}", known = KNOWN.join(", "))]
    Unknown(String),
    /// The weights are neither given nor to be had from the Hub.
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    /// The weights folder is incomplete or unreadable.
    #[error(transparent)]
    Folder(#[from] transformer::LoadError),
    /// A GGUF chat model could not be loaded.
    #[error(transparent)]
    Chat(#[from] chat::ChatLoadError),
    /// A T5 model folder could not be loaded.
    #[error(transparent)]
    T5(#[from] seq2seq::FolderError),
}
