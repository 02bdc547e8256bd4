//! The worker's life: register, then lease -> infer -> submit in a loop, heartbeating in the
//! background; on shutdown stop leasing, finish (or release) what is held, say goodbye, exit.
//!
//! Announcements on `tasks.<type>` only wake an idle worker early; it also polls, so a lost
//! announcement costs at most one poll interval. Submissions are retried with backoff until the
//! coordinator acknowledges or refuses them: a coordinator restart loses no finished work.

use crate::backoff::Backoff;
use crate::misbehave::Misbehave;
use crate::model::{Input, Model, ModelError, Prediction, ProgressSink, Progressed, Scored};
use async_nats::{Client, HeaderMap, RequestErrorKind};
use futures::{FutureExt, StreamExt};
use protocol::generation::GeneratedAnswer;
use protocol::messages::{
    encode, Heartbeat, HeartbeatReply, Lease, LeaseReply, LeaseRequest, ReleaseReply,
    ReleaseRequest, SubmitReply, SubmitRequest, Timings,
};
use protocol::verify::Verification;
use protocol::{reply, subject, ApiError, ErrorCode, LeaseId, TaskType, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Its id.
    pub worker_id: WorkerId,
    /// NATS server URL, or several comma-separated (the nodes of a cluster).
    pub nats_url: String,
    /// How often the NATS connection pings its server.
    pub nats_ping: Duration,
    /// Subject prefix.
    pub prefix: String,
    /// Task types to take; empty means everything the model can do.
    pub capabilities: Vec<TaskType>,
    /// The token presented on every message, when the coordinator requires one.
    pub token: Option<String>,
    /// Leases asked for at once, run as one batch.
    pub batch: u32,
    /// How long an idle worker waits before asking again when nothing is announced.
    pub poll_interval: Duration,
    /// Longest gap between heartbeats (shortened to a third of the coordinator's TTL).
    pub heartbeat_interval: Duration,
    /// How long one request may wait for its reply.
    pub request_timeout: Duration,
    /// After shutdown is asked for, how long to keep trying to submit held work.
    pub shutdown_grace: Duration,
    /// A drill: answer wrongly on purpose (see [`Misbehave`]).
    pub misbehave: Option<Misbehave>,
}

