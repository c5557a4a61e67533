//! The `Task` trait, the task list, and the run log.
//!
//! A task is one kind of background work (send alerts, run hooks, …). The
//! engine never knows what a task does; it asks each one two things:
//!
//! * [`Task::due`]: cheaply and without writing, is anything due now, and if
//!   not, when next? The after-request check calls this on the request's own
//!   connection, so it must be a point lookup, not a scan.
//! * [`Task::run`]: do the work; return how many items were handled.
//!
//! Tasks run in the order they were added. An error or a panic in one is
//! recorded and the others still run. Tasks never touch the lease.
//!
//! What a task author uses besides this trait:
//!
//! * its settings, declared once ([`Task::settings`], [`crate::settings`]);
//! * the event log, if it reacts to what the application does
//!   ([`crate::events`]); then it also says how far it is done with it
//!   ([`Task::events_done`]), so that retention never deletes an event it
//!   still needs;
//! * the retry ledger, if it delivers to targets that can fail
//!   ([`crate::ledger`]);
//! * [`crate::writes::own_write`] for every write it makes on a timer
//!   rather than in answer to new application data, so replication does
//!   not mistake the backoffice's bookkeeping for a change;
//! * [`crate::writes::fenced`] with [`Context::term`] in every write that
//!   records progress (a cursor, an outbox state, a ledger row, a mark), in
//!   the same transaction: a worker paused while another took the lease
//!   over then commits nothing, and stops.
//!
//! Each run leaves one line in the run log, in Fossil's format:
//!
//! ```text
//! 2026-11-21 11:33:02 my-project 3 alerts 1 hooks elapse-time 3439 us
//! 2026-11-21 11:34:05 my-project no-op elapse-time 52 us
//! 2026-11-21 11:35:07 my-project 2 alerts hooks-failed(exit status 3) elapse-time 912 us
//! ```
//!
//! The line is written when work was done or a task failed, or always with
//! `--debug`; `no-op` runs are otherwise silent, as in Fossil.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use crate::db::Db;
use serde::{Deserialize, Serialize};

/// An error from a task; any error type will do.
pub type TaskError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A task error after some items were handled: the run counts them, so a
/// partly failed run does not read as "0 items".
#[derive(Debug)]
pub struct Partial {
    /// Items handled before (or besides) the failure.
    pub items: u64,
    /// What failed.
    pub error: String,
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Partial {}

/// When a task next has work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "at")]
pub enum Due {
    /// Work is waiting now.
    Now,
    /// Nothing now; something becomes due at this Unix time.
    At(i64),
    /// Nothing is due until something new arrives.
    Never,
}

impl Due {
    /// The earlier of two answers.
    pub fn earliest(self, other: Due) -> Due {
        match (self, other) {
            (Due::Now, _) | (_, Due::Now) => Due::Now,
            (Due::At(a), Due::At(b)) => Due::At(a.min(b)),
            (Due::At(a), Due::Never) | (Due::Never, Due::At(a)) => Due::At(a),
            (Due::Never, Due::Never) => Due::Never,
        }
    }

    /// True if work is due at `now`.
    pub fn is_due(self, now: i64) -> bool {
        match self {
            Due::Now => true,
            Due::At(t) => t <= now,
            Due::Never => false,
        }
    }
}

/// What a running task may use.
pub struct Context<'a> {
    /// The repository's database. No transaction is open; the lease is
    /// held. A task for SQLite only takes the connection with
    /// [`Db::sqlite_only`]; a portable one uses [`Db`]'s calls.
    pub db: Db<'a>,
    /// The repository path (for PostgreSQL, its URL with the password
    /// hidden).
    pub repo: &'a Path,
    /// Unix time at the start of the run.
    pub now: i64,
    /// True under `--debug`: tasks may say more in the log.
    pub debug: bool,
    /// The lease's fencing term this run holds. Pass it to
    /// [`Db::write`] (or [`crate::writes::fenced`]) for every progress
    /// write: the
    /// write is refused once another worker has taken the lease over (this
    /// worker was paused past its heartbeat). Under `--nolease`, the term
    /// the lease carried when the run began.
    pub term: u64,
}

