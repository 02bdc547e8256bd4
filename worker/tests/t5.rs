//! T5 parity: tiny random T5 models, written to disk as Hugging Face would (safetensors under
//! its tensor names, `config.json`), run through `worker::model::t5` and through a float64
//! reference forward written here from Hugging Face's `modeling_t5.py`. The logits agree within
//! 1e-4 at every one of 24 decoder positions (past the distance where one-way and two-way
//! relative buckets part), unpadded and in a padded batch, for a tied-embedding t5 (relu) and an
//! untied flan-t5 (gated-gelu). candle-transformers' own T5 on the same files is shown to differ.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use test_support::t5::{
    write_model as tiny, write_tokenizer, Matrix, BUCKETS, D_KV, D_MODEL, EPS, HEADS, LAYERS,
    MAX_DISTANCE, VOCAB,
};
use worker::model::t5::{relative_bucket, T5};

/// Hugging Face's T5 in float64, one unpadded sequence at a time.
struct Reference {
    w: HashMap<String, Matrix>,
    tied: bool,
    gated: bool,
}

type Rows = Vec<Vec<f64>>;

impl Reference {
    fn m(&self, name: &str) -> &Matrix {
        &self.w[name]
    }

    /// `x W^T`.
    fn linear(&self, x: &Rows, name: &str) -> Rows {
        let w = self.m(name);
        x.iter()
            .map(|row| {
                (0..w.rows)
                    .map(|o| (0..w.cols).map(|i| row[i] * w.get(o, i)).sum())
                    .collect()
            })
            .collect()
    }

