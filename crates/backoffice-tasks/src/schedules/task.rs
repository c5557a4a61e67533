//! The `schedules` task: what is due, and running a slot once.
//!
//! # Once per slot
//!
//! Only the lease holder runs tasks, so two workers never run schedules at
//! the same time; what remains is a worker killed half-way. Each run is
//! recorded in two steps, each a transaction fenced on the run's term (a
//! worker whose lease was taken over writes nothing and stops):
//!
//! 1. **claim**: `claimed = SLOT` is committed before the command starts;
//! 2. **outcome**: after it ends, the slot becomes the ledger's cursor
//!    (success) or a failure is recorded with its backoff, and the claim is
//!    cleared.
//!
//! A worker that dies between the two leaves the claim. The next worker
//! finds it, records a failure ("killed") and runs the slot again: at once
//! (a second later) the first two times in a row, then after the backoff,
//! as the ledger retries every target. So a slot never starts
//! twice at once, and never runs again once its outcome is recorded; a
//! command cut off by its worker's death (which also ends the command's
//! whole process tree, see [`backoffice::child`]) is run again. It gets the
//! same `BACKOFFICE_SLOT` both times, so a command whose effect must not
//! repeat can key it on that.
//!
//! An event schedule needs no claim: the event is published in the same
//! transaction that records the slot, so both happen or neither.
//!
//! # Catch-up
//!
//! When the task runs (a request's check or a cron sweep found it due), the
//! slots that passed since the last one handled are counted. With `once`,
//! one run covers them all (`BACKOFFICE_MISSED_SLOTS` says how many it
//! stands for beyond its own); with `skip`, a single passed slot runs, but
//! several (nobody came for a while) are all skipped, and the schedule
//! waits for its next slot. Either way `missed` and `status` say so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backoffice::db::DbError;
use backoffice::ledger::{self, Backoff};
use backoffice::settings::{Def, Kind};
use backoffice::{Context, Db, Due, Gauge, Task, TaskError, TaskStatus};
use jiff::Timestamp;

use super::store::{self, Action, CatchUp, Schedule, TASK};

/// `schedule-timeout`
pub const TIMEOUT: &str = "schedule-timeout";

/// The settings this task reads.
pub const SETTINGS: &[Def] = &[Def {
    name: TIMEOUT,
    kind: Kind::Int {
        min: 1,
        max: 86_400,
    },
    default: "600",
    help: "Seconds a scheduled command may run; then everything it started is killed and the run counts as failed (retried with backoff).",
    secret: false,
}];

/// Retries: a minute, doubling, at most an hour (as hooks).
pub const BACKOFF: Backoff = Backoff {
    first: 60,
    max: 3600,
};

/// Kills in a row after which a killed run waits for the backoff instead
/// of being retried at once.
pub const KILLS_RETRIED_AT_ONCE: i64 = 2;

/// Most passed slots counted one by one (a pattern every minute, idle for
/// years, is reported as "at least" this many).
pub const COUNT_CAP: u32 = 100_000;

/// What a schedule should do at a given time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing before this Unix time (`None`: nothing until it is changed).
    Wait(Option<i64>),
    /// A claimed slot without an outcome: its worker was killed.
    Killed {
        /// The slot it was running.
        slot: i64,
        /// It was a manual run's (`schedule run`).
        manual: bool,
    },
    /// Run for `slot`, standing for `passed` slots (0 for a run asked for
    /// by `schedule run`, which uses up no slot).
    Run {
        /// The slot (Unix seconds); for a manual run, the time it was asked.
        slot: i64,
        /// Slots passed since the last one handled.
        passed: u32,
        /// Asked for by `schedule run`.
        manual: bool,
    },
    /// Skip `passed` slots, up to `slot` (catch-up `skip`).
    Skip {
        /// The latest of them.
        slot: i64,
        /// How many.
        passed: u32,
    },
    /// The stored row cannot be read as a schedule.
    Broken(String),
}

