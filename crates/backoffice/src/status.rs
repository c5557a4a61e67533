//! What `backoffice status` reports: the last run, the lease in words, and
//! what is due next — as text for a person and as JSON for tools.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::clock;
use crate::engine::read_lease;
use crate::error::Result;
use crate::lease::Slot;
use crate::process;
use crate::repo::Repo;
use crate::settings::Settings;
use crate::task::{self, Due, RunReport, RunTotals, Tasks};

/// One repository's state.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The repository path.
    pub repo: String,
    /// Unix time of the report.
    pub now: i64,
    /// The last run, if any was recorded.
    pub last_run: Option<RunReport>,
    /// "never", "moments ago", "3 minutes ago".
    pub last_run_ago: String,
    /// The raw lease value.
    pub lease_raw: String,
    /// What is wrong with the stored lease, if anything.
    pub lease_problem: Option<String>,
    /// The lease's fencing term: how many takeovers so far (0 for a lease
    /// Fossil wrote, or none yet).
    pub term: u64,
    /// `event-retention-days`: events older than this many days are purged
    /// once every task is done with them; 0 keeps every event.
    pub event_retention_days: i64,
    /// When the event log was last purged (Unix seconds), if ever.
    pub last_event_purge: Option<i64>,
    /// The current holder.
    pub current: Holder,
    /// The on-deck worker.
    pub next: Holder,
    /// Each task and when it is next due.
    pub tasks: Vec<TaskDue>,
    /// When anything is next due over all tasks.
    pub next_due: Due,
    /// Every engine setting and its value.
    pub settings: Vec<SettingValue>,
    /// What the tasks report (queue depths and the like).
    pub info: Vec<String>,
    /// Malformed settings and other things an operator should fix.
    pub problems: Vec<String>,
    /// Each task's gauges (queue depths as numbers), for metrics.
    pub gauges: Vec<TaskGauge>,
    /// Counts over all recorded runs.
    pub totals: RunTotals,
    /// The last [`LOG_TAIL_LINES`] lines of the `backoffice-logfile`, if
    /// one is set and readable.
    pub log_tail: Vec<String>,
    /// Seconds since the last recorded run started (never negative), if
    /// one was recorded.
    pub last_run_age: Option<i64>,
    /// What the due summary ([`crate::due`]) says, in words: what the
    /// check reads instead of asking the tasks.
    pub due_summary: String,
    /// Where each of [`Status::problems`] comes from, in the same order:
    /// a task's name, or `backoffice` for the engine's own. A redacted
    /// summary shows these and the counts, never the problems' text
    /// (which may name subscribers, commands or peers).
    pub problem_sources: Vec<String>,
    /// Runs, items and failures per hour and per day ([`crate::history`]).
    pub history: crate::history::History,
    /// The cluster — term, holders' hosts, heartbeats, hand-overs, clocks —
    /// on a PostgreSQL repository; absent on an SQLite one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// A PostgreSQL repository seen as a cluster of hosts: what `status`,
/// `lease` and the status page show beyond the lease of one file.
#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    /// The repository URL, its password hidden.
    pub repository: String,
    /// Always "PostgreSQL".
    pub store: &'static str,
    /// The database's clock, Unix seconds: every time in the lease is on it.
    pub db_now: i64,
    /// This host's clock minus the database's, seconds.
    pub clock_gap: i64,
    /// This host's id.
    pub host: String,
    /// The fencing term: takeovers so far.
    pub term: u64,
    /// Takeovers from a holder whose heartbeat had run out.
    pub handovers: u64,
    /// The working (or last) holder, when someone holds the lease.
    pub current: Option<SlotView>,
    /// When the current lease ends (spaces runs), database time.
    pub lease_expires: i64,
    /// The on-deck worker, if any.
    pub on_deck: Option<SlotView>,
    /// `backoffice-lease-time`, seconds.
    pub lease_time: i64,
    /// Heartbeat interval, seconds.
    pub heartbeat: i64,
    /// `backoffice-disable`.
    pub disabled: bool,
}

