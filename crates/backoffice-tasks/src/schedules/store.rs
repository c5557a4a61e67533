//! Where schedules are kept: the table `bo_schedule`, one row per
//! schedule, and the retry ledger (task `schedules`, target the name).
//!
//! ```text
//! bo_schedule(name, timing, spec, zone, command, event, catch_up, paused,
//!             created, run_now, claimed, claimed_manual, missed, last_missed,
//!             due_at)
//! ```
//!
//! * `timing` is `cron` (then `spec` is the pattern, `zone` its time zone)
//!   or `every` (then `spec` is the interval, e.g. `15m`). Both are checked
//!   when the schedule is added, and parsed again by every reader: a row
//!   changed by hand into something invalid is reported by `status` and
//!   never run, not a crash.
//! * Exactly one of `command` (run like a hook) and `event` (a kind of
//!   event to publish) is set.
//! * `catch_up` is `once` or `skip` (see the task's docs).
//! * `run_now` is set by `schedule run NAME` and cleared by the run it
//!   asked for.
//! * `claimed` is the slot a worker started a command for and has not
//!   recorded the outcome of yet: set in the transaction before the
//!   command starts, cleared in the one that records how it ended. A row
//!   still claimed when the next worker looks is a run whose worker was
//!   killed. `claimed_manual` says the claim was a `schedule run`, whose
//!   "slot" is the time it was asked and uses up no real slot.
//! * `due_at` is when the schedule next needs a worker (NULL: not until
//!   it is changed): its plan ([`super::task::plan`]) worked out when the
//!   row or its ledger entry is written — by the commands and by every
//!   worker run, which also puts right a row edited by hand. The
//!   after-request check then reads `min(due_at)`, one index lookup,
//!   instead of parsing and stepping every schedule's timing (about 10 µs
//!   each with a time zone).
//! * `missed` counts the slots that got no run of their own (folded into
//!   a catch-up run, or skipped); `last_missed` is how many the latest
//!   catch-up covered.
//!
//! The ledger entry's `cursor` is the last slot handled (run or skipped),
//! in Unix seconds; its failures, next attempt, last error and output are
//! the retry state every task keeps there.

use backoffice::db::{DbError, Row, Value};
use backoffice::{Db, ledger};

use super::slots::{Spec, SpecError};

/// The task's name, and its name in the retry ledger.
pub const TASK: &str = "schedules";

/// The table, in SQL both stores take (`BIGINT` is an integer column in
/// SQLite too).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bo_schedule(
  name TEXT PRIMARY KEY,
  timing TEXT NOT NULL,
  spec TEXT NOT NULL,
  zone TEXT NOT NULL DEFAULT 'UTC',
  command TEXT,
  event TEXT,
  catch_up TEXT NOT NULL DEFAULT 'once',
  paused BIGINT NOT NULL DEFAULT 0,
  created BIGINT NOT NULL,
  run_now BIGINT NOT NULL DEFAULT 0,
  claimed BIGINT,
  claimed_manual BIGINT NOT NULL DEFAULT 0,
  missed BIGINT NOT NULL DEFAULT 0,
  last_missed BIGINT NOT NULL DEFAULT 0,
  due_at BIGINT
);
CREATE INDEX IF NOT EXISTS bo_schedule_due ON bo_schedule(due_at);";

/// What a schedule does at its slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A shell command, run like a hook.
    Command(String),
    /// An event of this kind, published (alerts, hooks and webhooks react).
    Event(String),
}

/// What happens to slots missed while nothing ran (no request, no cron).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// One run covers every missed slot.
    Once,
    /// Missed slots are skipped; the schedule waits for its next slot.
    Skip,
}

impl CatchUp {
    /// `once` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::Skip => "skip",
        }
    }

    /// Reads `once` or `skip`.
    pub fn parse(s: &str) -> Option<CatchUp> {
        match s {
            "once" => Some(CatchUp::Once),
            "skip" => Some(CatchUp::Skip),
            _ => None,
        }
    }
}

