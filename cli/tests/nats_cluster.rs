//! The coordinator and its workers over a three-node NATS cluster (`--nats` lists every node):
//! while tasks are worked on (the workers slowed to 100 ms a batch, and more tasks added before
//! each fault when fewer than 100 are open, so every fault lands mid-run), each node in turn is
//! killed (SIGKILL) and restarted, then one is frozen (SIGSTOP) past two ping intervals and
//! resumed. Every process's connection fails
//! over; the ledger must still balance: every task finalized once with its votes, every
//! acknowledged submission stored, points equal to agreeing submissions, no lease left live.

mod common;

use common::{check_ledger, signal, wait_until, Cluster};
use protocol::messages::CoordinatorStatus;
use std::time::{Duration, Instant};
use test_support::NatsCluster;

#[test]
fn work_goes_on_while_nats_nodes_die_and_freeze() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut nats = rt.block_on(NatsCluster::start());
    let urls = nats.urls_from(0);
    let mut c = Cluster::start(&[
        ("NATS_URL", urls.as_str()),
        ("AIMARKET_NATS_PING_SECONDS", "1"),
        ("HEARTBEAT_TTL_SECONDS", "6"),
        ("LEASE_SECONDS", "8"),
        ("REQUEUE_SWEEP_SECONDS", "1"),
    ]);
    // Each worker lists the nodes starting from another one (the client shuffles them anyway).
    let workers = ["w1", "w2", "w3"];
    for (i, w) in workers.iter().enumerate() {
        let list = nats.urls_from(i + 1);
        c.start_worker(
            w,
            &["--batch", "8", "--extra-latency-ms", "100", "--nats", &list],
        );
    }
    let mut tasks = 600;
    common::add_reviews(&c, tasks);
    let started = Instant::now();
    let done = || c.count("SELECT COUNT(*) FROM task WHERE status = 'finalized'");
    // Tops the queue up so the next fault finds work in flight; the open count it saw.
    let ensure_work = |tasks: &mut usize| {
        let open = c.count("SELECT COUNT(*) FROM task WHERE status IN ('queued', 'assigned')");
        if open >= 100 {
            return open;
        }
        common::add_reviews(&c, 300);
        *tasks += 300;
        open + 300
    };

    let mut open_at_faults = Vec::new();
    for i in 0..nats.nodes.len() {
        std::thread::sleep(Duration::from_millis(700));
        open_at_faults.push(ensure_work(&mut tasks));
        nats.nodes[i].crash();
        println!(
            "{:>5.1}s node n{} killed, {} finalized",
            started.elapsed().as_secs_f64(),
            i + 1,
            done()
        );
        std::thread::sleep(Duration::from_secs(2));
        nats.nodes[i].restart();
        rt.block_on(nats.wait_routed());
        println!(
            "{:>5.1}s node n{} back",
            started.elapsed().as_secs_f64(),
            i + 1
        );
    }
    let frozen = nats.pid(1);
    open_at_faults.push(ensure_work(&mut tasks));
    signal(frozen, "STOP");
    println!(
        "{:>5.1}s node n2 frozen, {} finalized",
        started.elapsed().as_secs_f64(),
        done()
    );
    std::thread::sleep(Duration::from_secs(4));
    signal(frozen, "CONT");
    println!("{:>5.1}s node n2 resumed", started.elapsed().as_secs_f64());

    wait_until("every task to finalize", Duration::from_secs(180), || {
        done() == tasks as i64
    });
    println!("open tasks at each fault: {open_at_faults:?}");
    let acked = check_ledger(&c, tasks as i64, &workers);
    println!(
        "{tasks} tasks finalized in {:.1}s through 3 node kills and a freeze; {acked} \
         acknowledged submissions all stored",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        c.count("SELECT COUNT(*) FROM lease WHERE state = 'active'"),
        0,
        "a lease left live"
    );
    // The coordinator answers the micro-service discovery through any node, with its counters.
    let found: Vec<CoordinatorStatus> = c.json(&["coordinators"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let me = &found[0];
    assert!(me.store.starts_with("sqlite "), "{me:?}");
    assert_eq!(me.tasks_finalized, tasks as u64, "{me:?}");
    assert_eq!(me.submissions, 3 * tasks as u64, "{me:?}");
    let other_prefix = c.cli(&["--prefix", "elsewhere", "coordinators"]);
    assert!(
        !other_prefix.status.success(),
        "a coordinator of another prefix was listed"
    );
}
