//! The coordinator's errors: [`StoreError`] for opening the store, [`CoreError`] for operations.
//! Every [`CoreError`] maps to a wire [`ErrorCode`], so both adapters reply the same way.

use protocol::{
    ApiError, ErrorCode, LeaseId, LeaseState, ProtocolError, TaskId, TaskStatus, WorkerId,
};

/// The store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer aimarket.
    #[error("database schema version {found} is newer than this build knows ({known}); upgrade aimarket")]
    TooNew {
        /// Version on disk.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The store's background thread is gone.
    #[error("store connection closed")]
    Closed,
    /// A migration would leave the data inconsistent; it was rolled back.
    #[error("schema migration to version {version} refused: {problem}")]
    Migration {
        /// The version it would have reached.
        version: i64,
        /// What was wrong.
        problem: String,
    },
}

/// An operation failed; the variant says what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request is malformed or out of bounds: fix it.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
    /// No such task.
    #[error("no task with id {0}")]
    TaskNotFound(TaskId),
    /// The submission names a lease never granted.
    #[error("lease {0} was never granted")]
    NoLease(LeaseId),
    /// The lease ended before the submission: drop the work.
    #[error("lease {lease} ended ({state}) before the submission arrived")]
    LeaseExpired {
        /// The lease.
        lease: LeaseId,
        /// How it ended.
        state: LeaseState,
    },
    /// The worker holds no live lease on the task (a submission without a lease id).
    #[error("worker {worker} holds no lease on task {task}")]
    NotLeased {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
    },
    /// The lease is another worker's, or for another task.
    #[error("lease {lease} belongs to worker {holder} on task {task}")]
    LeaseMismatch {
        /// The lease.
        lease: LeaseId,
        /// Its real holder.
        holder: WorkerId,
        /// Its real task.
        task: TaskId,
    },
    /// The worker already submitted a different result.
    #[error("worker {worker} already submitted {label:?} for task {task}")]
    DuplicateSubmission {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
        /// What it submitted first.
        label: String,
    },
    /// The task is finalized or failed.
    #[error("task {task} is already {status}")]
    TaskClosed {
        /// The task.
        task: TaskId,
        /// Its terminal state.
        status: TaskStatus,
    },
    /// A submission ran another model content than its task pins.
    #[error("task {task} pins model content {pinned}; the submission ran {ran}")]
    ModelMismatch {
        /// The task.
        task: TaskId,
        /// The hash the task pins.
        pinned: String,
        /// The hash the submission carries (`none` when it carries none).
        ran: String,
    },
    /// Missing or wrong credentials: the caller must present the right worker token or API key.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// SQLite failed (disk full, read-only, I/O): retry later.
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    /// The store's background thread is gone.
    #[error("store connection closed")]
    StoreClosed,
    /// The operation panicked: a bug. It was rolled back; the coordinator goes on.
    #[error("internal error: {0}")]
    Bug(String),
}

impl CoreError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Invalid(e) => e.code(),
            CoreError::TaskNotFound(_) => ErrorCode::NotFound,
            CoreError::NoLease(_) | CoreError::NotLeased { .. } => ErrorCode::NoLease,
            CoreError::LeaseExpired { .. } => ErrorCode::LeaseExpired,
            CoreError::LeaseMismatch { .. } => ErrorCode::LeaseMismatch,
            CoreError::DuplicateSubmission { .. } => ErrorCode::DuplicateSubmission,
            CoreError::TaskClosed { .. } => ErrorCode::TaskClosed,
            CoreError::ModelMismatch { .. } => ErrorCode::ModelMismatch,
            CoreError::Unauthorized(_) => ErrorCode::Unauthorized,
            CoreError::Store(e) if is_unavailable(e) => ErrorCode::Unavailable,
            CoreError::Store(_) | CoreError::StoreClosed | CoreError::Bug(_) => ErrorCode::Internal,
        }
    }

    /// The error reply body.
    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}

/// Errors that pass when the environment recovers (disk space, permissions, contention).
fn is_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DiskFull
                | C::ReadOnly
                | C::SystemIoFailure
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::CannotOpen
        )
    )
}

impl From<tokio_rusqlite::Error<CoreError>> for CoreError {
    fn from(e: tokio_rusqlite::Error<CoreError>) -> Self {
        match e {
            tokio_rusqlite::Error::Error(e) => e,
            tokio_rusqlite::Error::Close((_, e)) => CoreError::Store(e),
            _ => CoreError::StoreClosed,
        }
    }
}