/// One kind of background work.
pub trait Task: Send + Sync {
    /// A short name for the run log and `status` (e.g. "alerts").
    fn name(&self) -> &str;

    /// Cheaply and read-only: is anything due at `now`, and if not, when?
    ///
    /// It runs after every request, inside a read transaction the check
    /// opens, so it must be a point lookup or two, must not write, and must
    /// not begin a transaction of its own.
    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError>;

    /// Does the work; returns how many items were handled.
    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError>;

    /// What `status` should say about this task: facts (queue depths) and
    /// problems an operator must fix (a missing setting). Read-only.
    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let _ = (db, now);
        TaskStatus::default()
    }

    /// The settings this task reads, each defined once here: `setting`
    /// checks values against them, and `status`, the status page and the
    /// README list them ([`Tasks::settings`]). Read them with
    /// [`settings::int`](crate::settings::int) or
    /// [`repo::config_get`](crate::repo::config_get).
    ///
    /// ```
    /// use backoffice::settings::{self, Def, Kind};
    /// # use backoffice::{Context, Db, Due, Task, TaskError, Tasks};
    /// const SETTINGS: &[Def] = &[Def {
    ///     name: "digest-batch",
    ///     kind: Kind::Int { min: 1, max: 1000 },
    ///     default: "50",
    ///     help: "Items per digest.",
    ///     secret: false,
    /// }];
    /// struct Digest;
    /// impl Task for Digest {
    ///     fn name(&self) -> &str { "digest" }
    ///     fn settings(&self) -> &'static [Def] { SETTINGS }
    /// #   fn due(&self, _: Db<'_>, _: i64) -> Result<Due, TaskError> { Ok(Due::Never) }
    ///     fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
    ///         let batch = settings::int(ctx.db.sqlite_only("digest")?, SETTINGS, "digest-batch");
    ///         # let _ = batch;
    ///         Ok(0)
    ///     }
    /// }
    /// let registry = Tasks::new().with(Digest).settings();
    /// assert_eq!(registry.def("digest-batch")?.default, "50");
    /// assert!(registry.def("digest-batch")?.validate("0").is_err());
    /// # Ok::<(), backoffice::Error>(())
    /// ```
    fn settings(&self) -> &'static [crate::settings::Def] {
        &[]
    }

    /// What can make this task due, for the due summary ([`crate::due`]):
    /// the tables whose inserted or changed rows may. With `Some(tables)`
    /// the task promises that its [`Task::due`] changes only with the
    /// clock, the event log, its settings and those tables; the check then
    /// reads one summary instead of asking it, and the task must call
    /// [`due::watch`](crate::due::watch) for each table where it creates
    /// it. `None` (the default): the task is asked on every check, as
    /// before — right for a task whose work arrives some other way (a
    /// host's own queue table the engine knows nothing of).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// How far this task is done with the event log ([`crate::events`]),
    /// for retention (`event-retention-days`): `Some(id)` means every event
    /// with `eventid <= id` has been handled as far as this task is
    /// concerned, so deleting it loses nothing; `None` (the default) means
    /// this task does not read the event log.
    ///
    /// **A task that reads the event log must implement this**, or an
    /// operator who turns retention on may see events deleted before the
    /// task read them. A consumer with nothing set up (no hook, no
    /// endpoint) answers the newest event's id
    /// ([`events::newest`](crate::events::newest)), not `i64::MAX`: a target
    /// added later starts after the newest event anyway, and an event
    /// published while the purge runs is then never within its bound.
    /// Answer conservatively — a cursor that may be behind keeps events a
    /// day longer; one that is ahead loses them. Called only on the worker
    /// run's path, at most once a day, never by the after-request check.
    fn events_done(&self, db: Db<'_>) -> Result<Option<i64>, TaskError> {
        let _ = db;
        Ok(None)
    }
}

