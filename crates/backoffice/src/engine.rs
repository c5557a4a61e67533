//! The worker loop: current, on-deck, no-delay; running the tasks.
//!
//! A worker takes the lease in one `BEGIN IMMEDIATE` transaction, so SQLite's
//! write lock serialises every decision about it. Each pass reads the lease
//! and decides ([`decide`], a pure function, property-tested below):
//!
//! 1. Another live worker is already on deck → exit: it will do the work.
//! 2. The current lease has expired and its holder is gone → become current
//!    (`self, now+L, 0, 0`, the term plus one), commit, run the tasks, exit.
//! 3. No-delay mode → exit without work.
//! 4. Otherwise become on deck (`next = self, max(now, tmCurrent) + L`),
//!    commit, sleep until the current lease ends, and try again.
//!
//! Hence: at most one worker works at a time, runs are at least `L` seconds
//! apart, at most two workers exist per repository, and work left behind by
//! a request is picked up within `L` seconds.
//!
//! Guards that go beyond Fossil:
//!
//! * A lease time further ahead than `L` (the clock was stepped back, or the
//!   row was hand-edited) is pulled back to `now + L` and written back, so
//!   it stalls work for at most `L` after it is first seen; if the slot's
//!   holder is judged gone on the row as stored, the slot is emptied too.
//! * While its tasks run, the holder renews a heartbeat (`alive-until` in
//!   the lease, see [`crate::lease`]) from a thread with its own connection
//!   every `backoffice-heartbeat` seconds; a renewal vouches for
//!   [`HEARTBEAT_GRACE_BEATS`] intervals. That is what keeps a holder alive
//!   where its pid cannot be checked (another PID namespace), and what ends
//!   the holding of a process that lives on after its run.
//! * A holder that runs past its lease is waited for, never in silence: the
//!   waiting worker reports it at once and then at doubling intervals.
//! * Each takeover adds one to the lease's fencing term ([`Lease::term`]),
//!   in the transaction that writes the new holder; renewals, releases and
//!   queueing on deck leave it alone. The run knows its term
//!   ([`Context::term`]); its heartbeat and its end-of-run write refuse to
//!   touch a lease whose term moved, as do the tasks' progress writes
//!   ([`crate::writes::fenced`]). So a worker paused past its heartbeat
//!   (in another PID namespace, where only the heartbeat tells) commits
//!   nothing once it resumes after a takeover.
//! * After the tasks, the worker records its [`RunReport`] and releases the
//!   lease (holder pid 0, expiry kept) in one transaction, tried
//!   [`FINISH_TRIES`] times. The expiry still spaces runs `L` apart, but a
//!   host process that runs work in-process and lives on (a `--poll` loop,
//!   a spawn failure's fallback) does not look like a live holder forever;
//!   and if even the retries fail, its stopped heartbeat ends its holding.
//!
//! The write lock is never held while tasks run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::TransactionBehavior;

use crate::clock;
use crate::error::Result;
use crate::lease::{Lease, Slot};
use crate::process::{self, Identity};
use crate::repo::{self, Repo};
use crate::settings::Settings;
use crate::task::{self, Context, RunReport, RunTotals, Tasks};

/// The lease's config row.
pub const LEASE_ROW: &str = "backoffice";

/// What a pass over the lease decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Another live worker waits on deck; it will do the work. Exit.
    OnDeckExists {
        /// Its pid.
        pid: i64,
    },
    /// Take the lease (write this value) and work.
    Take(Lease),
    /// The lease is held and we may not wait (no-delay). Exit.
    Busy {
        /// The current holder's pid.
        holder: i64,
    },
    /// Queue on deck: write this value, sleep until `wake_at`, try again.
    Queue {
        /// The lease to write.
        lease: Lease,
        /// Unix second at which to try again.
        wake_at: i64,
    },
}

/// [`decide`]'s answer: the decision, and the stored lease after pulling
/// far-future times back (to be written back if `clamped`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub decision: Decision,
    /// The lease with far-future times pulled back.
    pub normalized: Lease,
    /// True if `normalized` differs from what was stored.
    pub clamped: bool,
}

/// Everything [`decide`] needs besides the lease.
#[derive(Clone, Copy, Debug)]
pub struct Me<'a> {
    /// This worker.
    pub id: Identity,
    /// This machine's boot id.
    pub boot: Option<&'a str>,
    /// Unix time now.
    pub now: i64,
    /// Lease length, seconds (at least 1).
    pub lease_time: i64,
    /// How far ahead a heartbeat vouches for its holder, seconds (at
    /// least 1): a holder's `alive-until` is at most `now + grace`.
    pub grace: i64,
    /// No-delay mode: never queue.
    pub nodelay: bool,
}

/// One pass of the lease protocol. Pure: liveness comes from `alive`.
///
/// Stored times are untrusted (a stepped clock, a hand-written row):
/// every sum saturates, and times further ahead than a legitimate writer
/// could have put them are pulled back to `now + L` (`now + 2L` on deck,
/// `now + grace` for a heartbeat). A far-future slot whose holder is judged
/// gone on the row as stored (a process older than a lease "taken" in the
/// future cannot be its holder) is emptied as well as pulled back, so such
/// a row stops the work for at most one lease time.
pub fn decide(stored: &Lease, me: Me<'_>, alive: &mut dyn FnMut(&Slot) -> bool) -> Plan {
    let l_time = me.lease_time.max(1);
    let grace = me.grace.max(1);
    let now = me.now;
    let mut l = stored.clone();
    let mut clamped = false;
    let pull_back = |slot: &mut Slot, limit: i64, alive: &mut dyn FnMut(&Slot) -> bool| {
        let mut changed = false;
        if slot.expires > limit {
            if slot.is_held() && !alive(slot) {
                *slot = Slot::EMPTY;
            }
            slot.expires = limit;
            changed = true;
        }
        if slot
            .alive_until
            .is_some_and(|t| t > now.saturating_add(grace))
        {
            slot.alive_until = Some(now.saturating_add(grace));
            changed = true;
        }
        changed
    };
    clamped |= pull_back(&mut l.current, now.saturating_add(l_time), alive);
    clamped |= pull_back(
        &mut l.next,
        now.saturating_add(l_time.saturating_mul(2)),
        alive,
    );
    let normalized = l.clone();

    let decision =
        if l.next.is_held() && !me.id.holds(&l.next) && l.next.expires >= now && alive(&l.next) {
            Decision::OnDeckExists { pid: l.next.pid }
        } else if l.current.expires < now && !(l.current.is_held() && alive(&l.current)) {
            Decision::Take(Lease {
                current: me
                    .id
                    .slot(now.saturating_add(l_time), Some(now.saturating_add(grace))),
                next: Slot::EMPTY,
                boot: me.boot.map(str::to_owned),
                // A takeover, whoever held it before: a new term, so that a
                // paused earlier holder is fenced out when it resumes.
                term: l.term.saturating_add(1),
            })
        } else if me.nodelay {
            Decision::Busy {
                holder: l.current.pid,
            }
        } else {
            let wake_at = if l.current.expires >= now {
                l.current.expires.saturating_add(1)
            } else {
                // Expired, but the holder is still running: look again shortly.
                now.saturating_add(1)
            };
            // On deck, the slot's expiry is also how long it vouches for us.
            let expires = now.max(l.current.expires).saturating_add(l_time);
            l.next = me.id.slot(expires, Some(expires));
            l.boot = me.boot.map(str::to_owned);
            Decision::Queue { lease: l, wake_at }
        };
    Plan {
        decision,
        normalized,
        clamped,
    }
}

