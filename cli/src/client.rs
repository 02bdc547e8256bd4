//! The NATS client of the coordinator's API, with errors that say what to do.

use anyhow::{anyhow, Context};
use async_nats::RequestErrorKind;
use protocol::messages::{encode, ApiOp};
use protocol::{reply, subject};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// How long a client waits for one reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to NATS, addressed to the coordinator's API.
#[derive(Clone)]
pub(crate) struct Client {
    nats: async_nats::Client,
    url: String,
    prefix: String,
    api_key: Option<String>,
}

impl Client {
    /// Connects, or fails with one clear line.
    pub(crate) async fn connect(
        url: &str,
        ping: Duration,
        prefix: &str,
        api_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (bare, credentials) = protocol::auth::split_credentials(url);
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = credentials {
            options = options.user_and_password(user, password);
        }
        let nats = options
            .name("aimarket-cli")
            .ping_interval(ping)
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connect(protocol::auth::servers(&bare))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach NATS at {bare} ({e}). Start it with `make nats` (or `make dev` \
                     for NATS and a coordinator), or point --nats / NATS_URL at a running server"
                )
            })?;
        Ok(Self {
            nats,
            url: bare.clone(),
            prefix: prefix.to_owned(),
            api_key: api_key.map(str::to_owned),
        })
    }

    /// The raw NATS client (for event subscriptions).
    pub(crate) fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The subject prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Calls one API operation.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: ApiOp,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        self.attempt(op, req).await.map_err(|(e, _)| e)
    }

    /// Calls an idempotent operation, again after a pause when the call may not have
    /// happened or may have failed for now (no reply in time, no coordinator answering, the
    /// store unavailable): up to `tries` times.
    pub(crate) async fn call_idempotent<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: ApiOp,
        req: &Req,
        tries: u32,
    ) -> anyhow::Result<Resp> {
        let mut pause = Duration::from_millis(500);
        for left in (0..tries.max(1)).rev() {
            match self.attempt(op, req).await {
                Ok(r) => return Ok(r),
                Err((e, true)) if left > 0 => {
                    tracing::warn!(error = %e, "retrying {op}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
        unreachable!("the last try returns")
    }

    /// One call; an error says whether trying again may help.
    async fn attempt<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: ApiOp,
        req: &Req,
    ) -> Result<Resp, (anyhow::Error, bool)> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &self.api_key {
            headers.insert(protocol::auth::API_KEY_HEADER, key.as_str());
        }
        let msg = self
            .nats
            .request_with_headers(subject::api(&self.prefix, op), headers, encode(req).into())
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => (
                    anyhow!(
                        "no coordinator is answering on {} (prefix {:?}). Start one with \
                         `aimarket coordinator` or `make dev`",
                        self.url,
                        self.prefix
                    ),
                    true,
                ),
                RequestErrorKind::TimedOut => (
                    anyhow!(
                        "the coordinator on {} did not answer {op} within {}s",
                        self.url,
                        REQUEST_TIMEOUT.as_secs()
                    ),
                    true,
                ),
                _ => (anyhow!("{op} request failed: {e}"), true),
            })?;
        let result = reply::decode::<Resp>(&msg.payload)
            .with_context(|| format!("unreadable reply to {op}"))
            .map_err(|e| (e, false))?;
        result.map_err(|e| {
            let again = e.code == protocol::ErrorCode::Unavailable;
            (anyhow!("{op} refused: {e}"), again)
        })
    }
}
