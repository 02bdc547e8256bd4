//! Tokens per second of `smollm2` on this CPU: prompt processing and generation separately,
//! greedy, over a fixed chat prompt; and what verifying that generation costs: one
//! teacher-forced pass over the prompt and the generated tokens, against the whole generation.
//! `scripts/bench-generation.sh` runs it at 1 and 2 threads, beside llama.cpp on the same GGUF
//! file.
//!
//! `cargo run --release -p worker --example generation_throughput -- SMOLLM2_DIR [NEW_TOKENS]
//! [THREADS] [SOURCE_FILE]` (with a source file: a `summarization` task of its text instead of
//! the chat prompt) prints one JSON line: `{"threads", "kernel", "prompt_tokens",
//! "prompt_tokens_per_sec", "new_tokens", "generated_tokens", "generation_tokens_per_sec",
//! "generate_ms", "verify_ms", "verify_again_ms"}`, medians of three runs. Each generation and
//! the verify pass start from an empty cache (a verifier that did not generate);
//! `verify_again_ms` scores a second candidate of the same prompt right after (one that parts
//! from the first at its second token), reusing the prompt's keys and values, as a verifier
//! scoring two candidates of a task does. The generation ignores the stop
//! token, so that it makes NEW_TOKENS whatever the model would say; `generated_tokens` counts
//! what it made, and the generation and verify figures are over those tokens. The kernel path is `AIMARKET_KERNEL`'s, or the fastest.

use protocol::TaskType;
use std::path::PathBuf;
use std::time::Instant;
use worker::model::chat::ChatModel;
use worker::model::kernel::EngineConfig;
use worker::model::Input;

/// The prompt: long enough that prompt processing is measured over ~100 tokens.
const PROMPT: &str = "Read the following note and explain in a few sentences what the writer \
    wants, then suggest a reply. The note: the team meeting moves from Monday to Tuesday at ten, \
    in the small room on the second floor, because the large room is being painted; please bring \
    the figures for the third quarter and the list of open questions from last week.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: generation_throughput SMOLLM2_DIR [N]"),
    );
    let new_tokens: u32 = args
        .next()
        .map_or(64, |n| n.parse().expect("a token count"));
    let threads: usize = args
        .next()
        .map_or(1, |n| n.parse().expect("a thread count"));
    let engine = EngineConfig {
        threads,
        kernel: None,
    };
    let model = ChatModel::load_with(&dir, &engine).expect("smollm2 loads");
    let kernel = engine.kernel().expect("kernel").isa();
    let input = match args.next() {
        Some(source) => Input::new(
            TaskType::summarization(),
            std::fs::read_to_string(&source).expect("the source file"),
        ),
        None => Input::new(TaskType::generate(), PROMPT),
    };
    let (prompt, _) = model.prepare(&input).expect("prompt");
    let (mut pp, mut tg, mut whole, mut verify) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut generated = 0;
    let mut again = Vec::new();
    for _ in 0..3 {
        model.clear_cache();
        let started = Instant::now();
        model.generate(&prompt, 1, &[]).expect("one token");
        let first = started.elapsed().as_secs_f64();
        model.clear_cache();
        let started = Instant::now();
        // No id stops it (none is u32::MAX): it makes NEW_TOKENS, the figures count what it made.
        let (ids, _, _) = model
            .generate(&prompt, new_tokens, &[u32::MAX])
            .expect("generation");
        let all = started.elapsed().as_secs_f64();
        generated = ids.len();
        pp.push(prompt.len() as f64 / first);
        tg.push((ids.len() as f64 - 1.0) / (all - first).max(1e-9));
        whole.push(all * 1e3);
        model.clear_cache();
        let started = Instant::now();
        model
            .candidate_logits(&prompt, &ids)
            .expect("teacher-forced pass");
        verify.push(started.elapsed().as_secs_f64() * 1e3);
        let mut other = ids.clone();
        other[1] = other[1].wrapping_add(1) % 49_152;
        let started = Instant::now();
        model
            .candidate_logits(&prompt, &other)
            .expect("teacher-forced pass");
        again.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{{\"threads\": {threads}, \"kernel\": \"{kernel}\", \"prompt_tokens\": {}, \
         \"prompt_tokens_per_sec\": {:.1}, \"new_tokens\": {new_tokens}, \
         \"generated_tokens\": {generated}, \"generation_tokens_per_sec\": {:.1}, \
         \"generate_ms\": {:.1}, \"verify_ms\": {:.1}, \"verify_again_ms\": {:.1}}}",
        prompt.len(),
        median(pp),
        median(tg),
        median(whole),
        median(verify),
        median(again)
    );
}
