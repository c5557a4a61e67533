//! Opening a repository, and its `config` table.
//!
//! A repository is one SQLite file. The engine keeps its lease and settings in
//! `config(name TEXT PRIMARY KEY, value, mtime)`, the table Fossil uses, so
//! a Fossil repository works as is and SQLite itself serialises access to
//! the lease. [`Repo::open`] creates that table when it is missing and
//! refuses, with an error naming the problem, a file that is not SQLite or a
//! `config` table of another shape. It never creates the database file: a
//! mistyped path must not turn into a fresh empty repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{Error, Result};

/// How long to wait for another writer's lock before giving up. Long enough
/// to ride out an application's ordinary write transactions, short enough
/// that a stuck writer is reported rather than waited on forever.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the after-request check waits for a lock. It sits on a
/// request's path: a database locked by another writer answers "not now"
/// at once, and the next request looks again, rather than stalling a reply
/// for the full busy timeout. Long enough to ride out another connection's
/// commit (a few fsyncs), which in rollback mode briefly locks out readers.
pub const CHECK_BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// The longest `status` (the command, and the web front's status page)
/// waits for a lock before saying the repository is locked: a person or a
/// monitor can wait half a second, not the full busy timeout, and a page
/// should not fail because another connection was committing.
pub const STATUS_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Lowers a connection's busy timeout for as long as it lives, and puts the
/// old one back when dropped. A connection without a busy timeout (0, or a
/// busy handler of the host's own, which SQLite cannot report) is left alone:
/// it does not wait on its own, and a handler we cannot read we could not
/// restore.
pub struct ShortBusy<'c> {
    conn: &'c Connection,
    restore_ms: Option<u64>,
}

impl<'c> ShortBusy<'c> {
    /// Caps `conn`'s busy timeout at `limit` until the guard is dropped.
    pub fn new(conn: &'c Connection, limit: Duration) -> ShortBusy<'c> {
        let current: Option<i64> = conn
            .prepare_cached("PRAGMA busy_timeout")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .ok();
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let restore_ms = match current.and_then(|ms| u64::try_from(ms).ok()) {
            Some(ms) if ms > limit_ms && conn.busy_timeout(limit).is_ok() => Some(ms),
            _ => None,
        };
        ShortBusy { conn, restore_ms }
    }
}

impl Drop for ShortBusy<'_> {
    fn drop(&mut self) {
        if let Some(ms) = self.restore_ms {
            if let Err(e) = self.conn.busy_timeout(Duration::from_millis(ms)) {
                tracing::warn!(error = %e, "cannot restore the busy timeout");
            }
        }
    }
}

/// Runs the write `f` in a transaction of its own that takes the write lock
/// up front (`BEGIN IMMEDIATE`, which waits for the busy timeout), and rolls
/// back on every failure, the COMMIT's included.
///
/// Why up front: a deferred transaction, or a lone statement that reads
/// before it writes, gets `SQLITE_BUSY` at once in rollback-journal mode
/// when another connection is writing (SQLite will not wait while holding a
/// read lock, as that could deadlock). Why a rollback after a failed
/// COMMIT: one refused with `SQLITE_BUSY` leaves the transaction open, and
/// a connection stuck inside a write transaction keeps the write lock (and,
/// in rollback mode, may keep refusing everyone's readers) until it closes.
///
/// The caller must not be inside a transaction already (`BEGIN` would fail
/// and say so).
pub fn immediate<T, E>(conn: &Connection, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let out = f().and_then(|v| {
        conn.execute_batch("COMMIT")?;
        Ok(v)
    });
    if out.is_err() && !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "cannot roll back a failed write");
        }
    }
    out
}

/// Runs `f` as one write: inside the caller's transaction when one is
/// open (the write commits or rolls back with it), else in a transaction
/// of its own that takes the write lock up front ([`immediate`]).
pub fn in_write<T, E>(conn: &Connection, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    if conn.is_autocommit() {
        immediate(conn, f)
    } else {
        f()
    }
}

/// Runs the reads `f` in one deferred read transaction when `conn` is not
/// inside one already (else in the caller's), so that several statements
/// take and release the file's locks once: in rollback-journal mode each
/// statement on its own is a lock cycle of eight system calls (lock, a
/// look for a hot journal, a read of the change counter, unlock). `f` must
/// not write. A failure to begin is turned into `E` by `begin_err`.
pub(crate) fn reading<T, E>(
    conn: &Connection,
    begin_err: impl FnOnce(rusqlite::Error) -> E,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !conn.is_autocommit() {
        return f();
    }
    conn.execute_batch("BEGIN").map_err(begin_err)?;
    let out = f();
    // A read transaction: ending it cannot lose anything, and a failure
    // to end it (none is known for a transaction that wrote nothing)
    // would show at the caller's next BEGIN.
    if let Err(e) = conn.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" }) {
        tracing::warn!(error = %e, "cannot end a read transaction");
    }
    out
}

