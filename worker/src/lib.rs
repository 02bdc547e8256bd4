//! The aimarket worker: leases tasks from the coordinator over NATS, runs a model on them, and
//! submits the results, heartbeating all the while.
//!
//! Where things live:
//! - [`runtime`]: the lease loop, heartbeats, submission retries and graceful shutdown.
//! - [`model`]: the [`Model`] trait and its backends ([`model::lexicon`]).
//! - [`backoff`]: retry pacing.

pub mod backoff;
pub mod misbehave;
pub mod model;
pub mod runtime;

pub use model::{Model, ModelError, Prediction};
pub use runtime::{run, Report, WorkerConfig, WorkerError};
