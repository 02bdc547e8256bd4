//! A coordinator running in-process on a real nats-server and a SQLite file in a temp dir, with
//! its HTTP gateway on a free port: the harness every coordinator integration test starts from.

#![allow(dead_code)] // each test binary uses a different part

use coordinator::Config;
use protocol::messages::ApiOp;
use protocol::subject;
use std::path::PathBuf;
use std::time::Duration;
use test_support::{wait_for, NatsServer};
use tokio_util::sync::CancellationToken;

pub(crate) struct Running {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, the gateway.
    pub http: String,
    /// A NATS client, connected.
    pub client: async_nats::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A fresh server, database and coordinator; `configure` adjusts the defaults (a sweep every
    /// 600 s, so tests sweep only when they mean to).
    pub(crate) async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_on(NatsServer::start(), dir, configure).await
    }

    /// A coordinator on an existing server and database, answering before this returns.
    pub(crate) async fn start_on(
        nats: NatsServer,
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let port = test_support::free_port();
        let mut config = Config::new(nats.url(), dir.path().join("coordinator.db"));
        config.http = Some(([127, 0, 0, 1], port).into());
        config.sweep_interval = Duration::from_secs(600);
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            coordinator::run(config, token)
                .await
                .expect("coordinator runs")
        });
        let client = test_support::connect(&nats.url()).await;
        wait_for(
            "the coordinator to answer",
            Duration::from_secs(10),
            || async {
                client
                    .request(
                        subject::api(subject::DEFAULT_PREFIX, ApiOp::Stats),
                        "{}".into(),
                    )
                    .await
                    .ok()
            },
        )
        .await;
        Self {
            nats,
            dir,
            http: format!("http://127.0.0.1:{port}"),
            client,
            shutdown,
            task,
        }
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.dir.path().join("coordinator.db")
    }

    /// Every row of the store, as text.
    pub(crate) fn dump(&self) -> String {
        let conn = rusqlite::Connection::open(self.db()).expect("open db");
        coordinator::dump(&conn).expect("dump")
    }

    /// Stops the coordinator cleanly; the server and the database stay.
    pub(crate) async fn stop(self) -> (NatsServer, tempfile::TempDir) {
        self.shutdown.cancel();
        self.task.await.expect("coordinator stopped");
        (self.nats, self.dir)
    }
}
