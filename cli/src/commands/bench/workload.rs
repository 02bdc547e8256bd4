//! The bulk add and the load: workers with an instant model driving tasks to finalization,
//! beside a NATS echo (the transport's floor under the same load).

use super::*;
use crate::client::Client;
use futures::StreamExt;
use hdrhistogram::Histogram;
use protocol::messages::{encode, LeaseReply, LeaseRequest, NewTask, SubmitReply, SubmitRequest};
use protocol::{reply, subject, TaskType, WorkerId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The `task add --file` path, on a file of `n` texts.
pub(super) async fn bulk_add(
    client: &Client,
    n: u64,
    dir: Option<&std::path::Path>,
    run: &Run,
) -> anyhow::Result<Rate> {
    let tmp = tempfile::tempdir()?;
    let path = dir.unwrap_or(tmp.path()).join("bulk.jsonl");
    let mut text = String::with_capacity(n as usize * 60);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"text\": \"bulk review {i}: decent value\", \"type\": \"{}\"}}\n",
            run.bulk
        ));
    }
    std::fs::write(&path, text)?;
    let started = Instant::now();
    let tasks = crate::commands::task::read_tasks(&path, &NewTask::text(""))?;
    let ids = crate::commands::task::add_all(client, tasks).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Rate {
        tasks: ids.len() as u64,
        seconds,
        per_sec: ids.len() as f64 / seconds,
    })
}

/// The instant model: a label every worker agrees on, from the text alone.
pub(super) fn instant_label(text: &str) -> &'static str {
    if text.len().is_multiple_of(2) {
        "positive"
    } else {
        "negative"
    }
}

/// What the load phase measured.
pub(super) struct Load {
    pub(super) finalized_per_sec: f64,
    pub(super) submissions_per_sec: f64,
    pub(super) lease_h: Histogram<u64>,
    pub(super) submit_h: Histogram<u64>,
    pub(super) echo_h: Histogram<u64>,
    /// Submit replies that said "this vote finalized the task".
    pub(super) finalized: u64,
}

/// The names one run works under. Its tasks are of types of its own, which only its workers
/// take: a bench pointed (`--connect`) at a coordinator that real workers or another bench also
/// serve neither lends its tasks to them nor counts their work as its own.
pub(super) struct Run {
    pub(super) tag: String,
    pub(super) bulk: TaskType,
    pub(super) load: TaskType,
    pub(super) depth: TaskType,
}

impl Run {
    pub(super) fn new() -> anyhow::Result<Self> {
        let tag = format!("{:08x}", fastrand::u32(..));
        Ok(Self {
            bulk: TaskType::new(format!("bench-bulk-{tag}"))?,
            load: TaskType::new(format!("bench-{tag}"))?,
            depth: TaskType::new(format!("bench-depth-{tag}"))?,
            tag,
        })
    }

    pub(super) fn worker(&self, name: impl std::fmt::Display) -> anyhow::Result<WorkerId> {
        Ok(WorkerId::new(format!("bench-{}-{name}", self.tag))?)
    }

    /// Makes the run's task types known before its tasks are added: the coordinator takes a
    /// type only when a model does it or a registered worker advertises it. A lease request of
    /// a worker of the run that advertises all three registers it (nothing to lease yet).
    pub(super) async fn register(&self, client: &Client) -> anyhow::Result<()> {
        let req = encode(&LeaseRequest {
            worker_id: self.worker("types")?,
            capabilities: vec![self.bulk.clone(), self.load.clone(), self.depth.clone()],
            max_tasks: 1,
            task_id: None,
            model: Some("bench/instant".into()),
            model_hash: None,
        });
        let msg = client
            .nats()
            .request(subject::lease(client.prefix()), req.into())
            .await?;
        let leases: LeaseReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("registering: {e}"))?;
        anyhow::ensure!(
            leases.leases.is_empty(),
            "the run's types had tasks already"
        );
        Ok(())
    }
}

