//! Replication: consistent copies of a live repository, kept on peers.
//!
//! Fossil's backoffice document lists "automatic syncing of peer
//! repositories" as backoffice work and never built it. Here a peer is a
//! file path — a local disk or a network mount — or another host's
//! `backoffice serve --replica-dir` (the copy is pushed with `PUT`, see
//! [`push`]), and the `replicate` task keeps the newest [`KEEP`]
//! generations of the repository there.
//!
//! # A copy that is consistent, and a live application that keeps writing
//!
//! A snapshot is taken with SQLite's online backup API, a bounded number of
//! pages per step ([`STEP_PAGES`]) with a pause between steps
//! ([`STEP_PAUSE_MS`]), from a connection of its own:
//!
//! * In WAL mode that connection holds one read transaction for the whole
//!   copy: the copy is the database as of that instant, and the
//!   application's writers are never blocked (WAL readers do not block
//!   writers); only checkpoints wait, so the WAL grows while the copy runs.
//! * In rollback-journal mode a read transaction would block every writer
//!   for the whole copy, so it copies step by step without one; a write by
//!   the application restarts the copy (SQLite's rule). After
//!   [`MAX_RESTARTS`] restarts it holds the read lock and finishes in large
//!   steps, so a busy database still gets its copy — and its writers wait
//!   for that last stretch. WAL mode is the one to use with replication.
//!
//! # A replica is whole or absent
//!
//! The copy is written to a temporary file beside the target
//! (`.NAME.partial-PID`), switched to a rollback journal (a replica is one
//! file), fsynced, and renamed over the target; the directory is fsynced
//! too. Older generations are `TARGET.1`, `TARGET.2`, … made by renames and
//! a hard link before the final rename, so a reader of `TARGET` sees the old
//! replica or the new one, never a missing or partial file. A guard
//! process ([`set_temp_guard`]) removes the temporary file if the copier is
//! killed before its rename; without one, the next copy removes it.
//!
//! # When
//!
//! A peer is due [`INTERVAL`] seconds after its last success (or at once
//! when new); failures are retried by the engine's one retry policy,
//! [`ledger::Backoff`] (1 minute doubling to 6 hours, plus up to a tenth of
//! jitter), and shown in `status` with their reason. A due peer is copied
//! only if the application wrote to the repository since its last copy.
//!
//! # Where a peer's state lives
//!
//! `bo_peer` holds what a peer *is* and what its last copy was: the target,
//! its token, the application generation and change stamp the copy holds,
//! when it succeeded, its size and duration. How attempts are going —
//! failures in a row, the next attempt, the last error, the last attempt —
//! is the engine's retry ledger ([`backoffice::ledger`], task `replicate`,
//! target the peer's id), like every other retrying target. Repositories of
//! release 0.1.0 kept those four columns in `bo_peer`; [`install`] moves
//! them to the ledger in place, in one transaction, and drops them.
//!
//! The ledger's `cursor` stays 0 here and the generation a copy holds stays
//! in `bo_peer.generation`: "never copied" must differ from "copied at
//! generation 0" (a fresh repository's generation *is* 0, and an HTTP peer
//! has no file whose absence would force the first copy), which a NULL
//! says and the ledger's `cursor NOT NULL DEFAULT 0` cannot; and the
//! generation is a fact of the copy, written with its stamp and size, not
//! progress through a sequence.
//!
//! Telling the application's writes from the engine's own (the lease, the
//! run record, the peers' bookkeeping) uses the counter SQLite bumps on
//! every write transaction: the file change counter in the database header
//! (rollback journal) or `iChange` in the `-shm` header (WAL). Inside each
//! of its own write transactions the engine reads that counter — stable,
//! since it holds the write lock — and compares it with the value its last
//! write left ([`backoffice::writes`]): a difference means somebody else
//! committed in between, and the *application generation* goes up. A peer
//! is copied when the generation moved since its last copy. Anything the
//! engine cannot account for (a WAL index rebuilt, a checkpoint that
//! restarts the WAL, a command-line change) counts as a change: an extra
//! copy, never a missed one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backoffice::ledger;
use backoffice::settings::{Def, Kind};
use backoffice::writes::{app_generation, own_write};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use backoffice::{Context, Db, Due, Gauge, Task, TaskError, TaskStatus};

/// `replicate-interval`: seconds between copies to a peer.
pub const INTERVAL: &str = "replicate-interval";
/// `replicate-keep`: generations kept on each peer.
pub const KEEP: &str = "replicate-keep";
/// `replicate-step-pages`: pages copied per backup step.
pub const STEP_PAGES: &str = "replicate-step-pages";
/// `replicate-step-pause-ms`: pause between steps.
pub const STEP_PAUSE_MS: &str = "replicate-step-pause-ms";

/// The settings this task reads (see [`backoffice::settings`]).
pub const SETTINGS: &[Def] = &[
    Def {
        name: INTERVAL,
        kind: Kind::Int {
            min: 10,
            max: 31_536_000,
        },
        default: "3600",
        help: "Seconds between copies to each replication peer; a copy is made only if the application wrote since the last one.",
        secret: false,
    },
    Def {
        name: KEEP,
        kind: Kind::Int { min: 1, max: 100 },
        default: "3",
        help: "Replica generations kept on each peer: the target and older copies TARGET.1, TARGET.2, ...",
        secret: false,
    },
    Def {
        name: STEP_PAGES,
        kind: Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        default: "256",
        help: "Database pages copied per step of a replication (256 pages of 4 KiB: 1 MiB).",
        secret: false,
    },
    Def {
        name: STEP_PAUSE_MS,
        kind: Kind::Int { min: 0, max: 1000 },
        default: "1",
        help: "Milliseconds a replication pauses between steps, leaving the disk to the application.",
        secret: false,
    },
];

/// Restarts (rollback-journal mode) after which the copy holds the read
/// lock to finish.
pub const MAX_RESTARTS: u32 = 3;

/// Longest a copy waits on locks in all before it gives up (retried later).
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The task's name, and its name in the retry ledger.
const TASK: &str = "replicate";

/// A peer's definition and its last copy; its retry state is in the
/// ledger (see the module docs).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bo_peer(
  peerid INTEGER PRIMARY KEY,
  target TEXT NOT NULL UNIQUE,
  token TEXT,
  generation INTEGER,
  stamp TEXT,
  last_ok INTEGER,
  last_bytes INTEGER,
  last_ms INTEGER,
  ctime INTEGER NOT NULL
);";

