//! `lease`: grant a worker up to `max_tasks` leases, oldest task first, on tasks of the types it
//! can do, that still need workers, and that it neither holds nor has answered.
//!
//! Several workers may hold leases on one task at once, up to the submissions it still needs, so
//! a task needing three votes is worked on by three workers in parallel.

use super::Ctx;
use crate::error::CoreError;
use crate::store::from_ms;
use crate::store::tx::{OpenTask, Tx};
use protocol::messages::{Lease, LeaseReply, LeaseRequest, Timings};
use protocol::{LeaseId, TaskId, TaskType, WorkerId};
use std::collections::HashSet;

/// The timings workers must keep to.
pub(crate) fn timings(ctx: &Ctx) -> Timings {
    Timings {
        lease_seconds: (ctx.settings.lease_ms / 1000) as u64,
        heartbeat_ttl_seconds: (ctx.settings.heartbeat_ttl_ms / 1000) as u64,
    }
}

/// # Errors
/// [`CoreError::Invalid`] for a request out of bounds; store errors otherwise.
pub(crate) fn run(tx: &dyn Tx, ctx: &mut Ctx, req: LeaseRequest) -> Result<LeaseReply, CoreError> {
    req.validate()?;
    let worker = &req.worker_id;
    tx.touch_worker(
        ctx.now,
        worker,
        &req.capabilities,
        req.model.as_deref(),
        req.model_hash.as_deref(),
    )?;
    let held = tx.held_count(worker)?;
    let want = req
        .max_tasks
        .min(ctx.settings.max_leases_per_worker.saturating_sub(held)) as usize;
    // A quarantined worker gets gold only, until its gold accuracy recovers.
    let quarantined = super::gold::quarantine(tx, worker)?.is_some();
    let (picks, gold) = if quarantined {
        (Vec::new(), gold_for(tx, ctx, &req, want)?)
    } else if want > 0 {
        pick(tx, ctx, &req, want)?
    } else {
        (Vec::new(), Vec::new())
    };
    let mut leases = grant(tx, ctx, worker, picks)?;
    // Gold among them, where real leases would be.
    for g in gold {
        leases.insert(fastrand::usize(..=leases.len()), g);
    }
    // Then candidates to score, on generative tasks of the model content the worker serves
    // (every model reports its content now: a label worker has nothing to score).
    let scores = req.capabilities.iter().any(TaskType::is_generative) && !quarantined;
    if let (Some(hash), true) = (req.model_hash.as_deref(), scores) {
        let room = want - leases.len();
        if room > 0 {
            leases.extend(super::verify::lease_slots(
                tx,
                ctx,
                worker,
                hash,
                &req.capabilities,
                room,
            )?);
        }
    }
    Ok(LeaseReply {
        leases,
        timings: timings(ctx),
    })
}

/// Up to `n` gold leases for the worker of `req`.
fn gold_for(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: &LeaseRequest,
    n: usize,
) -> Result<Vec<Lease>, CoreError> {
    super::gold::lease(
        tx,
        ctx,
        &req.worker_id,
        &req.capabilities,
        req.model_hash.as_deref(),
        n,
    )
}

