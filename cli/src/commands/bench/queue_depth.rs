//! Lease latency with a deep queue.

use super::*;
use crate::client::Client;
use anyhow::bail;
use hdrhistogram::Histogram;
use protocol::messages::{encode, LeaseReply, LeaseRequest, NewTask, SubmitReply, SubmitRequest};
use protocol::{reply, subject};
use std::time::Instant;

/// Lease latency with `k` tasks queued: single leases by a probe worker. Each leased task is
/// answered (it needs one vote, so it finalizes) and replaced by a new one, untimed, so the
/// depth stays `k`. (Releasing it instead would count an attempt each time: the oldest task would
/// fail after `max_attempts` probes, and a small depth run dry.)
pub(super) async fn depth(client: &Client, k: u64, run: &Run) -> anyhow::Result<DepthReport> {
    let kind = run.depth.clone();
    let queued = |i: u64| NewTask {
        task_type: Some(kind.clone()),
        required_submissions: Some(1),
        ..NewTask::text(format!("queued {i}"))
    };
    let started = Instant::now();
    let mut added = 0;
    while added < k {
        let n = (k - added).min(10_000);
        crate::commands::task::add_all(client, (added..added + n).map(queued).collect()).await?;
        added += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let fill = Rate {
        tasks: k,
        seconds,
        per_sec: k as f64 / seconds,
    };
    let nats = client.nats();
    let worker = run.worker("probe")?;
    let req = encode(&LeaseRequest {
        worker_id: worker.clone(),
        capabilities: vec![kind.clone()],
        max_tasks: 1,
        task_id: None,
        model: None,
        model_hash: None,
    });
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..DEPTH_PROBES {
        let t = Instant::now();
        let msg = nats
            .request(subject::lease(client.prefix()), req.clone().into())
            .await?;
        h.record(t.elapsed().as_micros() as u64)?;
        let leases: LeaseReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("lease: {e}"))?;
        let Some(l) = leases.leases.first() else {
            bail!("no task at depth {k}")
        };
        let answer = encode(&SubmitRequest {
            input_tokens: None,
            lease_id: l.lease_id,
            worker_id: worker.clone(),
            label: instant_label(&l.text).into(),
            embedding: None,
            confidence: 0.9,
            model: None,
            generation: None,
            verification: None,
            model_hash: None,
        });
        let msg = nats
            .request(subject::submit(client.prefix(), &l.task_id), answer.into())
            .await?;
        let _: SubmitReply =
            reply::decode(&msg.payload)?.map_err(|e| anyhow::anyhow!("submit: {e}"))?;
        crate::commands::task::add_all(client, vec![queued(k + i)]).await?;
    }
    Ok(DepthReport {
        queued: k,
        fill,
        lease_rtt_us: Percentiles::of(&h),
    })
}

/// Lease requests timed at depth.
pub(super) const DEPTH_PROBES: u64 = 2000;