/// One slot of a PostgreSQL lease, for people and for JSON.
#[derive(Clone, Debug, Serialize)]
pub struct SlotView {
    /// The holder's host id.
    pub host: Option<String>,
    /// Its pid (on its host).
    pub pid: i64,
    /// When its lease (or on-deck slot) ends, database time.
    pub expires: i64,
    /// Seconds since its last heartbeat, when it is the working holder.
    pub heartbeat_age: Option<i64>,
    /// Until when its heartbeat vouches for it, database time.
    pub alive_until: Option<i64>,
    /// True while that has not run out.
    pub alive: bool,
}

impl SlotView {
    /// `slot` (held by a process on `host`) at database time `now`, or
    /// `None` when nobody holds it. `grace` is how long a heartbeat
    /// vouches; `working`: the current holder (whose heartbeat age means
    /// something), not the one on deck.
    pub fn new(
        slot: &Slot,
        host: Option<&str>,
        now: i64,
        grace: i64,
        working: bool,
    ) -> Option<SlotView> {
        slot.is_held().then(|| {
            let until = slot.alive_until.unwrap_or(slot.expires);
            SlotView {
                host: host.map(str::to_owned),
                pid: slot.pid,
                expires: slot.expires,
                heartbeat_age: working
                    .then(|| {
                        slot.alive_until
                            .map(|t| now.saturating_sub(t.saturating_sub(grace)))
                    })
                    .flatten(),
                alive_until: slot.alive_until,
                alive: until >= now,
            }
        })
    }

    /// "web1 pid 42, until 2026-12-01 10:00:00 (in 5 seconds), heartbeat 1 s ago, alive".
    pub fn words(v: Option<&SlotView>, now: i64) -> String {
        let Some(v) = v else {
            return "nobody".into();
        };
        let mut s = format!(
            "{} pid {}, until {} ({})",
            v.host.as_deref().unwrap_or("?"),
            v.pid,
            clock::format_utc(v.expires),
            clock::relative(v.expires, now)
        );
        if let Some(age) = v.heartbeat_age {
            s.push_str(&format!(", heartbeat {age} s ago"));
        }
        s.push_str(if v.alive {
            ", alive"
        } else {
            ", heartbeat run out"
        });
        s
    }
}

impl Cluster {
    /// "this host (web1) is +0 s from the database's clock".
    pub fn clock_words(&self) -> String {
        format!(
            "this host ({}) is {:+} s from the database's clock",
            self.host, self.clock_gap
        )
    }
}

/// One task's [`task::Gauge`], with the task's name.
#[derive(Clone, Debug, Serialize)]
pub struct TaskGauge {
    /// The task that reported it.
    pub task: String,
    /// What is counted (e.g. "outbox").
    pub queue: String,
    /// Which part of it (e.g. "queued").
    pub state: String,
    /// How many.
    pub value: i64,
}

/// How many lines of the log file [`Status::log_tail`] holds.
pub const LOG_TAIL_LINES: usize = 20;

/// The most of the log file's end that is read for [`Status::log_tail`]:
/// status must stay cheap however large the log has grown, and 20 of our
/// (bounded) lines fit many times over.
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The last `lines` lines of the file at `path`, read from at most its last
/// `max_bytes` bytes. A line cut by that window is dropped rather than shown
/// half (so a final line longer than the window gives nothing). Invalid
/// UTF-8 is replaced, not an error: a log is for reading.
pub fn log_tail(path: &Path, lines: usize, max_bytes: u64) -> std::io::Result<Vec<String>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    // take(): the file may grow while we read; read no more than promised.
    f.take(max_bytes).read_to_end(&mut buf)?;
    let mut text: &[u8] = &buf;
    if start > 0 {
        text = match text.iter().position(|&b| b == b'\n') {
            Some(i) => &text[i + 1..],
            None => &[],
        };
    }
    let text = String::from_utf8_lossy(text);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect())
}

