//! One module per command group.

pub mod bench;
pub mod coordinator;
pub mod models;
pub mod ops;
pub mod task;
pub mod views;
pub mod worker;

use crate::client::Client;

/// The global flags every command sees.
#[derive(Clone)]
pub struct Ctx {
    /// NATS URL.
    pub nats: String,
    /// Subject prefix.
    pub prefix: String,
    /// The API key (see `--api-key`).
    pub api_key: Option<String>,
    /// JSON output.
    pub json: bool,
}

impl Ctx {
    /// A client of the coordinator's API.
    pub async fn client(&self) -> anyhow::Result<Client> {
        // A coordinator may accept several keys; a client presents the first.
        let key = self
            .api_key
            .as_deref()
            .and_then(|k| k.split(',').map(str::trim).find(|k| !k.is_empty()));
        Client::connect(&self.nats, &self.prefix, key).await
    }
}