/// What `schedule` should do at `now`, from its row and ledger entry.
pub fn plan(s: &Schedule, e: Option<&ledger::Entry>, now: i64) -> Plan {
    let spec = match s.parsed() {
        Ok(spec) => spec,
        Err(err) => return Plan::Broken(err.to_string()),
    };
    if s.action.is_none() {
        return Plan::Broken("the row has neither a command nor an event (or both)".into());
    }
    if let Some(slot) = s.claimed {
        return Plan::Killed {
            slot,
            manual: s.claimed_manual,
        };
    }
    if s.run_now {
        return Plan::Run {
            slot: now,
            passed: 0,
            manual: true,
        };
    }
    if s.paused {
        return Plan::Wait(None);
    }
    let cursor = e.map_or(0, |e| e.cursor);
    let base = ts(cursor.max(s.created));
    let passed = spec.passed(base, ts(now), COUNT_CAP);
    let Some(slot) = passed.latest else {
        return Plan::Wait(spec.next_after(base).map(|t| t.as_second()));
    };
    if let Some(e) = e.filter(|e| e.failures > 0 && e.next_attempt > now) {
        return Plan::Wait(Some(e.next_attempt));
    }
    let slot = slot.as_second();
    if s.catch_up == CatchUp::Skip && passed.count > 1 {
        Plan::Skip {
            slot,
            passed: passed.count,
        }
    } else {
        Plan::Run {
            slot,
            passed: passed.count,
            manual: false,
        }
    }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A slot as text, for messages and the command's environment.
pub fn slot_text(slot: i64) -> String {
    ts(slot).strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The task, on SQLite files and PostgreSQL schemas.
#[derive(Debug, Default)]
pub struct Schedules;

impl Schedules {
    /// The task.
    pub fn new() -> Schedules {
        Schedules
    }
}

fn entry_for<'e>(entries: &'e [ledger::Entry], name: &str) -> Option<&'e ledger::Entry> {
    entries.iter().find(|e| e.target == name)
}

impl Task for Schedules {
    fn name(&self) -> &str {
        TASK
    }

