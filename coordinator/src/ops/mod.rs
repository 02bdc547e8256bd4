//! The core operations, one file each. Every operation is a plain function over an open
//! transaction and a [`Ctx`] (the clock reading, the tunables, and the effects to publish after
//! commit), so it runs the same under NATS, HTTP and unit tests.

pub(crate) mod cancel;
pub(crate) mod gold;
pub(crate) mod heartbeat;
#[cfg(test)]
mod invariants;
pub(crate) mod leaderboard;
pub(crate) mod lease;
#[cfg(test)]
mod policy_tests;
pub(crate) mod release;
pub(crate) mod reset;
pub(crate) mod starved;
pub(crate) mod stats;
pub(crate) mod submit;
pub(crate) mod sweep;
pub(crate) mod task_add;
pub(crate) mod task_get;
pub(crate) mod task_list;
pub(crate) mod token;
pub(crate) mod verify;
pub(crate) mod workers;

use crate::api::{Effect, Settings};
use crate::error::CoreError;
use crate::store::sql::{params, FromValue, OptionalExtension, Row, Sql, ValueRef};
use crate::store::{blob_to_vector, from_ms};
use protocol::generation::{blob_to_ids, GenerationSpec};
use protocol::messages::{FailureReason, TaskAnnouncement, TaskEvent, TaskView};
use protocol::policy::VoteRule;
use protocol::{LeaseId, LeaseState, TaskId, TaskStatus, TaskType, WorkerId};
use std::str::FromStr;

/// What an operation runs with.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The clock, in ms since the epoch, read once per operation.
    pub now: i64,
    /// The tunables.
    pub settings: Settings,
    /// Effects to publish after commit.
    pub effects: Vec<Effect>,
}

impl Ctx {
    /// A context at time `now`.
    pub(crate) fn new(now: i64, settings: Settings) -> Self {
        Self {
            now,
            settings,
            effects: Vec::new(),
        }
    }
}

/// Reads a TEXT column into any type with `FromStr` (ids, states).
pub(crate) fn parsed<T>(row: &Row<'_>, idx: usize) -> crate::store::sql::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.get(idx)?;
    s.parse()
        .map_err(|e| crate::store::sql::Error::Conversion(idx, Box::new(e)))
}

/// As [`parsed`], for a nullable column.
pub(crate) fn parsed_opt<T>(row: &Row<'_>, idx: usize) -> crate::store::sql::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if row.is_null(idx)? {
        Ok(None)
    } else {
        parsed(row, idx).map(Some)
    }
}

/// Newtype so JSON-in-TEXT columns (capabilities) load with `row.get`.
pub(crate) struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromValue for Json<T> {
    fn from_value(value: ValueRef<'_>) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match value {
            ValueRef::Text(s) => Ok(Json(serde_json::from_str(s)?)),
            v => Err(format!("{v:?} is not JSON text").into()),
        }
    }
}

/// A `task` row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRow {
    pub id: TaskId,
    pub task_type: TaskType,
    pub text: String,
    pub status: TaskStatus,
    pub required: u32,
    pub max_attempts: u32,
    pub attempts: u32,
    pub active_leases: u32,
    pub submissions: u32,
    pub final_label: Option<String>,
    pub final_confidence: Option<f64>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Candidate labels of a `zero-shot` task.
    pub labels: Option<Vec<String>>,
    /// Agreement threshold of an `embedding` task.
    pub similarity: Option<f64>,
    /// Consensus vector of a finalized `embedding` task.
    pub final_embedding: Option<Vec<f32>>,
    /// What a generative task pins.
    pub generation: Option<GenerationSpec>,
    /// The token ids a generative task agreed on.
    pub final_token_ids: Option<Vec<u32>>,
    /// Their text.
    pub final_text: Option<String>,
    /// Why a failed task failed.
    pub failure_reason: Option<FailureReason>,
    /// A generative task whose candidates are being scored.
    pub verifying: bool,
    /// Scorings each distinct candidate gets.
    pub verifiers: u32,
    /// The answers the client asked for (`required` grows past it in inconclusive rounds).
    pub asked: u32,
    /// How the answers decide it.
    pub vote: VoteRule,
    /// Its answers reached no quorum: more replicas run.
    pub inconclusive: bool,
    /// At most one counted answer per model content hash.
    pub distinct_models: bool,
    /// The model content it pins (generative tasks: the spec's).
    pub model_hash: Option<String>,
    /// The gold item this task is an instance of.
    pub gold: Option<i64>,
    /// Only read with [`TASK_VIEW_COLUMNS`].
    pub reserved_by: Option<WorkerId>,
    pub lease_expires_at: Option<i64>,
}