/// How long the current holder has been past its lease, if it has: the
/// seconds since its lease expired, never negative, whatever is stored.
pub fn overrun(current: &Slot, now: i64) -> Option<u64> {
    if !current.is_held() || current.expires >= now {
        return None;
    }
    u64::try_from(now.saturating_sub(current.expires)).ok()
}

/// The warning for a holder past its lease, in words: how long it has held
/// the lease (its expiry minus the lease time, to now) and how far past it is.
pub fn overrun_message(current: &Slot, now: i64, lease_time: i64) -> Option<String> {
    let late = overrun(current, now)?;
    let held = now
        .saturating_sub(current.expires.saturating_sub(lease_time.max(1)))
        .max(0);
    Some(format!(
        "backoffice process {} still running after {held} seconds ({late} s past its lease); \
         waiting for it (its tasks take longer than backoffice-lease-time)",
        current.pid
    ))
}

/// How a worker runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Never queue on deck (also on when `backoffice-nodelay` is set).
    pub nodelay: bool,
    /// Ignore the lease entirely and just run the tasks (Fossil's `--nolease`).
    pub nolease: bool,
    /// Log a line for every run, `no-op`s included.
    pub debug: bool,
    /// Print each lease decision on stderr.
    pub trace: bool,
    /// Log file; overrides `backoffice-logfile`.
    pub logfile: Option<PathBuf>,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It held the lease and ran the tasks.
    Ran(RunReport),
    /// Another live worker was on deck.
    OnDeckExists {
        /// Its pid.
        pid: i64,
    },
    /// The lease was held and the worker could not wait.
    Busy {
        /// The holder's pid.
        holder: i64,
    },
}

/// Repositories this process is working on right now. A lease that names
/// this very process is only "alive" if the repository is in here; otherwise
/// it is left over from an earlier run by a process that lives on.
static WORKING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn working_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

pub(crate) fn is_working(key: &Path) -> bool {
    WORKING
        .lock()
        .map(|g| g.as_ref().is_some_and(|s| s.contains(key)))
        .unwrap_or(true)
}

pub(crate) struct WorkingGuard(PathBuf);

impl WorkingGuard {
    pub(crate) fn new(key: PathBuf) -> WorkingGuard {
        if let Ok(mut g) = WORKING.lock() {
            g.get_or_insert_with(HashSet::new).insert(key.clone());
        }
        WorkingGuard(key)
    }
}

impl Drop for WorkingGuard {
    fn drop(&mut self) {
        if let Ok(mut g) = WORKING.lock() {
            if let Some(s) = g.as_mut() {
                s.remove(&self.0);
            }
        }
    }
}

/// The lease pass's durability in WAL mode: `synchronous = NORMAL` for its
/// commit, then the connection's own level again.
///
/// The lease needs no `fsync` of its own. It keeps two workers apart only
/// while both are alive, and live processes see each other's writes
/// through the operating system's cache and SQLite's locks, never through
/// the disk. A power loss or an OS crash ends every worker with it; a
/// lease that then reads as the one before is harmless, its holder being
/// dead too. And nothing durable can come to depend on the lost write:
/// WAL frames are synced in order, so the next commit at the connection's
/// level (the task's first progress write, `FULL` by default) syncs this
/// one with it. In WAL mode `NORMAL` never corrupts the database; in
/// rollback-journal mode it might on a power loss, so there the level is
/// left alone. What it saves is the commit's `fsync` of the WAL on the
/// way from trigger to work (issue 13: about 1 ms of this VM's 8).
struct LeaseSync {
    /// The connection's own level, when the relaxed one applies.
    own: Option<i64>,
}

/// `PRAGMA synchronous = NORMAL`.
const SYNC_NORMAL: i64 = 1;

impl LeaseSync {
    fn for_conn(conn: &rusqlite::Connection) -> LeaseSync {
        let wal = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .is_ok_and(|m| m.eq_ignore_ascii_case("wal"));
        let own = conn
            .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
            .ok();
        LeaseSync {
            own: own.filter(|&level| wal && level > SYNC_NORMAL),
        }
    }

    /// Failures are ignored: the level then stays as it was, which is
    /// only slower.
    fn relax(&self, conn: &rusqlite::Connection) {
        if self.own.is_some() {
            let _ = conn.execute_batch("PRAGMA synchronous = NORMAL");
        }
    }

    fn restore(&self, conn: &rusqlite::Connection) {
        if let Some(level) = self.own {
            let _ = conn.execute_batch(&format!("PRAGMA synchronous = {level}"));
        }
    }
}

/// Reads the lease row.
pub fn read_lease(conn: &rusqlite::Connection) -> rusqlite::Result<(Lease, Option<String>)> {
    let text = repo::config_get(conn, LEASE_ROW)?.unwrap_or_default();
    Ok(Lease::parse_report(&text))
}

