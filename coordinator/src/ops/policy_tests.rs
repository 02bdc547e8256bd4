//! The vote rules end to end over the operations: quorums and inconclusive rounds, the majority
//! policy, distinct models, pinned model content, gold tasks and quarantine, cancel and retry.

use super::testing::*;
use super::*;
use protocol::messages::{Heartbeat, LeaseRequest, NewTask, SubmitRequest};
use protocol::policy::{GoldAddRequest, GoldItem, Policy, TaskIdsRequest};
use protocol::{ErrorCode, TaskStatus};

fn zero_shot(required: u32, max_answers: u32) -> NewTask {
    NewTask {
        required_submissions: Some(required),
        max_answers: Some(max_answers),
        ..NewTask::zero_shot("x", &["a", "b", "c"])
    }
}

fn take_zs(conn: &mut TestStore, now: i64, worker: &str) -> Vec<protocol::messages::Lease> {
    let req = LeaseRequest {
        capabilities: vec![TaskType::zero_shot()],
        ..lease_req(worker, 1)
    };
    lease(conn, now, req).leases
}

fn view_status(conn: &dyn Tx, t: &TaskId) -> TaskStatus {
    load_task(conn, t).expect("task").view_status()
}

fn a_split_is_inconclusive_until_one_more_replica_makes_a_quorum(mut conn: TestStore) {
    let t = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(2),
            ..NewTask::text("x")
        },
    );
    let (la, lb) = (
        take(&mut conn, 1, "a").remove(0),
        take(&mut conn, 1, "b").remove(0),
    );
    send(&mut conn, 2, &t, answer(&la, "a", "positive", 0.6))
        .0
        .expect("a");
    // A 1-1 split: the more confident answer does not decide it.
    let (r, fx) = send(&mut conn, 3, &t, answer(&lb, "b", "negative", 0.99));
    assert!(!r.expect("b").finalized);
    assert_eq!(view_status(&*conn.tx(), &t), TaskStatus::Inconclusive);
    assert!(fx.iter().any(|e| matches!(e,
        Effect::Finished(ev) if ev.status == TaskStatus::Inconclusive && ev.answers == Some(2))));
    assert!(fx.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert_eq!((points(&conn, "a"), points(&conn, "b")), (0, 0));
    // The workers that answered cannot take the replica; a third one can.
    assert!(take(&mut conn, 4, "a").is_empty() && take(&mut conn, 4, "b").is_empty());
    let lc = take(&mut conn, 4, "c").remove(0);
    let r = send(&mut conn, 5, &t, answer(&lc, "c", "positive", 0.5))
        .0
        .expect("c");
    assert_eq!(
        (r.finalized, r.final_label.as_deref()),
        (true, Some("positive"))
    );
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(
        (task.status, task.submissions, task.asked),
        (TaskStatus::Finalized, 3, 2)
    );
    assert_eq!(
        (points(&conn, "a"), points(&conn, "b"), points(&conn, "c")),
        (1, 0, 1),
        "points only inside the quorum"
    );
}

fn no_quorum_by_max_answers_fails_and_a_retry_collects_more(mut conn: TestStore) {
    let t = add(&mut conn, 0, zero_shot(2, 3));
    for (w, label) in [("a", "a"), ("b", "b"), ("c", "c")] {
        let l = take_zs(&mut conn, 1, w).remove(0);
        send(&mut conn, 2, &t, answer(&l, w, label, 0.9))
            .0
            .expect(w);
    }
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.failure_reason, Some(FailureReason::NoConsensus));
    assert!(task.error_message.expect("why").contains("no consensus"));
    assert!(["a", "b", "c"].iter().all(|w| points(&conn, w) == 0));
    assert!(
        take_zs(&mut conn, 3, "d").is_empty(),
        "a failed task is leased"
    );

    // Retry: the three answers stay, room for more is made, a fourth answer decides. In
    // autocommit mode, so a refusal that wrote anything before refusing would show.
    let retry = |conn: &mut TestStore, ids: Vec<TaskId>| {
        cancel::retry(&*conn.tx(), &mut ctx(4), TaskIdsRequest { task_ids: ids })
    };
    retry(&mut conn, vec![t]).expect("retry");
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(
        (task.status, task.submissions, task.attempts),
        (TaskStatus::Queued, 3, 0)
    );
    assert!(task.error_message.is_none() && task.vote.max_answers == 5);
    let l = take_zs(&mut conn, 5, "d").remove(0);
    let r = send(&mut conn, 6, &t, answer(&l, "d", "b", 0.9))
        .0
        .expect("d");
    assert_eq!(r.final_label.as_deref(), Some("b"));
    assert_eq!(
        (points(&conn, "b"), points(&conn, "d"), points(&conn, "a")),
        (1, 1, 0)
    );

    // Only failed tasks are retried, all or none; the refusal changes nothing.
    let failed = add(
        &mut conn,
        7,
        NewTask {
            max_attempts: Some(1),
            ..NewTask::text("fails")
        },
    );
    let lease = take(&mut conn, 8, "e").remove(0);
    assert_eq!(lease.task_id, failed);
    conn.write(|tx| super::sweep::run(tx, &mut ctx(9 + settings().lease_ms)))
        .expect("sweep");
    assert_eq!(view_status(&*conn.tx(), &failed), TaskStatus::Failed);
    let before = dump(&conn);
    let e = retry(&mut conn, vec![failed, t]).expect_err("finalized");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let e = retry(&mut conn, vec![failed, TaskId::new()]).expect_err("unknown");
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert_eq!(dump(&conn), before);
}

