//! Validation bounds shared by every side, so a client can refuse bad input before sending it.

/// Default cap on a task's text, in bytes (the coordinator's `--max-text-bytes` may change it).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most submissions a task may require.
pub const MAX_REQUIRED_SUBMISSIONS: u32 = 100;
/// Default number of submissions a task requires.
pub const DEFAULT_REQUIRED_SUBMISSIONS: u32 = 3;
/// Most attempts a task may be given.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;
/// Longest label a worker may submit, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Longest model id, in bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// Most leases one lease request may ask for.
pub const MAX_LEASES_PER_REQUEST: u32 = 256;
/// Most capabilities a worker may advertise.
pub const MAX_CAPABILITIES: usize = 32;
/// Most tasks one `task.add` request may carry.
pub const MAX_TASKS_PER_ADD: usize = 10_000;
/// Most rows a `task.list` returns.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// Longest id (worker id, task type), in bytes: ids are NATS subject tokens.
pub const MAX_ID_BYTES: usize = 64;
/// Most candidate labels a `zero-shot` task may carry.
pub const MAX_CANDIDATE_LABELS: usize = 64;
/// Longest vector an `embedding` submission may carry.
pub const MAX_EMBEDDING_DIM: usize = 8192;
/// Default cosine similarity at which two `embedding` answers agree.
pub const DEFAULT_SIMILARITY: f64 = 0.999;
/// Most lease ids one heartbeat may name.
pub const MAX_HEARTBEAT_LEASES: usize = 4096;
/// Most input tokens a submission may say its model read (a context window's order of size).
pub const MAX_INPUT_TOKENS: u32 = 1 << 20;
