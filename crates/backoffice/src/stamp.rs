//! A stamp of a database's committed state, read without a lock or a
//! statement.
//!
//! The after-request check ([`crate::Backoffice`]) reads three `config`
//! rows in one statement. That statement is a read transaction: in rollback
//! mode four `fcntl` locks, a `stat` of the journal and a read of the
//! header; in WAL mode a read-mark lock on the `-shm` file and its release.
//! On this VM that is 2.5-8 µs, most of it system calls, repeated after
//! every request although, on a server that mostly reads, the answer seldom
//! changes.
//!
//! A [`Stamp`] tells whether anything was committed since: SQLite changes
//! the database header's first 100 bytes with every commit in rollback
//! mode (the file change counter at offset 24, which exists so that "each
//! process can detect database changes by monitoring" it), and in WAL mode
//! the WAL index header at the start of the `-shm` file (its change
//! counter, last frame, salts and running checksum; the two copies SQLite
//! keeps are compared, as SQLite's own readers do, so a header being
//! rewritten reads as no stamp). A stamp is the database header plus, in
//! WAL mode, that index header: equal stamps mean the same committed
//! content. The check keeps its last answer with the stamp it was made
//! under, and gives it again while the stamp is unchanged and the
//! answer's time has not come ([`crate::Backoffice`] explains which answers
//! it keeps).
//!
//! Both are read through SQLite's own open file, never by opening the
//! database ourselves (see [`crate::writes::write_counter`] for why): the
//! header with one `pread` (`xRead`), the WAL index from the memory SQLite
//! has it mapped at (`xShmMap`, no system call).
//!
//! Read without a lock, a stamp can be taken in the middle of a commit. In
//! rollback mode SQLite writes page 1 first, so an unchanged header means
//! the commit has not written anything yet: the state read is the one
//! before it, a moment earlier, as if the check had run then. In WAL mode
//! the index header changes only once a commit's frames are all written.
//! A crashed writer's half-written page 1 is rolled back by the next
//! reader, and reading it only makes the stamp differ (a full check).
//!
//! That equal stamps mean equal content is the assumption SQLite itself
//! makes: its pager keeps its page cache across transactions exactly while
//! the change counter and the bytes after it are unchanged.

use rusqlite::{Connection, ffi};
use std::ffi::c_void;

/// Bytes 16..100 of the database header (page size, file format, change
/// counter, size, schema cookie, ... — everything a commit may change),
/// and in WAL mode the 48-byte WAL index header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    header: [u8; 84],
    wal: Option<[u8; 48]>,
}

/// The stamp of `conn`'s main database now, or `None` where it cannot be
/// had: an in-memory database, a VFS without these methods, a WAL index
/// not initialised or being rewritten.
pub(crate) fn read(conn: &Connection) -> Option<Stamp> {
    conn.path().filter(|p| !p.is_empty())?;
    let file = MainFile::of(conn)?;
    let mut page = [0u8; 100];
    file.read_at(&mut page, 0)?;
    let mut header = [0u8; 84];
    header.copy_from_slice(&page[16..100]);
    // Bytes 18 and 19 (the file format's write and read versions) are 2 in
    // WAL mode, 1 otherwise.
    let wal = if page[18] == 2 || page[19] == 2 {
        Some(wal_index_header(&file)?)
    } else {
        None
    };
    Some(Stamp { header, wal })
}

/// The main database's `sqlite3_file` of an open connection: owned by
/// SQLite, and valid for as long as this borrow of the connection.
pub(crate) struct MainFile<'c> {
    file: std::ptr::NonNull<ffi::sqlite3_file>,
    _conn: std::marker::PhantomData<&'c Connection>,
}

