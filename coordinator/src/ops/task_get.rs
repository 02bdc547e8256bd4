//! `task.get`: a task with its submissions, live leases and, while too few live workers can do
//! it to finish it, why it is starved.

use super::starved::{self, Live};
use super::task::load_task_view;
use crate::error::CoreError;
use crate::store::rows::TaskRow;
use crate::store::tx::Tx;
use protocol::messages::TaskDetail;
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
    let tasks = tx.recent_tasks(limit)?;
    tasks.into_iter().map(|t| detail(tx, live, t)).collect()
}

/// Most numbers of submitted vectors a task view carries; past it the submissions' vectors are
/// left out (the consensus vector stays), so a reply stays well under a NATS message's size.
pub(crate) const MAX_VIEW_VECTOR_NUMBERS: usize = 65_536;

fn detail(tx: &dyn Tx, live: &Live, task: TaskRow) -> Result<TaskDetail, CoreError> {
    let mut submissions = tx.submissions_of(&task.id)?;
    let numbers: usize = submissions
        .iter()
        .filter_map(|s| s.embedding.as_ref().map(Vec::len))
        .sum();
    if numbers > MAX_VIEW_VECTOR_NUMBERS {
        for s in &mut submissions {
            s.embedding = None;
        }
    }
    let leases = tx.live_leases_of(&task.id)?;
    let verifications = if task.generation.is_some() {
        tx.verifications_of(&task.id)?
    } else {
        Vec::new()
    };
    let starved = starved::of_task(tx, live, &task)?;
    Ok(TaskDetail {
        task: task.view(),
        submissions,
        leases,
        verifications,
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
                    input_tokens: None,
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