impl WorkerConfig {
    /// A config with the defaults.
    pub fn new(worker_id: WorkerId, nats_url: impl Into<String>) -> Self {
        Self {
            worker_id,
            nats_url: nats_url.into(),
            nats_ping: protocol::auth::DEFAULT_NATS_PING,
            prefix: subject::DEFAULT_PREFIX.to_owned(),
            capabilities: Vec::new(),
            token: None,
            batch: 1,
            poll_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            misbehave: None,
        }
    }
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The NATS URL is unusable.
    #[error("connecting to nats at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A subscription was refused.
    #[error("subscribing to announcements: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// `--capabilities` named a task type the model cannot do.
    #[error("model {model} cannot do {asked} tasks; it can do: {can}")]
    Unsupported {
        /// The model.
        model: String,
        /// What was asked.
        asked: TaskType,
        /// What it can do.
        can: String,
    },
    /// The coordinator refused this worker for good (bad id or capabilities).
    #[error("the coordinator refused this worker: {0}")]
    Refused(#[source] ApiError),
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Submissions the coordinator acknowledged.
    pub acknowledged: u64,
    /// Of those, resends it already had.
    pub duplicates: u64,
    /// Submissions refused (lease expired, task closed...).
    pub refused: u64,
    /// Leases given back unanswered.
    pub released: u64,
}

/// A request failed in a way worth retrying, or was refused.
enum CallError {
    Retry(String),
    Refused(ApiError),
}

/// Runs a worker until `shutdown`.
///
/// # Errors
/// [`WorkerError`] when it cannot start (bad URL, capabilities the model lacks) or the coordinator
/// refuses it outright.
pub async fn run(
    config: WorkerConfig,
    model: Arc<dyn Model>,
    shutdown: CancellationToken,
) -> Result<Report, WorkerError> {
    let capabilities = capabilities(&config, model.as_ref())?;
    let model_hash = model.content_hash().map(str::to_owned);
    let (url, credentials) = protocol::auth::split_credentials(&config.nats_url);
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    let client = options
        .name(format!("aimarket-worker-{}", config.worker_id))
        .ping_interval(config.nats_ping)
        .retry_on_initial_connect()
        .request_timeout(Some(config.request_timeout))
        .connect(protocol::auth::servers(&url))
        .await
        .map_err(|source| WorkerError::Connect {
            url: url.clone(),
            source,
        })?;
    let worker = Worker {
        client,
        model,
        heartbeat: Heartbeat {
            worker_id: config.worker_id.clone(),
            capabilities,
            model: None,
            model_hash,
            leases: Some(Vec::new()),
        },
        config,
        report: Report::default(),
        held: Held::default(),
    };
    worker.run(shutdown).await
}

fn capabilities(config: &WorkerConfig, model: &dyn Model) -> Result<Vec<TaskType>, WorkerError> {
    let can = model.capabilities();
    if config.capabilities.is_empty() {
        return Ok(can);
    }
    if let Some(asked) = config.capabilities.iter().find(|c| !can.contains(c)) {
        return Err(WorkerError::Unsupported {
            model: model.id().to_owned(),
            asked: asked.clone(),
            can: can
                .iter()
                .map(TaskType::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(config.capabilities.clone())
}

struct Worker {
    client: Client,
    model: Arc<dyn Model>,
    heartbeat: Heartbeat,
    config: WorkerConfig,
    report: Report,
    /// The leases this worker holds: the heartbeat renews exactly these.
    held: Held,
}

/// A lease's result: a prediction, or a verify lease's score of its candidate.
#[derive(Debug)]
enum Answered {
    Predicted(Prediction),
    Scored(Verification),
}

/// Runs the model on a batch of leases, on a blocking thread: verify leases are scored
/// (teacher-forced), the others predicted; one result per lease, in order. A drilled worker
/// spoils its answers here.
fn answer_all(
    model: &dyn Model,
    leases: &[Lease],
    misbehave: Option<Misbehave>,
    progress: &[Option<ProgressSink>],
) -> Vec<Result<Answered, ModelError>> {
    let input = |l: &Lease| {
        let i = Input::of_lease(l);
        match misbehave {
            Some(m) => m.input(i),
            None => i,
        }
    };
    let (verify, predict): (Vec<usize>, Vec<usize>) =
        (0..leases.len()).partition(|&i| leases[i].verify.is_some());
    let mut out: Vec<Option<Result<Answered, ModelError>>> = leases.iter().map(|_| None).collect();
    if !predict.is_empty() {
        let inputs: Vec<Input> = predict
            .iter()
            .map(|&i| Input {
                progress: progress.get(i).cloned().flatten(),
                ..input(&leases[i])
            })
            .collect();
        for (&i, p) in predict.iter().zip(model.predict(&inputs)) {
            let p = match misbehave {
                Some(m) => p.map(|p| m.prediction(&leases[i], p)),
                None => p,
            };
            out[i] = Some(p.map(Answered::Predicted));
        }
    }
    if !verify.is_empty() {
        let jobs: Vec<(Input, Vec<u32>)> = verify
            .iter()
            .map(|&i| {
                let job = leases[i].verify.as_ref().expect("a verify lease");
                (Input::of_lease(&leases[i]), job.token_ids.clone())
            })
            .collect();
        for ((&i, (_, candidate)), s) in verify.iter().zip(&jobs).zip(model.score(&jobs)) {
            let s: Result<Scored, ModelError> = match misbehave {
                Some(m) => s.map(|s| m.scored(candidate, s)),
                None => s,
            };
            out[i] = Some(s.map(|s| {
                let passed = leases[i].generation.as_ref().is_some_and(|spec| {
                    protocol::verify::verdict(candidate, &s.gaps, spec, spec.eps())
                });
                let exact = model.scores_exactly() && s.gaps.iter().all(|g| *g == 0.0);
                Answered::Scored(Verification {
                    logprobs: s.logprobs,
                    gaps: s.gaps,
                    passed,
                    exact,
                })
            }));
        }
    }
    out.into_iter()
        .map(|o| o.expect("every lease answered"))
        .collect()
}

/// How one submission ended.
enum Sent {
    /// Stored (now, or by an earlier copy when `duplicate`).
    Acknowledged { duplicate: bool },
    /// Refused for good (the lease ended, the task closed, ...): nothing to retry.
    Refused,
    /// Still unacknowledged at the hard stop.
    GaveUp,
}

/// Lease ids shared between the lease loop and the heartbeat task. Never locked across an await.
type Held = Arc<Mutex<BTreeSet<LeaseId>>>;

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) -> Result<Report, WorkerError> {
        self.heartbeat.model = Some(self.model.id().to_owned());
        let Some(timings) = self.register(&shutdown).await? else {
            return Ok(self.report);
        };
        let every = heartbeat_every(self.config.heartbeat_interval, timings);
        info!(
            worker_id = %self.config.worker_id,
            model = self.model.id(),
            capabilities = %self
                .heartbeat
                .capabilities
                .iter()
                .map(TaskType::as_str)
                .collect::<Vec<_>>()
                .join(","),
            heartbeat_ms = every.as_millis() as u64,
            "worker registered"
        );
        let beats = CancellationToken::new();
        let beating = tokio::spawn(heartbeats(
            self.client.clone(),
            self.headers(),
            subject::heartbeat(&self.config.prefix, &self.config.worker_id),
            self.heartbeat.clone(),
            self.held.clone(),
            every,
            beats.clone(),
        ));
        let mut subs = Vec::new();
        for cap in &self.heartbeat.capabilities {
            subs.push(
                self.client
                    .subscribe(subject::tasks(&self.config.prefix, cap))
                    .await?,
            );
        }
        let mut wake = futures::stream::select_all(subs);

        let mut backoff = Backoff::default();
        let mut coordinator_away = false;
        while !shutdown.is_cancelled() {
            let leases = match self.lease().await {
                Ok(leases) => {
                    if coordinator_away {
                        info!("coordinator is back");
                        coordinator_away = false;
                    }
                    backoff.reset();
                    leases
                }
                Err(CallError::Refused(e)) if e.code != ErrorCode::Unavailable => {
                    return Err(WorkerError::Refused(e));
                }
                Err(CallError::Refused(e)) => {
                    warn!(error = %e, "coordinator unavailable");
                    sleep_or_cancel(backoff.next_delay(), &shutdown).await;
                    continue;
                }
                Err(CallError::Retry(why)) => {
                    if !coordinator_away {
                        warn!(reason = %why, "no coordinator answering; retrying");
                        coordinator_away = true;
                    }
                    sleep_or_cancel(backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            if leases.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.next() => {
                        // Many announcements may be queued; one lease request serves them all.
                        while let Some(Some(_)) = wake.next().now_or_never() {}
                    }
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
                continue;
            }
            self.work(leases, &shutdown).await;
        }
        drop(wake);
        self.goodbye().await;
        beats.cancel();
        let _ = beating.await;
        match tokio::time::timeout(self.config.request_timeout, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "final flush failed"),
            Err(_) => warn!("final flush timed out; nats is unreachable"),
        }
        info!(
            acknowledged = self.report.acknowledged,
            refused = self.report.refused,
            released = self.report.released,
            "worker stopped"
        );
        Ok(self.report)
    }

    /// Sends a heartbeat as a request until the coordinator answers; `None` on shutdown.
    async fn register(&self, shutdown: &CancellationToken) -> Result<Option<Timings>, WorkerError> {
        let subject = subject::heartbeat(&self.config.prefix, &self.config.worker_id);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut said = false;
        loop {
            match self
                .call::<_, HeartbeatReply>(&subject, &self.heartbeat)
                .await
            {
                Ok(r) => return Ok(Some(r.timings)),
                Err(CallError::Refused(e)) if e.code != ErrorCode::Unavailable => {
                    return Err(WorkerError::Refused(e))
                }
                Err(CallError::Refused(e)) => warn!(error = %e, "coordinator unavailable"),
                Err(CallError::Retry(why)) if !said => {
                    info!(
                        reason = %why,
                        nats = %protocol::auth::split_credentials(&self.config.nats_url).0,
                        "waiting for a coordinator"
                    );
                    said = true;
                }
                Err(CallError::Retry(_)) => {}
            }
            if !sleep_or_cancel(backoff.next_delay(), shutdown).await {
                return Ok(None);
            }
        }
    }

    async fn lease(&self) -> Result<Vec<Lease>, CallError> {
        let req = LeaseRequest {
            worker_id: self.config.worker_id.clone(),
            capabilities: self.heartbeat.capabilities.clone(),
            max_tasks: self.config.batch,
            task_id: None,
            model: self.heartbeat.model.clone(),
            model_hash: self.heartbeat.model_hash.clone(),
        };
        let reply: LeaseReply = self
            .call(&subject::lease(&self.config.prefix), &req)
            .await?;
        // Held from the grant on: every heartbeat until the submission is acknowledged (or the
        // lease released) renews it, however long the model takes.
        self.held
            .lock()
            .expect("held-lease lock")
            .extend(reply.leases.iter().map(|l| l.lease_id));
        Ok(reply.leases)
    }

    /// A progress sink for each `generate` lease of the batch (none for the others): each
    /// report is published on the task's progress subject, for optimistic streams.
    fn progress_sinks(&self, leases: &[Lease]) -> Vec<Option<ProgressSink>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some((subject, body)) = rx.recv().await {
                if let Err(e) = client.publish(subject, body.into()).await {
                    debug!(error = %e, "progress not published");
                }
            }
        });
        leases
            .iter()
            .map(|l| {
                if l.task_type != TaskType::generate() || l.verify.is_some() {
                    return None;
                }
                let subject = subject::progress(&self.config.prefix, &l.task_id);
                let (tx, lease) = (tx.clone(), l.clone());
                let worker_id = self.config.worker_id.clone();
                Some(ProgressSink(std::sync::Arc::new(
                    move |r: Progressed<'_>| {
                        let p = protocol::chat::Progress {
                            task_id: lease.task_id,
                            worker_id: worker_id.clone(),
                            lease_id: lease.lease_id,
                            prompt_tokens: r.prompt_tokens,
                            tokens: r.tokens,
                            text: r.text.to_owned(),
                            done: r.done,
                        };
                        if let Ok(body) = serde_json::to_vec(&p) {
                            let _ = tx.send((subject.clone(), body));
                        }
                    },
                )))
            })
            .collect()
    }

