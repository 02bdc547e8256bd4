//! Fuzzing every message the coordinator decodes: arbitrary bytes and arbitrary JSON on every
//! subject it serves never panic and always get a reply envelope; anything that is not JSON gets
//! `malformed_request`.

use coordinator::{dispatch, Core, Settings, Store};
use proptest::prelude::*;
use protocol::{reply, ErrorCode, TaskId};
use serde_json::Value;
use std::sync::OnceLock;

const P: &str = "aimarket";

fn subjects() -> Vec<String> {
    let task = TaskId::new();
    let mut s: Vec<String> = [
        "lease",
        "lease.release",
        "heartbeat.w1",
        "heartbeat.a+b",
        "submit.not-a-task",
        "api.task.add",
        "api.task.get",
        "api.task.list",
        "api.leaderboard",
        "api.workers",
        "api.stats",
        "api.ops.requeue",
        "api.ops.reset",
        "api.worker.token.create",
        "api.worker.token.revoke",
        "api.nope",
    ]
    .iter()
    .map(|t| format!("{P}.{t}"))
    .collect();
    s.push(format!("{P}.submit.{task}"));
    s
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    core: Core,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let (core, effects) = runtime.block_on(async {
            let store = Store::open(&dir.path().join("fuzz.db"))
                .await
                .expect("store");
            Core::new(store, Settings::default())
        });
        // Nobody publishes effects here; drop them.
        drop(effects);
        Fixture {
            runtime,
            core,
            _dir: dir,
        }
    })
}

fn answer(subject: &str, payload: &[u8]) -> Result<Value, protocol::ApiError> {
    let f = fixture();
    let a = f
        .runtime
        .block_on(dispatch(&f.core, P, subject, None, payload))
        .unwrap_or_else(|| panic!("{subject} is served but got no answer"));
    reply::decode::<Value>(&a.body).expect("every answer is a reply envelope")
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_]{0,12}".prop_map(Value::String),
        Just(Value::String("sentiment".into())),
        Just(Value::String(TaskId::new().to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("worker_id".to_owned()),
                    Just("capabilities".to_owned()),
                    Just("tasks".to_owned()),
                    Just("text".to_owned()),
                    Just("label".to_owned()),
                    Just("confidence".to_owned()),
                    Just("lease_id".to_owned()),
                    Just("task_id".to_owned()),
                    Just("max_tasks".to_owned()),
                    Just("confirm".to_owned()),
                    Just("status".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_an_error_reply(bytes in prop::collection::vec(any::<u8>(), 0..256), pick in any::<usize>()) {
        let subjects = subjects();
        let subject = &subjects[pick % subjects.len()];
        let reply = answer(subject, &bytes);
        if serde_json::from_slice::<Value>(&bytes).is_err() && !bytes.iter().all(u8::is_ascii_whitespace) {
            let err = reply.expect_err("non-JSON accepted");
            prop_assert!(
                matches!(err.code, ErrorCode::MalformedRequest | ErrorCode::UnknownOperation | ErrorCode::InvalidArgument),
                "{subject}: {err:?}"
            );
        }
    }

    #[test]
    fn arbitrary_json_never_breaks_the_coordinator(value in json_value(), pick in any::<usize>()) {
        let subjects = subjects();
        let subject = &subjects[pick % subjects.len()];
        let bytes = serde_json::to_vec(&value).expect("json");
        if let Err(e) = answer(subject, &bytes) {
            prop_assert!(!matches!(e.code, ErrorCode::Internal), "{subject} {value}: {e:?}");
        }
    }
}