/// The timing as given: a pattern and zone, or an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timing {
    /// `--cron PATTERN [--tz ZONE]`.
    Cron {
        /// Five fields or a nickname.
        pattern: String,
        /// An IANA zone name; `None`: UTC.
        zone: Option<String>,
    },
    /// `--every 15m`.
    Every(String),
}

impl Timing {
    /// Parses and checks it.
    pub fn spec(&self) -> Result<Spec, SpecError> {
        match self {
            Timing::Cron { pattern, zone } => Spec::cron(pattern, zone.as_deref()),
            Timing::Every(text) => Spec::every(text),
        }
    }
}

/// One schedule as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// `cron` or `every`.
    pub timing: String,
    /// The pattern or the interval.
    pub spec: String,
    /// The zone (cron only).
    pub zone: String,
    /// What it does; `None` for a row with neither or both set by hand.
    pub action: Option<Action>,
    /// The catch-up rule (`once` for an unknown stored value).
    pub catch_up: CatchUp,
    /// Paused: its slots pass without runs.
    pub paused: bool,
    /// When it was added (slots before this never run).
    pub created: i64,
    /// `schedule run NAME` asked for a run.
    pub run_now: bool,
    /// A slot whose command started and did not finish (yet).
    pub claimed: Option<i64>,
    /// The claim is a manual run's (`schedule run`).
    pub claimed_manual: bool,
    /// Slots that got no run of their own, in all.
    pub missed: i64,
    /// Slots the latest catch-up covered or skipped.
    pub last_missed: i64,
    /// When it next needs a worker, as last planned (`None`: never).
    pub due_at: Option<i64>,
}

impl Schedule {
    /// The timing, parsed.
    pub fn parsed(&self) -> Result<Spec, SpecError> {
        match self.timing.as_str() {
            "cron" => Spec::cron(&self.spec, Some(&self.zone)),
            _ => Spec::every(&self.spec),
        }
    }
}

/// Why a schedule could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// SQLite refused.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The store refused (PostgreSQL; or a fenced write).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The timing does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A name that is not a short word.
    #[error(
        "bad schedule name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    /// The name is taken.
    #[error("a schedule named {0:?} exists already (see `backoffice schedule list`)")]
    Exists(String),
    /// No schedule of that name.
    #[error("no schedule named {0:?} (see `backoffice schedule list`)")]
    NoSuch(String),
    /// An empty command.
    #[error("a schedule's command must not be empty")]
    EmptyCommand,
    /// An event kind the event log would refuse.
    #[error("bad event kind {0:?}: use a lowercase word (letters, digits, '.', '_', '-')")]
    BadKind(String),
}

/// True for a name `schedule` commands accept.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_kind(kind: &str) -> bool {
    (1..=64).contains(&kind.len())
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Creates the table (and, on SQLite, the ledger) if missing, and on
/// SQLite has writes to it lower the due summary. Idempotent. On
/// PostgreSQL the ledger is part of every schema and no summary is kept.
pub fn install(db: Db<'_>) -> Result<(), DbError> {
    match db.sqlite() {
        Some(conn) => {
            conn.execute_batch(SCHEMA)?;
            ledger::install(conn)?;
            backoffice::due::watch(conn, "bo_schedule")?;
        }
        None => {
            // One statement at a time: the index after its table.
            for stmt in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                db.execute(stmt, &[])?;
            }
        }
    }
    Ok(())
}

/// True if the table exists (nothing was ever scheduled otherwise).
pub fn installed(db: Db<'_>) -> Result<bool, DbError> {
    match db.sqlite() {
        Some(conn) => Ok(conn.table_exists(None, "bo_schedule")?),
        None => Ok(db
            .query_opt("SELECT 1 WHERE to_regclass('bo_schedule') IS NOT NULL", &[])?
            .is_some()),
    }
}

