//! The aimarket coordinator: hands out inference tasks to workers over NATS, verifies results by
//! majority vote across distinct workers, and keeps the leaderboard.
//!
//! Where things live (inside the crate; the public surface is what the binary and the tests
//! use, re-exported below):
//! - [`api`]: the core's vocabulary ([`Settings`], [`Effect`], a checked `Submission`).
//! - `ops`: the rules (one file per operation, plus the task's and the decision's shared
//!   steps) over the store's domain interface (`store::tx::Tx`): the task state machine,
//!   leases, votes, cross-scoring, gold. No SQL, no engine, no transport, no async.
//! - [`consensus`]: the vote (public: `aimarket eval` scores the vote of several models).
//! - `store`: [`Store`] (SQLite or PostgreSQL), the writer, the domain interface and each
//!   engine's implementation of it (`store::sqlite`, `store::postgres`), with its SQL, schema
//!   and migrations.
//! - `core`: [`Core`], each operation one store job running one rule.
//! - `nats`: the NATS adapter ([`dispatch`] is public for the fuzz tests); `http`: the HTTP
//!   gateway (the original API, metrics, dashboard). Both call the same [`Core`] methods.
//! - `openai`: the OpenAI-compatible API under `/v1` on the HTTP listener (models, chat
//!   completions with their evidence, embeddings, server-sent events).
//! - `metrics`: Prometheus metrics.
//! - [`run`]: everything together until shutdown.

pub mod api;
mod auth;
mod config;
pub mod consensus;
mod core;
mod error;
mod http;
mod metrics;
mod minutes;
mod nats;
mod openai;
mod ops;
mod store;
pub mod truth;

pub use crate::api::{Effect, Settings};
pub use crate::auth::{Auth, Unprotected};
pub use crate::config::Config;
pub use crate::core::Core;
pub use crate::error::{CoreError, StoreError};
pub use crate::metrics::Outcome;
pub use crate::nats::{dispatch, Answer};
pub use crate::store::postgres::store::Timeouts as PgTimeouts;
pub use crate::store::{dump, is_postgres_url, without_password, Store};

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("opening store {path}: {source}")]
    Store {
        /// The database file.
        path: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The NATS URL is unusable.
    #[error("connecting to nats at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A subscription was refused.
    #[error("subscribing: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Exposed beyond loopback without keys.
    #[error(transparent)]
    Unprotected(#[from] Unprotected),
    /// The HTTP address cannot be bound.
    #[error("listening on http://{addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the coordinator until `shutdown` fires: opens the store, connects to NATS (waiting for
/// the server if it is not up yet), serves requests, sweeps, and on shutdown finishes in-flight
/// requests and flushes before returning.
///
/// # Errors
/// [`RunError`] when the store cannot be opened or NATS refuses a subscription.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    auth::protect(&config.auth, &config.nats_url, config.http)?;
    if config.auth.enabled() {
        info!("authentication on: API keys for changes, tokens for workers");
    } else {
        info!("authentication off (loopback only)");
    }
    let db = config.db_path.to_string_lossy().into_owned();
    let store = store::Store::open_any(&db, "aimarket-coordinator", config.pg_timeouts)
        .await
        .map_err(|source| RunError::Store {
            path: store::without_password(&db),
            source,
        })?;
    info!(db = %store.describe(), "store open");
    let (core, effects) = Core::new(store.clone(), config.settings);
    let core = core.with_auth(config.auth.clone());
    // Bind before anything else runs, so a taken port fails fast and says so.
    let http = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Http { addr, source })?,
        ),
        None => None,
    };

    // For messages: never the password.
    let nats_shown = protocol::auth::split_credentials(&config.nats_url).0;
    let client = connect(&config.nats_url, config.nats_ping)
        .await
        .map_err(|source| RunError::Connect {
            url: nats_shown.clone(),
            source,
        })?;
    let background = tokio_util::task::TaskTracker::new();
    background.spawn(nats::publish_effects(
        client.clone(),
        config.prefix.clone(),
        effects,
    ));
    background.spawn(sweeper(
        core.clone(),
        config.sweep_interval,
        shutdown.clone(),
    ));
    let gateway = http::Gateway {
        nats: client.clone(),
        prefix: config.prefix.clone(),
        api_wait: config.api_wait,
        quota: config.api_quota,
    };
    let http_shown = serve_http(&background, http, &core, gateway, &shutdown);
    // Requeue what expired while the coordinator was down, before serving.
    if let Err(e) = core.sweep().await {
        warn!(error = %e, "startup sweep failed");
    }
    info!(
        nats = %nats_shown,
        lease_seconds = config.settings.lease_ms / 1000,
        heartbeat_ttl_seconds = config.settings.heartbeat_ttl_ms / 1000,
        "coordinator ready"
    );
    let service = nats::register(
        &client,
        core.clone(),
        &config.prefix,
        store.describe(),
        http_shown,
        shutdown.clone(),
    )
    .await
    .inspect_err(|e| warn!(error = %e, "not registered as a nats micro service"))
    .ok();
    let served = nats::serve(
        client.clone(),
        core,
        config.prefix.clone(),
        shutdown.clone(),
        config.shutdown_grace,
    )
    .await;
    wind_down(background, service, &client, store).await;
    info!("coordinator stopped");
    served.map_err(RunError::from)
}

/// Serves the HTTP gateway on `listener`, if there is one, until `shutdown`; the address it
/// serves on, for the micro service's metadata.
fn serve_http(
    background: &tokio_util::task::TaskTracker,
    listener: Option<tokio::net::TcpListener>,
    core: &Core,
    gateway: http::Gateway,
    shutdown: &CancellationToken,
) -> Option<String> {
    let listener = listener?;
    let addr = listener.local_addr().ok();
    info!(http = ?addr, "serving http gateway");
    let (core, shutdown) = (core.clone(), shutdown.clone());
    background.spawn(async move {
        if let Err(e) = http::serve(listener, core, gateway, shutdown).await {
            tracing::error!(error = %e, "http gateway stopped");
        }
    });
    addr.map(|a| a.to_string())
}

/// After the adapters stopped: the micro service stops, the background tasks finish (the sweeper has seen the same
/// token; once it and the adapter are done, the last `Core` is gone and the publisher drains
/// what is left), NATS is flushed and the store closed.
async fn wind_down(
    background: tokio_util::task::TaskTracker,
    service: Option<async_nats::service::Service>,
    client: &async_nats::Client,
    store: store::Store,
) {
    if let Some(service) = service {
        if let Err(e) = service.stop().await {
            debug!(error = %e, "micro service stop");
        }
    }
    background.close();
    background.wait().await;
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "final flush failed"),
        Err(_) => warn!("final flush timed out; nats is unreachable"),
    }
    if let Err(e) = store.close(Duration::from_secs(5)).await {
        warn!(error = %e, "the store did not close cleanly; it recovers on the next start");
    }
}

async fn connect(
    url: &str,
    ping: Duration,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let (url, credentials) = protocol::auth::split_credentials(url);
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    options
        .name("aimarket-coordinator")
        .ping_interval(ping)
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => info!("nats connected"),
                async_nats::Event::Disconnected => warn!("nats disconnected; reconnecting"),
                other => info!(event = %other, "nats event"),
            }
        })
        .connect(protocol::auth::servers(&url))
        .await
}

async fn sweeper(core: Core, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = core.sweep().await {
                    warn!(error = %e, "sweep failed");
                }
            }
        }
    }
}
