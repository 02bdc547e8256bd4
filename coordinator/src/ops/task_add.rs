//! `task.add`: create tasks, all or none, each announced to workers of its type. A batch that
//! names a `batch_id` is created once: a retry with the same id and tasks gets the first one's
//! ids back.

use super::Ctx;
use crate::api::Effect;
use crate::error::CoreError;
use crate::store::tx::{TaskInsert, Tx};
use protocol::generation::{Decoding, VerifyMode};
use protocol::limits::{DEFAULT_REQUIRED_SUBMISSIONS, DEFAULT_SIMILARITY};
use protocol::messages::{NewTask, TaskAddReply, TaskAddRequest, TaskAnnouncement, KNOWN_TYPES};
use protocol::{TaskId, TaskType};

/// Validates every task first, then inserts them in order.
///
/// # Errors
/// [`CoreError::Invalid`] naming the first bad task; nothing is stored then.
pub(crate) fn run(
    tx: &dyn Tx,
    ctx: &mut Ctx,
    req: TaskAddRequest,
) -> Result<TaskAddReply, CoreError> {
    req.validate(ctx.settings.max_text_bytes)?;
    check_types(tx, &req)?;
    let batch = match &req.batch_id {
        Some(id) => {
            let digest = {
                use sha2::Digest;
                let body = serde_json::to_vec(&req.tasks).expect("tasks serialize");
                hex::encode(sha2::Sha256::digest(body))
            };
            // Two coordinators may get the same retried batch at once: the second waits here
            // until the first commits, then finds its ids.
            tx.lock_batch(id)?;
            if let Some(ids) = created_before(tx, id, &digest)? {
                tracing::info!(batch_id = %id, tasks = ids.len(), "batch already added");
                return Ok(TaskAddReply { task_ids: ids });
            }
            Some((id.clone(), digest))
        }
        None => None,
    };
    let mut task_ids = Vec::with_capacity(req.tasks.len());
    let mut rows = Vec::with_capacity(req.tasks.len());
    for task in req.tasks {
        let row = row(ctx, task)?;
        ctx.effects.push(Effect::Announce(TaskAnnouncement {
            task_id: row.id,
            task_type: row.task_type.clone(),
            required: row.required,
        }));
        task_ids.push(row.id);
        rows.push(row);
    }
    tx.insert_tasks(ctx.now, &rows)?;
    if let Some((id, digest)) = batch {
        tx.record_batch(&id, &digest, &task_ids, ctx.now)?;
    }
    Ok(TaskAddReply { task_ids })
}

/// Refuses a type that neither aimarket's models nor any registered worker do: a misspelt type
/// would wait forever.
///
/// # Errors
/// [`CoreError::Invalid`] naming the type and the known ones.
fn check_types(tx: &dyn Tx, req: &TaskAddRequest) -> Result<(), CoreError> {
    let mut checked: Vec<&TaskType> = Vec::new();
    for t in req.tasks.iter().filter_map(|t| t.task_type.as_ref()) {
        if KNOWN_TYPES.contains(&t.as_str()) || checked.contains(&t) {
            continue;
        }
        if !tx.type_advertised(t)? {
            return Err(protocol::messages::unknown_type(t).into());
        }
        checked.push(t);
    }
    Ok(())
}

