//! The DistilBERT backend on a tiny model made here (random weights under Hugging Face's tensor
//! names, a config.json, a WordPiece tokenizer.json), loaded through the same code as real
//! weights, checked against an independent float64 forward pass written out below.

use std::path::Path;
use test_support::models::{write_distilbert, write_wordpiece_tokenizer, DistilBertShape, Weights};
use worker::model::distilbert::Sst2;
use worker::model::transformer::softmax;
use worker::model::{Input, Model};

const V: usize = 16;
const D: usize = 8;
const H: usize = 16;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const P: usize = 32;
const VOCAB: [&str; V] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "love", "this", "movie", "hate", "it", "bad", "good",
    "film", "was", "not", "!",
];

const SHAPE: DistilBertShape = DistilBertShape {
    vocab: V,
    dim: D,
    hidden: H,
    layers: LAYERS,
    heads: HEADS,
    positions: P,
};

/// Writes the tiny model in Hugging Face layout; returns its weights.
fn make_model(dir: &Path) -> Weights {
    write_wordpiece_tokenizer(dir, &VOCAB);
    write_distilbert(dir, SHAPE, 0.8, 7)
}

// ---- the float64 reference ------------------------------------------------------------------

fn w<'a>(ws: &'a Weights, name: &str) -> &'a [f32] {
    &ws[name].1
}

/// `y = x W^T + b` for one row, Hugging Face `Linear` layout (weight `[out, in]`).
fn linear(ws: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
    let (shape, weight) = &ws[&format!("{name}.weight")];
    let bias = w(ws, &format!("{name}.bias"));
    (0..shape[0])
        .map(|o| {
            bias[o] as f64
                + (0..shape[1])
                    .map(|i| weight[o * shape[1] + i] as f64 * x[i])
                    .sum::<f64>()
        })
        .collect()
}

fn norm(ws: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let (g, b) = (
        w(ws, &format!("{name}.weight")),
        w(ws, &format!("{name}.bias")),
    );
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64)
        .collect()
}

fn reference(ws: &Weights, ids: &[u32]) -> Vec<f64> {
    let t = ids.len();
    let words = w(ws, "distilbert.embeddings.word_embeddings.weight");
    let pos = w(ws, "distilbert.embeddings.position_embeddings.weight");
    let mut x: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            let row: Vec<f64> = (0..D)
                .map(|d| words[ids[i] as usize * D + d] as f64 + pos[i * D + d] as f64)
                .collect();
            norm(ws, "distilbert.embeddings.LayerNorm", &row)
        })
        .collect();
    let hd = D / HEADS;
    for l in 0..LAYERS {
        let p = format!("distilbert.transformer.layer.{l}");
        let q: Vec<_> = x
            .iter()
            .map(|r| linear(ws, &format!("{p}.attention.q_lin"), r))
            .collect();
        let k: Vec<_> = x
            .iter()
            .map(|r| linear(ws, &format!("{p}.attention.k_lin"), r))
            .collect();
        let v: Vec<_> = x
            .iter()
            .map(|r| linear(ws, &format!("{p}.attention.v_lin"), r))
            .collect();
        let mut ctx = vec![vec![0.0; D]; t];
        for h in 0..HEADS {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[i][h * hd + d] * k[j][h * hd + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    ctx[i][h * hd + d] = (0..t).map(|j| e[j] / sum * v[j][h * hd + d]).sum();
                }
            }
        }
        x = (0..t)
            .map(|i| {
                let a = linear(ws, &format!("{p}.attention.out_lin"), &ctx[i]);
                let r: Vec<f64> = a.iter().zip(&x[i]).map(|(a, b)| a + b).collect();
                let y = norm(ws, &format!("{p}.sa_layer_norm"), &r);
                let h1: Vec<f64> = linear(ws, &format!("{p}.ffn.lin1"), &y)
                    .into_iter()
                    .map(|z| 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2)))
                    .collect();
                let f = linear(ws, &format!("{p}.ffn.lin2"), &h1);
                let r: Vec<f64> = f.iter().zip(&y).map(|(a, b)| a + b).collect();
                norm(ws, &format!("{p}.output_layer_norm"), &r)
            })
            .collect();
    }
    let h: Vec<f64> = linear(ws, "pre_classifier", &x[0])
        .into_iter()
        .map(|z| z.max(0.0))
        .collect();
    linear(ws, "classifier", &h)
}

// ---- the tests --------------------------------------------------------------------------------

#[test]
fn logits_match_an_independent_float64_forward_in_a_padded_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = make_model(dir.path());
    let model = Sst2::load(dir.path()).expect("load");
    let texts = [
        "I love this movie!",
        "bad",
        "this film was not good , i hate it",
        "zzz unknown",
    ];
    let batch = model.logits(&texts).expect("logits");
    let tok =
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
    for (text, got) in texts.iter().zip(&batch) {
        let ids = tok.encode(*text, true).expect("encode").get_ids().to_vec();
        let want = reference(&ws, &ids);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "{text:?}: candle {got:?} vs reference {want:?}"
            );
        }
        // Padding changes nothing: the text alone gives the same logits.
        let alone = model.logits(&[text]).expect("alone");
        for (a, b) in alone[0].iter().zip(got) {
            assert!(
                (a - b).abs() < 1e-5,
                "{text:?}: alone {alone:?} vs batched {got:?}"
            );
        }
    }
}

#[test]
fn predictions_are_the_argmax_label_with_its_probability() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_model(dir.path());
    let model = Sst2::load(dir.path()).expect("load");
    let texts = ["I love this movie!", "i hate it"];
    let logits = model.logits(&texts).expect("logits");
    let inputs: Vec<Input> = texts
        .iter()
        .map(|t| Input::new(protocol::TaskType::sentiment(), *t))
        .collect();
    for (p, l) in model.predict(&inputs).into_iter().zip(logits) {
        let p = p.expect("prediction");
        let probs = softmax(&l);
        let best = if probs[1] > probs[0] {
            "positive"
        } else {
            "negative"
        };
        assert_eq!(p.label, best);
        assert!((p.confidence - probs[0].max(probs[1])).abs() < 1e-9);
        assert!((0.5..=1.0).contains(&p.confidence));
    }
    // A text longer than the model's positions is truncated, not a crash.
    let long = "good ".repeat(5000);
    assert!(model.logits(&[&long]).is_ok());
}

#[test]
fn a_folder_missing_a_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = Sst2::load(dir.path())
        .err()
        .expect("loaded from an empty folder");
    assert!(err.to_string().contains("config.json"), "{err}");
    make_model(dir.path());
    for file in ["tokenizer.json", "vocab.txt"] {
        std::fs::remove_file(dir.path().join(file)).expect("rm");
    }
    let err = Sst2::load(dir.path())
        .err()
        .expect("loaded without a tokenizer");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn a_folder_with_only_vocab_txt_tokenizes_as_bert_does() {
    // Older uploads (the original's DistilBERT among them) ship vocab.txt without tokenizer.json.
    let dir = tempfile::tempdir().expect("temp dir");
    make_model(dir.path());
    let texts = [
        "I love this movie!",
        "this film was not good , i hate it",
        "zzz",
    ];
    let with_json = Sst2::load(dir.path())
        .expect("load")
        .logits(&texts)
        .expect("logits");
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let with_vocab = Sst2::load(dir.path())
        .expect("load")
        .logits(&texts)
        .expect("logits");
    assert_eq!(with_json, with_vocab);
}