    fn settings(&self) -> &'static [Def] {
        SETTINGS
    }

    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&["bo_schedule"])
    }

    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError> {
        // The stored plans (see `store::replan`): one index lookup, however
        // many schedules there are. (`now` is the check's clock: on
        // PostgreSQL the database's, as the plans were made with.)
        Ok(match store::earliest_due(db)? {
            None => Due::Never,
            Some(at) if at <= now => Due::Now,
            Some(at) => Due::At(at),
        })
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let conn = ctx.db;
        if !store::installed(conn)? {
            return Ok(0);
        }
        let timeout = Duration::from_secs(timeout_secs(conn).try_into().unwrap_or(600));
        let mut ran = 0;
        let mut failed = Vec::new();
        for s in store::all(conn)? {
            let now = db_now(conn)?;
            let entry = ledger::get(conn, TASK, &s.name)?;
            match plan(&s, entry.as_ref(), now) {
                Plan::Wait(_) | Plan::Broken(_) => {}
                Plan::Killed { slot, manual } => {
                    let exit = exit_file(ctx.repo, &s.name, slot);
                    // The command may have finished before its worker died:
                    // its wrapper then left its exit status.
                    if let Some(code) = read_exit(&exit) {
                        let out = Ran {
                            failure: (code != 0).then(|| format!("exit status: {code}")),
                            output: "(the worker ended before reading the output)".into(),
                        };
                        match record(ctx, conn, &s, slot, 1, manual, &out)? {
                            None => ran += 1,
                            Some(why) => failed.push(format!("schedule {}: {why}", s.name)),
                        }
                        let _ = std::fs::remove_file(&exit);
                        continue;
                    }
                    let why = format!(
                        "killed: the run of the slot {} ended with its worker before its command finished",
                        slot_text(slot)
                    );
                    // The command did not fail: its worker died. Run the
                    // slot again at once, unless that keeps happening (a
                    // command that gets its worker killed, by the OOM
                    // killer say): then back off as for failures.
                    let kills = entry.as_ref().map_or(0, |e| e.failures);
                    let policy = if kills < KILLS_RETRIED_AT_ONCE {
                        Backoff { first: 1, max: 1 }
                    } else {
                        BACKOFF
                    };
                    write(ctx, conn, |c| {
                        ledger::failed(c, TASK, &s.name, now, &why, None, &policy)?;
                        c.execute(
                            "UPDATE bo_schedule SET claimed = NULL, claimed_manual = 0 WHERE name = ?1",
                            &[s.name.as_str().into()],
                        )?;
                        Ok(())
                    })?;
                    failed.push(format!("schedule {}: {why}", s.name));
                }
                Plan::Skip { slot, passed } => {
                    write(ctx, conn, |c| {
                        let mut e = entry.clone().unwrap_or_default();
                        e.task = TASK.into();
                        e.target = s.name.clone();
                        e.cursor = slot;
                        e.failures = 0;
                        e.next_attempt = 0;
                        e.last_error = None;
                        ledger::put(c, &e)?;
                        missed(c, &s.name, passed.into())
                    })?;
                    tracing::info!(schedule = %s.name, passed, "missed slots skipped (catch-up skip)");
                }
                Plan::Run {
                    slot,
                    passed,
                    manual,
                } => match run_one(ctx, conn, &s, slot, passed, manual, timeout)? {
                    None => ran += 1,
                    Some(why) => failed.push(format!("schedule {}: {why}", s.name)),
                },
            }
        }
        // Every schedule's plan, worked out again and stored where it
        // changed: after the runs above, and for a row edited by hand.
        let now = db_now(conn)?;
        write(ctx, conn, |c| {
            for s in store::all(c)? {
                store::replan(c, &s, now)?;
            }
            Ok(())
        })?;
        if failed.is_empty() {
            Ok(ran)
        } else {
            Err(Box::new(backoffice::Partial {
                items: ran,
                error: format!("{ran} scheduled runs; {}", failed.join("; ")),
            }))
        }
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let conn = db;
        let mut st = TaskStatus::default();
        let (Ok(schedules), Ok(entries)) = (store::all(conn), ledger::all(conn, TASK)) else {
            st.problems.push("cannot read the schedules".into());
            return st;
        };
        if schedules.is_empty() {
            return st;
        }
        let mut failing = 0;
        for s in &schedules {
            let e = entry_for(&entries, &s.name);
            let timing = s
                .parsed()
                .map(|p| p.describe())
                .unwrap_or_else(|_| format!("{} {:?}", s.timing, s.spec));
            let mut line = format!("schedule {}: {timing}", s.name);
            let p = plan(s, e, now);
            // Per schedule, for /metrics and status.json: the queue is the
            // schedule's name; times are Unix seconds (0: none).
            let gauge = |state: &str, value: i64| Gauge {
                queue: format!("schedule:{}", s.name),
                state: state.into(),
                value,
            };
            st.gauges.extend([
                gauge("next_slot_time", store::due_at(&p, now).unwrap_or(0)),
                gauge("last_slot_time", e.map_or(0, |e| e.cursor)),
                gauge("missed", s.missed),
                gauge("failures", e.map_or(0, |e| e.failures)),
            ]);
            match p {
                Plan::Broken(why) => {
                    st.problems.push(format!("schedule {}: {why}", s.name));
                    continue;
                }
                Plan::Wait(Some(at)) => line.push_str(&format!(", next {}", slot_text(at))),
                Plan::Wait(None) if s.paused => line.push_str(", paused"),
                Plan::Wait(None) => line.push_str(", no next slot"),
                Plan::Killed { .. } | Plan::Run { .. } | Plan::Skip { .. } => {
                    line.push_str(", due now")
                }
            }
            if let Some(e) = e.filter(|e| e.cursor > 0) {
                line.push_str(&format!(", last slot {}", slot_text(e.cursor)));
            }
            if s.missed > 0 {
                line.push_str(&format!(", {} missed in all", s.missed));
            }
            st.info.push(line);
            if let Some(e) = e.filter(|e| e.failures > 0) {
                failing += 1;
                st.problems.push(format!(
                    "schedule {} failing ({} in a row): {}",
                    s.name,
                    e.failures,
                    e.last_error.as_deref().unwrap_or("?")
                ));
            }
        }
        st.gauges.push(Gauge {
            queue: "schedules".into(),
            state: "total".into(),
            value: schedules.len() as i64,
        });
        st.gauges.push(Gauge {
            queue: "schedules".into(),
            state: "failing".into(),
            value: failing,
        });
        st
    }
}

/// One fenced write of the task's own bookkeeping: refused once another
/// worker has taken the lease over (on SQLite also an own write, see
/// `backoffice::writes`; on PostgreSQL after the schedules' lock).
fn write<T>(
    ctx: &Context<'_>,
    db: Db<'_>,
    f: impl FnOnce(Db<'_>) -> Result<T, DbError>,
) -> Result<T, DbError> {
    db.write(Some(ctx.term), |db| {
        match db.sqlite() {
            Some(conn) => backoffice::writes::note_own_write(conn)?,
            None => {
                db.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('backoffice-schedules:' || current_schema()))",
                    &[],
                )?;
            }
        }
        f(db)
    })
}

fn missed(db: Db<'_>, name: &str, n: i64) -> Result<(), DbError> {
    db.execute(
        "UPDATE bo_schedule SET missed = missed + ?2, last_missed = ?2 WHERE name = ?1",
        &[name.into(), n.into()],
    )
    .map(drop)
}