/// Up to `want` open tasks for the worker of `req` (the task it asked for first, when it may
/// still take it; the rest oldest first), some of them given up for gold leases riding along;
/// its lease cursors moved past what it took.
fn pick(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: &LeaseRequest,
    want: usize,
) -> Result<(Vec<OpenTask>, Vec<Lease>), CoreError> {
    let worker = &req.worker_id;
    let hash = req.model_hash.as_deref();
    let hint = match &req.task_id {
        Some(hint) => hinted(tx, worker, hint, &req.capabilities, hash)?,
        None => None,
    };
    let mut caps = req.capabilities.clone();
    caps.sort();
    caps.dedup();
    // A generative task goes only to workers that serve the model content it pins: a worker
    // that names no hash gets none.
    caps.retain(|c| !c.is_generative() || hash.is_some());
    let mut walked = Vec::new();
    for cap in &caps {
        walked.extend(tx.open_tasks(ctx.now, worker, cap, hash, want)?);
    }
    walked.sort_by_key(|c| c.seq);
    walked.dedup_by_key(|c| c.seq);
    walked.retain(|c| hint.as_ref().is_none_or(|h| h.seq != c.seq));
    let hint = leave_to_stronger(tx, ctx, hash, &caps, &mut walked, hint)?;
    walked.truncate(want - usize::from(hint.is_some()));
    // Gold rides along with real work, in place of the newest walked picks (so every open task
    // before the last walked pick kept is still held or answered: the cursor below stays true).
    let gold_slots = (0..walked.len())
        .filter(|_| fastrand::f64() < ctx.settings.gold_rate)
        .count();
    let gold = gold_for(tx, ctx, req, gold_slots)?;
    walked.truncate(walked.len() - gold.len());
    // Every open task of each type up to its last walked pick is now held or answered by this
    // worker (the walk returned the others first; the hinted task may lie beyond them): the next
    // walk starts after it. (Exact on SQLite; with several writers a hint.)
    for cap in &caps {
        if let Some(last) = walked.iter().rev().find(|c| &c.task_type == cap) {
            tx.advance_cursor(ctx.now, worker, cap, last.seq)?;
        }
    }
    let mut picks: Vec<OpenTask> = hint.into_iter().collect();
    picks.extend(walked);
    Ok((picks, gold))
}

/// A worker of a model weaker than another live one lets the first answer of a fresh posterior
/// task wait for that one, up to `strong_first_ms` (delay scheduling): the walk is cut before
/// the first such task, so its cursor stays before it and it comes again once the wait is
/// over; a hint to such a task is dropped. The first answer of an adaptive task then comes from
/// its best model when one is free, and the weak models' agreement (their errors go together)
/// does not decide it alone. Returns the hint left.
fn leave_to_stronger(
    tx: &dyn Tx,
    ctx: &Ctx,
    hash: Option<&str>,
    caps: &[TaskType],
    walked: &mut Vec<OpenTask>,
    hint: Option<OpenTask>,
) -> Result<Option<OpenTask>, CoreError> {
    let wait = ctx.settings.strong_first_ms;
    let waits = |c: &OpenTask| c.untouched_since.is_some_and(|t| ctx.now - t < wait);
    if wait <= 0 || !walked.iter().chain(&hint).any(waits) {
        return Ok(hint);
    }
    let outranked = outranked(tx, ctx, hash, caps)?;
    let defers = |c: &OpenTask| waits(c) && outranked.contains(&c.task_type);
    if let Some(first) = walked.iter().position(defers) {
        walked.truncate(first);
    }
    Ok(hint.filter(|h| !defers(h)))
}

/// How far ahead (in gold accuracy) another live model must be for a worker to leave it the
/// first answer: near-equals do not wait on each other.
const OUTRANKED_BY: f64 = 0.02;

/// The types of `caps` for which a live worker serves a model content calibrated on gold at
/// least [`OUTRANKED_BY`] more accurate than `hash` (an uncalibrated model counts as the prior).
/// A quarantined worker gets only gold: nobody waits for it.
fn outranked(
    tx: &dyn Tx,
    ctx: &Ctx,
    hash: Option<&str>,
    caps: &[TaskType],
) -> Result<HashSet<TaskType>, CoreError> {
    let live = tx.live_workers(ctx.now - ctx.settings.heartbeat_ttl_ms)?;
    let mut out = HashSet::new();
    for cap in caps.iter().filter(|c| !c.is_generative() && !c.is_vector()) {
        let calibrations = tx.calibrations(cap)?;
        let accuracy = |h: &str| calibrations.get(h).map(|c| c.accuracy(2));
        let mine = hash
            .and_then(accuracy)
            .unwrap_or_else(|| crate::truth::Calibration::default().accuracy(2));
        let best = live
            .iter()
            .filter(|w| {
                !w.quarantined && w.capabilities.contains(cap) && w.model_hash.as_deref() != hash
            })
            .filter_map(|w| w.model_hash.as_deref().and_then(accuracy))
            .fold(f64::NEG_INFINITY, f64::max);
        if best >= mine + OUTRANKED_BY {
            out.insert(cap.clone());
        }
    }
    Ok(out)
}

