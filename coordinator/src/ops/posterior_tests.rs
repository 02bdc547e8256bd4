//! The posterior policy over the operations, on both engines: calibrated answers decide, an
//! answer short of the threshold asks for another, a trusted worker's lone answer decides (and a
//! spot check does not let it), a trusted worker caught wrong loses its record and its lone
//! decisions are replicated again.

use super::testing::*;
use super::*;
use crate::store::tx::{GoldAnswer, GoldInsert};
use protocol::messages::{NewTask, SubmitRequest};
use protocol::policy::Policy;
use protocol::TaskStatus;

/// A model content's hash, made of one repeated hex digit.
fn hash(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

/// A `sentiment` task under the posterior policy.
fn posterior(required: u32, threshold: f64) -> NewTask {
    NewTask {
        required_submissions: Some(required),
        policy: Some(Policy::Posterior),
        threshold: Some(threshold),
        ..NewTask::text("x")
    }
}

/// A label answer on `lease` from model content `model`.
fn from_model(
    lease: &protocol::messages::Lease,
    worker: &str,
    label: &str,
    confidence: f64,
    model: &str,
) -> SubmitRequest {
    SubmitRequest {
        model_hash: Some(model.to_owned()),
        ..answer(lease, worker, label, confidence)
    }
}

/// Model content `model` answered `right` of `right + wrong` gold items right, at `confidence`.
fn calibrate(conn: &mut TestStore, model: &str, confidence: f64, right: u32, wrong: u32) {
    conn.write(|tx| {
        for i in 0..right + wrong {
            let label = if i < right { "positive" } else { "negative" };
            tx.record_calibration(model, &TaskType::sentiment(), label, "positive", confidence)?;
        }
        Ok::<_, crate::store::sql::Error>(())
    })
    .expect("calibration");
}

/// `worker` answered `right` gold items right in a row, at time `at`.
fn gold_record(conn: &mut TestStore, worker: &str, right: u32, at: i64) {
    conn.write(|tx| {
        let text = format!("gold for {worker} at {at}");
        tx.insert_gold(
            &[GoldInsert {
                task_type: &TaskType::sentiment(),
                text: &text,
                labels: None,
                generation: None,
                answer: "positive",
            }],
            at,
        )?;
        let (_, gold) = tx.gold_ids()?.expect("an item");
        let w = wid(worker);
        for _ in 0..right {
            let task = TaskId::new();
            tx.record_gold_answer(
                &GoldAnswer {
                    gold,
                    task: &task,
                    worker: &w,
                    task_type: &TaskType::sentiment(),
                    model: None,
                    model_hash: None,
                    answer: "positive",
                    correct: true,
                },
                at,
            )?;
        }
        Ok::<_, crate::store::sql::Error>(())
    })
    .expect("gold record");
}

/// Model content `model`'s confusion counts for `task_type` as the store keeps them:
/// `(answered, truth, answers)`.
fn confusions(conn: &TestStore, task_type: &TaskType, model: &str) -> Vec<(String, String, u64)> {
    conn.tx()
        .calibrations(task_type)
        .expect("calibrations")
        .get(model)
        .map(|c| {
            c.confusions()
                .map(|(a, t, n)| (a.to_owned(), t.to_owned(), n))
                .collect()
        })
        .unwrap_or_default()
}

fn weights(conn: &TestStore, task: &TaskId) -> Vec<Option<f64>> {
    conn.tx()
        .submissions_of(task)
        .expect("submissions")
        .iter()
        .map(|s| s.weight)
        .collect()
}

fn calibrated_answers_outweigh_a_worse_majority(mut conn: TestStore) {
    let (good, poor) = (hash('a'), hash('b'));
    calibrate(&mut conn, &good, 0.95, 95, 5);
    calibrate(&mut conn, &poor, 0.95, 55, 45);
    let t = add(&mut conn, 0, posterior(3, 0.8));
    let leases: Vec<_> = ["g", "p1", "p2"]
        .iter()
        .map(|w| take(&mut conn, 1, w).remove(0))
        .collect();
    send(
        &mut conn,
        2,
        &t,
        from_model(&leases[1], "p1", "negative", 0.95, &poor),
    )
    .0
    .expect("p1");
    send(
        &mut conn,
        2,
        &t,
        from_model(&leases[2], "p2", "negative", 0.95, &poor),
    )
    .0
    .expect("p2");
    let (r, fx) = send(
        &mut conn,
        3,
        &t,
        from_model(&leases[0], "g", "positive", 0.95, &good),
    );
    let r = r.expect("g");
    assert_eq!(
        (r.finalized, r.final_label.as_deref()),
        (true, Some("positive")),
        "two answers of a model right 55% of the time lose to one right 95%"
    );
    let task = load_task(&*conn.tx(), &t).expect("task");
    let post = task.posterior.expect("a posterior");
    assert!(post >= 0.8 && task.final_confidence == Some(post), "{post}");
    let w = weights(&conn, &t);
    assert!(w.iter().all(Option::is_some), "{w:?}");
    assert!(w[2].expect("g") > w[0].expect("p1") * 2.0, "{w:?}");
    assert_eq!((points(&conn, "g"), points(&conn, "p1")), (1, 0));
    assert!(fx.iter().any(|e| matches!(e,
        Effect::Finished(ev) if ev.status == TaskStatus::Finalized
            && ev.answers == Some(3) && ev.posterior == Some(post))));
}

fn an_untrusted_lone_answer_asks_for_another(mut conn: TestStore) {
    let good = hash('a');
    calibrate(&mut conn, &good, 0.9, 85, 15);
    let t = add(&mut conn, 0, posterior(1, 0.9));
    // One answer from a worker with no record: not trusted, so it cannot decide alone.
    let la = take(&mut conn, 1, "a").remove(0);
    let (r, fx) = send(
        &mut conn,
        2,
        &t,
        from_model(&la, "a", "positive", 0.9, &good),
    );
    assert!(!r.expect("a").finalized);
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(
        (task.view_status(), task.required),
        (TaskStatus::Inconclusive, 2)
    );
    assert!(
        task.posterior.is_some(),
        "the posterior it reached is shown"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::Announce(_))));
    let lb = take(&mut conn, 3, "b").remove(0);
    let r = send(
        &mut conn,
        4,
        &t,
        from_model(&lb, "b", "positive", 0.9, &good),
    )
    .0
    .expect("b");
    assert_eq!(
        (r.finalized, r.final_label.as_deref()),
        (true, Some("positive"))
    );
    assert_eq!((points(&conn, "a"), points(&conn, "b")), (1, 1));
}