/// The time for slots and retries: on PostgreSQL the database's clock
/// (hosts whose clocks disagree then agree on the slots), on SQLite this
/// host's.
fn db_now(db: Db<'_>) -> Result<i64, DbError> {
    if db.sqlite().is_some() {
        return Ok(backoffice::clock::now());
    }
    db.query_opt(
        "SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)",
        &[],
    )?
    .ok_or_else(|| DbError::Postgres("no answer for the clock".into()))?
    .int(0)
}

/// `schedule-timeout` on either store: the stored value if valid, else the
/// default.
fn timeout_secs(db: Db<'_>) -> i64 {
    if let Some(conn) = db.sqlite() {
        return backoffice::settings::int(conn, SETTINGS, TIMEOUT);
    }
    let def = &SETTINGS[0];
    db.config_get(TIMEOUT)
        .ok()
        .flatten()
        .and_then(|v| def.validate(&v).ok())
        .unwrap_or_else(|| def.default.to_owned())
        .parse()
        .unwrap_or(600)
}

/// Runs a schedule's action for `slot`; `Some(why)` when it failed (the
/// failure is recorded).
fn run_one(
    ctx: &Context<'_>,
    conn: Db<'_>,
    s: &Schedule,
    slot: i64,
    passed: u32,
    manual: bool,
    timeout: Duration,
) -> Result<Option<String>, TaskError> {
    // Slots this run stands for beyond its own.
    let extra = i64::from(passed.saturating_sub(1));
    let cursor_after = |e: Option<ledger::Entry>| {
        if manual {
            e.map_or(0, |e| e.cursor)
        } else {
            slot
        }
    };
    match s.action.as_ref() {
        Some(Action::Event(kind)) => {
            let ev = backoffice::events::Event {
                kind: kind.clone(),
                title: format!("schedule {}", s.name),
                body: format!(
                    "The schedule {} ({}) for {}{}.",
                    s.name,
                    s.parsed().map(|p| p.describe()).unwrap_or_default(),
                    slot_text(slot),
                    if extra > 0 {
                        format!(", standing for {extra} missed slots before it")
                    } else {
                        String::new()
                    }
                ),
                url: None,
                author: Some("backoffice".into()),
                time: Some(slot),
            };
            let now = db_now(conn)?;
            write(ctx, conn, |c| {
                publish(c, &ev)?;
                let cursor = cursor_after(ledger::get(c, TASK, &s.name)?);
                ledger::succeeded(c, TASK, &s.name, cursor, now, None)?;
                c.execute(
                    "UPDATE bo_schedule SET run_now = 0 WHERE name = ?1",
                    &[s.name.as_str().into()],
                )?;
                if !manual {
                    missed(c, &s.name, extra)?;
                }
                Ok(())
            })?;
            Ok(None)
        }
        Some(Action::Command(cmd)) => {
            // 1. The claim, before anything starts.
            write(ctx, conn, |c| {
                c.execute(
                    "UPDATE bo_schedule SET claimed = ?2, claimed_manual = ?3, run_now = 0
                     WHERE name = ?1",
                    &[s.name.as_str().into(), slot.into(), manual.into()],
                )
                .map(drop)
            })?;
            let exit = exit_file(ctx.repo, &s.name, slot);
            let _ = std::fs::remove_file(&exit);
            let out = execute(ctx.repo, &s.name, cmd, slot, extra, &exit, timeout)?;
            // 2. The outcome.
            let failure = record(ctx, conn, s, slot, passed, manual, &out)?;
            let _ = std::fs::remove_file(&exit);
            Ok(failure)
        }
        None => Ok(None),
    }
}

/// Records how a claimed command's run ended and clears the claim; `Some`
/// with the failure when it failed. A schedule removed meanwhile has no row
/// to record it on: nothing is written (the ledger entry its removal
/// deleted is not brought back).
fn record(
    ctx: &Context<'_>,
    conn: Db<'_>,
    s: &Schedule,
    slot: i64,
    passed: u32,
    manual: bool,
    out: &Ran,
) -> Result<Option<String>, TaskError> {
    let extra = i64::from(passed.saturating_sub(1));
    let now = db_now(conn)?;
    write(ctx, conn, |c| {
        let n = c.execute(
            "UPDATE bo_schedule SET claimed = NULL, claimed_manual = 0 WHERE name = ?1",
            &[s.name.as_str().into()],
        )?;
        if n == 0 {
            return Ok(());
        }
        match &out.failure {
            None => {
                let before = ledger::get(c, TASK, &s.name)?.map_or(0, |e| e.cursor);
                let cursor = if manual { before } else { slot };
                ledger::succeeded(c, TASK, &s.name, cursor, now, Some(&out.output))?;
                if !manual {
                    missed(c, &s.name, extra)?;
                }
            }
            Some(f) => {
                ledger::failed(c, TASK, &s.name, now, f, Some(&out.output), &BACKOFF)?;
            }
        }
        Ok(())
    })?;
    Ok(out
        .failure
        .as_ref()
        .map(|f| format!("slot {}: {f}", slot_text(slot))))
}