/// Leases `worker` a slot on each of `picks` that still has one.
fn grant(
    tx: &dyn Tx,
    ctx: &Ctx,
    worker: &WorkerId,
    mut picks: Vec<OpenTask>,
) -> Result<Vec<Lease>, CoreError> {
    let expires_at = ctx.now + ctx.settings.lease_ms;
    let ids: Vec<TaskId> = picks.iter().map(|c| c.id).collect();
    let granted = tx.assign(&ids)?;
    picks.retain(|c| granted.contains(&c.id));
    let ids: Vec<(LeaseId, TaskId)> = picks.iter().map(|c| (LeaseId::new(), c.id)).collect();
    tx.insert_leases(worker, &ids, expires_at, ctx.now)?;
    let mut leases = Vec::with_capacity(picks.len());
    for (c, (lease_id, task_id)) in picks.into_iter().zip(ids) {
        tracing::debug!(%task_id, worker_id = %worker, %lease_id, "lease granted");
        leases.push(Lease {
            lease_id,
            task_id,
            task_type: c.task_type,
            text: c.text,
            labels: c.labels,
            generation: c.generation,
            verify: None,
            expires_at: from_ms(expires_at),
        });
    }
    Ok(leases)
}

/// One lease for a worker of the original HTTP API, on a task of a type it registered with.
///
/// # Errors
/// Store errors only.
pub(crate) fn next_for(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    worker: &WorkerId,
) -> Result<Option<Lease>, CoreError> {
    let req = LeaseRequest {
        worker_id: worker.clone(),
        capabilities: super::worker::known_capabilities(tx, worker)?,
        max_tasks: 1,
        task_id: None,
        model: None,
        model_hash: None,
    };
    Ok(run(tx, ctx, req)?.leases.pop())
}

