//! What `backoffice status` reports: the last run, the lease in words, and
//! what is due next — as text for a person and as JSON for tools.

use serde::Serialize;

use crate::clock;
use crate::engine::read_lease;
use crate::error::Result;
use crate::lease::Slot;
use crate::process::{self, Liveness};
use crate::repo::Repo;
use crate::settings::{self, Settings};
use crate::task::{self, Due, RunReport, Tasks};

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
        state: l.describe().to_owned(),
        alive: l == Liveness::Alive,
    }
}

/// Builds the status of `repo` for these tasks.
pub fn status(repo: &Repo, tasks: &Tasks) -> Result<Status> {
    let conn = repo.conn();
    let now = clock::now();
    let s = Settings::load(conn).map_err(|e| repo.err("reading settings", e))?;
    let raw = repo.get(crate::engine::LEASE_ROW)?.unwrap_or_default();
    let (lease, lease_problem) = read_lease(conn).map_err(|e| repo.err("reading the lease", e))?;
    let last_run: Option<RunReport> = repo
        .get(task::LAST_RUN_ROW)?
        .and_then(|j| serde_json::from_str(&j).ok());
    let last_run_ago = match (&last_run, lease.current.expires) {
        (Some(r), _) => clock::relative(r.started, now),
        (None, t) if t > 0 => format!(
            "{} (from the lease)",
            clock::relative(t - s.lease_time, now)
        ),
        _ => "never".to_owned(),
    };
    let each = tasks.due_each(conn, now);
    let next_due = tasks.due(conn, now);
    let mut problems = s.problems.clone();
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
    let mut info = Vec::new();
    for t in tasks.iter() {
        let st = t.status(conn, now);
        info.extend(st.info.into_iter().map(|l| format!("{}: {l}", t.name())));
        problems.extend(
            st.problems
                .into_iter()
                .map(|l| format!("{}: {l}", t.name())),
        );
    }
    let settings = settings::SETTINGS
        .iter()
        .map(|d| {
            let stored = repo.get(d.name).ok().flatten();
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
        repo: repo.path().display().to_string(),
        now,
        last_run,
        last_run_ago,
        lease_raw: raw,
        lease_problem,
        current: holder(&lease.current, lease.boot.as_deref(), s.lease_time),
        next: holder(&lease.next, lease.boot.as_deref(), s.lease_time),
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
    })
}

impl Status {
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
                clock::relative(c.expires + 1, now)
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
                let failed: Vec<&str> = r
                    .tasks
                    .iter()
                    .filter(|t| t.error.is_some())
                    .map(|t| t.name.as_str())
                    .collect();
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
        writeln!(f, "lease:      {}", self.lease_words())?;
        writeln!(f, "on deck:    {}", self.on_deck_words())?;
        writeln!(f, "due next:   {}", self.next_due_words())?;
        for t in &self.tasks {
            let words = self.task_due_words(t);
            if !words.is_empty() {
                writeln!(f, "  {:<10} {words}", t.task)?;
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
