//! The DistilBERT backend on a tiny model made here (random weights under Hugging Face's tensor
//! names, a config.json, a WordPiece tokenizer.json), loaded through the same code as real
//! weights, checked against an independent float64 forward pass written out below.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
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

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn shapes() -> Vec<(String, Vec<usize>)> {
    let mut s = vec![
        (
            "distilbert.embeddings.word_embeddings.weight".to_owned(),
            vec![V, D],
        ),
        (
            "distilbert.embeddings.position_embeddings.weight".to_owned(),
            vec![P, D],
        ),
        ("distilbert.embeddings.LayerNorm.weight".to_owned(), vec![D]),
        ("distilbert.embeddings.LayerNorm.bias".to_owned(), vec![D]),
        ("pre_classifier.weight".to_owned(), vec![D, D]),
        ("pre_classifier.bias".to_owned(), vec![D]),
        ("classifier.weight".to_owned(), vec![2, D]),
        ("classifier.bias".to_owned(), vec![2]),
    ];
    for i in 0..LAYERS {
        let l = format!("distilbert.transformer.layer.{i}");
        for lin in ["q_lin", "k_lin", "v_lin", "out_lin"] {
            s.push((format!("{l}.attention.{lin}.weight"), vec![D, D]));
            s.push((format!("{l}.attention.{lin}.bias"), vec![D]));
        }
        for norm in ["sa_layer_norm", "output_layer_norm"] {
            s.push((format!("{l}.{norm}.weight"), vec![D]));
            s.push((format!("{l}.{norm}.bias"), vec![D]));
        }
        s.push((format!("{l}.ffn.lin1.weight"), vec![H, D]));
        s.push((format!("{l}.ffn.lin1.bias"), vec![H]));
        s.push((format!("{l}.ffn.lin2.weight"), vec![D, H]));
        s.push((format!("{l}.ffn.lin2.bias"), vec![D]));
    }
    s
}

/// Writes the tiny model in Hugging Face layout; returns its weights.
fn make_model(dir: &Path) -> Weights {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut weights = Weights::new();
    let mut tensors = HashMap::new();
    for (name, shape) in shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let r = rng.f32() * 1.6 - 0.8;
                if name.ends_with("LayerNorm.weight") || name.ends_with("norm.weight") {
                    1.0 + r / 4.0
                } else {
                    r
                }
            })
            .collect();
        tensors.insert(
            name.clone(),
            Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).expect("tensor"),
        );
        weights.insert(name, (shape, data));
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save weights");
    let config = serde_json::json!({
        "vocab_size": V, "dim": D, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": H,
        "max_position_embeddings": P, "activation": "gelu", "pad_token_id": 0,
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    make_tokenizer(&dir.join("tokenizer.json"));
    weights
}

fn make_tokenizer(path: &Path) {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    let vocab = path.with_file_name("vocab.txt");
    std::fs::write(&vocab, VOCAB.join("\n")).expect("vocab");
    let wp = WordPiece::from_file(vocab.to_str().expect("utf8"))
        .unk_token("[UNK]".into())
        .build()
        .expect("wordpiece");
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::default()));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .expect("template")
            .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
            .build()
            .expect("processor"),
    ));
    tok.save(path, false).expect("save tokenizer");
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
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let err = Sst2::load(dir.path())
        .err()
        .expect("loaded without a tokenizer");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
