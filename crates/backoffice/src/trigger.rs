//! The after-request check, and starting a worker.
//!
//! After each successful request, a host calls [`Backoffice::after_request`]
//! with the connection it already has open. The check is read-only and
//! O(1) — one statement reading three `config` rows (the lease, the off
//! switch and the due summary, [`crate::due`]), at most one `kill(2)`, and
//! each task's cheap `due` only when the summary does not answer. Its
//! answer "nothing due" (or "disabled") is kept with a stamp of the
//! database's committed state ([`crate::stamp`]: the header, and in WAL
//! mode the WAL index header, read without a lock), and while nobody has
//! committed anything since and the summary's time has not come, the next
//! check gives it again without reading the database (`KeptAnswer`): on a
//! server that mostly reads, a check is then a `pread` and a comparison.
//! It answers *no* when:
//!
//! * the connection is read-only (a read-only repository never starts a
//!   worker, and never turns a request into an error),
//! * `backoffice-disable` is on,
//! * a live worker already waits on deck (it will pick up this request's
//!   work when the current lease ends),
//! * a worker this process started moments ago has not yet written itself
//!   into the lease (without this, every reply in the few milliseconds
//!   between a spawn and the worker's first transaction would start one
//!   more worker: a busy server started 27 workers for 4 runs), or
//! * no task has anything due. Fossil starts a worker here even when there
//!   is nothing to do; we do not, so read-only traffic spawns nothing; or
//! * the database is locked by another writer: the check caps the
//!   connection's busy timeout at [`repo::CHECK_BUSY_TIMEOUT`] while it
//!   reads (and puts the host's back; not in WAL mode, where a reader never
//!   waits for a writer), and answers "not now"
//!   ([`Check::Busy`]); the next request looks again. A reply is never
//!   held up for the busy timeout.
//!
//! Otherwise it starts a detached worker ([`crate::process::WorkerCommand`])
//! and returns at once; the request never waits for the work. If the worker
//! cannot be started (no `/dev/null` in a chroot, no free pids), the failure
//! goes to the log and the work runs in-process in no-delay mode, so it is
//! neither lost nor silent.
//!
//! The worker side is [`worker_main`]: detach, open the repository, run the
//! lease protocol ([`crate::engine`]), and report any failure in the log file
//! it was handed on its command line (the repository may be the very thing
//! that cannot be opened).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Serialize;

use crate::clock;
use crate::due;
use crate::engine::{self, Outcome, RunOptions};
use crate::lease::{Lease, Slot};
use crate::process::{self, Identity, WorkerCommand};
use crate::repo::{self, Repo};
use crate::settings::{self, LEASE_TIME, LOGFILE};
use crate::stamp;
use crate::task::{self, Tasks};

/// The answer of the after-request check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "check")]
pub enum Check {
    /// Work is due and nobody is queued for it: start a worker.
    Needed,
    /// The connection cannot write.
    ReadOnly,
    /// `backoffice-disable` is on.
    Disabled,
    /// A live worker already waits on deck.
    OnDeck {
        /// Its pid.
        pid: i64,
    },
    /// A worker this process just started has not taken its place in the
    /// lease yet; it will do the work.
    Starting {
        /// Its pid.
        pid: i64,
    },
    /// Another connection holds the database locked: not now. The check
    /// never waits for a lock (more than [`repo::CHECK_BUSY_TIMEOUT`]); the
    /// next request looks again.
    Busy,
    /// No task has anything due.
    NothingDue {
        /// When something next becomes due, if known.
        next: Option<i64>,
    },
    /// The check itself failed (it never fails the request).
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Check {
    /// True if a worker should be started.
    pub fn is_needed(&self) -> bool {
        *self == Check::Needed
    }

    /// A short sentence for `backoffice trigger` and logs.
    pub fn describe(&self) -> String {
        match self {
            Check::Needed => "work is due".into(),
            Check::ReadOnly => "not needed: the repository is read-only".into(),
            Check::Disabled => "not needed: backoffice-disable is on".into(),
            Check::OnDeck { pid } => format!("not needed: worker {pid} is already waiting on deck"),
            Check::Starting { pid } => {
                format!("not needed: worker {pid} was just started and will do it")
            }
            Check::Busy => {
                "not now: the repository is locked by another writer (the next request will look again)"
                    .into()
            }
            Check::NothingDue { next: None } => "not needed: nothing is due".into(),
            Check::NothingDue { next: Some(t) } => format!(
                "not needed: nothing is due until {} UTC ({})",
                clock::format_utc(*t),
                clock::relative(*t, clock::now())
            ),
            Check::Unavailable { reason } => format!("check failed: {reason}"),
        }
    }
}

/// What [`Backoffice::after_request`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// Nothing: the check said no.
    NotNeeded(Check),
    /// A detached worker process was started.
    Worker {
        /// Its pid.
        pid: u32,
    },
    /// No worker could be started; the work ran in this process instead.
    InProcess(Outcome),
    /// No worker could be started, and running in-process failed too.
    Failed(String),
}

