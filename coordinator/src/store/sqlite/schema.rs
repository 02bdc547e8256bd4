//! The schema and its migrations, tracked in `PRAGMA user_version`.
//!
//! `task` keeps counters (`active_leases`, `submissions`) next to `required`, so "does this task
//! still need workers?" is a column comparison that the partial index `task_open` answers in FIFO
//! order without touching other tables.

use crate::error::StoreError;
use rusqlite::Connection;

/// Each entry takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE task (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    type             TEXT    NOT NULL,
    text             TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('queued', 'assigned', 'finalized', 'failed')),
    required         INTEGER NOT NULL CHECK (required >= 1),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    attempts         INTEGER NOT NULL DEFAULT 0,
    active_leases    INTEGER NOT NULL DEFAULT 0 CHECK (active_leases >= 0),
    submissions      INTEGER NOT NULL DEFAULT 0 CHECK (submissions >= 0),
    final_label      TEXT,
    final_confidence REAL,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    CHECK (active_leases + submissions <= required)
);
CREATE INDEX task_open ON task (type, seq)
    WHERE status IN ('queued', 'assigned') AND required > active_leases + submissions;
CREATE INDEX task_status ON task (status, seq);

CREATE TABLE worker (
    id            TEXT    PRIMARY KEY,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'stale', 'offline')),
    capabilities  TEXT    NOT NULL,
    model         TEXT,
    last_seen     INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);

CREATE TABLE lease (
    id         TEXT    PRIMARY KEY,
    task_id    TEXT    NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    worker_id  TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('active', 'completed', 'expired', 'released', 'cancelled')),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    ended_at   INTEGER
);
CREATE UNIQUE INDEX lease_live_once ON lease (task_id, worker_id) WHERE state = 'active';
CREATE INDEX lease_live_by_worker ON lease (worker_id) WHERE state = 'active';
CREATE INDEX lease_live_by_expiry ON lease (expires_at) WHERE state = 'active';
CREATE INDEX lease_by_task ON lease (task_id);

CREATE TABLE submission (
    id         INTEGER PRIMARY KEY,
    task_id    TEXT    NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    worker_id  TEXT    NOT NULL,
    lease_id   TEXT    NOT NULL,
    label      TEXT    NOT NULL,
    confidence REAL    NOT NULL,
    model      TEXT,
    agreed     INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (task_id, worker_id)
);
CREATE INDEX submission_by_worker ON submission (worker_id);

