//! The due summary: "is anything due, and when next?" in one read, however
//! many tasks there are.
//!
//! Asking every task's [`Task::due`](crate::Task::due) costs a statement or
//! two per task, on every request's check and on every repository of a
//! sweep. So the answer is kept at write time instead, in one `config` row,
//! `backoffice-due`:
//!
//! ```text
//! 1 1796170000 9f2c4a61d05b7e18      version, "nothing due before" (Unix seconds), task fingerprint
//! 1 never 9f2c4a61d05b7e18           nothing due until something is written
//! ```
//!
//! * **Written by each run** (`record`), in the transaction that records
//!   the run and releases the lease, from the summarized tasks' own `due`
//!   read under the write lock, so nothing committed before it is missed.
//!   When a task is due at once (a retry waiting, more work than one run
//!   takes), no row is written: "ask the tasks".
//! * **Lowered by anything that makes work**, by deleting the row (a
//!   missing row means "ask the tasks"):
//!   * every event published, whoever inserts it, plain SQL from another
//!     language included: a trigger on `bo_event`;
//!   * every row inserted or changed in a table a task names in
//!     [`Task::due_watches`](crate::Task::due_watches) (subscribers, the
//!     outbox, hooks, endpoints, peers, the retry ledger): triggers, made
//!     with the table or by the first run that writes a summary;
//!   * any `config` row changed but the engine's own bookkeeping
//!     ([`ENGINE_ROWS`]: the lease, the run record…): a setting, a task's
//!     state, a hook list written by Fossil — a trigger on `config`.
//! * **Reached by the clock**: once "nothing due before T" has passed, the
//!   tasks are asked again. So work that becomes due with time (a digest,
//!   a retry, maintenance, a peer's interval) is found with nothing written.
//! * **Trusted only when it is ours**: a row that is missing, malformed,
//!   of another version, or written for another set of tasks (its
//!   fingerprint: an older or newer binary, a host with other tasks) means
//!   "ask the tasks". A task that does not name what makes it due (a
//!   host's own task, by default) is asked on every check, as before.
//!
//! The after-request check reads this row together with the lease in one
//! statement ([`CHECK_SQL`]); so does a sweep, on a connection opened only
//! for that. Hosts in other languages can run the same statement on the
//! connection they already have (see the README, "From any other
//! language").

use rusqlite::Connection;

use crate::task::{Due, Tasks};

/// The `config` row that holds the summary.
pub const ROW: &str = "backoffice-due";

/// The summary's format version (the first word of the row).
pub const VERSION: &str = "1";

/// The one statement the check (and any host) runs: the lease, the
/// disable switch and the due summary, in that order, each `NULL` when
/// absent. Stable: hosts in other languages may depend on it.
pub const CHECK_SQL: &str = "SELECT \
    (SELECT value FROM config WHERE name = 'backoffice'), \
    (SELECT value FROM config WHERE name = 'backoffice-disable'), \
    (SELECT value FROM config WHERE name = 'backoffice-due')";

/// The `config` rows the engine writes on its own behalf, in every run and
/// heartbeat: a change to any other row (a setting, a task's state, a
/// Fossil setting) lowers the summary. This row itself must be among them,
/// or writing the summary would delete it.
pub const ENGINE_ROWS: &[&str] = &[
    ROW,
    crate::engine::LEASE_ROW,
    crate::task::LAST_RUN_ROW,
    crate::task::TOTALS_ROW,
    crate::history::HISTORY_ROW,
    crate::writes::WRITE_EXPECTED,
    crate::writes::APP_GENERATION,
    crate::events::PURGE_ROW,
];

/// The triggers a watched table gets: any insert or update deletes the
/// summary. (Deleting a row never makes work due earlier.)
fn table_triggers(table: &str) -> String {
    format!(
        "CREATE TRIGGER IF NOT EXISTS \"bo_due_{table}_ins\" AFTER INSERT ON \"{table}\" \
           BEGIN DELETE FROM config WHERE name = '{ROW}'; END;\n\
         CREATE TRIGGER IF NOT EXISTS \"bo_due_{table}_upd\" AFTER UPDATE ON \"{table}\" \
           BEGIN DELETE FROM config WHERE name = '{ROW}'; END;"
    )
}

/// The triggers on `config`: a change to any row but the engine's own.
fn config_triggers() -> String {
    let rows = ENGINE_ROWS
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE TRIGGER IF NOT EXISTS bo_due_config_ins AFTER INSERT ON config \
           WHEN NEW.name NOT IN ({rows}) \
           BEGIN DELETE FROM config WHERE name = '{ROW}'; END;\n\
         CREATE TRIGGER IF NOT EXISTS bo_due_config_upd AFTER UPDATE ON config \
           WHEN NEW.name NOT IN ({rows}) \
           BEGIN DELETE FROM config WHERE name = '{ROW}'; END;"
    )
}

/// Makes writes to `table` lower the summary (idempotent). A task that
/// names `table` in its `due_watches` calls this where it creates the
/// table, in the same transaction; a run adds what is missing too. Does
/// nothing without a `config` table (no summary can be kept there).
pub fn watch(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    debug_assert!(
        table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    );
    if !table_exists(conn, "config")? {
        return Ok(());
    }
    conn.execute_batch(&table_triggers(table))
}