/// The engine as a host embeds it: its tasks, and how to start workers.
///
/// Create one per process and keep it: it remembers the last on-deck worker
/// it verified, so a steady stream of requests costs one `kill(2)` each
/// rather than a read of `/proc`.
#[derive(Debug)]
pub struct Backoffice {
    tasks: Tasks,
    /// The due summary these tasks read and write ([`crate::due`]), and
    /// whether it covers every task.
    fingerprint: Option<String>,
    all_summarized: bool,
    worker: Option<WorkerCommand>,
    reap: bool,
    ondeck: Mutex<Option<(Slot, Instant)>>,
    starting: Mutex<Vec<Starting>>,
    /// Each repository's journal mode (WAL or not), and when it was asked.
    journal: Mutex<std::collections::HashMap<String, (bool, Instant)>>,
    /// Repositories whose last check found no usable due summary.
    unsummarized: Mutex<std::collections::HashSet<String>>,
    /// Each repository's last answer that may be kept.
    answers: Mutex<std::collections::HashMap<String, KeptAnswer>>,
}

/// An answer of the check kept with the stamp of the database it was read
/// from ([`crate::stamp`]): while the stamp is unchanged — nobody, this
/// process included, has committed anything — and `until` has not come,
/// the next check gives it again without a statement (a lock-free read of
/// the header instead of a read transaction: under 1 µs instead of 2.5-8;
/// a check that finds the stamp changed pays that read on top, 0.5-1 µs).
///
/// Only answers that nothing but a commit or the clock can change are
/// kept: "disabled" (until a commit), and "nothing due" when the due
/// summary alone answered for every task (until the summary's time). Not
/// "work is due", "on deck" or "starting", which hang on processes; not an
/// answer a task's own `due` gave, which may hang on more than the
/// database; and nothing read inside the host's transaction.
#[derive(Debug)]
struct KeptAnswer {
    stamp: stamp::Stamp,
    check: Check,
    until: i64,
}

/// A worker this process started, until it shows up in its lease, exits,
/// or [`STARTING_GRACE`] passes.
#[derive(Debug)]
struct Starting {
    repo: PathBuf,
    pid: i64,
    /// Its start time, so a reused pid is not mistaken for it.
    start: Option<u64>,
    at: Instant,
}

impl Starting {
    /// True while it may still be on its way to the lease: being spawned
    /// (pid 0), or alive, not a zombie, the same process (start time), and
    /// within the grace.
    fn alive(&self) -> bool {
        if self.at.elapsed() >= STARTING_GRACE {
            return false;
        }
        if self.pid == 0 {
            return true;
        }
        process::proc_stat(self.pid)
            .is_some_and(|st| st.state != 'Z' && self.start.is_none_or(|t| t == st.start))
    }
}

/// How long a started worker that has not reached its lease still stops
/// further starts. A worker takes its lease within milliseconds; one that
/// has not after this long is stuck on a lock, and another may try.
const STARTING_GRACE: Duration = Duration::from_secs(10);

/// How long a repository's journal mode is trusted (see
/// `Backoffice::short_busy`): a file switched out of WAL mode is checked
/// with the host's own busy timeout for at most this long.
const JOURNAL_CACHE: Duration = Duration::from_secs(1);

/// How long a verified on-deck worker is trusted without re-reading `/proc`.
/// A wrong "alive" only delays a spawn to the next request after this.
const ONDECK_CACHE: Duration = Duration::from_secs(1);