impl<'c> MainFile<'c> {
    /// `conn`'s main database file, if it has one that is open.
    pub(crate) fn of(conn: &'c Connection) -> Option<MainFile<'c>> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: `handle` is this open connection's; FILE_POINTER writes
        // the main database's `sqlite3_file*` (owned by SQLite, valid while
        // the connection is open, which the borrow guarantees).
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast::<c_void>(),
            )
        };
        let file = std::ptr::NonNull::new(file).filter(|_| rc == ffi::SQLITE_OK)?;
        // SAFETY: a non-null sqlite3_file from SQLite; pMethods is null
        // only for a file that failed to open.
        let open = unsafe { !file.as_ref().pMethods.is_null() };
        open.then_some(MainFile {
            file,
            _conn: std::marker::PhantomData,
        })
    }

    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: checked non-null in `of`; SQLite keeps it while open.
        unsafe { &*self.file.as_ref().pMethods }
    }

    /// Reads `buf.len()` bytes at `offset` of the database file through
    /// SQLite's own descriptor (`xRead`).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: i64) -> Option<()> {
        let read = self.methods().xRead?;
        let len = i32::try_from(buf.len()).ok()?;
        // SAFETY: SQLite's own file and read method; writes at most `len`
        // bytes into `buf`.
        let rc = unsafe {
            read(
                self.file.as_ptr(),
                buf.as_mut_ptr().cast::<c_void>(),
                len,
                offset,
            )
        };
        (rc == ffi::SQLITE_OK).then_some(())
    }

    /// The start of the WAL index (region 0 of the `-shm` file, 32 KiB) as
    /// SQLite has it mapped, mapping it if this connection has not yet.
    /// Reading through the pointer is the caller's `unsafe`: another
    /// process may be writing that memory.
    pub(crate) fn wal_index(&self) -> Option<*const u8> {
        let methods = self.methods();
        let shm_map = methods.xShmMap.filter(|_| methods.iVersion >= 2)?;
        let mut region: *mut c_void = std::ptr::null_mut();
        // SAFETY: region 0, not extended; SQLite keeps it mapped while the
        // connection is open in WAL mode.
        let rc = unsafe { shm_map(self.file.as_ptr(), 0, 32768, 0, &raw mut region) };
        (rc == ffi::SQLITE_OK && !region.is_null()).then_some(region.cast::<u8>().cast_const())
    }
}

/// The WAL index header, when both of SQLite's copies of it agree and it
/// is initialised.
fn wal_index_header(file: &MainFile<'_>) -> Option<[u8; 48]> {
    let index = file.wal_index()?;
    // SAFETY: the region is at least 32 KiB and page-aligned; another
    // process may be writing it, hence the volatile reads and the fence,
    // as SQLite's own lock-free readers (walIndexTryHdr) read it: copy 0,
    // a barrier, copy 1, and only equal copies count.
    let (first, second) = unsafe {
        let first = std::ptr::read_volatile(index.cast::<[u8; 48]>());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let second = std::ptr::read_volatile(index.add(48).cast::<[u8; 48]>());
        (first, second)
    };
    // Byte 12 is isInit.
    (first == second && first[12] != 0).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, wal: bool) -> Connection {
        let c = Connection::open(dir.join("s.db")).unwrap();
        if wal {
            c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        }
        c.execute_batch("CREATE TABLE IF NOT EXISTS t(x)").unwrap();
        c
    }

    /// In both modes: the same stamp while nothing is committed, whoever
    /// reads; a new one after a commit by another connection; none for an
    /// in-memory database.
    #[test]
    fn a_commit_by_anyone_changes_the_stamp_and_nothing_else_does() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let a = open(dir.path(), wal);
            let b = open(dir.path(), wal);
            let s0 = read(&a).unwrap();
            assert_eq!(s0.wal.is_some(), wal);
            let _: i64 = b
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(read(&a).unwrap(), s0, "a read changed it (wal: {wal})");
            assert_eq!(
                read(&b).unwrap(),
                s0,
                "another connection reads another stamp"
            );
            b.execute("INSERT INTO t VALUES (1)", []).unwrap();
            let s1 = read(&a).unwrap();
            assert_ne!(s1, s0, "a commit left it (wal: {wal})");
            b.execute("UPDATE t SET x = 2", []).unwrap();
            assert_ne!(read(&a).unwrap(), s1, "wal: {wal}");
        }
        let mem = Connection::open_in_memory().unwrap();
        assert_eq!(read(&mem), None);
    }

    /// Switching a database into WAL mode and back changes its stamp, and
    /// commits in WAL mode (which leave the database file as it was) do too.
    #[test]
    fn switching_the_journal_mode_and_wal_commits_change_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), false);
        let s0 = read(&a).unwrap();
        a.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        // Until a first reader initialises the WAL index there is no stamp
        // (and the check asks the database).
        let _: i64 = a
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let s1 = read(&a).unwrap();
        assert_ne!(s1, s0);
        let b = open(dir.path(), false);
        b.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let s2 = read(&a).unwrap();
        assert_ne!(s2, s1, "a WAL commit");
        drop(b);
        a.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
        assert_ne!(read(&a).unwrap(), s2);
    }
}
