//! The worker loop: current, on-deck, no-delay; running the tasks.
//!
//! A worker takes the lease in one `BEGIN IMMEDIATE` transaction, so SQLite's
//! write lock serialises every decision about it. Each pass reads the lease
//! and decides ([`decide`], a pure function, property-tested below):
//!
//! 1. Another live worker is already on deck → exit: it will do the work.
//! 2. The current lease has expired and its holder is gone → become current
//!    (`self, now+L, 0, 0`), commit, run the tasks, exit.
//! 3. No-delay mode → exit without work.
//! 4. Otherwise become on deck (`next = self, max(now, tmCurrent) + L`),
//!    commit, sleep until the current lease ends, and try again.
//!
//! Hence: at most one worker works at a time, runs are at least `L` seconds
//! apart, at most two workers exist per repository, and work left behind by
//! a request is picked up within `L` seconds.
//!
//! Two guards go beyond Fossil:
//!
//! * A lease time further ahead than `L` (the clock was stepped back, or the
//!   row was hand-edited) is pulled back to `now + L` and written back, so
//!   it stalls work for at most `L` after it is first seen.
//! * After the tasks, the worker records its [`RunReport`] and releases the
//!   lease (holder pid 0, expiry kept) in one transaction. The expiry still
//!   spaces runs `L` apart, but a host process that runs work in-process and
//!   lives on (a `--poll` loop, a spawn failure's fallback) does not look
//!   like a live holder forever.
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
    /// No-delay mode: never queue.
    pub nodelay: bool,
}

/// One pass of the lease protocol. Pure: liveness comes from `alive`.
pub fn decide(stored: &Lease, me: Me<'_>, alive: &mut dyn FnMut(&Slot) -> bool) -> Plan {
    let l_time = me.lease_time.max(1);
    let now = me.now;
    let mut l = stored.clone();
    let mut clamped = false;
    if l.current.expires > now.saturating_add(l_time) {
        l.current.expires = now + l_time;
        clamped = true;
    }
    if l.next.expires > now.saturating_add(2 * l_time) {
        l.next.expires = now + 2 * l_time;
        clamped = true;
    }
    let normalized = l.clone();
    let mine = |s: &Slot| Slot {
        pid: me.id.pid,
        expires: s.expires,
        start: me.id.start,
    };

    let decision =
        if l.next.is_held() && !me.id.holds(&l.next) && l.next.expires >= now && alive(&l.next) {
            Decision::OnDeckExists { pid: l.next.pid }
        } else if l.current.expires < now && !(l.current.is_held() && alive(&l.current)) {
            Decision::Take(Lease {
                current: mine(&Slot {
                    expires: now + l_time,
                    ..Slot::EMPTY
                }),
                next: Slot::EMPTY,
                boot: me.boot.map(str::to_owned),
            })
        } else if me.nodelay {
            Decision::Busy {
                holder: l.current.pid,
            }
        } else {
            let wake_at = if l.current.expires >= now {
                l.current.expires + 1
            } else {
                // Expired, but the holder is still running: look again shortly.
                now + 1
            };
            l.next = mine(&Slot {
                expires: now.max(l.current.expires) + l_time,
                ..Slot::EMPTY
            });
            l.boot = me.boot.map(str::to_owned);
            Decision::Queue { lease: l, wake_at }
        };
    Plan {
        decision,
        normalized,
        clamped,
    }
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

fn is_working(key: &Path) -> bool {
    WORKING
        .lock()
        .map(|g| g.as_ref().is_some_and(|s| s.contains(key)))
        .unwrap_or(true)
}

struct WorkingGuard(PathBuf);

impl WorkingGuard {
    fn new(key: PathBuf) -> WorkingGuard {
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
    let settings = Settings::load(repo.conn()).map_err(|e| repo.err("reading settings", e))?;
    let logfile = opts.logfile.clone().or_else(|| settings.logfile.clone());
    let project = repo.project_name();
    for p in &settings.problems {
        tracing::warn!(repo = %repo.path().display(), "{p}");
        if let Some(log) = &logfile {
            let _ = task::append_log(log, &task::error_line(clock::now(), &project, p));
        }
    }
    let key = working_key(repo.path());
    if opts.nolease {
        let _guard = WorkingGuard::new(key);
        let report = work(repo, tasks, opts, logfile.as_deref(), &project, false);
        return Ok(Outcome::Ran(report));
    }
    let me = Identity::current();
    let boot = process::boot_id();
    let nodelay = opts.nodelay || settings.nodelay;
    let first_wait = Instant::now();
    let mut next_warning = 30u64;
    let path = repo.path().to_owned();
    let busy = repo.busy_ms();
    let sq = |what, e| crate::Error::sqlite(what, &path, busy, e);
    loop {
        let lease_time = settings.lease_time;
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
            crate::replicate::note_own_write(&tx).map_err(|e| sq("noting the write", e))?;
        }
        tx.commit().map_err(|e| sq("committing the lease", e))?;
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
            Decision::Take(_) => {
                let _guard = WorkingGuard::new(key.clone());
                let report = work(repo, tasks, opts, logfile.as_deref(), &project, true);
                return Ok(Outcome::Ran(report));
            }
            Decision::Queue { wake_at, .. } => {
                let holder_late = stored.current.expires < now;
                if holder_late {
                    let waited = first_wait.elapsed().as_secs();
                    if waited >= next_warning {
                        let msg = format!(
                            "backoffice process {} still running after {} seconds",
                            stored.current.pid,
                            now - (stored.current.expires - lease_time)
                        );
                        tracing::warn!(repo = %repo.path().display(), "{msg}");
                        if let Some(log) = &logfile {
                            let _ = task::append_log(log, &task::error_line(now, &project, &msg));
                        }
                        next_warning *= 2;
                    }
                }
                // Bounded: decide() clamps times, but never trust a sleep
                // computed from stored data to be short.
                let nap = clock::until(wake_at).clamp(
                    Duration::from_millis(10),
                    Duration::from_secs(lease_time as u64 + 1),
                );
                std::thread::sleep(nap);
            }
        }
    }
}

