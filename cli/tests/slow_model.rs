//! A model slower than the lease: the worker's heartbeats must renew the leases it holds while
//! the model runs, so every task finalizes on its first leases and no attempt is spent.

mod common;

use common::{check_ledger, wait_until, Cluster};
use std::time::Duration;

#[test]
fn a_batch_slower_than_the_lease_keeps_its_leases() {
    // Leases of 2 s, swept every second; each batch takes 3 s.
    let mut c = Cluster::start(&[
        ("HEARTBEAT_TTL_SECONDS", "3"),
        ("LEASE_SECONDS", "2"),
        ("REQUEUE_SWEEP_SECONDS", "1"),
    ]);
    let workers = ["slow1", "slow2", "slow3"];
    for w in workers {
        c.start_worker(w, &["--batch", "8", "--extra-latency-ms", "3000"]);
    }
    common::add_reviews(&c, 8);
    wait_until("all 8 tasks to finalize", Duration::from_secs(60), || {
        c.count("SELECT COUNT(*) FROM task WHERE status IN ('finalized', 'failed')") == 8
    });
    check_ledger(&c, 8, &workers);
    assert_eq!(
        c.count("SELECT SUM(attempts) FROM task"),
        0,
        "a lease ran out while its worker was still working"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM lease WHERE state != 'completed'"),
        0,
        "a lease ended without its result"
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM lease"),
        24,
        "one lease per vote"
    );
    for w in workers {
        assert!(
            !c.worker_log(w).contains("submission refused"),
            "worker {w} had a submission refused:\n{}",
            c.worker_log(w)
        );
    }
}
