//! A real PostgreSQL server for tests: its own cluster in a temp dir, on a free loopback port,
//! stopped (and its files removed) on drop.
//!
//! The binaries are found in `$AIMARKET_PG_BIN` (a directory), then in the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout), then through `pg_config --bindir`;
//! `scripts/setup.sh --postgres` installs Debian's `postgresql` package when none is there.
//! `initdb` and `postgres` refuse to run as root: when the tests run as root, the server runs as
//! the `postgres` user the package creates.

use crate::free_port;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server, stopped when dropped.
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user and group the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    extra: Vec<String>,
}

impl Postgres {
    /// Creates a cluster in a temp dir and starts it on `127.0.0.1` and a free port, waiting
    /// until it accepts queries.
    ///
    /// # Panics
    /// When no PostgreSQL binaries are found, `initdb` fails, or the server does not come up
    /// within 30 s: the message says how to install it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`], with extra server settings (`name=value`, passed as `-c`).
    ///
    /// # Panics
    /// As [`Postgres::start`].
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir for postgres");
        let run_as = run_as();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), uid, gid);
            chown(&data, uid, gid);
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("temp dir readable by the server's user");
        let out = as_user(Command::new(bin.join("initdb")), run_as)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("--pgdata")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            bin,
            run_as,
            extra: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    /// The URL a client connects with (the `postgres` superuser, database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Crashes the server the way a power cut does to its processes: `pg_ctl stop -m immediate`
    /// (every backend quits at once, no checkpoint); the next start replays the WAL.
    pub fn crash(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_user(Command::new(self.bin.join("pg_ctl")), self.run_as)
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data, after [`Postgres::crash`].
    ///
    /// # Panics
    /// As [`Postgres::start`].
    pub fn restart(&mut self) {
        self.crash();
        self.spawn();
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        if let Some((uid, gid)) = self.run_as {
            chown(&self.dir.path().join("postgres.log"), uid, gid);
        }
        let mut cmd = as_user(Command::new(self.bin.join("postgres")), self.run_as);
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // A test's server: a process crash loses nothing (the WAL is in the OS's cache);
            // only the machine's power could.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"]);
        for s in &self.extra {
            cmd.arg("-c").arg(s);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not come up in 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}

fn as_user(mut cmd: Command, run_as: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

/// The `postgres` user's ids when running as root, else `None` (run as ourselves).
fn run_as() -> Option<(u32, u32)> {
    let me = id(&["-u"])?;
    if me != 0 {
        return None;
    }
    let uid = id(&["-u", "postgres"]).expect(
        "tests run as root and there is no `postgres` user to run PostgreSQL as: \
         run `scripts/setup.sh --postgres` (installs Debian's postgresql)",
    );
    let gid = id(&["-g", "postgres"]).expect("the postgres user's group");
    Some((uid, gid))
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the postgres user");
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
///
/// # Panics
/// When none is found, with the command that installs it.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIMARKET_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL is not installed: run `scripts/setup.sh --postgres` (Debian's postgresql), \
         or set AIMARKET_PG_BIN to the directory holding initdb and postgres"
    )
}
