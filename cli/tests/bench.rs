//! `aimarket bench` end to end, small: its own nats-server and coordinator, the load, the bulk
//! add, the depth probe, and the ledger it checks. Numbers are not asserted (BENCHMARKS.md has
//! them); that every phase runs and adds up is.

mod common;

use common::{wait_until, Cluster, BIN};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_small_bench_runs_every_phase_and_its_ledger_adds_up() {
    let out = Command::new(BIN)
        .args([
            "bench", "--tasks", "300", "--bulk", "500", "--depth", "50", "--rate", "0", "--json",
        ])
        .env("NATS_SERVER_BIN", test_support::nats_server_bin())
        .env_remove("NATS_URL")
        .output()
        .expect("run aimarket bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");

    let ledger = &report["ledger"];
    assert_eq!(ledger["finalized"], 300, "{report}");
    assert_eq!(ledger["finalizations_acknowledged"], 300, "{report}");
    assert_eq!(ledger["submissions"], 900, "{report}");
    assert_eq!(ledger["failed"], 0, "{report}");
    assert_eq!(
        report["lease_rtt_us"]["count"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_eq!(report["submit_rtt_us"]["count"], 900, "{report}");
    // The echo probe asked at least once while the load ran.
    assert_eq!(
        report["echo_rtt_us"]["count"].as_u64().map(|n| n > 0),
        Some(true),
        "{report}"
    );

    assert_eq!(report["bulk_add"]["tasks"], 500, "{report}");
    // A depth far below the probe's 2,000 leases stays filled: each leased task is answered and
    // replaced, not released until it fails.
    assert_eq!(report["depth"]["queued"], 50, "{report}");
    assert_eq!(report["depth"]["lease_rtt_us"]["count"], 2000, "{report}");
    assert!(
        report["coordinator_peak_rss_mb"]
            .as_f64()
            .is_some_and(|mb| mb > 0.0),
        "{report}"
    );
}

/// Two benches pointed at one coordinator that a real worker also serves: each works only on its
/// own tasks (before, each counted the other's finalizations against its total and one never
/// finished), and the real worker is lent none of them.
#[test]
fn benches_sharing_a_coordinator_keep_to_their_own_tasks() {
    let mut c = Cluster::start(&[]);
    c.start_worker("real", &["--model", "lexicon"]);
    let bench = || {
        Command::new(BIN)
            .args([
                "--json",
                "bench",
                "--connect",
                "--tasks",
                "300",
                "--bulk",
                "0",
            ])
            .env("NATS_URL", c.nats.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aimarket bench")
    };
    let mut runs = [bench(), bench()];
    wait_until("both benches to finish", Duration::from_secs(120), || {
        runs.iter_mut()
            .all(|b| b.try_wait().expect("bench status").is_some())
    });
    for run in runs {
        let out = run.wait_with_output().expect("bench output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bench failed: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
        assert_eq!(
            report["ledger"]["finalizations_acknowledged"], 300,
            "{report}"
        );
        assert_eq!(report["submit_rtt_us"]["count"], 900, "{report}");
    }
    assert_eq!(
        c.count("SELECT COUNT(*) FROM submission WHERE worker_id = 'real'"),
        0
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'"),
        600
    );
}
