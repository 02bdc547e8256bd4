//! `aimarket infer` (run a model by hand, no coordinator) and `aimarket eval` (accuracy of a model
//! on human-rated sentences).

use super::Ctx;
use crate::output;
use anyhow::Context;
use coordinator::consensus::{decide, Vote};
use protocol::TaskType;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use worker::model::{Input, Model};

/// Which model, from where.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// The model: auto, lexicon, distilbert-sst2, minilm, smollm2, or gguf:PATH (any
    /// llama- or qwen2-architecture chat GGUF file with Q4_1 or Q8_0 weights).
    #[arg(long, default_value = "lexicon")]
    model: String,
    /// Folder with the model's weights in Hugging Face layout (default: the Hugging Face cache,
    /// downloading into it unless HF_HUB_OFFLINE is set).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// How a generative model (smollm2) runs: its threads and kernel path.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct EngineArgs {
    /// Threads for a generative model's forward pass (as llama.cpp's -t); 0: every core.
    #[arg(long, env = "AIMARKET_THREADS", default_value_t = 0)]
    threads: usize,
    /// The kernel path of a generative model's products: auto (the fastest this CPU runs),
    /// portable, neon, avx2, avx512 or amx. Every path gives the same bits; forcing one checks that.
    #[arg(long, env = worker::model::kernel::KERNEL_ENV, default_value = "auto", value_parser = parse_kernel)]
    kernel: KernelArg,
}

/// `--kernel`: a path, or `auto` (none forced).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelArg(Option<worker::model::kernel::Isa>);

impl EngineArgs {
    /// Every core, the fastest path (`eval`'s models).
    const AUTO: Self = Self {
        threads: 0,
        kernel: KernelArg(None),
    };

    /// The worker library's form.
    pub(crate) fn config(self) -> worker::model::kernel::EngineConfig {
        worker::model::kernel::EngineConfig {
            threads: self.threads,
            kernel: self.kernel.0,
        }
    }
}

fn parse_kernel(s: &str) -> Result<KernelArg, String> {
    match s {
        "auto" => Ok(KernelArg(None)),
        other => other
            .parse()
            .map(|isa| KernelArg(Some(isa)))
            .map_err(|e| format!("{e}")),
    }
}

impl ModelArgs {
    async fn load(&self) -> anyhow::Result<Box<dyn Model>> {
        let (name, dir) = (self.model.clone(), self.model_dir.clone());
        let engine = self.engine.config();
        Ok(tokio::task::spawn_blocking(move || {
            worker::model::load_with(&name, dir.as_deref(), &engine)
        })
        .await??)
    }
}

/// `aimarket infer` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct InferArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task type: sentiment, zero-shot (with --labels), embedding, generate, summarization or
    /// translation (with --source-lang and --target-lang).
    #[arg(long = "type", default_value = "sentiment")]
    task_type: TaskType,
    /// Candidate labels of a zero-shot task, comma-separated (implies --type zero-shot).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Most tokens a generative model may produce (default: the model's, 128 for smollm2).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=512))]
    max_new_tokens: Option<u32>,
    /// A translation's source language (ISO 639-1: en, fr, de, es, it, pt).
    #[arg(long, requires = "target_lang")]
    source_lang: Option<String>,
    /// A translation's target language.
    #[arg(long, requires = "source_lang")]
    target_lang: Option<String>,
    /// Score these token ids (comma-separated) as the answer to each text, with one
    /// teacher-forced pass, instead of generating: what a verifier does. Prints each token's
    /// log-probability and gap to the best token, and the verdict at the model's `eps`.
    #[arg(long, value_delimiter = ',')]
    score_ids: Option<Vec<u32>>,
    /// A chat to answer instead of texts (implies --type generate): a JSON list of
    /// `{"role","content"}` turns or JSON lines of them (`-` for stdin), rendered with every
    /// turn by the model's chat template, as `task add --messages` and the OpenAI-compatible API.
    #[arg(long, conflicts_with = "texts")]
    messages: Option<std::path::PathBuf>,
    /// Feed each text to a generative model as it is, without its chat template (implies
    /// --type generate), as `/v1/completions` does.
    #[arg(long, conflicts_with = "messages")]
    raw: bool,
    /// A stop string (repeat for up to 4): the generation ends at the first, its text cut before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Sample at this temperature (0 < T <= 4) with --seed instead of greedy decoding.
    #[arg(long, requires = "seed")]
    temperature: Option<f32>,
    /// The sampling seed, with --temperature.
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
    /// Texts to run the model on.
    #[arg(required_unless_present = "messages")]
    texts: Vec<String>,
}

