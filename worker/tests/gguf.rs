//! `--model gguf:PATH` on tiny llama- and qwen2-architecture GGUF files written here: loaded with
//! the tokenizer, chat template and stop token from their metadata, run (the same answer on every
//! kernel path and thread count), hashed, and refused for a weight type without a kernel or an
//! architecture the engine does not run. A qwen2 file runs as candle-transformers'
//! `quantized_qwen2` runs it.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use protocol::TaskType;
use sha2::Digest;
use std::path::Path;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use worker::model::kernel::{EngineConfig, Kernel};
use worker::model::{load_with, Input, Model};

const DIM: usize = 64;
const HIDDEN: usize = 96;
const LAYERS: usize = 2;
const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn random(len: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    (0..len).map(|_| (rng.f32() - 0.5) * 0.4).collect()
}

fn quantized(rows: usize, cols: usize, dtype: GgmlDType, rng: &mut fastrand::Rng) -> QTensor {
    let t = Tensor::from_vec(random(rows * cols, rng), (rows, cols), &Device::Cpu).expect("t");
    QTensor::quantize(&t, dtype).expect("quantize")
}

/// A tiny chat model: a byte-level vocabulary (every byte, then two control tokens), random
/// weights, `weights` for the layers' products.
fn write_model(path: &Path, arch: &str, weights: GgmlDType) {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.iter().map(char::to_string).collect();
    let mut types = vec![1i32; tokens.len()];
    for special in ["<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_owned());
        types.push(3);
    }
    let vocab = tokens.len();
    let string = |s: &str| Value::String(s.to_owned());
    let array = |v: Vec<Value>| Value::Array(v);
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), string(arch)),
        (format!("{arch}.attention.head_count"), Value::U32(2)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(1)),
        (format!("{arch}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{arch}.embedding_length"), Value::U32(DIM as u32)),
        (format!("{arch}.rope.dimension_count"), Value::U32(32)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.context_length"), Value::U32(256)),
        (format!("{arch}.rope.freq_base"), Value::F32(1_000_000.0)),
        ("tokenizer.ggml.model".into(), string("gpt2")),
        (
            "tokenizer.ggml.pre".into(),
            string(if arch == "qwen2" { "qwen2" } else { "gpt2" }),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            array(tokens.iter().map(|t| string(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), array(Vec::new())),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(vocab as u32 - 2),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(vocab as u32 - 1),
        ),
        ("tokenizer.chat_template".into(), string(TEMPLATE)),
    ];
    let mut rng = fastrand::Rng::with_seed(29);
    let norm = |rng: &mut fastrand::Rng| {
        let w: Vec<f32> = (0..DIM).map(|_| 1.0 + (rng.f32() - 0.5) * 0.1).collect();
        QTensor::quantize(
            &Tensor::from_vec(w, DIM, &Device::Cpu).expect("norm"),
            GgmlDType::F32,
        )
        .expect("f32")
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            quantized(vocab, DIM, GgmlDType::Q8_0, &mut rng),
        ),
        ("output_norm.weight".into(), norm(&mut rng)),
    ];
    for i in 0..LAYERS {
        if arch == "qwen2" {
            for (part, rows) in [("attn_q", DIM), ("attn_k", 32), ("attn_v", 32)] {
                let b = Tensor::from_vec(random(rows, &mut rng), rows, &Device::Cpu).expect("b");
                let b = QTensor::quantize(&b, GgmlDType::F32).expect("f32");
                tensors.push((format!("blk.{i}.{part}.bias"), b));
            }
        }
        let mut add = |name: &str, t: QTensor| tensors.push((format!("blk.{i}.{name}.weight"), t));
        add("attn_norm", norm(&mut rng));
        add("ffn_norm", norm(&mut rng));
        add("attn_q", quantized(DIM, DIM, weights, &mut rng));
        add("attn_k", quantized(32, DIM, weights, &mut rng));
        add("attn_v", quantized(32, DIM, weights, &mut rng));
        add("attn_output", quantized(DIM, DIM, weights, &mut rng));
        add("ffn_gate", quantized(HIDDEN, DIM, weights, &mut rng));
        add("ffn_up", quantized(HIDDEN, DIM, weights, &mut rng));
        add("ffn_down", quantized(DIM, HIDDEN, weights, &mut rng));
    }
    let mut f = std::fs::File::create(path).expect("create");
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).expect("write gguf");
}

fn load(path: &Path, engine: EngineConfig) -> Result<Box<dyn Model>, String> {
    let name = format!("gguf:{}", path.display());
    load_with(&name, None, &engine).map_err(|e| e.to_string())
}

