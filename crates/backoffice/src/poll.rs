//! Many repositories: one sweep, or `--poll` forever.
//!
//! Fossil services several repositories by starting one `fossil backoffice`
//! process per repository, one after another — 6 to 20 ms each, so a cron
//! sweep of 1,000 repositories takes seconds. We check them in one process,
//! on a bounded pool of threads, and only take a lease where there is work:
//!
//! * A **visit** opens the repository and asks the tasks, read-only, whether
//!   anything is due. If not, that is the end of it: no write, no fsync.
//! * If something is due (or, under `--poll`, the file changed since the last
//!   visit, or `--min` seconds have passed), a no-delay worker runs in this
//!   process through the same lease as every other worker, unless
//!   `--nolease`. A repository whose lease is held is simply skipped: its
//!   holder or on-deck worker will do the work.
//! * A repository that fails (missing, not SQLite, locked) is reported and
//!   the sweep goes on.
//!
//! Change detection uses the size and modification time of the database and
//! its `-wal` file, taken after each visit so our own lease writes do not
//! count. (`PRAGMA data_version` only compares within one connection, and
//! keeping thousands of connections open would exhaust file descriptors.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::clock;
use crate::engine::{self, Outcome, RunOptions};
use crate::error::Error;
use crate::repo::Repo;
use crate::task::{self, Due, Tasks};

/// How a sweep runs.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Options for each worker run (no-delay is always on in a sweep).
    pub run: RunOptions,
    /// Threads checking repositories in parallel.
    pub jobs: usize,
    /// Busy timeout for each repository.
    pub busy: Duration,
    /// Under `--poll`: visit a repository at least this often even when
    /// nothing is due and it did not change. `None`: never.
    pub min: Option<Duration>,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            run: RunOptions::default(),
            jobs: default_jobs(),
            busy: crate::repo::DEFAULT_BUSY_TIMEOUT,
            min: None,
        }
    }
}

/// Threads for a sweep: the work is mostly waiting on the disk (fsync), so
/// more threads than cores pay off, up to a point.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(4)
        .clamp(2, 16)
}

/// What happened to one repository in a sweep.
#[derive(Debug)]
pub enum Visit {
    /// Nothing was due; the lease was not touched.
    NothingDue,
    /// A worker ran through the lease (or without it under `--nolease`).
    Ran(Outcome),
    /// The repository could not be serviced.
    Failed(Error),
}

/// The result of one sweep.
#[derive(Debug)]
pub struct SweepReport {
    /// Each repository and what happened to it, in the order given.
    pub visits: Vec<(PathBuf, Visit)>,
    /// Wall time of the sweep.
    pub elapsed: Duration,
}

impl SweepReport {
    /// Repositories that failed.
    pub fn failures(&self) -> impl Iterator<Item = (&Path, &Error)> {
        self.visits.iter().filter_map(|(p, v)| match v {
            Visit::Failed(e) => Some((p.as_path(), e)),
            _ => None,
        })
    }

    /// Repositories where tasks ran.
    pub fn ran(&self) -> usize {
        self.visits
            .iter()
            .filter(|(_, v)| matches!(v, Visit::Ran(Outcome::Ran(_))))
            .count()
    }
}

/// A file's identity for change detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    db: Option<(u64, SystemTime)>,
    wal: Option<(u64, SystemTime)>,
}

fn stamp(path: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Stamp {
        db: one(path),
        wal: one(Path::new(&wal)),
    }
}

#[derive(Clone, Debug, Default)]
struct State {
    stamp: Option<Stamp>,
    last_run: Option<Instant>,
}

/// A set of repositories serviced together, remembering what it saw.
pub struct Poller {
    repos: Vec<PathBuf>,
    states: Vec<State>,
    tasks: Tasks,
    opts: SweepOptions,
    started: Instant,
    /// The due summary these tasks read ([`crate::due`]), and whether it
    /// covers every task (else a visit asks them all).
    fingerprint: Option<String>,
    all_summarized: bool,
    /// Sessions kept across the PostgreSQL schemas swept (and sweeps).
    #[cfg(feature = "postgres")]
    pg: crate::pg::Sessions,
    /// Told (visited, of) as each visit of a sweep ends.
    progress: Option<Box<dyn FnMut(usize, usize) + Send + Sync>>,
}

impl Poller {
    /// A poller over `repos`.
    pub fn new(repos: Vec<PathBuf>, tasks: Tasks, mut opts: SweepOptions) -> Poller {
        opts.run.nodelay = true;
        opts.jobs = opts.jobs.max(1);
        Poller {
            fingerprint: tasks.fingerprint(),
            all_summarized: tasks.all_summarized(),
            states: vec![State::default(); repos.len()],
            repos,
            tasks,
            opts,
            started: Instant::now(),
            #[cfg(feature = "postgres")]
            pg: crate::pg::Sessions::default(),
            progress: None,
        }
    }