pub(super) async fn load(
    client: &Client,
    nats_url: &str,
    args: &Args,
    run: &Run,
) -> anyhow::Result<Load> {
    let tasks: Vec<NewTask> = (0..args.tasks)
        .map(|i| NewTask {
            task_type: Some(run.load.clone()),
            required_submissions: Some(args.required),
            ..NewTask::text(format!("load review {i}"))
        })
        .collect();
    crate::commands::task::add_all(client, tasks).await?;
    let finalized = Arc::new(AtomicU64::new(0));
    // A NATS connection each for the workers and the echo's two ends, as separate processes
    // have: one shared connection would queue a lease reply behind other submission replies.
    let connect = || async {
        anyhow::Ok(
            Client::connect(
                nats_url,
                protocol::auth::DEFAULT_NATS_PING,
                client.prefix(),
                None,
            )
            .await?
            .nats()
            .clone(),
        )
    };
    let load_over = CancellationToken::new();
    let echo = tokio::spawn(echo_floor(
        (connect().await?, connect().await?),
        load_over.clone(),
    ));
    let started = Instant::now();
    // Each worker gives every task one of its `required` answers: a worker's share of the offered
    // rate is `rate * required / workers` answers a second.
    let pace = (args.rate > 0.0).then(|| {
        Duration::from_secs_f64(f64::from(args.workers) / (args.rate * f64::from(args.required)))
    });
    let mut drivers = Vec::new();
    for w in 0..args.workers {
        let nats = connect().await?;
        let prefix = client.prefix().to_owned();
        let (finalized, total, batch) = (finalized.clone(), args.tasks, args.batch);
        let (worker, kind) = (run.worker(w)?, run.load.clone());
        // Paced workers start out of step, as independent workers would be, not in one burst.
        let pacing = pace.map(|p| (p, p * batch * w / args.workers));
        drivers.push(tokio::spawn(async move {
            drive(
                nats,
                prefix,
                (worker, kind),
                (batch, pacing),
                finalized,
                total,
            )
            .await
        }));
    }
    let mut lease_h = Histogram::<u64>::new(3)?;
    let mut submit_h = Histogram::<u64>::new(3)?;
    for d in drivers {
        let (l, s) = d.await??;
        lease_h.add(l)?;
        submit_h.add(s)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    load_over.cancel();
    let echo_h = echo.await??;
    let done = finalized.load(Ordering::Relaxed);
    Ok(Load {
        finalized_per_sec: done as f64 / seconds,
        submissions_per_sec: (done * u64::from(args.required)) as f64 / seconds,
        lease_h,
        submit_h,
        echo_h,
        finalized: done,
    })
}

/// One worker's loop: lease a batch, answer instantly, submit the batch concurrently. With
/// `pacing` (time per answer, delay before the first request), a batch of `n` leases is followed
/// by `n` times the pace between lease requests, so the worker offers a steady rate; one that
/// falls behind catches up by at most [`MAX_CATCH_UP`].
pub(super) async fn drive(
    nats: async_nats::Client,
    prefix: String,
    (worker, kind): (WorkerId, TaskType),
    (batch, pacing): (u32, Option<(Duration, Duration)>),
    finalized: Arc<AtomicU64>,
    total: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut lease_h = Histogram::<u64>::new(3)?;
    let mut submit_h = Histogram::<u64>::new(3)?;
    let req = encode(&LeaseRequest {
        worker_id: worker.clone(),
        capabilities: vec![kind],
        max_tasks: batch,
        task_id: None,
        model: Some("bench/instant".into()),
        model_hash: None,
    });
    let pace = pacing.map(|(pace, _)| pace);
    let mut next = tokio::time::Instant::now() + pacing.map_or(Duration::ZERO, |(_, first)| first);
    while finalized.load(Ordering::Relaxed) < total {
        if pace.is_some() {
            next = next.max(tokio::time::Instant::now() - MAX_CATCH_UP);
            tokio::time::sleep_until(next).await;
        }
        let t = Instant::now();
        let msg = nats
            .request(subject::lease(&prefix), req.clone().into())
            .await?;
        lease_h.record(t.elapsed().as_micros() as u64)?;
        let leases: LeaseReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("lease: {e}"))?;
        if leases.leases.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        if let Some(pace) = pace {
            next += pace * leases.leases.len() as u32;
        }
        let submits = leases.leases.iter().map(|l| {
            let body = encode(&SubmitRequest {
                input_tokens: None,
                lease_id: l.lease_id,
                worker_id: worker.clone(),
                label: instant_label(&l.text).into(),
                embedding: None,
                confidence: 0.9,
                model: Some("bench/instant".into()),
                generation: None,
                verification: None,
                model_hash: None,
            });
            let (nats, subject) = (nats.clone(), subject::submit(&prefix, &l.task_id));
            async move {
                let t = Instant::now();
                let msg = nats.request(subject, body.into()).await?;
                let rtt = t.elapsed();
                let ack: SubmitReply =
                    reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("submit: {e}"))?;
                anyhow::Ok((rtt, ack.finalized && !ack.duplicate))
            }
        });
        for r in futures::future::join_all(submits).await {
            let (rtt, closed) = r?;
            submit_h.record(rtt.as_micros() as u64)?;
            if closed {
                finalized.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok((lease_h, submit_h))
}

/// The transport's share of a round trip under the load: a request every [`ECHO_EVERY`] from
/// `asker` to a responder on `responder` that does nothing, until `load_over`. What the lease and
/// submit round trips take beyond this, the coordinator took.
pub(super) async fn echo_floor(
    (responder, asker): (async_nats::Client, async_nats::Client),
    load_over: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let subject = responder.new_inbox();
    let mut requests = responder.subscribe(subject.clone()).await?;
    let answers = responder.clone();
    let answering = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = answers.publish(reply, m.payload).await;
            }
        }
    });
    // The server handles a connection's messages in order, so once the responder has answered a
    // request of its own, its subscription is in place for the asker's.
    responder.request(subject.clone(), "".into()).await?;
    let body = vec![b' '; 256];
    let mut h = Histogram::<u64>::new(3)?;
    while !load_over.is_cancelled() {
        let t = Instant::now();
        asker.request(subject.clone(), body.clone().into()).await?;
        h.record(t.elapsed().as_micros() as u64)?;
        tokio::select! {
            () = load_over.cancelled() => {}
            () = tokio::time::sleep(ECHO_EVERY) => {}
        }
    }
    answering.abort();
    Ok(h)
}

/// How often the echo probe asks: 500 requests a second, next to the load's thousands.
pub(super) const ECHO_EVERY: Duration = Duration::from_millis(2);

/// How far a paced worker that fell behind may run ahead of its schedule to catch up.
pub(super) const MAX_CATCH_UP: Duration = Duration::from_millis(20);
