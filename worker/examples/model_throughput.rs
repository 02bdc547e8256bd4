//! Texts per second of the transformer backends on this CPU, at several batch sizes, over the
//! first 480 product-review sentences of the VADER study (`scripts/fetch-sentences.sh`, found
//! through `AIMARKET_SENTENCES_DIR`).
//!
//! DistilBERT runs at the size of the original's model (distilbert-base-uncased-finetuned-sst-2-
//! english: 6 layers, 768 wide, 66M parameters) with random weights and the real uncased BERT
//! vocabulary (all-MiniLM-L6-v2's tokenizer, the same 30,522 WordPiece tokens), so its token
//! counts and arithmetic are the real model's; MiniLM runs on its real weights.
//!
//! `cargo run --release -p worker --example model_throughput -- MINILM_DIR [BATCH...]`
//! (`make bench` runs it.)

use std::path::{Path, PathBuf};
use std::time::Instant;
use test_support::models::{write_distilbert, DistilBertShape};
use worker::model::distilbert::Sst2;
use worker::model::minilm::MiniLm;
use worker::model::{Input, Model};

/// Sentences per measurement: enough for a steady rate, few enough for `make bench`.
const SAMPLE: usize = 480;

fn sentences() -> Vec<String> {
    let path = test_support::sentences_dir().join("amazonReviewSnippets_GroundTruth.txt");
    let text = std::fs::read_to_string(path).expect("the review sentences");
    text.lines()
        .filter_map(|l| l.splitn(3, '\t').nth(2).map(str::to_owned))
        .take(SAMPLE)
        .collect()
}

/// Texts per second of `model` over `texts` in batches of `batch` (after one warm-up batch).
fn rate(model: &dyn Model, texts: &[String], batch: usize) -> f64 {
    let inputs: Vec<Input> = texts
        .iter()
        .map(|t| Input::new(protocol::TaskType::sentiment(), t.clone()))
        .collect();
    let _ = model.predict(&inputs[..batch.min(inputs.len())]);
    let started = Instant::now();
    for chunk in inputs.chunks(batch) {
        for r in model.predict(chunk) {
            r.expect("prediction");
        }
    }
    texts.len() as f64 / started.elapsed().as_secs_f64()
}

fn distilbert_base(minilm: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_distilbert(dir.path(), DistilBertShape::BASE, 0.05, 1);
    std::fs::copy(
        minilm.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("tokenizer");
    dir
}

fn main() {
    let mut args = std::env::args().skip(1);
    let minilm_dir = PathBuf::from(
        args.next()
            .expect("usage: model_throughput MINILM_DIR [BATCH...]"),
    );
    let mut batches: Vec<usize> = args.map(|b| b.parse().expect("a batch size")).collect();
    if batches.is_empty() {
        batches = vec![1, 8, 32];
    }
    let texts = sentences();
    let distilbert_dir = distilbert_base(&minilm_dir);
    let models: Vec<(&str, Box<dyn Model>)> = vec![
        (
            "distilbert-sst2 (base size, random weights)",
            Box::new(Sst2::load(distilbert_dir.path()).expect("load DistilBERT")),
        ),
        (
            "minilm (all-MiniLM-L6-v2)",
            Box::new(MiniLm::load(&minilm_dir).expect("load MiniLM")),
        ),
    ];
    println!(
        "{} sentences, {} threads",
        texts.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| model | batch | texts/s | vs batch {} |", batches[0]);
    println!("|---|---|---|---|");
    for (name, model) in &models {
        let mut first = None;
        for &b in &batches {
            let r = rate(model.as_ref(), &texts, b);
            let base = *first.get_or_insert(r);
            println!("| {name} | {b} | {r:.1} | {:.2}x |", r / base);
        }
    }
}
