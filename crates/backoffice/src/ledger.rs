//! The retry ledger: where each target of a task stands, and when to try
//! it again.
//!
//! Many tasks deliver to *targets* — a hook command, a webhook endpoint, a
//! replication peer — and each target needs the same bookkeeping: how far
//! it got (a cursor, e.g. the last event id it handled), how many attempts
//! failed in a row, when the next attempt is allowed, and what the last
//! failure said. That bookkeeping is one table, `bo_ledger`, keyed by the
//! task's name and the target's id, and one retry policy, [`Backoff`]:
//!
//! ```text
//! bo_ledger(task, target, cursor, failures, next_attempt,
//!           last_run, last_error, last_output)
//! ```
//!
//! A task reads its rows ([`get`], [`all`]), and after each attempt records
//! either a success ([`succeeded`]: cursor moved, failures back to 0) or a
//! failure ([`failed`]: failures + 1, the next attempt pushed back by the
//! policy). It never hand-writes these columns, so every task retries the
//! same way and `status` reads every target the same way.
//!
//! ```
//! use backoffice::ledger::{self, Backoff};
//!
//! let conn = rusqlite::Connection::open_in_memory()?;
//! let policy = Backoff::default(); // 1 minute doubling to 6 hours, +≤10 %
//! ledger::start(&conn, "my-task", "endpoint-1", 0)?;
//! // An attempt at t=1000 fails: the target waits about a minute.
//! let e = ledger::failed(&conn, "my-task", "endpoint-1", 1000, "HTTP 503", None, &policy)?;
//! assert_eq!(e.failures, 1);
//! assert!(!e.ready(1000) && (1060..=1066).contains(&e.next_attempt));
//! // The retry succeeds and moves the cursor to event 42.
//! ledger::succeeded(&conn, "my-task", "endpoint-1", 42, e.next_attempt, None)?;
//! let e = ledger::get(&conn, "my-task", "endpoint-1")?.unwrap();
//! assert_eq!((e.cursor, e.failures, e.last_error), (42, 0, None));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A task's `due` (which runs after every request) should read the ledger
//! with its own statement that names the task as a literal
//! (`WHERE task = 'hooks'`), not through these functions: SQLite, built
//! with `SQLITE_ENABLE_STAT4` as here, re-plans a statement each time a
//! parameter compared with an index is bound, which made a hooks check
//! about six times slower (9 µs → 48 µs) when the task name was bound.
//!
//! The ledger is progress, so a task writes it inside the same transaction
//! as the work it records where there is one (a cursor moved together
//! with the rows it produced); its writes are the backoffice's own
//! ([`crate::writes`]).
//!
//! # Both stores
//!
//! Every function takes a [`LedgerDb`]: a `&Connection` (as it always
//! has, with `rusqlite` errors, on the same prepared statements: the
//! SQLite path is unchanged) or a [`Db`] (either store, with [`DbError`]s).
//! On PostgreSQL the table is part of the repository's schema
//! ([`crate::pg`]), created with it; the statements are the portable ones
//! (`?N` parameters, `INSERT … ON CONFLICT (task, target) DO UPDATE`,
//! bigint columns). A PostgreSQL task writes its entries inside
//! [`Db::write`] fenced on its run's term, like any progress.

use rusqlite::Connection;

use crate::db::{Db, DbError};

/// A database the ledger works on: `&Connection` (SQLite, `rusqlite`
/// errors, as before the PostgreSQL store existed) or [`Db`] (either
/// store, [`DbError`]s). A trait rather than `impl Into<Db>` so that the
/// callers that run the ledger inside a `rusqlite::Result` transaction
/// (`writes::own_write`, `repo::in_write`) keep their error type.
pub trait LedgerDb<'a>: Copy {
    /// The error the ledger's functions return on this handle.
    type Error;
    /// The handle as a [`Db`].
    fn db(self) -> Db<'a>;
    /// An SQLite error in this handle's error type.
    fn sqlite_err(e: rusqlite::Error) -> Self::Error;
    /// A store error in this handle's error type (only [`Db`] handles
    /// reach PostgreSQL, so a `&Connection` never sees one but SQLite's).
    fn db_err(e: DbError) -> Self::Error;
}

impl<'a> LedgerDb<'a> for &'a Connection {
    type Error = rusqlite::Error;
    fn db(self) -> Db<'a> {
        Db::Sqlite(self)
    }
    fn sqlite_err(e: rusqlite::Error) -> rusqlite::Error {
        e
    }
    fn db_err(e: DbError) -> rusqlite::Error {
        match e {
            DbError::Sqlite(e) => e,
            other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
        }
    }
}