/// True if an SQLite error means "another connection holds the lock".
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The `config` table as Fossil 2.21 creates it.
const CREATE_CONFIG: &str = "CREATE TABLE IF NOT EXISTS config(
  name TEXT PRIMARY KEY NOT NULL,
  value CLOB,
  mtime DATE,
  CHECK( typeof(name)='text' AND length(name)>=1 )
)";

/// An open repository.
#[derive(Debug)]
pub struct Repo {
    conn: Connection,
    path: PathBuf,
    busy_ms: u64,
    read_only: bool,
}

impl Repo {
    /// Opens `path` with the default busy timeout.
    pub fn open(path: impl AsRef<Path>) -> Result<Repo> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens `path`, waiting at most `busy` for another writer's lock.
    pub fn open_with(path: impl AsRef<Path>, busy: Duration) -> Result<Repo> {
        let path = path.as_ref();
        if let Some(url) = path.to_str().filter(|s| crate::db::is_pg_url(s)) {
            return Err(Error::BadUrl {
                url: crate::db::redact_url(url),
                problem: "a PostgreSQL repository, and this works on SQLite repository files only"
                    .into(),
            });
        }
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(e) => {
                return Err(Error::Open {
                    path: path.to_owned(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(e.to_string()),
                    ),
                });
            }
            Ok(m) if m.is_dir() => {
                return Err(Error::Open {
                    path: path.to_owned(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some("it is a directory".into()),
                    ),
                });
            }
            Ok(_) => {}
        }
        // READ_WRITE without CREATE: SQLite opens read-only by itself when the
        // file is write-protected, and we notice that below.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::Open {
            path: path.to_owned(),
            source: e,
        })?;
        let busy_ms = busy.as_millis() as u64;
        let sq = |what, e| Error::sqlite(what, path, busy_ms, e);
        conn.busy_timeout(busy)
            .map_err(|e| sq("setting the busy timeout", e))?;
        // Opening is lazy; the first read of the schema is where a non-SQLite
        // file is detected. The reads in one read transaction: one lock
        // cycle instead of one per statement (a worker's start, issue 13).
        let (read_only, shape) = reading(
            &conn,
            |e| sq("reading the schema", e),
            || {
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                    .map_err(|e| sq("reading the schema", e))?;
                let read_only = conn
                    .is_readonly(rusqlite::MAIN_DB)
                    .map_err(|e| sq("checking for read-only", e))?;
                let shape =
                    check_config_shape(&conn).map_err(|e| sq("reading the config table", e))?;
                Ok::<_, Error>((read_only, shape))
            },
        )?;
        let repo = Repo {
            conn,
            path: path.to_owned(),
            busy_ms,
            read_only,
        };
        match shape {
            Shape::Good => {}
            Shape::Missing if read_only => {}
            Shape::Missing => repo
                .conn
                .execute_batch(CREATE_CONFIG)
                .map_err(|e| sq("creating the config table", e))?,
            Shape::Bad(found) => {
                return Err(Error::ConfigShape {
                    path: path.to_owned(),
                    found,
                });
            }
        }
        Ok(repo)
    }

    /// The SQLite connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The SQLite connection, mutably (for transactions).
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The path the repository was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the file could only be opened for reading.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The busy timeout in milliseconds.
    pub fn busy_ms(&self) -> u64 {
        self.busy_ms
    }

    /// Wraps an SQLite error with this repository's path.
    pub(crate) fn err(&self, what: &'static str, e: rusqlite::Error) -> Error {
        Error::sqlite(what, &self.path, self.busy_ms, e)
    }

    /// Reads one `config` value.
    pub fn get(&self, name: &str) -> Result<Option<String>> {
        config_get(&self.conn, name).map_err(|e| self.err("reading the config table", e))
    }

    /// Writes one `config` value (with `mtime` = now).
    pub fn set(&self, name: &str, value: &str) -> Result<()> {
        self.writable()?;
        config_set(&self.conn, name, value).map_err(|e| self.err("writing the config table", e))
    }

    /// Deletes one `config` row. Returns whether it existed.
    pub fn unset(&self, name: &str) -> Result<bool> {
        self.writable()?;
        self.conn
            .execute("DELETE FROM config WHERE name=?1", [name])
            .map(|n| n > 0)
            .map_err(|e| self.err("writing the config table", e))
    }

    /// Fails with [`Error::ReadOnly`] if the repository cannot be written.
    pub fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// The name the run log uses: the `project-name` setting with spaces
    /// turned into dashes (as Fossil does), else the file name.
    pub fn project_name(&self) -> String {
        project_name(&self.conn, &self.path)
    }
}

