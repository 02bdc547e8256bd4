//! PostgreSQL's vote: the read a submission starts with (locking its task row, checking the row
//! is the snapshot's, carrying the answers so far to the vote that completes the count), the
//! same read for a whole batch, and the vote and label decision as changes a writer session
//! merges.

use crate::store::rows::TASK_COLUMNS;
use crate::store::sql::{numbered, Merged, Params, Result, Sql, ToArg, ValueRef};
use crate::store::tx::votes::{answer_select, insert_vote_sql, vote_columns, VOTE_COLUMNS};
use std::sync::LazyLock;

/// The answers so far, for the vote that completes the count (a statement fewer for it).
const VOTES: &str = "CASE WHEN task.submissions + 1 >= task.required THEN
         (SELECT CAST(json_agg(json_build_array(v.label, CAST(v.confidence AS TEXT))
                               ORDER BY v.id) AS TEXT)
          FROM submission v WHERE v.task_id = task.id)
     END";

/// Whether the task row locked is the one this statement's snapshot has: a row another
/// transaction changed and committed while this one waited for its lock is read again as it
/// now is, but the rows joined to it (and the answers) are still as the snapshot had them.
const FRESH: &str = "task.xmin = (SELECT t.xmin FROM task t WHERE t.id = task.id)";

/// [`crate::store::tx::Votes::answer_context`]'s statement: task `$1`, worker `$2`, lease `$3`.
pub(crate) fn answer_sql() -> &'static str {
    static ONE: LazyLock<String> = LazyLock::new(|| answer_select(VOTES, FRESH, super::LOCK));
    &ONE
}

/// [`answer_sql`] for a batch of submissions (see [`crate::store::Probe`]): `$1`, `$2` and `$3`
/// are arrays of tasks, workers and leases. Each request in turn, in the order the writer sorts
/// its batches by (their keys, as bytes), so the task rows are locked in that order; each row
/// found by its key (lateral subqueries: a plan made while the tables are empty would otherwise
/// join by hashing whole tables, and keep doing so).
pub(crate) fn answer_many_sql() -> &'static str {
    static MANY: LazyLock<String> = LazyLock::new(|| {
        let lock = super::LOCK;
        format!(
            "SELECT task.*, s.lease_id, s.label, s.embedding, s.token_ids,
                    l.task_id, l.worker_id, l.state, r.i
             FROM (SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]),
                                        CAST($3 AS TEXT[]))
                       WITH ORDINALITY AS u (task_id, worker_id, lease_id, i)
                   ORDER BY task_id COLLATE \"C\", i) r
             JOIN LATERAL (SELECT {TASK_COLUMNS}, {VOTES}, {FRESH} FROM task
                           WHERE task.id = r.task_id{lock}) task ON TRUE
             LEFT JOIN LATERAL (SELECT lease_id, label, embedding, token_ids FROM submission
                                WHERE task_id = r.task_id AND worker_id = r.worker_id
                                OFFSET 0) s ON TRUE
             LEFT JOIN LATERAL (SELECT task_id, worker_id, state FROM lease
                                WHERE id = r.lease_id OFFSET 0) l ON TRUE"
        )
    });
    &MANY
}

/// Statements that do not depend on one another, sent as one (all but the last as
/// data-modifying `WITH` terms, see [`with_terms`]): one execution instead of several, whose
/// parts all see the rows as they were before any of them.
///
/// # Errors
/// The server's, now or from the next statement on.
pub(crate) fn defer_all(conn: &dyn Sql, stmts: &[(&str, &[&dyn ToArg])]) -> Result<()> {
    let texts: Vec<(&str, usize)> = stmts.iter().map(|(s, a)| (*s, a.len())).collect();
    let args: Vec<ValueRef<'_>> = stmts.iter().flat_map(|(_, a)| a.args()).collect();
    conn.defer(&with_terms(&texts), &args)
}

/// A vote's changes: its submission row, its lease completed, the task's counters. Arguments:
/// the submission's columns, in [`VOTE_COLUMNS`]' order. A writer session merges a batch's votes
/// into one statement; elsewhere they are one statement each.
pub(crate) static VOTE: Merged = Merged {
    one: |conn, a| {
        let all: Vec<&dyn ToArg> = a.iter().map(|v| v as &dyn ToArg).collect();
        // Three rows of three tables: one statement.
        defer_all(
            conn,
            &[
                (insert_vote_sql(), &all),
                (
                    "UPDATE lease SET state = 'completed', ended_at = $1 WHERE id = $2",
                    &[&a[6], &a[2]],
                ),
                (
                    "UPDATE task SET
                     submissions = submissions + 1,
                     active_leases = active_leases - 1
                 WHERE id = $1",
                    &[&a[0]],
                ),
            ],
        )
    },
    // One statement for the batch's votes, joined by key (writer sessions plan without
    // sequential scans: see `WRITER_SETTINGS` in store::postgres).
    many: |n| {
        let columns = vote_columns();
        let rows = typed_rows(n, &VOTE_COLUMNS.map(|(_, ty)| ty));
        format!(
            "WITH v ({columns}) AS (VALUES {rows}),
             s AS (INSERT INTO submission ({columns}) SELECT {columns} FROM v),
             l AS (UPDATE lease SET state = 'completed', ended_at = v.created_at
                   FROM v WHERE lease.id = v.lease_id)
             UPDATE task SET submissions = submissions + 1, active_leases = active_leases - 1
             FROM v WHERE task.id = v.task_id"
        )
    },
    // Each task once in a statement: the update joined to it counts one vote.
    distinct: 0,
    phase: 0,
};