/// Task `task` if `worker` may take it now: open to it, of a type it does, of the model
/// content it serves.
fn hinted(
    tx: &dyn Tx,
    worker: &WorkerId,
    task: &TaskId,
    capabilities: &[TaskType],
    model_hash: Option<&str>,
) -> Result<Option<OpenTask>, CoreError> {
    Ok(tx.hinted(worker, task, model_hash)?.filter(|c| {
        capabilities.contains(&c.task_type)
            && c.generation
                .as_ref()
                .is_none_or(|g| Some(g.model_hash.as_str()) == model_hash)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::task::load_task;
    use crate::ops::testing::*;
    use crate::store::postgres::{CURSOR_REFRESH_MS, HEAD_WALK_MS};
    use crate::store::sql::params;
    use protocol::messages::{LeaseRequest, NewTask};
    use protocol::TaskStatus;

    fn parallel_leases_to_distinct_workers_up_to_required(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        for w in ["a", "b", "c"] {
            let r = lease(&mut conn, 1, lease_req(w, 1));
            assert_eq!(r.leases.len(), 1, "{w} got no lease");
            assert_eq!(r.leases[0].task_id, t);
        }
        assert!(lease(&mut conn, 1, lease_req("d", 1)).leases.is_empty());
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.status, task.active_leases), (TaskStatus::Assigned, 3));
    }

    /// Leases and votes change a task's counters only: its stored status stays `queued` while
    /// it is open (what is read is `assigned` while it has live leases), and on PostgreSQL no
    /// index of `task` names a column they change, so each is an update in place (HOT).
    fn leases_and_votes_leave_the_stored_status_be(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        let stored = |conn: &TestStore| stored_status(conn, &t);
        let a = take(&mut conn, 1, "a");
        let b = take(&mut conn, 1, "b");
        assert_eq!(
            load_task(&*conn.tx(), &t).expect("task").status,
            TaskStatus::Assigned
        );
        assert_eq!(stored(&conn), "queued");
        send(&mut conn, 2, &t, answer(&a[0], "a", "positive", 0.9))
            .0
            .expect("a votes");
        assert_eq!(
            load_task(&*conn.tx(), &t).expect("task").status,
            TaskStatus::Assigned
        );
        assert_eq!(stored(&conn), "queued");
        super::super::release::run(
            &*conn.tx(),
            &mut ctx(3),
            protocol::messages::ReleaseRequest {
                worker_id: wid("b"),
                lease_ids: vec![b[0].lease_id],
                offline: false,
            },
        )
        .expect("b releases");
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!((task.status, task.active_leases), (TaskStatus::Queued, 0));
        assert_eq!(stored(&conn), "queued");
        if conn.is_postgres() {
            for def in &task_index_defs(&conn) {
                for column in ["active_leases", "submissions", "attempts", "verifying"] {
                    assert!(!def.contains(column), "{def} names {column}");
                }
            }
        }
    }

    fn a_worker_never_gets_a_second_lease_on_a_task(mut conn: TestStore) {
        add(&mut conn, 0, NewTask::text("x"));
        assert_eq!(lease(&mut conn, 1, lease_req("a", 5)).leases.len(), 1);
        assert!(lease(&mut conn, 2, lease_req("a", 5)).leases.is_empty());
    }

    fn fifo_and_capability_routing(mut conn: TestStore) {
        let other = add(
            &mut conn,
            0,
            NewTask {
                task_type: Some(TaskType::embedding()),
                ..NewTask::text("hola")
            },
        );
        let first = add(&mut conn, 1, NewTask::text("one"));
        let second = add(&mut conn, 2, NewTask::text("two"));
        let r = lease(&mut conn, 3, lease_req("a", 10));
        let ids: Vec<_> = r.leases.iter().map(|l| l.task_id).collect();
        assert_eq!(ids, vec![first, second], "sentiment worker got {ids:?}");
        let mut req = lease_req("b", 10);
        req.capabilities = vec![TaskType::embedding(), TaskType::sentiment()];
        let ids: Vec<_> = lease(&mut conn, 4, req)
            .leases
            .iter()
            .map(|l| l.task_id)
            .collect();
        assert_eq!(ids, vec![other, first, second]);
    }

    fn per_worker_cap_on_held_leases(mut conn: TestStore) {
        for i in 0..5 {
            add(&mut conn, i, NewTask::text(format!("t{i}")));
        }
        let mut c = ctx(10);
        c.settings.max_leases_per_worker = 2;
        let (first, second) = conn
            .write(|tx| -> Result<_, CoreError> {
                let first = run(tx, &mut c, lease_req("a", 5))?.leases.len();
                Ok((first, run(tx, &mut c, lease_req("a", 5))?.leases.len()))
            })
            .expect("lease");
        assert_eq!((first, second), (2, 0));
    }

    fn ids(r: &LeaseReply) -> Vec<TaskId> {
        r.leases.iter().map(|l| l.task_id).collect()
    }

    fn release(conn: &mut TestStore, now: i64, worker: &str, lease: &Lease) {
        let req = protocol::messages::ReleaseRequest {
            worker_id: wid(worker),
            lease_ids: vec![lease.lease_id],
            offline: false,
        };
        let r = conn
            .write(|tx| crate::ops::release::run(tx, &mut ctx(now), req))
            .expect("release");
        assert_eq!(r.released, 1);
    }

    fn two_votes(text: &str) -> NewTask {
        NewTask {
            required_submissions: Some(2),
            ..NewTask::text(text)
        }
    }

    fn a_slot_freed_behind_a_workers_cursor_is_offered_to_it_again(mut conn: TestStore) {
        let t1 = add(&mut conn, 0, two_votes("one"));
        let t2 = add(&mut conn, 0, two_votes("two"));
        assert_eq!(ids(&lease(&mut conn, 1, lease_req("a", 2))), [t1, t2]);
        let b = lease(&mut conn, 1, lease_req("b", 1));
        assert_eq!(ids(&b), [t1]);
        // t1 is full (a and b), so c walks past it to t2: c's cursor is now after t1.
        assert_eq!(ids(&lease(&mut conn, 1, lease_req("c", 2))), [t2]);
        assert!(lease(&mut conn, 1, lease_req("c", 2)).leases.is_empty());
        // b gives t1 back: c must see it, though its cursor had passed it.
        release(&mut conn, 2, "b", &b.leases[0]);
        assert_eq!(ids(&lease(&mut conn, 3, lease_req("c", 2))), [t1]);
    }

    fn a_worker_whose_lease_expired_may_lease_the_task_again(mut conn: TestStore) {
        let t1 = add(&mut conn, 0, NewTask::text("one"));
        let t2 = add(&mut conn, 0, NewTask::text("two"));
        assert_eq!(ids(&lease(&mut conn, 1, lease_req("a", 1))), [t1]);
        assert_eq!(ids(&lease(&mut conn, 1, lease_req("a", 1))), [t2]);
        let swept = conn
            .write(|tx| crate::ops::sweep::run(tx, &mut ctx(60_000)))
            .expect("sweep");
        assert_eq!(swept.requeued, 2, "{swept:?}");
        assert_eq!(ids(&lease(&mut conn, 60_001, lease_req("a", 5))), [t1, t2]);
    }

    fn a_rolled_back_lease_leaves_the_cursor_where_it_was(mut conn: TestStore) {
        let t1 = add(&mut conn, 0, NewTask::text("one"));
        let rolled_back = conn.write(|tx| -> Result<(), Vec<TaskId>> {
            // Refused after leasing: rolled back, cursor included.
            Err(ids(&run(tx, &mut ctx(1), lease_req("a", 1)).expect("lease")))
        });
        assert_eq!(rolled_back, Err(vec![t1]));
        assert_eq!(ids(&lease(&mut conn, 2, lease_req("a", 1))), [t1]);
    }

    fn a_hinted_task_comes_first_and_the_cursor_stays_true(mut conn: TestStore) {
        let t: Vec<TaskId> = (0..3)
            .map(|i| add(&mut conn, 0, NewTask::text(format!("t{i}"))))
            .collect();
        let hinted = |conn: &mut TestStore, max, hint| {
            let req = LeaseRequest {
                task_id: Some(hint),
                ..lease_req("a", max)
            };
            ids(&lease(conn, 1, req))
        };
        assert_eq!(hinted(&mut conn, 1, t[2]), [t[2]], "the hint first");
        assert_eq!(
            hinted(&mut conn, 2, t[2]),
            [t[0], t[1]],
            "a hint taken: the oldest"
        );
        assert!(lease(&mut conn, 1, lease_req("a", 5)).leases.is_empty());
    }

    on_both_engines!(
        a_hinted_task_comes_first_and_the_cursor_stays_true,
        parallel_leases_to_distinct_workers_up_to_required,
        leases_and_votes_leave_the_stored_status_be,
        a_worker_never_gets_a_second_lease_on_a_task,
        fifo_and_capability_routing,
        per_worker_cap_on_held_leases,
        a_slot_freed_behind_a_workers_cursor_is_offered_to_it_again,
        a_worker_whose_lease_expired_may_lease_the_task_again,
        a_rolled_back_lease_leaves_the_cursor_where_it_was,
    );

    #[test]
    fn the_lease_query_is_compiled_once() {
        let mut conn = store();
        for i in 0..20 {
            add(&mut conn, i, NewTask::text(format!("t{i}")));
        }
        for (i, w) in ["a", "b", "c", "a", "b", "c"].into_iter().enumerate() {
            let r = lease(&mut conn, 30, lease_req(w, 1 + i as u32));
            assert!(!r.leases.is_empty(), "{w} got no lease");
        }
        let walk = conn
            .prepare_cached(crate::store::sqlite::walk_sql())
            .expect("cached");
        assert_eq!(walk.get_status(rusqlite::StatementStatus::Run), 6);
        assert_eq!(
            walk.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the walk was compiled again for new parameters"
        );
    }

    /// On PostgreSQL a walk passes over task rows other sessions hold (a submission being stored,
    /// say) and the cursor moves past them: the worker still gets them, from the head, once the
    /// cursor leads to too few tasks (and the last walk from the head is [`HEAD_WALK_MS`] old)
    /// or has been followed for [`CURSOR_REFRESH_MS`].
    #[test]
    fn a_task_passed_over_while_locked_is_leased_later_on_postgres() {
        let server = PgServer::start();
        let mut conn = server.fresh();
        let t: Vec<TaskId> = (0..4)
            .map(|i| add(&mut conn, 0, NewTask::text(format!("t{i}"))))
            .collect();
        let mut other = test_support::PgClient::connect(server.url());
        let held = hold_task(&mut other, &t[0]);
        let got = |conn: &mut TestStore, now| -> Vec<TaskId> {
            lease(conn, now, lease_req("w", 1))
                .leases
                .iter()
                .map(|l| l.task_id)
                .collect()
        };
        assert_eq!(got(&mut conn, 10), [t[1]], "t0 is held: passed over");
        held.rollback().expect("unlock");
        assert_eq!(got(&mut conn, 20), [t[2]], "the cursor leads on");
        assert_eq!(
            got(&mut conn, 30 + CURSOR_REFRESH_MS),
            [t[0]],
            "a cursor followed that long starts over from the head"
        );
        assert_eq!(got(&mut conn, 40 + CURSOR_REFRESH_MS), [t[3]]);
        assert!(got(&mut conn, 50 + CURSOR_REFRESH_MS).is_empty());

        // Passed over again, and the cursor leads to nothing more: the head has it once the last
        // walk from there (at 30 + CURSOR_REFRESH_MS) is HEAD_WALK_MS old.
        let u = add(&mut conn, 60, NewTask::text("u0"));
        let v = add(&mut conn, 60, NewTask::text("v0"));
        let held = hold_task(&mut other, &u);
        assert_eq!(got(&mut conn, 70 + CURSOR_REFRESH_MS), [v]);
        held.rollback().expect("unlock");
        assert!(got(&mut conn, 80 + CURSOR_REFRESH_MS).is_empty(), "not yet");
        assert_eq!(got(&mut conn, 30 + CURSOR_REFRESH_MS + HEAD_WALK_MS), [u]);
        // That walk was one from the head: the next waits as long again.
        let x = add(&mut conn, 90, NewTask::text("x0"));
        let y = add(&mut conn, 90, NewTask::text("y0"));
        let held = hold_task(&mut other, &x);
        assert_eq!(got(&mut conn, 40 + CURSOR_REFRESH_MS + HEAD_WALK_MS), [y]);
        held.rollback().expect("unlock");
        assert!(got(&mut conn, 50 + CURSOR_REFRESH_MS + HEAD_WALK_MS).is_empty());
        assert_eq!(
            got(&mut conn, 30 + CURSOR_REFRESH_MS + 2 * HEAD_WALK_MS),
            [x]
        );
    }

    #[test]
    fn the_lease_query_walks_the_open_index() {
        let conn = store();
        let sql = format!("EXPLAIN QUERY PLAN {}", crate::store::sqlite::walk_sql());
        for (task_type, hash) in [("sentiment", None), ("generate", Some("ab".repeat(32)))] {
            let plan: Vec<String> = (&conn as &dyn Sql)
                .prepare(&sql)
                .expect("plan")
                .query_map(params!["w", task_type, 1, hash, 0], |r| r.get(3))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            let plan = plan.join("\n");
            assert!(
                plan.contains("USING INDEX task_open (type=? AND seq>?)"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "the query sorts: {plan}");
        }
    }
}
