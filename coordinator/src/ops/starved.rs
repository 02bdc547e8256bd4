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
use crate::store::rows::{Json, TaskRow};
use crate::store::sql::{params, OptionalExtension};
use crate::store::tx::Tx;
use protocol::messages::{Starvation, StarvedType};
use protocol::{TaskType, WorkerId};
use std::collections::{BTreeMap, BTreeSet};

/// What a task is routed by: its type and, for a generative type, the model content it pins.
type Route = (TaskType, Option<String>);

/// The live workers (heartbeating within the TTL) able to do each task type; for generative
/// types, each model content they serve (a worker serving none can do no generative task).
#[derive(Debug, Default)]
pub(crate) struct Live(BTreeMap<Route, BTreeSet<WorkerId>>);

impl Live {
    /// Reads the live workers at `now`.
    pub(crate) fn read(tx: &dyn Tx, now: i64, heartbeat_ttl_ms: i64) -> Result<Self, CoreError> {
        let mut live = Self::default();
        let mut stmt = tx.sql().prepare_cached(
            "SELECT id, capabilities, model_hash FROM worker
             WHERE status = 'active' AND last_seen > ?1",
        )?;
        let rows = stmt.query_map([now - heartbeat_ttl_ms], |r| {
            Ok((
                crate::store::rows::parsed::<WorkerId>(r, 0)?,
                r.get::<_, Json<Vec<TaskType>>>(1)?.0,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for row in rows {
            let (worker, capabilities, hash) = row?;
            for t in capabilities {
                let hash = match (t.is_generative(), &hash) {
                    (false, _) => None,
                    (true, Some(h)) => Some(h.clone()),
                    (true, None) => continue,
                };
                live.0.entry((t, hash)).or_default().insert(worker.clone());
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
        task: &str,
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
                let mut voters = tx
                    .sql()
                    .prepare_cached("SELECT worker_id FROM submission WHERE task_id = ?1")?;
                let rows =
                    voters.query_map([task], |r| crate::store::rows::parsed::<WorkerId>(r, 0))?;
                for voter in rows {
                    capable -= u32::from(live.contains(&voter?));
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
        &task.id.to_string(),
        (
            &task.task_type,
            task.generation.as_ref().map(|g| g.model_hash.as_str()),
        ),
        task.required,
        task.submissions,
    )
}

/// The starved tasks of type `?1` pinning model content `?4` (none for types that are not
/// generated) when `?2` live workers, the JSON array `?3`, can do it: those that need more
/// workers than are live, less those whose voters are gone enough to make up for it.
const COUNT_STARVED: &str = "SELECT COUNT(*) FROM task t INDEXED BY task_open_required
     WHERE t.status IN ('queued', 'assigned') AND t.type = ?1 AND t.required > ?2
       AND t.model_hash IS NOT DISTINCT FROM ?4
       AND (t.submissions = 0
            OR t.required - t.submissions > ?2 - (
                SELECT COUNT(*) FROM submission s
                WHERE s.task_id = t.id AND s.worker_id IN (SELECT value FROM json_each(?3))))";

/// The starved tasks, by type. Types whose largest `required` the live workers cover cost one
/// index seek; for the others one SQL count runs over the tasks that need more workers than are
/// live, reading a task's voters only when it has some.
///
/// # Errors
/// Store errors only.
pub(crate) fn summary(tx: &dyn Tx, live: &Live) -> Result<Vec<StarvedType>, CoreError> {
    let mut next_type = tx.sql().prepare_cached(
        "SELECT type FROM task INDEXED BY task_open_required
         WHERE status IN ('queued', 'assigned') AND type > ?1 ORDER BY type LIMIT 1",
    )?;
    let mut most_required = tx.sql().prepare_cached(
        "SELECT required FROM task INDEXED BY task_open_required
         WHERE status IN ('queued', 'assigned') AND type = ?1 AND model_hash IS NOT DISTINCT FROM ?2
         ORDER BY required DESC LIMIT 1",
    )?;
    let mut hashes = tx.sql().prepare_cached(
        "SELECT DISTINCT model_hash FROM task INDEXED BY task_open_required
         WHERE status IN ('queued', 'assigned') AND type = ?1",
    )?;
    let mut starved = tx.sql().prepare_cached(COUNT_STARVED)?;
    let mut out = Vec::new();
    let mut after = String::new();
    while let Some(t) = next_type
        .query_row([&after], |r| crate::store::rows::parsed::<TaskType>(r, 0))
        .optional()?
    {
        after = t.as_str().to_owned();
        let routes: Vec<Option<String>> = if t.is_generative() {
            hashes
                .query_map([t.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        } else {
            vec![None]
        };
        for hash in routes {
            let live_workers = live.count(&t, hash.as_deref());
            let required: u32 = most_required.query_row(params![t.as_str(), hash], |r| r.get(0))?;
            if required <= live_workers {
                continue;
            }
            let capable: Vec<&str> = live
                .capable(&t, hash.as_deref())
                .map(|w| w.iter().map(WorkerId::as_str).collect())
                .unwrap_or_default();
            let capable = serde_json::to_string(&capable).expect("worker ids serialize");
            let tasks: u64 = starved
                .query_row(params![t.as_str(), live_workers, capable, hash], |r| {
                    r.get(0)
                })?;
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
    use crate::ops::worker::touch_worker;
    use protocol::messages::{NewTask, SubmitRequest};

    fn register(conn: &dyn Tx, now: i64, worker: &str, caps: &[TaskType]) {
        touch_worker(conn, now, &wid(worker), caps, Some("test"), None).expect("register");
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

    #[test]
    fn the_summary_reads_only_tasks_needing_more_workers_than_are_live() {
        let conn = store();
        let plan: String = (&conn as &dyn Sql)
            .prepare(&format!("EXPLAIN QUERY PLAN {COUNT_STARVED}"))
            .expect("explain")
            .query_map(params!["sentiment", 3, "[]", None::<String>], |r| {
                r.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("; ");
        assert!(
            plan.contains("task_open_required (type=? AND required>?)"),
            "{plan}"
        );
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
        touch_worker(&*conn.tx(), 1, &wid("right"), &generative, None, Some(hash))
            .expect("register");
        let other = "0".repeat(64);
        touch_worker(
            &*conn.tx(),
            1,
            &wid("other"),
            &generative,
            None,
            Some(&other),
        )
        .expect("register");
        touch_worker(&*conn.tx(), 1, &wid("none"), &generative, None, None).expect("register");
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
        touch_worker(&*conn.tx(), 3, &wid("other"), &generative, None, Some(hash)).expect("switch");
        assert_eq!(starved(&*conn.tx(), 4, &t), None);
        assert!(summary_at(&*conn.tx(), 4).is_empty());
    }

    on_both_engines!(
        a_task_needing_more_workers_than_can_do_it_is_starved_until_they_come,
        a_live_worker_that_already_answered_does_not_count_a_gone_one_does,
        a_generative_task_counts_only_workers_serving_its_model_content,
    );
}