/// [`super::award_sql`] for the submissions whose label is `$2`, made once.
static AWARD_BY_LABEL: LazyLock<String> = LazyLock::new(|| super::award_sql("label = $2"));

/// A label task decided: its final label and confidence, the agreement flags, a point to each
/// worker in the winning group. Arguments: task, label, confidence, time. A writer session
/// merges a batch's decisions into one statement, made after the batch's votes ([`VOTE`], a
/// lower phase), so they see the deciding answers.
pub(crate) static DECIDED: Merged = Merged {
    one: |conn, a| {
        defer_all(
            conn,
            &[
                (
                    "UPDATE task SET status = 'finalized', final_label = $1, final_confidence = $2,
                     finished_at = $3, inconclusive = 0
                 WHERE id = $4",
                    &[&a[1], &a[2], &a[3], &a[0]],
                ),
                (
                    "UPDATE submission SET agreed = CASE WHEN label = $1 THEN 1 ELSE 0 END
                 WHERE task_id = $2",
                    &[&a[1], &a[0]],
                ),
                // By label, not by the flag set beside it (which this statement would not see).
                (&AWARD_BY_LABEL, &[&a[0], &a[1]]),
            ],
        )
    },
    // One statement for the batch's decisions, joined by key (see VOTE).
    many: |n| {
        let rows = typed_rows(n, &["TEXT", "TEXT", "DOUBLE PRECISION", "BIGINT"]);
        format!(
            "WITH d (task_id, label, confidence, at) AS (VALUES {rows}),
             a AS (UPDATE submission SET agreed = CASE WHEN submission.label = d.label
                                                       THEN 1 ELSE 0 END
                   FROM d WHERE submission.task_id = d.task_id),
             p AS (INSERT INTO score_delta (worker_id, points)
                   SELECT s.worker_id, 1 FROM submission s
                   JOIN d ON s.task_id = d.task_id AND s.label = d.label)
             UPDATE task SET status = 'finalized', final_label = d.label,
                 final_confidence = d.confidence, finished_at = d.at, inconclusive = 0
             FROM d WHERE task.id = d.task_id"
        )
    },
    // Each task once in a statement: the update joined to it decides it once.
    distinct: 0,
    phase: 1,
};

/// Statements, each with its count of parameters (`$1`..`?n`, every one used), as one: all
/// but the last become `WITH` terms, and each one's parameters are numbered after those of the
/// statements before it. PostgreSQL runs every data-modifying `WITH` term once, whether or not
/// the rest of the statement reads it.
pub(crate) fn with_terms(stmts: &[(&str, usize)]) -> String {
    let mut offset = 0;
    let mut parts: Vec<String> = stmts
        .iter()
        .map(|(sql, params)| {
            let by = offset;
            offset += params;
            each_param(sql, |n| match n.parse::<usize>() {
                Ok(n) => format!("${}", n + by),
                Err(_) => format!("${n}"),
            })
        })
        .collect();
    let Some(last) = parts.pop() else {
        return String::new();
    };
    if parts.is_empty() {
        return last;
    }
    let terms: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, sql)| format!("w{i} AS ({sql})"))
        .collect();
    format!("WITH {} {last}", terms.join(", "))
}

/// `sql` with each parameter outside quotes (`$` and the digits after it) replaced by what `f`
/// makes of its digits.
fn each_param(sql: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted || !chars.peek().is_some_and(char::is_ascii_digit) {
            out.push(c);
            continue;
        }
        let mut n = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            n.push(d);
        }
        out.push_str(&f(&n));
    }
    out
}

/// `n` rows of parameters, numbered on from 1, the first row's cast to `types`.
pub(crate) fn typed_rows(n: usize, types: &[&str]) -> String {
    let w = types.len();
    let first: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("CAST(${} AS {ty})", i + 1))
        .collect();
    let mut rows = vec![format!("({})", first.join(", "))];
    rows.extend((1..n).map(|k| format!("({})", numbered(k * w + 1, w))));
    rows.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_become_with_terms_with_their_parameters_numbered_on() {
        assert_eq!(
            with_terms(&[
                ("INSERT INTO a (x, y) VALUES ($1, $2)", 2),
                ("UPDATE b SET s = '$1' WHERE id = $1", 1),
                ("UPDATE c SET n = n + 1 WHERE id = $1 AND k = $2", 2),
            ]),
            "WITH w0 AS (INSERT INTO a (x, y) VALUES ($1, $2)), \
             w1 AS (UPDATE b SET s = '$1' WHERE id = $3) \
             UPDATE c SET n = n + 1 WHERE id = $4 AND k = $5"
        );
        assert_eq!(
            with_terms(&[("DELETE FROM a WHERE id = $1", 1)]),
            "DELETE FROM a WHERE id = $1"
        );
    }
}