impl Backoffice {
    /// An engine with these tasks, starting workers as `CURRENT_EXE worker`.
    pub fn new(tasks: Tasks) -> Backoffice {
        Backoffice {
            fingerprint: tasks.fingerprint(),
            all_summarized: tasks.all_summarized(),
            tasks,
            worker: None,
            reap: true,
            ondeck: Mutex::new(None),
            starting: Mutex::new(Vec::new()),
            journal: Mutex::new(std::collections::HashMap::new()),
            unsummarized: Mutex::new(std::collections::HashSet::new()),
            answers: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Starts workers with this command instead of `CURRENT_EXE worker`.
    pub fn with_worker_command(mut self, cmd: WorkerCommand) -> Backoffice {
        self.worker = Some(cmd);
        self
    }

    /// Whether started workers are handed to a reaper thread (the default,
    /// right for any host that lives on). A short-lived process such as
    /// `backoffice trigger` turns it off and lets init reap.
    pub fn reap_children(mut self, reap: bool) -> Backoffice {
        self.reap = reap;
        self
    }

    /// The tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The cheap, read-only check. Never fails: problems come back as
    /// [`Check::Unavailable`].
    pub fn check_if_needed(&self, conn: &Connection) -> Check {
        self.check_with(conn)
    }

    fn check_with(&self, conn: &Connection) -> Check {
        match conn.is_readonly(rusqlite::MAIN_DB) {
            Ok(false) => {}
            Ok(true) => return Check::ReadOnly,
            Err(e) => {
                return Check::Unavailable {
                    reason: e.to_string(),
                };
            }
        }
        let now = clock::now();
        let path = conn.path().unwrap_or_default();
        // The kept answer, while nothing was committed since (see
        // `KeptAnswer`). Not inside the host's own transaction, whose
        // uncommitted writes the check sees and the stamp does not.
        let stamp = (self.all_summarized && self.fingerprint.is_some() && conn.is_autocommit())
            .then(|| stamp::read(conn))
            .flatten();
        if let Some(s) = &stamp {
            if let Some(kept) = self.kept(path, s, now) {
                return kept;
            }
        }
        // The database is read: never waiting long for a lock.
        let short = self.short_busy(conn);
        let (check, keep_until) = self.ask(conn, now);
        drop(short);
        if let (Some(until), Some(before)) = (keep_until, stamp) {
            // The stamp was read before the check, which read that state or
            // a later one (a commit in between). Kept under a stamp the
            // database has since left, an answer is never given again:
            // stamps do not come back. So one read of it is enough.
            self.keep(path, before, &check, until);
        }
        check
    }

    /// The answer kept for `path` under stamp `s`, if its time has not
    /// come.
    fn kept(&self, path: &str, s: &stamp::Stamp, now: i64) -> Option<Check> {
        let kept = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(path)
            .filter(|k| k.stamp == *s && now < k.until)
            .map(|k| k.check.clone())
    }

    fn keep(&self, path: &str, s: stamp::Stamp, check: &Check, until: i64) {
        let mut kept = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= 4096 && !kept.contains_key(path) {
            kept.clear();
        }
        kept.insert(
            path.to_owned(),
            KeptAnswer {
                stamp: s,
                check: check.clone(),
                until,
            },
        );
    }

    /// The check itself, reading the database, and until when its answer
    /// may be kept (`None`: not at all).
    fn ask(&self, conn: &Connection, now: i64) -> (Check, Option<i64>) {
        // The one statement of the fast path: the lease, the disable switch
        // and the due summary. Outside a transaction it is a read
        // transaction of its own (locks, a header check: ~2.5 µs in WAL,
        // ~5 µs in rollback mode, measured); when tasks must be asked after
        // all, one transaction holds them and it together.
        // Whether tasks will likely be asked: some are not summarized, or
        // the last check of this repository found no summary (then the
        // transaction is begun up front, so the statement and the tasks
        // share one; a second would cost another lock cycle).
        let path = conn.path().unwrap_or_default();
        let had_no_summary = self.no_summary(path, None);
        let asks_tasks = !self.tasks.is_empty() && (!self.all_summarized || had_no_summary);
        let mut txn = asks_tasks.then(|| ReadTxn::begin(conn));
        let row = match read_check_rows(conn) {
            Ok(r) => r,
            Err(e) if repo::is_busy(&e) => return (Check::Busy, None),
            Err(e) => {
                return (
                    Check::Unavailable {
                        reason: e.to_string(),
                    },
                    None,
                );
            }
        };
        if row.disable.as_deref().and_then(settings::parse_bool) == Some(true) {
            // Only a commit turns it off again.
            return (Check::Disabled, Some(i64::MAX));
        }
        let lease = Lease::parse(row.lease.as_deref().unwrap_or(""));
        let next = lease.next;
        if next.is_held()
            && next.expires >= now
            && next.pid != i64::from(std::process::id())
            && self.ondeck_alive(conn, &next, lease.boot.as_deref())
        {
            return (Check::OnDeck { pid: next.pid }, None);
        }
        if let Some(pid) = self.still_starting(conn, &lease) {
            return (Check::Starting { pid }, None);
        }
        let summary = self
            .fingerprint
            .as_deref()
            .and_then(|fp| due::parse(row.due.as_deref(), fp))
            .filter(|d| !d.is_due(now));
        let due = match summary {
            // The summary answers for every task: no task is asked.
            Some(d) if self.all_summarized => d,
            // It answers for some: the others are asked.
            Some(d) => d.earliest(self.tasks.due_part(conn, now, false)),
            // Missing, passed, or not ours: every task is asked.
            None => {
                if txn.is_none() && !self.tasks.is_empty() {
                    txn = Some(ReadTxn::begin(conn));
                }
                self.tasks.due(conn, now)
            }
        };
        if summary.is_none() != had_no_summary {
            self.no_summary(path, Some(summary.is_none()));
        }
        drop(txn);
        // Nothing due by the summary alone, for every task: that stays so
        // until a commit or the summary's time. An answer a task gave may
        // hang on more than the database, and is not kept.
        let keep = |until: i64| (self.all_summarized && summary.is_some()).then_some(until);
        match due {
            d if d.is_due(now) => (Check::Needed, None),
            task::Due::At(t) => (Check::NothingDue { next: Some(t) }, keep(t)),
            _ => (Check::NothingDue { next: None }, keep(i64::MAX)),
        }
    }

    /// Whether the last check of repository `path` found no usable due
    /// summary; with `set`, records it.
    fn no_summary(&self, path: &str, set: Option<bool>) -> bool {
        let mut seen = self.unsummarized.lock().unwrap_or_else(|e| e.into_inner());
        match set {
            None => seen.contains(path),
            Some(true) => {
                if seen.len() >= 4096 {
                    seen.clear();
                }
                seen.insert(path.to_owned())
            }
            Some(false) => seen.remove(path),
        }
    }

    /// Caps the connection's busy timeout for the check, unless the
    /// database is in WAL mode: there a reader never waits for a writer
    /// (only, rarely, for a recovery), and reading and restoring the
    /// host's timeout would cost a statement, a third of the whole check.
    /// The journal mode is the file's, asked once a second per repository
    /// ([`JOURNAL_CACHE`]).
    fn short_busy<'c>(&self, conn: &'c Connection) -> Option<repo::ShortBusy<'c>> {
        let path = conn.path().unwrap_or_default();
        let cached = {
            let cache = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(path)
                .filter(|(_, at)| at.elapsed() < JOURNAL_CACHE)
                .map(|(wal, _)| *wal)
        };
        if cached == Some(true) {
            return None;
        }
        let short = repo::ShortBusy::new(conn, repo::CHECK_BUSY_TIMEOUT);
        if cached.is_none() {
            // Asked under the short timeout: reading the mode reads the
            // file, and a writer may hold it locked.
            let mode: Option<String> = conn
                .prepare_cached("PRAGMA journal_mode")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .ok();
            if let Some(mode) = mode {
                let mut cache = self.journal.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= 4096 {
                    cache.clear();
                }
                cache.insert(
                    path.to_owned(),
                    (mode.eq_ignore_ascii_case("wal"), Instant::now()),
                );
            }
        }
        Some(short)
    }