    /// Calls `f(visited, of)` as each visit of every sweep ends, from the
    /// thread that called [`Poller::sweep`] or [`Poller::poll`]: a
    /// progress line for a sweep over thousands of repositories.
    pub fn on_progress(&mut self, f: impl FnMut(usize, usize) + Send + Sync + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Visits every repository once, in parallel.
    pub fn sweep(&mut self) -> SweepReport {
        let t0 = Instant::now();
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel();
        let jobs = self.opts.jobs.min(self.repos.len()).max(1);
        let total = self.repos.len();
        // Out of `self` while the visits borrow it; back after.
        let mut progress = self.progress.take();
        let mut results = Vec::with_capacity(total);
        std::thread::scope(|s| {
            for _ in 0..jobs {
                let tx = tx.clone();
                let next = &next;
                let this = &*self;
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = this.repos.get(i) else { break };
                        let (visit, state) = this.visit(path, &this.states[i]);
                        if tx.send((i, visit, state)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Results as they come, so progress is told as it is made. Only
            // then: waking this thread for every visit costs a context
            // switch each (on a 2-core VM, an idle sweep of 1,000
            // repositories took 67 ms instead of 56).
            if let Some(f) = progress.as_mut() {
                for r in rx.iter() {
                    results.push(r);
                    f(results.len(), total);
                }
            }
        });
        // Without progress, everything at once after the visits.
        results.extend(rx.try_iter());
        self.progress = progress;
        let mut visits: Vec<Option<Visit>> = (0..self.repos.len()).map(|_| None).collect();
        for (i, visit, state) in results {
            self.states[i] = state;
            visits[i] = Some(visit);
        }
        SweepReport {
            visits: self
                .repos
                .iter()
                .cloned()
                .zip(visits.into_iter().map(|v| {
                    v.unwrap_or_else(|| {
                        Visit::Failed(Error::Spawn {
                            program: "sweep".into(),
                            source: std::io::Error::other("visit thread ended early"),
                        })
                    })
                }))
                .collect(),
            elapsed: t0.elapsed(),
        }
    }

    /// Sweeps every `interval`, forever or for `max_sweeps`, handing each
    /// report to `on_sweep`, which may end the polling (for instance to
    /// re-execute an upgraded binary, see [`crate::process::exe_replaced`]).
    /// Returns the number of sweeps made.
    pub fn poll(
        &mut self,
        interval: Duration,
        max_sweeps: Option<u64>,
        mut on_sweep: impl FnMut(&SweepReport) -> std::ops::ControlFlow<()>,
    ) -> u64 {
        let mut n = 0u64;
        loop {
            let t0 = Instant::now();
            let report = self.sweep();
            n = n.saturating_add(1);
            if on_sweep(&report).is_break() || max_sweeps.is_some_and(|m| n >= m) {
                return n;
            }
            if let Some(rest) = interval.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    fn visit(&self, path: &Path, prev: &State) -> (Visit, State) {
        #[cfg(feature = "postgres")]
        if let Some(url) = path.to_str().filter(|s| crate::pg::is_url(s)) {
            return self.visit_pg(url, prev);
        }
        let t0 = Instant::now();
        let changed = matches!(prev.stamp, Some(s) if s != stamp(path));
        let min_passed = self
            .opts
            .min
            .is_some_and(|m| prev.last_run.unwrap_or(self.started).elapsed() >= m);
        // The due summary answers for most repositories of a sweep: one
        // statement on a connection opened for it, no schema lookups, no
        // task asked, no write.
        if !(changed || min_passed) && self.summary_says_not_yet(path) {
            let state = State {
                stamp: Some(stamp(path)),
                last_run: prev.last_run,
            };
            return (Visit::NothingDue, state);
        }
        let mut repo = match Repo::open_with(path, self.opts.busy) {
            Ok(r) => r,
            Err(e) => return (Visit::Failed(e), prev.clone()),
        };
        let now = clock::now();
        let due = self.tasks.due(repo.conn(), now);
        if !(due.is_due(now) || changed || min_passed) {
            if self.opts.run.debug {
                self.log_skip(&repo, now, due, t0);
            }
            let state = State {
                stamp: Some(stamp(path)),
                last_run: prev.last_run,
            };
            return (Visit::NothingDue, state);
        }
        let visit = match engine::run(&mut repo, &self.tasks, &self.opts.run) {
            Ok(o) => Visit::Ran(o),
            Err(e) => Visit::Failed(e),
        };
        drop(repo);
        let state = State {
            stamp: Some(stamp(path)),
            last_run: Some(Instant::now()),
        };
        (visit, state)
    }

    /// True if the repository's due summary ([`crate::due`]) says nothing
    /// is due yet for these tasks. Read with one statement, on a connection
    /// of its own that reads nothing else (so SQLite loads its schema and
    /// nothing more); anything unexpected — no file, not SQLite, no
    /// summary, a summary for other tasks — is "ask", and the full visit
    /// that follows says what is wrong.
    fn summary_says_not_yet(&self, path: &Path) -> bool {
        use rusqlite::{Connection, OpenFlags};
        let (Some(fp), true) = (self.fingerprint.as_deref(), self.all_summarized) else {
            return false;
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let Ok(conn) = Connection::open_with_flags(path, flags) else {
            return false;
        };
        if conn.busy_timeout(self.opts.busy).is_err() {
            return false;
        }
        let value: Option<String> = match conn.query_row(
            "SELECT value FROM config WHERE name = ?1",
            [crate::due::ROW],
            |r| r.get(0),
        ) {
            Ok(v) => v,
            Err(_) => return false,
        };
        crate::due::parse(value.as_deref(), fp).is_some_and(|d| !d.is_due(clock::now()))
    }

    /// A PostgreSQL repository's visit ([`crate::pg::visit`]): the check on
    /// a session shared with the other schemas of its database, a worker
    /// when work is due. `--min` forces a run as for a file; there is no
    /// file to see change.
    #[cfg(feature = "postgres")]
    fn visit_pg(&self, url: &str, prev: &State) -> (Visit, State) {
        let url = match crate::pg::PgUrl::parse(url) {
            Ok(u) => u,
            Err(e) => return (Visit::Failed(e), prev.clone()),
        };
        let min_passed = self
            .opts
            .min
            .is_some_and(|m| prev.last_run.unwrap_or(self.started).elapsed() >= m);
        let visit = if min_passed {
            crate::pg::run(&url, &self.tasks, &self.opts.run).map(Some)
        } else {
            crate::pg::visit(&url, &self.tasks, &self.opts.run, &self.pg)
        };
        match visit {
            Ok(None) => (Visit::NothingDue, prev.clone()),
            Ok(Some(o)) => (
                Visit::Ran(o),
                State {
                    stamp: None,
                    last_run: Some(Instant::now()),
                },
            ),
            Err(e) => (Visit::Failed(e), prev.clone()),
        }
    }

    fn log_skip(&self, repo: &Repo, now: i64, due: Due, t0: Instant) {
        let logfile = self.opts.run.logfile.clone().or_else(|| {
            crate::settings::Settings::load(repo.conn())
                .ok()
                .and_then(|s| s.logfile)
        });
        let next = match due {
            Due::At(t) => format!(" (nothing due until {})", clock::format_utc(t)),
            _ => " (nothing due)".into(),
        };
        let line = format!(
            "{} {} no-op{} elapse-time {} us",
            clock::format_utc(now),
            repo.project_name(),
            next,
            t0.elapsed().as_micros()
        );
        if let Some(log) = logfile {
            let _ = task::append_log(&log, &line);
        }
        tracing::info!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Context, TaskError};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A summarized task that counts how often it is asked; due as its
    /// `config` row `counted-at` says (a time, or never when absent).
    struct Counted(Arc<AtomicUsize>);
    impl crate::Task for Counted {
        fn name(&self) -> &str {
            "counted"
        }
        fn due(&self, db: crate::Db<'_>, _: i64) -> Result<Due, TaskError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(match db.config_get("counted-at")? {
                Some(t) => Due::At(t.parse().unwrap()),
                None => Due::Never,
            })
        }
        fn run(&self, _: &Context<'_>) -> Result<u64, TaskError> {
            Ok(0)
        }
        fn due_watches(&self) -> Option<&'static [&'static str]> {
            Some(&[])
        }
    }

    /// A sweep answers from the due summary without asking a task, and
    /// finds work that became due with the clock with nothing written.
    #[test]
    fn a_sweep_reads_the_summary_and_finds_work_due_with_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        rusqlite::Connection::open(&p).unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new().with(Counted(asked.clone()));
        {
            let r = Repo::open(&p).unwrap();
            crate::repo::config_set(r.conn(), "counted-at", &(clock::now() + 2).to_string())
                .unwrap();
        }
        let mut poller = Poller::new(vec![p.clone()], tasks, SweepOptions::default());
        // No summary yet: the tasks are asked; not due yet: no run.
        let report = poller.sweep();
        assert!(matches!(report.visits[0].1, Visit::NothingDue));
        assert_eq!(asked.swap(0, Ordering::SeqCst), 1);
        // A run writes the summary (the task is asked under its lock).
        let opts = RunOptions {
            nolease: true,
            ..RunOptions::default()
        };
        engine::run(&mut Repo::open(&p).unwrap(), &poller.tasks, &opts).unwrap();
        // A new poller: this one would run because the file changed since
        // its visit (`--poll`'s rule), whatever is due.
        let mut poller = Poller::new(
            vec![p.clone()],
            poller.tasks.clone(),
            SweepOptions::default(),
        );
        asked.store(0, Ordering::SeqCst);
        let report = poller.sweep();
        assert!(matches!(report.visits[0].1, Visit::NothingDue));
        assert_eq!(asked.load(Ordering::SeqCst), 0, "the summary answered");
        // Its time comes: found due, with nothing written in between.
        std::thread::sleep(Duration::from_millis(3100));
        let report = poller.sweep();
        assert!(
            matches!(report.visits[0].1, Visit::Ran(Outcome::Ran(_))),
            "{:?}",
            report.visits[0].1
        );
        assert!(asked.load(Ordering::SeqCst) >= 1);
    }
}
