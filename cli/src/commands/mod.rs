//! One module per command group.

pub(crate) mod bench;
pub(crate) mod chat_file;
pub(crate) mod coordinator;
pub(crate) mod gold;
pub(crate) mod models;
pub(crate) mod ops;
pub(crate) mod task;
pub(crate) mod views;
pub(crate) mod worker;

use crate::client::Client;

/// The global flags every command sees.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// NATS URL (or several, comma-separated).
    pub nats: String,
    /// How often NATS connections ping their server.
    pub nats_ping: std::time::Duration,
    /// Subject prefix.
    pub prefix: String,
    /// The API key (see `--api-key`).
    pub api_key: Option<String>,
    /// JSON output.
    pub json: bool,
}

impl Ctx {
    /// A client of the coordinator's API.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        // A coordinator may accept several keys; a client presents the first.
        let key = self
            .api_key
            .as_deref()
            .and_then(|k| k.split(',').map(str::trim).find(|k| !k.is_empty()));
        Client::connect(&self.nats, self.nats_ping, &self.prefix, key).await
    }
}