#[test]
fn llama_and_qwen2_ggufs_load_run_and_are_pinned_by_their_hash() {
    let dir = tempfile::tempdir().expect("tmp");
    for (arch, weights) in [
        ("llama", GgmlDType::Q4_1),
        ("llama", GgmlDType::Q8_0),
        ("qwen2", GgmlDType::Q4_1),
    ] {
        let path = dir.path().join(format!("tiny-{weights:?}.gguf"));
        write_model(&path, arch, weights);
        let input = Input {
            max_new_tokens: Some(6),
            ..Input::new(TaskType::generate(), "Hello there.")
        };
        let mut answers = Vec::new();
        for isa in Kernel::available() {
            for threads in [1, 3] {
                let engine = EngineConfig {
                    threads,
                    kernel: Some(isa),
                };
                let model = load(&path, engine).expect("loads");
                assert_eq!(model.id(), format!("gguf/tiny-{weights:?}.gguf"));
                let bytes = std::fs::read(&path).expect("read");
                let hash = hex::encode(sha2::Sha256::digest(&bytes));
                assert_eq!(model.content_hash(), Some(hash.as_str()));
                let g = model.predict(std::slice::from_ref(&input)).remove(0);
                let g = g.expect("an answer").generation.expect("a generation");
                assert!(!g.token_ids.is_empty() && g.token_ids.len() <= 6);
                // The template's tokens, control tokens whole: `<|im_start|>` first.
                assert_eq!(g.prompt_token_ids.first(), Some(&256));
                let bits: Vec<u32> = g.logprobs.iter().map(|l| l.to_bits()).collect();
                answers.push((isa, threads, g.token_ids, bits));
            }
        }
        let (_, _, ids, bits) = &answers[0];
        for (isa, threads, i, b) in &answers {
            assert_eq!(
                (i, b),
                (ids, bits),
                "{weights:?}: {isa} with {threads} threads"
            );
        }
    }
}

#[test]
fn other_weight_types_and_architectures_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let engine = EngineConfig {
        threads: 1,
        kernel: None,
    };
    let path = dir.path().join("f16.gguf");
    write_model(&path, "llama", GgmlDType::F16);
    let err = load(&path, engine).err().expect("refused");
    assert!(
        err.contains("F16") && err.contains("supported: Q4_1, Q8_0"),
        "{err}"
    );
    let path = dir.path().join("gemma.gguf");
    write_model(&path, "gemma", GgmlDType::Q4_1);
    let err = load(&path, engine).err().expect("refused");
    assert!(
        err.contains("\"gemma\"") && err.contains("supported: llama, qwen2"),
        "{err}"
    );
    let err = load(&dir.path().join("absent.gguf"), engine)
        .err()
        .expect("refused");
    assert!(err.contains("no GGUF file"), "{err}");
}

/// A qwen2 file runs as candle-transformers' `quantized_qwen2` runs it: the same logits within
/// float noise over a prompt and four decode steps. Both differ from reading the file as llama
/// would (no biases, interleaved RoPE) by far more.
#[test]
fn a_qwen2_gguf_runs_as_candles_quantized_qwen2() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    use worker::model::kernel::Threads;
    use worker::model::llama::Llama;

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("qwen2.gguf");
    write_model(&path, "qwen2", GgmlDType::Q8_0);
    let (mut candle, mut ours) = common::candle_and_ours(&path, |content, f| {
        ModelWeights::from_gguf(content, f, &Device::Cpu)
    });
    let mut run_candle =
        |ids: &[u32], pos: usize| common::candle_logits(|x, p| candle.forward(x, p), ids, pos);
    let prompt: Vec<u32> = "The sea was calm that night."
        .bytes()
        .map(u32::from)
        .collect();
    let (mut a, mut b) = (
        run_candle(&prompt, 0),
        ours.forward(&prompt, 0).expect("ours"),
    );
    let spread = {
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
    };
    let mut worst = 0f32;
    for step in 0..4u32 {
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        worst = worst.max(diff);
        let next = 65 + step;
        let pos = prompt.len() + step as usize;
        a = run_candle(&[next], pos);
        b = ours.forward(&[next], pos).expect("ours");
    }
    assert!(
        worst < 0.05 * spread,
        "mean difference {worst} against a spread of {spread}"
    );

    // Read as llama (no biases, pairs interleaved): far from candle's qwen2.
    let llama_path = dir.path().join("as-llama.gguf");
    let bytes = std::fs::read(&path).expect("read");
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).expect("content");
    let mut metadata = content.metadata.clone();
    metadata.insert("general.architecture".into(), Value::String("llama".into()));
    for (k, v) in content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("qwen2."))
    {
        metadata.insert(k.replacen("qwen2.", "llama.", 1), v.clone());
    }
    let mut reader = std::io::Cursor::new(bytes);
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .filter(|name| !name.ends_with(".bias"))
        .map(|name| {
            let t = content
                .tensor(&mut reader, name, &Device::Cpu)
                .expect("tensor");
            (name.clone(), t)
        })
        .collect();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(&llama_path).expect("create");
    gguf_file::write(&mut out, &md, &ts).expect("write");
    let mut f = std::fs::File::open(&llama_path).expect("gguf");
    let content = gguf_file::Content::read(&mut f).expect("content");
    let one = Threads::new(1).expect("one thread");
    let mut as_llama = Llama::from_gguf(content, &mut f, Kernel::best(), one).expect("llama");
    let c = run_candle(&prompt, 0);
    let l = as_llama.forward(&prompt, 0).expect("as llama");
    let off = c.iter().zip(&l).map(|(x, y)| (x - y).abs()).sum::<f32>() / c.len() as f32;
    assert!(
        off > 10.0 * worst.max(1e-6),
        "as llama: mean difference {off}, as qwen2: {worst}"
    );
}