/// A task's contribution to `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskStatus {
    /// Facts, one line each.
    pub info: Vec<String>,
    /// Problems an operator should fix, one line each.
    pub problems: Vec<String>,
    /// Queue depths and the like as numbers, for metrics (Prometheus):
    /// the same facts as `info`, but machine-readable.
    pub gauges: Vec<Gauge>,
}

impl TaskStatus {
    /// What a task for SQLite only says about a repository on another
    /// store: that it does not run there.
    pub fn sqlite_only(db: Db<'_>) -> TaskStatus {
        TaskStatus {
            info: vec![format!(
                "not run: works on SQLite repositories only, and this one is on {}",
                db.store()
            )],
            ..TaskStatus::default()
        }
    }
}

/// One number a task reports about itself: how many items of `queue` are
/// in `state` right now (e.g. `outbox` / `queued` / 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gauge {
    /// What is counted (e.g. "outbox", "hooks").
    pub queue: String,
    /// Which part of it (e.g. "queued", "dead").
    pub state: String,
    /// How many.
    pub value: i64,
}

impl Gauge {
    /// A gauge; a shorthand for the struct literal.
    pub fn new(queue: &str, state: &str, value: i64) -> Gauge {
        Gauge {
            queue: queue.to_owned(),
            state: state.to_owned(),
            value,
        }
    }
}

/// The tasks a worker runs, in order.
#[derive(Clone, Default)]
pub struct Tasks {
    list: Vec<Arc<dyn Task>>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|t| t.name()))
            .finish()
    }
}

impl Tasks {
    /// No tasks.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Adds a task; tasks run in the order they were added.
    pub fn with(mut self, task: impl Task + 'static) -> Tasks {
        self.list.push(Arc::new(task));
        self
    }

    /// Adds a task.
    pub fn push(&mut self, task: Arc<dyn Task>) {
        self.list.push(task);
    }

    /// The tasks, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Task>> {
        self.list.iter()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every setting: the engine's, then each task's, in task order.
    pub fn settings(&self) -> crate::settings::Registry {
        crate::settings::Registry::new(
            crate::settings::ENGINE
                .iter()
                .copied()
                .chain(self.list.iter().flat_map(|t| t.settings().iter().copied())),
        )
    }