/// See [`Repo::project_name`]; usable on any connection.
pub fn project_name(conn: &Connection, path: &Path) -> String {
    match config_get(conn, "project-name") {
        Ok(Some(n)) if !n.trim().is_empty() => n
            .trim()
            .chars()
            .map(|c| if c.is_whitespace() { '-' } else { c })
            .collect(),
        _ => path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}

enum Shape {
    Good,
    Missing,
    Bad(String),
}

fn check_config_shape(conn: &Connection) -> rusqlite::Result<Shape> {
    let mut stmt = conn.prepare("SELECT name, type, pk FROM pragma_table_info('config')")?;
    let cols: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if cols.is_empty() {
        return Ok(Shape::Missing);
    }
    let has = |n: &str| cols.iter().any(|(c, _, _)| c.eq_ignore_ascii_case(n));
    let name_is_key = cols
        .iter()
        .any(|(c, _, pk)| c.eq_ignore_ascii_case("name") && *pk == 1)
        && cols.iter().filter(|(_, _, pk)| *pk > 0).count() == 1;
    if has("value") && has("mtime") && name_is_key {
        return Ok(Shape::Good);
    }
    let found = cols
        .iter()
        .map(|(c, t, pk)| {
            let t = if t.is_empty() { "" } else { t.as_str() };
            let pk = if *pk > 0 { " pk" } else { "" };
            format!("{c} {t}{pk}").trim().replace("  ", " ")
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Shape::Bad(found))
}

/// Turns whatever type a `config.value` holds into text: Fossil stores
/// text, but a hand-written row may hold a number or a blob.
fn value_text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

/// Reads one `config` value on any connection. A missing table reads as
/// "no value", because a repository we may not write has none yet.
pub fn config_get(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    let mut stmt = match conn.prepare_cached("SELECT value FROM config WHERE name=?1") {
        Ok(s) => s,
        Err(e) if is_no_such_table(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    stmt.query_row([name], |r| Ok(value_text(r.get_ref(0)?)))
        .optional()
        .map(Option::flatten)
}

/// Reads several `config` values in one statement; absent names are omitted.
pub(crate) fn config_get_many(
    conn: &Connection,
    names: &[&str],
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(v) = config_get(conn, name)? {
            out.push(((*name).to_owned(), v));
        }
    }
    Ok(out)
}

/// Writes one `config` value, with `mtime` = now, as Fossil does.
pub fn config_set(conn: &Connection, name: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("REPLACE INTO config(name, value, mtime) VALUES (?1, ?2, ?3)")?
        .execute(params![name, value, crate::clock::now()])
        .map(drop)
}

/// True if an SQLite error is "no such table".
pub fn is_no_such_table(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.starts_with("no such table"))
}

/// A new empty repository in a temporary directory (for unit tests).
#[cfg(test)]
pub(crate) fn temp_repo() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.db");
    Connection::open(&p).unwrap();
    let r = Repo::open(&p).unwrap();
    (dir, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_config_and_refuses_other_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        let r = Repo::open(&p).unwrap();
        r.set("x", "1").unwrap();
        assert_eq!(r.get("x").unwrap().as_deref(), Some("1"));

        let q = dir.path().join("q.db");
        Connection::open(&q)
            .unwrap()
            .execute_batch("CREATE TABLE config(k, v)")
            .unwrap();
        let e = Repo::open(&q).unwrap_err().to_string();
        assert!(e.contains("another shape") && e.contains("k, v"), "{e}");
    }

    #[test]
    fn refuses_missing_and_non_sqlite_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = Repo::open(dir.path().join("nope.db")).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        let junk = dir.path().join("junk.db");
        std::fs::write(
            &junk,
            "this is not a database, just some text that is long enough",
        )
        .unwrap();
        let e = Repo::open(&junk).unwrap_err();
        assert!(matches!(e, Error::NotSqlite { .. }), "{e}");
        let e = Repo::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn non_text_values_read_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        let r = Repo::open({
            Connection::open(&p).unwrap();
            &p
        })
        .unwrap();
        r.conn()
            .execute("INSERT INTO config VALUES ('n', 42, 0), ('z', NULL, 0)", [])
            .unwrap();
        assert_eq!(r.get("n").unwrap().as_deref(), Some("42"));
        assert_eq!(r.get("z").unwrap(), None);
    }
}
