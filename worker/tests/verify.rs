//! Cross-scoring on tiny random T5 models made in the test: honest answers pass with every gap
//! far below `eps` whatever the batch they were generated in; wrong answers of every kind are
//! refused; seeded sampling is verified like greedy.

use protocol::generation::{resolve, Decoding, GenerationSpec, SpecRequest, DEFAULT_EPS};
use protocol::verify::verdict;
use protocol::TaskType;
use test_support::t5::{write_model, write_tokenizer, VOCAB};
use worker::model::seq2seq::EncoderDecoder;
use worker::model::t5::T5;

const MAX_NEW: usize = 12;
const EOS: u32 = 1;

fn spec() -> GenerationSpec {
    let hash = "a".repeat(64);
    resolve(
        &TaskType::generate(),
        &SpecRequest {
            model: Some("flan-t5"),
            model_hash: Some(&hash),
            max_new_tokens: Some(MAX_NEW as u32),
            stop_ids: Some(&[EOS]),
            ..SpecRequest::default()
        },
    )
    .expect("spec")
}

fn model(seed: u64) -> (tempfile::TempDir, T5) {
    let dir = tempfile::tempdir().expect("dir");
    write_model(dir.path(), false, true, seed);
    write_tokenizer(dir.path());
    let m = T5::load(dir.path()).expect("load");
    (dir, m)
}

fn inputs(seed: u64, n: usize) -> Vec<Vec<u32>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let len = rng.usize(3..10);
            let mut ids: Vec<u32> = (0..len).map(|_| rng.u32(2..VOCAB as u32)).collect();
            ids.push(EOS);
            ids
        })
        .collect()
}

/// The candidate's gaps under `decoding` and whether they pass.
fn judge(m: &T5, input: &[u32], candidate: &[u32], decoding: &Decoding) -> (f32, bool) {
    let s = m.score(input, candidate, decoding).expect("score");
    let max = s.gaps.iter().fold(0f32, |a, &g| a.max(g));
    (max, verdict(candidate, &s.gaps, &spec(), DEFAULT_EPS))
}

#[test]
fn honest_answers_pass_from_any_batch_with_gaps_under_a_tenth_of_eps() {
    let mut honest = 0;
    let mut worst = 0f32;
    for seed in 0..4 {
        let (_dir, m) = model(seed);
        let batch = inputs(seed, 25);
        let together = m.generate_until(&batch, MAX_NEW, &[EOS]).expect("batch");
        for (input, (ids, _)) in batch.iter().zip(&together) {
            let alone = m
                .generate_until(std::slice::from_ref(input), MAX_NEW, &[EOS])
                .expect("alone")
                .remove(0)
                .0;
            for answer in [ids, &alone] {
                let (gap, passed) = judge(&m, input, answer, &Decoding::Greedy);
                assert!(passed, "an honest answer refused: gap {gap}");
                worst = worst.max(gap);
                honest += 1;
            }
        }
    }
    assert!(honest >= 200, "{honest}");
    assert!(worst < DEFAULT_EPS / 10.0, "honest gap {worst}");
    eprintln!("{honest} honest answers, largest gap {worst:e}");
}