/// A task's status as read: an open task is stored `queued` and read `assigned` while it has
/// live leases. A literal (for `concat!`).
macro_rules! read_status {
    () => {
        "CASE WHEN task.status = 'queued' AND task.active_leases > 0 THEN 'assigned' \
         ELSE task.status END"
    };
}

/// The columns [`TaskRow::from_row`] reads, in order, as a literal (for `concat!`).
macro_rules! task_columns {
    () => {
        concat!(
            "task.id, task.type, task.text, ",
            read_status!(),
            ", task.required, task.max_attempts, \
         task.attempts, task.active_leases, task.submissions, task.final_label, \
         task.final_confidence, task.error_message, task.created_at, task.finished_at, \
         task.labels, task.similarity, task.final_embedding, task.generation, \
         task.final_token_ids, task.final_text, task.failure_reason, task.verifying, \
         task.verifiers, task.asked, task.policy, task.min_quorum, task.max_answers, \
         task.inconclusive, task.distinct_models, task.model_hash, task.gold"
        )
    };
}

/// The columns [`TaskRow::from_row`] reads, in order (qualified, so a query may join other
/// tables to `task`).
pub(crate) const TASK_COLUMNS: &str = task_columns!();

/// How many columns [`TASK_COLUMNS`] has: where a query's own columns after them start (the
/// live-lease summary of [`TASK_VIEW_COLUMNS`], say).
pub(crate) const TASK_COLUMN_COUNT: usize = 31;

/// A task's state as views show it: an open task in cross-scoring is `verifying`, one past a
/// round without a quorum `inconclusive`, one with live leases `assigned` (an open task is
/// stored `queued` either way).
pub(crate) const VIEW_STATUS_SQL: &str = concat!(
    "CASE WHEN task.status IN ('queued', 'assigned') AND task.verifying = 1 THEN 'verifying' \
     WHEN task.status IN ('queued', 'assigned') AND task.inconclusive = 1 THEN 'inconclusive' \
     ELSE ",
    read_status!(),
    " END"
);

/// [`TASK_COLUMNS`] plus the live-lease summary that views show (kept off the hot paths).
pub(crate) const TASK_VIEW_COLUMNS: &str = concat!(
    task_columns!(),
    ", (SELECT worker_id FROM lease l WHERE l.task_id = task.id AND l.state = 'active' \
      ORDER BY l.created_at DESC LIMIT 1), \
     (SELECT MAX(expires_at) FROM lease l WHERE l.task_id = task.id AND l.state = 'active')"
);

impl TaskRow {
    /// A task from [`TASK_COLUMNS`] (the row's first [`TASK_COLUMN_COUNT`]; a query may add its
    /// own after).
    pub(crate) fn from_row(r: &Row<'_>) -> crate::store::sql::Result<Self> {
        Ok(Self {
            id: parsed(r, 0)?,
            task_type: parsed(r, 1)?,
            text: r.get(2)?,
            status: parsed(r, 3)?,
            required: r.get(4)?,
            max_attempts: r.get(5)?,
            attempts: r.get(6)?,
            active_leases: r.get(7)?,
            submissions: r.get(8)?,
            final_label: r.get(9)?,
            final_confidence: r.get(10)?,
            error_message: r.get(11)?,
            created_at: r.get(12)?,
            finished_at: r.get(13)?,
            labels: r.get::<_, Option<Json<Vec<String>>>>(14)?.map(|j| j.0),
            similarity: r.get(15)?,
            final_embedding: r.get::<_, Option<Vec<u8>>>(16)?.map(|b| blob_to_vector(&b)),
            generation: r.get::<_, Option<Json<GenerationSpec>>>(17)?.map(|j| j.0),
            final_token_ids: r.get::<_, Option<Vec<u8>>>(18)?.map(|b| blob_to_ids(&b)),
            final_text: r.get(19)?,
            failure_reason: parsed_opt(r, 20)?,
            verifying: r.get(21)?,
            verifiers: r.get(22)?,
            asked: r.get(23)?,
            vote: VoteRule {
                policy: parsed(r, 24)?,
                min_quorum: r.get(25)?,
                max_answers: r.get(26)?,
            },
            inconclusive: r.get(27)?,
            distinct_models: r.get(28)?,
            model_hash: r.get(29)?,
            gold: r.get(30)?,
            reserved_by: None,
            lease_expires_at: None,
        })
    }

