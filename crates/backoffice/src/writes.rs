//! The engine's own writes, told apart from the application's.
//!
//! A task sometimes needs to know whether *the application* wrote to the
//! repository since some moment — replication copies a repository only if
//! it changed — but the engine writes to the same file all the time: the
//! lease, heartbeats, the run record, a task's progress. Those writes must
//! not count, or every lease period looks like a change.
//!
//! The rule, for the engine and for every task: **a write the backoffice
//! makes for its own bookkeeping goes through [`own_write`]** (or, inside a
//! write transaction the caller already holds, calls [`note_own_write`]
//! before committing). The engine's lease, heartbeat and run-record writes
//! already do; a task that writes on a timer (maintenance marks, a peer's
//! progress) must too, or replication copies the repository every interval.
//! Writes driven by new application data (alerts for new events) may skip
//! it: the application wrote just before, so a copy is due anyway.
//!
//! # How
//!
//! SQLite bumps a counter on every write transaction: the file change
//! counter in the database header (rollback journal) or `iChange` in the
//! `-shm` header (WAL). Inside each of its own write transactions the
//! engine reads that counter — stable, since it holds the write lock — and
//! compares it with the value its last own write left: a difference means
//! somebody else committed in between, and the *application generation*
//! ([`app_generation`]) goes up. Anything the engine cannot account for (a
//! WAL index rebuilt, a checkpoint that restarts the WAL, a command-line
//! change) counts as a change: a false "changed", never a missed one.
//!
//! Tracking costs a `config` read and write per own write, so it is off
//! until some task asks for it ([`track`]); until then both functions only
//! run the write.
//!
//! # Fenced progress writes
//!
//! A worker can be paused mid-run (SIGSTOP, a frozen container, a VM
//! migration) long enough for its heartbeat to run out; another worker then
//! takes the lease over and redoes the work. When the paused one resumes,
//! it must not commit what it was about to record — a cursor moved back, an
//! outbox row marked sent twice. Each takeover adds one to the lease's
//! **term** (see [`crate::Lease::term`]), and a run knows the term it holds
//! ([`crate::Context::term`]). **Every write a task makes to record progress
//! calls [`fenced`] inside its own transaction, before committing**:
//!
//! ```no_run
//! # fn progress(ctx: &backoffice::Context<'_>, id: i64) -> Result<(), backoffice::writes::FenceError> {
//! backoffice::repo::immediate(ctx.db.sqlite().expect("an SQLite repository"), || {
//!     ctx.db.sqlite().expect("an SQLite repository").execute("UPDATE outbox SET done = 1 WHERE id = ?1", [id])?;
//!     // Refused (and all of the above rolled back) once another worker
//!     // has taken the lease over.
//!     backoffice::writes::fenced(ctx.db.sqlite().expect("an SQLite repository"), ctx.term)
//! })
//! # }
//! ```
//!
//! A refused task should stop at once: it is no longer the holder, and the
//! worker that took over does the rest. Inside the transaction the check
//! holds for the writes: under `BEGIN IMMEDIATE` (as above) the write lock
//! is held from the start, so no takeover commits before this transaction
//! does; in a deferred transaction SQLite refuses a write on a snapshot
//! older than a takeover that committed after the check (`SQLITE_BUSY`).
//! Outside a transaction the check proves nothing and is refused
//! ([`FenceError::NoTransaction`]). What cannot be fenced — an e-mail sent, an HTTP delivery, a
//! hook run — stays at least once: the resumed worker may repeat the effect
//! it was in the middle of, with the same Message-ID or delivery id.

use rusqlite::Connection;

/// `config` row: the write counter the engine's last write left.
pub const WRITE_EXPECTED: &str = "backoffice-write-expected";
/// `config` row: the application generation (see the module docs).
pub const APP_GENERATION: &str = "backoffice-app-generation";

