//! The generation engine's promise over a whole forward pass of the real SmolLM2-135M-Instruct
//! Q4_1 file: the logits do not depend on the kernel path, the thread count, how many rows a
//! pass takes, or whether a position came in the prompt pass or as a decode step. Compared bit
//! for bit.

use candle_core::quantized::gguf_file;
use worker::model::kernel::{Isa, Kernel, Threads};
use worker::model::llama::Llama;

/// A chat prompt's ids (the summarization template around a short text), then greedy steps.
const PROMPT: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
    198,
];

fn load(kernel: Kernel, threads: usize) -> Llama {
    let path = test_support::smollm2_dir().join(worker::model::chat::GGUF_FILE);
    let mut f = std::fs::File::open(&path).expect("gguf");
    let content = gguf_file::Content::read(&mut f).expect("gguf content");
    Llama::from_gguf(
        content,
        &mut f,
        kernel,
        Threads::new(threads).expect("threads"),
    )
    .expect("loads")
}

fn bits(rows: &[Vec<f32>]) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Every prompt row's logits from one pass, then `steps` greedy decode steps' logits.
fn prompt_then_decode(model: &mut Llama, steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    model.clear_kv_cache();
    let rows = model
        .forward_last(PROMPT, 0, PROMPT.len())
        .expect("prompt pass");
    let mut next = argmax(rows.last().expect("a row"));
    let mut decoded = Vec::new();
    for step in 0..steps {
        let logits = model
            .forward(&[next], PROMPT.len() + step)
            .expect("decode step");
        next = argmax(&logits);
        decoded.push(logits);
    }
    (rows, decoded)
}

#[test]
fn every_kernel_path_and_thread_count_gives_the_same_logits() {
    let mut reference = None;
    for isa in Kernel::available() {
        for threads in 1..=3 {
            let mut model = load(Kernel::new(isa).expect("path"), threads);
            let got = prompt_then_decode(&mut model, 4);
            let got = (bits(&got.0), bits(&got.1));
            match &reference {
                None => reference = Some((isa, threads, got)),
                Some((isa0, t0, want)) => assert!(
                    &got == want,
                    "{isa} with {threads} threads differs from {isa0} with {t0}"
                ),
            }
        }
    }
    let (_, _, (rows, _)) = reference.expect("at least the portable path");
    assert_eq!(rows.len(), PROMPT.len());
    assert!(Kernel::available().contains(&Isa::Portable));
}

/// A position's logits are the same whether it came in the prompt pass, alone as a decode
/// step, or in a pass with more rows after it (a longer batch).
#[test]
fn prompt_rows_decode_steps_and_longer_passes_agree_bit_for_bit() {
    let mut model = load(Kernel::best(), 2);
    let (rows, _) = prompt_then_decode(&mut model, 0);
    // The same positions one by one, as decode steps.
    model.clear_kv_cache();
    let stepped: Vec<Vec<f32>> = PROMPT
        .iter()
        .enumerate()
        .map(|(p, &t)| model.forward(&[t], p).expect("step"))
        .collect();
    assert_eq!(
        bits(&stepped),
        bits(&rows),
        "prompt pass against decode steps"
    );
    // A prefix in a pass of its own, then the rest in a second pass of several rows.
    model.clear_kv_cache();
    let cut = 13;
    let mut split = model.forward_last(&PROMPT[..cut], 0, cut).expect("prefix");
    split.extend(
        model
            .forward_last(&PROMPT[cut..], cut, PROMPT.len() - cut)
            .expect("rest"),
    );
    assert_eq!(bits(&split), bits(&rows), "two passes against one");
    // Only the last rows asked for: the same rows.
    model.clear_kv_cache();
    let last = model.forward_last(PROMPT, 0, 5).expect("last five");
    assert_eq!(bits(&last), bits(&rows[rows.len() - 5..]));
}

/// A sequence that repeats the cached one's start reuses those positions' keys and values and
/// computes only the rest, and gets the same bits as a pass over the whole of it: so another
/// candidate of the same prompt, the next turn of a chat or the same prompt again skip their
/// shared start. At least the rows asked for are always computed.
#[test]
fn a_shared_prefix_is_reused_and_changes_no_bit() {
    let mut model = load(Kernel::best(), 2);
    let (rows, _) = prompt_then_decode(&mut model, 0);
    let fresh = |model: &mut Llama, seq: &[u32], n: usize| {
        model.clear_kv_cache();
        model.forward_last(seq, 0, n).expect("whole pass")
    };
    // Another continuation of the prompt's first 30 tokens.
    let other: Vec<u32> = PROMPT[..30]
        .iter()
        .copied()
        .chain([28, 260, 3575])
        .collect();
    let want = fresh(&mut model, &other, 3);
    // The cache holds the whole prompt: 30 of `other`'s positions are kept.
    model.clear_kv_cache();
    model.forward_last(PROMPT, 0, 1).expect("prompt");
    let kept = model.reuse_prefix(&other, 3);
    assert_eq!(kept, 30);
    assert_eq!(model.cached_tokens(), &PROMPT[..30]);
    let got = model
        .forward_last(&other[kept..], kept, 3)
        .expect("the rest");
    assert_eq!(
        bits(&got),
        bits(&want),
        "reused prefix against a whole pass"
    );
    assert_eq!(model.cached_tokens(), &other[..]);
    // The same sequence again: all but the rows asked for are kept.
    let kept = model.reuse_prefix(&other, 3);
    assert_eq!(kept, other.len() - 3);
    let again = model.forward_last(&other[kept..], kept, 3).expect("again");
    assert_eq!(bits(&again), bits(&want));
    // Nothing shared: nothing kept, and the prompt's rows come out as before.
    let kept = model.reuse_prefix(&[PROMPT[1]], 1);
    assert_eq!(kept, 0);
    model.clear_kv_cache();
    let kept = model.reuse_prefix(PROMPT, PROMPT.len());
    assert_eq!(kept, 0);
    let whole = model.forward_last(PROMPT, 0, PROMPT.len()).expect("prompt");
    assert_eq!(bits(&whole), bits(&rows));
}