    /// A task from [`TASK_VIEW_COLUMNS`], with its live-lease summary.
    pub(crate) fn from_view_row(r: &Row<'_>) -> crate::store::sql::Result<Self> {
        Ok(Self {
            reserved_by: parsed_opt(r, TASK_COLUMN_COUNT)?,
            lease_expires_at: r.get(TASK_COLUMN_COUNT + 1)?,
            ..Self::from_row(r)?
        })
    }

    pub(crate) fn view(self) -> TaskView {
        let status = self.view_status();
        TaskView {
            id: self.id,
            task_type: self.task_type,
            text: self.text,
            status,
            labels: self.labels,
            similarity: self.similarity,
            vote: self.generation.is_none().then_some(self.vote),
            distinct_models: self.distinct_models,
            model_hash: if self.generation.is_none() {
                self.model_hash
            } else {
                None
            },
            final_label: self.final_label,
            final_embedding: self.final_embedding,
            final_confidence: self.final_confidence,
            generation: self.generation,
            final_text: self.final_text,
            final_token_ids: self.final_token_ids,
            required_submissions: self.asked,
            submissions: self.submissions,
            active_leases: self.active_leases,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            reserved_by: self.reserved_by,
            lease_expires_at: self.lease_expires_at.map(from_ms),
            error_message: self.error_message,
            failure_reason: self.failure_reason,
            created_at: from_ms(self.created_at),
            finished_at: self.finished_at.map(from_ms),
        }
    }

    /// The state views show (see [`VIEW_STATUS_SQL`]).
    pub(crate) fn view_status(&self) -> TaskStatus {
        match self.status {
            s if s.is_terminal() => s,
            _ if self.verifying => TaskStatus::Verifying,
            _ if self.inconclusive => TaskStatus::Inconclusive,
            s => s,
        }
    }

    pub(crate) fn announcement(&self) -> TaskAnnouncement {
        TaskAnnouncement {
            task_id: self.id,
            task_type: self.task_type.clone(),
            required: self.required,
        }
    }
}

/// Loads a task.
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
///
/// On PostgreSQL the row stays locked until the transaction ends: what the operation decides
/// from it (finalize, fail, reissue) cannot race another coordinator's decision on the task.
pub(crate) fn load_task(conn: &dyn Sql, id: &TaskId) -> Result<TaskRow, CoreError> {
    load_task_with(
        conn,
        id,
        TASK_COLUMNS,
        conn.lock_suffix(),
        TaskRow::from_row,
    )
}

/// Loads a task with its live-lease summary, for views.
///
/// # Errors
/// [`CoreError::TaskNotFound`] when there is none with that id.
pub(crate) fn load_task_view(conn: &dyn Sql, id: &TaskId) -> Result<TaskRow, CoreError> {
    load_task_with(conn, id, TASK_VIEW_COLUMNS, "", TaskRow::from_view_row)
}