CREATE TABLE worker_score (
    worker_id TEXT    PRIMARY KEY,
    points    INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
CREATE TABLE worker_token (
    worker_id  TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- One row, rewritten by /health after a failed write, to learn whether writes work again.
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
"#,
    r#"
-- Task types beyond labels: zero-shot tasks carry their candidate labels (a JSON array),
-- embedding tasks their agreement threshold and, once finalized, the consensus vector.
-- Vectors are little-endian f32 blobs; an embedding submission's label is ''.
ALTER TABLE task ADD COLUMN labels TEXT;
ALTER TABLE task ADD COLUMN similarity REAL;
ALTER TABLE task ADD COLUMN final_embedding BLOB;
ALTER TABLE submission ADD COLUMN embedding BLOB;
"#,
    r#"
-- Open tasks by type and votes required: the starved-task check reads the largest `required`
-- of a type, and the tasks that need more workers than are live, without scanning the queue.
CREATE INDEX task_open_required ON task (type, required) WHERE status IN ('queued', 'assigned');
"#,
    r#"
-- Generative tasks: the spec each pins (JSON) and its model hash (what leases are routed by),
-- the agreed token ids (little-endian u32 blob) and their text. Submissions keep their ids,
-- text, log-probabilities (f32 blob) and the model hash they ran; workers the hash they serve.
-- A failed task says why: its attempts ran out, or its answers reached no consensus.
ALTER TABLE task ADD COLUMN generation TEXT;
ALTER TABLE task ADD COLUMN model_hash TEXT;
ALTER TABLE task ADD COLUMN final_token_ids BLOB;
ALTER TABLE task ADD COLUMN final_text TEXT;
ALTER TABLE task ADD COLUMN failure_reason TEXT
    CHECK (failure_reason IN ('max_attempts', 'no_consensus'));
UPDATE task SET failure_reason = 'max_attempts' WHERE status = 'failed';
ALTER TABLE submission ADD COLUMN token_ids BLOB;
ALTER TABLE submission ADD COLUMN text TEXT;
ALTER TABLE submission ADD COLUMN logprobs BLOB;
ALTER TABLE submission ADD COLUMN model_hash TEXT;
ALTER TABLE worker ADD COLUMN model_hash TEXT;
"#,
    r#"
-- Cross-scoring of generative answers. A task in verification (`verifying`) has, per distinct
-- candidate answer, `verifiers` rows to be leased to distinct other workers (the candidate's
-- authors never score it); a trap row is a corrupted copy of a candidate handed to one verifier
-- in place of the real one, judged against the known answer (it must fail) and never voted.
-- A verify lease names its row; it does not count in the task's generation slots.
ALTER TABLE task ADD COLUMN verifying INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task ADD COLUMN verifiers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE lease ADD COLUMN verification INTEGER;
ALTER TABLE worker_score ADD COLUMN traps_caught INTEGER NOT NULL DEFAULT 0;
ALTER TABLE worker_score ADD COLUMN traps_missed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE verification (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT    NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    candidate   INTEGER NOT NULL REFERENCES submission (id),
    token_ids   BLOB    NOT NULL,
    trap        TEXT    CHECK (trap IN ('swap', 'other_answer')),
    state       TEXT    NOT NULL CHECK (state IN ('open', 'leased', 'done', 'lapsed')),
    worker_id   TEXT,
    lease_id    TEXT,
    passed      INTEGER,
    logprobs    BLOB,
    gaps        BLOB,
    agreed      INTEGER,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX verification_open ON verification (task_id, id) WHERE state = 'open';
CREATE INDEX verification_by_task ON verification (task_id, candidate);
CREATE UNIQUE INDEX verification_by_lease ON verification (lease_id);
"#,
    r#"
-- Votes that mean something. The task table is rebuilt (SQLite cannot widen a CHECK) to take:
-- status `cancelled`; the vote rule (`policy`, `min_quorum`, `max_answers`; tasks created before
-- keep the majority rule they were added under); `asked`, the answers the client asked for
-- (`required` grows by one per inconclusive round, a generate-once task's starts at one);
-- `inconclusive`, set while more replicas run after a round without a quorum; `distinct_models`
-- (at most one counted answer per model hash); and `gold`, the known-answer item a gold task
-- is an instance of (one per lease, so a gold task id is as fresh as any other).
CREATE TABLE gold (
    id         INTEGER PRIMARY KEY,
    type       TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    labels     TEXT,
    generation TEXT,
    model_hash TEXT,
    answer     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX gold_once ON gold (type, text, coalesce(labels, ''));
CREATE INDEX gold_by_type ON gold (type, id);
CREATE TABLE task_rebuilt (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    type             TEXT    NOT NULL,
    text             TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('queued', 'assigned', 'finalized', 'failed', 'cancelled')),
    required         INTEGER NOT NULL CHECK (required >= 1),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    attempts         INTEGER NOT NULL DEFAULT 0,
    active_leases    INTEGER NOT NULL DEFAULT 0 CHECK (active_leases >= 0),
    submissions      INTEGER NOT NULL DEFAULT 0 CHECK (submissions >= 0),
    final_label      TEXT,
    final_confidence REAL,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    labels           TEXT,
    similarity       REAL,
    final_embedding  BLOB,
    generation       TEXT,
    model_hash       TEXT,
    final_token_ids  BLOB,
    final_text       TEXT,
    failure_reason   TEXT CHECK (failure_reason IN ('max_attempts', 'no_consensus')),
    verifying        INTEGER NOT NULL DEFAULT 0,
    verifiers        INTEGER NOT NULL DEFAULT 0,
    asked            INTEGER NOT NULL,
    policy           TEXT    NOT NULL DEFAULT 'quorum' CHECK (policy IN ('quorum', 'majority')),
    min_quorum       INTEGER NOT NULL DEFAULT 1 CHECK (min_quorum >= 1),
    max_answers      INTEGER NOT NULL,
    inconclusive     INTEGER NOT NULL DEFAULT 0,
    distinct_models  INTEGER NOT NULL DEFAULT 0,
    gold             INTEGER REFERENCES gold (id),
    CHECK (active_leases + submissions <= required),
    CHECK (required <= max_answers)
);
INSERT INTO task_rebuilt (seq, id, type, text, status, required, max_attempts, attempts,
    active_leases, submissions, final_label, final_confidence, error_message, created_at,
    finished_at, labels, similarity, final_embedding, generation, model_hash, final_token_ids,
    final_text, failure_reason, verifying, verifiers, asked, policy, min_quorum, max_answers)
SELECT seq, id, type, text, status, required, max_attempts, attempts, active_leases,
    submissions, final_label, final_confidence, error_message, created_at, finished_at, labels,
    similarity, final_embedding, generation, model_hash, final_token_ids, final_text,
    failure_reason, verifying, verifiers,
    CASE WHEN generation IS NOT NULL THEN max(verifiers + 1, required) ELSE required END,
    'majority', 1, max(required, verifiers + 1)
FROM task;
DROP TABLE task;
ALTER TABLE task_rebuilt RENAME TO task;
CREATE INDEX task_open ON task (type, seq)
    WHERE status IN ('queued', 'assigned') AND required > active_leases + submissions;
CREATE INDEX task_status ON task (status, gold, seq);
CREATE INDEX task_open_required ON task (type, required) WHERE status IN ('queued', 'assigned');
CREATE INDEX task_by_gold ON task (gold) WHERE gold IS NOT NULL;

-- Every gold answer, checked against the known one: accuracy per worker and per model.
CREATE TABLE gold_answer (
    id         INTEGER PRIMARY KEY,
    gold_id    INTEGER NOT NULL REFERENCES gold (id) ON DELETE CASCADE,
    task_id    TEXT    NOT NULL,
    worker_id  TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    model      TEXT,
    model_hash TEXT,
    answer     TEXT    NOT NULL,
    correct    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX gold_answer_by_worker ON gold_answer (worker_id, id);
CREATE INDEX gold_answer_by_gold ON gold_answer (gold_id, worker_id);
ALTER TABLE worker_score ADD COLUMN gold_answered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE worker_score ADD COLUMN gold_right INTEGER NOT NULL DEFAULT 0;
-- Why a worker is quarantined (it gets only gold), while it is.
ALTER TABLE worker ADD COLUMN quarantine TEXT;
"#,
    r#"
-- Idempotent task.add: a batch id the client chose, the SHA-256 of the tasks it carried, and
-- the ids created for them, so a retried batch gets the same ids and creates nothing.
CREATE TABLE task_batch (
    id         TEXT    PRIMARY KEY,
    digest     TEXT    NOT NULL,
    task_ids   TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- Points awarded but not yet folded into worker_score (PostgreSQL appends here instead of
-- updating every finalization's hot score rows; the sweeper folds them in). Empty on SQLite,
-- which updates worker_score directly; readers add both.
CREATE TABLE score_delta (
    id        INTEGER PRIMARY KEY,
    worker_id TEXT    NOT NULL,
    points    INTEGER NOT NULL
);
CREATE INDEX score_delta_by_worker ON score_delta (worker_id);
"#,
    r#"
-- An open task is stored `queued` whether or not it is leased: `assigned` is read off its live
-- leases (`active_leases > 0`), so a lease or a vote no longer rewrites the status column (on
-- PostgreSQL, that lets them update the row in place, see its schema).
UPDATE task SET status = 'queued' WHERE status = 'assigned';
"#,
    r#"
-- Every per-worker counter has its column here, as on PostgreSQL, where all of them are
-- appended (store::tx::Scores); still empty on SQLite.
ALTER TABLE score_delta ADD COLUMN traps_caught INTEGER NOT NULL DEFAULT 0;
ALTER TABLE score_delta ADD COLUMN traps_missed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE score_delta ADD COLUMN gold_answered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE score_delta ADD COLUMN gold_right INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- The posterior policy (store::tx::truth). The task table is rebuilt (SQLite cannot widen a
-- CHECK) to take policy `posterior`, the posterior a task needs (`threshold`) and the one its
-- answers last reached (`posterior`), and the worker whose lone answer finalized it unchecked
-- (`lone_worker`, re-replicated if that worker is caught wrong). Each answer's weight (the
-- log-odds that it is right, as calibrated); when a worker was last caught wrong while trusted
-- (its record starts over then); and each model content's gold record by task type, label and
-- confidence bin: the calibration.
CREATE TABLE task_rebuilt (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    type             TEXT    NOT NULL,
    text             TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('queued', 'assigned', 'finalized', 'failed', 'cancelled')),
    required         INTEGER NOT NULL CHECK (required >= 1),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    attempts         INTEGER NOT NULL DEFAULT 0,
    active_leases    INTEGER NOT NULL DEFAULT 0 CHECK (active_leases >= 0),
    submissions      INTEGER NOT NULL DEFAULT 0 CHECK (submissions >= 0),
    final_label      TEXT,
    final_confidence REAL,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    labels           TEXT,
    similarity       REAL,
    final_embedding  BLOB,
    generation       TEXT,
    model_hash       TEXT,
    final_token_ids  BLOB,
    final_text       TEXT,
    failure_reason   TEXT CHECK (failure_reason IN ('max_attempts', 'no_consensus')),
    verifying        INTEGER NOT NULL DEFAULT 0,
    verifiers        INTEGER NOT NULL DEFAULT 0,
    asked            INTEGER NOT NULL,
    policy           TEXT    NOT NULL DEFAULT 'quorum'
        CHECK (policy IN ('quorum', 'majority', 'posterior')),
    min_quorum       INTEGER NOT NULL DEFAULT 1 CHECK (min_quorum >= 1),
    max_answers      INTEGER NOT NULL,
    inconclusive     INTEGER NOT NULL DEFAULT 0,
    distinct_models  INTEGER NOT NULL DEFAULT 0,
    gold             INTEGER REFERENCES gold (id),
    threshold        REAL,
    posterior        REAL,
    lone_worker      TEXT,
    CHECK (active_leases + submissions <= required),
    CHECK (required <= max_answers)
);
INSERT INTO task_rebuilt (seq, id, type, text, status, required, max_attempts, attempts,
    active_leases, submissions, final_label, final_confidence, error_message, created_at,
    finished_at, labels, similarity, final_embedding, generation, model_hash, final_token_ids,
    final_text, failure_reason, verifying, verifiers, asked, policy, min_quorum, max_answers,
    inconclusive, distinct_models, gold)
SELECT seq, id, type, text, status, required, max_attempts, attempts,
    active_leases, submissions, final_label, final_confidence, error_message, created_at,
    finished_at, labels, similarity, final_embedding, generation, model_hash, final_token_ids,
    final_text, failure_reason, verifying, verifiers, asked, policy, min_quorum, max_answers,
    inconclusive, distinct_models, gold FROM task;
DROP TABLE task;
ALTER TABLE task_rebuilt RENAME TO task;
CREATE INDEX task_open ON task (type, seq)
    WHERE status IN ('queued', 'assigned') AND required > active_leases + submissions;
CREATE INDEX task_status ON task (status, gold, seq);
CREATE INDEX task_open_required ON task (type, required) WHERE status IN ('queued', 'assigned');
CREATE INDEX task_by_gold ON task (gold) WHERE gold IS NOT NULL;
CREATE INDEX task_lone_worker ON task (lone_worker) WHERE lone_worker IS NOT NULL;
ALTER TABLE submission ADD COLUMN weight REAL;
ALTER TABLE worker ADD COLUMN caught_at INTEGER;
CREATE TABLE calibration (
    model_hash TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    label      TEXT    NOT NULL,
    bin        INTEGER NOT NULL,
    answered   INTEGER NOT NULL,
    correct    INTEGER NOT NULL,
    conf_sum   REAL    NOT NULL,
    sq_err     REAL    NOT NULL,
    PRIMARY KEY (model_hash, type, label, bin)
) WITHOUT ROWID;
"#,
    // What the OpenAI-compatible API shows of an answer: where each generated token's text
    // ends (u32 little-endian, as `token_ids`), and how many tokens the model read.
    "ALTER TABLE submission ADD COLUMN token_ends BLOB;
     ALTER TABLE submission ADD COLUMN input_tokens INTEGER;",
    // Whether a verifier's scoring was exact (every gap exactly 0 on a bit-invariant engine).
    "ALTER TABLE verification ADD COLUMN exact INTEGER;",
    // The posterior policy's confusion rows: per model content and label task type, its wrong
    // gold answers by answered label and true label; filled from the gold answers already
    // recorded (of the types the calibration counts).
    "CREATE TABLE confusion (
         model_hash TEXT    NOT NULL,
         type       TEXT    NOT NULL,
         answered   TEXT    NOT NULL,
         truth      TEXT    NOT NULL,
         answers    INTEGER NOT NULL,
         PRIMARY KEY (model_hash, type, answered, truth)
     ) WITHOUT ROWID;
     INSERT INTO confusion (model_hash, type, answered, truth, answers)
         SELECT COALESCE(a.model_hash, a.model, ''), a.type, a.answer, g.answer, COUNT(*)
         FROM gold_answer a JOIN gold g ON g.id = a.gold_id
         WHERE a.correct = 0 AND a.type IN (SELECT DISTINCT type FROM calibration)
         GROUP BY 1, 2, 3, 4;",
];

/// Tables of one connection (`temp`, in memory, gone when it closes), created when it opens.
///
/// `lease_cursor` remembers, per worker and task type, the FIFO position (`task.seq`) up to
/// which every open task is one the worker already holds a lease on or has answered, so the next
/// lease request starts walking `task_open` after it instead of skipping those tasks again (with
/// three workers and three votes per task, the fastest worker would otherwise skip everything the
/// slowest has not done, on every request). Any lease that ends without a result moves the
/// cursors of its task's type back before that task. Being a table, it commits and rolls back
/// with the operations that move it. `since` is when the cursor last started from the head
/// (PostgreSQL's cursors start over every `CURSOR_REFRESH_MS`, see `ops::lease`).
pub(crate) const CONNECTION_TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS lease_cursor (
    worker_id TEXT    NOT NULL,
    type      TEXT    NOT NULL,
    after     INTEGER NOT NULL,
    since     INTEGER NOT NULL,
    PRIMARY KEY (worker_id, type)
) WITHOUT ROWID;
";

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to [`VERSION`], one transaction per migration.
///
/// # Errors
/// [`StoreError::TooNew`] for a database from a newer build; SQLite errors otherwise.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            known: VERSION,
        });
    }
    if current == VERSION {
        return Ok(());
    }
    // A migration may rebuild a table that others reference: with foreign keys enforced, its
    // DROP would cascade to them. They are checked before each migration commits instead.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = (|| -> Result<(), StoreError> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            let broken: i64 =
                tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if broken > 0 {
                return Err(StoreError::Migration {
                    version: i as i64 + 1,
                    problem: format!("{broken} rows would break a foreign key"),
                });
            }
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "schema migrated");
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", "ON")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The confusion rows start from the wrong gold answers already recorded, of the label
    /// types the calibration counts, by model content (its hash, else its name).
    #[test]
    fn the_confusion_migration_counts_the_wrong_gold_answers_on_record() {
        let mut conn = Connection::open_in_memory().expect("sqlite");
        for sql in &MIGRATIONS[..MIGRATIONS.len() - 1] {
            conn.execute_batch(sql).expect("an older migration");
        }
        conn.pragma_update(None, "user_version", VERSION - 1)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO gold (id, type, text, labels, answer, created_at) VALUES
                 (1, 'zero-shot', 'x', '[\"a\",\"b\",\"c\"]', 'a', 0),
                 (2, 'zero-shot', 'y', '[\"a\",\"b\",\"c\"]', 'b', 0),
                 (3, 'summarization', 'z', NULL, 'a summary', 0);
             INSERT INTO gold_answer (gold_id, task_id, worker_id, type, model, model_hash,
                                      answer, correct, created_at) VALUES
                 (1, 't1', 'w1', 'zero-shot', 'm', 'h', 'c', 0, 0),
                 (1, 't2', 'w2', 'zero-shot', 'm', 'h', 'c', 0, 0),
                 (2, 't3', 'w1', 'zero-shot', 'm', 'h', 'c', 0, 0),
                 (2, 't4', 'w1', 'zero-shot', 'm', 'h', 'b', 1, 0),
                 (1, 't5', 'w3', 'zero-shot', 'named', NULL, 'b', 0, 0),
                 (3, 't6', 'w1', 'summarization', 'g', 'k', 'another', 0, 0);
             INSERT INTO calibration VALUES ('h', 'zero-shot', 'c', 9, 3, 0, 2.7, 2.43);",
        )
        .expect("gold on record");
        migrate(&mut conn).expect("migrate");
        let rows: Vec<(String, String, String, String, i64)> = conn
            .prepare("SELECT * FROM confusion ORDER BY 1, 3, 4")
            .expect("prepare")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let row =
            |m: &str, a: &str, t: &str, n| (m.into(), "zero-shot".into(), a.into(), t.into(), n);
        assert_eq!(
            rows,
            [
                row("h", "c", "a", 2),
                row("h", "c", "b", 1),
                row("named", "b", "a", 1)
            ]
        );
    }
}
