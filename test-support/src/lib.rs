//! Test helpers shared by the crates' integration tests: a real `nats-server` on a free loopback
//! port with its own temp dir, killed on drop; a real PostgreSQL server likewise ([`Postgres`])
//! and a blocking session on it ([`PgClient`]); model folders made on the spot ([`models`]).
//!
//! The binary is found in `$NATS_SERVER_BIN`, then on `PATH`, then where `scripts/setup.sh`
//! installs it (`/usr/sbin`, `~/.local/bin`).

pub mod marian;
pub mod models;
pub mod pg_client;
pub mod postgres;
pub mod t5;

pub use pg_client::PgClient;
pub use postgres::Postgres;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server`, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server on `127.0.0.1` and a free port, and waits until it accepts connections.
    ///
    /// # Panics
    /// When no `nats-server` binary is found or it does not come up within 10 s: tests cannot
    /// run without it, and the message says how to install it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (e.g. `-c file.conf`).
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Like [`NatsServer::start_with`], with environment variables for the server (a config file
    /// may read passwords from them).
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::try_start_with_env(extra, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`NatsServer::start_with_env`], saying what went wrong instead of panicking (for
    /// tools, such as `aimarket bench`, that start their own server).
    ///
    /// # Errors
    /// No `nats-server` binary, no temp dir, no free port, or a server that does not come up.
    pub fn try_start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir for nats-server: {e}"))?;
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        // A free port can be taken by someone else before the server binds it: then the server
        // exits, and we try another.
        for _ in 0..5 {
            if server.try_spawn()? {
                return Ok(server);
            }
            server.port = free_port();
        }
        Err("nats-server could not bind a free port in five tries".to_owned())
    }

    /// Starts the server and waits until it greets a client; false if it exited instead (its
    /// port was taken).
    fn spawn(&mut self) -> bool {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsServer::spawn`], saying what went wrong instead of panicking.
    fn try_spawn(&mut self) -> Result<bool, String> {
        let bin = find_nats_server()?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--store_dir")
            .arg(self.dir.path())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return Ok(false);
                }
            }
            if greets(&addr) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("nats-server did not greet on {addr} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client URL with credentials, `nats://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    ///
    /// # Panics
    /// When it is not running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nats-server running").id()
    }

    /// Kills the server (SIGKILL, as a crash would), leaving it down until
    /// [`NatsServer::restart`].
    pub fn crash(&mut self) {
        self.kill();
    }

    /// Kills the server (as a crash would) and starts it again on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound again within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "nats-server could not rebind port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server` nodes on loopback routed into one cluster (as `deploy/nats-cluster/`
/// configures them for three hosts), each killed when dropped.
pub struct NatsCluster {
    /// The nodes, in order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes on free client and cluster ports and waits until a message published
    /// on each node reaches a subscriber on every other.
    ///
    /// # Panics
    /// As [`NatsServer::start`]; when the routes do not form within 20 s.
    pub async fn start() -> Self {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::start_with(&[
                    "--name",
                    &format!("n{}", i + 1),
                    "--cluster_name",
                    "aimarket",
                    "--cluster",
                    &format!("nats://127.0.0.1:{port}"),
                    "--routes",
                    &routes,
                ])
            })
            .collect();
        let cluster = Self { nodes };
        cluster.wait_routed().await;
        cluster
    }

    /// Waits until every node forwards to every other.
    ///
    /// # Panics
    /// When it does not within 20 s.
    pub async fn wait_routed(&self) {
        use futures::StreamExt;
        let clients: Vec<async_nats::Client> = {
            let mut v = Vec::new();
            for n in &self.nodes {
                v.push(connect(&n.url()).await);
            }
            v
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, from) in clients.iter().enumerate() {
            for (j, to) in clients.iter().enumerate().filter(|(j, _)| *j != i) {
                let subject = format!("cluster.probe.{i}.{j}");
                let mut sub = to.subscribe(subject.clone()).await.expect("subscribe");
                to.flush().await.expect("flush");
                loop {
                    from.publish(subject.clone(), "x".into())
                        .await
                        .expect("publish");
                    from.flush().await.expect("flush");
                    let got = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
                    if matches!(got, Ok(Some(_))) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "node {} does not route to node {} within 20 s",
                        i + 1,
                        j + 1
                    );
                }
            }
        }
    }

    /// Every node's client URL, comma-separated, starting with node `first` (0-based): what
    /// `--nats` takes.
    pub fn urls_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|k| self.nodes[(first + k) % self.nodes.len()].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process id of node `i`, for signals.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].pid()
    }
}

