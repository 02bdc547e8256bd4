//! Models behind one trait. A model says which task types it can do and answers a batch of
//! inputs at once; the runtime calls it on a blocking thread, never on the async runtime.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod chat;
pub mod distilbert;
mod expf;
pub mod hub;
mod interface;
pub mod kernel;
pub mod lexicon;
pub mod llama;
mod load;
pub mod marian;
pub mod minilm;
pub mod opus;
pub mod q4_1;
pub mod q8;
pub mod q8_0;
pub mod seq2seq;
pub mod t5;
#[cfg(target_arch = "x86_64")]
mod tile_product;
pub mod transformer;

pub use interface::*;
pub use load::{load, load_with, LoadModelError, AUTO_PREFERS, GGUF_PREFIX, KNOWN};
