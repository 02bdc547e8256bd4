//! One module per command group.

pub mod coordinator;
pub mod ops;
pub mod task;
pub mod views;
pub mod worker;

use crate::client::Client;

/// The global flags every command sees.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// NATS URL.
    pub nats: String,
    /// Subject prefix.
    pub prefix: String,
    /// JSON output.
    pub json: bool,
}

impl Ctx {
    /// A client of the coordinator's API.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.nats, &self.prefix).await
    }
}