/// A lease slot, interpreted.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// Its pid (0: nobody).
    pub pid: i64,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// Recorded start time (clock ticks since boot), if any.
    pub start: Option<u64>,
    /// Recorded PID namespace (inode of `/proc/PID/ns/pid`), if any.
    pub ns: Option<u64>,
    /// Until when its heartbeat vouches for it (Unix seconds), if recorded.
    pub alive_until: Option<i64>,
    /// Alive or why not.
    pub state: String,
    /// True if alive.
    pub alive: bool,
}

/// One task's answer to "when are you due?".
#[derive(Clone, Debug, Serialize)]
pub struct TaskDue {
    /// The task.
    pub task: String,
    /// When it is due.
    pub due: Option<Due>,
    /// The error, if its check failed.
    pub error: Option<String>,
}

/// A setting's current value.
#[derive(Clone, Debug, Serialize)]
pub struct SettingValue {
    /// Its name.
    pub name: String,
    /// The stored value, or the default (masked if secret).
    pub value: String,
    /// True if no value is stored.
    pub default: bool,
}

fn holder(slot: &Slot, boot: Option<&str>, lease_time: i64) -> Holder {
    let l = process::liveness(slot, boot, lease_time);
    Holder {
        pid: slot.pid,
        expires: slot.expires,
        start: slot.start,
        ns: slot.ns,
        alive_until: slot.alive_until,
        state: l.describe().to_owned(),
        alive: l.is_alive(),
    }
}

/// Builds the status of `repo` for these tasks.
pub fn status(repo: &Repo, tasks: &Tasks) -> Result<Status> {
    let conn = repo.conn();
    // Status is read on a request's path (the web front) or for a person:
    // a locked repository is reported as such at once, never waited on.
    let _short = crate::repo::ShortBusy::new(conn, crate::repo::STATUS_BUSY_TIMEOUT);
    let now = clock::now();
    let s = Settings::load(conn).map_err(|e| repo.err("reading settings", e))?;
    let raw = repo.get(crate::engine::LEASE_ROW)?.unwrap_or_default();
    let (lease, lease_problem) = read_lease(conn).map_err(|e| repo.err("reading the lease", e))?;
    let current = holder(&lease.current, lease.boot.as_deref(), s.lease_time);
    let next = holder(&lease.next, lease.boot.as_deref(), s.lease_time);
    let parts = Parts {
        repo: repo.path().display().to_string(),
        now,
        settings: s,
        lease,
        lease_raw: raw,
        lease_problem,
        current,
        next,
        cluster: None,
    };
    assemble(crate::Db::Sqlite(conn), tasks, parts).map_err(|e| match e {
        crate::db::DbError::Sqlite(e) => repo.err("reading the config table", e),
        // Only SQLite's errors come from an SQLite store; anything else
        // is carried as is.
        e => repo.err(
            "reading the status",
            rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        ),
    })
}

/// What a status takes from the store's own lease and clock; the rest is
/// read alike on either store by [`assemble`].
pub(crate) struct Parts {
    /// The repository, as shown (a path, or a URL without its password).
    pub repo: String,
    /// The time of the report (the database's, on PostgreSQL).
    pub now: i64,
    /// The engine's settings.
    pub settings: Settings,
    /// The lease.
    pub lease: crate::Lease,
    /// The lease as stored, raw.
    pub lease_raw: String,
    /// What is wrong with the stored lease, if anything.
    pub lease_problem: Option<String>,
    /// The current holder, judged by the store's rules of liveness.
    pub current: Holder,
    /// The on-deck worker, judged likewise.
    pub next: Holder,
    /// The cluster, on PostgreSQL.
    pub cluster: Option<Cluster>,
}

