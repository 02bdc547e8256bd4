//! Waiting for a task to be final: its events on NATS (from whichever coordinator decides it),
//! the store read again on each event and every second (an event missed while subscribing is
//! no matter), and the task's progress messages handed to the caller as they come.

use super::error::OaiError;
use super::OpenAi;
use futures::{FutureExt, StreamExt};
use protocol::chat::Progress;
use protocol::messages::TaskDetail;
use protocol::{subject, TaskId};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How often the store is read while no event comes.
const RECHECK: Duration = Duration::from_secs(1);

/// What a wait saw of the task's generations besides its end.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Each worker's prompt length in tokens, from its progress messages.
    pub(crate) prompt_tokens: HashMap<String, u32>,
}

impl Seen {
    /// The prompt's length as one of `workers` reported it (honest workers agree on it).
    pub(crate) fn prompt_tokens_of<'a>(
        &self,
        mut workers: impl Iterator<Item = &'a str>,
    ) -> Option<u32> {
        workers.find_map(|w| self.prompt_tokens.get(w).copied())
    }
}

/// Why a wait ended without a final task.
pub(crate) enum NotFinal {
    /// The deadline passed: the task goes on.
    TimedOut,
    /// The store or NATS failed.
    Failed(OaiError),
}

impl From<OaiError> for NotFinal {
    fn from(e: OaiError) -> Self {
        Self::Failed(e)
    }
}

/// Subscriptions to a task's events and progress, made before its first read so that nothing
/// after it is missed.
pub(crate) struct Watch {
    events: async_nats::Subscriber,
    progress: async_nats::Subscriber,
    task: TaskId,
    pub(crate) seen: Seen,
}

impl Watch {
    /// Subscribes to `task`'s events and progress.
    ///
    /// # Errors
    /// 503 when NATS refuses the subscription.
    pub(crate) async fn start(api: &OpenAi, task: TaskId) -> Result<Self, OaiError> {
        let nats = &api.gateway.nats;
        let prefix = &api.gateway.prefix;
        let sub = |e: async_nats::SubscribeError| {
            OaiError::starved(format!("cannot follow task {task} on nats: {e}"))
        };
        let events = nats
            .subscribe(subject::task_event(prefix, &task))
            .await
            .map_err(sub)?;
        let progress = nats
            .subscribe(subject::progress(prefix, &task))
            .await
            .map_err(sub)?;
        Ok(Self {
            events,
            progress,
            task,
            seen: Seen::default(),
        })
    }

    /// The task followed.
    pub(crate) fn task(&self) -> TaskId {
        self.task
    }

    /// Waits until the task is terminal or `deadline`, handing each progress message to
    /// `on_progress`.
    ///
    /// # Errors
    /// [`NotFinal::TimedOut`] past the deadline; [`NotFinal::Failed`] when the store fails.
    pub(crate) async fn until_final(
        &mut self,
        api: &OpenAi,
        deadline: Instant,
        on_progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<TaskDetail, NotFinal> {
        loop {
            let detail = api.core.get_task(self.task).await.map_err(OaiError::from)?;
            if detail.task.status.is_terminal() {
                self.drain(on_progress);
                return Ok(detail);
            }
            let recheck = Instant::now() + RECHECK;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Err(NotFinal::TimedOut),
                    _ = tokio::time::sleep_until(recheck) => break,
                    Some(_) = self.events.next() => break,
                    Some(m) = self.progress.next() => self.note(&m.payload, on_progress),
                }
            }
        }
    }

    /// Hands on the progress messages already delivered.
    fn drain(&mut self, on_progress: &mut (dyn FnMut(&Progress) + Send)) {
        while let Some(Some(m)) = self.progress.next().now_or_never() {
            self.note(&m.payload, on_progress);
        }
    }

    fn note(&mut self, payload: &[u8], on_progress: &mut (dyn FnMut(&Progress) + Send)) {
        let Ok(p) = serde_json::from_slice::<Progress>(payload) else {
            tracing::debug!(task_id = %self.task, "unreadable progress message");
            return;
        };
        self.seen
            .prompt_tokens
            .insert(p.worker_id.to_string(), p.prompt_tokens);
        on_progress(&p);
    }
}