    fn norm(&self, x: &Rows, name: &str) -> Rows {
        let w = self.m(name);
        x.iter()
            .map(|row| {
                let var = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
                let inv = 1.0 / (var + EPS).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(i, v)| v * inv * w.get(0, i))
                    .collect()
            })
            .collect()
    }

    /// Attention of `x` over `kv`; `bias[h][q][k]` when given; `causal` hides later keys.
    fn attention(
        &self,
        prefix: &str,
        x: &Rows,
        kv: &Rows,
        bias: Option<&Vec<Rows>>,
        causal: bool,
    ) -> Rows {
        let (q, k, v) = (
            self.linear(x, &format!("{prefix}.q.weight")),
            self.linear(kv, &format!("{prefix}.k.weight")),
            self.linear(kv, &format!("{prefix}.v.weight")),
        );
        let mut out = vec![vec![0.0; HEADS * D_KV]; x.len()];
        for h in 0..HEADS {
            let r = h * D_KV..(h + 1) * D_KV;
            for i in 0..x.len() {
                let keys = if causal { i + 1 } else { kv.len() };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        let dot: f64 = r.clone().map(|c| q[i][c] * k[j][c]).sum();
                        dot + bias.map_or(0.0, |b| b[h][i][j])
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exp.iter().sum();
                for (j, e) in exp.iter().enumerate() {
                    for c in r.clone() {
                        out[i][c] += e / sum * v[j][c];
                    }
                }
            }
        }
        self.linear(&out, &format!("{prefix}.o.weight"))
    }

    fn bias(&self, table: &str, q_len: usize, k_len: usize, two_way: bool) -> Vec<Rows> {
        let t = self.m(table);
        (0..HEADS)
            .map(|h| {
                (0..q_len)
                    .map(|q| {
                        (0..k_len)
                            .map(|k| {
                                let b = hf_bucket(k as i64 - q as i64, two_way);
                                t.get(b, h)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn feed_forward(&self, x: &Rows, d: &str) -> Rows {
        let h: Rows = if self.gated {
            let g = self.linear(x, &format!("{d}.wi_0.weight"));
            let u = self.linear(x, &format!("{d}.wi_1.weight"));
            g.iter()
                .zip(&u)
                .map(|(g, u)| g.iter().zip(u).map(|(g, u)| gelu_new(*g) * u).collect())
                .collect()
        } else {
            self.linear(x, &format!("{d}.wi.weight"))
                .into_iter()
                .map(|r| r.into_iter().map(|v| v.max(0.0)).collect())
                .collect()
        };
        self.linear(&h, &format!("{d}.wo.weight"))
    }

    fn embed(&self, ids: &[u32]) -> Rows {
        let e = self.m("shared.weight");
        ids.iter()
            .map(|&i| (0..D_MODEL).map(|c| e.get(i as usize, c)).collect())
            .collect()
    }

    fn encode(&self, ids: &[u32]) -> Rows {
        let mut h = self.embed(ids);
        let bias = self.bias(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ids.len(),
            ids.len(),
            true,
        );
        for i in 0..LAYERS {
            let p = format!("encoder.block.{i}.layer");
            let x = self.norm(&h, &format!("{p}.0.layer_norm.weight"));
            add(
                &mut h,
                &self.attention(&format!("{p}.0.SelfAttention"), &x, &x, Some(&bias), false),
            );
            let x = self.norm(&h, &format!("{p}.1.layer_norm.weight"));
            add(
                &mut h,
                &self.feed_forward(&x, &format!("{p}.1.DenseReluDense")),
            );
        }
        self.norm(&h, "encoder.final_layer_norm.weight")
    }

    /// Logits of every decoder position.
    fn decode(&self, ids: &[u32], enc: &Rows) -> Rows {
        let mut h = self.embed(ids);
        let bias = self.bias(
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ids.len(),
            ids.len(),
            false,
        );
        for i in 0..LAYERS {
            let p = format!("decoder.block.{i}.layer");
            let x = self.norm(&h, &format!("{p}.0.layer_norm.weight"));
            add(
                &mut h,
                &self.attention(&format!("{p}.0.SelfAttention"), &x, &x, Some(&bias), true),
            );
            let x = self.norm(&h, &format!("{p}.1.layer_norm.weight"));
            add(
                &mut h,
                &self.attention(&format!("{p}.1.EncDecAttention"), &x, enc, None, false),
            );
            let x = self.norm(&h, &format!("{p}.2.layer_norm.weight"));
            add(
                &mut h,
                &self.feed_forward(&x, &format!("{p}.2.DenseReluDense")),
            );
        }
        let mut h = self.norm(&h, "decoder.final_layer_norm.weight");
        if self.tied {
            let s = (D_MODEL as f64).powf(-0.5);
            h.iter_mut().flatten().for_each(|v| *v *= s);
            self.linear(&h, "shared.weight")
        } else {
            self.linear(&h, "lm_head.weight")
        }
    }
}

fn add(h: &mut Rows, y: &Rows) {
    for (a, b) in h.iter_mut().zip(y) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
    }
}

fn gelu_new(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// Hugging Face's `_relative_position_bucket`, written out again (its logarithm in f32).
fn hf_bucket(relative: i64, two_way: bool) -> usize {
    let mut n = BUCKETS as i64;
    let mut bucket = 0;
    let rel = if two_way {
        n /= 2;
        bucket += i64::from(relative > 0) * n;
        relative.abs()
    } else {
        -relative.min(0)
    };
    let max_exact = n / 2;
    let large = max_exact
        + ((rel as f32 / max_exact as f32).ln()
            / ((MAX_DISTANCE as f64 / max_exact as f64).ln() as f32)
            * (n - max_exact) as f32) as i64;
    (bucket
        + if rel < max_exact {
            rel
        } else {
            large.min(n - 1)
        }) as usize
}

/// A decoder input of `len` ids: the start id, then ids that are neither padding nor the end.
fn decoder_ids(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    std::iter::once(0)
        .chain((1..len).map(|_| rng.u32(2..VOCAB as u32)))
        .collect()
}

fn max_diff(ours: &[f32], reference: &[f64]) -> f64 {
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

const DECODER_LEN: usize = 24;

/// The logits of every decoder position, ours, for a batch (padded by the model).
fn ours(model: &T5, inputs: &[Vec<u32>], decoded: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let encoded = model.encode(inputs).expect("encode");
    model
        .decode(decoded, &encoded)
        .and_then(|l| l.to_vec3::<f32>())
        .expect("decode")
}

fn check(tied: bool, gated: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let w = tiny(
        dir.path(),
        tied,
        gated,
        42 + u64::from(tied) + 2 * u64::from(gated),
    );
    let reference = Reference { w, tied, gated };
    let model = T5::load(dir.path()).expect("load");
    let inputs = [
        vec![5, 9, 13, 2, 31, 7, 1],
        vec![17, 4, 1],
        vec![8, 8, 40, 22, 1],
    ];
    let decoded: Vec<Vec<u32>> = (0..3).map(|i| decoder_ids(DECODER_LEN, i)).collect();
    let batch = ours(&model, &inputs, &decoded);
    for (i, input) in inputs.iter().enumerate() {
        let alone = ours(
            &model,
            std::slice::from_ref(input),
            std::slice::from_ref(&decoded[i]),
        );
        let want = reference.decode(&decoded[i], &reference.encode(input));
        for pos in 0..DECODER_LEN {
            let d = max_diff(&alone[0][pos], &want[pos]);
            assert!(
                d <= 1e-4,
                "tied {tied} gated {gated}: input {i} position {pos}: {d:e} unpadded"
            );
            let d = max_diff(&batch[i][pos], &want[pos]);
            assert!(
                d <= 1e-4,
                "tied {tied} gated {gated}: input {i} position {pos}: {d:e} padded"
            );
        }
    }
    // Greedy decoding gives the reference's arg-max at each step, alone and in the batch.
    let alone = model.generate(&inputs[..1], DECODER_LEN).expect("generate");
    let in_batch = model.generate(&inputs, DECODER_LEN).expect("generate");
    assert_eq!(alone[0].0, in_batch[0].0);
    let enc = reference.encode(&inputs[0]);
    let mut prefix = vec![0u32];
    for &id in &alone[0].0 {
        let logits = reference.decode(&prefix, &enc);
        let last = logits.last().expect("a position");
        let best = (0..VOCAB).fold(0, |b, j| if last[j] > last[b] { j } else { b });
        assert_eq!(id as usize, best, "greedy step {}", prefix.len());
        prefix.push(id);
    }
}

#[test]
fn tied_relu_t5_matches_the_float64_reference() {
    check(true, false);
}

#[test]
fn untied_gated_gelu_flan_t5_matches_the_float64_reference() {
    check(false, true);
}

#[test]
fn relative_buckets_are_hugging_faces() {
    for rel in -200i64..200 {
        for two_way in [true, false] {
            assert_eq!(
                relative_bucket(rel, two_way, BUCKETS, MAX_DISTANCE),
                hf_bucket(rel, two_way),
                "{rel} {two_way}"
            );
        }
    }
    // One-way and two-way buckets part from distance 9 on (keys before the query).
    assert_eq!(hf_bucket(-7, true), hf_bucket(-7, false));
    assert_ne!(hf_bucket(-9, true), hf_bucket(-9, false));
}

/// candle-transformers' T5 on the same files: its tied-embedding scaling puts the logits off by
/// a factor of `d_model`, and its decoder's two-way buckets move an untied model's logits once
/// the decoder is longer than 9 (and its encoder takes no padding mask).
#[test]
fn candle_transformers_t5_differs_from_the_reference() {
    use candle_transformers::models::t5::{Config, T5ForConditionalGeneration};
    for (tied, gated, past_nine) in [(true, false, 4), (false, true, DECODER_LEN)] {
        let dir = tempfile::tempdir().expect("dir");
        let w = tiny(dir.path(), tied, gated, 7);
        let reference = Reference { w, tied, gated };
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("config"))
                .expect("candle's config");
        let tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .expect("load");
        let vb =
            candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
        let mut theirs = T5ForConditionalGeneration::load(vb, &config).expect("candle's t5");
        let input = [5u32, 9, 13, 2, 31, 7, 1];
        let decoded = decoder_ids(past_nine, 3);
        let ids = Tensor::new(&input[..], &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids");
        let dec = Tensor::new(decoded.as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids");
        let enc = theirs.encode(&ids).expect("encode");
        let last: Vec<f32> = theirs
            .decode(&dec, &enc)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec1())
            .expect("decode");
        let want = reference.decode(&decoded, &reference.encode(&input));
        let d = max_diff(&last, want.last().expect("last"));
        assert!(
            d > 1e-2,
            "tied {tied}: candle-transformers matched the reference ({d:e})"
        );
    }
}

/// `--model flan-t5` from a folder: the task prefixes, the same ids as the forward's greedy
/// decoding alone or in a batch, refusals of what it cannot translate, a content hash of the
/// three files.
#[test]
fn the_t5_worker_model_serves_generative_tasks_from_a_folder() {
    use protocol::TaskType;
    use worker::model::{Input, Stop};
    let dir = tempfile::tempdir().expect("dir");
    tiny(dir.path(), false, true, 5);
    write_tokenizer(dir.path());
    let model = worker::model::load("flan-t5", Some(dir.path())).expect("loads");
    assert_eq!(model.id(), "flan-t5");
    let hash = model.content_hash().expect("a hash").to_owned();
    let inputs = [
        Input {
            max_new_tokens: Some(12),
            ..Input::new(
                TaskType::summarization(),
                "the river rose and the old bridge closed",
            )
        },
        Input {
            max_new_tokens: Some(12),
            languages: Some(("en".into(), "fr".into())),
            ..Input::new(TaskType::translation(), "the cat sleeps on the sofa")
        },
        Input {
            max_new_tokens: Some(12),
            ..Input::new(TaskType::generate(), "Hello world")
        },
    ];
    let batch = model.predict(&inputs);
    let forward = T5::load(dir.path()).expect("forward");
    for (input, got) in inputs.iter().zip(&batch) {
        let g = got
            .as_ref()
            .expect("answered")
            .generation
            .clone()
            .expect("generation");
        assert_eq!(
            *g.prompt_token_ids.last().expect("ids"),
            1,
            "ends with </s>"
        );
        let alone = forward
            .generate(std::slice::from_ref(&g.prompt_token_ids), 12)
            .expect("generate");
        assert_eq!(g.token_ids, alone[0].0, "{input:?}");
        assert_eq!(g.logprobs.len(), g.token_ids.len());
        match g.stop {
            Stop::StopToken => assert_eq!(g.token_ids.last(), Some(&1)),
            Stop::Length => assert_eq!(g.token_ids.len(), 12),
            Stop::StopString => panic!("no stop strings were given"),
        }
        let one = model.predict(std::slice::from_ref(input));
        let one = one[0]
            .as_ref()
            .expect("alone")
            .generation
            .clone()
            .expect("generation");
        assert_eq!(one.token_ids, g.token_ids, "batch and alone differ");
    }
    let summary = batch[0]
        .as_ref()
        .expect("summary")
        .generation
        .clone()
        .expect("g");
    let tokenizer =
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tok");
    let prefix = tokenizer
        .encode("summarize:", false)
        .expect("encode")
        .get_ids()
        .to_vec();
    assert!(
        summary.prompt_token_ids.starts_with(&prefix),
        "summaries start with T5's prefix"
    );
    for languages in [("fr", "en"), ("en", "ja")] {
        let bad = Input {
            languages: Some((languages.0.into(), languages.1.into())),
            ..Input::new(TaskType::translation(), "x")
        };
        assert!(
            model.predict(&[bad])[0].is_err(),
            "{languages:?} was translated"
        );
    }
    // The hash is of the content: the same files give it again, one changed byte another.
    let again = worker::model::load("flan-t5", Some(dir.path())).expect("loads");
    assert_eq!(again.content_hash(), Some(hash.as_str()));
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text} ")).expect("rewrite");
    let changed = worker::model::load("flan-t5", Some(dir.path())).expect("loads");
    assert_ne!(changed.content_hash(), Some(hash.as_str()));
}