    /// When anything is next due, over all tasks. A task whose check fails
    /// counts as due now, so that its worker runs and reports the failure
    /// instead of the work silently never happening.
    pub fn due<'a>(&self, db: impl Into<Db<'a>>, now: i64) -> Due {
        self.due_where(db.into(), now, |_| true)
    }

    /// [`Tasks::due`] over the tasks `keep` selects. On every request's
    /// path: no allocation, and the first `Now` ends it.
    fn due_where(&self, db: Db<'_>, now: i64, keep: impl Fn(&dyn Task) -> bool) -> Due {
        let mut acc = Due::Never;
        for t in self.list.iter().filter(|t| keep(t.as_ref())) {
            let d = match catch_unwind(AssertUnwindSafe(|| t.due(db, now))) {
                Ok(Ok(d)) => d,
                Ok(Err(_)) | Err(_) => Due::Now,
            };
            acc = acc.earliest(d);
            if acc == Due::Now {
                break;
            }
        }
        acc
    }

    /// The fingerprint the due summary is written for: the summary
    /// format, and each summarized task's name and watched tables, hashed.
    /// `None` when no task is summarized.
    pub fn fingerprint(&self) -> Option<String> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut any = false;
        let mut eat = |s: &str| {
            for b in s.bytes().chain([0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(crate::due::VERSION);
        for t in &self.list {
            if let Some(watches) = t.due_watches() {
                any = true;
                eat(t.name());
                watches.iter().for_each(|w| eat(w));
            }
        }
        any.then(|| format!("{h:016x}"))
    }

    /// Every table a summarized task watches.
    pub(crate) fn due_watches(&self) -> Vec<&'static str> {
        self.list
            .iter()
            .filter_map(|t| t.due_watches())
            .flatten()
            .copied()
            .collect()
    }

    /// [`Tasks::due`] over the summarized tasks only (`summarized`), or
    /// over the others only.
    pub(crate) fn due_part<'a>(&self, db: impl Into<Db<'a>>, now: i64, summarized: bool) -> Due {
        self.due_where(db.into(), now, |t| t.due_watches().is_some() == summarized)
    }

    /// [`Tasks::due`] over the summarized tasks, for writing the summary.
    pub(crate) fn due_summarized<'a>(&self, db: impl Into<Db<'a>>, now: i64) -> Due {
        self.due_part(db, now, true)
    }

    /// True if every task is summarized (the check needs ask none when the
    /// summary answers).
    pub(crate) fn all_summarized(&self) -> bool {
        self.list.iter().all(|t| t.due_watches().is_some())
    }

    /// How far every task that reads the event log is done with it: the
    /// minimum of their [`Task::events_done`]. `i64::MAX` when no task
    /// reads the log (nothing holds events back: the caller's time bound
    /// alone decides). `None` if any task's answer failed or panicked:
    /// then nothing may be deleted; the failure is logged (`tracing`).
    pub fn events_done<'a>(&self, db: impl Into<Db<'a>>) -> Option<i64> {
        self.events_done_or_why(db.into())
            .inspect_err(|e| tracing::warn!("event retention skipped: {e}"))
            .ok()
    }

    /// [`Tasks::events_done`], with the failure as text (naming the task)
    /// for the engine's run log.
    pub(crate) fn events_done_or_why(&self, db: Db<'_>) -> Result<i64, String> {
        let mut done = i64::MAX;
        for t in &self.list {
            match catch_unwind(AssertUnwindSafe(|| t.events_done(db))) {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(id))) => done = done.min(id),
                Ok(Err(e)) => {
                    return Err(format!(
                        "{}: cannot tell which events it is done with: {e}",
                        t.name()
                    ));
                }
                Err(p) => {
                    return Err(format!(
                        "{}: panicked telling which events it is done with: {}",
                        t.name(),
                        panic_text(&*p)
                    ));
                }
            }
        }
        Ok(done)
    }

    /// Each task's own answer, with errors and panics as text, for `status`.
    pub fn due_each<'a>(
        &self,
        db: impl Into<Db<'a>>,
        now: i64,
    ) -> Vec<(String, Result<Due, String>)> {
        let db = db.into();
        self.list
            .iter()
            .map(|t| {
                let d = match catch_unwind(AssertUnwindSafe(|| t.due(db, now))) {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(p) => Err(format!("panicked: {}", panic_text(&*p))),
                };
                (t.name().to_owned(), d)
            })
            .collect()
    }

    /// Runs every task in order, catching errors and panics.
    pub fn run_all(&self, ctx: &Context<'_>) -> Vec<TaskResult> {
        self.list
            .iter()
            .map(|t| {
                let started = std::time::Instant::now();
                let r = catch_unwind(AssertUnwindSafe(|| t.run(ctx)));
                let (items, error) = match r {
                    Ok(Ok(n)) => (n, None),
                    Ok(Err(e)) => (
                        e.downcast_ref::<Partial>().map_or(0, |p| p.items),
                        Some(e.to_string()),
                    ),
                    Err(p) => (0, Some(format!("panicked: {}", panic_text(&*p)))),
                };
                if let Some(e) = &error {
                    tracing::warn!(task = t.name(), error = %e, "task failed");
                }
                TaskResult {
                    name: t.name().to_owned(),
                    items,
                    error,
                    elapsed_us: started.elapsed().as_micros() as u64,
                }
            })
            .collect()
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic)".to_owned()
    }
}