    /// The pid of a worker this process started for this repository that
    /// is alive but not yet in the lease, if any. Entries for workers that
    /// reached the lease, exited, or outlived the grace are dropped.
    fn still_starting(&self, conn: &Connection, lease: &Lease) -> Option<i64> {
        let mut list = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            return None;
        }
        let path = Path::new(conn.path()?);
        let i = list.iter().position(|s| s.repo == path)?;
        let s = &list[i];
        let in_lease = s.pid > 0 && (lease.current.pid == s.pid || lease.next.pid == s.pid);
        if in_lease || !s.alive() {
            list.swap_remove(i);
            return None;
        }
        Some(s.pid)
    }

    /// Claims the right to start a worker for `repo`: refused (with the
    /// other worker's pid, 0 while it is being spawned) if another thread
    /// of this process started one that is still on its way, since two
    /// replies' checks can both see "needed" before either spawns.
    fn claim(&self, repo: &Path) -> Result<(), i64> {
        let mut list = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = list.iter().position(|s| s.repo == repo) {
            if list[i].alive() {
                return Err(list[i].pid);
            }
            list.swap_remove(i);
        }
        list.push(Starting {
            repo: repo.to_owned(),
            pid: 0,
            start: None,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Records the worker just spawned for `repo` (or, with `None`, that
    /// the spawn failed).
    fn settle(&self, repo: &Path, pid: Option<u32>) {
        let mut list = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|s| s.repo != repo);
        if let Some(pid) = pid {
            list.push(Starting {
                repo: repo.to_owned(),
                pid: i64::from(pid),
                start: process::proc_stat(i64::from(pid)).map(|s| s.start),
                at: Instant::now(),
            });
        }
    }

    fn ondeck_alive(&self, conn: &Connection, slot: &Slot, boot: Option<&str>) -> bool {
        let mut cache = self.ondeck.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, at)) = *cache {
            if cached == *slot && at.elapsed() < ONDECK_CACHE && process::exists(slot.pid) {
                return true;
            }
        }
        // The lease time matters only for a lease without start times
        // (Fossil's), so it is read only then: one query fewer per request.
        let lease_time = if slot.start.is_none() {
            repo::config_get(conn, LEASE_TIME)
                .ok()
                .flatten()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|&n| n >= 1)
                .unwrap_or(60)
        } else {
            60
        };
        let alive = process::liveness(slot, boot, lease_time).is_alive();
        *cache = alive.then(|| (*slot, Instant::now()));
        alive
    }

    /// The after-request hook: check, and start a worker if needed. Call it
    /// after the reply has been sent, with the request's connection, and
    /// with no transaction open on it. Never fails the request.
    pub fn after_request(&self, conn: &Connection) -> Started {
        let check = self.check_with(conn);
        if !check.is_needed() {
            return Started::NotNeeded(check);
        }
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Started::NotNeeded(Check::Unavailable {
                reason: "the connection has no file (in-memory database)".into(),
            });
        };
        if let Err(pid) = self.claim(&path) {
            return Started::NotNeeded(Check::Starting { pid });
        }
        let short = self.short_busy(conn);
        let logfile = repo::config_get(conn, LOGFILE)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(|s| crate::settings::resolve_path(conn, Path::new(&s)));
        // The in-process fallback opens its own connection; the host's gets
        // its own busy timeout back first.
        drop(short);
        self.start_worker(&path, logfile.as_deref())
    }

    /// Starts a worker for the repository of `conn` now, whether or not
    /// the check finds work due (an operator's "run now"): it takes the
    /// lease, or waits on deck for it, like any worker.
    pub fn run_now(&self, conn: &Connection) -> Started {
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Started::Failed("the connection has no file (in-memory database)".into());
        };
        let logfile = repo::config_get(conn, LOGFILE)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(|s| crate::settings::resolve_path(conn, Path::new(&s)));
        self.start_worker(&path, logfile.as_deref())
    }

    /// Starts a detached worker for `repo`, or runs the work in-process in
    /// no-delay mode if no worker can be started.
    pub fn start_worker(&self, repo: &Path, logfile: Option<&Path>) -> Started {
        let cmd = match &self.worker {
            Some(c) => Ok(c.clone()),
            None => WorkerCommand::current_exe(),
        };
        let spawned = cmd.and_then(|c| c.spawn(repo, logfile));
        match spawned {
            Ok(child) => {
                let pid = child.id();
                tracing::debug!(repo = %repo.display(), pid, "started a worker");
                self.settle(repo, Some(pid));
                if self.reap {
                    process::reap(child);
                }
                Started::Worker { pid }
            }
            Err(e) => {
                self.settle(repo, None);
                let msg = format!("cannot start a worker ({e}); running in-process without delay");
                report_failure(repo, logfile, &msg);
                let opts = RunOptions {
                    nodelay: true,
                    logfile: logfile.map(Path::to_owned),
                    ..RunOptions::default()
                };
                match Repo::open(repo).and_then(|mut r| engine::run(&mut r, &self.tasks, &opts)) {
                    Ok(outcome) => Started::InProcess(outcome),
                    Err(e) => {
                        let msg = format!("in-process run failed: {e}");
                        report_failure(repo, logfile, &msg);
                        Started::Failed(msg)
                    }
                }
            }
        }
    }
}