/// The status from the store's `parts`, the config rows and the tasks.
pub(crate) fn assemble(
    db: crate::Db<'_>,
    tasks: &Tasks,
    p: Parts,
) -> std::result::Result<Status, crate::db::DbError> {
    let Parts {
        repo,
        now,
        settings: s,
        lease,
        lease_raw,
        lease_problem,
        current,
        next,
        cluster,
    } = p;
    let last_run: Option<RunReport> = db
        .config_get(task::LAST_RUN_ROW)?
        .and_then(|j| serde_json::from_str(&j).ok());
    let last_run_ago = match (&last_run, lease.current.expires) {
        (Some(r), _) => clock::relative(r.started, now),
        (None, t) if t > 0 => format!(
            "{} (from the lease)",
            clock::relative(t.saturating_sub(s.lease_time), now)
        ),
        _ => "never".to_owned(),
    };
    let each = tasks.due_each(db, now);
    let next_due = tasks.due(db, now);
    let due_summary = summary_words(db, tasks, now);
    let mut problems = s.problems.clone();
    let mut problem_sources = vec!["backoffice".to_owned(); problems.len()];
    if let Some(p) = &lease_problem {
        problems.push(format!(
            "the stored lease is malformed ({p}); the next worker will rewrite it"
        ));
    }
    if let Some(r) = &last_run {
        for t in r.tasks.iter().filter(|t| t.error.is_some()) {
            problems.push(format!(
                "task {} failed in the last run: {}",
                t.name,
                t.error.as_deref().unwrap_or("")
            ));
        }
    }
    // A holder past its lease is never passed over in silence.
    if current.alive {
        if let Some(msg) = crate::engine::overrun_message(&lease.current, now, s.lease_time) {
            problems.push(msg);
        }
    }
    let mut info = Vec::new();
    let mut gauges = Vec::new();
    for t in tasks.iter() {
        let st = t.status(db, now);
        info.extend(st.info.into_iter().map(|l| format!("{}: {l}", t.name())));
        gauges.extend(st.gauges.into_iter().map(|g| TaskGauge {
            task: t.name().to_owned(),
            queue: g.queue,
            state: g.state,
            value: g.value,
        }));
        // The engine's problems so far, then this task's.
        problem_sources.resize(problems.len(), "backoffice".to_owned());
        problem_sources.extend(st.problems.iter().map(|_| t.name().to_owned()));
        problems.extend(
            st.problems
                .into_iter()
                .map(|l| format!("{}: {l}", t.name())),
        );
    }
    let log_tail = match &s.logfile {
        None => Vec::new(),
        Some(p) => match log_tail(p, LOG_TAIL_LINES, LOG_TAIL_BYTES) {
            Ok(l) => l,
            // Not a problem: the file is created by the first run that logs.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                problems.push(format!("cannot read the log file {}: {e}", p.display()));
                Vec::new()
            }
        },
    };
    // The log file's problem, if any, is the engine's.
    problem_sources.resize(problems.len(), "backoffice".to_owned());
    let settings = tasks
        .settings()
        .iter()
        .map(|d| {
            let stored = db.config_get(d.name).ok().flatten();
            let value = match (&stored, d.secret) {
                (Some(_), true) => "********".to_owned(),
                (Some(v), false) => v.clone(),
                (None, _) => d.default.to_owned(),
            };
            SettingValue {
                name: d.name.to_owned(),
                value,
                default: stored.is_none(),
            }
        })
        .collect();
    Ok(Status {
        repo,
        now,
        last_run_age: last_run
            .as_ref()
            .map(|r| now.saturating_sub(r.started).max(0)),
        last_run,
        last_run_ago,
        lease_raw,
        lease_problem,
        term: lease.term,
        event_retention_days: s.event_retention_days,
        last_event_purge: s.last_event_purge,
        current,
        next,
        tasks: each
            .into_iter()
            .map(|(task, d)| match d {
                Ok(d) => TaskDue {
                    task,
                    due: Some(d),
                    error: None,
                },
                Err(e) => TaskDue {
                    task,
                    due: None,
                    error: Some(e),
                },
            })
            .collect(),
        next_due,
        settings,
        info,
        problems,
        gauges,
        totals: RunTotals::load(db),
        history: crate::history::History::load(db),
        log_tail,
        cluster,
        due_summary,
        problem_sources,
    })
}