/// What one task did in one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's name.
    pub name: String,
    /// Items handled.
    pub items: u64,
    /// The error or panic message, if it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// How long it took.
    pub elapsed_us: u64,
}

/// What one run did; stored as the `backoffice-last-run` config row (JSON)
/// so `status` can say when the last run was and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Unix time the run started.
    pub started: i64,
    /// Wall time of the whole run, microseconds.
    pub elapsed_us: u64,
    /// The pid of the process that ran it.
    pub pid: i64,
    /// Each task's result, in order.
    pub tasks: Vec<TaskResult>,
}

/// The `config` row that holds the last run's [`RunReport`].
pub const LAST_RUN_ROW: &str = "backoffice-last-run";

/// Cumulative counts over every recorded run, stored as the
/// `backoffice-totals` config row (JSON) and updated in the transaction that
/// records each run, so that metrics cost a point read and nothing on the
/// request path.
///
/// Every run the engine records counts, `no-op`s included: a run is a
/// worker that held the lease, whether or not it found work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTotals {
    /// Runs recorded.
    pub runs: u64,
    /// Items handled, over all runs and tasks.
    pub items: u64,
    /// Failed task runs, over all runs (a run where two tasks failed adds 2).
    pub failures: u64,
    /// Unix time of the first run counted (0 before any), so that a rate
    /// can be computed and a reset (see [`RunTotals::load`]) noticed.
    pub since: i64,
}

/// The `config` row that holds the [`RunTotals`].
pub const TOTALS_ROW: &str = "backoffice-totals";

impl RunTotals {
    /// Counts one more run.
    pub fn add(&mut self, report: &RunReport) {
        if self.runs == 0 {
            self.since = report.started;
        }
        // Saturating: a counter that stops is better than a panic or a wrap
        // to zero that a metrics system would read as a reset.
        self.runs = self.runs.saturating_add(1);
        self.items = self.items.saturating_add(report.items());
        self.failures = self.failures.saturating_add(report.failures() as u64);
    }

    /// The stored totals. A missing or malformed row, or no `config` table,
    /// reads as zero totals (counting restarts; `since` shows when), never
    /// as an error: counters must not stop a run from being recorded.
    pub fn load<'a>(db: impl Into<Db<'a>>) -> RunTotals {
        db.into()
            .config_get(TOTALS_ROW)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default()
    }
}

impl RunReport {
    /// Items handled, over all tasks.
    pub fn items(&self) -> u64 {
        self.tasks.iter().map(|t| t.items).sum()
    }

    /// The names of the tasks that failed, in order.
    pub fn failed_tasks(&self) -> Vec<&str> {
        self.tasks
            .iter()
            .filter(|t| t.error.is_some())
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Tasks that failed.
    pub fn failures(&self) -> usize {
        self.tasks.iter().filter(|t| t.error.is_some()).count()
    }

    /// True if the run did nothing and nothing failed.
    pub fn is_noop(&self) -> bool {
        self.items() == 0 && self.failures() == 0
    }

    /// The run log line (without newline), in Fossil's format.
    pub fn log_line(&self, project: &str) -> String {
        let mut parts = vec![crate::clock::format_utc(self.started), project.to_owned()];
        for t in &self.tasks {
            if let Some(e) = &t.error {
                parts.push(format!("{}-failed({})", t.name, short_line(e)));
            } else if t.items > 0 {
                parts.push(format!("{} {}", t.items, t.name));
            }
        }
        if self.is_noop() {
            parts.push("no-op".into());
        }
        parts.push(format!("elapse-time {} us", self.elapsed_us));
        parts.join(" ")
    }
}

/// Squeezes a message onto one bounded line, so that a log line is a line.
pub fn short_line(s: &str) -> String {
    let mut out: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    if out.is_empty() {
        out.push('?');
    }
    out
}

/// Appends one line to a log file, creating it if needed. The whole line is
/// written with a single `write` on an `O_APPEND` file, so concurrent
/// workers never interleave within a line.
pub fn append_log(path: &Path, line: &str) -> crate::Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(buf.as_bytes()))
        .map_err(|e| crate::Error::LogFile {
            path: path.to_owned(),
            source: e,
        })
}