impl<'a, 'b> LedgerDb<'a> for &'a rusqlite::Transaction<'b> {
    type Error = rusqlite::Error;
    fn db(self) -> Db<'a> {
        Db::Sqlite(self)
    }
    fn sqlite_err(e: rusqlite::Error) -> rusqlite::Error {
        e
    }
    fn db_err(e: DbError) -> rusqlite::Error {
        <&Connection as LedgerDb<'_>>::db_err(e)
    }
}

impl<'a> LedgerDb<'a> for Db<'a> {
    type Error = DbError;
    fn db(self) -> Db<'a> {
        self
    }
    fn sqlite_err(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(e)
    }
    fn db_err(e: DbError) -> DbError {
        e
    }
}

/// The ledger table. `WITHOUT ROWID`: rows are found by their key only.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bo_ledger(
  task TEXT NOT NULL,
  target TEXT NOT NULL,
  cursor INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  next_attempt INTEGER NOT NULL DEFAULT 0,
  last_run INTEGER,
  last_error TEXT,
  last_output TEXT,
  PRIMARY KEY(task, target)
) WITHOUT ROWID;
";

/// Creates the ledger table if it is missing.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    // A retry made due now (`retry` commands) lowers the due summary.
    crate::due::watch(conn, "bo_ledger")
}

/// Where one target stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The task's name (e.g. `hooks`).
    pub task: String,
    /// The target's id within the task (e.g. a hook id).
    pub target: String,
    /// How far the target got; its meaning is the task's (often the last
    /// event id handled).
    pub cursor: i64,
    /// Failed attempts in a row; 0 after a success.
    pub failures: i64,
    /// Unix time before which the target is not tried again; 0: at once.
    pub next_attempt: i64,
    /// Unix time of the last attempt, if any.
    pub last_run: Option<i64>,
    /// What the last failed attempt said; cleared by a success.
    pub last_error: Option<String>,
    /// The last attempt's output (bounded by the task), if any.
    pub last_output: Option<String>,
}

/// The `next_attempt` of a target an operator paused: never tried until
/// resumed ([`pause`], [`resume`]). A task's check reads it as "not due"
/// ([`Entry::next_due`]).
pub const PAUSED: i64 = i64::MAX;

impl Entry {
    /// True if the target may be tried at `now`.
    pub fn ready(&self, now: i64) -> bool {
        self.next_attempt <= now
    }

    /// True if an operator paused the target.
    pub fn paused(&self) -> bool {
        self.next_attempt == PAUSED
    }

    /// `next_attempt` as a due time: `None` for a paused target.
    pub fn next_due(next_attempt: i64) -> Option<i64> {
        (next_attempt != PAUSED).then_some(next_attempt)
    }
}

/// Pauses a target: it is not tried again until [`resume`]d; its cursor
/// and failures are kept. `false` if it has no entry.
pub fn pause<'a, D: LedgerDb<'a>>(db: D, task: &str, target: &str) -> Result<bool, D::Error> {
    let Some(mut e) = get(db, task, target)? else {
        return Ok(false);
    };
    e.next_attempt = PAUSED;
    put(db, &e)?;
    Ok(true)
}

/// Resumes a paused or backing-off target: due now, failures reset, its
/// cursor kept (nothing is skipped). `false` if it has no entry.
pub fn resume<'a, D: LedgerDb<'a>>(db: D, task: &str, target: &str) -> Result<bool, D::Error> {
    let Some(mut e) = get(db, task, target)? else {
        return Ok(false);
    };
    e.next_attempt = 0;
    e.failures = 0;
    e.last_error = None;
    put(db, &e)?;
    Ok(true)
}

/// The retry policy: the wait after `n` failures in a row is `first`
/// doubled `n - 1` times, at most `max`, plus up to a tenth more (jitter,
/// so targets that failed together do not retry together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure, in seconds.
    pub first: i64,
    /// The longest wait, in seconds (before jitter).
    pub max: i64,
}

impl Default for Backoff {
    /// One minute, doubling to six hours: the backoffice's policy for
    /// hooks, webhooks, peers and mail.
    fn default() -> Backoff {
        Backoff {
            first: 60,
            max: 6 * 3600,
        }
    }
}

