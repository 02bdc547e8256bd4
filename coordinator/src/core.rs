//! [`Core`]: the coordinator's operations as async methods. Each write runs in one transaction on
//! the store's thread; its effects (announcements, task events) are handed to the publisher only
//! after the commit. Both adapters (NATS, HTTP) call these same methods.

use crate::error::CoreError;
use crate::ops::{self, Ctx, Effect, Settings};
use crate::store::Store;
use protocol::messages::{
    Heartbeat, HeartbeatReply, LeaderboardReply, LeaseReply, LeaseRequest, ReleaseReply,
    ReleaseRequest, RequeueReply, ResetRequest, StatsReply, SubmitReply, SubmitRequest,
    TaskAddReply, TaskAddRequest, TaskDetail, TaskListReply, TaskListRequest, WorkersReply,
};
use protocol::{TaskId, TaskStatus, WorkerId};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The coordinator's operations. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Core {
    store: Store,
    settings: Settings,
    effects: mpsc::UnboundedSender<Effect>,
}

impl Core {
    /// A core over `store`; effects of committed operations arrive on the returned receiver.
    pub fn new(store: Store, settings: Settings) -> (Self, mpsc::UnboundedReceiver<Effect>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                store,
                settings,
                effects: tx,
            },
            rx,
        )
    }

    /// The tunables in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    async fn write<T, F>(&self, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Ctx) -> Result<T, CoreError> + Send + 'static,
    {
        let settings = self.settings;
        let (out, effects) = self
            .store
            .conn()
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut ctx = Ctx::new(now_ms(), settings);
                let out = op(&tx, &mut ctx)?;
                tx.commit()?;
                Ok::<_, CoreError>((out, ctx.effects))
            })
            .await?;
        for effect in effects {
            // Logged here, after the commit, so the log never shows a finalization that a crash
            // rolled back.
            if let Effect::Finished(e) = &effect {
                match e.status {
                    TaskStatus::Finalized => info!(
                        task_id = %e.task_id,
                        label = e.final_label.as_deref().unwrap_or_default(),
                        "task finalized"
                    ),
                    _ => warn!(
                        task_id = %e.task_id,
                        reason = e.error_message.as_deref().unwrap_or_default(),
                        "task failed"
                    ),
                }
            }
            // The receiver lives as long as the coordinator runs; after that nobody listens.
            let _ = self.effects.send(effect);
        }
        Ok(out)
    }

    async fn read<T, F>(&self, op: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, CoreError> + Send + 'static,
    {
        Ok(self
            .store
            .conn()
            .call(move |conn| {
                // One read transaction, so multi-query reads see one snapshot.
                let tx = conn.transaction()?;
                op(&tx, now_ms())
            })
            .await?)
    }

    /// Creates tasks. See [`ops::task_add`].
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for any bad task; nothing is stored then.
    pub async fn add_tasks(&self, req: TaskAddRequest) -> Result<TaskAddReply, CoreError> {
        self.write(move |c, ctx| ops::task_add::run(c, ctx, req))
            .await
    }

    /// One task with its submissions and live leases.
    ///
    /// # Errors
    /// [`CoreError::TaskNotFound`] for an unknown id.
    pub async fn get_task(&self, id: TaskId) -> Result<TaskDetail, CoreError> {
        self.read(move |c, _| ops::task_get::run(c, &id)).await
    }

    /// Tasks, oldest first.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for a limit out of bounds.
    pub async fn list_tasks(&self, req: TaskListRequest) -> Result<TaskListReply, CoreError> {
        self.read(move |c, _| ops::task_list::run(c, &req)).await
    }

    /// Grants leases. See [`ops::lease`].
    ///
    /// # Errors
    /// [`CoreError::Invalid`] for a request out of bounds.
    pub async fn lease(&self, req: LeaseRequest) -> Result<LeaseReply, CoreError> {
        self.write(move |c, ctx| ops::lease::run(c, ctx, req)).await
    }

    /// Takes leases back. See [`ops::release`].
    ///
    /// # Errors
    /// Store errors only.
    pub async fn release(&self, req: ReleaseRequest) -> Result<ReleaseReply, CoreError> {
        self.write(move |c, ctx| ops::release::run(c, ctx, req))
            .await
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
        self.write(move |c, ctx| ops::heartbeat::run(c, ctx, &subject_worker, hb))
            .await
    }

    /// Stores a result; finalizes the task when it completes the vote. See [`ops::submit`].
    ///
    /// # Errors
    /// See [`ops::submit::run`].
    pub async fn submit(&self, task: TaskId, req: SubmitRequest) -> Result<SubmitReply, CoreError> {
        self.write(move |c, ctx| ops::submit::run(c, ctx, &task, req))
            .await
    }

    /// Frees expired leases and those of stale workers.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn sweep(&self) -> Result<RequeueReply, CoreError> {
        self.write(ops::sweep::run).await
    }

    /// Workers by points.
    ///
    /// # Errors
    /// Store errors only.
    pub async fn leaderboard(&self) -> Result<LeaderboardReply, CoreError> {
        self.read(|c, _| ops::leaderboard::run(c)).await
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

    /// Deletes everything.
    ///
    /// # Errors
    /// [`CoreError::Invalid`] unless confirmed.
    pub async fn reset(&self, req: ResetRequest) -> Result<(), CoreError> {
        self.write(move |c, _| ops::reset::run(c, &req)).await
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