fn the_majority_policy_keeps_the_original_tiebreak(mut conn: TestStore) {
    let t = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(2),
            policy: Some(Policy::Majority),
            ..NewTask::text("x")
        },
    );
    let (la, lb) = (
        take(&mut conn, 1, "a").remove(0),
        take(&mut conn, 1, "b").remove(0),
    );
    send(&mut conn, 2, &t, answer(&la, "a", "positive", 0.6))
        .0
        .expect("a");
    let r = send(&mut conn, 3, &t, answer(&lb, "b", "negative", 0.99))
        .0
        .expect("b");
    assert_eq!(
        r.final_label.as_deref(),
        Some("negative"),
        "higher confidence"
    );
    assert_eq!((points(&conn, "a"), points(&conn, "b")), (0, 1));
}

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn take_as(
    conn: &mut TestStore,
    worker: &str,
    hash: Option<&str>,
) -> Vec<protocol::messages::Lease> {
    let req = LeaseRequest {
        model_hash: hash.map(str::to_owned),
        ..lease_req(worker, 1)
    };
    lease(conn, 1, req).leases
}

/// `worker`'s positive answer on `l`, from model content `hash`.
fn answer_as(l: &protocol::messages::Lease, worker: &str, hash: &str) -> SubmitRequest {
    SubmitRequest {
        model_hash: Some(hash.into()),
        ..answer(l, worker, "positive", 0.9)
    }
}

/// Sends `sub`, which must be refused with `code` and change nothing.
fn refused(conn: &mut TestStore, t: &TaskId, sub: SubmitRequest, code: ErrorCode) {
    let before = dump(conn);
    let e = send(conn, 3, t, sub).0.expect_err("refused");
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(dump(conn), before);
}

fn distinct_models_count_one_answer_per_model_content(mut conn: TestStore) {
    let t = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(2),
            distinct_models: Some(true),
            ..NewTask::text("x")
        },
    );
    assert!(
        take_as(&mut conn, "anon", None).is_empty(),
        "no hash, no distinct-model task"
    );
    let l1 = take_as(&mut conn, "a", Some(H1)).remove(0);
    assert!(
        take_as(&mut conn, "a2", Some(H1)).is_empty(),
        "same content, lease live"
    );
    send(&mut conn, 2, &t, answer_as(&l1, "a", H1))
        .0
        .expect("a");
    assert!(
        take_as(&mut conn, "a3", Some(H1)).is_empty(),
        "same content, answered"
    );
    let l2 = take_as(&mut conn, "b", Some(H2)).remove(0);
    // A worker that switched to content already counted is refused.
    refused(
        &mut conn,
        &t,
        answer_as(&l2, "b", H1),
        ErrorCode::InvalidArgument,
    );
    let sub = answer_as(&l2, "b", H2);
    assert!(send(&mut conn, 3, &t, sub).0.expect("b").finalized);
}

