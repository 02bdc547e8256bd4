//! [`Core`]: the coordinator's operations as async methods. Each write runs through the store's
//! writer: on SQLite in its own savepoint inside a group-committed transaction on the writer's
//! thread ([`crate::store::sqlite::group`]), on PostgreSQL in a writer session's transaction,
//! alone or in a batch of operations keyed by what they lock first
//! ([`crate::store::postgres::store`]); its reply and its
//! effects (announcements, task events) are released only after the commit. Both adapters (NATS,
//! HTTP) call these same methods.

use crate::api::{Effect, Settings, Submission};
use crate::auth::Auth;
use crate::error::CoreError;
use crate::metrics::Metrics;
use crate::ops::{self, Ctx};
use crate::store::tx::Tx;
use crate::store::Lane;
use crate::store::{Probe, Store, Writer};
use protocol::messages::{
    ApiOp, Heartbeat, HeartbeatReply, LeaderboardReply, Lease, LeaseReply, LeaseRequest,
    ModelAgreementReply, ReleaseReply, ReleaseRequest, RequeueReply, ResetRequest, StatsReply,
    SubmitReply, SubmitRequest, TaskAddReply, TaskAddRequest, TaskDetail, TaskListReply,
    TaskListRequest, WorkerTokenReply, WorkerTokenRevoked, WorkersReply,
};
use protocol::policy::{GoldAddReply, GoldAddRequest, TaskIdsReply, TaskIdsRequest};
use protocol::{TaskId, TaskStatus, TaskType, WorkerId};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The coordinator's operations. Cheap to clone; all clones share one store and one set of
/// metrics.
#[derive(Clone)]
pub struct Core {
    store: Store,
    writer: Writer,
    settings: Settings,
    effects: mpsc::UnboundedSender<Effect>,
    metrics: Arc<Metrics>,
    auth: Arc<Auth>,
    /// Why the last write failed for want of disk, permissions or I/O; cleared by the next
    /// write that succeeds.
    unhealthy: Arc<Mutex<Option<String>>>,
    /// When this core started.
    started: chrono::DateTime<chrono::Utc>,
}

impl Core {
    /// A core over `store`; effects of committed operations arrive on the returned receiver.
    /// Starts the group-commit writer on its own thread, with the store's write connection.
    ///
    /// # Panics
    /// When `store` already serves another core.
    pub fn new(store: Store, settings: Settings) -> (Self, mpsc::UnboundedReceiver<Effect>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        (
            Self {
                writer: Writer::start(&store, metrics.clone()),
                store,
                settings,
                effects: tx,
                metrics,
                auth: Arc::new(Auth::default()),
                unhealthy: Arc::default(),
                started: chrono::Utc::now(),
            },
            rx,
        )
    }

    /// This core with authentication `auth` (off by default).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Whether client keys are asked for (protected mode).
    pub fn protected(&self) -> bool {
        self.auth.enabled()
    }

    /// Checks a client's credentials for an API operation: state-changing operations need a key
    /// when keys are configured; reads are open.
    ///
    /// # Errors
    /// [`CoreError::Unauthorized`].
    pub fn authorize(&self, op: ApiOp, api_key: Option<&str>) -> Result<(), CoreError> {
        if op.needs_api_key() {
            self.auth.check_key(api_key)
        } else {
            Ok(())
        }
    }

    /// Checks that `token` is `worker`'s, when authentication is on. Every worker message
    /// (lease, release, heartbeat, submit) passes here before it touches the store.
    ///
    /// # Errors
    /// [`CoreError::Unauthorized`] for a missing, wrong or revoked token.
    pub async fn authenticate_worker(
        &self,
        worker: &WorkerId,
        token: Option<&str>,
    ) -> Result<(), CoreError> {
        if !self.auth.enabled() {
            return Ok(());
        }
        let Some(token) = token.map(str::to_owned) else {
            return Err(CoreError::Unauthorized(format!(
                "worker {worker} presented no token (AIMARKET_WORKER_TOKEN)"
            )));
        };
        let id = worker.clone();
        if self
            .read(move |c, _| ops::token::verify(c, &id, &token))
            .await?
        {
            Ok(())
        } else {
            Err(CoreError::Unauthorized(format!(
                "wrong or revoked token for worker {worker}"
            )))
        }
    }