    /// Runs the model on a batch of leases and submits each result.
    async fn work(&mut self, leases: Vec<Lease>, shutdown: &CancellationToken) {
        // A generative task pins the model content; the coordinator routes by it, and a lease
        // for other content (a coordinator that does not) is given back rather than answered.
        let (leases, foreign): (Vec<Lease>, Vec<Lease>) = leases.into_iter().partition(|l| {
            l.generation
                .as_ref()
                .is_none_or(|g| self.heartbeat.model_hash.as_deref() == Some(g.model_hash.as_str()))
        });
        if !foreign.is_empty() {
            for l in &foreign {
                warn!(task_id = %l.task_id, "task pins other model content; releasing");
            }
            self.release(foreign.iter().map(|l| l.lease_id).collect(), false)
                .await;
        }
        if leases.is_empty() {
            return;
        }
        let model = self.model.clone();
        let (batch, misbehave) = (leases.clone(), self.config.misbehave);
        let progress = self.progress_sinks(&leases);
        let predictions = match tokio::task::spawn_blocking(move || {
            answer_all(model.as_ref(), &batch, misbehave, &progress)
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "model panicked; releasing its leases");
                let ids = leases.iter().map(|l| l.lease_id).collect();
                self.release(ids, false).await;
                return;
            }
        };
        let mut unanswered = Vec::new();
        // The hard stop for retries: shutdown plus its grace period.
        let hard_stop = CancellationToken::new();
        let grace = self.config.shutdown_grace;
        let (sd, hs) = (shutdown.clone(), hard_stop.clone());
        let timer = tokio::spawn(async move {
            sd.cancelled().await;
            tokio::time::sleep(grace).await;
            hs.cancel();
        });
        // Every result goes out at once; each is retried on its own until acknowledged.
        let mut sends = Vec::new();
        let mut dropped = 0;
        for (lease, prediction) in leases.iter().zip(predictions) {
            // A lease the coordinator said closed (its task was cancelled or ended) while the
            // model ran: the work is dropped.
            if !self
                .held
                .lock()
                .expect("held-lease lock")
                .contains(&lease.lease_id)
            {
                info!(task_id = %lease.task_id, "task closed while it ran; dropping the answer");
                dropped += 1;
                continue;
            }
            match prediction {
                Ok(p) => sends.push(self.submit(lease, p, &hard_stop)),
                Err(e) => {
                    warn!(task_id = %lease.task_id, error = %e, "model could not answer; releasing");
                    unanswered.push(lease.lease_id);
                }
            }
        }
        let outcomes = futures::future::join_all(sends).await;
        self.report.refused += dropped;
        for (lease_id, outcome) in outcomes {
            match outcome {
                Sent::Acknowledged { duplicate } => {
                    self.report.acknowledged += 1;
                    self.report.duplicates += u64::from(duplicate);
                }
                Sent::Refused => self.report.refused += 1,
                Sent::GaveUp => {
                    unanswered.push(lease_id);
                    continue;
                }
            }
            self.held.lock().expect("held-lease lock").remove(&lease_id);
        }
        timer.abort();
        if !unanswered.is_empty() {
            self.release(unanswered, false).await;
        }
    }

    /// Submits one result until acknowledged or refused, or the hard stop.
    async fn submit(
        &self,
        lease: &Lease,
        answer: Answered,
        hard_stop: &CancellationToken,
    ) -> (LeaseId, Sent) {
        let mut req = SubmitRequest {
            lease_id: lease.lease_id,
            worker_id: self.config.worker_id.clone(),
            label: String::new(),
            embedding: None,
            generation: None,
            verification: None,
            confidence: 0.0,
            model: self.heartbeat.model.clone(),
            model_hash: self.heartbeat.model_hash.clone(),
            input_tokens: None,
        };
        match answer {
            Answered::Predicted(p) => {
                req.label = p.label;
                req.embedding = p.embedding;
                req.input_tokens = p.input_tokens.or_else(|| {
                    let g = p.generation.as_ref()?;
                    u32::try_from(g.prompt_token_ids.len()).ok()
                });
                req.generation = p.generation.map(|g| GeneratedAnswer {
                    token_ids: g.token_ids,
                    text: g.text,
                    logprobs: g.logprobs,
                    truncated: g.truncated,
                    token_ends: g.token_ends,
                });
                req.confidence = p.confidence;
            }
            Answered::Scored(v) => {
                req.confidence = if v.passed { 1.0 } else { 0.0 };
                req.verification = Some(v);
            }
        }
        let subject = subject::submit(&self.config.prefix, &lease.task_id);
        let mut backoff = Backoff::default();
        let started = Instant::now();
        loop {
            match self.call::<_, SubmitReply>(&subject, &req).await {
                Ok(ack) => {
                    debug!(
                        task_id = %lease.task_id,
                        lease_id = %lease.lease_id,
                        label = %req.label,
                        duplicate = ack.duplicate,
                        finalized = ack.finalized,
                        "submission acknowledged"
                    );
                    let duplicate = ack.duplicate;
                    return (lease.lease_id, Sent::Acknowledged { duplicate });
                }
                Err(CallError::Refused(e)) if e.code != ErrorCode::Unavailable => {
                    warn!(task_id = %lease.task_id, error = %e, "submission refused");
                    return (lease.lease_id, Sent::Refused);
                }
                Err(CallError::Refused(e)) => {
                    debug!(error = %e, "coordinator unavailable; retrying")
                }
                Err(CallError::Retry(why)) => {
                    debug!(reason = %why, "submission not acknowledged; retrying")
                }
            }
            if !sleep_or_cancel(backoff.next_delay(), hard_stop).await {
                warn!(
                    task_id = %lease.task_id,
                    tried_for_ms = started.elapsed().as_millis() as u64,
                    "giving up on an unacknowledged submission at shutdown"
                );
                return (lease.lease_id, Sent::GaveUp);
            }
        }
    }

    async fn release(&mut self, lease_ids: Vec<LeaseId>, offline: bool) {
        let n = lease_ids.len() as u64;
        {
            let mut held = self.held.lock().expect("held-lease lock");
            for id in &lease_ids {
                held.remove(id);
            }
        }
        let req = ReleaseRequest {
            worker_id: self.config.worker_id.clone(),
            lease_ids,
            offline,
        };
        match self
            .call::<_, ReleaseReply>(&subject::lease_release(&self.config.prefix), &req)
            .await
        {
            Ok(r) => {
                self.report.released += u64::from(r.released);
                if n > 0 {
                    info!(released = r.released, "leases released");
                }
            }
            // Unreleased leases expire on their own; nothing is lost, only time.
            Err(CallError::Retry(why)) => warn!(reason = %why, "release not acknowledged"),
            Err(CallError::Refused(e)) => warn!(error = %e, "release refused"),
        }
    }

    /// The headers every message carries (the token, if any).
    fn headers(&self) -> HeaderMap {
        credentials(self.config.token.as_deref())
    }

    async fn goodbye(&mut self) {
        self.release(Vec::new(), true).await;
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let msg = self
            .client
            .request_with_headers(subject.to_owned(), self.headers(), encode(req).into())
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => CallError::Retry("no responders".into()),
                RequestErrorKind::TimedOut => CallError::Retry("timed out".into()),
                _ => CallError::Retry(e.to_string()),
            })?;
        match reply::decode::<Resp>(&msg.payload) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(CallError::Refused(e)),
            Err(e) => Err(CallError::Retry(format!("unreadable reply: {e}"))),
        }
    }
}

