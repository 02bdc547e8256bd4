//! A tiny Marian (opus-mt shaped) made on the spot: random weights under Hugging Face's tensor
//! names as `model.safetensors` and its `config.json`, and an opus-mt tokenizer (`source.spm`,
//! `target.spm`, `vocab.json`), with no download.

use candle_core::{Device, Tensor};
use prost::Message;
use sentencepiece_model::{ModelProto, SentencePiece, TrainerSpec};
use std::collections::HashMap;
use std::path::Path;

/// Vocabulary size.
pub const VOCAB: usize = 40;
/// Hidden size.
pub const D_MODEL: usize = 16;
/// Attention heads.
pub const HEADS: usize = 4;
/// Feed-forward size.
pub const FFN: usize = 24;
/// Encoder and decoder layers.
pub const LAYERS: usize = 2;
/// Padding id, also the decoder's first input.
pub const PAD: u32 = 39;
/// End of sequence.
pub const EOS: u32 = 0;
/// Positions the model covers.
pub const POSITIONS: usize = 64;

/// Weights by name: shape and values.
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes a tiny random Marian into `dir`; returns its weights by name.
pub fn write_model(dir: &Path, seed: u64) -> Weights {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut w: Weights = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, around: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| around + (rng.f32() * 2.0 - 1.0) * scale)
            .collect();
        w.insert(name, (shape, data));
    };
    add("model.shared.weight".into(), vec![VOCAB, D_MODEL], 1.0, 0.0);
    add("final_logits_bias".into(), vec![1, VOCAB], 0.5, 0.0);
    for (stack, cross) in [("encoder", false), ("decoder", true)] {
        for i in 0..LAYERS {
            let p = format!("model.{stack}.layers.{i}");
            let mut attention = |a: String| {
                for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{a}.{m}.weight"), vec![D_MODEL, D_MODEL], 0.5, 0.0);
                    add(format!("{a}.{m}.bias"), vec![D_MODEL], 0.1, 0.0);
                }
            };
            attention(format!("{p}.self_attn"));
            let mut norms = vec!["self_attn_layer_norm", "final_layer_norm"];
            if cross {
                attention(format!("{p}.encoder_attn"));
                norms.push("encoder_attn_layer_norm");
            }
            add(format!("{p}.fc1.weight"), vec![FFN, D_MODEL], 0.5, 0.0);
            add(format!("{p}.fc1.bias"), vec![FFN], 0.1, 0.0);
            add(format!("{p}.fc2.weight"), vec![D_MODEL, FFN], 0.3, 0.0);
            add(format!("{p}.fc2.bias"), vec![D_MODEL], 0.1, 0.0);
            for n in norms {
                add(format!("{p}.{n}.weight"), vec![D_MODEL], 0.2, 1.0);
                add(format!("{p}.{n}.bias"), vec![D_MODEL], 0.1, 0.0);
            }
        }
    }
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(name, (shape, data))| {
            let t = Tensor::from_vec(data.clone(), shape.clone(), &Device::Cpu).expect("tensor");
            (name.clone(), t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "vocab_size": VOCAB, "decoder_vocab_size": VOCAB, "d_model": D_MODEL,
        "encoder_layers": LAYERS, "decoder_layers": LAYERS,
        "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS,
        "encoder_ffn_dim": FFN, "decoder_ffn_dim": FFN, "max_position_embeddings": POSITIONS,
        "scale_embedding": true, "pad_token_id": PAD, "eos_token_id": EOS,
        "forced_eos_token_id": EOS, "decoder_start_token_id": PAD, "activation_function": "swish",
        "use_cache": true, "is_encoder_decoder": true, "share_encoder_decoder_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    w
}

/// The words of the tiny opus tokenizer.
pub const WORDS: [&str; 12] = [
    "the", "cat", "sleeps", "on", "sofa", "die", "Katze", "schläft", "auf", "dem", "Sofa", ".",
];

/// Writes `source.spm` and `target.spm` (pieces `<unk>`, `<s>`, `</s>`, then `▁word`s), and a
/// `vocab.json` putting `</s>` at 0, `<unk>` at 1, the words from 2, `<pad>` at [`PAD`].
pub fn write_opus_tokenizer(dir: &Path) -> HashMap<String, u32> {
    let piece = |p: &str, score: f32, kind: i32| SentencePiece {
        piece: Some(p.to_owned()),
        score: Some(score),
        r#type: Some(kind),
    };
    let mut pieces = vec![
        piece("<unk>", 0.0, 2),
        piece("<s>", 0.0, 3),
        piece("</s>", 0.0, 3),
    ];
    pieces.extend(
        WORDS
            .iter()
            .map(|w| piece(&format!("\u{2581}{w}"), -2.0, 1)),
    );
    // Single characters, so any text splits.
    for c in "abcdefghijklmnopqrstuvwxyzäöüKS.".chars() {
        pieces.push(piece(&c.to_string(), -10.0, 1));
    }
    pieces.push(piece("\u{2581}", -5.0, 1));
    let model = ModelProto {
        pieces,
        trainer_spec: Some(TrainerSpec {
            unk_id: Some(0),
            ..TrainerSpec::default()
        }),
        ..ModelProto::default()
    };
    let bytes = model.encode_to_vec();
    std::fs::write(dir.join("source.spm"), &bytes).expect("source.spm");
    std::fs::write(dir.join("target.spm"), &bytes).expect("target.spm");
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert("</s>".into(), EOS);
    vocab.insert("<unk>".into(), 1);
    vocab.insert("<pad>".into(), PAD);
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(format!("\u{2581}{w}"), 2 + i as u32);
    }
    for i in vocab.len() as u32 - 1..PAD {
        vocab.entry(format!("\u{2581}w{i}")).or_insert(i);
    }
    assert_eq!(vocab.len(), VOCAB);
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&vocab).expect("json"),
    )
    .expect("vocab.json");
    vocab
}