/// Deletes the summary: the next check asks the tasks. For a host whose
/// task's work arrives some other way than through a watched table.
pub fn lower(conn: &Connection) -> rusqlite::Result<()> {
    match conn.execute("DELETE FROM config WHERE name = ?1", [ROW]) {
        Ok(_) => Ok(()),
        Err(e) if crate::repo::is_no_such_table(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The summary's row value for `due` and the tasks' `fingerprint`.
fn encode(due: Due, fingerprint: &str) -> Option<String> {
    let t = match due {
        Due::Now => return None,
        Due::At(t) => t.to_string(),
        Due::Never => "never".to_owned(),
    };
    Some(format!("{VERSION} {t} {fingerprint}"))
}

/// What a stored summary says, for tasks with this `fingerprint`: the
/// earliest the summarized tasks may be due (`At(T)` or `Never`), or `None`
/// ("ask the tasks") when it is not ours or not well formed.
pub fn parse(value: Option<&str>, fingerprint: &str) -> Option<Due> {
    let mut words = value?.split(' ');
    if words.next()? != VERSION {
        return None;
    }
    let t = words.next()?;
    if words.next()? != fingerprint || words.next().is_some() {
        return None;
    }
    if t == "never" {
        return Some(Due::Never);
    }
    // Digits only: no sign, no spaces, nothing SQLite or a person might
    // have left.
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok().map(Due::At)
}

/// The tables every summary watches besides the tasks' own: the event log.
const ENGINE_WATCHES: &[&str] = &["bo_event"];

/// Writes the summary for `tasks` at `now`, inside the caller's write
/// transaction (the run's last). First makes sure every watched table that
/// exists has its triggers — a repository from before the summary, or a
/// table made by an older version — so that a summary is only ever written
/// where writes lower it. Tasks are asked under the write lock: nothing
/// committed before can be missed, and nothing can commit in between.
pub(crate) fn record(conn: &Connection, tasks: &Tasks, now: i64) -> rusqlite::Result<()> {
    let fingerprint = tasks.fingerprint();
    let Some(fp) = fingerprint.as_deref() else {
        // No task is summarized: nothing to keep.
        return lower(conn);
    };
    if !watched(conn, "config")? {
        conn.execute_batch(&config_triggers())?;
    }
    let mut tables: Vec<&str> = ENGINE_WATCHES.to_vec();
    tables.extend(tasks.due_watches());
    for t in tables {
        if table_exists(conn, t)? && !watched(conn, t)? {
            watch(conn, t)?;
        }
    }
    match encode(tasks.due_summarized(conn, now), fp) {
        Some(v) => crate::repo::config_set(conn, ROW, &v),
        None => lower(conn),
    }
}

fn table_exists(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .exists([table])
}

fn watched(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 \
               AND name IN ('bo_due_' || ?1 || '_ins', 'bo_due_' || ?1 || '_upd')",
        )?
        .query_row([table], |r| r.get(0))?;
    Ok(n == 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_statement_names_the_engine_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        for (name, v) in [
            (crate::engine::LEASE_ROW, "L"),
            (crate::settings::DISABLE, "D"),
            (ROW, "S"),
        ] {
            crate::repo::config_set(&conn, name, v).unwrap();
        }
        let got: (String, String, String) = conn
            .query_row(CHECK_SQL, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        assert_eq!(got, ("L".into(), "D".into(), "S".into()));
    }

    #[test]
    fn encode_and_parse_agree() {
        for d in [Due::At(0), Due::At(1_796_170_000), Due::Never] {
            let v = encode(d, "abc").unwrap();
            assert_eq!(parse(Some(&v), "abc"), Some(d), "{v}");
            assert_eq!(parse(Some(&v), "abd"), None, "another task set: {v}");
        }
        assert_eq!(encode(Due::Now, "abc"), None);
    }

    #[test]
    fn anything_else_means_ask_the_tasks() {
        for v in [
            "",
            "1",
            "1 5",
            "1 5 abc extra",
            "2 5 abc",
            "1 -5 abc",
            "1 +5 abc",
            "1 5.0 abc",
            "1  5 abc",
            "1 99999999999999999999 abc",
            "1 Never abc",
            "x 5 abc",
        ] {
            assert_eq!(parse(Some(v), "abc"), None, "{v:?}");
        }
        assert_eq!(parse(None, "abc"), None);
    }

    #[test]
    fn triggers_lower_the_summary_on_insert_and_update_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime);
             CREATE TABLE bo_thing(id INTEGER PRIMARY KEY, x);",
        )
        .unwrap();
        watch(&conn, "bo_thing").unwrap();
        watch(&conn, "bo_thing").unwrap();
        assert!(watched(&conn, "bo_thing").unwrap());
        let present = |conn: &Connection| -> bool {
            conn.query_row("SELECT count(*) FROM config WHERE name = ?1", [ROW], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
                == 1
        };
        let set = |conn: &Connection| crate::repo::config_set(conn, ROW, "1 never f").unwrap();
        set(&conn);
        conn.execute("INSERT INTO bo_thing(x) VALUES (1)", [])
            .unwrap();
        assert!(!present(&conn), "insert");
        set(&conn);
        conn.execute("UPDATE bo_thing SET x = 2", []).unwrap();
        assert!(!present(&conn), "update");
        set(&conn);
        conn.execute("DELETE FROM bo_thing", []).unwrap();
        assert!(present(&conn), "a delete makes no work");

        conn.execute_batch(&config_triggers()).unwrap();
        for own in ENGINE_ROWS.iter().filter(|r| **r != ROW) {
            crate::repo::config_set(&conn, own, "x").unwrap();
            assert!(present(&conn), "the engine's own row {own}");
        }
        set(&conn);
        assert!(present(&conn), "the summary itself");
        crate::repo::config_set(&conn, "email-send-method", "dir").unwrap();
        assert!(!present(&conn), "a setting");
        set(&conn);
        conn.execute(
            "REPLACE INTO config(name, value, mtime) VALUES ('hooks', '[]', 0)",
            [],
        )
        .unwrap();
        assert!(!present(&conn), "a row replaced, as Fossil writes them");
    }
}