/// SQLite's per-write-transaction counter for this connection's database:
/// the header's file change counter (rollback journal) or `iChange` of the
/// WAL index (WAL). `None` if it cannot be read (in-memory database, a VFS
/// without shared memory).
///
/// It is read through SQLite's own open file, never by opening the file
/// ourselves: closing *any* descriptor of a file drops every POSIX lock
/// this process holds on it — SQLite's locks included, behind its back —
/// which lets another process write in the middle of our transaction and
/// corrupt the database (found by `bench/replicate.sh`: a writer process
/// and a copy, `database disk image is malformed`; tested by
/// `engine_writes_beside_a_busy_writer_never_corrupt_the_database`).
pub(crate) fn write_counter(conn: &Connection) -> Option<u64> {
    use crate::stamp;
    conn.path().filter(|p| !p.is_empty())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .ok()?;
    let file = stamp::MainFile::of(conn)?;
    if mode.eq_ignore_ascii_case("wal") {
        let index = file.wal_index()?;
        // SAFETY: the header's iChange is a u32 at offset 8 of the
        // page-aligned WAL index, in the machine's byte order.
        let v = unsafe { std::ptr::read_volatile(index.add(8).cast::<u32>()) };
        Some(u64::from(v))
    } else {
        let mut b = [0u8; 4];
        file.read_at(&mut b, 24)?;
        Some(u64::from(u32::from_be_bytes(b)))
    }
}

/// The application generation now.
pub fn app_generation(conn: &Connection) -> i64 {
    crate::repo::config_get(conn, APP_GENERATION)
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Call inside each of the backoffice's own write transactions (with the write
/// lock held, before the commit): if another connection committed since
/// the engine's last write, the application generation goes up; then the
/// counter this transaction will leave is recorded. Does nothing where no
/// peer was ever added.
pub fn note_own_write(conn: &Connection) -> rusqlite::Result<()> {
    // Tracking is on once the row exists ([`track`]).
    let Some(expected) = crate::repo::config_get(conn, WRITE_EXPECTED)? else {
        return Ok(());
    };
    let expected = expected.trim().parse::<u64>().ok();
    let now = write_counter(conn);
    if now.is_none() || now != expected {
        // Peers compare generations for equality, so wrapping keeps it
        // moving where a stored value sits at the edge of i64.
        let g = app_generation(conn).wrapping_add(1);
        crate::repo::config_set(conn, APP_GENERATION, &g.to_string())?;
    }
    // This transaction commits once: the counter goes up by one (a u32).
    let next = now.map(|c| ((c + 1) & 0xffff_ffff).to_string());
    crate::repo::config_set(conn, WRITE_EXPECTED, next.as_deref().unwrap_or(""))
}

/// Runs `f` as the engine's own write: in an immediate transaction of its
/// own, or inside the caller's if one is open.
pub fn own_write<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // On its own, every failure rolls back, the COMMIT's included (see
    // repo::immediate).
    crate::repo::in_write(conn, || note_own_write(conn).and_then(|()| f(conn)))
}

/// Why [`fenced`] refused a write.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A later takeover happened: the lease's term is no longer the one
    /// this worker's run holds. Roll back and stop.
    #[error(
        "fenced: the lease's term is {found}, not this worker's {expected} \
         (another worker took the lease over); nothing was committed"
    )]
    Fenced {
        /// The term this worker's run holds.
        expected: u64,
        /// The term the lease carries now.
        found: u64,
    },
    /// [`fenced`] was called outside a transaction, where its answer would
    /// not hold for the write that follows. A bug in the task.
    #[error("fenced() called outside a transaction: the term check would not cover the write")]
    NoTransaction,
    /// The lease could not be read.
    #[error("cannot check the lease term: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl FenceError {
    /// True if the lease was taken over (as opposed to a failure to check).
    pub fn is_fenced(&self) -> bool {
        matches!(self, FenceError::Fenced { .. })
    }
}

/// Checks, inside the caller's transaction, that the lease still carries
/// `term` (the run's [`crate::Context::term`]): call it in every progress
/// write's transaction, before COMMIT (see the module docs). Costs one
/// point read of the lease row.
///
/// Returns [`FenceError::Fenced`] when another worker took the lease over
/// since this run began; the caller rolls back (an error out of
/// [`crate::repo::immediate`] does) and stops.
pub fn fenced(conn: &Connection, term: u64) -> Result<(), FenceError> {
    if conn.is_autocommit() {
        return Err(FenceError::NoTransaction);
    }
    let (lease, _) = crate::engine::read_lease(conn)?;
    if lease.term == term {
        Ok(())
    } else {
        Err(FenceError::Fenced {
            expected: term,
            found: lease.term,
        })
    }
}

