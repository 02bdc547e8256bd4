//! Credentials on the wire. Workers present a token (issued by `aimarket worker token create`) in
//! [`WORKER_TOKEN_HEADER`] on lease, release, heartbeat and submit; clients present an API key in
//! [`API_KEY_HEADER`] for operations that change state. Over HTTP both travel as
//! `Authorization: Bearer <secret>` (`X-Api-Key` works for keys too).

/// NATS header carrying a worker's token.
pub const WORKER_TOKEN_HEADER: &str = "Aimarket-Worker-Token";
/// NATS header carrying a client's API key.
pub const API_KEY_HEADER: &str = "Aimarket-Api-Key";
/// Prefix of worker tokens, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "amk_";
