//! `aimarket task add | list | get | wait | cancel | retry`.

use super::Ctx;
use crate::client::Client;
use crate::output::{self, clip, or_dash};
use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::generation::VerifyMode;
use protocol::messages::{
    decode, ApiOp, NewTask, Starvation, TaskAddReply, TaskAddRequest, TaskDetail, TaskEvent,
    TaskGetRequest, TaskListReply, TaskListRequest, TaskView,
};
use protocol::policy::{Policy, TaskIdsReply, TaskIdsRequest};
use protocol::{subject, TaskId, TaskStatus, TaskType};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// Task commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TaskCommand {
    /// Create a task from TEXT, or many from --file.
    Add(Box<AddArgs>),
    /// List tasks, oldest first.
    List {
        /// Only tasks in this state (queued, assigned, inconclusive, verifying, finalized,
        /// failed, cancelled); `failed` and `cancelled` list the dead letters with their reason.
        #[arg(long)]
        status: Option<TaskStatus>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show a task with its submissions.
    Get {
        /// The task id.
        id: TaskId,
    },
    /// Wait until tasks are finalized or failed, with progress.
    Wait {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<TaskId>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Cancel open tasks (all or none): their workers drop the work, their answers are kept.
    Cancel {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<TaskId>,
    },
    /// Requeue failed tasks (all or none) with fresh attempts; their earlier answers stay.
    Retry {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<TaskId>,
    },
}

/// `task add` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The text to classify.
    #[arg(required_unless_present_any = ["file", "messages"], conflicts_with_all = ["file", "messages"])]
    text: Option<String>,
    /// A chat for one `generate` task (implies --type generate): a JSON list of
    /// `{"role","content"}` turns or JSON lines of them (`-` for stdin), every turn rendered by
    /// the model's chat template (as `infer --messages` and the OpenAI-compatible API).
    #[arg(long, conflicts_with = "file")]
    messages: Option<PathBuf>,
    /// A stop string for a generative task (repeat for up to 4): the answer is cut at the first.
    #[arg(long)]
    stop: Vec<String>,
    /// The sampling seed with --temperature (the coordinator picks one when absent).
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
    /// Add one task per line of FILE: plain text, or JSON objects with the `task.add` fields
    /// (text or messages, type, required_submissions, max_attempts, labels, similarity, model,
    /// model_hash, max_new_tokens, stop, source_lang, target_lang, temperature, seed, verify,
    /// policy, threshold, min_quorum, max_answers, distinct_models). `-` reads standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Task type (default sentiment).
    #[arg(long = "type")]
    task_type: Option<TaskType>,
    /// Distinct workers that must answer (default 3).
    #[arg(long)]
    required: Option<u32>,
    /// How the answers decide the task: `quorum` (an uncontested group of --min-quorum
    /// agreeing answers, more replicas until then, up to --max-answers), `majority` (the
    /// original rule: most votes, ties to the higher mean confidence) or `posterior` (label
    /// tasks: answers weighed by their model's calibration on gold until the best label's
    /// posterior reaches --threshold; with --required 1, replicas only while it falls short).
    /// Default: the coordinator's.
    #[arg(long)]
    policy: Option<Policy>,
    /// The posterior the best label needs under `--policy posterior`, in (0.5, 1) (default:
    /// the coordinator's).
    #[arg(long)]
    threshold: Option<f64>,
    /// Agreeing answers needed (default a strict majority of --required).
    #[arg(long)]
    min_quorum: Option<u32>,
    /// Answers collected at most before the task fails with no_consensus (default twice
    /// --required).
    #[arg(long)]
    max_answers: Option<u32>,
    /// Count at most one answer per model content hash (default: the coordinator's).
    #[arg(long)]
    distinct_models: bool,
    /// Leases that may end without a result before the task fails.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Candidate labels of a zero-shot task, comma-separated (implies --type zero-shot).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Cosine similarity at which two answers agree, for embedding tasks (default 0.999).
    #[arg(long)]
    similarity: Option<f64>,
    /// The generative model (generate, summarization, translation; default smollm2).
    #[arg(long)]
    model: Option<String>,
    /// The model content the task pins (SHA-256): only workers that loaded it answer. Needed
    /// for generative Hub models (flan-t5, t5); `aimarket workers` and `aimarket infer --model M
    /// --json` show a worker's.
    #[arg(long)]
    model_hash: Option<String>,
    /// The most tokens a generative task may produce, 1 to 512 (default 128).
    #[arg(long)]
    max_new_tokens: Option<u32>,
    /// A translation's source language (ISO 639-1: en, fr, de, es, it, pt).
    #[arg(long)]
    source_lang: Option<String>,
    /// A translation's target language.
    #[arg(long)]
    target_lang: Option<String>,
    /// Sample at this temperature (0 < T <= 4) with a seed the coordinator picks, instead of
    /// greedy decoding; verified like greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// How a generative answer is verified: `exact` or `generate-once` (the coordinator's
    /// default when absent).
    #[arg(long, value_parser = parse_verify)]
    verify: Option<VerifyMode>,
    /// Wait for the result(s).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// Tries per `task.add` batch when no reply comes or the store is unavailable.
const ADD_TRIES: u32 = 4;

/// Tasks per `task.add` request, and bytes: well under NATS's default 1 MiB payload.
const BATCH_TASKS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;

/// Runs a task command.
pub(crate) async fn run(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    match cmd {
        TaskCommand::Add(args) => add(ctx, &client, *args).await,
        TaskCommand::List { status, limit } => {
            let r: TaskListReply = client
                .call(
                    ApiOp::TaskList,
                    &TaskListRequest {
                        status,
                        limit: Some(limit),
                    },
                )
                .await?;
            if ctx.json {
                return output::json(&r.tasks);
            }
            print_tasks(&r.tasks);
            Ok(())
        }
        TaskCommand::Get { id } => {
            let d: TaskDetail = client
                .call(ApiOp::TaskGet, &TaskGetRequest { task_id: id })
                .await?;
            if ctx.json {
                return output::json(&d);
            }
            print_detail(&d);
            Ok(())
        }
        TaskCommand::Wait { ids, timeout } => {
            let done = wait(&client, &ids, Duration::from_secs(timeout)).await?;
            report(ctx, &ids, &done)
        }
        TaskCommand::Cancel { ids } => {
            let r: TaskIdsReply = client
                .call(ApiOp::TaskCancel, &TaskIdsRequest { task_ids: ids })
                .await?;
            if ctx.json {
                return output::json(&r);
            }
            println!(
                "cancelled {} task{}",
                r.task_ids.len(),
                plural(r.task_ids.len())
            );
            Ok(())
        }
        TaskCommand::Retry { ids } => {
            let r: TaskIdsReply = client
                .call(ApiOp::TaskRetry, &TaskIdsRequest { task_ids: ids })
                .await?;
            if ctx.json {
                return output::json(&r);
            }
            println!(
                "requeued {} task{}",
                r.task_ids.len(),
                plural(r.task_ids.len())
            );
            Ok(())
        }
    }
}

async fn add(ctx: &Ctx, client: &Client, args: AddArgs) -> anyhow::Result<()> {
    let task_type = match (&args.task_type, &args.labels, &args.messages) {
        (None, _, Some(_)) => Some(TaskType::generate()),
        (None, Some(_), None) => Some(TaskType::zero_shot()),
        (t, _, _) => t.clone(),
    };
    let defaults = NewTask {
        text: String::new(),
        messages: None,
        stop: Some(args.stop.clone()).filter(|s| !s.is_empty()),
        seed: args.seed,
        raw: None,
        task_type,
        required_submissions: args.required,
        max_attempts: args.max_attempts,
        labels: args.labels.clone(),
        similarity: args.similarity,
        model: args.model.clone(),
        model_hash: args.model_hash.clone(),
        max_new_tokens: args.max_new_tokens,
        stop_ids: None,
        source_lang: args.source_lang.clone(),
        target_lang: args.target_lang.clone(),
        temperature: args.temperature,
        verify: args.verify,
        policy: args.policy,
        threshold: args.threshold,
        min_quorum: args.min_quorum,
        max_answers: args.max_answers,
        distinct_models: args.distinct_models.then_some(true),
    };
    let tasks = match (&args.text, &args.file, &args.messages) {
        (Some(text), _, _) => vec![NewTask {
            text: text.clone(),
            ..defaults
        }],
        (None, _, Some(path)) => vec![NewTask {
            messages: Some(super::chat_file::read(path)?),
            ..defaults
        }],
        (None, Some(path), None) => read_tasks(path, &defaults)?,
        (None, None, None) => bail!("give a TEXT, --messages or --file"),
    };
    let ids = add_all(client, tasks).await?;
    if args.wait {
        let done = wait(client, &ids, Duration::from_secs(args.timeout)).await?;
        return report(ctx, &ids, &done);
    }
    if ctx.json {
        return output::json(&serde_json::json!({ "task_ids": ids }));
    }
    match ids.as_slice() {
        [one] => println!("{one}"),
        many => println!("added {} tasks", many.len()),
    }
    Ok(())
}

/// Reads one task per non-empty line: JSON objects, or plain text.
pub(crate) fn read_tasks(
    path: &std::path::Path,
    defaults: &NewTask,
) -> anyhow::Result<Vec<NewTask>> {
    let mut tasks = Vec::new();
    for (n, line) in output::lines_of(path)? {
        let mut task = if line.trim_start().starts_with('{') {
            decode::<NewTask>(line.as_bytes())
                .with_context(|| format!("{}:{n}: not a task", path.display()))?
        } else {
            NewTask::text(line)
        };
        task.task_type = task.task_type.or_else(|| defaults.task_type.clone());
        task.required_submissions = task.required_submissions.or(defaults.required_submissions);
        task.max_attempts = task.max_attempts.or(defaults.max_attempts);
        task.labels = task.labels.or_else(|| defaults.labels.clone());
        task.similarity = task.similarity.or(defaults.similarity);
        task.model = task.model.or_else(|| defaults.model.clone());
        task.model_hash = task.model_hash.or_else(|| defaults.model_hash.clone());
        task.max_new_tokens = task.max_new_tokens.or(defaults.max_new_tokens);
        task.stop = task.stop.or_else(|| defaults.stop.clone());
        task.seed = task.seed.or(defaults.seed);
        task.source_lang = task.source_lang.or_else(|| defaults.source_lang.clone());
        task.target_lang = task.target_lang.or_else(|| defaults.target_lang.clone());
        task.temperature = task.temperature.or(defaults.temperature);
        task.verify = task.verify.or(defaults.verify);
        task.policy = task.policy.or(defaults.policy);
        task.threshold = task.threshold.or(defaults.threshold);
        task.min_quorum = task.min_quorum.or(defaults.min_quorum);
        task.max_answers = task.max_answers.or(defaults.max_answers);
        task.distinct_models = task.distinct_models.or(defaults.distinct_models);
        tasks.push(task);
    }
    anyhow::ensure!(!tasks.is_empty(), "{} holds no tasks", path.display());
    Ok(tasks)
}

/// Sends tasks in batches, with a progress bar when there are many.
pub(crate) async fn add_all(client: &Client, tasks: Vec<NewTask>) -> anyhow::Result<Vec<TaskId>> {
    let bar = progress(tasks.len() as u64, "adding", tasks.len() > BATCH_TASKS);
    let mut ids = Vec::with_capacity(tasks.len());
    let mut batch = Vec::new();
    let mut bytes = 0;
    let total = tasks.len();
    for (i, task) in tasks.into_iter().enumerate() {
        bytes += task.text.len() + 64;
        batch.push(task);
        if batch.len() == BATCH_TASKS || bytes >= BATCH_BYTES || i + 1 == total {
            let sent = batch.len();
            // Each batch carries its own key, so a retry after a lost reply adds nothing twice.
            let req = TaskAddRequest {
                batch_id: Some(uuid::Uuid::now_v7().to_string()),
                tasks: std::mem::take(&mut batch),
            };
            let r: TaskAddReply = client
                .call_idempotent(ApiOp::TaskAdd, &req, ADD_TRIES)
                .await
                .with_context(|| format!("adding tasks {}..{}", i + 1 - sent, i + 1))?;
            ids.extend(r.task_ids);
            bar.inc(sent as u64);
            bytes = 0;
        }
    }
    bar.finish_and_clear();
    Ok(ids)
}

/// A progress bar for `len` items, or a hidden one.
pub(crate) fn progress(len: u64, what: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed}, {per_sec}]")
            .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Waits until every task is finalized or failed. Listens to task events and polls now and then
