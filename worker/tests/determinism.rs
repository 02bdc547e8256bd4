//! The answer of a generative task must not depend on how many threads a worker runs: the
//! token ids of `smollm2` (and their log-probabilities) are bit-identical on 1 and 2 threads,
//! and so is a matrix product large enough to reach gemm's blocking (128 x 512 x 2048; the tiny
//! models' products never do). Thread counts are fixed per process (`RAYON_NUM_THREADS`), so
//! each case runs this test binary again as a child, once per thread count, and compares digests.

use candle_core::{Device, Tensor};
use protocol::TaskType;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::process::Command;
use worker::model::chat::ChatModel;
use worker::model::{Input, Model};

const CHILD: &str = "AIMARKET_DETERMINISM_CHILD";

/// Runs test `name` of this binary in a child with `threads` threads; the digest it printed.
fn digest_in_child(name: &str, threads: usize) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, name)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child {name} failed: {stdout}");
    assert!(
        stdout.contains(&format!("THREADS {threads} ")),
        "child {name} did not run on {threads} threads: {stdout}"
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("DIGEST ").map(|(_, d)| d))
        .unwrap_or_else(|| panic!("child {name} printed no digest: {stdout}"))
        .to_owned()
}

/// Whether this process is the child that should compute `name`'s digest.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == name)
}

/// The child's line: the thread count candle runs with, then the digests.
fn report(digests: &[String]) {
    println!(
        "THREADS {} DIGEST {}",
        candle_core::utils::get_num_threads(),
        digests.join(" ")
    );
}

fn digest(values: impl IntoIterator<Item = u32>) -> String {
    let mut h = DefaultHasher::new();
    for v in values {
        v.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Deterministic pseudo-random numbers in [-1, 1).
fn numbers(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[test]
fn matmul_child() {
    if !is_child("matmul_child") {
        return;
    }
    let (m, k, n) = (128, 512, 2048);
    let a = Tensor::from_vec(numbers(m * k, 1), (m, k), &Device::Cpu).expect("a");
    let b = Tensor::from_vec(numbers(k * n, 2), (k, n), &Device::Cpu).expect("b");
    let c: Vec<f32> = a
        .matmul(&b)
        .and_then(|c| c.flatten_all())
        .and_then(|c| c.to_vec1())
        .expect("product");
    report(&[digest(c.iter().map(|x| x.to_bits()))]);
}

#[test]
fn a_large_matmul_is_bitwise_equal_on_1_and_2_threads() {
    assert_eq!(
        digest_in_child("matmul_child", 1),
        digest_in_child("matmul_child", 2)
    );
}

#[test]
fn smollm2_child() {
    if !is_child("smollm2_child") {
        return;
    }
    let model = ChatModel::load(&test_support::smollm2_dir()).expect("smollm2");
    let input = Input {
        max_new_tokens: Some(12),
        ..Input::new(TaskType::generate(), "Write one sentence about the sea.")
    };
    let g = model.predict(&[input])[0]
        .as_ref()
        .expect("generated")
        .generation
        .clone()
        .expect("a generation");
    report(&[
        digest(g.token_ids.iter().copied()),
        digest(g.logprobs.iter().map(|l| l.to_bits())),
    ]);
}

#[test]
fn smollm2_answers_are_bitwise_equal_on_1_and_2_threads() {
    assert_eq!(
        digest_in_child("smollm2_child", 1),
        digest_in_child("smollm2_child", 2)
    );
}
