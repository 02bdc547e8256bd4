//! `task.get`: a task with its submissions, live leases and, while too few live workers can do
//! it to finish it, why it is starved.

use super::starved::{self, Live};
use super::task::load_task_view;
use crate::error::CoreError;
use crate::store::rows::{parsed, TaskRow, TASK_VIEW_COLUMNS};
use crate::store::tx::Tx;
use crate::store::{blob_to_vector, from_ms};
use protocol::generation::blob_to_ids;
use protocol::messages::{LeaseView, SubmissionView, TaskDetail};
use protocol::TaskId;

/// # Errors
/// [`CoreError::TaskNotFound`] for an unknown id.
pub(crate) fn run(tx: &dyn Tx, live: &Live, task_id: &TaskId) -> Result<TaskDetail, CoreError> {
    detail(tx, live, load_task_view(tx, task_id)?)
}

/// The `limit` newest tasks with their votes, newest first (the dashboard's feed).
///
/// # Errors
/// Store errors only.
pub(crate) fn recent(tx: &dyn Tx, live: &Live, limit: u32) -> Result<Vec<TaskDetail>, CoreError> {
    let sql = format!(
        "SELECT {TASK_VIEW_COLUMNS} FROM task WHERE gold IS NULL ORDER BY seq DESC LIMIT ?1"
    );
    let tasks = tx
        .sql()
        .prepare_cached(&sql)?
        .query_map([limit], TaskRow::from_view_row)?
        .collect::<Result<Vec<_>, _>>()?;
    tasks.into_iter().map(|t| detail(tx, live, t)).collect()
}

/// Most numbers of submitted vectors a task view carries; past it the submissions' vectors are
/// left out (the consensus vector stays), so a reply stays well under a NATS message's size.
pub(crate) const MAX_VIEW_VECTOR_NUMBERS: usize = 65_536;

fn detail(tx: &dyn Tx, live: &Live, task: TaskRow) -> Result<TaskDetail, CoreError> {
    let task_id = &task.id;
    let id = task_id.to_string();
    let mut submissions: Vec<SubmissionView> = tx
        .sql()
        .prepare_cached(
            "SELECT worker_id, label, confidence, model, agreed, created_at, embedding, text,
                    token_ids, model_hash
             FROM submission WHERE task_id = ?1 ORDER BY id",
        )?
        .query_map([&id], |r| {
            Ok(SubmissionView {
                worker_id: parsed(r, 0)?,
                label: Some(r.get::<_, String>(1)?).filter(|l| !l.is_empty()),
                embedding: r.get::<_, Option<Vec<u8>>>(6)?.map(|b| blob_to_vector(&b)),
                text: r.get(7)?,
                token_ids: r.get::<_, Option<Vec<u8>>>(8)?.map(|b| blob_to_ids(&b)),
                model_hash: r.get(9)?,
                confidence: r.get(2)?,
                model: r.get(3)?,
                agreed: r.get(4)?,
                created_at: from_ms(r.get(5)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let numbers: usize = submissions
        .iter()
        .filter_map(|s| s.embedding.as_ref().map(Vec::len))
        .sum();
    if numbers > MAX_VIEW_VECTOR_NUMBERS {
        for s in &mut submissions {
            s.embedding = None;
        }
    }
    let leases = tx
        .sql()
        .prepare_cached(
            "SELECT id, worker_id, expires_at FROM lease
             WHERE task_id = ?1 AND state = 'active' ORDER BY created_at",
        )?
        .query_map([&id], |r| {
            Ok(LeaseView {
                lease_id: parsed(r, 0)?,
                worker_id: parsed(r, 1)?,
                expires_at: from_ms(r.get(2)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let starved = starved::of_task(tx, live, &task)?;
    Ok(TaskDetail {
        task: task.view(),
        submissions,
        leases,
        starved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use crate::ops::{lease, submit};
    use protocol::limits::MAX_EMBEDDING_DIM;
    use protocol::messages::{LeaseRequest, NewTask, SubmitRequest};
    use protocol::TaskType;

    fn a_view_leaves_out_submitted_vectors_past_its_budget(mut conn: TestStore) {
        let workers = MAX_VIEW_VECTOR_NUMBERS / MAX_EMBEDDING_DIM + 1;
        let t = add(
            &mut conn,
            0,
            NewTask {
                required_submissions: Some(workers as u32),
                ..NewTask::embedding("x")
            },
        );
        conn.write(|tx| -> Result<(), CoreError> {
            for w in 0..workers {
                let worker = format!("w{w}");
                let req = LeaseRequest {
                    capabilities: vec![TaskType::embedding()],
                    ..lease_req(&worker, 1)
                };
                let l = lease::run(tx, &mut ctx(1), req)?.leases[0].clone();
                let sub = SubmitRequest {
                    lease_id: l.lease_id,
                    worker_id: wid(&worker),
                    label: String::new(),
                    embedding: Some(vec![1.0; MAX_EMBEDDING_DIM]),
                    confidence: 1.0,
                    model: None,
                    generation: None,
                    verification: None,
                    model_hash: None,
                };
                submit::run(tx, &mut ctx(2), &t, sub)?;
            }
            Ok(())
        })
        .expect("lease and submit");
        let d = run(&*conn.tx(), &Live::default(), &t).expect("get");
        assert_eq!(d.submissions.len(), workers);
        assert!(d.submissions.iter().all(|s| s.embedding.is_none()));
        assert_eq!(
            d.task.final_embedding.map(|v| v.len()),
            Some(MAX_EMBEDDING_DIM),
            "the consensus vector stays"
        );
    }

    on_both_engines!(a_view_leaves_out_submitted_vectors_past_its_budget);
}