/// The retry columns of release 0.1.0's `bo_peer`, now in the ledger
/// (`last_try` as its `last_run`).
const OLD_COLUMNS: [&str; 4] = ["last_try", "failures", "next_attempt", "last_error"];

/// A peer and how replication to it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Row id.
    pub id: i64,
    /// The replica's path, or the URL of a peer server's replica endpoint.
    pub target: String,
    /// The bearer token for an HTTP peer (never printed).
    #[serde(skip)]
    pub token: Option<String>,
    /// The application generation its last copy holds.
    pub generation: Option<i64>,
    /// The source's change stamp at the last success.
    pub stamp: Option<String>,
    /// Unix time of the last success.
    pub last_ok: Option<i64>,
    /// Unix time of the last attempt.
    pub last_try: Option<i64>,
    /// Failures in a row.
    pub failures: i64,
    /// No attempt before this Unix time.
    pub next_attempt: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Size of the last replica, bytes.
    pub last_bytes: Option<i64>,
    /// How long the last copy took, ms.
    pub last_ms: Option<i64>,
}

/// What went wrong with a peer or a copy.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// A target that cannot be a replica.
    #[error("bad peer target {0:?}: {1}")]
    Target(String, String),
    /// No such peer.
    #[error("no peer {0}")]
    NotFound(String),
    /// The peer is already there.
    #[error("{0} is already a peer")]
    Duplicate(String),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An HTTP peer refused the copy or could not be reached.
    #[error("{0}")]
    Peer(String),
    /// The source stayed locked.
    #[error("the repository stayed locked for {0:?}; the copy is retried later")]
    Locked(Duration),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReplicateError {
    let path = path.to_owned();
    move |source| ReplicateError::Io { what, path, source }
}

/// Creates the peer table and the retry ledger if needed, moves a 0.1.0
/// peer table's retry state into the ledger (in place, in one
/// transaction), and turns on the tracking of the engine's own writes
/// ([`backoffice::writes`]) that tells whether the application wrote since
/// a peer's last copy. Idempotent and cheap once done (schema lookups
/// only); every path that writes peers calls it.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    let needed = !conn.table_exists(None, "bo_peer")?
        || !conn.table_exists(None, "bo_ledger")?
        || !old_columns(conn)?.is_empty();
    if needed {
        // The backoffice's own write, not the application's (which would
        // call for a copy): `BEGIN IMMEDIATE`, or inside the caller's
        // transaction if one is open.
        own_write(conn, |c| {
            c.execute_batch(SCHEMA)?;
            backoffice::due::watch(c, "bo_peer")?;
            ledger::install(c)?;
            migrate(c)
        })?;
    }
    backoffice::writes::track(conn)
}

/// The 0.1.0 retry columns still in `bo_peer` (none once migrated, or
/// when there is no peer table).
fn old_columns(conn: &Connection) -> rusqlite::Result<Vec<&'static str>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM pragma_table_info('bo_peer')")?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(OLD_COLUMNS
        .into_iter()
        .filter(|old| names.iter().any(|n| n.eq_ignore_ascii_case(old)))
        .collect())
}

/// Moves a 0.1.0 peer table's retry state (`last_try`, `failures`,
/// `next_attempt`, `last_error`) into the ledger and drops those columns.
/// Runs inside [`install`]'s write transaction, so it looks for the old
/// columns again under the write lock: of two processes upgrading at once
/// the second finds nothing left to do, and a failure leaves the old shape
/// whole. Copies with `INSERT OR IGNORE`: an entry already in the ledger
/// wins.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let present = old_columns(conn)?;
    if present.is_empty() {
        return Ok(());
    }
    // A column missing from an odd table counts as its ledger default.
    let pick = |old: &str, default: &str| {
        if present.contains(&old) {
            old.to_owned()
        } else {
            default.to_owned()
        }
    };
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run, last_error, last_output)
             SELECT ?1, CAST(peerid AS TEXT), 0, coalesce({}, 0), coalesce({}, 0), {}, {}, NULL FROM bo_peer",
            pick("failures", "0"),
            pick("next_attempt", "0"),
            pick("last_try", "NULL"),
            pick("last_error", "NULL"),
        ),
        [TASK],
    )?;
    for old in present {
        conn.execute_batch(&format!("ALTER TABLE bo_peer DROP COLUMN {old}"))?;
    }
    Ok(())
}

/// A peer's row joined with its ledger entry (none yet: not tried).
const SELECT: &str = "SELECT p.peerid, p.target, p.token, p.generation, p.stamp, p.last_ok,
        l.last_run, coalesce(l.failures, 0), coalesce(l.next_attempt, 0), l.last_error,
        p.last_bytes, p.last_ms
    FROM bo_peer p LEFT JOIN bo_ledger l ON l.task = 'replicate' AND l.target = CAST(p.peerid AS TEXT)";

/// The same from a 0.1.0 peer table not yet migrated (read-only commands
/// on an upgraded repository, before anything wrote to it).
const SELECT_OLD: &str = "SELECT p.peerid, p.target, p.token, p.generation, p.stamp, p.last_ok,
        p.last_try, p.failures, p.next_attempt, p.last_error, p.last_bytes, p.last_ms
    FROM bo_peer p";

fn select(conn: &Connection) -> rusqlite::Result<&'static str> {
    Ok(if old_columns(conn)?.is_empty() {
        SELECT
    } else {
        SELECT_OLD
    })
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Peer> {
    Ok(Peer {
        id: r.get(0)?,
        target: r.get(1)?,
        token: r.get(2)?,
        generation: r.get(3)?,
        stamp: r.get(4)?,
        last_ok: r.get(5)?,
        last_try: r.get(6)?,
        failures: r.get(7)?,
        next_attempt: r.get(8)?,
        last_error: r.get(9)?,
        last_bytes: r.get(10)?,
        last_ms: r.get(11)?,
    })
}

/// True if `target` names an HTTP peer.
pub(crate) fn is_http(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://")
}

