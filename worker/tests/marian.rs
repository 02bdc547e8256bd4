//! Marian parity: tiny random opus-mt-shaped models, written as Hugging Face would
//! (`model.safetensors` under its tensor names, `config.json`), run through
//! `worker::model::marian` and through a float64 reference forward written here from Hugging
//! Face's `modeling_marian.py`. The logits agree within 1e-4 at each of 24 decoder positions,
//! unpadded and in a padded batch; greedy decoding never emits the padding id. candle-transformers'
//! Marian on the same files is shown to carry its encoder's KV cache from one input to the next.

use candle_core::{Device, Tensor};
use test_support::marian::{write_model as tiny, Weights, D_MODEL, EOS, HEADS, LAYERS, PAD, VOCAB};
use worker::model::marian::Marian;

const DECODER_LEN: usize = 24;

type Rows = Vec<Vec<f64>>;

/// Hugging Face's Marian in float64, one unpadded sequence at a time.
struct Reference(Weights);

impl Reference {
    fn v(&self, name: &str) -> Vec<f64> {
        self.0[name].1.iter().map(|x| f64::from(*x)).collect()
    }

    fn linear(&self, x: &Rows, prefix: &str) -> Rows {
        let (shape, _) = &self.0[&format!("{prefix}.weight")];
        let (out, inp) = (shape[0], shape[1]);
        let w = self.v(&format!("{prefix}.weight"));
        let b = self.v(&format!("{prefix}.bias"));
        x.iter()
            .map(|r| {
                (0..out)
                    .map(|o| b[o] + (0..inp).map(|i| r[i] * w[o * inp + i]).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn norm(&self, x: &Rows, prefix: &str) -> Rows {
        let (w, b) = (
            self.v(&format!("{prefix}.weight")),
            self.v(&format!("{prefix}.bias")),
        );
        x.iter()
            .map(|r| {
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r.len() as f64;
                r.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i] + b[i])
                    .collect()
            })
            .collect()
    }

    fn attention(&self, prefix: &str, x: &Rows, kv: &Rows, causal: bool) -> Rows {
        let d = D_MODEL / HEADS;
        let scale = (d as f64).powf(-0.5);
        let q = self.linear(x, &format!("{prefix}.q_proj"));
        let k = self.linear(kv, &format!("{prefix}.k_proj"));
        let v = self.linear(kv, &format!("{prefix}.v_proj"));
        let mut out = vec![vec![0.0; D_MODEL]; x.len()];
        for h in 0..HEADS {
            let r = h * d..(h + 1) * d;
            for i in 0..x.len() {
                let keys = if causal { i + 1 } else { kv.len() };
                let s: Vec<f64> = (0..keys)
                    .map(|j| r.clone().map(|c| q[i][c] * scale * k[j][c]).sum())
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, e) in e.iter().enumerate() {
                    for c in r.clone() {
                        out[i][c] += e / sum * v[j][c];
                    }
                }
            }
        }
        self.linear(&out, &format!("{prefix}.out_proj"))
    }

    fn embed(&self, ids: &[u32]) -> Rows {
        let e = self.v("model.shared.weight");
        ids.iter()
            .enumerate()
            .map(|(p, &id)| {
                (0..D_MODEL)
                    .map(|c| {
                        let angle = |j: usize| {
                            p as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / D_MODEL as f64)
                        };
                        let pos = if c < D_MODEL / 2 {
                            angle(2 * c).sin()
                        } else {
                            angle(2 * (c - D_MODEL / 2) + 1).cos()
                        };
                        e[id as usize * D_MODEL + c] * (D_MODEL as f64).sqrt() + pos
                    })
                    .collect()
            })
            .collect()
    }

    fn ffn(&self, x: &Rows, p: &str) -> Rows {
        let h: Rows = self
            .linear(x, &format!("{p}.fc1"))
            .into_iter()
            .map(|r| r.into_iter().map(|v| v / (1.0 + (-v).exp())).collect())
            .collect();
        self.linear(&h, &format!("{p}.fc2"))
    }

    fn encode(&self, ids: &[u32]) -> Rows {
        let mut h = self.embed(ids);
        for i in 0..LAYERS {
            let p = format!("model.encoder.layers.{i}");
            let a = self.attention(&format!("{p}.self_attn"), &h, &h, false);
            h = self.norm(&sum(&h, &a), &format!("{p}.self_attn_layer_norm"));
            h = self.norm(
                &sum(&h, &self.ffn(&h, &p)),
                &format!("{p}.final_layer_norm"),
            );
        }
        h
    }