/// Heartbeat often enough that neither the worker nor its leases go stale between two beats.
fn heartbeat_every(max: Duration, t: Timings) -> Duration {
    let ttl = Duration::from_secs(t.heartbeat_ttl_seconds.max(1));
    let lease = Duration::from_secs(t.lease_seconds.max(1));
    max.min(ttl / 3)
        .min(lease / 3)
        .max(Duration::from_millis(100))
}

async fn heartbeats(
    client: Client,
    headers: HeaderMap,
    subject: String,
    mut heartbeat: Heartbeat,
    held: Held,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let leases = held.lock().expect("held-lease lock").iter().copied().collect();
                heartbeat.leases = Some(leases);
                let body = encode(&heartbeat).into();
                // A request, so the reply can say which leases closed (a cancelled task); a
                // reply that does not come in time is no matter: the next beat goes anyway.
                let sent = client.request_with_headers(subject.clone(), headers.clone(), body);
                match tokio::time::timeout(every, sent).await {
                    Ok(Ok(msg)) => {
                        if let Ok(Ok(reply)) = protocol::reply::decode::<HeartbeatReply>(&msg.payload) {
                            let mut held = held.lock().expect("held-lease lock");
                            for lease in &reply.closed {
                                if held.remove(lease) {
                                    info!(lease_id = %lease, "lease closed by the coordinator; dropping its work");
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "heartbeat not answered"),
                    Err(_) => debug!("heartbeat reply late"),
                }
            }
        }
    }
}

