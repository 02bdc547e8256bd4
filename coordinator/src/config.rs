//! The coordinator's configuration, filled in by the CLI from flags and env vars.

use crate::api::Settings;
use crate::auth::Auth;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `coordinator::run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS server URL, or several comma-separated (the nodes of a cluster).
    pub nats_url: String,
    /// How often the NATS connection pings its server.
    pub nats_ping: Duration,
    /// The store: a SQLite database file, or a PostgreSQL URL (`postgres://user@host/db`).
    pub db_path: PathBuf,
    /// Subject prefix.
    pub prefix: String,
    /// The tunables of the core operations.
    pub settings: Settings,
    /// How often the sweeper runs.
    pub sweep_interval: Duration,
    /// How long a shutdown may take before in-flight requests are abandoned.
    pub shutdown_grace: Duration,
    /// Where the HTTP gateway listens; `None` disables it.
    pub http: Option<SocketAddr>,
    /// Who may do what; no API keys means open (allowed on loopback only).
    pub auth: Auth,
    /// PostgreSQL's session timeouts (unused on SQLite).
    pub pg_timeouts: crate::store::postgres::Timeouts,
    /// How long an OpenAI-compatible request waits for its task to be final by default (a
    /// request may say otherwise); past it, a 504 naming the task.
    pub api_wait: Duration,
    /// Each client's quota of OpenAI-compatible requests that make tasks, per minute; `None`:
    /// no quota.
    pub api_quota: Option<std::num::NonZeroU32>,
}

impl Config {
    /// A config with the defaults, for `nats_url` and `db_path`.
    pub fn new(nats_url: impl Into<String>, db_path: impl Into<PathBuf>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_ping: protocol::auth::DEFAULT_NATS_PING,
            db_path: db_path.into(),
            prefix: protocol::subject::DEFAULT_PREFIX.to_owned(),
            settings: Settings::default(),
            sweep_interval: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
            http: None,
            auth: Auth::default(),
            pg_timeouts: crate::store::postgres::Timeouts::default(),
            api_wait: Duration::from_secs(120),
            api_quota: None,
        }
    }
}