/// The due summary in words (see [`crate::due`]).
fn summary_words(db: crate::Db<'_>, tasks: &Tasks, now: i64) -> String {
    if db.sqlite().is_none() {
        return "not kept on this store (the check's answer is kept in each process)".into();
    }
    let Some(fp) = tasks.fingerprint() else {
        return "not kept: no task names what makes it due".into();
    };
    let stored = db.config_get(crate::due::ROW).ok().flatten();
    match (crate::due::parse(stored.as_deref(), &fp), stored) {
        (Some(Due::Never), _) => "nothing due until something is written".into(),
        (Some(Due::At(t)), _) if t > now => format!(
            "nothing due before {} UTC ({})",
            clock::format_utc(t),
            clock::relative(t, now)
        ),
        (Some(_), _) => "its time has come: the next check asks the tasks".into(),
        (None, None) => {
            "none (something was written since the last run): the next check asks the tasks".into()
        }
        (None, Some(_)) => {
            "kept by another version or task set: the next check asks the tasks".into()
        }
    }
}

impl Status {
    /// What happens to old events, in words: "kept forever", or the
    /// retention and when the log was last purged.
    pub fn event_log_words(&self) -> String {
        if self.event_retention_days <= 0 {
            return "every event kept (event-retention-days 0)".into();
        }
        let last = match self.last_event_purge {
            Some(t) => format!(
                "last purged {} ({} UTC)",
                clock::relative(t, self.now),
                clock::format_utc(t)
            ),
            None => "never purged yet".into(),
        };
        format!(
            "events older than {} day{} purged once every task is done with them; {last}",
            self.event_retention_days,
            if self.event_retention_days == 1 {
                ""
            } else {
                "s"
            }
        )
    }

    /// The current holder in words: "held by worker 42 (running), lease
    /// expires in 50 seconds", "free", ...
    pub fn lease_words(&self) -> String {
        let (c, now) = (&self.current, self.now);
        if c.pid > 0 && c.alive {
            let exp = if c.expires >= now {
                format!("lease expires {}", clock::relative(c.expires, now))
            } else {
                format!(
                    "lease expired {}, still running",
                    clock::relative(c.expires, now)
                )
            };
            format!("held by worker {} (running), {}", c.pid, exp)
        } else if c.expires >= now {
            format!(
                "free; the next run may start {} (runs are spaced by the lease time)",
                clock::relative(c.expires.saturating_add(1), now)
            )
        } else {
            "free".to_owned()
        }
    }

    /// The on-deck worker in words.
    pub fn on_deck_words(&self) -> String {
        let n = &self.next;
        if n.pid > 0 && n.alive && n.expires >= self.now {
            format!("worker {} waiting to run", n.pid)
        } else if n.pid > 0 {
            format!("nobody (worker {} {})", n.pid, n.state)
        } else {
            "nobody".to_owned()
        }
    }

    /// When anything is next due, in words.
    pub fn next_due_words(&self) -> String {
        if self.tasks.is_empty() {
            "nothing (no tasks are configured)".to_owned()
        } else {
            due_words(self.next_due, self.now)
        }
    }

    /// When one task is next due, in words.
    pub fn task_due_words(&self, t: &TaskDue) -> String {
        match (&t.due, &t.error) {
            (_, Some(e)) => format!("check failed: {e}"),
            (Some(d), None) => due_words(*d, self.now),
            _ => String::new(),
        }
    }
}