/// Runs one worker on `repo` through the lease protocol (or without it,
/// under `nolease`), then returns. May sleep on deck for up to about one
/// lease time.
pub fn run(repo: &mut Repo, tasks: &Tasks, opts: &RunOptions) -> Result<Outcome> {
    repo.writable()?;
    // The settings (seven rows) and the project name in one read
    // transaction: one lock cycle instead of eight on a worker's way to
    // its lease (issue 13).
    let (settings, project) = repo::reading(
        repo.conn(),
        |e| repo.err("reading settings", e),
        || {
            let s = Settings::load(repo.conn()).map_err(|e| repo.err("reading settings", e))?;
            Ok::<_, crate::Error>((s, repo.project_name()))
        },
    )?;
    let logfile = opts.logfile.clone().or_else(|| settings.logfile.clone());
    for p in &settings.problems {
        tracing::warn!(repo = %repo.path().display(), "{p}");
        if let Some(log) = &logfile {
            let _ = task::append_log(log, &task::error_line(clock::now(), &project, p));
        }
    }
    let key = working_key(repo.path());
    let repo_path = repo.path().to_owned();
    let log = Log {
        file: logfile.as_deref(),
        project: &project,
        repo: &repo_path,
    };
    if opts.nolease {
        let _guard = WorkingGuard::new(key);
        // No lease is taken, so no term of its own: the one the lease
        // carries now, which a takeover meanwhile moves on.
        let term = read_lease(repo.conn())
            .map_err(|e| repo.err("reading the lease", e))?
            .0
            .term;
        let report = work(repo, tasks, opts, &log, &settings, term, None);
        return Ok(Outcome::Ran(report));
    }
    let me = Identity::current();
    let boot = process::boot_id();
    let nodelay = opts.nodelay || settings.nodelay;
    let beat = Heartbeat::from_settings(&settings);
    // When to warn next about an over-running holder: the first warning
    // comes as soon as one is seen, then at doubling intervals up to an hour.
    let mut next_warning: Option<Instant> = None;
    let mut warn_every = Duration::from_secs(10);
    let path = repo.path().to_owned();
    let busy = repo.busy_ms();
    let sq = |what, e| crate::Error::sqlite(what, &path, busy, e);
    let relaxed = LeaseSync::for_conn(repo.conn());
    loop {
        let lease_time = settings.lease_time;
        relaxed.relax(repo.conn());
        let pass = (|| {
            let tx = repo
                .conn_mut()
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq("taking the write lock", e))?;
            let (stored, _) = read_lease(&tx).map_err(|e| sq("reading the lease", e))?;
            let now = clock::now();
            let mut alive = |s: &Slot| {
                if me.holds(s) {
                    is_working(&key)
                } else {
                    process::liveness(s, stored.boot.as_deref(), lease_time).is_alive()
                }
            };
            let plan = decide(
                &stored,
                Me {
                    id: me,
                    boot,
                    now,
                    lease_time,
                    grace: beat.grace_secs(),
                    nodelay,
                },
                &mut alive,
            );
            let to_write = match &plan.decision {
                Decision::Take(l) | Decision::Queue { lease: l, .. } => Some(l),
                _ if plan.clamped => Some(&plan.normalized),
                _ => None,
            };
            if let Some(l) = to_write {
                repo::config_set(&tx, LEASE_ROW, &l.encode())
                    .map_err(|e| sq("writing the lease", e))?;
                crate::writes::note_own_write(&tx).map_err(|e| sq("noting the write", e))?;
            }
            tx.commit().map_err(|e| sq("committing the lease", e))?;
            Ok::<_, crate::Error>((stored, plan, now))
        })();
        relaxed.restore(repo.conn());
        let (stored, plan, now) = pass?;
        if opts.trace {
            eprintln!(
                "backoffice {}: lease {:?} -> {:?}",
                me.pid,
                stored.encode(),
                plan.decision
            );
        }
        tracing::debug!(repo = %repo.path().display(), lease = %stored.encode(), decision = ?plan.decision, "lease pass");
        match plan.decision {
            Decision::OnDeckExists { pid } => return Ok(Outcome::OnDeckExists { pid }),
            Decision::Busy { holder } => return Ok(Outcome::Busy { holder }),
            Decision::Take(taken) => {
                let _guard = WorkingGuard::new(key.clone());
                let report = work(
                    repo,
                    tasks,
                    opts,
                    &log,
                    &settings,
                    taken.term,
                    Some((me, beat)),
                );
                return Ok(Outcome::Ran(report));
            }
            Decision::Queue { wake_at, .. } => {
                // A holder past its lease is waited for (it is alive and may
                // be half-way through its tasks), but never in silence: at
                // once, then at doubling intervals, on stderr (through
                // tracing) and in the log.
                if let Some(msg) = overrun_message(&plan.normalized.current, now, lease_time) {
                    if next_warning.is_none_or(|t| Instant::now() >= t) {
                        log.error(now, &msg);
                        next_warning = Instant::now().checked_add(warn_every);
                        warn_every = warn_every.saturating_mul(2).min(Duration::from_secs(3600));
                    }
                }
                // Bounded: decide() clamps times, but never trust a sleep
                // computed from stored data to be short.
                let most = u64::try_from(lease_time).unwrap_or(1).saturating_add(1);
                let nap = clock::until(wake_at)
                    .clamp(Duration::from_millis(10), Duration::from_secs(most));
                std::thread::sleep(nap);
            }
        }
    }
}

/// Where a run reports: the log file (if any) and `tracing`.
pub(crate) struct Log<'a> {
    pub(crate) file: Option<&'a Path>,
    pub(crate) project: &'a str,
    pub(crate) repo: &'a Path,
}

impl Log<'_> {
    pub(crate) fn error(&self, now: i64, msg: &str) {
        tracing::warn!(repo = %self.repo.display(), "{msg}");
        if let Some(f) = self.file {
            let _ = task::append_log(f, &task::error_line(now, self.project, msg));
        }
    }
}

/// The heartbeat of a working holder: how often it renews, and how long a
/// renewal vouches for it (four intervals, so three renewals in a row may
/// fail, for instance on a lock held by the application, before the holder
/// counts as gone).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heartbeat {
    pub(crate) every: Duration,
}

/// How many heartbeat intervals one renewal vouches for.
pub const HEARTBEAT_GRACE_BEATS: i64 = 4;

impl Heartbeat {
    pub(crate) fn from_settings(s: &Settings) -> Heartbeat {
        Heartbeat {
            every: Duration::from_secs(u64::try_from(s.heartbeat.max(1)).unwrap_or(1)),
        }
    }