fn a_split_short_of_the_threshold_at_max_answers_fails(mut conn: TestStore) {
    let t = add(
        &mut conn,
        0,
        NewTask {
            max_answers: Some(2),
            ..posterior(2, 0.95)
        },
    );
    let la = take(&mut conn, 1, "a").remove(0);
    let lb = take(&mut conn, 1, "b").remove(0);
    send(&mut conn, 2, &t, answer(&la, "a", "positive", 0.9))
        .0
        .expect("a");
    send(&mut conn, 3, &t, answer(&lb, "b", "negative", 0.9))
        .0
        .expect("b");
    let task = load_task(&*conn.tx(), &t).expect("task");
    assert_eq!(
        (task.status, task.failure_reason),
        (TaskStatus::Failed, Some(FailureReason::NoConsensus))
    );
    assert!(task.posterior.is_some_and(|p| p < 0.95));
}

fn a_trusted_lone_answer_decides_and_a_caught_worker_is_replicated(mut conn: TestStore) {
    let good = hash('a');
    calibrate(&mut conn, &good, 0.97, 97, 3);
    // Two lone tasks: "t" has earned trust (five gold answers right: just enough), so each is
    // decided by its one answer; "u" has not, so its task asks for another.
    take(&mut conn, 1, "t");
    gold_record(&mut conn, "t", 5, 1);
    let lone: Vec<TaskId> = (0..2)
        .map(|_| add(&mut conn, 2, posterior(1, 0.9)))
        .collect();
    for (i, id) in lone.iter().enumerate() {
        let l = take(&mut conn, 3, "t").remove(0);
        assert_eq!(&l.task_id, id);
        let r = send(
            &mut conn,
            4 + i as i64,
            id,
            from_model(&l, "t", "positive", 0.97, &good),
        )
        .0
        .expect("t");
        assert!(
            r.finalized,
            "a trusted worker's confident lone answer decides"
        );
    }
    assert_eq!(points(&conn, "t"), 2);
    let other = add(&mut conn, 10, posterior(1, 0.9));
    let l = take(&mut conn, 11, "u").remove(0);
    assert_eq!(l.task_id, other);
    let r = send(
        &mut conn,
        12,
        &other,
        from_model(&l, "u", "positive", 0.97, &good),
    )
    .0
    .expect("u");
    assert!(
        !r.finalized,
        "an untrusted worker's lone answer does not decide"
    );

    // A replicated task where "t" is outvoted: one wrong answer takes it below the bound, so
    // it is caught. Its record starts over, its lone decisions open again for one more answer,
    // their points taken back.
    let checked = add(&mut conn, 20, posterior(3, 0.8));
    let mut leases = Vec::new();
    for w in ["t", "v", "w"] {
        let l = lease(&mut conn, 21, lease_req(w, 4)).leases;
        leases.push(
            l.into_iter()
                .find(|l| l.task_id == checked)
                .expect("the checked task"),
        );
    }
    send(
        &mut conn,
        22,
        &checked,
        from_model(&leases[0], "t", "negative", 0.97, &good),
    )
    .0
    .expect("t");
    send(
        &mut conn,
        23,
        &checked,
        from_model(&leases[1], "v", "positive", 0.97, &good),
    )
    .0
    .expect("v");
    let (r, fx) = send(
        &mut conn,
        24,
        &checked,
        from_model(&leases[2], "w", "positive", 0.97, &good),
    );
    assert_eq!(r.expect("w").final_label.as_deref(), Some("positive"));
    for id in &lone {
        let task = load_task(&*conn.tx(), id).expect("task");
        assert_eq!(
            (task.view_status(), task.required, task.final_label),
            (TaskStatus::Inconclusive, 2, None),
            "a lone decision of a caught worker is replicated"
        );
        assert!(fx.iter().any(|e| matches!(e,
            Effect::Finished(ev) if ev.task_id == *id && ev.status == TaskStatus::Inconclusive)));
    }
    assert_eq!(
        points(&conn, "t"),
        0,
        "the points of its lone decisions are taken back"
    );
    assert_eq!(
        conn.tx().gold_record(&wid("t")).expect("record").answered,
        0,
        "its record starts over"
    );
    // Another worker's answer decides a reopened task again.
    let l = lease(&mut conn, 30, lease_req("v", 4)).leases;
    let l = l
        .iter()
        .find(|l| l.task_id == lone[0])
        .expect("reopened task leased");
    let r = send(
        &mut conn,
        31,
        &lone[0],
        from_model(l, "v", "positive", 0.97, &good),
    )
    .0
    .expect("v");
    assert!(r.finalized);
}