/// Headers carrying `token`.
fn credentials(token: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(protocol::auth::WORKER_TOKEN_HEADER, token);
    }
    headers
}

/// Sleeps for `d`; false if `cancel` fired first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::generation::{resolve, SpecRequest};
    use protocol::verify::VerifyJob;

    /// Scores every candidate with the gaps it is given; exact or not as told.
    struct Fixed {
        exact: bool,
        gaps: Vec<f32>,
    }

    impl Model for Fixed {
        fn id(&self) -> &str {
            "fixed"
        }

        fn capabilities(&self) -> Vec<TaskType> {
            vec![TaskType::generate()]
        }

        fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
            inputs
                .iter()
                .map(|_| Err(ModelError::Inference("scores only".into())))
                .collect()
        }

        fn scores_exactly(&self) -> bool {
            self.exact
        }

        fn score(&self, jobs: &[(Input, Vec<u32>)]) -> Vec<Result<Scored, ModelError>> {
            jobs.iter()
                .map(|_| {
                    Ok(Scored {
                        logprobs: vec![-0.5; self.gaps.len()],
                        gaps: self.gaps.clone(),
                    })
                })
                .collect()
        }
    }

    #[test]
    fn a_scoring_is_exact_only_from_an_exact_engine_with_every_gap_zero() {
        let spec = resolve(
            &TaskType::generate(),
            &SpecRequest {
                max_new_tokens: Some(2),
                ..SpecRequest::default()
            },
        )
        .expect("spec");
        let lease = Lease {
            lease_id: protocol::LeaseId::new(),
            task_id: protocol::TaskId::new(),
            task_type: TaskType::generate(),
            text: "Say hi.".into(),
            labels: None,
            generation: Some(spec.clone()),
            verify: Some(VerifyJob {
                token_ids: vec![7, spec.stop_ids[0]],
            }),
            expires_at: chrono::Utc::now(),
        };
        for (exact, gaps, want) in [
            (true, vec![0.0, 0.0], true),
            (true, vec![0.0, 0.25], false),
            (false, vec![0.0, 0.0], false),
        ] {
            let model = Fixed { exact, gaps };
            let got = answer_all(&model, std::slice::from_ref(&lease), None, &[]);
            let Ok(Answered::Scored(v)) = &got[0] else {
                panic!("a scoring: {got:?}");
            };
            assert_eq!(v.exact, want, "{:?} from an exact engine: {exact}", v.gaps);
            assert!(v.passed, "within eps either way");
        }
    }

    #[test]
    fn heartbeats_fit_three_times_in_the_ttl() {
        let t = Timings {
            lease_seconds: 75,
            heartbeat_ttl_seconds: 45,
        };
        assert_eq!(
            heartbeat_every(Duration::from_secs(10), t),
            Duration::from_secs(10)
        );
        let short = Timings {
            lease_seconds: 3,
            heartbeat_ttl_seconds: 2,
        };
        assert_eq!(
            heartbeat_every(Duration::from_secs(10), short),
            Duration::from_secs(2) / 3
        );
    }
}
