//! Starved tasks: open tasks that cannot finish with the workers alive now, because fewer live
//! workers that can do their type have not yet answered them than the distinct answers they
//! still need. Nothing is wrong with such a task (a worker may join), but a client waiting on
//! it should hear why, at once, instead of at its timeout.
//!
//! A task of type `t` needing `required` answers is starved when
//! `required - submissions > |live(t) \ voters|`. Since at most `submissions` of `live(t)` have
//! voted, that implies `required > |live(t)|`: the summary reads only the tasks that need more
//! workers than are live (index `task_open_required`), and nothing at all for a type whose
//! largest `required` its live workers cover.

use crate::error::CoreError;
use crate::store::rows::TaskRow;
use crate::store::tx::Tx;
use protocol::messages::{Starvation, StarvedType};
use protocol::{TaskId, TaskType, WorkerId};
use std::collections::{BTreeMap, BTreeSet};

/// What a task is routed by: its type and, for a generative type, the model content it pins.
type Route = (TaskType, Option<String>);

/// The live workers (heartbeating within the TTL, not quarantined: a quarantined worker gets
/// only gold) able to do each task type; for generative types, each model content they serve (a
/// worker serving none can do no generative task).
#[derive(Debug, Default)]
pub(crate) struct Live(BTreeMap<Route, BTreeSet<WorkerId>>);

impl Live {
    /// Reads the live workers at `now`.
    pub(crate) fn read(tx: &dyn Tx, now: i64, heartbeat_ttl_ms: i64) -> Result<Self, CoreError> {
        let mut live = Self::default();
        for w in tx.live_workers(now - heartbeat_ttl_ms)? {
            if w.quarantined {
                continue;
            }
            for t in w.capabilities {
                let hash = match (t.is_generative(), &w.model_hash) {
                    (false, _) => None,
                    (true, Some(h)) => Some(h.clone()),
                    (true, None) => continue,
                };
                live.0.entry((t, hash)).or_default().insert(w.id.clone());
            }
        }
        Ok(live)
    }

    fn capable(&self, t: &TaskType, hash: Option<&str>) -> Option<&BTreeSet<WorkerId>> {
        self.0.get(&(t.clone(), hash.map(str::to_owned)))
    }

    fn count(&self, t: &TaskType, hash: Option<&str>) -> u32 {
        self.capable(t, hash).map_or(0, |w| w.len() as u32)
    }

    /// Whether a task of type `t` needing `required` answers, with `submissions` in, is
    /// starved. Reads its voters only when it has some.
    fn check(
        &self,
        tx: &dyn Tx,
        task: &TaskId,
        (t, hash): (&TaskType, Option<&str>),
        required: u32,
        submissions: u32,
    ) -> Result<Option<Starvation>, CoreError> {
        let needs = required.saturating_sub(submissions);
        let mut capable = self.count(t, hash);
        // At most `submissions` of the live workers have answered: enough remain.
        if capable >= required {
            return Ok(None);
        }
        if submissions > 0 {
            if let Some(live) = self.capable(t, hash) {
                for voter in tx.voters(task)? {
                    capable -= u32::from(live.contains(&voter));
                }
            }
        }
        Ok((capable < needs).then_some(Starvation { needs, capable }))
    }
}

/// Whether `task` is starved now; `None` for a task that is closed or can finish.
///
/// # Errors
/// Store errors only.
pub(crate) fn of_task(
    tx: &dyn Tx,
    live: &Live,
    task: &TaskRow,
) -> Result<Option<Starvation>, CoreError> {
    if task.status.is_terminal() {
        return Ok(None);
    }
    live.check(
        tx,
        &task.id,
        (
            &task.task_type,
            task.generation.as_ref().map(|g| g.model_hash.as_str()),
        ),
        task.required,
        task.submissions,
    )
}