/// Adds a peer: a file path, or with a token the URL of another
/// `backoffice serve`'s replica endpoint (`https://host/replica/NAME`).
///
/// A file target must be an absolute path whose directory exists (a
/// network mount that is not mounted must fail, not be created) and must
/// not be the repository itself.
pub fn add(conn: &Connection, target: &str, token: Option<&str>) -> Result<Peer, ReplicateError> {
    let bad = |why: &str| ReplicateError::Target(target.to_owned(), why.to_owned());
    if target.chars().any(char::is_control) {
        return Err(bad("control characters"));
    }
    if is_http(target) {
        let ok = target
            .parse::<ureq::http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !ok {
            return Err(bad("not a URL with a host"));
        }
        match token {
            Some(t) if t.len() >= 16 && !t.chars().any(char::is_whitespace) => {}
            _ => {
                return Err(bad(
                    "an HTTP peer needs --token: the peer server's replica token (16 characters or more)",
                ));
            }
        }
    } else {
        if token.is_some() {
            return Err(bad("a token is for HTTP peers only"));
        }
        check_file_target(conn, target)?;
    }
    install(conn)?;
    let now = backoffice::clock::now();
    match conn.execute(
        "INSERT INTO bo_peer(target, token, ctime) VALUES (?1, ?2, ?3)",
        params![target, token, now],
    ) {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(ReplicateError::Duplicate(target.to_owned()));
        }
        Err(e) => return Err(e.into()),
    }
    find(conn, &conn.last_insert_rowid().to_string())?
        .ok_or_else(|| ReplicateError::NotFound(target.to_owned()))
}

fn check_file_target(conn: &Connection, target: &str) -> Result<(), ReplicateError> {
    let bad = |why: &str| ReplicateError::Target(target.to_owned(), why.to_owned());
    let path = Path::new(target);
    if !path.is_absolute() {
        return Err(bad("use an absolute path, or an http(s) URL with --token"));
    }
    let Some(name) = path.file_name() else {
        return Err(bad("name a file, not a directory"));
    };
    if path.is_dir() {
        return Err(bad("it is a directory; name the replica file inside it"));
    }
    if let Some(repo) = conn.path().filter(|p| !p.is_empty()) {
        let same = std::fs::canonicalize(repo).ok()
            == path
                .parent()
                .and_then(|d| std::fs::canonicalize(d).ok())
                .map(|d| d.join(name));
        if same {
            return Err(bad("that is the repository itself"));
        }
    }
    Ok(())
}