/// A deferred read transaction for the duration of the check, if the host's
/// connection is not already inside one; committed (it wrote nothing) on drop.
struct ReadTxn<'c>(Option<&'c Connection>);

impl<'c> ReadTxn<'c> {
    fn begin(conn: &'c Connection) -> ReadTxn<'c> {
        let began = conn.is_autocommit()
            && conn
                .prepare_cached("BEGIN")
                .and_then(|mut s| s.execute([]))
                .is_ok();
        ReadTxn(began.then_some(conn))
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            if let Err(e) = conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
            {
                tracing::warn!(error = %e, "ending the check's read transaction");
                // Never leave the host's connection inside our transaction.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
            }
        }
    }
}

struct CheckRows {
    lease: Option<String>,
    disable: Option<String>,
    due: Option<String>,
}

/// [`due::CHECK_SQL`]: the three rows the check needs, in one statement.
fn read_check_rows(conn: &Connection) -> rusqlite::Result<CheckRows> {
    let mut stmt = match conn.prepare_cached(due::CHECK_SQL) {
        Ok(s) => s,
        // No config table yet: every setting at its default, no lease.
        Err(e) if repo::is_no_such_table(&e) => {
            return Ok(CheckRows {
                lease: None,
                disable: None,
                due: None,
            });
        }
        Err(e) => return Err(e),
    };
    stmt.query_row([], |r| {
        Ok(CheckRows {
            lease: text(r.get_ref(0)?),
            disable: text(r.get_ref(1)?),
            due: text(r.get_ref(2)?),
        })
    })
}

/// A `config` value as text, whatever SQLite stored it as.
fn text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    match v {
        rusqlite::types::ValueRef::Null => None,
        rusqlite::types::ValueRef::Integer(i) => Some(i.to_string()),
        rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
            Some(String::from_utf8_lossy(t).into_owned())
        }
    }
}

/// Says why a worker could not start or run: in the log file if there is
/// one, and always through `tracing`.
fn report_failure(repo: &Path, logfile: Option<&Path>, msg: &str) {
    tracing::error!(repo = %repo.display(), "{msg}");
    if let Some(log) = logfile {
        let project = repo
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = task::append_log(log, &task::error_line(clock::now(), &project, msg)) {
            tracing::error!("{e}");
        }
    }
}