/// Runs the tasks, then records the report (and releases the lease if
/// `release`) in one short transaction, and writes the log line.
fn work(
    repo: &mut Repo,
    tasks: &Tasks,
    opts: &RunOptions,
    logfile: Option<&Path>,
    project: &str,
    release: bool,
) -> RunReport {
    let started = clock::now();
    let t0 = Instant::now();
    let results = {
        let ctx = Context {
            conn: repo.conn(),
            repo: repo.path(),
            now: started,
            debug: opts.debug,
        };
        tasks.run_all(&ctx)
    };
    let me = Identity::current();
    let report = RunReport {
        started,
        elapsed_us: t0.elapsed().as_micros() as u64,
        pid: me.pid,
        tasks: results,
    };
    if let Err(e) = finish(repo, &report, me, release) {
        tracing::error!(repo = %repo.path().display(), error = %e, "cannot record the run");
        if let Some(log) = logfile {
            let _ = task::append_log(
                log,
                &task::error_line(
                    clock::now(),
                    project,
                    &format!("cannot record the run: {e}"),
                ),
            );
        }
    }
    if !report.is_noop() || opts.debug {
        let line = report.log_line(project);
        tracing::info!(repo = %repo.path().display(), "{line}");
        if let Some(log) = logfile {
            if let Err(e) = task::append_log(log, &line) {
                tracing::error!("{e}");
            }
        }
    }
    report
}

fn finish(repo: &mut Repo, report: &RunReport, me: Identity, release: bool) -> Result<()> {
    let path = repo.path().to_owned();
    let busy = repo.busy_ms();
    let sq = |what, e| crate::Error::sqlite(what, &path, busy, e);
    let tx = repo
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sq("taking the write lock", e))?;
    let json = serde_json::to_string(report).unwrap_or_default();
    repo::config_set(&tx, task::LAST_RUN_ROW, &json).map_err(|e| sq("recording the run", e))?;
    // The totals ride in the same transaction, so they agree with the last
    // run and cost the request path nothing. Every recorded run counts,
    // no-ops included. A damaged row restarts the count instead of failing.
    let mut totals = RunTotals::load(&tx);
    totals.add(report);
    let json = serde_json::to_string(&totals).unwrap_or_default();
    repo::config_set(&tx, task::TOTALS_ROW, &json).map_err(|e| sq("recording the totals", e))?;
    if release {
        let (mut lease, _) = read_lease(&tx).map_err(|e| sq("reading the lease", e))?;
        if me.holds(&lease.current) {
            lease.current.pid = 0;
            lease.current.start = None;
            repo::config_set(&tx, LEASE_ROW, &lease.encode())
                .map_err(|e| sq("releasing the lease", e))?;
        }
    }
    crate::replicate::note_own_write(&tx).map_err(|e| sq("noting the write", e))?;
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
            },
            boot: Some("b007"),
            now,
            lease_time: 60,
            nodelay: false,
        }
    }

    fn slot(pid: i64, expires: i64) -> Slot {
        Slot {
            pid,
            expires,
            start: Some(pid as u64 * 10),
        }
    }

    #[test]
    fn fresh_lease_is_taken() {
        let p = decide(&Lease::default(), me(7, 1000), &mut |_| false);
        match p.decision {
            Decision::Take(l) => {
                assert_eq!(l.current, slot(7, 1060));
                assert_eq!(l.next, Slot::EMPTY);
                assert_eq!(l.encode(), "7 1060 0 0 cur-start=70 boot=b007");
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
                assert_eq!(lease.next, slot(7, 1090));
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
    }

    struct Counts(u64, bool);
    impl task::Task for Counts {
        fn name(&self) -> &str {
            "counts"
        }
        fn due(
            &self,
            _: &rusqlite::Connection,
            _: i64,
        ) -> std::result::Result<task::Due, task::TaskError> {
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

    proptest! {
        #[test]
        fn lease_protocol_properties(acts in proptest::collection::vec(act(), 1..200), nodelay in any::<bool>()) {
            let l_time = 10;
            let mut now = 1000i64;
            let mut lease = Lease::default();
            let mut workers: Vec<W> = Vec::new();
            let mut last_start: Option<i64> = None;
            for a in acts {
                match a {
                    Act::Spawn => workers.push(W::Ready),
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
                        match plan.decision {
                            Decision::Take(l) => {
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
                                prop_assert!(wake_at - now <= l_time + 1, "sleeps too long");
                                lease = l;
                                workers[i] = W::Sleeping(wake_at);
                            }
                            Decision::OnDeckExists { .. } | Decision::Busy { .. } => workers[i] = W::Exited,
                        }
                        // At most one live worker on deck or working, plus one sleeping.
                        let live = workers.iter().filter(|w| matches!(w, W::Working | W::Sleeping(_))).count();
                        prop_assert!(live <= 2, "{live} live workers: {workers:?}");
                    }
                }
            }
        }
    }
}