/// Every peer (none if the table does not exist).
pub fn list(conn: &Connection) -> Result<Vec<Peer>, ReplicateError> {
    let stmt = select(conn).and_then(|q| conn.prepare(&format!("{q} ORDER BY p.peerid")));
    match stmt {
        Ok(mut s) => Ok(s.query_map([], from_row)?.collect::<Result<_, _>>()?),
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// A peer by id or target.
pub fn find(conn: &Connection, key: &str) -> Result<Option<Peer>, ReplicateError> {
    let id: i64 = key.parse().unwrap_or(-1);
    let found = select(conn).and_then(|q| {
        conn.query_row(
            &format!("{q} WHERE p.peerid = ?1 OR p.target = ?2"),
            params![id, key],
            from_row,
        )
        .optional()
    });
    match found {
        Ok(p) => Ok(p),
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes a peer and its ledger entry (its replicas stay where they are).
pub fn remove(conn: &Connection, key: &str) -> Result<Peer, ReplicateError> {
    install(conn)?;
    let p = find(conn, key)?.ok_or_else(|| ReplicateError::NotFound(key.to_owned()))?;
    let gone = |c: &Connection| -> rusqlite::Result<()> {
        c.execute("DELETE FROM bo_peer WHERE peerid = ?1", [p.id])?;
        // Row ids are reused: a later peer must not inherit these retries.
        ledger::remove(c, TASK, &p.id.to_string())
    };
    backoffice::repo::in_write(conn, || gone(conn))?;
    Ok(p)
}

/// How a copy steps.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Pages per step.
    pub pages: i32,
    /// Pause between steps.
    pub pause: Duration,
    /// Generations to keep (the target and `keep - 1` older ones).
    pub keep: u32,
}

impl Step {
    /// The settings of this repository.
    pub fn from_settings(conn: &Connection) -> Step {
        Step {
            pages: backoffice::settings::int(conn, SETTINGS, STEP_PAGES)
                .clamp(1, i64::from(i32::MAX)) as i32,
            pause: Duration::from_millis(
                backoffice::settings::int(conn, SETTINGS, STEP_PAUSE_MS).max(0) as u64,
            ),
            keep: backoffice::settings::int(conn, SETTINGS, KEEP).clamp(1, 100) as u32,
        }
    }
}

/// What one copy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Size of the replica, bytes.
    pub bytes: u64,
    /// Pages copied.
    pub pages: i64,
    /// Times a write restarted the copy (rollback-journal mode).
    pub restarts: u32,
    /// Whether it had to hold the read lock to finish.
    pub held_lock: bool,
    /// Wall time, ms.
    pub ms: u64,
}

/// Copies the database at `src` to `target` as described in the module
/// docs, keeping `step.keep` generations.
pub fn snapshot(src: &Path, target: &Path, step: Step) -> Result<Snapshot, ReplicateError> {
    let t0 = Instant::now();
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if target.file_name().is_none() {
        return Err(ReplicateError::Target(
            target.display().to_string(),
            "no file name".into(),
        ));
    }
    if !dir.is_dir() {
        return Err(ReplicateError::Io {
            what: "the peer's folder is missing:",
            path: dir.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let tmp = guarded_temp(target, "")?;
    let result = copy_to(src, &tmp, step);
    let (pages, restarts, held_lock) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let bytes = match install_replica(&tmp, target, step.keep) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    Ok(Snapshot {
        bytes,
        pages,
        restarts,
        held_lock,
        ms: t0.elapsed().as_millis() as u64,
    })
}

/// Makes the finished copy `tmp` (beside `target`) the replica: fsyncs
/// it, keeps `keep` generations, renames it over `target` and fsyncs the
/// directory. Returns its size. Used for local copies and for copies a
/// server receives from a peer.
pub fn install_replica(tmp: &Path, target: &Path, keep: u32) -> Result<u64, ReplicateError> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", tmp))?;
    let bytes = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
    rotate(target, keep)?;
    std::fs::rename(tmp, target).map_err(io("renaming the replica into place at", target))?;
    // The rename is durable once the directory is.
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(bytes)
}

/// Pushes a snapshot of `src` to an HTTP peer: copies it to a temporary
/// file beside the repository, sends it with `PUT` and the peer's token,
/// and removes the temporary file. The peer checks it (`quick_check`)
/// before it replaces its replica.
pub fn push(src: &Path, url: &str, token: &str, step: Step) -> Result<Snapshot, ReplicateError> {
    let t0 = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(3600)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let answered = |resp: ureq::http::Response<ureq::Body>| -> Result<(), ReplicateError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body: String = resp
            .into_body()
            .read_to_string()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(ReplicateError::Peer(format!(
            "{url} answered {status}: {}",
            backoffice::short_line(&body)
        )))
    };
    // Ask first: a server that refuses a copy closes the connection under
    // a large upload, and the sender would see a broken pipe, not why.
    let asked = agent
        .get(url)
        .header("Authorization", &auth)
        .call()
        .map_err(|e| ReplicateError::Peer(format!("asking {url}: {e}")))?;
    answered(asked)?;
    let tmp = guarded_temp(src, ".push")?;
    let sent = (|| {
        let (pages, restarts, held_lock) = copy_to(src, &tmp, step)?;
        let file = std::fs::File::open(&tmp).map_err(io("reading the copy", &tmp))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let resp = agent
            .put(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/vnd.sqlite3")
            .send(&file)
            .map_err(|e| ReplicateError::Peer(format!("sending to {url}: {e}")))?;
        answered(resp)?;
        Ok(Snapshot {
            bytes,
            pages,
            restarts,
            held_lock,
            ms: t0.elapsed().as_millis() as u64,
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    sent
}

/// A new, empty, guarded temporary file beside `path`:
/// `.NAME{tag}.partial-PID`, after removing those of dead processes.
fn guarded_temp(path: &Path, tag: &str) -> Result<PathBuf, ReplicateError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    let name = format!("{name}{tag}");
    remove_stale_partials(dir, &name);
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    // The file must exist before its guard looks for it.
    std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    guard(&tmp);
    Ok(tmp)
}

/// Progress of a copy (see [`set_copy_progress`]).
type CopyProgress = Box<dyn Fn(u64, u64) + Send + Sync>;
static COPY_PROGRESS: std::sync::OnceLock<CopyProgress> = std::sync::OnceLock::new();

/// Lets this process watch its copies: `f(copied, total)` in pages after
/// each backup step of every copy (to a file or an HTTP peer). For a
/// progress line on a terminal (`backoffice peer sync`); a worker sets
/// none, and then a copy costs nothing more. Set once per process.
pub fn set_copy_progress(f: impl Fn(u64, u64) + Send + Sync + 'static) {
    let _ = COPY_PROGRESS.set(Box::new(f));
}

/// The command that starts a temporary-file guard (see [`set_temp_guard`]).
static TEMP_GUARD: std::sync::OnceLock<backoffice::process::WorkerCommand> =
    std::sync::OnceLock::new();

/// Lets copies start a guard process: `CMD PID START FILE`, which removes
/// the temporary `FILE` if this process (PID, with that start time) dies
/// before it renamed it — a worker killed mid-copy then leaves no partial
/// file at all. `backoffice-cli` sets it to its hidden `guard-temp`
/// command; a host that does not set it gets no guard, and the next copy
/// removes what a killed one left.
pub fn set_temp_guard(cmd: backoffice::process::WorkerCommand) {
    let _ = TEMP_GUARD.set(cmd);
}

/// Starts the guard for `file`, if one is configured; it is reaped by a
/// thread, so a long-lived host keeps no zombie.
fn guard(file: &Path) {
    let Some(cmd) = TEMP_GUARD.get() else {
        return;
    };
    let me = std::process::id();
    let start = backoffice::process::proc_stat(i64::from(me)).map_or(0, |s| s.start);
    let spawned = std::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .arg(me.to_string())
        .arg(start.to_string())
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => backoffice::process::reap(child),
        Err(e) => tracing::warn!("no guard for {}: {e}", file.display()),
    }
}

/// The guard's body: waits (polling every 100 ms, at most a day) until
/// `file` is gone — renamed into place, the normal end — or the process
/// `pid` with start time `start` is gone, and then removes `file`.
pub fn guard_temp(pid: i64, start: u64, file: &Path) -> i32 {
    // Not in the copier's session: a Ctrl-C of `peer sync` must not stop
    // the guard that cleans up after it.
    let _ = rustix::process::setsid();
    let deadline = Instant::now() + Duration::from_secs(86_400);
    while Instant::now() < deadline {
        if !file.exists() {
            return 0;
        }
        let alive = backoffice::process::proc_stat(pid)
            .is_some_and(|s| s.state != 'Z' && (start == 0 || s.start == start));
        if !alive {
            let _ = std::fs::remove_file(file);
            let mut journal = file.as_os_str().to_owned();
            journal.push("-journal");
            let _ = std::fs::remove_file(journal);
            return 0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    0
}

/// The copy itself: backup steps into `tmp`; returns (pages, restarts,
/// held the lock).
fn copy_to(src: &Path, tmp: &Path, step: Step) -> Result<(i64, u32, bool), ReplicateError> {
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(Duration::from_secs(5))?;
    let wal = from
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?
        .eq_ignore_ascii_case("wal");
    let begin = |c: &Connection| c.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;");
    let mut held = false;
    if wal {
        // One snapshot for the whole copy; writers go on (WAL).
        begin(&from)?;
        held = true;
    }
    let mut to = Connection::open(tmp)?;
    // A fresh temporary copy needs no rollback journal (a failed copy is
    // thrown away) and no fsync per step (the finished file is fsynced
    // once); and a killed copier then leaves one file for its guard.
    to.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")?;
    let (pages, restarts, held_lock) = {
        let backup = Backup::new(&from, &mut to)?;
        let mut restarts = 0;
        let mut last_remaining = i32::MAX;
        let mut waited = Duration::ZERO;
        let mut pages = step.pages;
        loop {
            match backup.step(pages)? {
                StepResult::Done => break,
                StepResult::More => {
                    let p = backup.progress();
                    if let Some(f) = COPY_PROGRESS.get() {
                        let total = u64::try_from(p.pagecount).unwrap_or(0);
                        let left = u64::try_from(p.remaining).unwrap_or(0);
                        f(total.saturating_sub(left), total);
                    }
                    if p.remaining > last_remaining {
                        // A writer changed the source: SQLite started over.
                        restarts += 1;
                        if restarts > MAX_RESTARTS && !held {
                            begin(&from)?;
                            held = true;
                            pages = pages.max(4096);
                        }
                    }
                    last_remaining = p.remaining;
                    if !held || wal {
                        std::thread::sleep(step.pause);
                    }
                }
                // Locked by a writer: wait a little (bounded overall).
                _ => {
                    if waited >= LOCK_WAIT {
                        return Err(ReplicateError::Locked(waited));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    waited += Duration::from_millis(10);
                }
            }
        }
        (
            i64::from(backup.progress().pagecount),
            restarts,
            held && !wal,
        )
    };
    if held {
        from.execute_batch("COMMIT")?;
    }
    // A replica is one self-contained file.
    to.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))?;
    drop(to);
    Ok((pages, restarts, held_lock))
}

/// Removes `.NAME.partial-PID` files whose process is gone (a worker
/// killed mid-copy).
fn remove_stale_partials(dir: &Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(pid) = f.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let live = pid
            .parse::<i64>()
            .is_ok_and(|p| p == i64::from(std::process::id()) || backoffice::process::exists(p));
        if !live {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `TARGET.N` for generation N (0 is the target itself).
fn generation(target: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return target.to_owned();
    }
    let mut s = target.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Makes room for a new replica at `target`: shifts `TARGET.i` to
/// `TARGET.i+1`, hard-links the current target as `TARGET.1` (so the target
/// itself never disappears), and removes generations past `keep`.
fn rotate(target: &Path, keep: u32) -> Result<(), ReplicateError> {
    // Beyond what is kept (also after `keep` was lowered).
    let mut n = keep;
    while n < 200 {
        let g = generation(target, n);
        if std::fs::remove_file(&g).is_err() && !g.exists() && n > keep + 1 {
            break;
        }
        n += 1;
    }
    if keep < 2 || !target.exists() {
        return Ok(());
    }
    for i in (1..keep - 1).rev() {
        let from = generation(target, i);
        if from.exists() {
            std::fs::rename(&from, generation(target, i + 1))
                .map_err(io("keeping an older replica", &from))?;
        }
    }
    let one = generation(target, 1);
    if std::fs::hard_link(target, &one).is_err() {
        // No hard links here (some network filesystems): copy instead, so
        // the target still never goes missing.
        std::fs::copy(target, &one).map_err(io("keeping the previous replica as", &one))?;
    }
    Ok(())
}

/// The repository's change stamp: size and modification time of the
/// database file and of its WAL.
pub(crate) fn change_stamp(repo: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let part = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => format!("{}.{}.{}", m.len(), m.mtime(), m.mtime_nsec()),
        Err(_) => "-".to_owned(),
    };
    let mut wal = repo.as_os_str().to_owned();
    wal.push("-wal");
    format!("{}/{}", part(repo), part(Path::new(&wal)))
}

/// When `p` is next due.
fn peer_due(p: &Peer, interval: i64) -> i64 {
    let after_ok = p.last_ok.map_or(0, |t| t + interval);
    after_ok.max(p.next_attempt)
}

/// Replicates one peer now. Returns the snapshot (`None` is reserved for
/// "unchanged, nothing to copy", which is not decided yet; `force` will
/// then copy anyway).
pub fn sync_peer(
    conn: &Connection,
    repo: &Path,
    peer: &Peer,
    force: bool,
    now: i64,
) -> Result<Option<Snapshot>, ReplicateError> {
    // A repository of an older release gets its ledger first.
    install(conn)?;
    let target = peer.id.to_string();
    // Account for every write so far, then read the generation the copy
    // will hold (writes during the copy move it on, for the next time).
    let g0 = own_write(conn, |c| Ok(app_generation(c)))?;
    let present = is_http(&peer.target) || Path::new(&peer.target).exists();
    if !force && peer.generation == Some(g0) && present {
        own_write(conn, |c| {
            c.execute(
                "UPDATE bo_peer SET last_ok = ?2 WHERE peerid = ?1",
                params![peer.id, now],
            )?;
            ledger::succeeded(c, TASK, &target, 0, now, None)
        })?;
        return Ok(None);
    }
    let stamp = change_stamp(repo);
    let step = Step::from_settings(conn);
    let copied = if is_http(&peer.target) {
        push(
            repo,
            &peer.target,
            peer.token.as_deref().unwrap_or(""),
            step,
        )
    } else {
        snapshot(repo, Path::new(&peer.target), step)
    };
    match copied {
        Ok(s) => {
            own_write(conn, |c| {
                c.execute(
                    "UPDATE bo_peer SET generation = ?6, stamp = ?2, last_ok = ?3, last_bytes = ?4,
                            last_ms = ?5
                     WHERE peerid = ?1",
                    params![
                        peer.id,
                        stamp,
                        now,
                        i64::try_from(s.bytes).unwrap_or(i64::MAX),
                        i64::try_from(s.ms).unwrap_or(i64::MAX),
                        g0
                    ],
                )?;
                ledger::succeeded(c, TASK, &target, 0, now, None)
            })?;
            tracing::info!(
                peer = %peer.target, bytes = s.bytes, ms = s.ms, restarts = s.restarts,
                "replicated"
            );
            Ok(Some(s))
        }
        Err(e) => {
            // On a timer, so the backoffice's own write: an application
            // generation that moved for it would copy on every retry.
            own_write(conn, |c| {
                ledger::failed(
                    c,
                    TASK,
                    &target,
                    now,
                    &backoffice::short_line(&e.to_string()),
                    None,
                    &ledger::Backoff::default(),
                )
            })?;
            Err(e)
        }
    }
}

/// The `replicate` task.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replicate;

impl Task for Replicate {
    fn name(&self) -> &str {
        "replicate"
    }

    /// What makes it due: a peer added, a sync forced or retried, the interval (see `backoffice::due`).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&["bo_peer", "bo_ledger"])
    }

    fn settings(&self) -> &'static [backoffice::settings::Def] {
        SETTINGS
    }

    fn due(&self, db: Db<'_>, _now: i64) -> Result<Due, TaskError> {
        let Some(conn) = db.sqlite() else {
            // SQLite only: nothing of this task's is ever due elsewhere.
            return Ok(Due::Never);
        };
        // A schema lookup first: most repositories have no peers, and a
        // failing statement would be prepared again on every request.
        if !conn.table_exists(None, "bo_peer")? {
            return Ok(Due::Never);
        }
        // One statement: the interval setting (a bad value counts as the
        // default, as everywhere) and the earliest peer, its retry time
        // from the ledger.
        macro_rules! earliest {
            ($from:literal) => {
                conn.prepare_cached(concat!(
                    "WITH iv(s) AS (SELECT coalesce((SELECT CAST(value AS INTEGER) FROM config
                                     WHERE name = ?1 AND CAST(value AS INTEGER) >= 10), 3600))
                     SELECT count(*), ",
                    $from
                ))
                .and_then(|mut s| {
                    s.query_row([INTERVAL], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                })
            };
        }
        let found = earliest!(
            "min(max(coalesce(p.last_ok + (SELECT s FROM iv), 0), coalesce(l.next_attempt, 0)))
             FROM bo_peer p LEFT JOIN bo_ledger l
               ON l.task = 'replicate' AND l.target = CAST(p.peerid AS TEXT)"
        );
        // A 0.1.0 repository not migrated yet has no ledger: its retry
        // times are still in bo_peer, read them there (a worker migrates).
        // With a ledger but the old columns (another task migrated first)
        // the statement above reads no retry times, so it says "due" too
        // early, never too late, and the run that follows migrates.
        let (n, earliest) = match found {
            Err(e) if backoffice::repo::is_no_such_table(&e) => earliest!(
                "min(max(coalesce(last_ok + (SELECT s FROM iv), 0), next_attempt)) FROM bo_peer"
            )?,
            other => other?,
        };
        Ok(match (n, earliest) {
            (0, _) | (_, None) => Due::Never,
            (_, Some(t)) => Due::At(t),
        })
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let Some(conn) = ctx.db.sqlite() else {
            // SQLite only: `status` says so once; a failure in every run's
            // record would only be noise (replication of a PostgreSQL database
            // is PostgreSQL's own business).
            return Ok(0);
        };
        // No peer was ever added: nothing to install or copy. (Installing
        // anyway put two tables, their triggers and write tracking into
        // every repository a worker ever ran in, and every later open had
        // to parse them: a third of an idle sweep's time.)
        if !conn.table_exists(None, "bo_peer")? {
            return Ok(0);
        }
        install(conn)?;
        let peers = list(conn)?;
        let interval = backoffice::settings::int(conn, SETTINGS, INTERVAL);
        let mut done = 0;
        let mut failed = Vec::new();
        for p in peers.iter().filter(|p| peer_due(p, interval) <= ctx.now) {
            match sync_peer(conn, ctx.repo, p, false, ctx.now) {
                Ok(Some(_)) => done += 1,
                Ok(None) => {}
                Err(e) => failed.push(format!("peer {} ({}): {e}", p.id, p.target)),
            }
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(Box::new(backoffice::Partial {
                items: done,
                error: failed.join("; "),
            }))
        }
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let Some(conn) = db.sqlite() else {
            return TaskStatus::sqlite_only(db);
        };
        let mut st = TaskStatus::default();
        let Ok(peers) = list(conn) else {
            return st;
        };
        if peers.is_empty() {
            return st;
        }
        let failing = peers.iter().filter(|p| p.failures > 0).count() as i64;
        st.gauges = vec![
            Gauge::new("peers", "ok", peers.len() as i64 - failing),
            Gauge::new("peers", "failing", failing),
        ];
        for p in &peers {
            let last = match p.last_ok {
                Some(t) => format!(
                    "last copy {} ({} bytes in {} ms)",
                    backoffice::clock::relative(t, now),
                    p.last_bytes.unwrap_or(0),
                    p.last_ms.unwrap_or(0)
                ),
                None => "no copy yet".to_owned(),
            };
            st.info.push(format!("peer {} {}: {last}", p.id, p.target));
            if p.failures > 0 {
                st.problems.push(format!(
                    "peer {} {} failed {} time(s) in a row: {}; next attempt {}",
                    p.id,
                    p.target,
                    p.failures,
                    p.last_error.as_deref().unwrap_or("?"),
                    backoffice::clock::relative(p.next_attempt, now)
                ));
            }
        }
        st
    }
}

#[cfg(test)]
mod tests {
    /// A worker run in a repository that never had a peer leaves its
    /// schema alone: every later open (each request's check, each sweep's
    /// visit) parses every table and trigger in it.
    #[test]
    fn a_run_without_peers_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        let mut r = backoffice::Repo::open(&p).unwrap();
        let tasks = backoffice::Tasks::new().with(Replicate);
        let opts = backoffice::RunOptions {
            nodelay: true,
            ..Default::default()
        };
        backoffice::run(&mut r, &tasks, &opts).unwrap();
        let tables: Vec<String> = r
            .conn()
            .prepare("SELECT name FROM sqlite_schema WHERE name LIKE 'bo_%' AND name NOT LIKE 'bo_due_config_%'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.is_empty(), "{tables:?}");
    }

    use super::*;

    fn source(dir: &Path, wal: bool, rows: i64) -> PathBuf {
        let p = dir.join("src.db");
        let c = Connection::open(&p).unwrap();
        if wal {
            c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
        }
        c.execute_batch(
            "CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime);
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        insert(&c, rows);
        p
    }

    fn insert(c: &Connection, n: i64) {
        c.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            c.execute(
                "INSERT INTO t(v) VALUES (?1)",
                [format!("row {i} {}", "x".repeat(200))],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    }

    fn rows(p: &Path) -> i64 {
        let c = Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    const STEP: Step = Step {
        pages: 16,
        pause: Duration::ZERO,
        keep: 3,
    };

    #[test]
    fn a_snapshot_is_a_whole_database_and_generations_rotate() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = source(dir.path(), wal, 500);
            let target = dir.path().join("replica.db");
            let s = snapshot(&src, &target, STEP).unwrap();
            assert!(s.pages > 16 && s.bytes > 100_000, "{s:?}");
            assert_eq!(rows(&target), 500);
            let c = Connection::open(&src).unwrap();
            for (i, want) in [(1, 600), (2, 700), (3, 800)] {
                insert(&c, 100);
                snapshot(&src, &target, STEP).unwrap();
                assert_eq!(rows(&target), want, "wal={wal} round {i}");
            }
            // keep = 3: the target and two older ones, newest first.
            assert_eq!(rows(&generation(&target, 1)), 700);
            assert_eq!(rows(&generation(&target, 2)), 600);
            assert!(!generation(&target, 3).exists());
            // A replica is one file in rollback mode, and no temporary is left.
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("replica") || n.starts_with(".replica"))
                .collect();
            let mut names = names;
            names.sort();
            assert_eq!(
                names,
                ["replica.db", "replica.db.1", "replica.db.2"],
                "wal={wal}"
            );
            // Lowering keep removes what is no longer kept, and only that.
            std::fs::write(dir.path().join("replica.db.notes"), "mine").unwrap();
            snapshot(&src, &target, Step { keep: 1, ..STEP }).unwrap();
            assert!(!generation(&target, 1).exists() && !generation(&target, 2).exists());
            assert!(dir.path().join("replica.db.notes").exists());
        }
    }

    #[test]
    fn only_application_writes_make_a_copy_due() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = source(dir.path(), wal, 100);
            let c = Connection::open(&src).unwrap();
            let target = dir.path().join("r.db");
            add(&c, target.to_str().unwrap(), None).unwrap();
            let peer = || find(&c, "1").unwrap().unwrap();
            assert!(sync_peer(&c, &src, &peer(), false, 1000).unwrap().is_some());
            // The engine's own writes (a lease, a run record) are not changes.
            for i in 0..3 {
                own_write(&c, |c| {
                    backoffice::repo::config_set(c, "backoffice", &format!("{i} 9 0 0"))
                })
                .unwrap();
            }
            assert!(
                sync_peer(&c, &src, &peer(), false, 2000).unwrap().is_none(),
                "wal={wal}"
            );
            assert_eq!(peer().last_ok, Some(2000), "checked and current");
            // Another connection's commit is.
            let app = Connection::open(&src).unwrap();
            insert(&app, 1);
            assert!(
                sync_peer(&c, &src, &peer(), false, 3000).unwrap().is_some(),
                "wal={wal}"
            );
            assert_eq!(rows(&target), 101);
            assert!(
                sync_peer(&c, &src, &peer(), false, 4000).unwrap().is_none(),
                "wal={wal}"
            );
            // --force copies anyway; a missing replica is copied again.
            assert!(sync_peer(&c, &src, &peer(), true, 5000).unwrap().is_some());
            std::fs::remove_file(&target).unwrap();
            assert!(sync_peer(&c, &src, &peer(), false, 6000).unwrap().is_some());
        }
    }

    /// The peers' own bookkeeping — a check that found nothing to copy, a
    /// failure recorded in the ledger — is the backoffice's own write: it
    /// must not make the next check of any peer copy again.
    #[test]
    fn peer_bookkeeping_never_makes_a_copy_due() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = source(dir.path(), wal, 10);
            let c = Connection::open(&src).unwrap();
            let good = dir.path().join("r.db");
            add(&c, good.to_str().unwrap(), None).unwrap();
            let gone = dir.path().join("mnt/r.db");
            add(&c, gone.to_str().unwrap(), None).unwrap();
            let peer = |id: &str| find(&c, id).unwrap().unwrap();
            assert!(
                sync_peer(&c, &src, &peer("1"), false, 1000)
                    .unwrap()
                    .is_some()
            );
            for t in [2000, 3000, 4000] {
                // Peer 2 fails (its folder is missing), on a timer.
                assert!(sync_peer(&c, &src, &peer("2"), false, t).is_err());
                assert!(
                    sync_peer(&c, &src, &peer("1"), false, t + 1)
                        .unwrap()
                        .is_none(),
                    "wal={wal} t={t}: copied though only the backoffice wrote"
                );
            }
            assert_eq!(peer("2").failures, 3);
            assert_eq!(peer("1").last_ok, Some(4001));
        }
    }

    #[test]
    fn stale_partials_of_dead_workers_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), true, 10);
        let target = dir.path().join("r.db");
        let dead = dir.path().join(".r.db.partial-999999999");
        let live = dir.path().join(format!(".r.db.partial-{}", 1));
        std::fs::write(&dead, "half a copy").unwrap();
        std::fs::write(&live, "pid 1 is alive").unwrap();
        snapshot(&src, &target, STEP).unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
        assert_eq!(rows(&target), 10);
    }

    #[test]
    fn a_missing_folder_fails_and_the_peer_backs_off_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), true, 10);
        let c = Connection::open(&src).unwrap();
        let target = dir.path().join("mnt/replica.db");
        let p = add(&c, target.to_str().unwrap(), None).unwrap();
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(0));
        let err = sync_peer(&c, &src, &p, false, 1000).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let p = find(&c, "1").unwrap().unwrap();
        // The engine's retry policy: a minute, plus up to a tenth.
        assert_eq!((p.failures, p.last_try), (1, Some(1000)));
        assert!((1060..=1066).contains(&p.next_attempt), "{p:?}");
        assert_eq!(
            Replicate.due((&c).into(), 0).unwrap(),
            Due::At(p.next_attempt)
        );
        assert!(p.last_error.as_deref().unwrap().contains("missing"));
        let st = Replicate.status((&c).into(), 1000);
        assert!(
            st.problems[0].contains("failed 1 time"),
            "{:?}",
            st.problems
        );
        // The folder appears (the mount is back): the next attempt works.
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let s = sync_peer(&c, &src, &p, false, 1100).unwrap();
        assert!(s.is_some());
        let p = find(&c, "1").unwrap().unwrap();
        assert_eq!((p.failures, p.last_ok), (0, Some(1100)));
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(1100 + 3600));
        backoffice::repo::config_set(&c, INTERVAL, "600").unwrap();
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(1100 + 600));
        backoffice::repo::config_set(&c, INTERVAL, "soon").unwrap();
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(1100 + 3600));
    }

    /// Issue 11, item 4: a 0.1.0 peer table (retry state in its own
    /// columns) moves into the ledger in place: nothing lost, the old
    /// columns gone, the copy facts left, `list` the same before and after,
    /// `due` right on both shapes, and a second install (or two processes
    /// at once) a no-op.
    #[test]
    fn an_old_peer_table_migrates_into_the_ledger_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), true, 1);
        let c = Connection::open(&src).unwrap();
        // As release 0.1.0 created and left it.
        c.execute_batch(
            "CREATE TABLE bo_peer(
               peerid INTEGER PRIMARY KEY, target TEXT NOT NULL UNIQUE, token TEXT,
               generation INTEGER, stamp TEXT, last_ok INTEGER, last_try INTEGER,
               failures INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL DEFAULT 0,
               last_error TEXT, last_bytes INTEGER, last_ms INTEGER, ctime INTEGER NOT NULL);
             INSERT INTO bo_peer VALUES
               (1, '/r/ok.db', NULL, 7, '1.2.3/-', 5000, 5000, 0, 0, NULL, 4096, 3, 100),
               (2, '/r/gone.db', NULL, NULL, NULL, NULL, 6000, 3, 9000, 'folder missing', NULL, NULL, 100),
               (3, 'https://peer.example.org/replica/app', '0123456789abcdef0', NULL, NULL,
                NULL, NULL, 0, 0, NULL, NULL, NULL, 100);
             INSERT INTO config VALUES ('replicate-interval', '600', 0);",
        )
        .unwrap();
        let before = list(&c).unwrap();
        assert_eq!(before.len(), 3);
        assert_eq!(
            (
                before[1].failures,
                before[1].next_attempt,
                before[1].last_try
            ),
            (3, 9000, Some(6000))
        );
        // Not migrated, no ledger: due reads the old columns (peer 3, never
        // tried, is due at once).
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(0));
        c.execute("DELETE FROM bo_peer WHERE peerid = 3", [])
            .unwrap();
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(5600));
        c.execute(
            "INSERT INTO bo_peer(peerid, target, token, ctime)
             VALUES (3, 'https://peer.example.org/replica/app', '0123456789abcdef0', 100)",
            [],
        )
        .unwrap();

        // Two processes' workers upgrade at once: one migrates, the other
        // finds it done (it re-checks under the write lock).
        let ready = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let c = Connection::open(&src).unwrap();
                    c.busy_timeout(Duration::from_secs(10)).unwrap();
                    ready.wait();
                    install(&c).unwrap();
                });
            }
        });
        let cols: Vec<String> = c
            .prepare("SELECT name FROM pragma_table_info('bo_peer')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            cols,
            [
                "peerid",
                "target",
                "token",
                "generation",
                "stamp",
                "last_ok",
                "last_bytes",
                "last_ms",
                "ctime"
            ]
        );
        let e = ledger::get(&c, TASK, "2").unwrap().unwrap();
        assert_eq!(
            (
                e.cursor,
                e.failures,
                e.next_attempt,
                e.last_run,
                e.last_error.as_deref()
            ),
            (0, 3, 9000, Some(6000), Some("folder missing"))
        );
        assert_eq!(ledger::all(&c, TASK).unwrap().len(), 3);
        assert_eq!(list(&c).unwrap(), before, "list reads the same state");
        assert_eq!(
            Replicate.due((&c).into(), 0).unwrap(),
            Due::At(0),
            "peer 3 is due at once"
        );
        // Idempotent.
        install(&c).unwrap();
        assert_eq!(list(&c).unwrap(), before);
        // The peer works on from there: a failure counts on from 3.
        let p = find(&c, "2").unwrap().unwrap();
        assert!(sync_peer(&c, &src, &p, false, 10_000).is_err());
        let p = find(&c, "2").unwrap().unwrap();
        assert_eq!((p.failures, p.last_try), (4, Some(10_000)));
        assert!(
            (10_000 + 480..=10_000 + 528).contains(&p.next_attempt),
            "{p:?}"
        );
        // Removing a peer removes its ledger entry.
        remove(&c, "2").unwrap();
        assert_eq!(ledger::get(&c, TASK, "2").unwrap(), None);
    }

    /// A 0.1.0 peer table beside a ledger another task already made: `due`
    /// must not say "later" than the stored retry times allow.
    #[test]
    fn due_on_an_old_peer_table_beside_a_ledger_is_never_late() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), false, 1);
        let c = Connection::open(&src).unwrap();
        c.execute_batch(
            "CREATE TABLE bo_peer(
               peerid INTEGER PRIMARY KEY, target TEXT NOT NULL UNIQUE, token TEXT,
               generation INTEGER, stamp TEXT, last_ok INTEGER, last_try INTEGER,
               failures INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL DEFAULT 0,
               last_error TEXT, last_bytes INTEGER, last_ms INTEGER, ctime INTEGER NOT NULL);
             INSERT INTO bo_peer VALUES
               (1, '/r/gone.db', NULL, NULL, NULL, NULL, 6000, 3, 9000, 'missing', NULL, NULL, 100);",
        )
        .unwrap();
        ledger::install(&c).unwrap();
        match Replicate.due((&c).into(), 0).unwrap() {
            Due::At(t) => assert!(t <= 9000, "{t}"),
            other => panic!("{other:?}"),
        }
        install(&c).unwrap();
        assert_eq!(Replicate.due((&c).into(), 0).unwrap(), Due::At(9000));
        assert_eq!(find(&c, "1").unwrap().unwrap().failures, 3);
    }

    #[test]
    fn peers_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), false, 1);
        let c = Connection::open(&src).unwrap();
        for bad in [
            "relative.db",
            "/",
            dir.path().to_str().unwrap(),
            src.to_str().unwrap(),
        ] {
            assert!(
                matches!(add(&c, bad, None), Err(ReplicateError::Target(..))),
                "{bad}"
            );
        }
        let t = dir.path().join("r.db");
        add(&c, t.to_str().unwrap(), None).unwrap();
        assert!(matches!(
            add(&c, t.to_str().unwrap(), None),
            Err(ReplicateError::Duplicate(_))
        ));
        let url = "https://peer.example.org/replica/app";
        for (target, token) in [
            (url, None),
            (url, Some("short")),
            ("https://", Some("0123456789abcdef0")),
            (t.to_str().unwrap(), Some("0123456789abcdef0")),
        ] {
            assert!(
                matches!(add(&c, target, token), Err(ReplicateError::Target(..))),
                "{target} {token:?}"
            );
        }
        let p = add(&c, url, Some("0123456789abcdef0")).unwrap();
        assert_eq!(p.token.as_deref(), Some("0123456789abcdef0"));
        assert!(
            !serde_json::to_string(&p)
                .unwrap()
                .contains("0123456789abcdef0")
        );
        assert_eq!(remove(&c, t.to_str().unwrap()).unwrap().id, 1);
        assert_eq!(list(&c).unwrap().len(), 1, "the HTTP peer is left");
    }

    #[test]
    fn a_writer_keeps_writing_during_a_wal_copy_and_the_copy_is_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), true, 20_000);
        let target = dir.path().join("r.db");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (written, worst) = std::thread::scope(|s| {
            let w = s.spawn(|| {
                let c = Connection::open(&src).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let (mut n, mut worst) = (0, Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 100_000 {
                    let t = Instant::now();
                    c.execute("INSERT INTO t(v) VALUES ('during')", []).unwrap();
                    worst = worst.max(t.elapsed());
                    n += 1;
                }
                (n, worst)
            });
            let slow = Step {
                pages: 8,
                pause: Duration::from_millis(1),
                keep: 1,
            };
            snapshot(&src, &target, slow).unwrap();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            w.join().unwrap()
        });
        assert!(written > 0, "the writer wrote during the copy");
        // The copy is the database as of one instant: all the first rows,
        // then some of the writer's, with no gap.
        let n = rows(&target);
        assert!((20_000..=20_000 + written).contains(&n), "{n}");
        let c = Connection::open(&target).unwrap();
        let max: i64 = c
            .query_row("SELECT max(id) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max, n);
        eprintln!("writer: {written} inserts during the copy, worst {worst:?}");
    }
}