/// (events are not replayed to a client that was not listening, e.g. across a coordinator restart).
pub(crate) async fn wait(
    client: &Client,
    ids: &[TaskId],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<TaskId, TaskView>> {
    let mut events = client
        .nats()
        .subscribe(subject::task_events_all(client.prefix()))
        .await
        .context("subscribing to task events")?;
    let mut pending: HashSet<TaskId> = ids.iter().copied().collect();
    let mut done = BTreeMap::new();
    let bar = progress(pending.len() as u64, "waiting", pending.len() > 1);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut starving = Starving::default();
    loop {
        tokio::select! {
            _ = poll.tick() => {
                let check: Vec<TaskId> = pending.iter().copied().collect();
                let mut starved = BTreeMap::new();
                for id in check {
                    let d: TaskDetail = client.call(ApiOp::TaskGet, &TaskGetRequest { task_id: id }).await?;
                    if d.task.status.is_terminal() {
                        pending.remove(&id);
                        done.insert(id, d.task);
                        bar.inc(1);
                    } else if let Some(s) = d.starved {
                        let e = starved.entry(d.task.task_type).or_insert((0, s));
                        e.0 += 1;
                        if s.short() > e.1.short() {
                            e.1 = s;
                        }
                    }
                }
                starving.tell(&bar, starved);
            }
            msg = events.next() => {
                let Some(msg) = msg else { bail!("event subscription closed") };
                let Ok(event) = decode::<TaskEvent>(&msg.payload) else { continue };
                // An inconclusive round is not an end: more answers are coming.
                if event.status.is_terminal() && pending.remove(&event.task_id) {
                    let d: TaskDetail = client.call(ApiOp::TaskGet, &TaskGetRequest { task_id: event.task_id }).await?;
                    done.insert(event.task_id, d.task);
                    bar.inc(1);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                bar.finish_and_clear();
                bail!("timed out after {}s: {} of {} tasks still pending", timeout.as_secs(), pending.len(), ids.len());
            }
        }
        if pending.is_empty() {
            bar.finish_and_clear();
            return Ok(done);
        }
    }
}

/// The waited-on tasks that are starved, by type: how many, and the neediest.
type StarvedByType = BTreeMap<TaskType, (usize, Starvation)>;

/// What a waiting client was told of its starved tasks, and what the last poll saw. It hears of
/// each change once, and only when two polls in a row agree: workers started together with the
/// tasks have a poll's time to register before anyone is called short.
#[derive(Default)]
struct Starving {
    told: StarvedByType,
    seen: StarvedByType,
}

impl Starving {
    /// Says which types of the waited-on tasks are starved (or no longer are), when that changed.
    fn tell(&mut self, bar: &ProgressBar, now: StarvedByType) {
        let steady = now == self.seen;
        self.seen = now.clone();
        if !steady || now == self.told {
            return;
        }
        bar.suspend(|| {
            for (t, (n, s)) in &now {
                eprintln!(
                    "waiting: {n} {t} task{} starved: {} {} answers from distinct workers, and \
                     {} live worker{} that can do {t} {} not answered; {} more {t} worker{} \
                     needed (still waiting: one may join)",
                    if *n == 1 { " is" } else { "s are" },
                    if *n == 1 {
                        "it needs"
                    } else {
                        "the neediest needs"
                    },
                    s.needs,
                    s.capable,
                    if s.capable == 1 { "" } else { "s" },
                    if s.capable == 1 { "has" } else { "have" },
                    s.short(),
                    if s.short() == 1 { " is" } else { "s are" },
                );
            }
            for t in self.told.keys().filter(|t| !now.contains_key(*t)) {
                eprintln!("waiting: {t} tasks are no longer starved");
            }
        });
        self.told = now;
    }
}

fn report(ctx: &Ctx, ids: &[TaskId], done: &BTreeMap<TaskId, TaskView>) -> anyhow::Result<()> {
    let views: Vec<&TaskView> = ids.iter().filter_map(|id| done.get(id)).collect();
    if ctx.json {
        return output::json(&views);
    }
    if let [t] = views.as_slice() {
        match (t.status, &t.final_text) {
            (TaskStatus::Finalized, Some(text)) => println!(
                "{} finalized: {} workers returned the same {} tokens (mean probability {:.2}):\n{}",
                t.id,
                t.submissions,
                t.final_token_ids.as_ref().map_or(0, Vec::len),
                t.final_confidence.unwrap_or_default(),
                text.trim()
            ),
            (TaskStatus::Finalized, None) => println!(
                "{} finalized: {} (confidence {:.2}, {} votes)",
                t.id,
                result(t),
                t.final_confidence.unwrap_or_default(),
                t.submissions
            ),
            _ => println!(
                "{} {}: {}",
                t.id,
                t.status,
                or_dash(t.error_message.as_deref())
            ),
        }
        return Ok(());
    }
    let owned: Vec<TaskView> = views.into_iter().cloned().collect();
    print_tasks(&owned);
    Ok(())
}

/// A finalized task's answer: its label, its generated text, or a glimpse of its vector.
fn result(t: &TaskView) -> String {
    if let Some(text) = &t.final_text {
        return one_line(text);
    }
    match answer(t.final_label.as_ref(), t.final_embedding.as_deref()) {
        Some(shown) => shown,
        None if t.task_type.is_vector() && t.status == TaskStatus::Finalized => {
            "a vector (task get)".to_owned()
        }
        None => "-".to_owned(),
    }
}

/// A label as it is, a vector as its first numbers and its length (`--json` shows all of it).
fn answer(label: Option<&String>, vector: Option<&[f32]>) -> Option<String> {
    match (label, vector) {
        (Some(label), _) => Some(label.clone()),
        (None, Some(v)) => {
            let head: Vec<String> = v.iter().take(3).map(|x| format!("{x:.4}")).collect();
            Some(format!("[{}, ...] ({} dims)", head.join(", "), v.len()))
        }
        (None, None) => None,
    }
}

/// A generated text on one line, for tables.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Tasks as a table; when any of them failed or was cancelled, with the reason.
fn print_tasks(tasks: &[TaskView]) {
    let why = tasks.iter().any(|t| t.error_message.is_some());
    let mut header = vec!["id", "type", "status", "label", "votes", "attempts", "text"];
    if why {
        header.push("error");
    }
    let mut t = output::table(header);
    for task in tasks {
        let mut row = vec![
            task.id.to_string(),
            task.task_type.to_string(),
            task.status.to_string(),
            clip(&result(task), 32),
            votes(task),
            format!("{}/{}", task.attempts, task.max_attempts),
            clip(&task.text, 48),
        ];
        if why {
            row.push(or_dash(task.error_message.as_deref()));
        }
        t.add_row(row);
    }
    println!("{t}");
}

/// Answers in over answers asked for (more than asked after inconclusive rounds).
fn votes(t: &TaskView) -> String {
    format!("{}/{}", t.submissions, t.required_submissions)
}

fn print_detail(d: &TaskDetail) {
    let t = &d.task;
    println!("id           {}", t.id);
    println!("type         {}", t.task_type);
    println!("text         {}", clip(&t.text, 200));
    println!("status       {}", t.status);
    if let Some(labels) = &t.labels {
        println!("labels       {}", labels.join(", "));
    }
    if let Some(s) = t.similarity {
        println!("similarity   {s}");
    }
    if let Some(v) = &t.vote {
        match v.policy {
            Policy::Quorum => println!(
                "vote         quorum: {} agreeing answers, up to {} answers{}",
                v.min_quorum,
                v.max_answers,
                if t.distinct_models {
                    ", one per model content"
                } else {
                    ""
                }
            ),
            Policy::Majority => println!("vote         majority (ties to the higher confidence)"),
            Policy::Posterior => println!(
                "vote         posterior: the best label at {} or more, up to {} answers{}",
                v.threshold
                    .unwrap_or(protocol::policy::DEFAULT_POSTERIOR_THRESHOLD),
                v.max_answers,
                if t.distinct_models {
                    ", one per model content"
                } else {
                    ""
                }
            ),
        }
    }
    if let Some(h) = &t.model_hash {
        println!("model hash   {h}");
    }
    if let Some(g) = &t.generation {
        let langs = match (&g.source_lang, &g.target_lang) {
            (Some(a), Some(b)) => format!(", {a} -> {b}"),
            _ => String::new(),
        };
        println!(
            "generation   {} ({}...), template {}, greedy, max {} new tokens, stop {:?}{langs}",
            g.model,
            &g.model_hash[..12],
            g.template,
            g.max_new_tokens,
            g.stop_ids
        );
    }
    if let (Some(text), Some(ids)) = (&t.final_text, &t.final_token_ids) {
        println!(
            "final text   ({} tokens, mean probability {:.3})\n{}",
            ids.len(),
            t.final_confidence.unwrap_or_default(),
            text.trim()
        );
    }
    if t.final_label.is_some() || t.final_embedding.is_some() {
        let what = if t.final_label.is_some() {
            "label "
        } else {
            "vector"
        };
        println!(
            "final {what} {} (confidence {:.3})",
            result(t),
            t.final_confidence.unwrap_or_default()
        );
    }
    if let Some(p) = t.posterior {
        println!("posterior    {p:.3} (the best label's, after the last round of answers)");
    }
    if let Some(e) = &t.error_message {
        println!("error        {e}");
    }
    if let Some(r) = t.failure_reason {
        println!("reason       {r}");
    }
    if let Some(s) = &d.starved {
        println!("starved      {s}");
    }
    println!("votes        {}", votes(t));
    println!("attempts     {}/{}", t.attempts, t.max_attempts);
    println!("created      {}", t.created_at.to_rfc3339());
    if let Some(f) = t.finished_at {
        println!("finished     {}", f.to_rfc3339());
    }
    if !d.submissions.is_empty() {
        let mut s = output::table([
            "worker",
            "label",
            "confidence",
            "weight",
            "agreed",
            "model",
            "at",
        ]);
        for sub in &d.submissions {
            s.add_row(vec![
                sub.worker_id.to_string(),
                match &sub.text {
                    Some(text) => clip(&one_line(text), 60),
                    None => {
                        or_dash(answer(sub.label.as_ref(), sub.embedding.as_deref()).as_deref())
                    }
                },
                format!("{:.3}", sub.confidence),
                sub.weight
                    .map_or_else(|| "-".to_owned(), |w| format!("{w:.2}")),
                or_dash(sub.agreed.map(|a| if a { "yes" } else { "no" })),
                or_dash(sub.model.as_deref()),
                sub.created_at.to_rfc3339(),
            ]);
        }
        println!("\n{s}");
    }
    if !d.leases.is_empty() {
        let mut l = output::table(["lease", "worker", "expires"]);
        for lease in &d.leases {
            l.add_row(vec![
                lease.lease_id.to_string(),
                lease.worker_id.to_string(),
                lease.expires_at.to_rfc3339(),
            ]);
        }
        println!("\n{l}");
    }
}

fn parse_verify(s: &str) -> Result<VerifyMode, String> {
    s.parse()
        .map_err(|e: protocol::ProtocolError| e.to_string())
}