fn a_label_task_can_pin_model_content(mut conn: TestStore) {
    let t = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(1),
            model_hash: Some(H1.into()),
            ..NewTask::text("x")
        },
    );
    assert!(take_as(&mut conn, "other", Some(H2)).is_empty());
    assert!(take_as(&mut conn, "none", None).is_empty());
    let l = take_as(&mut conn, "a", Some(H1)).remove(0);
    refused(
        &mut conn,
        &t,
        answer_as(&l, "a", H2),
        ErrorCode::ModelMismatch,
    );
    let sub = answer_as(&l, "a", H1);
    assert!(send(&mut conn, 2, &t, sub).0.expect("pinned").finalized);
}

fn policies_out_of_bounds_are_refused_and_store_nothing(conn: TestStore) {
    let before = dump(&conn);
    let bad = [
        NewTask {
            min_quorum: Some(4),
            ..NewTask::text("x")
        },
        NewTask {
            max_answers: Some(2),
            ..NewTask::text("x")
        },
        NewTask {
            policy: Some(Policy::Majority),
            min_quorum: Some(2),
            ..NewTask::text("x")
        },
        NewTask {
            distinct_models: Some(true),
            model_hash: Some(H1.into()),
            ..NewTask::text("x")
        },
        NewTask {
            policy: Some(Policy::Quorum),
            ..NewTask::generated(TaskType::generate(), "x")
        },
        NewTask {
            model_hash: Some("not-a-hash".into()),
            ..NewTask::text("x")
        },
    ];
    for task in bad {
        let req = protocol::messages::TaskAddRequest {
            batch_id: None,
            tasks: vec![NewTask::text("fine"), task.clone()],
        };
        let e = task_add::run(&*conn.tx(), &mut ctx(0), req).expect_err("refused");
        assert!(
            matches!(
                e.code(),
                ErrorCode::InvalidArgument | ErrorCode::UnknownModel
            ),
            "{task:?}: {e}"
        );
        assert_eq!(dump(&conn), before, "{task:?} stored something");
    }
}

/// Cancels `ids` in autocommit mode, so a refusal that wrote anything before refusing shows.
fn cancel_ids(conn: &mut TestStore, ids: Vec<TaskId>) -> Result<Vec<Effect>, CoreError> {
    let mut c = ctx(5);
    cancel::cancel(&*conn.tx(), &mut c, TaskIdsRequest { task_ids: ids })?;
    Ok(c.effects)
}

fn a_cancelled_task_closes_its_leases_and_refuses_late_answers(mut conn: TestStore) {
    let done = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(1),
            ..NewTask::text("y")
        },
    );
    let t = add(&mut conn, 0, NewTask::text("x"));
    let ld = take(&mut conn, 1, "d").remove(0);
    assert_eq!(ld.task_id, done);
    let la = take(&mut conn, 1, "a").remove(0);
    send(&mut conn, 2, &done, answer(&ld, "d", "positive", 0.9))
        .0
        .expect("d");

    // All or none: an unknown or finished task in the list cancels nothing.
    let before = dump(&conn);
    let e = cancel_ids(&mut conn, vec![t, TaskId::new()]).expect_err("unknown");
    assert_eq!(e.code(), ErrorCode::NotFound);
    let e = cancel_ids(&mut conn, vec![t, done]).expect_err("finished");
    assert_eq!(e.code(), ErrorCode::TaskClosed);
    assert_eq!(dump(&conn), before);

    let fx = cancel_ids(&mut conn, vec![t]).expect("cancel");
    assert!(fx.iter().any(|e| matches!(e,
        Effect::Finished(ev) if ev.status == TaskStatus::Cancelled)));
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(
        (task.status, task.active_leases),
        (TaskStatus::Cancelled, 0)
    );
    // The holder learns it on its next heartbeat, and its answer is refused.
    let hb = Heartbeat {
        worker_id: wid("a"),
        capabilities: vec![TaskType::sentiment()],
        model: None,
        model_hash: None,
        leases: Some(vec![la.lease_id]),
    };
    let r = conn
        .write(|tx| heartbeat::run(tx, &mut ctx(6), &wid("a"), hb))
        .expect("heartbeat");
    assert_eq!((r.renewed, r.closed), (0, vec![la.lease_id]));
    let e = send(&mut conn, 7, &t, answer(&la, "a", "positive", 0.9))
        .0
        .expect_err("late");
    assert_eq!(e.code(), ErrorCode::TaskClosed);
    assert!(
        take(&mut conn, 8, "b").is_empty(),
        "a cancelled task is leased"
    );
    let e = cancel_ids(&mut conn, vec![t]).expect_err("twice");
    assert_eq!(e.code(), ErrorCode::TaskClosed);
}