fn due_words(d: Due, now: i64) -> String {
    match d {
        Due::Now => "now".into(),
        Due::At(t) if t <= now => "now".into(),
        Due::At(t) => format!("{} UTC ({})", clock::format_utc(t), clock::relative(t, now)),
        Due::Never => "nothing".into(),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "repository: {}", self.repo)?;
        match &self.last_run {
            Some(r) => {
                let failed = r.failed_tasks();
                write!(
                    f,
                    "last run:   {} ({} UTC, pid {}): {} item{} in {} ms",
                    self.last_run_ago,
                    clock::format_utc(r.started),
                    r.pid,
                    r.items(),
                    if r.items() == 1 { "" } else { "s" },
                    r.elapsed_us / 1000
                )?;
                if failed.is_empty() {
                    writeln!(f)?;
                } else {
                    writeln!(f, ", failed: {}", failed.join(", "))?;
                }
            }
            None => writeln!(f, "last run:   {}", self.last_run_ago)?,
        }
        let t = &self.totals;
        if t.runs > 0 {
            writeln!(
                f,
                "runs:       {} since {} UTC: {} item{}, {} failed task run{}",
                t.runs,
                clock::format_utc(t.since),
                t.items,
                if t.items == 1 { "" } else { "s" },
                t.failures,
                if t.failures == 1 { "" } else { "s" },
            )?;
        }
        writeln!(f, "lease:      {}", self.lease_words())?;
        writeln!(f, "on deck:    {}", self.on_deck_words())?;
        writeln!(f, "term:       {} (takeovers so far)", self.term)?;
        writeln!(f, "event log:  {}", self.event_log_words())?;
        writeln!(f, "due next:   {}", self.next_due_words())?;
        writeln!(f, "summary:    {}", self.due_summary)?;
        // Names in one column, at least 10 wide (`maintenance` is 11).
        let width = self
            .tasks
            .iter()
            .map(|t| t.task.len())
            .max()
            .unwrap_or(0)
            .max(10);
        for t in &self.tasks {
            let words = self.task_due_words(t);
            if !words.is_empty() {
                writeln!(f, "  {:<width$} {words}", t.task)?;
            }
        }
        for i in &self.info {
            writeln!(f, "  {i}")?;
        }
        let set: Vec<String> = self
            .settings
            .iter()
            .filter(|s| !s.default)
            .map(|s| format!("{}={}", s.name, s.value))
            .collect();
        if set.is_empty() {
            writeln!(
                f,
                "settings:   all at their defaults (see `backoffice setting`)"
            )?;
        } else {
            writeln!(
                f,
                "settings:   {} (others at their defaults)",
                set.join(", ")
            )?;
        }
        for p in &self.problems {
            writeln!(f, "problem:    {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Context, Gauge, Task, TaskError, TaskStatus};

    fn numbered(n: usize) -> String {
        (1..=n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn log_tail_gives_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, numbered(100)).unwrap();
        let t = log_tail(&p, 20, LOG_TAIL_BYTES).unwrap();
        assert_eq!(t.len(), 20);
        assert_eq!(t[0], "line 81");
        assert_eq!(t[19], "line 100");
        // Fewer lines than asked for, and no final newline.
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(log_tail(&p, 20, LOG_TAIL_BYTES).unwrap(), ["a", "b"]);
        std::fs::write(&p, "").unwrap();
        assert!(log_tail(&p, 20, LOG_TAIL_BYTES).unwrap().is_empty());
    }

    #[test]
    fn log_tail_reads_only_the_end_and_drops_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        // "line 1\n" … "line 9\n" are 7 bytes each: a 17-byte window starts
        // inside "line 7\n" (at byte 46 of 63), which must not show as "7\n".
        std::fs::write(&p, numbered(9)).unwrap();
        assert_eq!(log_tail(&p, 20, 17).unwrap(), ["line 8", "line 9"]);
        // A window starting exactly at a line start still drops that line
        // (it cannot tell), which is harmless.
        assert_eq!(log_tail(&p, 20, 14).unwrap(), ["line 9"]);
        // A huge last part: short lines, then 100 KiB without a newline in
        // the window, and invalid UTF-8.
        let mut big = numbered(50).into_bytes();
        big.extend(std::iter::repeat_n(b'x', 100 * 1024));
        big.extend(b"\nend \xff\n");
        std::fs::write(&p, &big).unwrap();
        assert_eq!(log_tail(&p, 20, LOG_TAIL_BYTES).unwrap(), ["end \u{fffd}"]);
        big.truncate(big.len() - 8); // the window now holds only x's
        std::fs::write(&p, &big).unwrap();
        assert!(log_tail(&p, 20, LOG_TAIL_BYTES).unwrap().is_empty());
    }

    #[test]
    fn log_tail_of_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = log_tail(&dir.path().join("nope"), 20, LOG_TAIL_BYTES).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    struct Gauged;
    impl Task for Gauged {
        fn name(&self) -> &str {
            "g"
        }
        fn due(&self, _: crate::Db<'_>, _: i64) -> std::result::Result<Due, TaskError> {
            Ok(Due::Never)
        }
        fn run(&self, _: &Context<'_>) -> std::result::Result<u64, TaskError> {
            Ok(2)
        }
        fn status(&self, _: crate::Db<'_>, _: i64) -> TaskStatus {
            TaskStatus {
                gauges: vec![Gauge::new("q", "s", 7)],
                ..TaskStatus::default()
            }
        }
    }

    #[test]
    fn status_has_gauges_totals_age_and_log_tail() {
        let (dir, mut r) = crate::repo::temp_repo();
        let tasks = Tasks::new().with(Gauged);
        let st = status(&r, &tasks).unwrap();
        assert_eq!(st.last_run_age, None);
        assert_eq!(st.totals, RunTotals::default());
        assert!(st.log_tail.is_empty());
        assert!(!st.to_string().contains("runs:"), "{st}");
        let g = &st.gauges[0];
        assert_eq!(
            (g.task.as_str(), g.queue.as_str(), g.state.as_str(), g.value),
            ("g", "q", "s", 7)
        );

        // A log file that does not exist yet is normal, not a problem.
        let log = dir.path().join("bo.log");
        r.set(crate::settings::LOGFILE, log.to_str().unwrap())
            .unwrap();
        let st = status(&r, &tasks).unwrap();
        assert!(st.log_tail.is_empty() && st.problems.is_empty(), "{st:?}");

        let opts = crate::RunOptions {
            nolease: true,
            ..Default::default()
        };
        crate::engine::run(&mut r, &tasks, &opts).unwrap();
        crate::engine::run(&mut r, &tasks, &opts).unwrap();
        let st = status(&r, &tasks).unwrap();
        assert_eq!((st.totals.runs, st.totals.items), (2, 4));
        let age = st.last_run_age.unwrap();
        assert!((0..5).contains(&age), "{age}");
        assert_eq!(st.log_tail.len(), 2, "{:?}", st.log_tail);
        assert!(st.log_tail[1].ends_with(" us") && st.log_tail[1].contains(" 2 g "));
        let text = st.to_string();
        assert!(
            text.contains("\nruns:       2 since ")
                && text.contains(": 4 items, 0 failed task runs\n"),
            "{text}"
        );

        // An unreadable log file (here a directory) is a problem, named.
        r.set(crate::settings::LOGFILE, dir.path().to_str().unwrap())
            .unwrap();
        let st = status(&r, &tasks).unwrap();
        assert!(st.log_tail.is_empty());
        assert!(
            st.problems
                .iter()
                .any(|p| p.starts_with("cannot read the log file ")),
            "{:?}",
            st.problems
        );
    }
}