/// Whether a NATS server at `addr` sends its `INFO` greeting.
fn greets(addr: &SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).is_ok() && &buf == b"INFO "
}

/// A client of the server at `url`, retrying for up to 10 s (a server just started or
/// restarted may refuse a moment longer than it takes to greet).
///
/// # Panics
/// When no connection succeeds in time.
pub async fn connect(url: &str) -> async_nats::Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "connecting to {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the real all-MiniLM-L6-v2 weights are: `$AIMARKET_MINILM_DIR`, else where
/// `scripts/fetch-minilm.sh` puts them (`.cache/models/all-MiniLM-L6-v2`).
///
/// # Panics
/// When they are not there, saying how to fetch them.
pub fn minilm_dir() -> PathBuf {
    fetched(
        "AIMARKET_MINILM_DIR",
        "models/all-MiniLM-L6-v2",
        "model.safetensors",
        "all-MiniLM-L6-v2",
        "fetch-minilm.sh",
    )
}

/// Where the human-rated sentences of the VADER study are: `$AIMARKET_SENTENCES_DIR`, else where
/// `scripts/fetch-sentences.sh` puts them (`.cache/data/vader-icwsm2014`). Each file is
/// `id<TAB>mean rating<TAB>text`.
///
/// # Panics
/// When they are not there, saying how to fetch them.
pub fn sentences_dir() -> PathBuf {
    fetched(
        "AIMARKET_SENTENCES_DIR",
        "data/vader-icwsm2014",
        "amazonReviewSnippets_GroundTruth.txt",
        "the VADER ground truth",
        "fetch-sentences.sh",
    )
}

/// Where the SmolLM2-135M-Instruct Q4_1 GGUF file is: `$AIMARKET_SMOLLM2_DIR`, else where
/// `scripts/fetch-smollm2.sh` puts it (`.cache/models/smollm2`).
///
/// # Panics
/// When it is not there, saying how to fetch it.
pub fn smollm2_dir() -> PathBuf {
    fetched(
        "AIMARKET_SMOLLM2_DIR",
        "models/smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct",
        "fetch-smollm2.sh",
    )
}

/// A folder that a script fetches from PyPI: `$var`, else `cached` under the repository's
/// `.cache/`; it must hold `probe`.
fn fetched(var: &str, cached: &str, probe: &str, what: &str, script: &str) -> PathBuf {
    let dir = std::env::var_os(var).map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache")).join(cached),
        PathBuf::from,
    );
    assert!(
        dir.join(probe).is_file(),
        "{what} missing at {}: run scripts/{script} (make test does)",
        dir.display()
    );
    dir
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `nats-server` binary the tests run (see the crate's documentation for where it looks).
///
/// # Panics
/// When there is none.
pub fn nats_server_bin() -> PathBuf {
    find_nats_server().unwrap_or_else(|e| panic!("{e}"))
}

/// [`nats_server_bin`], saying what went wrong instead of panicking.
///
/// # Errors
/// When there is none.
pub fn find_nats_server() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    candidates.push("/usr/sbin".into());
    candidates.push("/usr/local/bin".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin"));
    }
    candidates
        .into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server not found: run `scripts/setup.sh` (or `make test`), or set NATS_SERVER_BIN"
                .to_owned()
        })
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
///
/// # Panics
/// When the condition does not hold in time.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
