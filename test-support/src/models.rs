//! Model folders made on the spot: a DistilBERT sequence classifier with random weights under
//! Hugging Face's tensor names, its `config.json`, and a WordPiece tokenizer, so model code runs
//! through exactly the path real weights take, with no download.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The sizes of a DistilBERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistilBertShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size (`dim`).
    pub dim: usize,
    /// Feed-forward size (`hidden_dim`).
    pub hidden: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Positions (`max_position_embeddings`).
    pub positions: usize,
}

impl DistilBertShape {
    /// The size of distilbert-base-uncased-finetuned-sst-2-english (66M parameters).
    pub const BASE: Self = Self {
        vocab: 30522,
        dim: 768,
        hidden: 3072,
        layers: 6,
        heads: 12,
        positions: 512,
    };
}

/// Tensors by name: shape and row-major data.
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn shapes(s: DistilBertShape) -> Vec<(String, Vec<usize>)> {
    let (v, d, h, p) = (s.vocab, s.dim, s.hidden, s.positions);
    let mut t = vec![
        (
            "distilbert.embeddings.word_embeddings.weight".to_owned(),
            vec![v, d],
        ),
        (
            "distilbert.embeddings.position_embeddings.weight".to_owned(),
            vec![p, d],
        ),
        ("distilbert.embeddings.LayerNorm.weight".to_owned(), vec![d]),
        ("distilbert.embeddings.LayerNorm.bias".to_owned(), vec![d]),
        ("pre_classifier.weight".to_owned(), vec![d, d]),
        ("pre_classifier.bias".to_owned(), vec![d]),
        ("classifier.weight".to_owned(), vec![2, d]),
        ("classifier.bias".to_owned(), vec![2]),
    ];
    for i in 0..s.layers {
        let l = format!("distilbert.transformer.layer.{i}");
        for lin in ["q_lin", "k_lin", "v_lin", "out_lin"] {
            t.push((format!("{l}.attention.{lin}.weight"), vec![d, d]));
            t.push((format!("{l}.attention.{lin}.bias"), vec![d]));
        }
        for norm in ["sa_layer_norm", "output_layer_norm"] {
            t.push((format!("{l}.{norm}.weight"), vec![d]));
            t.push((format!("{l}.{norm}.bias"), vec![d]));
        }
        t.push((format!("{l}.ffn.lin1.weight"), vec![h, d]));
        t.push((format!("{l}.ffn.lin1.bias"), vec![h]));
        t.push((format!("{l}.ffn.lin2.weight"), vec![d, h]));
        t.push((format!("{l}.ffn.lin2.bias"), vec![d]));
    }
    t
}

/// Writes `model.safetensors` and `config.json` of a DistilBERT classifier with random weights
/// (uniform in ±`scale`, layer-norm gains near 1) into `dir`; returns the weights.
///
/// # Panics
/// When the files cannot be written.
pub fn write_distilbert(dir: &Path, shape: DistilBertShape, scale: f32, seed: u64) -> Weights {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut weights = Weights::new();
    let mut tensors = HashMap::new();
    for (name, dims) in shapes(shape) {
        let n: usize = dims.iter().product();
        let gain = name.ends_with("norm.weight") || name.ends_with("LayerNorm.weight");
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let r = (rng.f32() * 2.0 - 1.0) * scale;
                if gain {
                    1.0 + r / 4.0
                } else {
                    r
                }
            })
            .collect();
        tensors.insert(
            name.clone(),
            Tensor::from_vec(data.clone(), dims.as_slice(), &Device::Cpu).expect("tensor"),
        );
        weights.insert(name, (dims, data));
    }
    std::fs::create_dir_all(dir).expect("model folder");
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save weights");
    let config = serde_json::json!({
        "model_type": "distilbert",
        "vocab_size": shape.vocab, "dim": shape.dim, "n_layers": shape.layers,
        "n_heads": shape.heads, "hidden_dim": shape.hidden,
        "max_position_embeddings": shape.positions, "activation": "gelu", "pad_token_id": 0,
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    weights
}

/// Writes `vocab.txt` and a BERT-uncased WordPiece `tokenizer.json` over `vocab` into `dir`.
/// `[PAD]`, `[UNK]`, `[CLS]` and `[SEP]` must be in `vocab`.
///
/// # Panics
/// When the files cannot be written or a special token is missing.
pub fn write_wordpiece_tokenizer(dir: &Path, vocab: &[&str]) -> PathBuf {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    let id = |t: &str| vocab.iter().position(|v| *v == t).expect("special token") as u32;
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab.join("\n")).expect("vocab");
    let wp = WordPiece::from_file(vocab_file.to_str().expect("utf8 path"))
        .unk_token("[UNK]".into())
        .build()
        .expect("wordpiece");
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::default()))
        .expect("a BERT normalizer");
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .expect("template")
            .special_tokens(vec![("[CLS]", id("[CLS]")), ("[SEP]", id("[SEP]"))])
            .build()
            .expect("processor"),
    ));
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).expect("save tokenizer");
    path
}

/// Lays a model folder out as the Hugging Face cache does, under `hf_home/hub`, so hub-aware code
/// finds it offline: `models--{org}--{name}/snapshots/{rev}/` plus `refs/main`.
///
/// # Panics
/// When the files cannot be copied.
pub fn cache_model(hf_home: &Path, repo: &str, folder: &Path) -> PathBuf {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let root = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).expect("snapshot folder");
    std::fs::create_dir_all(root.join("refs")).expect("refs folder");
    std::fs::write(root.join("refs").join("main"), rev).expect("ref");
    for entry in std::fs::read_dir(folder).expect("model folder") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, snapshot.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    snapshot
}
