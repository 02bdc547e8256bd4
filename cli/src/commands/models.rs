//! `aimarket infer` (run a model by hand, no coordinator) and `aimarket eval` (accuracy of a model
//! on human-rated sentences).

use super::Ctx;
use crate::output;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::TaskType;
use serde::Serialize;
use std::path::PathBuf;
use worker::model::{Input, Model};

/// Which model, from where.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// The model: auto, lexicon, distilbert-sst2 or minilm.
    #[arg(long, default_value = "lexicon")]
    model: String,
    /// Folder with the model's weights in Hugging Face layout (default: the Hugging Face cache,
    /// downloading into it unless HF_HUB_OFFLINE is set).
    #[arg(long)]
    model_dir: Option<PathBuf>,
}

impl ModelArgs {
    async fn load(&self) -> anyhow::Result<Box<dyn Model>> {
        let (name, dir) = (self.model.clone(), self.model_dir.clone());
        Ok(
            tokio::task::spawn_blocking(move || worker::model::load(&name, dir.as_deref()))
                .await??,
        )
    }
}

/// `aimarket infer` arguments.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task type: sentiment, zero-shot (with --labels) or embedding.
    #[arg(long = "type", default_value = "sentiment")]
    task_type: TaskType,
    /// Candidate labels of a zero-shot task, comma-separated (implies --type zero-shot).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Texts to run the model on.
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Inferred {
    text: String,
    model: String,
    label: Option<String>,
    confidence: Option<f64>,
    /// A classifier's logits, the zero-shot probabilities, the lexicon's compound score.
    scores: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
    error: Option<String>,
}

/// Runs a model on texts and prints label, confidence and raw scores.
pub async fn infer(ctx: &Ctx, args: InferArgs) -> anyhow::Result<()> {
    let model = args.model.load().await?;
    let task_type = match &args.labels {
        Some(_) => TaskType::zero_shot(),
        None => args.task_type.clone(),
    };
    let inputs: Vec<Input> = args
        .texts
        .iter()
        .map(|t| Input {
            labels: args.labels.clone(),
            ..Input::new(task_type.clone(), t.clone())
        })
        .collect();
    let (model, inputs, results) = tokio::task::spawn_blocking(move || {
        let r = model.predict(&inputs);
        (model, inputs, r)
    })
    .await?;
    let rows: Vec<Inferred> = inputs
        .into_iter()
        .zip(results)
        .map(|(i, r)| match r {
            Ok(p) => Inferred {
                text: i.text,
                model: model.id().to_owned(),
                label: Some(p.label).filter(|l| !l.is_empty()),
                confidence: Some(p.confidence),
                scores: if p.embedding.is_some() {
                    Vec::new()
                } else {
                    p.scores
                },
                embedding: p.embedding,
                error: None,
            },
            Err(e) => Inferred {
                text: i.text,
                model: model.id().to_owned(),
                label: None,
                confidence: None,
                scores: Vec::new(),
                embedding: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    if ctx.json {
        return output::json(&rows);
    }
    eprintln!("model {}", model.id());
    let mut t = output::table(["text", "label", "confidence", "scores"]);
    for r in &rows {
        let scores = match &r.embedding {
            Some(v) => format!(
                "{:?} ... ({} dims; --json for all)",
                &v[..v.len().min(4)],
                v.len()
            ),
            None => format!("{:?}", r.scores),
        };
        t.add_row(vec![
            output::clip(&r.text, 60),
            r.label
                .clone()
                .or(r.error.clone())
                .unwrap_or_else(|| "embedding".into()),
            r.confidence.map_or("-".into(), |c| format!("{c:.4}")),
            scores,
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `aimarket eval` arguments.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Ground-truth files: `id<TAB>mean rating<TAB>text` a line; gold label positive above 0,
    /// negative below, rating 0 skipped (the VADER study's format).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Accuracy on one file.
#[derive(Debug, Serialize)]
struct Score {
    file: String,
    sentences: usize,
    correct: usize,
    accuracy: f64,
    positive_recall: f64,
    negative_recall: f64,
    majority_baseline: f64,
    texts_per_sec: f64,
}

/// Measures a model's accuracy against human ratings.
pub async fn eval(ctx: &Ctx, args: EvalArgs) -> anyhow::Result<()> {
    let model: std::sync::Arc<dyn Model> = args.model.load().await?.into();
    let mut scores = Vec::new();
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let gold: Vec<(String, bool)> = text
            .lines()
            .filter_map(|l| {
                let mut cols = l.splitn(3, '\t');
                let (_, rating, text) = (cols.next()?, cols.next()?, cols.next()?);
                let rating: f64 = rating.trim().parse().ok()?;
                (rating != 0.0).then(|| (text.to_owned(), rating > 0.0))
            })
            .collect();
        anyhow::ensure!(
            !gold.is_empty(),
            "{} holds no rated sentences",
            file.display()
        );
        let bar = ProgressBar::new(gold.len() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} [{elapsed}, {per_sec}]",
        )?);
        bar.set_message(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let (mut right, mut pos, mut pos_right, mut neg_right) = (0, 0, 0, 0);
        let started = std::time::Instant::now();
        for chunk in gold.chunks(args.batch.max(1)) {
            let inputs: Vec<Input> = chunk
                .iter()
                .map(|(t, _)| Input::new(TaskType::sentiment(), t.clone()))
                .collect();
            let m = model.clone();
            let results = tokio::task::spawn_blocking(move || m.predict(&inputs)).await?;
            for ((_, is_pos), r) in chunk.iter().zip(results) {
                let said_pos = r?.label == "positive";
                pos += usize::from(*is_pos);
                if said_pos == *is_pos {
                    right += 1;
                    if *is_pos {
                        pos_right += 1;
                    } else {
                        neg_right += 1;
                    }
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let n = gold.len();
        let neg = n - pos;
        scores.push(Score {
            file: file.display().to_string(),
            sentences: n,
            correct: right,
            accuracy: right as f64 / n as f64,
            positive_recall: pos_right as f64 / pos.max(1) as f64,
            negative_recall: neg_right as f64 / neg.max(1) as f64,
            majority_baseline: pos.max(neg) as f64 / n as f64,
            texts_per_sec: n as f64 / started.elapsed().as_secs_f64(),
        });
    }
    if ctx.json {
        return output::json(&scores);
    }
    eprintln!("model {}", model.id());
    let mut t = output::table([
        "file",
        "sentences",
        "accuracy",
        "positive recall",
        "negative recall",
        "majority baseline",
        "texts/s",
    ]);
    for s in &scores {
        t.add_row(vec![
            s.file.clone(),
            s.sentences.to_string(),
            format!("{:.3}", s.accuracy),
            format!("{:.3}", s.positive_recall),
            format!("{:.3}", s.negative_recall),
            format!("{:.3}", s.majority_baseline),
            format!("{:.0}", s.texts_per_sec),
        ]);
    }
    println!("{t}");
    Ok(())
}