/// The row a validated task is stored as: its spec resolved (the coordinator's default
/// verification, a seed the coordinator picks), its vote rule and counts.
///
/// # Errors
/// None in practice: `task` was validated, so resolving it again cannot fail.
fn row(ctx: &Ctx, task: NewTask) -> Result<TaskInsert, CoreError> {
    let id = TaskId::new();
    // Validated above: resolving again cannot fail.
    let mut spec = task.spec()?;
    if let Some(spec) = spec.as_mut() {
        if task.verify.is_none() {
            spec.verify = ctx.settings.verify_default;
        }
        // The coordinator picks the seed (unless the client named one), so no worker can
        // choose its own luck.
        if let (Decoding::Sample { seed, .. }, None) = (&mut spec.decoding, task.seed) {
            *seed = fastrand::u64(..);
        }
    }
    let model_hash = spec
        .as_ref()
        .map(|s| s.model_hash.clone())
        .or_else(|| task.model_hash.clone());
    // Validated above. Generative tasks keep the majority rule's shape (they are decided
    // by exact match and cross-scoring, not by this rule).
    let rule = task.vote_rule_with(
        Some(ctx.settings.label_policy),
        Some(ctx.settings.posterior_threshold),
    )?;
    let distinct_models = rule.is_some()
        && model_hash.is_none()
        && task
            .distinct_models
            .unwrap_or(ctx.settings.distinct_models_default);
    let text = task.stored_text();
    let task_type = task.task_type.unwrap_or_else(TaskType::sentiment);
    let asked = task
        .required_submissions
        .unwrap_or(DEFAULT_REQUIRED_SUBMISSIONS);
    // A generative task's answer is scored by the others: `asked - 1` scorings per
    // candidate; in `generate_once` mode only one worker generates at first.
    let (required, verifiers) = match &spec {
        Some(s) if s.verify == VerifyMode::GenerateOnce => (1, asked - 1),
        Some(_) => (asked, asked - 1),
        None => (asked, 0),
    };
    let max_attempts = task
        .max_attempts
        .unwrap_or(ctx.settings.max_attempts_default);
    let similarity = task
        .similarity
        .or_else(|| task_type.is_vector().then_some(DEFAULT_SIMILARITY));
    Ok(TaskInsert {
        id,
        task_type,
        text,
        required,
        active_leases: 0,
        max_attempts,
        labels: task.labels,
        similarity,
        generation: spec,
        model_hash,
        verifiers,
        asked,
        policy: rule.map_or("majority", |r| r.policy.as_str()),
        min_quorum: rule.map_or(1, |r| r.min_quorum),
        max_answers: rule.map_or(asked.max(required), |r| r.max_answers),
        distinct_models,
        gold: None,
        threshold: rule.and_then(|r| r.threshold),
    })
}