#[test]
fn wrong_answers_of_every_kind_are_refused() {
    let mut refused = [0usize; 6];
    let mut tried = [0usize; 6];
    let names = [
        "random",
        "truncated",
        "early stop",
        "swapped",
        "other seed",
        "other input",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for seed in 0..3 {
        let (_dir, m) = model(seed);
        let batch = inputs(100 + seed, 12);
        let answers: Vec<Vec<u32>> = m
            .generate_until(&batch, MAX_NEW, &[EOS])
            .expect("answers")
            .into_iter()
            .map(|(ids, _)| ids)
            .collect();
        for (i, (input, honest)) in batch.iter().zip(&answers).enumerate() {
            let mut wrong: Vec<(usize, Vec<u32>)> = Vec::new();
            let mut random: Vec<u32> = (0..honest.len())
                .map(|_| rng.u32(2..VOCAB as u32))
                .collect();
            if honest.len() < MAX_NEW {
                *random.last_mut().expect("one") = EOS;
            }
            wrong.push((0, random));
            if honest.len() > 1 {
                wrong.push((1, honest[..honest.len() - 1].to_vec()));
                let mut early = honest[..honest.len() / 2].to_vec();
                early.push(EOS);
                wrong.push((2, early));
            }
            // One token swapped, at every position but a final stop id.
            let body = honest.len() - usize::from(honest.last() == Some(&EOS));
            for at in 0..body {
                let mut swapped = honest.clone();
                swapped[at] = loop {
                    let id = rng.u32(2..VOCAB as u32);
                    if id != honest[at] {
                        break id;
                    }
                };
                wrong.push((3, swapped));
            }
            let sampled = m
                .generate_with(
                    std::slice::from_ref(input),
                    MAX_NEW,
                    &[EOS],
                    &Decoding::Sample {
                        temperature: 1.0,
                        seed: rng.u64(..),
                    },
                )
                .expect("sampled")
                .remove(0)
                .0;
            wrong.push((4, sampled));
            wrong.push((5, answers[(i + 1) % answers.len()].clone()));
            for (kind, candidate) in wrong {
                if candidate == *honest {
                    continue;
                }
                tried[kind] += 1;
                let (_, passed) = judge(&m, input, &candidate, &Decoding::Greedy);
                refused[kind] += usize::from(!passed);
            }
        }
    }
    for k in 0..6 {
        eprintln!("{}: {}/{} refused", names[k], refused[k], tried[k]);
        assert!(tried[k] > 0, "no {} answers tried", names[k]);
        // Every kind but a near-tie swap is refused outright; at least 99% over all.
        assert!(
            refused[k] * 100 >= tried[k] * 99,
            "{}: {}/{} refused",
            names[k],
            refused[k],
            tried[k]
        );
    }
}

#[test]
fn seeded_sampling_is_verified_exactly_like_greedy() {
    let (_dir, m) = model(11);
    let batch = inputs(11, 10);
    let (mut passed_own, mut refused_other, mut differ) = (0, 0, 0);
    for (n, input) in batch.iter().enumerate() {
        let own = Decoding::Sample {
            temperature: 0.8,
            seed: 1000 + n as u64,
        };
        let other = Decoding::Sample {
            temperature: 0.8,
            seed: 5000 + n as u64,
        };
        let ids = m
            .generate_with(std::slice::from_ref(input), MAX_NEW, &[EOS], &own)
            .expect("sample")
            .remove(0)
            .0;
        let (gap, ok) = judge(&m, input, &ids, &own);
        assert!(ok, "an honest sample refused under its own seed: gap {gap}");
        assert!(gap < DEFAULT_EPS / 10.0);
        passed_own += 1;
        let theirs = m
            .generate_with(std::slice::from_ref(input), MAX_NEW, &[EOS], &other)
            .expect("sample")
            .remove(0)
            .0;
        if theirs != ids {
            differ += 1;
            refused_other += usize::from(!judge(&m, input, &theirs, &own).1);
        }
    }
    assert_eq!(passed_own, batch.len());
    assert!(differ > 0, "other seeds sampled the same answers");
    assert_eq!(refused_other, differ, "another seed's sample passed");
}

/// A copy of the model in `from` with every weight moved by up to `delta` (uniform noise).
fn perturbed(from: &std::path::Path, delta: f32, seed: u64) -> (tempfile::TempDir, T5) {
    let dir = tempfile::tempdir().expect("dir");
    let device = candle_core::Device::Cpu;
    let weights =
        candle_core::safetensors::load(from.join("model.safetensors"), &device).expect("load");
    let mut rng = fastrand::Rng::with_seed(seed);
    let moved: std::collections::HashMap<String, candle_core::Tensor> = weights
        .into_iter()
        .map(|(name, t)| {
            let noise: Vec<f32> = (0..t.elem_count())
                .map(|_| (rng.f32() * 2.0 - 1.0) * delta)
                .collect();
            let noise = candle_core::Tensor::from_vec(noise, t.shape(), &device).expect("noise");
            (name, (t + noise).expect("sum"))
        })
        .collect();
    candle_core::safetensors::save(&moved, dir.path().join("model.safetensors")).expect("save");
    std::fs::copy(from.join("config.json"), dir.path().join("config.json")).expect("config");
    let m = T5::load(dir.path()).expect("load");
    (dir, m)
}

#[test]
fn slightly_perturbed_weights_pass_exactly_when_their_ids_are_the_true_ones() {
    let (dir, truth) = model(21);
    let batch = inputs(21, 30);
    let expected = truth
        .generate_until(&batch, MAX_NEW, &[EOS])
        .expect("truth");
    let (mut same, mut differ) = (0, 0);
    for (k, delta) in [1e-4f32, 1e-3, 1e-2, 3e-2].into_iter().enumerate() {
        let (_copy, near) = perturbed(dir.path(), delta, 100 + k as u64);
        let answers = near.generate_until(&batch, MAX_NEW, &[EOS]).expect("near");
        for ((input, (ids, _)), (true_ids, _)) in batch.iter().zip(&answers).zip(&expected) {
            let (gap, passed) = judge(&truth, input, ids, &Decoding::Greedy);
            assert_eq!(
                passed,
                ids == true_ids,
                "delta {delta}: ids {ids:?}, true {true_ids:?}, largest gap {gap}"
            );
            if ids == true_ids {
                same += 1;
            } else {
                differ += 1;
            }
        }
    }
    eprintln!("{same} perturbed answers equal to the true ones passed, {differ} others refused");
    assert!(same > 0 && differ > 0, "{same} same, {differ} differ");
}