/// Where a command's wrapper leaves its exit status, beside the
/// repository (so a worker in another container sharing the repository
/// finds it too): `.REPO.schedule-NAME-SLOT.exit`. Names are letters,
/// digits, `.`, `_` and `-` only. A PostgreSQL repository has no folder:
/// the file is in this host's temporary folder, named by a hash of the URL
/// (a worker on another host does not see it, and runs the slot again).
pub fn exit_file(repo: &Path, name: &str, slot: i64) -> PathBuf {
    if let Some(url) = repo.to_str().filter(|r| backoffice::db::is_pg_url(r)) {
        let seed = ledger::seed(TASK, url);
        return std::env::temp_dir().join(format!(
            ".backoffice-pg-{seed:016x}.schedule-{name}-{slot}.exit"
        ));
    }
    let repo = std::path::absolute(repo).unwrap_or_else(|_| repo.to_owned());
    let file = repo
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    repo.with_file_name(format!(".{file}.schedule-{name}-{slot}.exit"))
}

/// The exit status a wrapper left, if it finished writing it.
fn read_exit(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.strip_suffix('\n')?.parse().ok()
}

/// Runs the command (given in `BACKOFFICE_COMMAND`, never pasted into
/// the script) and leaves its exit status in `BACKOFFICE_EXIT_FILE` the
/// moment it ends: a worker killed between the command's end and the
/// record of its outcome is followed by one that finds the status there
/// and records it, instead of running the slot again. Only a kill in the
/// instant between the command's exit and that write is still retried.
const WRAPPER: &str = r#"/bin/sh -c "$BACKOFFICE_COMMAND"; s=$?; printf '%s\n' "$s" > "$BACKOFFICE_EXIT_FILE" 2>/dev/null; exit $s"#;

/// Publishes a schedule's event inside the caller's write: on SQLite
/// through the event log's own `publish`; on PostgreSQL as a plain insert
/// (a worker gives it its position before the next run's tasks).
fn publish(db: Db<'_>, ev: &backoffice::events::Event) -> Result<(), DbError> {
    match db.sqlite() {
        Some(conn) => backoffice::events::publish(conn, ev)
            .map(drop)
            .map_err(|e| match e {
                backoffice::events::PublishError::Sqlite(e) => DbError::Sqlite(e),
                // The kind was checked when the schedule was added, the
                // title is ours: a refusal here is a bug, reported as such.
                other => DbError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(other))),
            }),
        None => db
            .execute(
                "INSERT INTO bo_event(kind, title, body, url, author, mtime)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
                &[
                    ev.kind.as_str().into(),
                    ev.title.as_str().into(),
                    ev.body.as_str().into(),
                    ev.author.as_deref().into(),
                    ev.time.unwrap_or(0).into(),
                ],
            )
            .map(drop),
    }
}

/// What one run of a command did.
struct Ran {
    failure: Option<String>,
    output: String,
}