fn gold_settings(rate: f64) -> Settings {
    Settings {
        gold_rate: rate,
        gold_min_answers: 4,
        gold_min_accuracy: 0.5,
        ..settings()
    }
}

fn add_gold(
    conn: &mut TestStore,
    items: Vec<GoldItem>,
) -> Result<protocol::policy::GoldAddReply, CoreError> {
    // In autocommit mode, so a refusal that wrote anything before refusing would show.
    gold::add(&*conn.tx(), &mut ctx(0), GoldAddRequest { items })
}

fn lease_with(
    conn: &mut TestStore,
    now: i64,
    s: Settings,
    worker: &str,
    max: u32,
) -> Vec<protocol::messages::Lease> {
    lease_req_with(conn, now, s, lease_req(worker, max))
}

fn lease_req_with(
    conn: &mut TestStore,
    now: i64,
    s: Settings,
    req: LeaseRequest,
) -> Vec<protocol::messages::Lease> {
    conn.write(|tx| lease::run(tx, &mut Ctx::new(now, s), req))
        .expect("lease")
        .leases
}

fn submit_with(
    conn: &mut TestStore,
    now: i64,
    s: Settings,
    l: &protocol::messages::Lease,
    worker: &str,
    label: &str,
) {
    conn.write(|tx| {
        submit::run(
            tx,
            &mut Ctx::new(now, s),
            &l.task_id,
            answer(l, worker, label, 0.9),
        )
    })
    .expect("submit");
}

fn gold_score(conn: &dyn Tx, worker: &str) -> (u32, u32) {
    let s = conn.score(&wid(worker)).expect("score");
    (s.gold_answered as u32, s.gold_right as u32)
}

fn gold_files_are_checked_whole_and_stored_once(mut conn: TestStore) {
    let good = vec![
        GoldItem::sentiment("great", true),
        GoldItem::sentiment("awful", false),
    ];
    let r = add_gold(&mut conn, good.clone()).expect("add");
    assert_eq!((r.added, r.already_known, r.total), (2, 0, 2));
    let r = add_gold(&mut conn, good).expect("again");
    assert_eq!((r.added, r.already_known, r.total), (0, 2, 2));
    let before = dump(&conn);
    let bad = GoldItem {
        answer: "neutral".into(),
        ..GoldItem::sentiment("meh", true)
    };
    let e = add_gold(&mut conn, vec![GoldItem::sentiment("fine", true), bad]).expect_err("label");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.to_string().contains("item 1"), "{e}");
    let emb = GoldItem {
        task_type: Some(TaskType::embedding()),
        ..GoldItem::sentiment("x", true)
    };
    assert!(add_gold(&mut conn, vec![emb]).is_err());
    assert_eq!(dump(&conn), before);
}