fn load_task_with(
    conn: &dyn Sql,
    id: &TaskId,
    columns: &str,
    lock: &str,
    read: fn(&Row<'_>) -> crate::store::sql::Result<TaskRow>,
) -> Result<TaskRow, CoreError> {
    let sql = format!("SELECT {columns} FROM task WHERE id = ?1{lock}");
    conn.prepare_cached(&sql)?
        .query_row([id.to_string()], read)
        .optional()?
        .ok_or(CoreError::TaskNotFound(*id))
}

/// Records that `worker` is alive with these capabilities; registers it on first sight.
///
/// A worker that now serves another model content forgets its lease cursors: the tasks they
/// passed over for the old hash may be ones it can do now.
pub(crate) fn touch_worker(
    conn: &dyn Sql,
    now: i64,
    worker: &WorkerId,
    capabilities: &[TaskType],
    model: Option<&str>,
    model_hash: Option<&str>,
) -> Result<(), CoreError> {
    if model_hash.is_some() {
        conn.prepare_cached(
            "DELETE FROM temp.lease_cursor WHERE worker_id = ?1
               AND EXISTS (SELECT 1 FROM worker WHERE id = ?1 AND model_hash IS DISTINCT FROM ?2)",
        )?
        .execute(params![worker.as_str(), model_hash])?;
    }
    let caps = serde_json::to_string(capabilities).expect("task types serialize");
    conn.prepare_cached(
        "INSERT INTO worker (id, status, capabilities, model, model_hash, last_seen, registered_at)
         VALUES (?1, 'active', ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (id) DO UPDATE SET
             status = 'active',
             capabilities = excluded.capabilities,
             model = COALESCE(excluded.model, worker.model),
             model_hash = COALESCE(excluded.model_hash, worker.model_hash),
             last_seen = excluded.last_seen",
    )?
    .defer(params![worker.as_str(), caps, model, model_hash, now])?;
    Ok(())
}

/// The capabilities `worker` registered with, or `sentiment` for a worker never seen (clients of
/// the original HTTP API register without task types).
pub(crate) fn known_capabilities(
    conn: &dyn Sql,
    worker: &WorkerId,
) -> Result<Vec<TaskType>, CoreError> {
    let caps: Option<Json<Vec<TaskType>>> = conn
        .prepare_cached("SELECT capabilities FROM worker WHERE id = ?1")?
        .query_row([worker.as_str()], |r| r.get(0))
        .optional()?;
    Ok(caps
        .map(|Json(c)| c)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![TaskType::sentiment()]))
}

/// Ends a live lease that produced no result (`expired` or `released`): one more attempt on its
/// task, which fails when it runs out of attempts and is announced again otherwise.
///
/// Returns whether the lease was live, and whether its task failed as a result.
pub(crate) fn end_lease_unanswered(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    lease_id: &LeaseId,
    task_id: &TaskId,
    state: LeaseState,
) -> Result<(bool, bool), CoreError> {
    debug_assert!(matches!(state, LeaseState::Expired | LeaseState::Released));
    let lease = lease_id.to_string();
    let ended = conn
        .prepare_cached(
            "UPDATE lease SET state = ?1, ended_at = ?2 WHERE id = ?3 AND state = 'active'",
        )?
        .execute(params![state.as_str(), ctx.now, lease])?;
    if ended == 0 {
        return Ok((false, false));
    }
    let scoring: Option<i64> = conn
        .prepare_cached("SELECT verification FROM lease WHERE id = ?1")?
        .query_row([&lease], |r| r.get(0))?;
    if scoring.is_some() {
        // A verify lease holds no generation slot: its scoring slot opens again.
        verify::reopen(conn, lease_id)?;
        conn.prepare_cached(
            "UPDATE task SET attempts = attempts + 1
             WHERE id = ?1 AND status IN ('queued', 'assigned')",
        )?
        .execute([task_id.to_string()])?;
    } else {
        conn.prepare_cached(
            "UPDATE task SET
                 active_leases = active_leases - 1,
                 attempts = attempts + 1
             WHERE id = ?1 AND status IN ('queued', 'assigned')",
        )?
        .execute([task_id.to_string()])?;
    }
    rewind_cursors(conn, task_id)?;
    let task = load_task(conn, task_id)?;
    if task.status.is_terminal() {
        return Ok((true, false));
    }
    if task.attempts >= task.max_attempts {
        let message = format!(
            "gave up after {} attempts: leases {} without a result",
            task.attempts,
            if state == LeaseState::Released {
                "were released"
            } else {
                "expired"
            }
        );
        fail_task(conn, ctx, &task, FailureReason::MaxAttempts, message)?;
        return Ok((true, true));
    }
    ctx.effects.push(Effect::Announce(task.announcement()));
    Ok((true, false))
}

/// A task may now be open to workers whose lease cursors are past it (see `lease_cursor`):
/// their next walk starts before it.
pub(crate) fn rewind_cursors(conn: &dyn Sql, task_id: &TaskId) -> Result<(), CoreError> {
    conn.prepare_cached(
        "UPDATE temp.lease_cursor SET after = t.seq - 1
         FROM (SELECT seq, type FROM task WHERE id = ?1) AS t
         WHERE lease_cursor.type = t.type AND lease_cursor.after >= t.seq",
    )?
    .execute([task_id.to_string()])?;
    Ok(())
}

/// Moves a task to `failed`, cancelling any lease still live on it.
pub(crate) fn fail_task(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task: &TaskRow,
    reason: FailureReason,
    message: String,
) -> Result<(), CoreError> {
    close_task(conn, ctx, task, TaskStatus::Failed, Some(reason), message)
}

/// Ends an open task as `failed` or `cancelled`: its live leases (generation and scoring alike)
/// are cancelled, so their holders learn on their next heartbeat or submission; its open
/// scoring rows lapse. A gold task ends without an event: nobody waits for it.
pub(crate) fn close_task(
    conn: &dyn Sql,
    ctx: &mut Ctx,
    task: &TaskRow,
    status: TaskStatus,
    reason: Option<FailureReason>,
    message: String,
) -> Result<(), CoreError> {
    let tid = task.id.to_string();
    conn.prepare_cached(
        "UPDATE lease SET state = 'cancelled', ended_at = ?1 WHERE task_id = ?2 AND state = 'active'",
    )?
    .execute(params![ctx.now, tid])?;
    conn.prepare_cached(
        "UPDATE verification SET state = 'lapsed', finished_at = ?1
         WHERE task_id = ?2 AND state IN ('open', 'leased')",
    )?
    .execute(params![ctx.now, tid])?;
    conn.prepare_cached(
        "UPDATE task SET status = ?1, active_leases = 0, error_message = ?2, finished_at = ?3,
             failure_reason = ?4
         WHERE id = ?5",
    )?
    .execute(params![
        status.as_str(),
        message,
        ctx.now,
        reason.map(FailureReason::as_str),
        tid
    ])?;
    if task.gold.is_none() {
        ctx.effects.push(Effect::Finished(TaskEvent {
            error_message: Some(message),
            failure_reason: reason,
            ..TaskEvent::new(task.id, status, from_ms(ctx.now))
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_columns_are_counted() {
        assert_eq!(TASK_COLUMNS.matches(',').count() + 1, TASK_COLUMN_COUNT);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh in-memory store and helpers shared by the operation tests.

    use super::*;
    use crate::store::sql::Dialect;
    use protocol::messages::{
        Lease, LeaseReply, LeaseRequest, NewTask, SubmitReply, SubmitRequest, TaskAddRequest,
    };

    /// Each scenario named, a function of a [`TestStore`], as a test of its own on SQLite, and
    /// all of them on one PostgreSQL server (a fresh set of tables each).
    macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(crate::ops::testing::TestStore::sqlite());
                }
            )*
        }

        #[test]
        fn every_scenario_on_postgres() {
            let server = crate::ops::testing::PgServer::start();
            $(
                eprintln!("postgres: {}", stringify!($name));
                $name(server.fresh());
            )*
        }
    };
}
    pub(crate) use on_both_engines;

    /// A store for operation tests, on either engine.
    pub(crate) enum TestStore {
        Sqlite(rusqlite::Connection),
        Postgres(Box<PgTest>),
    }

    /// A session on a test server's database, emptied when made.
    pub(crate) struct PgTest {
        client: std::cell::RefCell<postgres::Client>,
        cache: std::cell::RefCell<crate::store::sql::StmtCache>,
    }

    /// What the operation tests' helpers run on: a store that runs a closure in a transaction
    /// (committed on `Ok`), and is itself a [`Sql`] in autocommit mode (each statement commits
    /// as it runs) for reads and for [`send`].
    pub(crate) trait TestDb: Sql {
        fn write<T, E>(&mut self, f: impl FnOnce(&dyn Sql) -> Result<T, E>) -> Result<T, E>;
    }

    impl TestDb for rusqlite::Connection {
        fn write<T, E>(&mut self, f: impl FnOnce(&dyn Sql) -> Result<T, E>) -> Result<T, E> {
            let tx = self.transaction().expect("tx");
            let r = f(&tx);
            if r.is_ok() {
                tx.commit().expect("commit");
            }
            r
        }
    }

    impl TestDb for TestStore {
        fn write<T, E>(&mut self, f: impl FnOnce(&dyn Sql) -> Result<T, E>) -> Result<T, E> {
            match self {
                TestStore::Sqlite(conn) => conn.write(f),
                TestStore::Postgres(pg) => {
                    let mut client = pg.client.borrow_mut();
                    let mut tx = client.transaction().expect("tx");
                    let r = f(&crate::store::sql::Pg::new(&mut tx, &pg.cache));
                    if r.is_ok() {
                        tx.commit().expect("commit");
                    }
                    r
                }
            }
        }
    }

    impl PgTest {
        /// This session in autocommit mode.
        fn autocommit<T>(&self, f: impl FnOnce(&dyn Sql) -> T) -> T {
            let mut client = self.client.borrow_mut();
            f(&crate::store::sql::Pg::new(&mut *client, &self.cache))
        }
    }

    impl Sql for TestStore {
        fn dialect(&self) -> Dialect {
            match self {
                TestStore::Sqlite(_) => Dialect::Sqlite,
                TestStore::Postgres(_) => Dialect::Postgres,
            }
        }

        fn exec(
            &self,
            sql: &str,
            args: &[crate::store::sql::ValueRef<'_>],
        ) -> crate::store::sql::Result<usize> {
            match self {
                TestStore::Sqlite(c) => c.exec(sql, args),
                TestStore::Postgres(pg) => pg.autocommit(|c| c.exec(sql, args)),
            }
        }

        fn rows(
            &self,
            sql: &str,
            args: &[crate::store::sql::ValueRef<'_>],
            each: &mut dyn FnMut(&Row<'_>) -> crate::store::sql::Result<bool>,
        ) -> crate::store::sql::Result<()> {
            match self {
                TestStore::Sqlite(c) => c.rows(sql, args, each),
                TestStore::Postgres(pg) => pg.autocommit(|c| c.rows(sql, args, each)),
            }
        }

        fn exec_batch(&self, sql: &str) -> crate::store::sql::Result<()> {
            match self {
                TestStore::Sqlite(c) => c.exec_batch(sql),
                TestStore::Postgres(pg) => pg.autocommit(|c| c.exec_batch(sql)),
            }
        }
    }

    /// A PostgreSQL server for operation tests, schema migrated once.
    pub(crate) struct PgServer {
        _server: test_support::Postgres,
        url: String,
    }

    impl PgServer {
        pub(crate) fn start() -> Self {
            let server = test_support::Postgres::start();
            let url = server.url();
            crate::store::pg::PgStore::open(&url, "ops-test", Default::default()).expect("migrate");
            Self {
                _server: server,
                url,
            }
        }

        /// The server's URL.
        pub(crate) fn url(&self) -> &str {
            &self.url
        }

        /// A session on the database with every table emptied.
        pub(crate) fn fresh(&self) -> TestStore {
            let mut client =
                postgres::Client::connect(&self.url, postgres::NoTls).expect("connect");
            client
                .batch_execute(
                    "TRUNCATE task, lease, submission, worker, worker_score, worker_token,
                     verification, gold, gold_answer, task_batch, health_probe, score_delta, lease_cursor
                     RESTART IDENTITY CASCADE",
                )
                .expect("truncate");
            TestStore::Postgres(Box::new(PgTest {
                client: std::cell::RefCell::new(client),
                cache: std::cell::RefCell::default(),
            }))
        }
    }

    impl TestStore {
        pub(crate) fn sqlite() -> Self {
            TestStore::Sqlite(store())
        }

        /// See `Sql::query_row`, in autocommit mode.
        pub(crate) fn query_row<P: crate::store::sql::Params, T>(
            &self,
            sql: &str,
            p: P,
            f: impl FnOnce(&Row<'_>) -> crate::store::sql::Result<T>,
        ) -> crate::store::sql::Result<T> {
            (self as &dyn Sql).query_row(sql, p, f)
        }
    }

    pub(crate) fn store() -> rusqlite::Connection {
        let mut conn = rusqlite::Connection::open_in_memory().expect("in-memory sqlite");
        crate::store::prepare(&mut conn).expect("schema");
        conn
    }

    pub(crate) fn settings() -> Settings {
        Settings {
            lease_ms: 10_000,
            heartbeat_ttl_ms: 6_000,
            max_attempts_default: 3,
            // Traps and gold are random: tests that want them ask for them.
            trap_rate: 0.0,
            gold_rate: 0.0,
            ..Settings::default()
        }
    }

    pub(crate) fn ctx(now: i64) -> Ctx {
        Ctx::new(now, settings())
    }

    pub(crate) fn wid(s: &str) -> WorkerId {
        WorkerId::new(s).expect("worker id")
    }

    pub(crate) fn add(conn: &mut impl TestDb, now: i64, task: NewTask) -> TaskId {
        let reply = conn
            .write(|tx| {
                task_add::run(
                    tx,
                    &mut ctx(now),
                    TaskAddRequest {
                        batch_id: None,
                        tasks: vec![task],
                    },
                )
            })
            .expect("task add");
        reply.task_ids[0]
    }

    /// Runs a lease request in a transaction of its own and commits it.
    pub(crate) fn lease(conn: &mut impl TestDb, now: i64, req: LeaseRequest) -> LeaseReply {
        conn.write(|tx| lease::run(tx, &mut ctx(now), req))
            .expect("lease")
    }

    pub(crate) fn lease_req(worker: &str, max: u32) -> LeaseRequest {
        LeaseRequest {
            worker_id: wid(worker),
            capabilities: vec![TaskType::sentiment()],
            max_tasks: max,
            task_id: None,
            model: Some("test".into()),
            model_hash: None,
        }
    }

    pub(crate) fn dump(conn: &dyn Sql) -> String {
        crate::store::dump(conn).expect("dump")
    }

    /// One lease for `worker` on a `sentiment` task, if any.
    pub(crate) fn take(conn: &mut impl TestDb, now: i64, worker: &str) -> Vec<Lease> {
        lease(conn, now, lease_req(worker, 1)).leases
    }

    /// Runs a submission in autocommit mode: every statement commits as it runs, so a refusal
    /// that wrote anything before refusing leaves it in the store for the tests to see (in the
    /// coordinator it would be rolled back).
    pub(crate) fn send(
        conn: &mut impl TestDb,
        now: i64,
        task: &TaskId,
        req: SubmitRequest,
    ) -> (Result<SubmitReply, CoreError>, Vec<Effect>) {
        let mut c = ctx(now);
        let r = submit::run(conn, &mut c, task, req);
        (r, c.effects)
    }

    /// A label answer on `lease`.
    pub(crate) fn answer(
        lease: &Lease,
        worker: &str,
        label: &str,
        confidence: f64,
    ) -> SubmitRequest {
        vote(lease.lease_id, wid(worker), label, confidence)
    }

    /// A label answer on lease `lease_id`.
    pub(crate) fn vote(
        lease_id: LeaseId,
        worker_id: WorkerId,
        label: impl Into<String>,
        confidence: f64,
    ) -> SubmitRequest {
        SubmitRequest {
            lease_id,
            worker_id,
            label: label.into(),
            embedding: None,
            generation: None,
            verification: None,
            confidence,
            model: None,
            model_hash: None,
        }
    }

    /// `worker`'s points.
    pub(crate) fn points(conn: &dyn Sql, worker: &str) -> i64 {
        conn.query_row(
            "SELECT COALESCE((SELECT points FROM worker_score WHERE worker_id = ?1), 0)
                  + CAST(COALESCE((SELECT SUM(points) FROM score_delta WHERE worker_id = ?1), 0) AS BIGINT)",
            [worker],
            |r| r.get(0),
        )
        .expect("points")
    }
}