/// Adds a schedule at `now` (its first slot is the first after `now`).
pub fn add<'a>(
    db: impl Into<Db<'a>>,
    name: &str,
    timing: &Timing,
    action: &Action,
    catch_up: CatchUp,
    now: i64,
) -> Result<Schedule, ScheduleError> {
    let db = db.into();
    if !valid_name(name) {
        return Err(ScheduleError::BadName(name.to_owned()));
    }
    let spec = timing.spec()?;
    let (command, event) = match action {
        Action::Command(c) if c.trim().is_empty() => return Err(ScheduleError::EmptyCommand),
        Action::Command(c) => (Some(c.as_str()), None),
        Action::Event(k) if !valid_kind(k) => return Err(ScheduleError::BadKind(k.clone())),
        Action::Event(k) => (None, Some(k.as_str())),
    };
    let (kind, text, zone) = match (timing, &spec) {
        (Timing::Cron { pattern, .. }, Spec::Cron(c)) => (
            "cron",
            pattern.split_whitespace().collect::<Vec<_>>().join(" "),
            c.zone_name().to_owned(),
        ),
        (_, Spec::Every { secs }) => ("every", super::slots::interval_text(*secs), "UTC".into()),
        _ => unreachable!("a timing parses to its own kind"),
    };
    if !installed(db)? {
        install(db)?;
    }
    db.write(None, |db| -> Result<(), ScheduleError> {
        lock(db)?;
        if db
            .query_opt("SELECT 1 FROM bo_schedule WHERE name = ?1", &[name.into()])?
            .is_some()
        {
            return Err(ScheduleError::Exists(name.to_owned()));
        }
        db.execute(
            "INSERT INTO bo_schedule(name, timing, spec, zone, command, event, catch_up, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            &[
                name.into(),
                kind.into(),
                text.into(),
                zone.into(),
                command.into(),
                event.into(),
                catch_up.as_str().into(),
                now.into(),
            ],
        )?;
        // A fresh ledger entry: nothing handled yet (cursor 0 means "since
        // it was added"), and any entry a removed namesake left is gone.
        ledger::remove(db, TASK, name)?;
        if let Some(s) = get(db, name)? {
            replan(db, &s, now)?;
        }
        Ok(())
    })?;
    get(db, name)?.ok_or_else(|| ScheduleError::NoSuch(name.to_owned()))
}

/// On PostgreSQL, writers of the schedules take turns (as `BEGIN
/// IMMEDIATE` makes them on SQLite).
fn lock(db: Db<'_>) -> Result<(), DbError> {
    if db.sqlite().is_none() {
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('backoffice-schedules:' || current_schema()))",
            &[],
        )?;
    }
    Ok(())
}

const COLUMNS: &str = "name, timing, spec, zone, command, event, catch_up, paused, created,
                       run_now, claimed, claimed_manual, missed, last_missed, due_at";

fn from_row(r: &Row) -> Result<Schedule, DbError> {
    let action = match (r.opt_text(4)?, r.opt_text(5)?) {
        (Some(c), None) => Some(Action::Command(c)),
        (None, Some(k)) => Some(Action::Event(k)),
        _ => None,
    };
    Ok(Schedule {
        name: r.text(0)?,
        timing: r.text(1)?,
        spec: r.text(2)?,
        zone: r.text(3)?,
        action,
        catch_up: CatchUp::parse(&r.text(6)?).unwrap_or(CatchUp::Once),
        paused: r.int(7)? != 0,
        created: r.int(8)?,
        run_now: r.int(9)? != 0,
        claimed: r.opt_int(10)?,
        claimed_manual: r.int(11)? != 0,
        missed: r.int(12)?,
        last_missed: r.int(13)?,
        due_at: r.opt_int(14)?,
    })
}

