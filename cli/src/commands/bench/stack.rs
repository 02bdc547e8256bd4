//! The nats-server and coordinators a bench run starts, stopped on drop, and what their
//! processes used.

use anyhow::Context;
use std::process::{Child, Command, Stdio};
use test_support::NatsServer;

/// nats-server and a coordinator started for the run, stopped on drop.
pub(super) struct Stack {
    pub(super) nats: NatsServer,
    pub(super) coordinators: Vec<Child>,
    pub(super) url: String,
    /// The store the coordinators run on.
    pub(super) db: String,
    pub(super) dir: tempfile::TempDir,
}

impl Stack {
    pub(super) fn start(prefix: &str, db: Option<&str>, n: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        // The same starter as the tests': a free loopback port, its own temp dir.
        let nats = NatsServer::try_start_with_env(&[], &[]).map_err(anyhow::Error::msg)?;
        let url = nats.url();
        let db = db.map_or_else(
            || dir.path().join("bench.db").display().to_string(),
            str::to_owned,
        );
        let mut coordinators = Vec::new();
        for i in 0..n {
            coordinators.push(
                Command::new(std::env::current_exe()?)
                    .args(["coordinator", "--http", "off", "--db", &db])
                    .env("NATS_URL", &url)
                    .env("AIMARKET_PREFIX", prefix)
                    .env("RUST_LOG", "warn")
                    .env_remove("AIMARKET_API_KEY")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(
                        dir.path().join(format!("coordinator-{i}.log")),
                    )?)
                    .spawn()
                    .context("starting a coordinator")?,
            );
        }
        Ok(Self {
            nats,
            coordinators,
            url,
            db,
            dir,
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.coordinators {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux).
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of every process named `postgres` (the server and its backends), in clock
/// ticks.
pub(super) fn postgres_ticks() -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_ticks)
        .sum()
}

/// Peak resident set (VmHWM), in MB.
pub(super) fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