impl Backoff {
    /// Seconds to wait after `failures` failures in a row; `seed` picks the
    /// jitter (the same seed, the same wait). Never negative, never
    /// overflows, whatever the stored values.
    pub fn delay(&self, failures: i64, seed: u64) -> i64 {
        let first = self.first.max(1);
        let max = self.max.max(first);
        let exp = failures.saturating_sub(1).clamp(0, 40) as u32;
        let base = first.saturating_mul(1i64 << exp.min(40)).min(max);
        let spread = (base / 10).max(0) as u64 + 1;
        base.saturating_add((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as i64 % spread as i64)
    }
}

/// A stable jitter seed for a target: the same target spreads the same way
/// on every attempt, different targets differently.
pub fn seed(task: &str, target: &str) -> u64 {
    // FNV-1a: small, stable across releases (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.bytes().chain([0]).chain(target.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const COLUMNS: &str =
    "task, target, cursor, failures, next_attempt, last_run, last_error, last_output";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        task: r.get(0)?,
        target: r.get(1)?,
        cursor: r.get(2)?,
        failures: r.get(3)?,
        next_attempt: r.get(4)?,
        last_run: r.get(5)?,
        last_error: r.get(6)?,
        last_output: r.get(7)?,
    })
}

/// The statements as they have always run on SQLite: prepared once each
/// (`prepare_cached`), the table created on the first write.
mod sqlite {
    use super::{Backoff, COLUMNS, Entry, entry, install, seed};
    use rusqlite::{Connection, OptionalExtension, params};

