//! The answer of a generative task must not depend on how many threads a worker runs: the
//! token ids of `smollm2` (and their log-probabilities) are bit-identical on 1 and 2 threads,
//! and so is a matrix product large enough to reach gemm's blocking (128 x 512 x 2048; the tiny
//! models' products never do). Nor on the CPU: a child run by QEMU as an x86-64 CPU without AVX
//! computes `smollm2`'s bits on the portable path. Thread counts are fixed per process
//! (`RAYON_NUM_THREADS`), so each case runs this test binary again as a child, once per thread
//! count or CPU, and compares digests.

use candle_core::{Device, Tensor};
use protocol::TaskType;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::process::Command;
use worker::model::chat::ChatModel;
use worker::model::kernel::{EngineConfig, KERNEL_ENV};
use worker::model::{Input, Model};

const CHILD: &str = "AIMARKET_DETERMINISM_CHILD";

/// Runs test `name` of this binary in a child with `threads` threads; the digest it printed.
fn digest_in_child(name: &str, threads: usize) -> String {
    digest_of(&child_stdout(name, threads, &[]))
}

/// What test `name` of this binary printed, run in a child with `threads` threads, through
/// `wrapper` (a program and its arguments that run the binary, or nothing).
fn child_stdout(name: &str, threads: usize, wrapper: &[&str]) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = command
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, name)
        .env("RAYON_NUM_THREADS", threads.to_string())
        // Each child takes the fastest path of the CPU it runs on, whatever this shell forces.
        .env_remove(KERNEL_ENV)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("THREADS {threads} ")),
        "child {name} did not run on {threads} threads: {stdout}"
    );
    stdout
}

/// The digests a child printed.
fn digest_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split_once("DIGEST ").map(|(_, d)| d))
        .unwrap_or_else(|| panic!("the child printed no digest: {stdout}"))
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
    let kernel = EngineConfig::default().kernel().expect("a kernel path");
    println!("KERNEL {}", kernel.isa());
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

/// QEMU's user-mode x86-64 emulator: `$AIMARKET_QEMU_X86_64` (`make test` installs it with
/// `scripts/setup.sh --qemu`), else `qemu-x86_64` on `PATH`.
#[cfg(target_arch = "x86_64")]
fn qemu_x86_64() -> String {
    std::env::var("AIMARKET_QEMU_X86_64")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("qemu-x86_64"))
                    .find(|p| p.is_file())
                    .map(|p| p.display().to_string())
            })
        })
        .expect(
            "qemu-x86_64 not found: run `scripts/setup.sh --qemu` (or `make test`), or set \
             AIMARKET_QEMU_X86_64",
        )
}

/// A worker on an x86-64 CPU without AVX (QEMU's Nehalem: SSE4.2 at most, so the engine takes
/// its portable path) computes the ids and log-probabilities this CPU's fastest path does.
#[cfg(target_arch = "x86_64")]
#[test]
fn smollm2_answers_are_bitwise_equal_on_a_cpu_without_avx() {
    let native = child_stdout("smollm2_child", 1, &[]);
    let qemu = qemu_x86_64();
    let emulated = child_stdout("smollm2_child", 1, &[&qemu, "-cpu", "Nehalem"]);
    assert!(
        emulated.contains("KERNEL portable"),
        "the emulated CPU did not run the portable path: {emulated}"
    );
    assert_eq!(digest_of(&native), digest_of(&emulated));
}