/// Model content `a` calibrated right 97% of the time; worker "t" with `record` gold answers
/// right decides one lone task (at time 4). The model's hash and the task.
fn trusted_lone_decision(conn: &mut TestStore, record: u32) -> (String, TaskId) {
    let good = hash('a');
    calibrate(conn, &good, 0.97, 97, 3);
    take(conn, 1, "t");
    gold_record(conn, "t", record, 1);
    let lone = add(conn, 2, posterior(1, 0.9));
    let l = take(conn, 3, "t").remove(0);
    let r = send(conn, 4, &lone, from_model(&l, "t", "positive", 0.97, &good)).0;
    assert!(
        r.expect("t").finalized,
        "a trusted worker's lone answer decides"
    );
    (good, lone)
}

fn a_wrong_gold_answer_catches_a_trusted_worker(mut conn: TestStore) {
    let (good, lone) = trusted_lone_decision(&mut conn, 5);
    let item = protocol::policy::GoldItem::sentiment("a known positive", true);
    conn.write(|tx| {
        gold::add(
            tx,
            &mut ctx(5),
            protocol::policy::GoldAddRequest { items: vec![item] },
        )
    })
    .expect("gold");
    // Gold rides along in place of a real task the walk finds.
    add(&mut conn, 5, NewTask::text("open"));
    let all_gold = Settings {
        gold_rate: 1.0,
        ..settings()
    };
    let g = conn
        .write(|tx| lease::run(tx, &mut Ctx::new(6, all_gold), lease_req("t", 1)))
        .expect("lease")
        .leases
        .remove(0);
    let (r, fx) = send(
        &mut conn,
        7,
        &g.task_id,
        from_model(&g, "t", "negative", 0.97, &good),
    );
    r.expect("a gold answer");
    assert_eq!(
        confusions(&conn, &TaskType::sentiment(), &good),
        [("negative".into(), "positive".into(), 4)],
        "the wrong gold answer joins the calibration's three in the model's confusion row"
    );
    let task = load_task(&*conn.tx(), &lone).expect("task");
    assert_eq!(
        task.view_status(),
        TaskStatus::Inconclusive,
        "caught by gold: its lone decision is replicated"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert_eq!(points(&conn, "t"), 0);
}

/// Model content `model` answered `answered` on zero-shot gold whose truths were `truths`
/// (label, how many), at confidence 0.9.
fn calibrate_zero_shot(conn: &mut TestStore, model: &str, answered: &str, truths: &[(&str, u32)]) {
    conn.write(|tx| {
        for (truth, n) in truths {
            for _ in 0..*n {
                tx.record_calibration(model, &TaskType::zero_shot(), answered, truth, 0.9)?;
            }
        }
        Ok::<_, crate::store::sql::Error>(())
    })
    .expect("calibration");
}

fn a_models_confusion_row_sends_its_wrong_answers_where_its_errors_go(mut conn: TestStore) {
    // Model m says `c` right 30 times in 50 on gold; its 20 errors were all `b` items. Models
    // p and q are as often right with `a` and `b`, their errors spread evenly.
    let (m, p, q) = (hash('c'), hash('d'), hash('e'));
    calibrate_zero_shot(&mut conn, &m, "c", &[("c", 30), ("b", 20)]);
    calibrate_zero_shot(&mut conn, &p, "a", &[("a", 30), ("b", 10), ("c", 10)]);
    calibrate_zero_shot(&mut conn, &q, "b", &[("b", 30), ("a", 10), ("c", 10)]);
    assert_eq!(
        confusions(&conn, &TaskType::zero_shot(), &m),
        [("c".into(), "b".into(), 20)],
        "the store keeps the confusion row"
    );
    let t = add(
        &mut conn,
        0,
        NewTask {
            required_submissions: Some(3),
            policy: Some(Policy::Posterior),
            threshold: Some(0.6),
            ..NewTask::zero_shot("x", &["a", "b", "c"])
        },
    );
    let take_zs = |conn: &mut TestStore, worker: &str| {
        let req = protocol::messages::LeaseRequest {
            capabilities: vec![TaskType::zero_shot()],
            ..lease_req(worker, 1)
        };
        lease(conn, 1, req).leases.remove(0)
    };
    let leases: Vec<_> = ["wm", "wp", "wq"]
        .iter()
        .map(|w| take_zs(&mut conn, w))
        .collect();
    for (i, (worker, label, model)) in [("wm", "c", &m), ("wp", "a", &p)].iter().enumerate() {
        send(
            &mut conn,
            2,
            &t,
            from_model(&leases[i], worker, label, 0.9, model),
        )
        .0
        .expect("an answer");
    }
    // Evenly spread, `a`, `b` and `c` would tie at a third each and nothing would be decided;
    // m's `c` says `b` when it is wrong, so `b` wins.
    let r = send(&mut conn, 3, &t, from_model(&leases[2], "wq", "b", 0.9, &q))
        .0
        .expect("wq");
    assert_eq!(
        (r.finalized, r.final_label.as_deref()),
        (true, Some("b")),
        "m's confusion row moves its wrong mass to b"
    );
    let post = load_task(&*conn.tx(), &t)
        .expect("task")
        .posterior
        .expect("a posterior");
    assert!((0.6..0.8).contains(&post), "{post}");
}

fn a_worker_well_above_the_bound_is_not_caught_by_one_error(mut conn: TestStore) {
    let (good, lone) = trusted_lone_decision(&mut conn, 20);
    let checked = add(&mut conn, 5, posterior(3, 0.8));
    for (w, label) in [("t", "negative"), ("v", "positive"), ("w", "positive")] {
        let l = lease(&mut conn, 6, lease_req(w, 4)).leases;
        let l = l
            .iter()
            .find(|l| l.task_id == checked)
            .expect("checked task");
        send(&mut conn, 7, &checked, from_model(l, w, label, 0.97, &good))
            .0
            .expect(w);
    }
    let task = load_task(&*conn.tx(), &lone).expect("task");
    assert_eq!(
        task.status,
        TaskStatus::Finalized,
        "one error of a long clean record"
    );
    assert_eq!(
        conn.tx().gold_record(&wid("t")).expect("record").answered,
        20
    );
}

fn a_spot_check_sends_a_trusted_lone_answer_to_another_replica(mut conn: TestStore) {
    let good = hash('a');
    calibrate(&mut conn, &good, 0.97, 97, 3);
    take(&mut conn, 1, "t");
    gold_record(&mut conn, "t", 10, 1);
    let t = add(&mut conn, 2, posterior(1, 0.9));
    let l = take(&mut conn, 3, "t").remove(0);
    let mut c = Ctx::new(
        4,
        Settings {
            spot_check_rate: 1.0,
            ..settings()
        },
    );
    let r = submit::run(
        &*conn.tx(),
        &mut c,
        &t,
        from_model(&l, "t", "positive", 0.97, &good),
    )
    .expect("t");
    assert!(!r.finalized, "every lone answer is checked at rate 1");
    assert_eq!(
        load_task(&*conn.tx(), &t).expect("task").view_status(),
        TaskStatus::Inconclusive
    );
}

fn posterior_is_for_label_tasks_and_bounds_are_refused(mut conn: TestStore) {
    let before = dump(&conn);
    for bad in [
        NewTask {
            policy: Some(Policy::Posterior),
            ..NewTask::embedding("x")
        },
        posterior(3, 1.0),
        NewTask {
            min_quorum: Some(2),
            ..posterior(3, 0.9)
        },
        NewTask {
            threshold: Some(0.9),
            ..NewTask::text("quorum takes none")
        },
    ] {
        let e = conn
            .write(|tx| {
                task_add::run(
                    tx,
                    &mut ctx(0),
                    protocol::messages::TaskAddRequest {
                        tasks: vec![bad.clone()],
                        batch_id: None,
                    },
                )
            })
            .expect_err("refused");
        assert_eq!(e.code(), protocol::ErrorCode::InvalidArgument, "{bad:?}");
    }
    assert_eq!(dump(&conn), before);
}

/// With `strong_first_ms`, the first answer of a fresh posterior task waits for a worker of the
/// strongest live model: a weaker model's worker gets nothing until the wait is over, unless the
/// strong worker is gone; quorum tasks, and tasks someone has started, do not wait.
fn the_first_answer_waits_for_the_strongest_live_model(mut conn: TestStore) {
    let (strong, weak) = (hash('a'), hash('b'));
    calibrate(&mut conn, &strong, 0.9, 90, 10);
    calibrate(&mut conn, &weak, 0.9, 60, 40);
    let waiting = Settings {
        strong_first_ms: 5_000,
        ..settings()
    };
    let ask = |conn: &mut TestStore, now: i64, worker: &str, model: &str| -> Vec<TaskId> {
        let req = protocol::messages::LeaseRequest {
            model_hash: Some(model.to_owned()),
            ..lease_req(worker, 4)
        };
        conn.write(|tx| lease::run(tx, &mut Ctx::new(now, waiting), req))
            .expect("lease")
            .leases
            .iter()
            .map(|l| l.task_id)
            .collect()
    };
    assert!(
        ask(&mut conn, 0, "s", &strong).is_empty(),
        "the strong worker is live"
    );
    let first = add(&mut conn, 1, posterior(1, 0.8));
    assert!(
        ask(&mut conn, 2, "w", &weak).is_empty(),
        "fresh: left to the strong"
    );
    assert_eq!(ask(&mut conn, 3, "s", &strong), [first]);
    // Nobody strong takes the next one: once the wait is over, the weak worker does.
    let second = add(&mut conn, 10, posterior(1, 0.8));
    assert!(ask(&mut conn, 4_000, "w", &weak).is_empty());
    assert_eq!(ask(&mut conn, 5_010, "w", &weak), [second]);
    // A quorum task does not wait; nor does a posterior task someone has started.
    let quorum = add(&mut conn, 5_020, NewTask::text("q"));
    let started = add(&mut conn, 5_020, posterior(3, 0.8));
    assert_eq!(ask(&mut conn, 5_030, "s", &strong), [quorum, started]);
    assert_eq!(ask(&mut conn, 5_040, "w", &weak), [quorum, started]);
    // The strong worker quarantined (it gets only gold): nobody waits for it.
    let quarantine = |conn: &mut TestStore, why: Option<&str>| {
        conn.write(|tx| tx.set_quarantine(&wid("s"), why))
            .expect("quarantine");
    };
    quarantine(&mut conn, Some("gold accuracy too low"));
    let meanwhile = add(&mut conn, 5_050, posterior(1, 0.8));
    assert_eq!(ask(&mut conn, 5_060, "w", &weak), [meanwhile]);
    quarantine(&mut conn, None);
    let again = add(&mut conn, 5_070, posterior(1, 0.8));
    assert!(
        ask(&mut conn, 5_080, "w", &weak).is_empty(),
        "out of quarantine, it is waited for again"
    );
    assert_eq!(ask(&mut conn, 5_090, "s", &strong), [again]);
    // The strong worker gone (silent past the heartbeat TTL): no waiting.
    let alone = add(&mut conn, 20_000, posterior(1, 0.8));
    assert_eq!(ask(&mut conn, 20_001, "w", &weak), [alone]);
}

crate::ops::testing::on_both_engines!(
    the_first_answer_waits_for_the_strongest_live_model,
    calibrated_answers_outweigh_a_worse_majority,
    an_untrusted_lone_answer_asks_for_another,
    a_split_short_of_the_threshold_at_max_answers_fails,
    a_trusted_lone_answer_decides_and_a_caught_worker_is_replicated,
    a_wrong_gold_answer_catches_a_trusted_worker,
    a_worker_well_above_the_bound_is_not_caught_by_one_error,
    a_spot_check_sends_a_trusted_lone_answer_to_another_replica,
    posterior_is_for_label_tasks_and_bounds_are_refused,
    a_models_confusion_row_sends_its_wrong_answers_where_its_errors_go,
);