/// The starved tasks, by type. Types whose largest `required` the live workers cover cost one
/// index seek; for the others one SQL count runs over the tasks that need more workers than are
/// live, reading a task's voters only when it has some.
///
/// # Errors
/// Store errors only.
pub(crate) fn summary(tx: &dyn Tx, live: &Live) -> Result<Vec<StarvedType>, CoreError> {
    let mut out = Vec::new();
    let mut after = String::new();
    while let Some(t) = tx.next_open_type(&after)? {
        after = t.as_str().to_owned();
        let routes: Vec<Option<String>> = if t.is_generative() {
            tx.open_hashes(&t)?
        } else {
            vec![None]
        };
        for hash in routes {
            let live_workers = live.count(&t, hash.as_deref());
            let required = tx.most_required(&t, hash.as_deref())?;
            if required <= live_workers {
                continue;
            }
            let capable: Vec<&str> = live
                .capable(&t, hash.as_deref())
                .map(|w| w.iter().map(WorkerId::as_str).collect())
                .unwrap_or_default();
            let tasks = tx.count_starved(&t, hash.as_deref(), &capable)?;
            if tasks > 0 {
                out.push(StarvedType {
                    task_type: t.clone(),
                    model_hash: hash,
                    tasks,
                    live_workers,
                    workers_short: required - live_workers,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::submit;
    use crate::ops::task::load_task;
    use crate::ops::testing::*;
    use protocol::messages::{NewTask, SubmitRequest};

    fn register(conn: &dyn Tx, now: i64, worker: &str, caps: &[TaskType]) {
        conn.touch_worker(now, &wid(worker), caps, Some("test"), None)
            .expect("register");
    }

    fn starved(conn: &dyn Tx, now: i64, t: &protocol::TaskId) -> Option<Starvation> {
        let live = Live::read(conn, now, settings().heartbeat_ttl_ms).expect("live");
        of_task(conn, &live, &load_task(conn, t).expect("task")).expect("check")
    }

    fn summary_at(conn: &dyn Tx, now: i64) -> Vec<StarvedType> {
        let live = Live::read(conn, now, settings().heartbeat_ttl_ms).expect("live");
        summary(conn, &live).expect("summary")
    }

    fn a_task_needing_more_workers_than_can_do_it_is_starved_until_they_come(mut conn: TestStore) {
        let zs = add(
            &mut conn,
            0,
            NewTask::zero_shot("The striker scored twice", &["sports", "politics"]),
        );
        let s = add(&mut conn, 0, NewTask::text("fine"));
        // No worker at all: both starved.
        assert_eq!(
            starved(&*conn.tx(), 1, &zs),
            Some(Starvation {
                needs: 3,
                capable: 0
            })
        );
        register(
            &*conn.tx(),
            1,
            "a",
            &[TaskType::sentiment(), TaskType::zero_shot()],
        );
        for w in ["b", "c"] {
            register(&*conn.tx(), 1, w, &[TaskType::sentiment()]);
        }
        // Sentiment has three live workers; zero-shot one.
        assert_eq!(starved(&*conn.tx(), 2, &s), None);
        assert_eq!(starved(&*conn.tx(), 2, &zs).expect("starved").short(), 2);
        assert_eq!(
            summary_at(&*conn.tx(), 2),
            vec![StarvedType {
                model_hash: None,
                task_type: TaskType::zero_shot(),
                tasks: 1,
                live_workers: 1,
                workers_short: 2
            }]
        );
        // Two more zero-shot workers join: nothing is starved.
        for w in ["d", "e"] {
            register(&*conn.tx(), 3, w, &[TaskType::zero_shot()]);
        }
        assert_eq!(starved(&*conn.tx(), 3, &zs), None);
        assert!(summary_at(&*conn.tx(), 3).is_empty());
        // A quarantined worker gets only gold: it cannot answer the task.
        conn.tx()
            .set_quarantine(&wid("e"), Some("gold accuracy too low"))
            .expect("quarantine");
        assert_eq!(starved(&*conn.tx(), 3, &zs).expect("starved").short(), 1);
        conn.tx().set_quarantine(&wid("e"), None).expect("lifted");
        assert_eq!(starved(&*conn.tx(), 3, &zs), None);
        // Past the TTL, the silent ones no longer count.
        let later = 3 + settings().heartbeat_ttl_ms;
        register(
            &*conn.tx(),
            later,
            "a",
            &[TaskType::sentiment(), TaskType::zero_shot()],
        );
        assert_eq!(
            summary_at(&*conn.tx(), later).len(),
            2,
            "{:?}",
            summary_at(&*conn.tx(), later)
        );
    }

    fn a_live_worker_that_already_answered_does_not_count_a_gone_one_does(mut conn: TestStore) {
        let t = add(&mut conn, 0, NewTask::text("x"));
        for w in ["a", "b", "c"] {
            register(&*conn.tx(), 0, w, &[TaskType::sentiment()]);
        }
        let la = lease(&mut conn, 1, lease_req("a", 1)).leases.remove(0);
        submit::run(
            &*conn.tx(),
            &mut ctx(2),
            &t,
            SubmitRequest {
                input_tokens: None,
                lease_id: la.lease_id,
                worker_id: wid("a"),
                label: "positive".into(),
                embedding: None,
                confidence: 0.9,
                model: None,
                generation: None,
                verification: None,
                model_hash: None,
            },
        )
        .expect("submit");
        assert_eq!(
            starved(&*conn.tx(), 2, &t),
            None,
            "b and c can still answer"
        );
        // c goes silent: a has answered already, b alone is left for two answers.
        let later = 2 + settings().heartbeat_ttl_ms;
        register(&*conn.tx(), later, "a", &[TaskType::sentiment()]);
        register(&*conn.tx(), later, "b", &[TaskType::sentiment()]);
        assert_eq!(
            starved(&*conn.tx(), later, &t),
            Some(Starvation {
                needs: 2,
                capable: 1
            })
        );
        assert_eq!(
            summary_at(&*conn.tx(), later),
            vec![StarvedType {
                model_hash: None,
                task_type: TaskType::sentiment(),
                tasks: 1,
                live_workers: 2,
                workers_short: 1
            }]
        );
        // a's answer counts even when a is gone: a fresh worker is enough.
        let much_later = later + settings().heartbeat_ttl_ms;
        register(&*conn.tx(), much_later, "b", &[TaskType::sentiment()]);
        register(&*conn.tx(), much_later, "d", &[TaskType::sentiment()]);
        assert_eq!(starved(&*conn.tx(), much_later, &t), None);
        assert!(summary_at(&*conn.tx(), much_later).is_empty());
    }

    fn a_generative_task_counts_only_workers_serving_its_model_content(mut conn: TestStore) {
        let hash = protocol::generation::SMOLLM2_HASH;
        let t = add(
            &mut conn,
            0,
            NewTask {
                required_submissions: Some(2),
                ..NewTask::generated(TaskType::generate(), "Name a colour.")
            },
        );
        let generative = [TaskType::generate()];
        conn.tx()
            .touch_worker(1, &wid("right"), &generative, None, Some(hash))
            .expect("register");
        let other = "0".repeat(64);
        conn.tx()
            .touch_worker(1, &wid("other"), &generative, None, Some(&other))
            .expect("register");
        conn.tx()
            .touch_worker(1, &wid("none"), &generative, None, None)
            .expect("register");
        assert_eq!(
            starved(&*conn.tx(), 2, &t),
            Some(Starvation {
                needs: 2,
                capable: 1
            })
        );
        assert_eq!(
            summary_at(&*conn.tx(), 2),
            vec![StarvedType {
                task_type: TaskType::generate(),
                model_hash: Some(hash.to_owned()),
                tasks: 1,
                live_workers: 1,
                workers_short: 1,
            }]
        );
        conn.tx()
            .touch_worker(3, &wid("other"), &generative, None, Some(hash))
            .expect("switch");
        assert_eq!(starved(&*conn.tx(), 4, &t), None);
        assert!(summary_at(&*conn.tx(), 4).is_empty());
    }

    on_both_engines!(
        a_task_needing_more_workers_than_can_do_it_is_starved_until_they_come,
        a_live_worker_that_already_answered_does_not_count_a_gone_one_does,
        a_generative_task_counts_only_workers_serving_its_model_content,
    );
}
