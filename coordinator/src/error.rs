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
    /// PostgreSQL refused, or could not be reached.
    #[error("{}", crate::store::sql::pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The store's URL or settings are wrong.
    #[error("store: {0}")]
    Config(String),
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

impl From<crate::store::sql::Error> for StoreError {
    fn from(e: crate::store::sql::Error) -> Self {
        use crate::store::sql::Error;
        match e {
            Error::Sqlite(e) => StoreError::Sqlite(e),
            Error::Postgres(e) => StoreError::Postgres(e),
            e @ (Error::NoRows | Error::Conversion(..)) => StoreError::Migration {
                version: 0,
                problem: e.to_string(),
            },
        }
    }
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
    /// The store failed (disk full, read-only, I/O, the database unreachable): retry later.
    #[error("store: {0}")]
    Store(#[from] crate::store::sql::Error),
    /// The connection was lost while the transaction committed: it may or may not have
    /// committed. Never answered `ok`; a retry must be safe (an idempotent request).
    #[error("store: the commit's outcome is unknown ({0}); retry")]
    CommitUnknown(String),
    /// The database server cannot be reached (down, restarting, or the network): retry later.
    #[error("store unreachable: {0}")]
    Unreachable(String),
    /// The store's background thread is gone.
    #[error("store connection closed")]
    StoreClosed,
    /// The system had no randomness to draw a secret from: nothing was stored; retry later.
    #[error("no randomness to draw a secret from: {0}")]
    NoRandomness(#[source] getrandom::Error),
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
            CoreError::CommitUnknown(_) | CoreError::Unreachable(_) => ErrorCode::Unavailable,
            CoreError::Store(_)
            | CoreError::StoreClosed
            | CoreError::NoRandomness(_)
            | CoreError::Bug(_) => ErrorCode::Internal,
        }
    }

    /// The error reply body.
    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Store(e.into())
    }
}

/// Errors that pass when the environment recovers (disk space, permissions, contention, the
/// database server down or restarting).
pub(crate) fn is_unavailable(e: &crate::store::sql::Error) -> bool {
    use crate::store::sql::Error as E;
    use rusqlite::ErrorCode as C;
    match e {
        E::Sqlite(e) => matches!(
            e.sqlite_error_code(),
            Some(
                C::DiskFull
                    | C::ReadOnly
                    | C::SystemIoFailure
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::CannotOpen
            )
        ),
        E::Postgres(pg) => match pg.code() {
            // No server reply at all: the connection is gone.
            None => true,
            Some(code) => is_transient_sqlstate(code.code()),
        },
        E::NoRows | E::Conversion(..) => false,
    }
}

/// SQLSTATEs of a transaction that lost to another: serialization failure, deadlock, lock
/// timeout. Running it again may succeed.
pub(crate) const CONFLICT_SQLSTATES: [&str; 3] = ["40001", "40P01", "55P03"];

/// SQLSTATEs that pass on their own: lost connections (class 08), the server shutting down or
/// starting (57P0x), resources (class 53), conflicts ([`CONFLICT_SQLSTATES`]), timeouts.
pub(crate) fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || CONFLICT_SQLSTATES.contains(&code)
        || matches!(code, "57014" | "25P03")
}

impl From<tokio_rusqlite::Error<CoreError>> for CoreError {
    fn from(e: tokio_rusqlite::Error<CoreError>) -> Self {
        match e {
            tokio_rusqlite::Error::Error(e) => e,
            tokio_rusqlite::Error::Close((_, e)) => CoreError::Store(e.into()),
            _ => CoreError::StoreClosed,
        }
    }
}