    /// Issues a worker token (replacing any earlier one); the secret is returned once.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn create_token(&self, worker: WorkerId) -> Result<WorkerTokenReply, CoreError> {
        self.write(move |c, ctx| {
            let token = ops::token::create(c, ctx, &worker)?;
            Ok(WorkerTokenReply {
                worker_id: worker.clone(),
                token,
            })
        })
        .await
    }

    /// Revokes a worker's token.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn revoke_token(&self, worker: WorkerId) -> Result<WorkerTokenRevoked, CoreError> {
        self.write(move |c, _| {
            Ok(WorkerTokenRevoked {
                revoked: ops::token::revoke(c, &worker)?,
            })
        })
        .await
    }

    /// The metrics this core keeps.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// When this core started.
    pub fn started(&self) -> chrono::DateTime<chrono::Utc> {
        self.started
    }

    /// The tunables in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    async fn write<T, F>(&self, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnMut(&dyn Tx, &mut Ctx) -> Result<T, CoreError> + Send + 'static,
    {
        self.write_in(Lane::Normal, None, None, op).await
    }

    /// Runs `op` in a write transaction of `lane`, keyed by what it locks first (see
    /// `store::Writer::write`).
    async fn write_in<T, F>(
        &self,
        lane: Lane,
        key: Option<String>,
        probe: Option<Probe>,
        mut op: F,
    ) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnMut(&dyn Tx, &mut Ctx) -> Result<T, CoreError> + Send + 'static,
    {
        // The operation's context is made where it runs (the clock read then), and its effects
        // travel back with its result, released only after the commit.
        let settings = self.settings;
        let job = move |c: &dyn Tx| {
            let mut ctx = Ctx::new(c.now_ms()?, settings);
            let out = op(c, &mut ctx)?;
            Ok((out, ctx.effects))
        };
        let result = self.writer.write(lane, key, probe, job).await;
        let (out, effects) = self.note_health(result)?;
        for effect in effects {
            // Logged here, after the commit, so the log never shows a finalization that a crash
            // rolled back.
            if let Effect::Finished(e) = &effect {
                match e.status {
                    TaskStatus::Finalized => {
                        self.metrics.tasks_finalized.inc();
                        if let Some(n) = e.answers {
                            self.metrics.answers_per_finalized.observe(f64::from(n));
                        }
                        if let Some(p) = e.posterior {
                            self.metrics.posterior_at_finalization.observe(p);
                        }
                        info!(
                            task_id = %e.task_id,
                            label = e.final_label.as_deref().unwrap_or_default(),
                            "task finalized"
                        );
                    }
                    TaskStatus::Failed => {
                        self.metrics.tasks_failed.inc();
                        warn!(
                            task_id = %e.task_id,
                            reason = e.error_message.as_deref().unwrap_or_default(),
                            "task failed"
                        );
                    }
                    TaskStatus::Cancelled => {
                        self.metrics.tasks_cancelled.inc();
                        info!(task_id = %e.task_id, "task cancelled");
                    }
                    _ => {
                        self.metrics.tasks_inconclusive.inc();
                        info!(task_id = %e.task_id, answers = e.answers, "task inconclusive");
                    }
                }
            }
            // The receiver lives as long as the coordinator runs; after that nobody listens.
            let _ = self.effects.send(effect);
        }
        Ok(out)
    }

    /// Records whether the store is writable, from a write's result.
    fn note_health<T>(&self, result: Result<T, CoreError>) -> Result<T, CoreError> {
        let mut unhealthy = self.unhealthy.lock().expect("health lock");
        match &result {
            Err(e) if e.code() == protocol::ErrorCode::Unavailable => {
                if unhealthy.is_none() {
                    tracing::error!(error = %e, "store cannot write; refusing changes until it can");
                }
                *unhealthy = Some(e.to_string());
            }
            Ok(_) if unhealthy.is_some() => {
                tracing::info!("store writable again");
                *unhealthy = None;
            }
            _ => {}
        }
        result
    }

    /// Whether the store serves: after a failed write, a probe write must succeed too.
    ///
    /// # Errors
    /// The store's error, when it cannot read, or cannot write since a write failed.
    pub async fn health(&self) -> Result<(), CoreError> {
        let failing = self.unhealthy.lock().expect("health lock").is_some();
        if failing {
            self.write(|c, ctx| {
                c.probe_write(ctx.now)?;
                Ok(())
            })
            .await?;
        }
        self.ping().await
    }

    async fn read<T, F>(&self, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Tx, i64) -> Result<T, CoreError> + Send + 'static,
    {
        self.store.read(op).await
    }

    /// Creates tasks. See `ops::task_add`.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for any bad task; nothing is stored then.
    pub async fn add_tasks(&self, req: TaskAddRequest) -> Result<TaskAddReply, CoreError> {
        let r = self
            .write(move |c, ctx| ops::task_add::run(c, ctx, req.clone()))
            .await?;
        self.metrics.tasks_created.inc_by(r.task_ids.len() as u64);
        Ok(r)
    }

    /// Cancels open tasks, all or none. See `ops::cancel`.
    ///
    /// # Errors
    /// [`CoreError::TaskNotFound`], [`CoreError::TaskClosed`]: nothing is cancelled then.
    pub async fn cancel_tasks(&self, req: TaskIdsRequest) -> Result<TaskIdsReply, CoreError> {
        self.write(move |c, ctx| ops::cancel::cancel(c, ctx, req.clone()))
            .await
    }

    /// Requeues failed tasks with fresh attempts, all or none. See `ops::cancel`.
    ///
    /// # Errors
    /// [`CoreError::TaskNotFound`], [`CoreError::Invalid`]: nothing is requeued then.
    pub async fn retry_tasks(&self, req: TaskIdsRequest) -> Result<TaskIdsReply, CoreError> {
        self.write(move |c, ctx| ops::cancel::retry(c, ctx, req.clone()))
            .await
    }

    /// Stores gold (known-answer) items, all or none. See `ops::gold`.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] naming the first bad item: nothing is stored then.
    pub async fn add_gold(&self, req: GoldAddRequest) -> Result<GoldAddReply, CoreError> {
        self.write(move |c, ctx| ops::gold::add(c, ctx, req.clone()))
            .await
    }

    /// One task with its submissions and live leases.
    ///
    /// # Errors
    /// [`CoreError::TaskNotFound`] for an unknown id.
    pub async fn get_task(&self, id: TaskId) -> Result<TaskDetail, CoreError> {
        let ttl = self.settings.heartbeat_ttl_ms;
        self.read(move |c, now| ops::task_get::run(c, &ops::starved::Live::read(c, now, ttl)?, &id))
            .await
    }

    /// Tasks, oldest first.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for a limit out of bounds.
    pub async fn list_tasks(&self, req: TaskListRequest) -> Result<TaskListReply, CoreError> {
        self.read(move |c, _| ops::task_list::run(c, &req)).await
    }

    /// Grants leases. See `ops::lease`.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for a request out of bounds.
    pub async fn lease(&self, req: LeaseRequest) -> Result<LeaseReply, CoreError> {
        let r = self
            .write_in(
                Lane::Urgent,
                Some(req.worker_id.to_string()),
                None,
                move |c, ctx| ops::lease::run(c, ctx, req.clone()),
            )
            .await?;
        self.metrics.tasks_claimed.inc_by(r.leases.len() as u64);
        Ok(r)
    }

    /// One lease for a worker of the original HTTP API (`POST /tasks/next`), on a task of a
    /// type it registered with.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn next_for(&self, worker: WorkerId) -> Result<Option<Lease>, CoreError> {
        let r = self
            .write_in(
                Lane::Urgent,
                Some(worker.to_string()),
                None,
                move |c, ctx| ops::lease::next_for(c, ctx, &worker),
            )
            .await?;
        self.metrics.tasks_claimed.inc_by(u64::from(r.is_some()));
        Ok(r)
    }

    /// Takes leases back. See `ops::release`.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn release(&self, req: ReleaseRequest) -> Result<ReleaseReply, CoreError> {
        let r = self
            .write(move |c, ctx| ops::release::run(c, ctx, req.clone()))
            .await?;
        self.metrics.leases_requeued.inc_by(u64::from(r.released));
        Ok(r)
    }

    /// Records a heartbeat and renews the worker's leases.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] when the body's worker is not the subject's.
    pub async fn heartbeat(
        &self,
        subject_worker: WorkerId,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, CoreError> {
        let r = self
            .write(move |c, ctx| ops::heartbeat::run(c, ctx, &subject_worker, hb.clone()))
            .await?;
        self.metrics.worker_heartbeats.inc();
        Ok(r)
    }

    /// Registers or refreshes a worker of the original HTTP API, renewing all its leases;
    /// `capabilities` replaces its task types when given.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for capabilities out of bounds.
    pub async fn heartbeat_known(
        &self,
        worker: WorkerId,
        capabilities: Option<Vec<TaskType>>,
    ) -> Result<HeartbeatReply, CoreError> {
        let r = self
            .write(move |c, ctx| ops::heartbeat::run_known(c, ctx, &worker, capabilities.clone()))
            .await?;
        self.metrics.worker_heartbeats.inc();
        Ok(r)
    }

    /// Stores a result; finalizes the task when it completes the vote. See `ops::submit`.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for a request out of bounds; otherwise see [`Core::accept`].
    pub async fn submit(&self, task: TaskId, req: SubmitRequest) -> Result<SubmitReply, CoreError> {
        self.accept(task, Submission::try_from(req)?).await
    }

    /// Stores a result, with or without its lease id (the HTTP API has none). See
    /// `ops::submit::accept`.
    ///
    /// # Errors
    /// See `ops::submit::accept`.
    pub async fn accept(&self, task: TaskId, sub: Submission) -> Result<SubmitReply, CoreError> {
        let probe = Some(Probe::answer(&task, sub.worker_id(), sub.lease_id()));
        let r = self
            .write_in(
                Lane::Normal,
                Some(task.to_string()),
                probe,
                move |c, ctx| ops::submit::accept(c, ctx, &task, sub.clone()),
            )
            .await?;
        self.metrics.submissions.inc_by(u64::from(!r.duplicate));
        Ok(r)
    }

    /// Frees expired leases and those of stale workers.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn sweep(&self) -> Result<RequeueReply, CoreError> {
        let r = self.write(ops::sweep::run).await?;
        self.metrics.leases_requeued.inc_by(u64::from(r.requeued));
        Ok(r)
    }

    /// Workers by points.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn leaderboard(&self) -> Result<LeaderboardReply, CoreError> {
        self.read(|c, _| ops::leaderboard::run(c)).await
    }

    /// Agreement with consensus per model and task type.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn agreement_by_model(&self) -> Result<ModelAgreementReply, CoreError> {
        self.read(|c, _| ops::leaderboard::by_model(c)).await
    }

    /// The worker registry.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn workers(&self) -> Result<WorkersReply, CoreError> {
        let ttl = self.settings.heartbeat_ttl_ms;
        self.read(move |c, now| ops::workers::run(c, now, ttl))
            .await
    }

    /// Counts.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn stats(&self) -> Result<StatsReply, CoreError> {
        let ttl = self.settings.heartbeat_ttl_ms;
        self.read(move |c, now| ops::stats::run(c, now, ttl)).await
    }

    /// Tasks finalized and failed per minute over the last hour, with their mean latency (the
    /// dashboard's chart).
    ///
    /// # Errors
    /// The store's error.
    pub(crate) async fn task_minutes(&self) -> Result<Vec<ops::series::TaskMinute>, CoreError> {
        self.read(ops::series::tasks).await
    }

    /// The event log, newest first, of one task or worker if given (see `ops::events`).
    ///
    /// # Errors
    /// The store's error.
    pub(crate) async fn events(
        &self,
        task: Option<TaskId>,
        worker: Option<WorkerId>,
        limit: u32,
    ) -> Result<Vec<protocol::messages::LogEvent>, CoreError> {
        let ttl = self.settings.heartbeat_ttl_ms;
        self.read(move |tx, now| ops::events::run(tx, now, ttl, task, worker.as_ref(), limit))
            .await
    }

    /// The newest tasks with their votes, newest first.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn recent(&self, limit: u32) -> Result<Vec<TaskDetail>, CoreError> {
        let ttl = self.settings.heartbeat_ttl_ms;
        self.read(move |c, now| {
            ops::task_get::recent(c, &ops::starved::Live::read(c, now, ttl)?, limit)
        })
        .await
    }

    /// Whether the store answers a query.
    ///
    /// # Errors
    /// The store's error.
    pub async fn ping(&self) -> Result<(), CoreError> {
        self.read(|c, _| Ok(c.ping()?)).await
    }

    /// Reads the gauges from the store and renders every metric.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn render_metrics(&self) -> Result<String, CoreError> {
        let stats = self.stats().await?;
        let m = &self.metrics;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.queue_depth.set(gauge(
            stats
                .tasks_by_status
                .get(&TaskStatus::Queued)
                .copied()
                .unwrap_or(0),
        ));
        m.tasks_assigned.set(gauge(
            stats
                .tasks_by_status
                .get(&TaskStatus::Assigned)
                .copied()
                .unwrap_or(0),
        ));
        m.workers_active.set(gauge(stats.workers_active));
        m.leases_active.set(gauge(stats.active_leases));
        // Types no longer starved drop out rather than linger at their last value.
        m.tasks_starved.clear();
        // A generative type is summed over the model contents its starved tasks pin.
        let mut by_type = std::collections::BTreeMap::new();
        for s in &stats.starved {
            *by_type.entry(s.task_type.to_string()).or_insert(0) += s.tasks;
        }
        for (t, tasks) in by_type {
            m.tasks_starved
                .get_or_create(&crate::metrics::TypeLabels { r#type: t })
                .set(gauge(tasks));
        }
        Ok(m.encode())
    }

    /// Deletes everything.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] unless confirmed.
    pub async fn reset(&self, req: ResetRequest) -> Result<(), CoreError> {
        self.write(move |c, _| ops::reset::run(c, &req)).await
    }
}