/// The body of a detached worker process (`backoffice worker REPO`):
/// detach, run the lease protocol once, report failures. Returns the exit
/// status.
pub fn worker_main(repo: &Path, logfile: Option<&Path>, tasks: &Tasks) -> i32 {
    process::detach();
    let _ = Identity::current();
    let result = Repo::open(repo).and_then(|mut r| {
        let opts = RunOptions {
            logfile: logfile.map(Path::to_owned),
            ..RunOptions::default()
        };
        engine::run(&mut r, tasks, &opts)
    });
    match result {
        Ok(outcome) => {
            tracing::debug!(repo = %repo.display(), ?outcome, "worker done");
            0
        }
        Err(e) => {
            report_failure(
                repo,
                logfile,
                &format!("worker {}: {e}", std::process::id()),
            );
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DISABLE;
    use rusqlite::OpenFlags;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct AlwaysDue;
    impl crate::Task for AlwaysDue {
        fn name(&self) -> &str {
            "always"
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> Result<task::Due, task::TaskError> {
            Ok(task::Due::Now)
        }
        fn run(&self, _: &task::Context<'_>) -> Result<u64, task::TaskError> {
            Ok(1)
        }
    }

    #[test]
    fn concurrent_checks_start_one_worker_until_it_reaches_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        Repo::open(&p).unwrap();
        // A "worker" that lives a second and never takes the lease: every
        // check in that second sees work due and nobody on deck.
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue)).with_worker_command(WorkerCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 1".into(), "sh".into()],
        });
        let started = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let conn = Connection::open(&p).unwrap();
                    for _ in 0..20 {
                        match bo.after_request(&conn) {
                            Started::Worker { .. } => {
                                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Started::NotNeeded(Check::Starting { .. }) => {}
                            other => panic!("{other:?}"),
                        }
                    }
                });
            }
        });
        assert_eq!(started.into_inner(), 1);
    }

    #[test]
    fn read_only_connection_never_needs_a_worker() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Repo::open({
            Connection::open(&p).unwrap();
            &p
        })
        .unwrap();
        let ro = Connection::open_with_flags(&p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        assert_eq!(bo.check_if_needed(&ro), Check::ReadOnly);
        assert_eq!(bo.after_request(&ro), Started::NotNeeded(Check::ReadOnly));
        let rw = Connection::open(&p).unwrap();
        assert_eq!(bo.check_if_needed(&rw), Check::Needed);
    }

    #[test]
    fn no_config_table_and_no_tasks_means_nothing_due() {
        let conn = Connection::open_in_memory().unwrap();
        let bo = Backoffice::new(Tasks::new());
        assert_eq!(bo.check_if_needed(&conn), Check::NothingDue { next: None });
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        assert_eq!(bo.check_if_needed(&conn), Check::Needed);
        // An in-memory database has no file for a worker to open.
        assert!(matches!(
            bo.after_request(&conn),
            Started::NotNeeded(Check::Unavailable { .. })
        ));
    }

    #[test]
    fn disabled_setting_is_honoured_in_any_spelling() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CONFIG_FOR_TESTS).unwrap();
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        for v in ["on", "1", "TRUE", "yes"] {
            repo::config_set(&conn, DISABLE, v).unwrap();
            assert_eq!(bo.check_if_needed(&conn), Check::Disabled, "{v}");
        }
        repo::config_set(&conn, DISABLE, "off").unwrap();
        assert_eq!(bo.check_if_needed(&conn), Check::Needed);
    }

    #[test]
    fn check_works_inside_and_outside_the_hosts_transaction() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CONFIG_FOR_TESTS).unwrap();
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        assert_eq!(bo.check_if_needed(&conn), Check::Needed);
        assert!(
            conn.is_autocommit(),
            "the check's own transaction is closed"
        );
        conn.execute_batch("BEGIN").unwrap();
        repo::config_set(&conn, DISABLE, "on").unwrap();
        assert_eq!(bo.check_if_needed(&conn), Check::Disabled);
        assert!(
            !conn.is_autocommit(),
            "the host's transaction is left alone"
        );
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(bo.check_if_needed(&conn), Check::Needed);
    }

    /// A locked database answers "not now" (another connection, with its
    /// own file descriptor, holds an EXCLUSIVE lock in rollback mode), and
    /// the host's busy timeout is put back afterwards.
    #[test]
    fn locked_database_is_busy_and_the_hosts_timeout_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        Repo::open(&p).unwrap();
        let host = Connection::open(&p).unwrap();
        host.busy_timeout(Duration::from_secs(5)).unwrap();
        let locker = Connection::open(&p).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        let t0 = Instant::now();
        assert_eq!(bo.after_request(&host), Started::NotNeeded(Check::Busy));
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let ms: i64 = host
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ms, 5000, "the host's busy timeout was not restored");
        assert!(host.is_autocommit());
        locker.execute_batch("COMMIT").unwrap();
        assert_eq!(bo.check_if_needed(&host), Check::Needed);
    }

    /// A task that counts how often it is asked. Due as its `config` row
    /// `counted-at` says: a time, "now", or nothing (never). Summarized
    /// (it names what makes it due: its row, a `config` row) or not.
    struct Counted(Arc<AtomicUsize>, bool);
    impl crate::Task for Counted {
        fn name(&self) -> &str {
            if self.1 { "counted" } else { "asked" }
        }
        fn due(&self, db: crate::Db<'_>, _: i64) -> Result<task::Due, task::TaskError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(match db.config_get("counted-at")?.as_deref() {
                Some("now") => task::Due::Now,
                Some(t) => task::Due::At(t.parse().unwrap()),
                None => task::Due::Never,
            })
        }
        fn run(&self, _: &task::Context<'_>) -> Result<u64, task::TaskError> {
            Ok(0)
        }
        fn due_watches(&self) -> Option<&'static [&'static str]> {
            self.1.then_some(&[])
        }
    }

    fn summary_repo(tasks: &Tasks) -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        let mut r = Repo::open(&p).unwrap();
        let opts = RunOptions {
            nodelay: true,
            ..RunOptions::default()
        };
        assert!(matches!(
            engine::run(&mut r, tasks, &opts).unwrap(),
            Outcome::Ran(_)
        ));
        (dir, r)
    }

    /// The check reads the summary a run wrote and asks no task; anything
    /// that makes work — an event published, a setting changed — lowers
    /// it, and a summary that is passed, malformed or written for other
    /// tasks means the tasks are asked.
    #[test]
    fn the_due_summary_answers_the_check_until_something_makes_work() {
        let asked = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new().with(Counted(asked.clone(), true));
        let later = clock::now() + 500;
        let (_dir, mut r) = {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("r.db");
            Connection::open(&p).unwrap();
            let r = Repo::open(&p).unwrap();
            repo::config_set(r.conn(), "counted-at", &later.to_string()).unwrap();
            (dir, r)
        };
        // Runs one after another, without the lease's spacing.
        let opts = RunOptions {
            nolease: true,
            ..RunOptions::default()
        };
        engine::run(&mut r, &tasks, &opts).unwrap();
        let fp = tasks.fingerprint().unwrap();
        assert_eq!(
            r.get(due::ROW).unwrap(),
            Some(format!("1 {later} {fp}")),
            "the run wrote the summary"
        );
        let bo = Backoffice::new(tasks.clone());
        let check = |bo: &Backoffice, r: &Repo| {
            asked.store(0, Ordering::SeqCst);
            let c = bo.check_if_needed(r.conn());
            (c, asked.load(Ordering::SeqCst))
        };
        assert_eq!(check(&bo, &r), (Check::NothingDue { next: Some(later) }, 0));

        // An event published: the trigger on bo_event lowers the summary.
        let ev = crate::events::Event {
            kind: "k".into(),
            title: "t".into(),
            ..Default::default()
        };
        crate::events::publish(r.conn(), &ev).unwrap();
        assert_eq!(r.get(due::ROW).unwrap(), None);
        assert_eq!(check(&bo, &r), (Check::NothingDue { next: Some(later) }, 1));
        engine::run(&mut r, &tasks, &opts).unwrap();
        assert_eq!(check(&bo, &r).1, 0, "a run writes it again");

        // A setting (any config row but the engine's own) lowers it too.
        repo::config_set(r.conn(), "counted-at", "now").unwrap();
        assert_eq!(check(&bo, &r), (Check::Needed, 1));
        repo::config_set(r.conn(), "counted-at", &later.to_string()).unwrap();

        // Passed, malformed, another version, other tasks: the tasks are asked.
        for v in [
            format!("1 {} {fp}", clock::now() - 1),
            "garbage".to_owned(),
            format!("2 {later} {fp}"),
            format!("1 {later} 0123456789abcdef"),
        ] {
            repo::config_set(r.conn(), due::ROW, &v).unwrap();
            assert_eq!(check(&bo, &r).1, 1, "{v}");
        }
    }

    /// With a host's own task that does not name what makes it due, the
    /// summary answers for the others and that task is asked every time.
    #[test]
    fn a_task_without_watches_is_asked_beside_the_summary() {
        let summarized = Arc::new(AtomicUsize::new(0));
        let other = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new()
            .with(Counted(summarized.clone(), true))
            .with(Counted(other.clone(), false));
        let (_dir, r) = summary_repo(&tasks);
        assert!(r.get(due::ROW).unwrap().is_some());
        let bo = Backoffice::new(tasks);
        summarized.store(0, Ordering::SeqCst);
        other.store(0, Ordering::SeqCst);
        assert_eq!(
            bo.check_if_needed(r.conn()),
            Check::NothingDue { next: None }
        );
        assert_eq!(summarized.load(Ordering::SeqCst), 0);
        assert_eq!(other.load(Ordering::SeqCst), 1);
    }

    /// Only host tasks: no summary is kept, every check asks them.
    #[test]
    fn no_summary_without_a_summarized_task() {
        let other = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new().with(Counted(other.clone(), false));
        let (_dir, r) = summary_repo(&tasks);
        assert_eq!(r.get(due::ROW).unwrap(), None);
        other.store(0, Ordering::SeqCst);
        let bo = Backoffice::new(tasks);
        assert_eq!(
            bo.check_if_needed(r.conn()),
            Check::NothingDue { next: None }
        );
        assert_eq!(other.load(Ordering::SeqCst), 1);
    }

    /// Pages this connection has read (from its cache or the file): a
    /// check that reads the database at all reads some.
    fn pages_read(conn: &Connection) -> i32 {
        use rusqlite::ffi;
        let mut total = 0;
        for op in [
            ffi::SQLITE_DBSTATUS_CACHE_HIT,
            ffi::SQLITE_DBSTATUS_CACHE_MISS,
        ] {
            let (mut cur, mut high) = (0, 0);
            // SAFETY: an open connection's handle, two out-parameters.
            let rc = unsafe { ffi::sqlite3_db_status(conn.handle(), op, &mut cur, &mut high, 0) };
            assert_eq!(rc, ffi::SQLITE_OK);
            total += cur;
        }
        total
    }

    /// "Nothing due" by the summary and "disabled" are kept with the
    /// database's stamp (no page read for the next check), in both journal
    /// modes, until anyone commits anything or the summary's time comes;
    /// nothing read inside the host's own transaction is kept.
    #[test]
    fn the_answer_is_kept_until_anyone_commits_or_its_time_comes() {
        for wal in [false, true] {
            let asked = Arc::new(AtomicUsize::new(0));
            let tasks = Tasks::new().with(Counted(asked.clone(), true));
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("r.db");
            let c = Connection::open(&p).unwrap();
            if wal {
                c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
            }
            drop(c);
            let mut r = Repo::open(&p).unwrap();
            let later = clock::now() + 2;
            repo::config_set(r.conn(), "counted-at", &later.to_string()).unwrap();
            let opts = RunOptions {
                nolease: true,
                ..RunOptions::default()
            };
            engine::run(&mut r, &tasks, &opts).unwrap();
            let other = Connection::open(&p).unwrap();
            other.busy_timeout(Duration::from_secs(5)).unwrap();
            let bo = Backoffice::new(tasks.clone());
            let nothing = Check::NothingDue { next: Some(later) };
            // (answer, tasks asked, pages read)
            let check = |bo: &Backoffice, r: &Repo| {
                asked.store(0, Ordering::SeqCst);
                let before = pages_read(r.conn());
                let c = bo.check_if_needed(r.conn());
                (
                    c,
                    asked.load(Ordering::SeqCst),
                    pages_read(r.conn()) - before,
                )
            };
            let (c, n, read) = check(&bo, &r);
            assert_eq!((c, n), (nothing.clone(), 0), "wal: {wal}");
            assert!(read > 0, "the first check reads (wal: {wal})");
            assert_eq!(check(&bo, &r), (nothing.clone(), 0, 0), "kept (wal: {wal})");

            // Any commit, by anyone, even one that makes no work.
            other
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS unrelated(x); INSERT INTO unrelated VALUES (1);",
                )
                .unwrap();
            let (c, n, read) = check(&bo, &r);
            assert_eq!((c, n), (nothing.clone(), 0), "wal: {wal}");
            assert!(read > 0, "read again after a commit (wal: {wal})");
            assert_eq!(check(&bo, &r).2, 0, "kept again (wal: {wal})");

            // Disabled, by another connection: read, kept, and lifted.
            repo::config_set(&other, DISABLE, "on").unwrap();
            assert_eq!(check(&bo, &r).0, Check::Disabled, "wal: {wal}");
            assert_eq!(check(&bo, &r), (Check::Disabled, 0, 0), "wal: {wal}");
            repo::config_set(&other, DISABLE, "off").unwrap();
            assert_eq!(check(&bo, &r).0, nothing, "wal: {wal}");

            // The host's own transaction: its uncommitted write is seen and
            // not kept.
            r.conn().execute_batch("BEGIN").unwrap();
            repo::config_set(r.conn(), DISABLE, "on").unwrap();
            assert_eq!(check(&bo, &r).0, Check::Disabled, "wal: {wal}");
            r.conn().execute_batch("ROLLBACK").unwrap();
            assert_ne!(check(&bo, &r).0, Check::Disabled, "wal: {wal}");

            // A run writes the summary again; it is kept until its time.
            engine::run(&mut r, &tasks, &opts).unwrap();
            assert_eq!(check(&bo, &r).0, nothing, "wal: {wal}");
            assert_eq!(check(&bo, &r), (nothing.clone(), 0, 0), "wal: {wal}");
            while clock::now() < later {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                check(&bo, &r).0,
                Check::Needed,
                "its time came (wal: {wal})"
            );
        }
    }

    /// A database restored from a backup (its header copied from another
    /// file) is checked again, not answered from what was kept.
    #[test]
    fn a_restored_database_is_checked_again() {
        let asked = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new().with(Counted(asked.clone(), true));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p).unwrap();
        let mut r = Repo::open(&p).unwrap();
        let opts = RunOptions {
            nolease: true,
            ..RunOptions::default()
        };
        engine::run(&mut r, &tasks, &opts).unwrap();
        let bo = Backoffice::new(tasks.clone());
        assert_eq!(
            bo.check_if_needed(r.conn()),
            Check::NothingDue { next: None }
        );
        // A copy of it as it is, with work due, restored over it.
        let copy = dir.path().join("copy.db");
        {
            let mut c = Connection::open(&copy).unwrap();
            c.restore(
                rusqlite::MAIN_DB,
                &p,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .unwrap();
            repo::config_set(&c, "counted-at", "now").unwrap();
        }
        let mut writer = Connection::open(&p).unwrap();
        writer
            .restore(
                rusqlite::MAIN_DB,
                &copy,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .unwrap();
        assert_eq!(bo.check_if_needed(r.conn()), Check::Needed);
    }

    /// In WAL mode a writer holding the database does not stop the check
    /// (readers never wait for it), which then leaves the host's busy
    /// timeout untouched; a second check reads the journal mode from the
    /// cache.
    #[test]
    fn a_wal_database_is_checked_beside_a_writer_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL")
            .unwrap();
        Repo::open(&p).unwrap();
        let host = Connection::open(&p).unwrap();
        host.busy_timeout(Duration::from_secs(5)).unwrap();
        let writer = Connection::open(&p).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        repo::config_set(&writer, "x", "y").unwrap();
        let bo = Backoffice::new(Tasks::new().with(AlwaysDue));
        for _ in 0..2 {
            let t0 = Instant::now();
            assert_eq!(bo.check_if_needed(&host), Check::Needed);
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        }
        let ms: i64 = host
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ms, 5000);
        writer.execute_batch("COMMIT").unwrap();
    }

    const CONFIG_FOR_TESTS: &str =
        "CREATE TABLE config(name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE)";
}