    pub(crate) fn grace_secs(&self) -> i64 {
        i64::try_from(self.every.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(HEARTBEAT_GRACE_BEATS)
    }
}

/// The thread that renews a working holder's heartbeat, and stops (and is
/// joined) when the run ends: a process that is not running tasks must
/// never look like a working holder.
struct Beating {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Beating {
    fn start(path: &Path, me: Identity, term: u64, beat: Heartbeat, log: &Log<'_>) -> Beating {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let path = path.to_owned();
        let file = log.file.map(Path::to_owned);
        let project = log.project.to_owned();
        let spawned = std::thread::Builder::new()
            .name("backoffice-heartbeat".into())
            .spawn(move || {
                let log = Log {
                    file: file.as_deref(),
                    project: &project,
                    repo: &path,
                };
                let mut conn: Option<rusqlite::Connection> = None;
                let mut failing = false;
                // recv_timeout: woken at once by stop (or by the sender
                // being dropped), else every interval.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(beat.every)
                {
                    match renew(&mut conn, &path, me, term, beat) {
                        Ok(held) => {
                            if failing {
                                log.error(clock::now(), "heartbeat renewed again");
                                failing = false;
                            }
                            if !held {
                                // Someone took the lease from us: nothing to renew.
                                log.error(
                                    clock::now(),
                                    &format!(
                                        "the lease no longer names this worker with term \
                                         {term} (taken over or released); heartbeat stopped"
                                    ),
                                );
                                return;
                            }
                        }
                        Err(e) => {
                            // Never fatal to the run: the tasks go on, and a
                            // later beat may succeed. But said every time.
                            conn = None;
                            failing = true;
                            log.error(clock::now(), &format!("cannot renew the heartbeat: {e}"));
                        }
                    }
                }
            });
        match spawned {
            Ok(t) => Beating {
                stop: Some(tx),
                thread: Some(t),
            },
            Err(e) => {
                log.error(
                    clock::now(),
                    &format!("cannot start the heartbeat thread ({e}); the lease will lapse"),
                );
                Beating {
                    stop: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One heartbeat: in a short `BEGIN IMMEDIATE` of the heartbeat's own
/// connection, push `alive-until` forward if the lease still names `me`
/// with `term`. Returns whether it did. The identity alone is no proof
/// that the lease is still ours ([`Identity::holds`] accepts a slot without
/// start time or namespace, and a namespace's pid 1 comes again in every
/// container); a takeover in between moved the term, and a resumed worker
/// must not revive its claim over the worker that took over.
fn renew(
    conn: &mut Option<rusqlite::Connection>,
    path: &Path,
    me: Identity,
    term: u64,
    beat: Heartbeat,
) -> rusqlite::Result<bool> {
    let c = match conn {
        Some(c) => c,
        None => {
            let c = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            // Wait for the lock at most one interval: the next beat retries.
            c.busy_timeout(beat.every)?;
            conn.insert(c)
        }
    };
    // A rusqlite transaction rolls back on drop, a failed COMMIT included.
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut lease, _) = read_lease(&tx)?;
    if !me.holds(&lease.current) || lease.term != term {
        return Ok(false);
    }
    lease.current.alive_until = Some(clock::now().saturating_add(beat.grace_secs()));
    repo::config_set(&tx, LEASE_ROW, &lease.encode())?;
    crate::writes::note_own_write(&tx)?;
    tx.commit()?;
    Ok(true)
}

/// How many times the end-of-run write (run record and lease release) is
/// tried before giving up; each try waits up to the busy timeout.
pub const FINISH_TRIES: u32 = 3;

/// Runs the tasks (renewing the heartbeat meanwhile, when `holder` is given),
/// purges the event log if that is due, then records the report and
/// releases the lease in one short transaction, retried if it fails, and
/// writes the log line. `term` is the lease's fencing term this run holds;
/// a holder whose term moved records nothing.
#[allow(clippy::too_many_arguments)]
fn work(
    repo: &mut Repo,
    tasks: &Tasks,
    opts: &RunOptions,
    log: &Log<'_>,
    settings: &Settings,
    term: u64,
    holder: Option<(Identity, Heartbeat)>,
) -> RunReport {
    let started = clock::now();
    let t0 = Instant::now();
    let results = {
        let _beating = holder.map(|(me, beat)| Beating::start(repo.path(), me, term, beat, log));
        let ctx = Context {
            db: crate::Db::Sqlite(repo.conn()),
            repo: repo.path(),
            now: started,
            debug: opts.debug,
            term,
        };
        let results = tasks.run_all(&ctx);
        // After the tasks, so that what they handled in this run counts;
        // under the heartbeat, so that a long first purge keeps the lease.
        retention(repo.conn(), tasks, settings, log, MAX_PURGE_PER_RUN);
        results
        // The heartbeat stops here, before the lease is released: from now
        // on this process is not working.
    };
    let me = Identity::current();
    let report = RunReport {
        started,
        elapsed_us: u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        pid: me.pid,
        tasks: results,
    };
    let release = holder.is_some();
    let mut tries = 0;
    loop {
        tries += 1;
        match finish(repo, tasks, &report, me, release.then_some(term)) {
            Ok(()) => break,
            // Taken over: retrying cannot help, and the run that took over
            // records its own.
            Err(e @ crate::Error::Fenced { .. }) => {
                log.error(clock::now(), &format!("run {e}"));
                break;
            }
            Err(e) if tries < FINISH_TRIES => {
                log.error(
                    clock::now(),
                    &format!("cannot record the run (try {tries} of {FINISH_TRIES}): {e}"),
                );
                std::thread::sleep(Duration::from_millis(100u64 << tries));
            }
            Err(e) => {
                let lapse = if release {
                    "; the lease lapses when its heartbeat runs out"
                } else {
                    ""
                };
                log.error(clock::now(), &format!("cannot record the run: {e}{lapse}"));
                break;
            }
        }
    }
    if !report.is_noop() || opts.debug {
        let line = report.log_line(log.project);
        tracing::info!(repo = %repo.path().display(), "{line}");
        if let Some(f) = log.file {
            if let Err(e) = task::append_log(f, &line) {
                tracing::error!("{e}");
            }
        }
    }
    report
}

/// Most events one run deletes: a first purge of a large log is spread
/// over several runs rather than holding up the tasks of this one.
const MAX_PURGE_PER_RUN: usize = 100 * crate::events::PURGE_BATCH;

/// Seconds between purges of the event log.
const PURGE_EVERY: i64 = 86_400;

/// True if the event log is to be purged at `now`: retention is on and the
/// last purge is a day old (or never happened, or is in the future: the
/// clock was stepped back).
fn purge_due(days: i64, last: Option<i64>, now: i64) -> bool {
    days > 0 && last.is_none_or(|t| t > now || now.saturating_sub(t) >= PURGE_EVERY)
}

/// Retention of the event log (`event-retention-days`): when a purge is
/// due, deletes the events older than the period that every task is done
/// with ([`Tasks::events_done`]), at most `limit` of them, and records the
/// time, so the next purge is a day later. A purge cut short by `limit`
/// leaves the time as it was: the next run goes on with it. If a task
/// cannot say how far it is, nothing is deleted, the failure is logged,
/// and the time is recorded (one complaint a day, not one a run).
///
/// Settings were read with the rest at the start of the run: when no purge
/// is due (retention off, the default, or done today) this costs nothing.
fn retention(
    conn: &rusqlite::Connection,
    tasks: &Tasks,
    settings: &Settings,
    log: &Log<'_>,
    limit: usize,
) -> Option<u64> {
    let now = clock::now();
    let days = settings.event_retention_days;
    if !purge_due(days, settings.last_event_purge, now) {
        return None;
    }
    // The settings were read when this worker started, and it may have
    // waited on deck behind a run that purged: look again (one point read,
    // once a day).
    let last = repo::config_get(conn, crate::events::PURGE_ROW)
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse().ok());
    if !purge_due(days, last, now) {
        return None;
    }
    let before = now.saturating_sub(days.saturating_mul(86_400));
    let deleted = match tasks.events_done_or_why(crate::Db::Sqlite(conn)) {
        Ok(upto) => match crate::events::purge(conn, before, upto, limit) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(repo = %log.repo.display(), events = n, upto, "event log purged");
                }
                Some(n)
            }
            Err(e) => {
                // Batches already committed stay deleted (each was safe on
                // its own); the rest waits for the next purge.
                log.error(now, &format!("cannot purge the event log: {e}"));
                None
            }
        },
        Err(why) => {
            log.error(now, &format!("event log not purged: {why}"));
            None
        }
    };
    if deleted.is_some_and(|n| usize::try_from(n).unwrap_or(usize::MAX) >= limit) {
        return deleted;
    }
    let mark = crate::writes::own_write(conn, |c| {
        repo::config_set(c, crate::events::PURGE_ROW, &now.to_string())
    });
    if let Err(e) = mark {
        log.error(now, &format!("cannot record the event log purge: {e}"));
    }
    deleted
}

/// Records the run and its totals and, for a holder (`term` given: the
/// fencing term its run holds), releases the lease, in one transaction. A
/// holder whose term moved (it was taken over while it ran) records
/// nothing: [`crate::Error::Fenced`].
fn finish(
    repo: &mut Repo,
    tasks: &Tasks,
    report: &RunReport,
    me: Identity,
    term: Option<u64>,
) -> Result<()> {
    let path = repo.path().to_owned();
    let busy = repo.busy_ms();
    let sq = |what, e| crate::Error::sqlite(what, &path, busy, e);
    let tx = repo
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sq("taking the write lock", e))?;
    let (mut lease, _) = read_lease(&tx).map_err(|e| sq("reading the lease", e))?;
    if let Some(expected) = term.filter(|t| *t != lease.term) {
        return Err(crate::Error::Fenced {
            path: path.clone(),
            expected,
            found: lease.term,
        });
    }
    let json = serde_json::to_string(report).unwrap_or_default();
    repo::config_set(&tx, task::LAST_RUN_ROW, &json).map_err(|e| sq("recording the run", e))?;
    // The totals ride in the same transaction, so they agree with the last
    // run and cost the request path nothing. Every recorded run counts,
    // no-ops included. A damaged row restarts the count instead of failing.
    let mut totals = RunTotals::load(&tx);
    totals.add(report);
    let json = serde_json::to_string(&totals).unwrap_or_default();
    repo::config_set(&tx, task::TOTALS_ROW, &json).map_err(|e| sq("recording the totals", e))?;
    // The history for the status page's charts: bounded, pruned here.
    let mut history = crate::history::History::load(&tx);
    history.add(report);
    repo::config_set(&tx, crate::history::HISTORY_ROW, &history.to_json())
        .map_err(|e| sq("recording the history", e))?;
    if term.is_some() && me.holds(&lease.current) {
        // Nobody holds it now; the expiry (and the term) stay: the expiry
        // still spaces runs, and only a takeover moves the term.
        lease.current = Slot {
            expires: lease.current.expires,
            ..Slot::EMPTY
        };
        repo::config_set(&tx, LEASE_ROW, &lease.encode())
            .map_err(|e| sq("releasing the lease", e))?;
    }
    // The due summary, last: the tasks are asked under this write lock,
    // after everything this run wrote. Never fails the record: without a
    // summary the next check asks the tasks.
    let at = clock::now();
    if let Err(e) = crate::due::record(&tx, tasks, at) {
        tracing::warn!("cannot keep the due summary: {e}");
        let _ = crate::due::lower(&tx);
    }
    crate::writes::note_own_write(&tx).map_err(|e| sq("noting the write", e))?;
    // On failure the transaction is rolled back when dropped (rusqlite
    // does so when COMMIT fails too), so the connection is never left
    // inside it.
    tx.commit().map_err(|e| sq("committing the run record", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn me(pid: i64, now: i64) -> Me<'static> {
        Me {
            id: Identity {
                pid,
                start: Some(pid as u64 * 10),
                ns: Some(77),
            },
            boot: Some("b007"),
            now,
            lease_time: 60,
            grace: 20,
            nodelay: false,
        }
    }

    fn slot(pid: i64, expires: i64) -> Slot {
        Slot {
            pid,
            expires,
            start: Some(pid as u64 * 10),
            ns: Some(77),
            alive_until: None,
        }
    }

    #[test]
    fn fresh_lease_is_taken() {
        let p = decide(&Lease::default(), me(7, 1000), &mut |_| false);
        match p.decision {
            Decision::Take(l) => {
                assert_eq!(
                    l.current,
                    Slot {
                        alive_until: Some(1020),
                        ..slot(7, 1060)
                    }
                );
                assert_eq!(l.next, Slot::EMPTY);
                // The first takeover: term 1.
                assert_eq!(
                    l.encode(),
                    "7 1060 0 0 cur-start=70 cur-ns=77 cur-alive-until=1020 boot=b007 term=1"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn held_lease_queues_or_exits() {
        let held = Lease {
            current: slot(5, 1030),
            ..Lease::default()
        };
        let p = decide(&held, me(7, 1000), &mut |_| true);
        match p.decision {
            Decision::Queue { lease, wake_at } => {
                assert_eq!(wake_at, 1031);
                assert_eq!(lease.current, held.current);
                assert_eq!(
                    lease.next,
                    Slot {
                        alive_until: Some(1090),
                        ..slot(7, 1090)
                    }
                );
            }
            d => panic!("{d:?}"),
        }
        let nd = Me {
            nodelay: true,
            ..me(7, 1000)
        };
        assert_eq!(
            decide(&held, nd, &mut |_| true).decision,
            Decision::Busy { holder: 5 }
        );
        let with_next = Lease {
            next: slot(6, 1090),
            ..held
        };
        assert_eq!(
            decide(&with_next, me(7, 1000), &mut |_| true).decision,
            Decision::OnDeckExists { pid: 6 }
        );
    }

    #[test]
    fn expired_lease_with_dead_holder_is_taken_with_live_holder_waited_on() {
        let old = Lease {
            current: slot(5, 990),
            ..Lease::default()
        };
        assert!(matches!(
            decide(&old, me(7, 1000), &mut |_| false).decision,
            Decision::Take(_)
        ));
        match decide(&old, me(7, 1000), &mut |_| true).decision {
            Decision::Queue { wake_at, .. } => assert_eq!(wake_at, 1001),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn far_future_lease_is_pulled_back() {
        let future = Lease {
            current: slot(5, 1_000_000),
            next: slot(6, 2_000_000),
            ..Lease::default()
        };
        let p = decide(
            &future,
            Me {
                nodelay: true,
                ..me(7, 1000)
            },
            &mut |_| false,
        );
        assert!(p.clamped);
        assert_eq!(p.normalized.current.expires, 1060);
        assert_eq!(p.normalized.next.expires, 1120);
        // Judged gone on the row as stored: emptied as well.
        assert_eq!(p.normalized.current.pid, 0);
        assert_eq!(p.normalized.next.pid, 0);
        // A live holder is kept, only pulled back; so is its heartbeat.
        let future = Lease {
            current: Slot {
                alive_until: Some(i64::MAX),
                ..slot(5, 1_000_000)
            },
            ..Lease::default()
        };
        let p = decide(&future, me(7, 1000), &mut |_| true);
        assert_eq!(p.normalized.current.pid, 5);
        assert_eq!(p.normalized.current.expires, 1060);
        assert_eq!(p.normalized.current.alive_until, Some(1020));
    }

    /// The hostile rows of issue 10: whatever a row says, a holder judged
    /// gone stops the work for at most one lease time (here: the first pass
    /// empties the slot; a pass after its pulled-back expiry takes it).
    #[test]
    fn a_far_future_row_naming_a_non_holder_is_taken_within_a_lease_time() {
        let row = Lease::parse("1 4102444800 0 0");
        let p = decide(&row, me(7, 1000), &mut |s| s.expires < 2_000);
        match p.decision {
            Decision::Queue { wake_at, lease } => {
                assert_eq!(wake_at, 1061);
                let p2 = decide(&lease, me(7, 1061), &mut |_| true);
                assert!(matches!(p2.decision, Decision::Take(_)), "{p2:?}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn overrun_is_never_negative() {
        for (expires, now) in [
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (0, i64::MAX),
            (-5, 0),
            (10, 5),
        ] {
            let s = Slot {
                expires,
                ..slot(5, 0)
            };
            if let Some(m) = overrun_message(&s, now, i64::MAX) {
                assert!(!m.contains(" -"), "{m}");
            }
            let _ = overrun_message(&s, now, i64::MIN);
        }
        let s = slot(5, 100);
        assert_eq!(overrun(&s, 130), Some(30));
        assert_eq!(
            overrun_message(&s, 130, 60)
                .unwrap()
                .split(" (")
                .next()
                .unwrap(),
            "backoffice process 5 still running after 90 seconds"
        );
    }

    /// The end-of-run write of a holder whose term moved (it was taken
    /// over while it ran) records nothing and leaves the lease alone; with
    /// its own term it records the run and releases the slot, keeping the
    /// term.
    #[test]
    fn finish_refuses_when_the_term_moved() {
        let (_d, mut r) = crate::repo::temp_repo();
        let me = Identity::current();
        let held = Lease {
            current: me.slot(clock::now() + 60, Some(clock::now() + 20)),
            term: 3,
            ..Lease::default()
        };
        r.set(LEASE_ROW, &held.encode()).unwrap();
        let report = RunReport {
            started: clock::now(),
            elapsed_us: 1,
            pid: me.pid,
            tasks: Vec::new(),
        };
        match finish(&mut r, &Tasks::new(), &report, me, Some(2)) {
            Err(crate::Error::Fenced {
                expected: 2,
                found: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(r.get(task::LAST_RUN_ROW).unwrap(), None);
        assert_eq!(r.get(task::TOTALS_ROW).unwrap(), None);
        assert_eq!(r.get(LEASE_ROW).unwrap(), Some(held.encode()));
        assert!(r.conn().is_autocommit(), "left inside the transaction");
        finish(&mut r, &Tasks::new(), &report, me, Some(3)).unwrap();
        assert!(r.get(task::LAST_RUN_ROW).unwrap().is_some());
        let after = Lease::parse(&r.get(LEASE_ROW).unwrap().unwrap());
        assert_eq!(after.current.pid, 0);
        assert_eq!(after.current.expires, held.current.expires);
        assert_eq!(after.term, 3, "a release must not move the term");
    }

    /// A heartbeat renews only a lease that names this worker *and* its
    /// term: a resumed worker whose identity matches again (or was never
    /// replaced, only the term moved) cannot revive its claim. A renewal
    /// leaves the term alone.
    #[test]
    fn renew_refuses_when_the_term_moved() {
        let (_d, r) = crate::repo::temp_repo();
        let me = Identity::current();
        let beat = Heartbeat {
            every: Duration::from_secs(1),
        };
        let held = Lease {
            current: me.slot(clock::now() + 60, Some(5)),
            term: 3,
            ..Lease::default()
        };
        r.set(LEASE_ROW, &held.encode()).unwrap();
        let mut conn = None;
        assert!(!renew(&mut conn, r.path(), me, 2, beat).unwrap());
        assert_eq!(r.get(LEASE_ROW).unwrap(), Some(held.encode()));
        assert!(renew(&mut conn, r.path(), me, 3, beat).unwrap());
        let after = Lease::parse(&r.get(LEASE_ROW).unwrap().unwrap());
        assert!(after.current.alive_until > Some(5), "{after:?}");
        assert_eq!(after.term, 3, "a renewal must not move the term");
    }

    /// The whole path in one process: a run takes the lease (term 1); while
    /// its task works, another worker takes it over (term 2, written on
    /// another connection as a takeover would). The task's fenced progress
    /// write is refused and rolled back, and the run is not recorded.
    #[test]
    fn a_run_taken_over_commits_nothing() {
        struct TakenOver;
        impl task::Task for TakenOver {
            fn name(&self) -> &str {
                "taken-over"
            }
            fn due(
                &self,
                _: crate::Db<'_>,
                _: i64,
            ) -> std::result::Result<task::Due, task::TaskError> {
                Ok(task::Due::Now)
            }
            fn run(&self, ctx: &Context<'_>) -> std::result::Result<u64, task::TaskError> {
                assert_eq!(ctx.term, 1);
                // Before the takeover, a fenced write goes through.
                repo::immediate(ctx.db.sqlite().expect("an SQLite repository"), || {
                    repo::config_set(
                        ctx.db.sqlite().expect("an SQLite repository"),
                        "progress-1",
                        "x",
                    )?;
                    crate::writes::fenced(ctx.db.sqlite().expect("an SQLite repository"), ctx.term)
                })?;
                let other = rusqlite::Connection::open(ctx.repo)?;
                let (mut l, _) = read_lease(&other)?;
                l.current = Slot {
                    pid: 999_999_999,
                    ..l.current
                };
                l.term += 1;
                repo::config_set(&other, LEASE_ROW, &l.encode())?;
                let e = repo::immediate(ctx.db.sqlite().expect("an SQLite repository"), || {
                    repo::config_set(
                        ctx.db.sqlite().expect("an SQLite repository"),
                        "progress-2",
                        "x",
                    )?;
                    crate::writes::fenced(ctx.db.sqlite().expect("an SQLite repository"), ctx.term)
                })
                .unwrap_err();
                assert!(
                    matches!(
                        e,
                        crate::writes::FenceError::Fenced {
                            expected: 1,
                            found: 2
                        }
                    ),
                    "{e:?}"
                );
                Err(e.into())
            }
        }
        let (d, mut r) = crate::repo::temp_repo();
        let log = d.path().join("bo.log");
        let opts = RunOptions {
            logfile: Some(log.clone()),
            ..RunOptions::default()
        };
        let out = run(&mut r, &Tasks::new().with(TakenOver), &opts).unwrap();
        let Outcome::Ran(report) = out else {
            panic!("{out:?}")
        };
        assert!(
            report.tasks[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("fenced")),
            "{report:?}"
        );
        assert_eq!(r.get("progress-1").unwrap().as_deref(), Some("x"));
        assert_eq!(
            r.get("progress-2").unwrap(),
            None,
            "a fenced write committed"
        );
        assert_eq!(r.get(task::LAST_RUN_ROW).unwrap(), None, "run recorded");
        let l = Lease::parse(&r.get(LEASE_ROW).unwrap().unwrap());
        assert_eq!((l.current.pid, l.term), (999_999_999, 2), "{l:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("run not recorded") && text.contains("term is 2, not this run's 1"),
            "{text}"
        );
    }

    /// The task's writes keep the connection's own durability: the WAL
    /// lease pass relaxes `synchronous` for its commit only.
    #[test]
    fn the_task_runs_at_the_connections_own_synchronous_level() {
        struct Level(std::sync::Mutex<Vec<i64>>);
        impl task::Task for &'static Level {
            fn name(&self) -> &str {
                "level"
            }
            fn due(
                &self,
                _: crate::Db<'_>,
                _: i64,
            ) -> std::result::Result<task::Due, task::TaskError> {
                Ok(task::Due::Now)
            }
            fn run(&self, ctx: &Context<'_>) -> std::result::Result<u64, task::TaskError> {
                let conn = ctx.db.sqlite().expect("an SQLite repository");
                let level = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                self.0.lock().unwrap().push(level);
                Ok(0)
            }
        }
        for (mode, own) in [("wal", 2), ("wal", 3), ("delete", 2)] {
            let (_d, mut r) = crate::repo::temp_repo();
            r.conn()
                .execute_batch(&format!(
                    "PRAGMA journal_mode={mode}; PRAGMA synchronous={own}"
                ))
                .unwrap();
            let level: &'static Level = Box::leak(Box::new(Level(Default::default())));
            let out = run(&mut r, &Tasks::new().with(level), &RunOptions::default()).unwrap();
            assert!(matches!(out, Outcome::Ran(_)), "{out:?}");
            assert_eq!(*level.0.lock().unwrap(), [own], "{mode}");
            let after: i64 = r
                .conn()
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(after, own, "{mode}: the level after the run");
        }
    }

    struct Counts(u64, bool);
    impl task::Task for Counts {
        fn name(&self) -> &str {
            "counts"
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> std::result::Result<task::Due, task::TaskError> {
            Ok(task::Due::Now)
        }
        fn run(&self, _: &Context<'_>) -> std::result::Result<u64, task::TaskError> {
            if self.1 {
                Err("broken".into())
            } else {
                Ok(self.0)
            }
        }
    }

    #[test]
    fn runs_add_up_in_the_totals() {
        let (_d, mut r) = crate::repo::temp_repo();
        let opts = RunOptions {
            nolease: true,
            ..RunOptions::default()
        };
        let tasks = Tasks::new().with(Counts(3, false)).with(Counts(0, true));
        let before = clock::now();
        run(&mut r, &tasks, &opts).unwrap();
        run(&mut r, &tasks, &opts).unwrap();
        // A no-op run counts too: it is a run.
        run(&mut r, &Tasks::new(), &opts).unwrap();
        let t = RunTotals::load(r.conn());
        assert_eq!((t.runs, t.items, t.failures), (3, 6, 2), "{t:?}");
        assert!(t.since >= before && t.since <= clock::now(), "{t:?}");
    }

    #[test]
    fn a_damaged_totals_row_restarts_the_count() {
        let (_d, mut r) = crate::repo::temp_repo();
        r.set(task::TOTALS_ROW, "{not json").unwrap();
        let opts = RunOptions {
            nolease: true,
            ..RunOptions::default()
        };
        let tasks = Tasks::new().with(Counts(2, false));
        run(&mut r, &tasks, &opts).unwrap();
        let t = RunTotals::load(r.conn());
        assert_eq!((t.runs, t.items, t.failures), (1, 2, 0), "{t:?}");
        // The run itself was recorded.
        assert!(r.get(task::LAST_RUN_ROW).unwrap().is_some());
    }

    /// A task that reads the event log and is done with it up to a point
    /// (or cannot say).
    struct Reader(std::result::Result<Option<i64>, &'static str>);
    impl task::Task for Reader {
        fn name(&self) -> &str {
            "reader"
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> std::result::Result<task::Due, task::TaskError> {
            Ok(task::Due::Never)
        }
        fn run(&self, _: &Context<'_>) -> std::result::Result<u64, task::TaskError> {
            Ok(0)
        }
        fn events_done(
            &self,
            _: crate::Db<'_>,
        ) -> std::result::Result<Option<i64>, task::TaskError> {
            self.0.map_err(Into::into)
        }
    }

    /// A repository with events 1..=n, all two days old, and one new one
    /// (n+1).
    fn repo_with_events(n: i64) -> (tempfile::TempDir, Repo) {
        let (d, r) = crate::repo::temp_repo();
        crate::events::install(r.conn()).unwrap();
        let old = clock::now() - 2 * 86_400;
        for i in 1..=n {
            r.conn()
                .execute(
                    "INSERT INTO bo_event(eventid, kind, title, mtime) VALUES (?1, 'k', 't', ?2)",
                    [i, old],
                )
                .unwrap();
        }
        r.conn()
            .execute(
                "INSERT INTO bo_event(kind, title, mtime) VALUES ('k', 'new', ?1)",
                [clock::now()],
            )
            .unwrap();
        (d, r)
    }

    fn event_ids(r: &Repo) -> Vec<i64> {
        r.conn()
            .prepare("SELECT eventid FROM bo_event ORDER BY eventid")
            .unwrap()
            .query_map([], |x| x.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn nolease() -> RunOptions {
        RunOptions {
            nolease: true,
            ..RunOptions::default()
        }
    }

    /// Retention off (the default): a run deletes nothing and leaves no
    /// purge mark, however old the events and whatever the tasks say.
    #[test]
    fn retention_off_deletes_nothing() {
        let (_d, mut r) = repo_with_events(5);
        let tasks = Tasks::new().with(Reader(Ok(Some(i64::MAX))));
        run(&mut r, &tasks, &nolease()).unwrap();
        assert_eq!(event_ids(&r), [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.get(crate::events::PURGE_ROW).unwrap(), None);
        r.set(crate::settings::EVENT_RETENTION_DAYS, "0").unwrap();
        run(&mut r, &tasks, &nolease()).unwrap();
        assert_eq!(event_ids(&r), [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.get(crate::events::PURGE_ROW).unwrap(), None);
    }

    /// A run purges what every reader is done with and is older than the
    /// period, then not again for a day: the mark holds it back until it
    /// is a day old.
    #[test]
    fn retention_purges_what_every_reader_is_done_with_once_a_day() {
        let (_d, mut r) = repo_with_events(8);
        r.set(crate::settings::EVENT_RETENTION_DAYS, "1").unwrap();
        // The slowest reader is done up to 3; a task that reads no events
        // does not count.
        let slow = std::sync::Arc::new(std::sync::Mutex::new(Some(3)));
        struct Shared(std::sync::Arc<std::sync::Mutex<Option<i64>>>);
        impl task::Task for Shared {
            fn name(&self) -> &str {
                "shared"
            }
            fn due(
                &self,
                _: crate::Db<'_>,
                _: i64,
            ) -> std::result::Result<task::Due, task::TaskError> {
                Ok(task::Due::Never)
            }
            fn run(&self, _: &Context<'_>) -> std::result::Result<u64, task::TaskError> {
                Ok(0)
            }
            fn events_done(
                &self,
                _: crate::Db<'_>,
            ) -> std::result::Result<Option<i64>, task::TaskError> {
                Ok(*self.0.lock().unwrap())
            }
        }
        let tasks = Tasks::new()
            .with(Counts(0, false))
            .with(Reader(Ok(Some(6))))
            .with(Shared(slow.clone()));
        let t0 = clock::now();
        run(&mut r, &tasks, &nolease()).unwrap();
        assert_eq!(event_ids(&r), [4, 5, 6, 7, 8, 9]);
        let mark: i64 = r
            .get(crate::events::PURGE_ROW)
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert!(mark >= t0 && mark <= clock::now());
        // The slow reader catches up, but a purge was made today.
        *slow.lock().unwrap() = Some(100);
        run(&mut r, &tasks, &nolease()).unwrap();
        assert_eq!(event_ids(&r), [4, 5, 6, 7, 8, 9]);
        // A day later (the mark moved back): the next run purges up to the
        // other reader's 6; the new event (9) is younger than the period.
        r.set(crate::events::PURGE_ROW, &(mark - 86_400).to_string())
            .unwrap();
        run(&mut r, &tasks, &nolease()).unwrap();
        assert_eq!(event_ids(&r), [7, 8, 9]);
    }

    /// A reader that cannot say how far it is stops the purge: nothing is
    /// deleted, the log says why, and the mark is set (one complaint a day).
    #[test]
    fn retention_deletes_nothing_when_a_reader_fails() {
        let (d, mut r) = repo_with_events(5);
        r.set(crate::settings::EVENT_RETENTION_DAYS, "1").unwrap();
        let log = d.path().join("bo.log");
        let opts = RunOptions {
            logfile: Some(log.clone()),
            ..nolease()
        };
        let tasks = Tasks::new()
            .with(Reader(Ok(Some(10))))
            .with(Reader(Err("cursor table unreadable")));
        run(&mut r, &tasks, &opts).unwrap();
        assert_eq!(event_ids(&r), [1, 2, 3, 4, 5, 6]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("event log not purged: reader: cannot tell")
                && text.contains("cursor table unreadable"),
            "{text}"
        );
        assert!(r.get(crate::events::PURGE_ROW).unwrap().is_some());
        assert_eq!(tasks.events_done(r.conn()), None);
    }

    /// A purge cut short by the per-run limit does not set the mark: the
    /// next run goes on with it.
    #[test]
    fn a_purge_cut_short_goes_on_in_the_next_run() {
        let (d, r) = repo_with_events(5);
        let log = Log {
            file: None,
            project: "p",
            repo: d.path(),
        };
        let settings = Settings {
            event_retention_days: 1,
            ..Settings::default()
        };
        let tasks = Tasks::new();
        assert_eq!(tasks.events_done(r.conn()), Some(i64::MAX));
        assert_eq!(retention(r.conn(), &tasks, &settings, &log, 3), Some(3));
        assert_eq!(r.get(crate::events::PURGE_ROW).unwrap(), None);
        assert_eq!(retention(r.conn(), &tasks, &settings, &log, 3), Some(2));
        assert!(r.get(crate::events::PURGE_ROW).unwrap().is_some());
        assert_eq!(event_ids(&r), [6]);
    }

    #[test]
    fn purge_is_due_once_a_day_and_after_the_clock_steps_back() {
        let now = 1_000_000;
        assert!(!purge_due(0, None, now));
        assert!(purge_due(1, None, now));
        assert!(!purge_due(1, Some(now - 86_399), now));
        assert!(purge_due(1, Some(now - 86_400), now));
        assert!(purge_due(1, Some(now + 1), now));
        assert!(purge_due(36_500, Some(i64::MIN), now));
    }

    /// A simulated world of workers sharing one lease, stepped in random
    /// order on a virtual clock, checks the properties the design promises.
    #[derive(Clone, Debug)]
    enum Act {
        /// A new worker process starts (a request triggered it).
        Spawn,
        /// Worker i takes a step (if it is not asleep).
        Step(usize),
        /// The clock moves on.
        Tick(u8),
        /// The worker doing work finishes and exits.
        Finish,
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            2 => Just(Act::Spawn),
            4 => (0usize..8).prop_map(Act::Step),
            2 => (1u8..40).prop_map(Act::Tick),
            1 => Just(Act::Finish),
        ]
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum W {
        Ready,
        Sleeping(i64),
        Working,
        Exited,
    }

    fn any_slot() -> impl Strategy<Value = Slot> {
        let t = prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0i64),
            any::<i64>(),
            900i64..1200
        ];
        (
            prop_oneof![Just(0i64), 1i64..10, any::<i64>()],
            t.clone(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(t),
        )
            .prop_map(|(pid, expires, start, ns, alive_until)| Slot {
                pid,
                expires,
                start,
                ns,
                alive_until,
            })
    }

    proptest! {
        /// Whatever is stored and whatever the clock and settings say,
        /// deciding never panics (a debug build checks every overflow),
        /// never sleeps longer than a lease time, and never writes a time
        /// further ahead than a legitimate writer could.
        #[test]
        fn decide_is_total_and_bounded(
            current in any_slot(), next in any_slot(),
            // The clock (clock::now) is never negative; stored values can be anything.
            now in prop_oneof![Just(0i64), Just(i64::MAX), 0i64..2_000_000_000],
            lease_time in prop_oneof![Just(i64::MIN), Just(i64::MAX), 1i64..100],
            grace in prop_oneof![Just(i64::MIN), Just(i64::MAX), 1i64..100],
            nodelay in any::<bool>(), alive_bits in any::<u8>(),
            term in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        ) {
            let stored = Lease { current, next, boot: None, term };
            let mut n = 0u32;
            let mut alive = |_: &Slot| { n += 1; alive_bits & (1 << (n % 8)) != 0 };
            let m = Me { lease_time, grace, nodelay, ..me(3, now) };
            let plan = decide(&stored, m, &mut alive);
            let l = lease_time.max(1);
            let limit = now.saturating_add(l.saturating_mul(2));
            let written = match &plan.decision {
                Decision::Take(x) | Decision::Queue { lease: x, .. } => Some(x.clone()),
                _ => None,
            };
            for x in written.iter().chain([&plan.normalized]) {
                prop_assert!(x.current.expires <= limit && x.next.expires <= limit, "{x:?}");
                for s in [&x.current, &x.next] {
                    if let Some(t) = s.alive_until {
                        prop_assert!(t <= now.saturating_add(grace.max(1)).max(s.expires), "{s:?}");
                    }
                }
            }
            if let Decision::Queue { wake_at, .. } = plan.decision {
                prop_assert!(wake_at.saturating_sub(now) <= l.saturating_add(1));
            }
            // The term: one more on a takeover (saturating), else unchanged.
            prop_assert_eq!(plan.normalized.term, term);
            match &plan.decision {
                Decision::Take(x) => prop_assert_eq!(x.term, term.saturating_add(1)),
                Decision::Queue { lease: x, .. } => prop_assert_eq!(x.term, term),
                _ => {}
            }
            let _ = overrun_message(&stored.current, now, lease_time);
            let _ = overrun_message(&plan.normalized.current, now, lease_time);
        }

        #[test]
        fn lease_protocol_properties(acts in proptest::collection::vec(act(), 1..200), nodelay in any::<bool>()) {
            let l_time = 10;
            let mut now = 1000i64;
            let mut lease = Lease::default();
            let mut workers: Vec<W> = Vec::new();
            let mut last_start: Option<i64> = None;
            // Each worker's term, as its run's Context would carry it.
            let mut terms: Vec<Option<u64>> = Vec::new();
            for a in acts {
                match a {
                    Act::Spawn => {
                        workers.push(W::Ready);
                        terms.push(None);
                    }
                    Act::Tick(d) => {
                        now += i64::from(d);
                        for w in workers.iter_mut() {
                            if let W::Sleeping(t) = *w { if t <= now { *w = W::Ready; } }
                        }
                    }
                    Act::Finish => {
                        for w in workers.iter_mut() {
                            if *w == W::Working { *w = W::Exited; }
                        }
                    }
                    Act::Step(i) => {
                        let n = workers.len();
                        if n == 0 { continue; }
                        let i = i % n;
                        if workers[i] != W::Ready { continue; }
                        let pid = i as i64 + 100;
                        let snapshot = workers.clone();
                        let mut alive = |s: &Slot| {
                            let j = (s.pid - 100) as usize;
                            j < snapshot.len() && snapshot[j] != W::Exited
                        };
                        let m = Me { nodelay, lease_time: l_time, ..me(pid, now) };
                        let plan = decide(&lease, m, &mut alive);
                        let before = lease.term;
                        match plan.decision {
                            Decision::Take(l) => {
                                // Fencing: each takeover moves the term on,
                                // so every earlier holder's term is stale.
                                prop_assert_eq!(l.term, before + 1, "a take must add one to the term");
                                for t in terms.iter().flatten() {
                                    prop_assert!(*t < l.term, "term {} reused", l.term);
                                }
                                terms[i] = Some(l.term);
                                // Exclusion: nobody else works.
                                prop_assert!(!workers.contains(&W::Working), "two workers at once");
                                // Rate: runs at least L apart.
                                if let Some(t) = last_start { prop_assert!(now - t > l_time - 1, "runs {t} and {now} closer than L"); }
                                last_start = Some(now);
                                lease = l;
                                workers[i] = W::Working;
                            }
                            Decision::Queue { lease: l, wake_at } => {
                                prop_assert!(!nodelay);
                                prop_assert_eq!(l.term, before, "queueing must not move the term");
                                prop_assert!(wake_at - now <= l_time + 1, "sleeps too long");
                                lease = l;
                                workers[i] = W::Sleeping(wake_at);
                            }
                            Decision::OnDeckExists { .. } | Decision::Busy { .. } => workers[i] = W::Exited,
                        }
                        // Only a take moves the term; a clamp written back
                        // (a pass that wrote no lease of its own) keeps it.
                        prop_assert_eq!(plan.normalized.term, before);
                        // Exactly one worker's run holds the current term:
                        // the last to take over.
                        let holding = terms.iter().filter(|t| **t == Some(lease.term)).count();
                        prop_assert!(lease.term == 0 || holding == 1, "{holding} runs hold term {}", lease.term);
                        // At most one live worker on deck or working, plus one sleeping.
                        let live = workers.iter().filter(|w| matches!(w, W::Working | W::Sleeping(_))).count();
                        prop_assert!(live <= 2, "{live} live workers: {workers:?}");
                    }
                }
            }
        }
    }
}
