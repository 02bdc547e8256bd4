//! The store on a full disk and on a read-only disk (a real tmpfs, mounted by the test; needs
//! root, as `make test` has): writes fail with a clear `unavailable` error, `/health` turns 503,
//! reads go on, nothing is corrupted, and everything recovers when space or write access returns.

use coordinator::Store;
use coordinator::{Config, Settings};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use test_support::{wait_for, NatsServer};
use tokio_util::sync::CancellationToken;

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs failed: this test needs root (make test runs as root in CI)"
        );
        Self { path, _dir: dir }
    }

    /// Remounts read-only or read-write, retrying while files are still being closed.
    fn remount(&self, mode: &str) {
        for _ in 0..100 {
            let ok = Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("remount {mode} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system with a file, until it refuses.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![7u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
}

async fn status(http: &reqwest::Client, url: String, body: Option<Value>) -> (u16, Value) {
    let req = match body {
        Some(b) => http.post(url).json(&b),
        None => http.get(url),
    };
    let r = req.send().await.expect("request");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_disk_is_reported_survived_and_recovered_from() {
    let disk = Tmpfs::mount("4m");
    let nats = NatsServer::start();
    let port = test_support::free_port();
    let mut config = Config::new(nats.url(), disk.path.join("coordinator.db"));
    config.http = Some(([127, 0, 0, 1], port).into());
    config.settings = Settings::default();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let coordinator =
        tokio::spawn(async move { coordinator::run(config, token).await.expect("runs") });
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    wait_for("the gateway", Duration::from_secs(10), || async {
        http.get(url("/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    let mut kept = Vec::new();
    for i in 0..5 {
        let (s, r) = status(
            &http,
            url("/tasks"),
            Some(json!({"text": format!("keep me {i}")})),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        kept.push(r["task_id"].as_str().expect("id").to_owned());
    }

    // Full disk: large tasks until the store refuses, with a clear error.
    fill(&disk.path.join("filler"));
    let big = "x".repeat(60_000);
    let mut refused = None;
    for _ in 0..200 {
        let (s, r) = status(&http, url("/tasks"), Some(json!({"text": big}))).await;
        if s != 200 {
            refused = Some((s, r));
            break;
        }
    }
    let (s, r) = refused.expect("the store never ran out of space");
    assert_eq!(
        (s, &r["error"]["code"]),
        (503, &json!("unavailable")),
        "{r}"
    );
    assert!(
        r["detail"].as_str().is_some_and(|d| d.contains("full")),
        "{r}"
    );
    let (s, h) = status(&http, url("/health"), None).await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["ok"], false);
    let (s, stats) = status(&http, url("/db/stats"), None).await;
    assert_eq!(s, 200, "reads stop on a full disk: {stats}");

    // Space returns: healthy again, writes work, nothing lost or corrupted.
    std::fs::remove_file(disk.path.join("filler")).expect("free space");
    let (s, h) = status(&http, url("/health"), None).await;
    assert_eq!((s, h), (200, json!({"ok": true})));
    let (s, _) = status(
        &http,
        url("/tasks"),
        Some(json!({"text": "after the storm"})),
    )
    .await;
    assert_eq!(s, 200);
    for id in &kept {
        let (s, t) = status(&http, url(&format!("/tasks/{id}")), None).await;
        assert_eq!((s, &t["task"]["status"]), (200, &json!("queued")));
    }

    shutdown.cancel();
    coordinator.await.expect("stopped");

    // Read-only disk. A file system will not turn read-only under files open for writing, so
    // the store meets it when it opens: the coordinator refuses to start, saying why.
    disk.remount("ro");
    let Err(e) = Store::open(&disk.path.join("coordinator.db")).await else {
        panic!("the store opened for writing on a read-only disk");
    };
    assert!(
        e.to_string().contains("unable to open database file"),
        "{e}"
    );
    disk.remount("rw");
    let conn = rusqlite::Connection::open(disk.path.join("coordinator.db")).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(check, "ok");
    let kept_tasks: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM task WHERE text LIKE 'keep me %'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(kept_tasks, 5);
}