/// Turns tracking on for this repository (idempotent): from now on every
/// [`own_write`] keeps the application generation. Called by the tasks
/// that read [`app_generation`], when they are set up.
pub fn track(conn: &Connection) -> rusqlite::Result<()> {
    if crate::repo::config_get(conn, WRITE_EXPECTED)?.is_none() {
        crate::repo::config_set(conn, WRITE_EXPECTED, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10, item 20: a stored generation at the edge of i64 never
    /// panics (debug builds check overflow) and still moves, so peers
    /// still see a change (they compare generations for equality).
    #[test]
    fn a_stored_generation_at_i64_max_still_moves() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("r.db")).unwrap();
        c.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        track(&c).unwrap();
        crate::repo::config_set(&c, APP_GENERATION, &i64::MAX.to_string()).unwrap();
        own_write(&c, |c| crate::repo::config_set(c, "x", "1")).unwrap();
        assert_ne!(app_generation(&c), i64::MAX);
    }

    /// `fenced` passes while the lease carries the run's term, refuses with
    /// both terms once it moved (and the caller's writes roll back with
    /// it), and refuses outside a transaction, where it would prove
    /// nothing about the write that follows.
    #[test]
    fn fenced_checks_the_term_inside_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("r.db")).unwrap();
        c.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        let lease = crate::engine::LEASE_ROW;
        // No lease at all is term 0.
        crate::repo::immediate(&c, || fenced(&c, 0)).unwrap();
        crate::repo::config_set(&c, lease, "7 100 0 0 term=4").unwrap();
        assert!(matches!(fenced(&c, 4), Err(FenceError::NoTransaction)));
        crate::repo::immediate(&c, || {
            crate::repo::config_set(&c, "cursor", "10")?;
            fenced(&c, 4)
        })
        .unwrap();
        let e = crate::repo::immediate(&c, || {
            crate::repo::config_set(&c, "cursor", "20")?;
            fenced(&c, 3)
        })
        .unwrap_err();
        assert!(e.is_fenced(), "{e}");
        assert!(
            matches!(
                e,
                FenceError::Fenced {
                    expected: 3,
                    found: 4
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            crate::repo::config_get(&c, "cursor").unwrap().as_deref(),
            Some("10")
        );
        // Fossil rewrote the row (no term): every worker of ours is out.
        crate::repo::config_set(&c, lease, "7 100 0 0").unwrap();
        let e = crate::repo::immediate(&c, || fenced(&c, 4)).unwrap_err();
        assert!(matches!(e, FenceError::Fenced { found: 0, .. }), "{e:?}");
    }

    /// A COMMIT that fails (a reader's SHARED lock keeps the writer from
    /// the EXCLUSIVE lock it needs, in rollback mode) must not leave the
    /// connection inside the write transaction: the write is rolled back,
    /// the error returned, and the connection usable again.
    #[test]
    fn own_write_rolls_back_when_commit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        c.busy_timeout(std::time::Duration::from_millis(20))
            .unwrap();
        // Another connection (its own file descriptor, so real POSIX locks)
        // in the middle of a read transaction: it holds SHARED.
        let reader = Connection::open(&p).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM config;")
            .unwrap();
        let r = own_write(&c, |c| crate::repo::config_set(c, "x", "1"));
        let e = r.expect_err("COMMIT must fail while a reader holds SHARED");
        assert!(e.to_string().contains("locked"), "{e}");
        assert!(
            c.is_autocommit(),
            "the failed COMMIT left the connection inside a transaction"
        );
        reader.execute_batch("COMMIT").unwrap();
        // Nothing was written, and the connection writes again.
        assert_eq!(crate::repo::config_get(&c, "x").unwrap(), None);
        own_write(&c, |c| crate::repo::config_set(c, "x", "2")).unwrap();
        assert_eq!(
            crate::repo::config_get(&reader, "x").unwrap().as_deref(),
            Some("2")
        );
    }
}
