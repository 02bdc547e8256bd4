//! What several test files of the worker share: candle-transformers' forward pass beside the
//! engine's, on one GGUF file.

#![allow(dead_code)] // each test binary uses a different part

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use std::fs::File;
use std::path::Path;
use worker::model::kernel::{Kernel, Threads};
use worker::model::llama::Llama;

/// candle's model of the file at `path` (made by `candle` from its content) and the engine's
/// (fastest kernel path, one thread), each from its own read of the file.
pub(crate) fn candle_and_ours<M>(
    path: &Path,
    candle: impl FnOnce(Content, &mut File) -> candle_core::Result<M>,
) -> (M, Llama) {
    let open = || {
        let mut f = File::open(path).expect("gguf");
        let content = Content::read(&mut f).expect("gguf content");
        (content, f)
    };
    let (content, mut f) = open();
    let theirs = candle(content, &mut f).expect("candle's");
    let (content, mut f) = open();
    let threads = Threads::new(1).expect("one thread");
    let ours = Llama::from_gguf(content, &mut f, Kernel::best(), threads).expect("ours");
    (theirs, ours)
}

/// The last position's logits of a candle forward over `ids` at `pos`.
pub(crate) fn candle_logits(
    forward: impl FnOnce(&Tensor, usize) -> candle_core::Result<Tensor>,
    ids: &[u32],
    pos: usize,
) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    forward(&x, pos)
        .and_then(|l| l.squeeze(0))
        .and_then(|l| l.to_vec1())
        .expect("candle")
}