    /// The entry of one target, if it has one. A repository without a ledger
    /// has none.
    pub(super) fn get(
        conn: &Connection,
        task: &str,
        target: &str,
    ) -> rusqlite::Result<Option<Entry>> {
        let stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM bo_ledger WHERE task = ?1 AND target = ?2"
        ));
        match stmt {
            Ok(mut s) => s.query_row(params![task, target], entry).optional(),
            Err(e) if crate::repo::is_no_such_table(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every entry of a task, by target. A repository without a ledger has
    /// none.
    pub(super) fn all(conn: &Connection, task: &str) -> rusqlite::Result<Vec<Entry>> {
        let stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM bo_ledger WHERE task = ?1 ORDER BY target"
        ));
        match stmt {
            Ok(mut s) => s.query_map([task], entry)?.collect(),
            Err(e) if crate::repo::is_no_such_table(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The earliest `next_attempt` over a task's targets that have failed
    /// (`failures > 0`), if any: when a retry is next due.
    pub(super) fn next_retry(conn: &Connection, task: &str) -> rusqlite::Result<Option<i64>> {
        let stmt = conn.prepare_cached(
            "SELECT min(next_attempt) FROM bo_ledger WHERE task = ?1 AND failures > 0",
        );
        match stmt {
            Ok(mut s) => s.query_row([task], |r| r.get(0)),
            Err(e) if crate::repo::is_no_such_table(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs one write; a repository without a ledger gets one first. (Only
    /// then: `CREATE TABLE IF NOT EXISTS` on every write would parse SQL
    /// each time, and in a run that commits often that showed: webhook
    /// deliveries to 4 endpoints at once were ~15 % slower.)
    pub(super) fn write(
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params + Clone,
    ) -> rusqlite::Result<usize> {
        match conn.prepare_cached(sql) {
            Ok(mut s) => s.execute(params),
            Err(e) if crate::repo::is_no_such_table(&e) => {
                install(conn)?;
                conn.prepare_cached(sql)?.execute(params)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives a target an entry starting at `cursor`, if it has none (a new
    /// target). Creates the ledger if needed.
    pub(super) fn start(
        conn: &Connection,
        task: &str,
        target: &str,
        cursor: i64,
    ) -> rusqlite::Result<()> {
        write(
            conn,
            "INSERT INTO bo_ledger(task, target, cursor) VALUES (?1, ?2, ?3)
             ON CONFLICT(task, target) DO NOTHING",
            params![task, target, cursor],
        )?;
        Ok(())
    }

    /// Records a successful attempt at `now`: the cursor moves forward to
    /// `cursor` (never back: a stored cursor that is ahead, recovered from a
    /// progress log or set by an operator, stays; [`put`] resets one),
    /// failures go back to 0, the last error is cleared, the output (if any)
    /// kept. Creates the entry if it has none.
    pub(super) fn succeeded(
        conn: &Connection,
        task: &str,
        target: &str,
        cursor: i64,
        now: i64,
        output: Option<&str>,
    ) -> rusqlite::Result<()> {
        write(
            conn,
            "INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run, last_error, last_output)
             VALUES (?1, ?2, ?3, 0, 0, ?4, NULL, ?5)
             ON CONFLICT(task, target) DO UPDATE SET cursor = max(cursor, excluded.cursor),
               failures = 0, next_attempt = 0, last_run = excluded.last_run, last_error = NULL,
               last_output = excluded.last_output",
            params![task, target, cursor, now, output],
        )?;
        Ok(())
    }

    /// Records a failed attempt at `now`: failures + 1, the next attempt put
    /// off by `policy`, the error and output kept; the cursor stays. Returns
    /// the entry as it now stands. Creates the entry (cursor 0) if it has none.
    pub(super) fn failed(
        conn: &Connection,
        task: &str,
        target: &str,
        now: i64,
        error: &str,
        output: Option<&str>,
        policy: &Backoff,
    ) -> rusqlite::Result<Entry> {
        let failures = get(conn, task, target)?
            .map_or(0, |e| e.failures)
            .saturating_add(1);
        let next = now.saturating_add(policy.delay(failures, seed(task, target)));
        write(
            conn,
            "INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run, last_error, last_output)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(task, target) DO UPDATE SET failures = excluded.failures,
               next_attempt = excluded.next_attempt, last_run = excluded.last_run,
               last_error = excluded.last_error, last_output = excluded.last_output",
            params![task, target, failures, next, now, error, output],
        )?;
        Ok(get(conn, task, target)?.unwrap_or_default())
    }

    /// Sets a target's entry as given (an operator's reset, a retry now, a
    /// migration). Creates the ledger if needed.
    pub(super) fn put(conn: &Connection, e: &Entry) -> rusqlite::Result<()> {
        write(
            conn,
            &format!(
                "INSERT OR REPLACE INTO bo_ledger({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                e.task,
                e.target,
                e.cursor,
                e.failures,
                e.next_attempt,
                e.last_run,
                e.last_error,
                e.last_output
            ],
        )?;
        Ok(())
    }

    /// Forgets a target (it was removed). Nothing happens if it had no entry.
    pub(super) fn remove(conn: &Connection, task: &str, target: &str) -> rusqlite::Result<()> {
        match conn.prepare_cached("DELETE FROM bo_ledger WHERE task = ?1 AND target = ?2") {
            Ok(mut s) => s.execute(params![task, target]).map(|_| ()),
            Err(e) if crate::repo::is_no_such_table(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

// The same statements for PostgreSQL, portable SQL through [`Db`]. The
// table is the schema's (`crate::pg`), so it is never missing.
#[cfg(feature = "postgres")]
fn pg_entry(r: &crate::db::Row) -> Result<Entry, DbError> {
    Ok(Entry {
        task: r.text(0)?,
        target: r.text(1)?,
        cursor: r.int(2)?,
        failures: r.int(3)?,
        next_attempt: r.int(4)?,
        last_run: r.opt_int(5)?,
        last_error: r.opt_text(6)?,
        last_output: r.opt_text(7)?,
    })
}

#[cfg(feature = "postgres")]
fn pg_get(db: Db<'_>, task: &str, target: &str) -> Result<Option<Entry>, DbError> {
    db.query_opt(
        "SELECT task, target, cursor, failures, next_attempt, last_run, last_error, last_output
           FROM bo_ledger WHERE task = ?1 AND target = ?2",
        &[task.into(), target.into()],
    )?
    .as_ref()
    .map(pg_entry)
    .transpose()
}

#[cfg(feature = "postgres")]
fn pg_failed(
    db: Db<'_>,
    task: &str,
    target: &str,
    now: i64,
    error: &str,
    output: Option<&str>,
    policy: &Backoff,
) -> Result<Entry, DbError> {
    // FOR UPDATE: inside the caller's transaction, two workers (a
    // --nolease run beside the holder) cannot both count failure n.
    let failures = db
        .query_opt(
            "SELECT failures FROM bo_ledger WHERE task = ?1 AND target = ?2 FOR UPDATE",
            &[task.into(), target.into()],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0)
        .saturating_add(1);
    let next = now.saturating_add(policy.delay(failures, seed(task, target)));
    db.execute(
        "INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run, last_error, last_output)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (task, target) DO UPDATE SET failures = excluded.failures,
           next_attempt = excluded.next_attempt, last_run = excluded.last_run,
           last_error = excluded.last_error, last_output = excluded.last_output",
        &[
            task.into(),
            target.into(),
            failures.into(),
            next.into(),
            now.into(),
            error.into(),
            output.into(),
        ],
    )?;
    Ok(pg_get(db, task, target)?.unwrap_or_default())
}

/// The entry of one target, if it has one. A repository without a ledger
/// has none.
pub fn get<'a, D: LedgerDb<'a>>(
    db: D,
    task: &str,
    target: &str,
) -> Result<Option<Entry>, D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::get(c, task, target).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg_get(pg, task, target).map_err(D::db_err),
    }
}

/// Every entry of a task, by target (in byte order on either store). A
/// repository without a ledger has none.
pub fn all<'a, D: LedgerDb<'a>>(db: D, task: &str) -> Result<Vec<Entry>, D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::all(c, task).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .query(
                "SELECT task, target, cursor, failures, next_attempt, last_run, last_error,
                        last_output
                   FROM bo_ledger WHERE task = ?1 ORDER BY target COLLATE \"C\"",
                &[task.into()],
            )
            .and_then(|rows| rows.iter().map(pg_entry).collect())
            .map_err(D::db_err),
    }
}

/// The earliest `next_attempt` over a task's targets that have failed
/// (`failures > 0`), if any: when a retry is next due.
pub fn next_retry<'a, D: LedgerDb<'a>>(db: D, task: &str) -> Result<Option<i64>, D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::next_retry(c, task).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .query_opt(
                "SELECT min(next_attempt) FROM bo_ledger WHERE task = ?1 AND failures > 0",
                &[task.into()],
            )
            .and_then(|r| r.map(|r| r.opt_int(0)).transpose())
            .map(Option::flatten)
            .map_err(D::db_err),
    }
}

/// Gives a target an entry starting at `cursor`, if it has none (a new
/// target). Creates the ledger if needed.
pub fn start<'a, D: LedgerDb<'a>>(
    db: D,
    task: &str,
    target: &str,
    cursor: i64,
) -> Result<(), D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::start(c, task, target, cursor).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .execute(
                "INSERT INTO bo_ledger(task, target, cursor) VALUES (?1, ?2, ?3)
                 ON CONFLICT (task, target) DO NOTHING",
                &[task.into(), target.into(), cursor.into()],
            )
            .map(drop)
            .map_err(D::db_err),
    }
}

/// Records a successful attempt at `now`: the cursor moves forward to
/// `cursor` (never back: a stored cursor that is ahead, recovered from a
/// progress log or set by an operator, stays; [`put`] resets one),
/// failures go back to 0, the last error is cleared, the output (if any)
/// kept. Creates the entry if it has none.
pub fn succeeded<'a, D: LedgerDb<'a>>(
    db: D,
    task: &str,
    target: &str,
    cursor: i64,
    now: i64,
    output: Option<&str>,
) -> Result<(), D::Error> {
    match db.db() {
        Db::Sqlite(c) => {
            sqlite::succeeded(c, task, target, cursor, now, output).map_err(D::sqlite_err)
        }
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .execute(
                "INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run,
                                       last_error, last_output)
                 VALUES (?1, ?2, ?3, 0, 0, ?4, NULL, ?5)
                 ON CONFLICT (task, target) DO UPDATE
                   SET cursor = GREATEST(bo_ledger.cursor, excluded.cursor),
                       failures = 0, next_attempt = 0, last_run = excluded.last_run,
                       last_error = NULL, last_output = excluded.last_output",
                &[
                    task.into(),
                    target.into(),
                    cursor.into(),
                    now.into(),
                    output.into(),
                ],
            )
            .map(drop)
            .map_err(D::db_err),
    }
}

/// Records a failed attempt at `now`: failures + 1, the next attempt put
/// off by `policy`, the error and output kept; the cursor stays. Returns
/// the entry as it now stands. Creates the entry (cursor 0) if it has none.
pub fn failed<'a, D: LedgerDb<'a>>(
    db: D,
    task: &str,
    target: &str,
    now: i64,
    error: &str,
    output: Option<&str>,
    policy: &Backoff,
) -> Result<Entry, D::Error> {
    match db.db() {
        Db::Sqlite(c) => {
            sqlite::failed(c, task, target, now, error, output, policy).map_err(D::sqlite_err)
        }
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => {
            pg_failed(pg, task, target, now, error, output, policy).map_err(D::db_err)
        }
    }
}

/// Sets a target's entry as given (an operator's reset, a retry now, a
/// migration). Creates the ledger if needed.
pub fn put<'a, D: LedgerDb<'a>>(db: D, e: &Entry) -> Result<(), D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::put(c, e).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .execute(
                "INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run,
                                       last_error, last_output)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (task, target) DO UPDATE
                   SET cursor = excluded.cursor, failures = excluded.failures,
                       next_attempt = excluded.next_attempt, last_run = excluded.last_run,
                       last_error = excluded.last_error, last_output = excluded.last_output",
                &[
                    e.task.as_str().into(),
                    e.target.as_str().into(),
                    e.cursor.into(),
                    e.failures.into(),
                    e.next_attempt.into(),
                    e.last_run.into(),
                    e.last_error.as_deref().into(),
                    e.last_output.as_deref().into(),
                ],
            )
            .map(drop)
            .map_err(D::db_err),
    }
}

/// Forgets a target (it was removed). Nothing happens if it had no entry.
pub fn remove<'a, D: LedgerDb<'a>>(db: D, task: &str, target: &str) -> Result<(), D::Error> {
    match db.db() {
        Db::Sqlite(c) => sqlite::remove(c, task, target).map_err(D::sqlite_err),
        #[cfg(feature = "postgres")]
        pg @ Db::Postgres(_) => pg
            .execute(
                "DELETE FROM bo_ledger WHERE task = ?1 AND target = ?2",
                &[task.into(), target.into()],
            )
            .map(drop)
            .map_err(D::db_err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_target_moves_fails_backs_off_and_recovers() {
        let c = Connection::open_in_memory().unwrap();
        assert_eq!(get(&c, "hooks", "1").unwrap(), None, "no ledger yet");
        assert_eq!(next_retry(&c, "hooks").unwrap(), None);
        start(&c, "hooks", "1", 7).unwrap();
        start(&c, "hooks", "1", 99).unwrap();
        assert_eq!(get(&c, "hooks", "1").unwrap().unwrap().cursor, 7);
        let p = Backoff::default();
        let e = failed(&c, "hooks", "1", 1000, "exit 3", Some("oops"), &p).unwrap();
        assert_eq!((e.cursor, e.failures), (7, 1));
        assert!((1060..=1066).contains(&e.next_attempt), "{e:?}");
        assert!(!e.ready(1000) && e.ready(e.next_attempt));
        let e = failed(&c, "hooks", "1", 2000, "exit 3", None, &p).unwrap();
        assert_eq!(e.failures, 2);
        assert!((2120..=2132).contains(&e.next_attempt), "{e:?}");
        assert_eq!(next_retry(&c, "hooks").unwrap(), Some(e.next_attempt));
        assert_eq!(next_retry(&c, "webhooks").unwrap(), None);
        succeeded(&c, "hooks", "1", 9, 3000, Some("ok")).unwrap();
        let e = get(&c, "hooks", "1").unwrap().unwrap();
        assert_eq!(
            (
                e.cursor,
                e.failures,
                e.next_attempt,
                e.last_error,
                e.last_run
            ),
            (9, 0, 0, None, Some(3000))
        );
        assert_eq!(next_retry(&c, "hooks").unwrap(), None);
        // A success never moves the cursor back; put() resets it.
        succeeded(&c, "hooks", "1", 4, 3100, None).unwrap();
        assert_eq!(get(&c, "hooks", "1").unwrap().unwrap().cursor, 9);
        let mut e = get(&c, "hooks", "1").unwrap().unwrap();
        e.cursor = 2;
        put(&c, &e).unwrap();
        assert_eq!(get(&c, "hooks", "1").unwrap().unwrap().cursor, 2);
        assert_eq!(all(&c, "hooks").unwrap().len(), 1);
        remove(&c, "hooks", "1").unwrap();
        assert_eq!(all(&c, "hooks").unwrap(), vec![]);
    }

    proptest! {
        /// Bounded, growing, never negative, whatever the stored values.
        #[test]
        fn backoff_is_bounded_and_grows(f in any::<i64>(), seed in any::<u64>(),
                                        first in 1i64..10_000, extra in 0i64..100_000) {
            let p = Backoff { first, max: first + extra };
            let d = p.delay(f, seed);
            prop_assert!(d >= first.min(p.max) && d <= p.max + p.max / 10);
            if (1..40).contains(&f) {
                prop_assert!(p.delay(f + 1, seed) >= d - p.max / 10);
            }
        }
    }
}