/// A log line for a failure outside any task (a worker that could not
/// start, a repository that could not be opened).
pub fn error_line(now: i64, project: &str, what: &str) -> String {
    format!(
        "{} {} error: {}",
        crate::clock::format_utc(now),
        project,
        short_line(what)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    struct Fixed(&'static str, Result<u64, &'static str>);
    impl Task for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> Result<Due, TaskError> {
            Ok(Due::Now)
        }
        fn run(&self, _: &Context<'_>) -> Result<u64, TaskError> {
            match self.1 {
                Ok(n) => Ok(n),
                Err("panic") => panic!("boom"),
                Err("partial") => Err(Box::new(Partial {
                    items: 3,
                    error: "3 done; one failed".into(),
                })),
                Err(e) => Err(e.into()),
            }
        }
    }

    #[test]
    fn a_partial_failure_keeps_its_items() {
        let conn = Connection::open_in_memory().unwrap();
        let tasks = Tasks::new()
            .with(Fixed("part", Err("partial")))
            .with(Fixed("plain", Err("no")));
        let ctx = Context {
            db: crate::Db::Sqlite(&conn),
            repo: Path::new("r.db"),
            now: 0,
            debug: false,
            term: 0,
        };
        let r = tasks.run_all(&ctx);
        assert_eq!(
            (r[0].items, r[0].error.as_deref()),
            (3, Some("3 done; one failed"))
        );
        assert_eq!((r[1].items, r[1].error.as_deref()), (0, Some("no")));
    }

    #[test]
    fn a_failing_or_panicking_task_does_not_stop_the_others() {
        let tasks = Tasks::new()
            .with(Fixed("a", Err("bad\nthing")))
            .with(Fixed("b", Err("panic")))
            .with(Fixed("c", Ok(3)));
        let conn = Connection::open_in_memory().unwrap();
        let ctx = Context {
            db: crate::Db::Sqlite(&conn),
            repo: Path::new("r.db"),
            now: 0,
            debug: false,
            term: 0,
        };
        let results = tasks.run_all(&ctx);
        assert_eq!(results[0].error.as_deref(), Some("bad\nthing"));
        assert_eq!(results[1].error.as_deref(), Some("panicked: boom"));
        assert_eq!(results[2].items, 3);
        let report = RunReport {
            started: 1_795_261_729,
            elapsed_us: 12,
            pid: 1,
            tasks: results,
        };
        assert_eq!(
            report.log_line("proj"),
            "2026-11-21 11:48:49 proj a-failed(bad thing) b-failed(panicked: boom) 3 c elapse-time 12 us"
        );
    }

    #[test]
    fn noop_line() {
        let report = RunReport {
            started: 0,
            elapsed_us: 52,
            pid: 1,
            tasks: vec![],
        };
        assert_eq!(
            report.log_line("r.fossil"),
            "1970-01-01 00:00:00 r.fossil no-op elapse-time 52 us"
        );
    }

    struct BadDue(bool);
    impl Task for BadDue {
        fn name(&self) -> &str {
            "bad"
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> Result<Due, TaskError> {
            if self.0 {
                panic!("due panicked");
            }
            Err("no such table: x".into())
        }
        fn run(&self, _: &Context<'_>) -> Result<u64, TaskError> {
            Ok(0)
        }
    }

    /// A check that fails or panics counts as due, so a worker runs and
    /// reports it, instead of the work silently never happening.
    #[test]
    fn failing_due_counts_as_due_now() {
        let conn = Connection::open_in_memory().unwrap();
        for panics in [false, true] {
            let tasks = Tasks::new().with(BadDue(panics));
            assert_eq!(tasks.due(&conn, 0), Due::Now);
            let each = tasks.due_each(&conn, 0);
            assert!(each[0].1.is_err(), "{each:?}");
        }
        assert_eq!(Tasks::new().due(&conn, 0), Due::Never);
    }

    #[test]
    fn totals_add_and_load() {
        let report = |started, items, failed: bool| RunReport {
            started,
            elapsed_us: 1,
            pid: 1,
            tasks: vec![
                TaskResult {
                    name: "a".into(),
                    items,
                    error: None,
                    elapsed_us: 0,
                },
                TaskResult {
                    name: "b".into(),
                    items: 0,
                    error: failed.then(|| "x".into()),
                    elapsed_us: 0,
                },
            ],
        };
        let mut t = RunTotals::default();
        t.add(&report(100, 4, true));
        t.add(&report(200, 1, false));
        assert_eq!(
            t,
            RunTotals {
                runs: 2,
                items: 5,
                failures: 1,
                since: 100
            }
        );
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(RunTotals::load(&conn), RunTotals::default(), "no table");
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        crate::repo::config_set(&conn, TOTALS_ROW, &serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(RunTotals::load(&conn), t);
        crate::repo::config_set(&conn, TOTALS_ROW, r#"{"runs":"many"}"#).unwrap();
        assert_eq!(RunTotals::load(&conn), RunTotals::default(), "malformed");
    }

    /// A task's settings join the engine's in the registry, in task order;
    /// a name defined twice keeps its first definition (the engine's).
    #[test]
    fn each_task_adds_its_settings_to_the_registry() {
        use crate::settings::{Def, Kind};
        struct WithSettings;
        impl Task for WithSettings {
            fn name(&self) -> &str {
                "with-settings"
            }
            fn due(&self, _: crate::Db<'_>, _: i64) -> Result<Due, TaskError> {
                Ok(Due::Never)
            }
            fn run(&self, _: &Context<'_>) -> Result<u64, TaskError> {
                Ok(0)
            }
            fn settings(&self) -> &'static [Def] {
                const DEFS: &[Def] = &[
                    Def {
                        name: "my-limit",
                        kind: Kind::Int { min: 1, max: 9 },
                        default: "3",
                        help: "A limit.",
                        secret: false,
                    },
                    Def {
                        name: crate::settings::LEASE_TIME,
                        kind: Kind::Text,
                        default: "x",
                        help: "A clash.",
                        secret: false,
                    },
                ];
                DEFS
            }
        }
        let reg = Tasks::new()
            .with(Fixed("a", Ok(0)))
            .with(WithSettings)
            .settings();
        let names: Vec<&str> = reg.iter().map(|d| d.name).collect();
        let engine: Vec<&str> = crate::settings::ENGINE.iter().map(|d| d.name).collect();
        assert_eq!(names[..engine.len()], engine[..]);
        assert_eq!(names[engine.len()..], ["my-limit"]);
        let d = reg.def("my-limit").unwrap();
        assert!(
            d.validate("10")
                .unwrap_err()
                .to_string()
                .contains("between 1 and 9")
        );
        assert_eq!(reg.def(crate::settings::LEASE_TIME).unwrap().default, "60");
        let e = Tasks::new()
            .settings()
            .def("my-limit")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting"), "{e}");
    }

    #[test]
    fn due_combines() {
        assert_eq!(Due::At(5).earliest(Due::At(3)), Due::At(3));
        assert_eq!(Due::Never.earliest(Due::At(3)), Due::At(3));
        assert_eq!(Due::At(3).earliest(Due::Now), Due::Now);
        assert!(Due::At(3).is_due(3));
        assert!(!Due::Never.is_due(i64::MAX));
    }
}