/// Runs a scheduled command as hooks run theirs: `/bin/sh -c`, its own
/// process group ended with the run or with a killed worker, bounded
/// output, `%R`/`%F` substituted, nothing else interpolated.
fn execute(
    repo: &Path,
    name: &str,
    cmd: &str,
    slot: i64,
    extra: i64,
    exit: &Path,
    timeout: Duration,
) -> Result<Ran, TaskError> {
    // A PostgreSQL repository is its URL, password hidden (the command
    // connects with its own credentials), and has no folder: the command
    // runs in the worker's.
    let url = repo.to_str().is_some_and(backoffice::db::is_pg_url);
    let repo = if url {
        repo.to_owned()
    } else {
        std::path::absolute(repo).unwrap_or_else(|_| repo.to_owned())
    };
    let exe = crate::hooks::current_exe();
    let command = crate::hooks::substitute(cmd, &repo, &exe);
    let spec = backoffice::child::Spec {
        command: WRAPPER,
        dir: if url {
            None
        } else {
            Some(repo.parent().unwrap_or(Path::new("/")))
        },
        env: vec![
            ("BACKOFFICE_COMMAND", command.into()),
            ("BACKOFFICE_EXIT_FILE", exit.into()),
            ("BACKOFFICE_REPO", repo.clone().into_os_string()),
            ("BACKOFFICE_SCHEDULE", name.into()),
            ("BACKOFFICE_SLOT", slot.to_string().into()),
            ("BACKOFFICE_SLOT_TIME", slot_text(slot).into()),
            ("BACKOFFICE_MISSED_SLOTS", extra.to_string().into()),
        ],
        input: &[],
        stdout: true,
        timeout,
    };
    let mut cap = crate::hooks::Capture::default();
    let ran = backoffice::child::run(&spec, &mut |b| cap.push(b))
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let failure = match ran.status {
        None => Some(format!("timed out after {} s", timeout.as_secs())),
        Some(st) if st.success() => None,
        Some(st) => Some(st.to_string()),
    };
    Ok(Ran {
        failure,
        output: cap.text(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedules::store::Timing;
    use rusqlite::Connection;

    fn every(s: &str) -> Timing {
        Timing::Every(s.into())
    }

    fn sched(conn: &Connection, name: &str) -> Schedule {
        store::get(conn, name).unwrap().unwrap()
    }

    fn entry(conn: &Connection, name: &str) -> ledger::Entry {
        ledger::get(conn, TASK, name).unwrap().unwrap_or_default()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        repo: backoffice::Repo,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.db");
            Connection::open(&path).unwrap();
            let repo = backoffice::Repo::open(&path).unwrap();
            Fixture { dir, repo }
        }

        fn conn(&self) -> &Connection {
            self.repo.conn()
        }

        /// A command that appends its slot and missed count to `out.txt`,
        /// then exits with `status`.
        fn command(&self, status: i32) -> Action {
            let out = self.dir.path().join("out.txt");
            Action::Command(format!(
                "echo \"$BACKOFFICE_SCHEDULE $BACKOFFICE_SLOT $BACKOFFICE_MISSED_SLOTS\" >> '{}'; exit {status}",
                out.display()
            ))
        }

        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("out.txt"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn run(&mut self) -> backoffice::Outcome {
            let tasks = backoffice::Tasks::new().with(Schedules);
            // No lease: one run after the other here, each a full run
            // (the lease's once-per-period is the engine's, tested there).
            let opts = backoffice::RunOptions {
                nolease: true,
                ..Default::default()
            };
            backoffice::run(&mut self.repo, &tasks, &opts).unwrap()
        }

        fn due(&self) -> Due {
            Schedules
                .due(Db::Sqlite(self.conn()), backoffice::clock::now())
                .unwrap()
        }
    }

    const HOUR: i64 = 3600;

    #[test]
    fn a_new_schedule_waits_for_its_first_slot() {
        let f = Fixture::new();
        let now = backoffice::clock::now();
        store::add(
            f.conn(),
            "tick",
            &every("15m"),
            &f.command(0),
            CatchUp::Once,
            now,
        )
        .unwrap();
        let next = (now / 900 + 1) * 900;
        assert_eq!(f.due(), Due::At(next));
        let s = sched(f.conn(), "tick");
        assert_eq!(plan(&s, None, now), Plan::Wait(Some(next)));
        assert_eq!(
            plan(&s, None, next),
            Plan::Run {
                slot: next,
                passed: 1,
                manual: false
            }
        );
    }

    #[test]
    fn missed_slots_run_once_then_the_next_slot_is_awaited() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        // Added three hours ago, never run: twelve 15-minute slots passed.
        store::add(
            f.conn(),
            "tick",
            &every("15m"),
            &f.command(0),
            CatchUp::Once,
            now - 3 * HOUR,
        )
        .unwrap();
        assert_eq!(f.due(), Due::Now);
        f.run();
        let latest = now / 900 * 900;
        let lines = f.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        // Slots strictly after the creation, up to now.
        let passed = latest / 900 - (now - 3 * HOUR) / 900;
        assert_eq!(passed, 12);
        assert_eq!(lines[0], format!("tick {latest} {}", passed - 1));
        let s = sched(f.conn(), "tick");
        assert_eq!(
            (s.claimed, s.missed, s.last_missed),
            (None, passed - 1, passed - 1)
        );
        assert_eq!(entry(f.conn(), "tick").cursor, latest);
        assert_eq!(f.due(), Due::At(latest + 900));
        // Nothing more runs until then.
        f.run();
        assert_eq!(f.lines().len(), 1);
    }

    #[test]
    fn with_skip_missed_slots_are_skipped_and_counted() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        store::add(
            f.conn(),
            "tick",
            &every("1h"),
            &f.command(0),
            CatchUp::Skip,
            now - 3 * HOUR - 1,
        )
        .unwrap();
        f.run();
        assert!(f.lines().is_empty(), "{:?}", f.lines());
        let s = sched(f.conn(), "tick");
        assert_eq!((s.missed, s.last_missed), (3, 3));
        assert_eq!(entry(f.conn(), "tick").cursor, now / HOUR * HOUR);
        let st = Schedules.status(Db::Sqlite(f.conn()), now);
        assert!(st.info[0].contains("3 missed in all"), "{st:?}");
        let gauge = |state: &str| {
            st.gauges
                .iter()
                .find(|g| g.queue == "schedule:tick" && g.state == state)
                .map(|g| g.value)
        };
        assert_eq!(gauge("missed"), Some(3));
        assert_eq!(gauge("last_slot_time"), Some(now / HOUR * HOUR));
        assert_eq!(gauge("next_slot_time"), Some((now / HOUR + 1) * HOUR));
        assert_eq!(gauge("failures"), Some(0));
    }

    #[test]
    fn a_claim_left_by_a_killed_worker_is_a_failure_retried_at_once_then_after_the_backoff() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        store::add(
            f.conn(),
            "tick",
            &every("1h"),
            &f.command(0),
            CatchUp::Once,
            now - HOUR - 1,
        )
        .unwrap();
        let slot = now / HOUR * HOUR;
        // A worker claimed the slot and died.
        f.conn()
            .execute("UPDATE bo_schedule SET claimed = ?1", [slot])
            .unwrap();
        assert_eq!(f.due(), Due::Now);
        f.run();
        assert!(f.lines().is_empty());
        let e = entry(f.conn(), "tick");
        assert_eq!(e.failures, 1);
        assert!(
            e.last_error.as_deref().unwrap().starts_with("killed"),
            "{e:?}"
        );
        assert_eq!(sched(f.conn(), "tick").claimed, None);
        // Retried a second later, not after a minute.
        assert!(e.next_attempt <= now + 2, "{e:?}");
        // Killed again and again: the third kill in a row backs off.
        for kills in 2..=3 {
            f.conn()
                .execute("UPDATE bo_schedule SET claimed = ?1", [slot])
                .unwrap();
            f.conn()
                .execute("UPDATE bo_ledger SET next_attempt = 0", [])
                .unwrap();
            f.run();
            let e = entry(f.conn(), "tick");
            assert_eq!(e.failures, kills);
            let soon = e.next_attempt <= backoffice::clock::now() + 2;
            assert_eq!(soon, kills < 3, "{e:?}");
            if kills == 3 {
                assert_eq!(f.due(), Due::At(e.next_attempt));
            }
        }
        assert!(f.lines().is_empty());
        // The backoff passes: the same slot runs, once.
        f.conn()
            .execute("UPDATE bo_ledger SET next_attempt = 0", [])
            .unwrap();
        f.run();
        assert_eq!(f.lines(), [format!("tick {slot} 0")]);
        assert_eq!(entry(f.conn(), "tick").failures, 0);
    }

    #[test]
    fn a_failing_command_is_recorded_and_reported() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        store::add(
            f.conn(),
            "bad",
            &every("1h"),
            &f.command(3),
            CatchUp::Once,
            now - HOUR - 1,
        )
        .unwrap();
        let out = f.run();
        let backoffice::Outcome::Ran(report) = out else {
            panic!("{out:?}")
        };
        let err = report.tasks[0].error.as_deref().unwrap();
        assert!(
            err.contains("schedule bad") && err.contains("exit status: 3"),
            "{err}"
        );
        let e = entry(f.conn(), "bad");
        assert_eq!((e.failures, e.cursor), (1, 0));
        assert_eq!(f.lines().len(), 1);
        let st = Schedules.status(Db::Sqlite(f.conn()), now);
        assert!(st.problems[0].contains("failing (1 in a row)"), "{st:?}");
        // Retried after the backoff (about a minute), not before: the
        // check says when.
        assert!((now + 60..=now + 67).contains(&e.next_attempt), "{e:?}");
        assert_eq!(f.due(), Due::At(e.next_attempt));
        f.run();
        assert_eq!(f.lines().len(), 1, "retried before the backoff");
        // The backoff passes (the ledger's next attempt moved to now): the
        // same slot runs again and fails again, two in a row.
        f.conn()
            .execute("UPDATE bo_ledger SET next_attempt = 0", [])
            .unwrap();
        f.conn()
            .execute("UPDATE bo_schedule SET due_at = 0", [])
            .unwrap();
        f.run();
        let lines = f.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], lines[1], "the same slot");
        assert_eq!(entry(f.conn(), "bad").failures, 2);
    }

    #[test]
    fn an_event_schedule_publishes_with_its_slot_recorded_together() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        let ev = Action::Event("nightly".into());
        store::add(
            f.conn(),
            "night",
            &every("1d"),
            &ev,
            CatchUp::Once,
            now - 86_400 - 1,
        )
        .unwrap();
        f.run();
        let (kind, title, time): (String, String, i64) = f
            .conn()
            .query_row("SELECT kind, title, mtime FROM bo_event", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        let slot = now / 86_400 * 86_400;
        assert_eq!(
            (kind.as_str(), title.as_str(), time),
            ("nightly", "schedule night", slot)
        );
        assert_eq!(entry(f.conn(), "night").cursor, slot);
    }

    #[test]
    fn run_now_runs_once_without_using_up_a_slot_and_pause_stops_slots() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        store::add(
            f.conn(),
            "tick",
            &every("1h"),
            &f.command(0),
            CatchUp::Once,
            now,
        )
        .unwrap();
        store::set_paused(f.conn(), "tick", true).unwrap();
        assert_eq!(f.due(), Due::Never);
        store::request_run(f.conn(), "tick").unwrap();
        assert_eq!(f.due(), Due::Now);
        f.run();
        assert_eq!(f.lines().len(), 1);
        let s = sched(f.conn(), "tick");
        assert!(!s.run_now && s.paused);
        assert_eq!(
            entry(f.conn(), "tick").cursor,
            0,
            "a manual run used up a slot"
        );
        store::set_paused(f.conn(), "tick", false).unwrap();
        assert_eq!(f.due(), Due::At((now / HOUR + 1) * HOUR));
    }

    #[test]
    fn bad_input_is_refused_by_name_and_broken_rows_are_reported() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        let c = f.command(0);
        for (name, timing, action, want) in [
            ("", every("1h"), c.clone(), "bad schedule name"),
            ("a b", every("1h"), c.clone(), "bad schedule name"),
            ("x", every("1"), c.clone(), "interval"),
            (
                "x",
                Timing::Cron {
                    pattern: "* *".into(),
                    zone: None,
                },
                c.clone(),
                "five fields",
            ),
            (
                "x",
                every("1h"),
                Action::Command("  ".into()),
                "must not be empty",
            ),
            (
                "x",
                every("1h"),
                Action::Event("Bad Kind".into()),
                "bad event kind",
            ),
        ] {
            let e = store::add(f.conn(), name, &timing, &action, CatchUp::Once, now).unwrap_err();
            assert!(e.to_string().contains(want), "{name:?}: {e}");
        }
        store::add(f.conn(), "x", &every("1h"), &c, CatchUp::Once, now).unwrap();
        let e = store::add(f.conn(), "x", &every("1h"), &c, CatchUp::Once, now).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        assert!(
            store::remove(f.conn(), "nope")
                .unwrap_err()
                .to_string()
                .contains("no schedule")
        );
        // A row changed by hand into nonsense: reported, never run, and
        // never due once a worker run (of any task) has planned it again.
        f.conn()
            .execute(
                "UPDATE bo_schedule SET timing = 'cron', spec = 'every tuesday', due_at = 0",
                [],
            )
            .unwrap();
        assert_eq!(f.due(), Due::Now, "the stored plan, until a run");
        f.run();
        assert!(f.lines().is_empty());
        assert_eq!(f.due(), Due::Never);
        let st = Schedules.status(Db::Sqlite(f.conn()), now);
        assert!(
            st.problems[0].contains("schedule x: cron pattern"),
            "{st:?}"
        );
    }

    #[test]
    fn a_schedule_removed_while_its_command_runs_records_nothing() {
        let mut f = Fixture::new();
        let now = backoffice::clock::now();
        let db = f.dir.path().join("r.db");
        // The command removes its own schedule, as `schedule remove` from
        // another process would while it runs.
        let cmd = Action::Command(format!(
            "sqlite3 '{}' \"DELETE FROM bo_schedule; DELETE FROM bo_ledger\" && echo ran >> '{}'",
            db.display(),
            f.dir.path().join("out.txt").display()
        ));
        if std::process::Command::new("sqlite3")
            .arg("-version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no sqlite3 shell");
            return;
        }
        store::add(
            f.conn(),
            "gone",
            &every("1h"),
            &cmd,
            CatchUp::Once,
            now - HOUR - 1,
        )
        .unwrap();
        f.run();
        assert_eq!(f.lines(), ["ran"]);
        assert!(store::get(f.conn(), "gone").unwrap().is_none());
        assert!(ledger::get(f.conn(), TASK, "gone").unwrap().is_none());
    }
}
