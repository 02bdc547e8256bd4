//! Operator requests: requeue, reset, worker tokens.

use crate::ids::WorkerId;
use serde::{Deserialize, Serialize};

/// Reply to `api.ops.requeue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueReply {
    /// Leases freed (expired, or held by stale workers).
    pub requeued: u32,
    /// Tasks that ran out of attempts as a result.
    pub failed: u32,
    /// Workers newly marked stale.
    pub stale_workers: u32,
}

/// `api.ops.reset`: delete every task, lease, submission, worker and score.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Must be `true`: a guard against accidents.
    #[serde(default)]
    pub confirm: bool,
}

/// `api.worker.token.create` / `api.worker.token.revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTokenRequest {
    /// The worker.
    pub worker_id: WorkerId,
}

/// Reply to `worker.token.create`: the secret, shown this once (the coordinator keeps a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTokenReply {
    /// The worker.
    pub worker_id: WorkerId,
    /// The token; present it as `AIMARKET_WORKER_TOKEN`.
    pub token: String,
}

/// Reply to `worker.token.revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTokenRevoked {
    /// Whether the worker had a token.
    pub revoked: bool,
}