/// The ids batch `id` created, when it was added before with the same tasks (`digest`).
///
/// # Errors
/// [`CoreError::Invalid`] when `id` was used for other tasks.
fn created_before(tx: &dyn Tx, id: &str, digest: &str) -> Result<Option<Vec<TaskId>>, CoreError> {
    match tx.batch(id)? {
        None => Ok(None),
        Some((d, ids)) if d == digest => Ok(Some(ids)),
        Some(_) => Err(protocol::ProtocolError::invalid(
            "batch_id",
            format!("batch {id:?} was added before with other tasks: choose a new batch id"),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::task::load_task;
    use crate::ops::testing::*;
    use protocol::messages::NewTask;
    use protocol::TaskStatus;

    fn adds_with_defaults_and_announces(mut conn: TestStore) {
        let mut c = ctx(1_000);
        let reply = conn
            .write(|tx| {
                run(
                    tx,
                    &mut c,
                    TaskAddRequest {
                        batch_id: None,
                        tasks: vec![NewTask::text("good"), NewTask::text("bad")],
                    },
                )
            })
            .expect("add");
        assert_eq!(reply.task_ids.len(), 2);
        assert_eq!(c.effects.len(), 2);
        let t = load_task(&*conn.tx(), &reply.task_ids[0]).expect("load");
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.required, 3);
        assert_eq!(t.max_attempts, settings().max_attempts_default);
        assert_eq!(t.task_type, TaskType::sentiment());
    }

    fn one_bad_task_stores_nothing(conn: TestStore) {
        let before = dump(&conn);
        // Autocommit (every statement of a test store commits as it runs): a task inserted
        // before the refusal would stay. The oversize text is a bound only the validation knows
        // (the schema has no CHECK for it).
        let oversize = "x".repeat(settings().max_text_bytes + 1);
        for (bad, says) in [
            (
                NewTask {
                    required_submissions: Some(0),
                    ..NewTask::text("bad")
                },
                "task 1",
            ),
            (NewTask::text(oversize), "over the limit"),
        ] {
            let err = run(
                &*conn.tx(),
                &mut ctx(0),
                TaskAddRequest {
                    batch_id: None,
                    tasks: vec![NewTask::text("fine"), bad],
                },
            )
            .expect_err("bad batch accepted");
            assert_eq!(dump(&conn), before, "a refused batch stored something");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    fn generative_tasks_store_their_spec_and_bad_specs_store_nothing(mut conn: TestStore) {
        let t = add(
            &mut conn,
            0,
            NewTask::translation("Bonjour tout le monde.", "fr", "en"),
        );
        let task = load_task(&*conn.tx(), &t).expect("task");
        let spec = task.generation.expect("a spec");
        assert_eq!(spec.model_hash, protocol::generation::SMOLLM2_HASH);
        assert_eq!(
            (spec.source_lang.as_deref(), spec.target_lang.as_deref()),
            (Some("fr"), Some("en"))
        );
        let before = dump(&conn);
        let bad = [
            NewTask {
                model: Some("gpt-9".into()),
                ..NewTask::generated(TaskType::generate(), "x")
            },
            NewTask::translation("x", "en", "ja"),
            NewTask {
                max_new_tokens: Some(600),
                ..NewTask::generated(TaskType::summarization(), "x")
            },
            NewTask {
                max_new_tokens: Some(5),
                ..NewTask::text("a sentiment task")
            },
        ];
        for task in bad {
            let mut c = ctx(2_000);
            let req = TaskAddRequest {
                batch_id: None,
                tasks: vec![NewTask::text("fine"), task.clone()],
            };
            let err = run(&*conn.tx(), &mut c, req).expect_err("refused");
            assert!(
                matches!(
                    err.code(),
                    protocol::ErrorCode::UnknownModel
                        | protocol::ErrorCode::UnsupportedSpec
                        | protocol::ErrorCode::InvalidArgument
                ),
                "{task:?}: {err}"
            );
            assert!(c.effects.is_empty());
            assert_eq!(dump(&conn), before, "{task:?} stored something");
        }
    }

    fn a_batch_id_makes_a_retried_add_create_nothing(conn: TestStore) {
        let batch = |texts: &[&str]| TaskAddRequest {
            batch_id: Some("batch-1".into()),
            tasks: texts.iter().map(|t| NewTask::text(*t)).collect(),
        };
        let mut c = ctx(0);
        let first = run(&*conn.tx(), &mut c, batch(&["a", "b"])).expect("first");
        assert_eq!(c.effects.len(), 2);
        let before = dump(&conn);
        let mut c = ctx(1);
        let again = run(&*conn.tx(), &mut c, batch(&["a", "b"])).expect("retry");
        assert_eq!(
            again.task_ids, first.task_ids,
            "the retry gets the first ids"
        );
        assert!(c.effects.is_empty(), "nothing announced twice");
        assert_eq!(dump(&conn), before, "the retry stored something");
        // The same key with other tasks is refused, and changes nothing.
        let e = run(&*conn.tx(), &mut ctx(2), batch(&["a", "c"])).expect_err("other tasks");
        assert!(e.to_string().contains("batch"), "{e}");
        assert_eq!(dump(&conn), before);
        let bad = TaskAddRequest {
            batch_id: Some(String::new()),
            ..batch(&["a"])
        };
        assert!(run(&*conn.tx(), &mut ctx(3), bad).is_err());
        assert_eq!(dump(&conn), before);
    }

    fn a_chat_is_stored_as_its_json_with_its_stop_strings_and_seed(mut conn: TestStore) {
        use protocol::chat::{ChatMessage, Role};
        use protocol::generation::{Decoding, TEMPLATE_MESSAGES};
        let chat = vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
        ];
        let sampled = |seed| NewTask {
            temperature: Some(0.7),
            seed,
            stop: Some(vec!["\n".into()]),
            ..NewTask::chat(chat.clone())
        };
        let t = add(&mut conn, 0, sampled(Some(42)));
        let task = load_task(&*conn.tx(), &t).expect("task");
        assert_eq!(task.text, protocol::chat::encode(&chat));
        let spec = task.generation.expect("a spec");
        assert_eq!(spec.template, TEMPLATE_MESSAGES);
        assert_eq!(spec.stop, vec!["\n".to_owned()]);
        assert_eq!(
            spec.decoding,
            Decoding::Sample {
                temperature: 0.7,
                seed: 42
            },
            "the client's seed is kept"
        );
        let picked = add(&mut conn, 1, sampled(None));
        let picked = load_task(&*conn.tx(), &picked).expect("task");
        assert!(
            matches!(picked.generation.expect("spec").decoding, Decoding::Sample { seed, .. } if seed != 0),
            "the coordinator picks a seed"
        );
        let before = dump(&conn);
        let bad = [
            NewTask {
                text: "and a text".into(),
                ..NewTask::chat(chat.clone())
            },
            NewTask {
                task_type: Some(TaskType::summarization()),
                ..NewTask::chat(chat.clone())
            },
            NewTask::chat(vec![ChatMessage::new(Role::Assistant, "x")]),
            NewTask {
                stop: Some(vec!["a".into(); 5]),
                ..NewTask::chat(chat.clone())
            },
            NewTask {
                task_type: Some(TaskType::new("sentimnet").expect("type")),
                ..NewTask::text("x")
            },
        ];
        for task in bad {
            let err = run(
                &*conn.tx(),
                &mut ctx(2),
                TaskAddRequest {
                    batch_id: None,
                    tasks: vec![task.clone()],
                },
            );
            assert!(err.is_err(), "{task:?} was accepted");
        }
        assert_eq!(dump(&conn), before, "a refused chat stored something");
        // A type of another model is taken once a registered worker advertises it.
        let custom = TaskType::new("custom-model").expect("type");
        let bad = TaskAddRequest {
            batch_id: None,
            tasks: vec![NewTask {
                task_type: Some(custom.clone()),
                ..NewTask::text("x")
            }],
        };
        let err = run(&*conn.tx(), &mut ctx(3), bad.clone()).expect_err("nobody does it yet");
        assert!(err.to_string().contains("known types: sentiment"), "{err}");
        let mut req = lease_req("other", 1);
        req.capabilities = vec![custom];
        assert!(lease(&mut conn, 4, req).leases.is_empty());
        conn.write(|tx| run(tx, &mut ctx(5), bad))
            .expect("advertised now");
    }

    on_both_engines!(
        adds_with_defaults_and_announces,
        one_bad_task_stores_nothing,
        generative_tasks_store_their_spec_and_bad_specs_store_nothing,
        a_batch_id_makes_a_retried_add_create_nothing,
        a_chat_is_stored_as_its_json_with_its_stop_strings_and_seed,
    );

    #[test]
    fn concurrent_retries_of_a_batch_on_postgres_create_it_once() {
        use crate::store::postgres::{PgPipe, StmtCache, Tx};
        let server = PgServer::start();
        let batch = || TaskAddRequest {
            batch_id: Some("twice".into()),
            tasks: vec![NewTask::text("a"), NewTask::text("b")],
        };
        let connect = || test_support::PgClient::connect(server.url());
        let (a, b) = (connect(), connect());
        let cache = std::cell::RefCell::new(StmtCache::default());
        let tx = PgPipe::begin(a.runtime(), a.client(), &cache);
        let first = run(&Tx(&tx), &mut ctx(0), batch()).expect("first");
        // The retry reaches another coordinator while the first add is not yet committed.
        let retry = std::thread::spawn(move || {
            let cache = std::cell::RefCell::new(StmtCache::default());
            let tx = PgPipe::begin(b.runtime(), b.client(), &cache);
            let r = run(&Tx(&tx), &mut ctx(1), batch());
            tx.commit().expect("commit");
            r
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        tx.commit().expect("commit");
        let again = retry
            .join()
            .expect("retry thread")
            .expect("the retry is answered");
        assert_eq!(
            again.task_ids, first.task_ids,
            "the retry gets the first ids"
        );
        assert_eq!(count_tasks(&connect()), 2, "the batch was created twice");
    }
}