/// What `infer --score-ids` shows of one scoring.
#[derive(Debug, Serialize)]
struct ScoredRow {
    text: String,
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_hash: Option<String>,
    token_ids: Vec<u32>,
    logprobs: Vec<f32>,
    gaps: Vec<f32>,
    eps: f32,
    passed: bool,
}

/// Scores `ids` as the answer to each input, as a verifier would.
async fn score_candidate(
    ctx: &Ctx,
    model: Box<dyn Model>,
    name: &str,
    inputs: Vec<Input>,
    ids: Vec<u32>,
) -> anyhow::Result<()> {
    let first = inputs.first().context("no text")?;
    let spec = protocol::generation::resolve(
        &first.task_type,
        &protocol::generation::SpecRequest {
            model: Some(name),
            model_hash: model.content_hash(),
            max_new_tokens: first.max_new_tokens,
            source_lang: first.languages.as_ref().map(|(f, _)| f.as_str()),
            target_lang: first.languages.as_ref().map(|(_, t)| t.as_str()),
            ..Default::default()
        },
    )
    .context("--score-ids is for the generative models and types")?;
    let jobs: Vec<(Input, Vec<u32>)> = inputs.into_iter().map(|i| (i, ids.clone())).collect();
    let (model, jobs, results) = tokio::task::spawn_blocking(move || {
        let r = model.score(&jobs);
        (model, jobs, r)
    })
    .await?;
    let mut rows = Vec::new();
    for ((input, ids), r) in jobs.into_iter().zip(results) {
        let s = r.with_context(|| format!("scoring {:?}", input.text))?;
        rows.push(ScoredRow {
            passed: protocol::verify::verdict(&ids, &s.gaps, &spec, spec.eps()),
            text: input.text,
            model: model.id().to_owned(),
            model_hash: model.content_hash().map(str::to_owned),
            token_ids: ids,
            logprobs: s.logprobs,
            gaps: s.gaps,
            eps: spec.eps(),
        });
    }
    if ctx.json {
        return output::json(&rows);
    }
    for r in &rows {
        let (at, gap) = r
            .gaps
            .iter()
            .enumerate()
            .fold((0, 0f32), |b, (i, &g)| if g > b.1 { (i, g) } else { b });
        println!(
            "{}\n  -> {} at eps {}: largest gap {gap:.4} at position {at}, log-probability {:.3}",
            output::clip(&r.text, 200),
            if r.passed { "passes" } else { "refused" },
            r.eps,
            r.logprobs.iter().sum::<f32>()
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Inferred {
    text: String,
    model: String,
    /// SHA-256 of the model content, for models whose answers are pinned to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_hash: Option<String>,
    label: Option<String>,
    confidence: Option<f64>,
    /// A classifier's logits, the zero-shot probabilities, the lexicon's compound score.
    scores: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
    /// How many tokens an encoder read (a generation's prompt is `prompt_token_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u32>,
    /// A generative model's answer.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    generation: Option<Generated>,
    error: Option<String>,
}

/// What `infer --json` shows of a generation, so anyone can check a worker's answer by hand.
#[derive(Debug, Serialize)]
struct Generated {
    prompt_token_ids: Vec<u32>,
    token_ids: Vec<u32>,
    generated_text: String,
    logprobs: Vec<f32>,
    truncated: bool,
    /// `stop_token`, `stop_string` or `length`.
    stop: &'static str,
    /// Where each token's text ends in `generated_text`, in bytes.
    token_ends: Vec<u32>,
}

impl From<worker::model::Generation> for Generated {
    fn from(g: worker::model::Generation) -> Self {
        Self {
            prompt_token_ids: g.prompt_token_ids,
            token_ids: g.token_ids,
            generated_text: g.text,
            logprobs: g.logprobs,
            truncated: g.truncated,
            stop: match g.stop {
                worker::model::Stop::StopToken => "stop_token",
                worker::model::Stop::Length => "length",
                worker::model::Stop::StopString => "stop_string",
            },
            token_ends: g.token_ends,
        }
    }
}

/// Runs a model on texts and prints label, confidence and raw scores.
pub(crate) async fn infer(ctx: &Ctx, args: InferArgs) -> anyhow::Result<()> {
    protocol::chat::validate_stop(&args.stop)?;
    let (task_type, texts, template) = match (&args.messages, &args.labels) {
        (Some(path), _) => (
            TaskType::generate(),
            vec![protocol::chat::encode(&super::chat_file::read(path)?)],
            Some(protocol::generation::TEMPLATE_MESSAGES.to_owned()),
        ),
        (None, _) if args.raw => (
            TaskType::generate(),
            args.texts.clone(),
            Some(protocol::generation::TEMPLATE_RAW.to_owned()),
        ),
        (None, Some(_)) => (TaskType::zero_shot(), args.texts.clone(), None),
        (None, None) => (args.task_type.clone(), args.texts.clone(), None),
    };
    let decoding = match (args.temperature, args.seed) {
        (Some(temperature), Some(seed)) => {
            protocol::generation::Decoding::Sample { temperature, seed }
        }
        _ => protocol::generation::Decoding::Greedy,
    };
    let model = args.model.load().await?;
    let inputs: Vec<Input> = texts
        .iter()
        .map(|t| Input {
            labels: args.labels.clone(),
            max_new_tokens: args.max_new_tokens,
            languages: args.source_lang.clone().zip(args.target_lang.clone()),
            template: template.clone(),
            stop: args.stop.clone(),
            decoding,
            ..Input::new(task_type.clone(), t.clone())
        })
        .collect();
    if let Some(ids) = args.score_ids {
        return score_candidate(ctx, model, &args.model.model, inputs, ids).await;
    }
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
                model_hash: model.content_hash().map(str::to_owned),
                label: Some(p.label).filter(|l| !l.is_empty()),
                confidence: Some(p.confidence),
                scores: p.scores,
                embedding: p.embedding,
                input_tokens: p.input_tokens,
                generation: p.generation.map(Generated::from),
                error: None,
            },
            Err(e) => Inferred {
                text: i.text,
                model: model.id().to_owned(),
                model_hash: model.content_hash().map(str::to_owned),
                label: None,
                confidence: None,
                scores: Vec::new(),
                embedding: None,
                input_tokens: None,
                generation: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    if ctx.json {
        return output::json(&rows);
    }
    eprintln!("model {}", model.id());
    if task_type.is_generative() {
        for r in &rows {
            match (&r.generation, &r.error) {
                (Some(g), _) => println!(
                    "{}\n  -> {} ({} tokens, {}{})",
                    output::clip(&r.text, 200),
                    g.generated_text.trim(),
                    g.token_ids.len(),
                    g.stop,
                    if g.truncated {
                        ", source cut to fit"
                    } else {
                        ""
                    }
                ),
                (None, error) => println!(
                    "{}\n  -> error: {}",
                    output::clip(&r.text, 200),
                    error.as_deref().unwrap_or("no answer")
                ),
            }
        }
        return Ok(());
    }
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
pub(crate) struct EvalArgs {
    /// A model to score, `NAME` or `NAME=DIR` (its weights folder); repeat it for several, and
    /// the vote the coordinator would finalize over their answers is scored too.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// The weights folder of the one transformer model given without `=DIR` (as `infer` and
    /// `worker` take it).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Ground-truth files: `id<TAB>mean rating<TAB>text` a line; gold label positive above 0,
    /// negative below, rating 0 skipped (the VADER study's format).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Accuracy of one model (or the vote) on one file.
#[derive(Debug, Serialize)]
struct Score {
    file: String,
    model: String,
    sentences: usize,
    correct: usize,
    accuracy: f64,
    positive_recall: f64,
    negative_recall: f64,
    majority_baseline: f64,
    /// Not measured for the vote (its members' rates are).
    texts_per_sec: Option<f64>,
}

/// A model's answers to a file's sentences: label and confidence each.
type Answers = Vec<(String, f64)>;

/// Runs `model` over the sentences in batches, with a progress bar; returns the answers and the
/// texts per second.
async fn answer_all(
    model: &Arc<dyn Model>,
    gold: &[(String, bool)],
    batch: usize,
    what: String,
) -> anyhow::Result<(Answers, f64)> {
    let bar = super::task::progress(gold.len() as u64, &what, true);
    let mut answers = Vec::with_capacity(gold.len());
    let started = std::time::Instant::now();
    for chunk in gold.chunks(batch.max(1)) {
        let inputs: Vec<Input> = chunk
            .iter()
            .map(|(t, _)| Input::new(TaskType::sentiment(), t.clone()))
            .collect();
        let m = model.clone();
        for r in tokio::task::spawn_blocking(move || m.predict(&inputs)).await? {
            let p = r?;
            answers.push((p.label, p.confidence));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((answers, gold.len() as f64 / started.elapsed().as_secs_f64()))
}

fn score(file: &Path, model: String, gold: &[(String, bool)], answers: &Answers) -> Score {
    let (mut right, mut pos, mut pos_right, mut neg_right) = (0, 0, 0, 0);
    for ((_, is_pos), (label, _)) in gold.iter().zip(answers) {
        let said_pos = label == "positive";
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
    let n = gold.len();
    let neg = n - pos;
    Score {
        file: file.display().to_string(),
        model,
        sentences: n,
        correct: right,
        accuracy: right as f64 / n as f64,
        positive_recall: pos_right as f64 / pos.max(1) as f64,
        negative_recall: neg_right as f64 / neg.max(1) as f64,
        majority_baseline: pos.max(neg) as f64 / n as f64,
        texts_per_sec: None,
    }
}

/// What the coordinator would finalize from these models' answers: majority vote, ties to the
/// higher mean confidence.
fn vote(per_model: &[Answers]) -> Answers {
    (0..per_model[0].len())
        .map(|i| {
            let ballot: Vec<Vote<'_>> = per_model
                .iter()
                .map(|a| Vote {
                    label: &a[i].0,
                    confidence: a[i].1,
                })
                .collect();
            let d = decide(&ballot).expect("at least one model");
            (d.label, d.confidence)
        })
        .collect()
}

/// `--model NAME[=DIR]` specs, with `--model-dir` going to the one model that needs weights and
/// names no folder of its own.
fn model_specs(specs: &[String], model_dir: Option<&Path>) -> anyhow::Result<Vec<ModelArgs>> {
    let mut models: Vec<ModelArgs> = specs
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dir)) => ModelArgs {
                model: name.to_owned(),
                model_dir: Some(PathBuf::from(dir)),
                engine: EngineArgs::AUTO,
            },
            None => ModelArgs {
                model: spec.clone(),
                model_dir: None,
                engine: EngineArgs::AUTO,
            },
        })
        .collect();
    let Some(dir) = model_dir else {
        return Ok(models);
    };
    let takers: Vec<&mut ModelArgs> = models
        .iter_mut()
        .filter(|m| m.model_dir.is_none() && m.model != "lexicon")
        .collect();
    match <[_; 1]>::try_from(takers) {
        Ok([m]) => m.model_dir = Some(dir.to_owned()),
        Err(takers) if takers.is_empty() => anyhow::bail!(
            "--model-dir {} is for a transformer model given without =DIR, and there is none",
            dir.display()
        ),
        Err(takers) => anyhow::bail!(
            "--model-dir {} could be for any of {}: give each its folder as --model NAME=DIR",
            dir.display(),
            takers
                .iter()
                .map(|m| m.model.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    Ok(models)
}

/// Measures models' accuracy (and their vote's) against human ratings.
pub(crate) async fn eval(ctx: &Ctx, args: EvalArgs) -> anyhow::Result<()> {
    let mut models: Vec<Arc<dyn Model>> = Vec::new();
    for m in model_specs(&args.models, args.model_dir.as_deref())? {
        models.push(m.load().await?.into());
    }
    let mut scores = Vec::new();
    for file in &args.files {
        let gold = super::gold::read_rated(file)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut per_model = Vec::new();
        for model in &models {
            let what = format!("{} on {name}", model.id());
            let (answers, rate) = answer_all(model, &gold, args.batch, what).await?;
            let mut s = score(file, model.id().to_owned(), &gold, &answers);
            s.texts_per_sec = Some(rate);
            scores.push(s);
            per_model.push(answers);
        }
        if models.len() > 1 {
            let ids: Vec<&str> = models.iter().map(|m| m.id()).collect();
            let label = format!("vote of {}", ids.join(" + "));
            scores.push(score(file, label, &gold, &vote(&per_model)));
        }
    }
    if ctx.json {
        return output::json(&scores);
    }
    let mut t = output::table([
        "file",
        "model",
        "sentences",
        "accuracy",
        "positive recall",
        "negative recall",
        "majority baseline",
        "texts/s",
    ]);
    for s in &scores {
        t.add_row(vec![
            output::clip(
                Path::new(&s.file)
                    .file_name()
                    .map_or(s.file.as_str(), |n| n.to_str().unwrap_or_default()),
                40,
            ),
            s.model.clone(),
            s.sentences.to_string(),
            format!("{:.3}", s.accuracy),
            format!("{:.3}", s.positive_recall),
            format!("{:.3}", s.negative_recall),
            format!("{:.3}", s.majority_baseline),
            s.texts_per_sec.map_or("-".into(), |r| format!("{r:.0}")),
        ]);
    }
    println!("{t}");
    Ok(())
}