fn gold_is_checked_never_voted_and_quarantines_a_wrong_worker_until_it_recovers(
    mut conn: TestStore,
) {
    let items: Vec<GoldItem> = (0..12)
        .map(|i| GoldItem::sentiment(format!("gold {i}"), true))
        .collect();
    add_gold(&mut conn, items).expect("gold");
    for i in 0..10 {
        add(&mut conn, 0, NewTask::text(format!("real {i}")));
    }
    // Every slot gold: the lease looks like any other (a fresh task id, the item's text).
    let all_gold = gold_settings(1.0);
    let l = lease_with(&mut conn, 1, all_gold, "liar", 1).remove(0);
    assert!(l.text.starts_with("gold") && l.verify.is_none());
    let r = conn
        .write(|tx| {
            submit::run(
                tx,
                &mut Ctx::new(2, all_gold),
                &l.task_id,
                answer(&l, "liar", "negative", 0.9),
            )
        })
        .expect("gold answer");
    assert!(
        !r.finalized && r.final_label.is_none(),
        "the known answer is not told"
    );
    assert_eq!(gold_score(&*conn.tx(), "liar"), (1, 0));
    assert_eq!(points(&conn, "liar"), 0, "gold earns no point");
    let answers = conn.tx().submissions_of(&l.task_id).expect("answers");
    assert!(
        answers.iter().all(|a| a.agreed.is_none()),
        "gold is never voted"
    );
    for now in 3..6 {
        let l = lease_with(&mut conn, now, all_gold, "liar", 1).remove(0);
        submit_with(&mut conn, now, all_gold, &l, "liar", "negative");
    }
    // Four wrong gold answers: quarantined. Even with no gold mixed in it gets only gold.
    let q = gold::quarantine(&*conn.tx(), &wid("liar"))
        .expect("read")
        .expect("quarantined");
    assert!(q.contains("0 of its last 4"), "{q}");
    let no_gold = gold_settings(0.0);
    for l in lease_with(&mut conn, 7, no_gold, "liar", 4) {
        assert!(
            l.text.starts_with("gold"),
            "a quarantined worker got {:?}",
            l.text
        );
        submit_with(&mut conn, 8, no_gold, &l, "liar", "positive");
    }
    // Four right answers bring it to 4 of 8: back above the bar, real work again.
    assert_eq!(gold_score(&*conn.tx(), "liar"), (8, 4));
    // What it answered while quarantined did not teach its model's calibration (answers that
    // name no model count under the empty name).
    let cal = conn
        .tx()
        .calibrations(&TaskType::sentiment())
        .expect("calibrations")
        .remove("")
        .expect("the model's calibration");
    assert_eq!((cal.total().answered, cal.total().correct), (4, 0));
    assert_eq!(
        cal.confusions().collect::<Vec<_>>(),
        [("negative", "positive", 4)]
    );
    assert!(gold::quarantine(&*conn.tx(), &wid("liar"))
        .expect("read")
        .is_none());
    let l = lease_with(&mut conn, 9, no_gold, "liar", 1).remove(0);
    assert!(l.text.starts_with("real"));
    // Gold tasks stay out of lists and counts.
    let list = task_list::run(&*conn.tx(), &Default::default()).expect("list");
    assert!(list.tasks.iter().all(|t| t.text.starts_with("real")));
}

fn generative_gold_is_checked_on_its_text(mut conn: TestStore) {
    use protocol::generation::{GeneratedAnswer, SMOLLM2_HASH};
    let item = GoldItem {
        task_type: Some(TaskType::generate()),
        max_new_tokens: Some(3),
        answer: "one two three".into(),
        ..GoldItem::sentiment("Count to three in words.", true)
    };
    add_gold(&mut conn, vec![item]).expect("gold");
    add(
        &mut conn,
        0,
        NewTask {
            max_new_tokens: Some(3),
            ..NewTask::generated(TaskType::generate(), "a real task")
        },
    );
    let s = gold_settings(1.0);
    for (worker, ids, text, right) in [
        ("g1", [10u32, 11, 12], " one two three ", 1),
        ("g2", [10, 11, 13], "one two four", 0),
    ] {
        let req = LeaseRequest {
            capabilities: vec![TaskType::generate()],
            model_hash: Some(SMOLLM2_HASH.into()),
            ..lease_req(worker, 1)
        };
        let l = lease_req_with(&mut conn, 1, s, req).remove(0);
        assert!(
            l.text.starts_with("Count") && l.generation.is_some(),
            "{l:?}"
        );
        let sub = SubmitRequest {
            generation: Some(GeneratedAnswer {
                token_ends: Vec::new(),
                token_ids: ids.to_vec(),
                text: text.into(),
                logprobs: vec![-0.1; 3],
                truncated: false,
            }),
            model_hash: Some(SMOLLM2_HASH.into()),
            ..answer(&l, worker, "", 0.9)
        };
        conn.write(|tx| submit::run(tx, &mut Ctx::new(2, s), &l.task_id, sub))
            .expect("gold answer");
        assert_eq!(gold_score(&*conn.tx(), worker), (1, right), "{worker}");
    }
}

crate::ops::testing::on_both_engines!(
    a_split_is_inconclusive_until_one_more_replica_makes_a_quorum,
    no_quorum_by_max_answers_fails_and_a_retry_collects_more,
    the_majority_policy_keeps_the_original_tiebreak,
    distinct_models_count_one_answer_per_model_content,
    a_label_task_can_pin_model_content,
    policies_out_of_bounds_are_refused_and_store_nothing,
    a_cancelled_task_closes_its_leases_and_refuses_late_answers,
    gold_files_are_checked_whole_and_stored_once,
    gold_is_checked_never_voted_and_quarantines_a_wrong_worker_until_it_recovers,
    generative_gold_is_checked_on_its_text,
);
