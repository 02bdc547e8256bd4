//! A tiny T5 made on the spot: random weights under Hugging Face's tensor names as
//! `model.safetensors`, its `config.json`, and a T5-style Unigram `tokenizer.json`, so the T5 code
//! runs through the path real weights take, with no download.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Vocabulary size.
pub const VOCAB: usize = 48;
/// Hidden size.
pub const D_MODEL: usize = 16;
/// Size of one attention head.
pub const D_KV: usize = 4;
/// Attention heads.
pub const HEADS: usize = 4;
/// Feed-forward size.
pub const D_FF: usize = 24;
/// Encoder and decoder blocks.
pub const LAYERS: usize = 2;
/// Relative-position buckets (T5's 32).
pub const BUCKETS: usize = 32;
/// Distance where buckets stop growing (T5's 128).
pub const MAX_DISTANCE: usize = 128;
/// Layer-norm epsilon.
pub const EPS: f64 = 1e-6;

/// A weight matrix, row-major, as both forwards read it.
#[derive(Clone)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// The value at `(r, c)`, widened.
    pub fn get(&self, r: usize, c: usize) -> f64 {
        f64::from(self.data[r * self.cols + c])
    }
}

/// Writes a tiny random T5 into `dir` (`model.safetensors`, `config.json`): tied embeddings and a
/// relu feed-forward like t5-small, or untied and gated-gelu like flan-t5. Returns its weights by
/// name.
pub fn write_model(dir: &Path, tied: bool, gated: bool, seed: u64) -> HashMap<String, Matrix> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut w: HashMap<String, Matrix> = HashMap::new();
    let mut add = |name: String, rows: usize, cols: usize, scale: f32| {
        let data = (0..rows * cols)
            .map(|_| (rng.f32() * 2.0 - 1.0) * scale)
            .collect();
        w.insert(name, Matrix { rows, cols, data });
    };
    let inner = HEADS * D_KV;
    add("shared.weight".into(), VOCAB, D_MODEL, 1.0);
    if !tied {
        add("lm_head.weight".into(), VOCAB, D_MODEL, 0.5);
    }
    for stack in ["encoder", "decoder"] {
        for i in 0..LAYERS {
            let p = format!("{stack}.block.{i}.layer");
            let mut attention = |a: String, bias: bool| {
                for m in ["q", "k", "v"] {
                    add(format!("{a}.{m}.weight"), inner, D_MODEL, 0.5);
                }
                add(format!("{a}.o.weight"), D_MODEL, inner, 0.5);
                if bias {
                    add(
                        format!("{a}.relative_attention_bias.weight"),
                        BUCKETS,
                        HEADS,
                        1.0,
                    );
                }
            };
            attention(format!("{p}.0.SelfAttention"), i == 0);
            let ff = if stack == "decoder" {
                attention(format!("{p}.1.EncDecAttention"), false);
                2
            } else {
                1
            };
            let d = format!("{p}.{ff}.DenseReluDense");
            if gated {
                add(format!("{d}.wi_0.weight"), D_FF, D_MODEL, 0.5);
                add(format!("{d}.wi_1.weight"), D_FF, D_MODEL, 0.5);
            } else {
                add(format!("{d}.wi.weight"), D_FF, D_MODEL, 0.5);
            }
            add(format!("{d}.wo.weight"), D_MODEL, D_FF, 0.3);
            for l in 0..=ff {
                add(format!("{p}.{l}.layer_norm.weight"), 1, D_MODEL, 1.0);
            }
        }
        add(format!("{stack}.final_layer_norm.weight"), 1, D_MODEL, 1.0);
    }
    // Layer-norm weights around 1, as trained ones are.
    for (name, m) in w.iter_mut() {
        if name.ends_with("layer_norm.weight") {
            for x in &mut m.data {
                *x = 1.0 + *x * 0.2;
            }
        }
    }
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(name, m)| {
            let shape: Vec<usize> = if m.rows == 1 {
                vec![m.cols]
            } else {
                vec![m.rows, m.cols]
            };
            (
                name.clone(),
                Tensor::from_vec(m.data.clone(), shape, &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "vocab_size": VOCAB, "d_model": D_MODEL, "d_kv": D_KV, "d_ff": D_FF,
        "num_layers": LAYERS, "num_decoder_layers": LAYERS, "num_heads": HEADS,
        "relative_attention_num_buckets": BUCKETS, "relative_attention_max_distance": MAX_DISTANCE,
        "layer_norm_epsilon": EPS, "dropout_rate": 0.0, "initializer_factor": 1.0,
        "feed_forward_proj": if gated { "gated-gelu" } else { "relu" },
        "tie_word_embeddings": tied, "is_encoder_decoder": true, "use_cache": false,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    w
}

/// A T5-style Unigram `tokenizer.json` over `VOCAB` pieces: `<pad>` 0, `</s>` 1, `<unk>` 2, then
/// words; Metaspace pre-tokenizer and decoder; `$A </s>` appended to every input.
pub fn write_tokenizer(dir: &Path) {
    use tokenizers::decoders::metaspace::Metaspace as MetaDecoder;
    use tokenizers::models::unigram::Unigram;
    use tokenizers::pre_tokenizers::metaspace::Metaspace;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, Tokenizer};
    let words = [
        "summarize:",
        "translate",
        "English",
        "to",
        "French:",
        "German:",
        "the",
        "cat",
        "sleeps",
        "on",
        "sofa",
        "river",
        "rose",
        "a",
        "town",
        "built",
        "ferry",
        "week",
        "bridge",
        "closed",
        "old",
        "new",
        "and",
        "is",
        "it",
        "was",
        "in",
        "of",
        "le",
        "chat",
        "dort",
        "sur",
        "canap",
        "la",
        "une",
        "die",
        "Katze",
        "schl",
        "ft",
        "auf",
        "dem",
        "Sofa",
        "Hello",
        "world",
        ".",
    ];
    let mut vocab = vec![
        ("<pad>".to_owned(), 0.0),
        ("</s>".to_owned(), 0.0),
        ("<unk>".to_owned(), 0.0),
    ];
    vocab.extend(words.iter().map(|w| (format!("\u{2581}{w}"), -1.0)));
    vocab.truncate(VOCAB);
    while vocab.len() < VOCAB {
        let n = vocab.len();
        vocab.push((format!("\u{2581}w{n}"), -5.0));
    }
    let model = Unigram::from(vocab, Some(2), false).expect("unigram");
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(Metaspace::default()));
    t.with_decoder(Some(MetaDecoder::default()));
    t.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("$A </s>")
            .expect("template")
            .special_tokens(vec![("</s>", 1)])
            .build()
            .expect("processor"),
    ));
    t.add_special_tokens(vec![
        AddedToken::from("</s>", true),
        AddedToken::from("<pad>", true),
    ])
    .expect("special tokens");
    t.save(dir.join("tokenizer.json"), false)
        .expect("save tokenizer");
}