    fn decode(&self, ids: &[u32], enc: &Rows) -> Rows {
        let mut h = self.embed(ids);
        for i in 0..LAYERS {
            let p = format!("model.decoder.layers.{i}");
            let a = self.attention(&format!("{p}.self_attn"), &h, &h, true);
            h = self.norm(&sum(&h, &a), &format!("{p}.self_attn_layer_norm"));
            let a = self.attention(&format!("{p}.encoder_attn"), &h, enc, false);
            h = self.norm(&sum(&h, &a), &format!("{p}.encoder_attn_layer_norm"));
            h = self.norm(
                &sum(&h, &self.ffn(&h, &p)),
                &format!("{p}.final_layer_norm"),
            );
        }
        let e = self.v("model.shared.weight");
        let bias = self.v("final_logits_bias");
        h.iter()
            .map(|r| {
                (0..VOCAB)
                    .map(|t| bias[t] + (0..D_MODEL).map(|c| r[c] * e[t * D_MODEL + c]).sum::<f64>())
                    .collect()
            })
            .collect()
    }
}

fn sum(a: &Rows, b: &Rows) -> Rows {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(x, y)| x + y).collect())
        .collect()
}

fn max_diff(ours: &[f32], reference: &[f64]) -> f64 {
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

fn decoder_ids(seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    std::iter::once(PAD)
        .chain((1..DECODER_LEN).map(|_| rng.u32(1..PAD)))
        .collect()
}

#[test]
fn marian_matches_the_float64_reference_alone_and_padded() {
    let dir = tempfile::tempdir().expect("dir");
    let reference = Reference(tiny(dir.path(), 3));
    let model = Marian::load(dir.path()).expect("load");
    let inputs = [
        vec![5, 9, 13, 2, 31, 7, EOS],
        vec![17, 4, EOS],
        vec![8, 8, 30, 22, EOS],
    ];
    let decoded: Vec<Vec<u32>> = (0..3).map(decoder_ids).collect();
    let batch = model
        .decode(&decoded, &model.encode(&inputs).expect("encode"))
        .and_then(|l| l.to_vec3::<f32>())
        .expect("decode");
    for (i, input) in inputs.iter().enumerate() {
        let alone = model
            .decode(
                std::slice::from_ref(&decoded[i]),
                &model.encode(std::slice::from_ref(input)).expect("encode"),
            )
            .and_then(|l| l.to_vec3::<f32>())
            .expect("decode");
        let want = reference.decode(&decoded[i], &reference.encode(input));
        for pos in 0..DECODER_LEN {
            let d = max_diff(&alone[0][pos], &want[pos]);
            assert!(d <= 1e-4, "input {i} position {pos}: {d:e} unpadded");
            let d = max_diff(&batch[i][pos], &want[pos]);
            assert!(d <= 1e-4, "input {i} position {pos}: {d:e} padded");
        }
    }
    // Greedy: the reference's arg-max among the ids other than padding, alone or in the batch.
    let alone = model
        .generate(&inputs[..1], DECODER_LEN, &[EOS])
        .expect("generate");
    let in_batch = model
        .generate(&inputs, DECODER_LEN, &[EOS])
        .expect("generate");
    assert_eq!(alone[0].0, in_batch[0].0);
    let enc = reference.encode(&inputs[0]);
    let mut prefix = vec![PAD];
    for &id in &alone[0].0 {
        assert_ne!(id, PAD, "the padding id was generated");
        let logits = reference.decode(&prefix, &enc);
        let last = logits.last().expect("a position");
        let best = (0..VOCAB).filter(|&j| j != PAD as usize).fold(0, |b, j| {
            if last[j] > last[b] {
                j
            } else {
                b
            }
        });
        assert_eq!(id as usize, best, "greedy step {}", prefix.len());
        prefix.push(id);
    }
}

/// candle-transformers' Marian keeps its encoder's KV cache between calls: after one input, the
/// next attends to the first one's keys too, and its encoding is off (ours is the reference's
/// whatever came before).
#[test]
fn candle_transformers_marian_carries_its_encoder_cache_between_inputs() {
    use candle_transformers::models::marian::{Config, MTModel};
    let dir = tempfile::tempdir().expect("dir");
    let reference = Reference(tiny(dir.path(), 4));
    let config: Config =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("config"))
            .expect("candle's config");
    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
            .expect("load");
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    let mut theirs = MTModel::new(&config, vb).expect("candle's marian");
    let (before, input) = ([17u32, 4, 30, EOS], [5u32, 9, 13, 2, EOS]);
    let mut encode = |ids: &[u32]| -> Vec<f32> {
        let ids = Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids");
        theirs
            .encoder()
            .forward(&ids, 0)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("encode")
    };
    let first = encode(&input);
    encode(&before);
    let second = encode(&input);
    let want: Vec<f64> = reference.encode(&input).into_iter().flatten().collect();
    let (d1, d2) = (max_diff(&first, &want), max_diff(&second, &want));
    assert!(
        d1 <= 1e-4,
        "candle-transformers' first encoding is off too: {d1:e}"
    );
    assert!(
        d2 > 1e-2,
        "the second encoding matched the reference: {d2:e}"
    );
    let model = Marian::load(dir.path()).expect("ours");
    for _ in 0..2 {
        model.encode(&[before.to_vec()]).expect("encode");
        let (enc, _) = model.encode(&[input.to_vec()]).expect("encode");
        let ours: Vec<f32> = enc.flatten_all().and_then(|t| t.to_vec1()).expect("ours");
        assert!(max_diff(&ours, &want) <= 1e-4);
    }
}