/// Every schedule, by name; none when the table does not exist.
pub fn all<'a>(db: impl Into<Db<'a>>) -> Result<Vec<Schedule>, DbError> {
    let db = db.into();
    if !installed(db)? {
        return Ok(Vec::new());
    }
    db.query(
        &format!("SELECT {COLUMNS} FROM bo_schedule ORDER BY name"),
        &[],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// One schedule.
pub fn get<'a>(db: impl Into<Db<'a>>, name: &str) -> Result<Option<Schedule>, DbError> {
    let db = db.into();
    if !installed(db)? {
        return Ok(None);
    }
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM bo_schedule WHERE name = ?1"),
        &[name.into()],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

fn change(db: Db<'_>, name: &str, sql: &str) -> Result<(), ScheduleError> {
    if !installed(db)? {
        return Err(ScheduleError::NoSuch(name.to_owned()));
    }
    db.write(None, |db| -> Result<(), ScheduleError> {
        lock(db)?;
        if db.execute(sql, &[name.into()])? == 0 {
            return Err(ScheduleError::NoSuch(name.to_owned()));
        }
        if let Some(s) = get(db, name)? {
            replan(db, &s, backoffice::clock::now())?;
        }
        Ok(())
    })
}

/// When a plan needs a worker: `None` for never.
pub fn due_at(plan: &super::task::Plan, now: i64) -> Option<i64> {
    use super::task::Plan;
    match plan {
        Plan::Wait(at) => *at,
        Plan::Broken(_) => None,
        Plan::Killed { .. } | Plan::Run { .. } | Plan::Skip { .. } => Some(now),
    }
}

/// Works out `due_at` for one schedule, as read, from its row and ledger
/// entry, and stores it if it changed. Inside the caller's write.
pub fn replan(db: Db<'_>, s: &Schedule, now: i64) -> Result<(), DbError> {
    let e = ledger::get(db, TASK, &s.name)?;
    let at = due_at(&super::task::plan(s, e.as_ref(), now), now);
    if s.due_at != at {
        db.execute(
            "UPDATE bo_schedule SET due_at = ?2 WHERE name = ?1",
            &[s.name.as_str().into(), at.map_or(Value::Null, Value::Int)],
        )?;
    }
    Ok(())
}

/// When the earliest schedule needs a worker (`None`: none does), read
/// from the stored plans; `None` also without the table.
pub fn earliest_due(db: Db<'_>) -> Result<Option<i64>, DbError> {
    let Some(conn) = db.sqlite() else {
        if !installed(db)? {
            return Ok(None);
        }
        return db
            .query_opt("SELECT CAST(min(due_at) AS BIGINT) FROM bo_schedule", &[])?
            .map_or(Ok(None), |r| r.opt_int(0));
    };
    // SQLite: the after-request check's path, on a kept statement.
    match conn
        .prepare_cached("SELECT min(due_at) FROM bo_schedule")
        .and_then(|mut st| st.query_row([], |r| r.get::<_, Option<i64>>(0)))
    {
        Ok(at) => Ok(at),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes a schedule and its ledger entry. A run in progress finishes;
/// its outcome is not recorded (there is nothing to record it on).
pub fn remove<'a>(db: impl Into<Db<'a>>, name: &str) -> Result<(), ScheduleError> {
    let db = db.into();
    if !installed(db)? {
        return Err(ScheduleError::NoSuch(name.to_owned()));
    }
    db.write(None, |db| -> Result<(), ScheduleError> {
        lock(db)?;
        if db.execute("DELETE FROM bo_schedule WHERE name = ?1", &[name.into()])? == 0 {
            return Err(ScheduleError::NoSuch(name.to_owned()));
        }
        ledger::remove(db, TASK, name)?;
        Ok(())
    })
}

/// Pauses (or resumes) a schedule. Slots passing while paused are missed
/// when it resumes, by its catch-up rule.
pub fn set_paused<'a>(
    db: impl Into<Db<'a>>,
    name: &str,
    paused: bool,
) -> Result<(), ScheduleError> {
    change(
        db.into(),
        name,
        if paused {
            "UPDATE bo_schedule SET paused = 1 WHERE name = ?1"
        } else {
            "UPDATE bo_schedule SET paused = 0 WHERE name = ?1"
        },
    )
}

/// Asks for one run now (paused or not), without using up a slot.
pub fn request_run<'a>(db: impl Into<Db<'a>>, name: &str) -> Result<(), ScheduleError> {
    change(
        db.into(),
        name,
        "UPDATE bo_schedule SET run_now = 1 WHERE name = ?1",
    )
}
