//! Maintenance: the `maintenance` task keeps a live SQLite database healthy.
//!
//! Five steps, each on its own schedule (settings, 0 turns a step off):
//!
//! * **optimize**: `PRAGMA optimize` every `maintenance-optimize-interval`
//!   seconds, so the query planner's statistics follow the data.
//! * **checkpoint**: in WAL mode, when the `-wal` file is larger than
//!   `maintenance-wal-limit` bytes, `PRAGMA wal_checkpoint(TRUNCATE)`: the
//!   WAL is copied into the database and cut to zero bytes (SQLite's own
//!   automatic checkpoints never shrink the file, and a long reader can let
//!   it grow without bound). Looked at every [`WATCH_EVERY`] seconds in WAL
//!   mode, daily otherwise (in case the mode changes).
//! * **vacuum**: when `PRAGMA auto_vacuum` is INCREMENTAL and the free pages
//!   are more than `maintenance-vacuum-share` percent of the file,
//!   `PRAGMA incremental_vacuum` in steps of [`VACUUM_STEP`] pages, each its
//!   own short write transaction, at most [`VACUUM_MAX_PER_RUN`] pages or
//!   [`VACUUM_BUDGET`] per run. Looked at with the checkpoint.
//! * **check**: `PRAGMA quick_check` every `maintenance-check-interval`
//!   seconds. A failure is kept (in the state row) and reported by `status`
//!   until a later check passes, and mailed to `email-admin` through the
//!   outbox (sent by the `alerts` task) when email is set up.
//! * **retention**: once a day, sent outbox messages older than
//!   `maintenance-retention-days` are deleted ([`outbox::purge`]); queued and
//!   dead ones are kept. The other tables the tasks keep are bounded (one
//!   row per hook or endpoint) and are left alone; events (`bo_event`) are
//!   the engine's, deleted (if at all) by its own retention
//!   (`event-retention-days`, see [`backoffice::events`]), never here.
//!
//! # Schedule and state
//!
//! The `config` row [`STATE_ROW`] holds, as JSON, the last result of each
//! step (when, how long, what it did, whether it failed), the journal and
//! vacuum modes seen, and the last `quick_check` failure. [`Task::due`] reads
//! it and the settings in one statement — no file is looked at on the
//! request path — and answers the earliest next step. A step that failed
//! (the database was locked, say) is retried after at most [`RETRY_AFTER`]
//! seconds; a failure never stops the other steps.
//!
//! A repository without the state row has nothing due: maintenance starts
//! with the first worker run that happens for any other reason (an event, a
//! `backoffice run` from cron, `backoffice maintain`) and schedules itself
//! from then on, so merely putting the engine in front of a database starts
//! no worker.
//!
//! # A live database
//!
//! The write lock is never held for long: the checkpoint and each vacuum
//! step wait at most [`LOCK_WAIT_MS`] for other connections, so an
//! application's writers are not queued behind maintenance, and a busy
//! database is a retry at the next run. `quick_check` only reads, but it
//! reads the whole file: in rollback-journal mode its read lock keeps
//! writers from committing while it runs (WAL mode has no such problem).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backoffice::settings::{Def, Kind};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::notify::outbox;
use backoffice::{Context, Db, Due, Gauge, Partial, Task, TaskError, TaskStatus};

/// `maintenance-optimize-interval`
pub const OPTIMIZE_INTERVAL: &str = "maintenance-optimize-interval";
/// `maintenance-wal-limit`
pub const WAL_LIMIT: &str = "maintenance-wal-limit";
/// `maintenance-vacuum-share`
pub const VACUUM_SHARE: &str = "maintenance-vacuum-share";
/// `maintenance-check-interval`
pub const CHECK_INTERVAL: &str = "maintenance-check-interval";
/// `maintenance-retention-days`
pub const RETENTION_DAYS: &str = "maintenance-retention-days";
/// `email-admin`
pub const EMAIL_ADMIN: &str = "email-admin";

/// The settings this task reads (see [`backoffice::settings`]).
pub const SETTINGS: &[Def] = &[
    Def {
        name: EMAIL_ADMIN,
        kind: Kind::Custom(crate::notify::address::setting),
        default: "",
        help: "The administrator's address: a failed database check is mailed here (through the outbox). Empty: only reported by `status`.",
        secret: false,
    },
    Def {
        name: OPTIMIZE_INTERVAL,
        kind: Kind::Int {
            min: 0,
            max: 31_622_400,
        },
        default: "86400",
        help: "Seconds between runs of `PRAGMA optimize`; 0: never.",
        secret: false,
    },
    Def {
        name: WAL_LIMIT,
        kind: Kind::Int {
            min: 0,
            max: 1 << 40,
        },
        default: "67108864",
        help: "In WAL mode, checkpoint and truncate the WAL (`wal_checkpoint(TRUNCATE)`) when its file is larger than this many bytes (looked at every 10 minutes); 0: never.",
        secret: false,
    },
    Def {
        name: VACUUM_SHARE,
        kind: Kind::Int { min: 0, max: 100 },
        default: "25",
        help: "With auto_vacuum=INCREMENTAL, run `PRAGMA incremental_vacuum` (in bounded steps) when free pages are more than this percentage of the file; 0: never.",
        secret: false,
    },
    Def {
        name: CHECK_INTERVAL,
        kind: Kind::Int {
            min: 0,
            max: 31_622_400,
        },
        default: "604800",
        help: "Seconds between runs of `PRAGMA quick_check`; a failure is reported by `status` and mailed to email-admin; 0: never.",
        secret: false,
    },
    Def {
        name: RETENTION_DAYS,
        kind: Kind::Int {
            min: 0,
            max: 36_500,
        },
        default: "30",
        help: "Sent outbox messages older than this many days are deleted once a day (queued and dead ones are kept); 0: never.",
        secret: false,
    },
];
/// The `config` row holding the [`State`] (JSON).
pub const STATE_ROW: &str = "maintenance-state";

/// Seconds between looks at the WAL size and the free list, in WAL mode
/// (resp. with incremental auto-vacuum).
pub const WATCH_EVERY: i64 = 600;
/// Seconds between looks when the database is not in that mode.
pub(crate) const IDLE_WATCH: i64 = 86_400;
/// Seconds between retention runs.
pub(crate) const RETENTION_EVERY: i64 = 86_400;
/// Longest wait before a failed step is tried again, seconds.
pub const RETRY_AFTER: i64 = 600;
/// Pages freed per `incremental_vacuum` transaction.
pub const VACUUM_STEP: i64 = 1000;
/// Most pages freed in one run.
pub const VACUUM_MAX_PER_RUN: i64 = 100_000;
/// Longest time spent vacuuming in one run.
pub const VACUUM_BUDGET: Duration = Duration::from_secs(2);
/// Longest wait for another connection's lock during the checkpoint and
/// each vacuum step, milliseconds.
pub const LOCK_WAIT_MS: u64 = 1000;
/// Most problems `quick_check` is asked for.
const CHECK_MAX_ERRORS: i64 = 100;

/// One maintenance step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// `PRAGMA optimize`.
    Optimize,
    /// `PRAGMA wal_checkpoint(TRUNCATE)` past the WAL limit.
    Checkpoint,
    /// `PRAGMA incremental_vacuum` past the free share.
    Vacuum,
    /// `PRAGMA quick_check`.
    Check,
    /// Deleting old sent outbox messages.
    Retention,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Step; 5] = [
        Step::Optimize,
        Step::Checkpoint,
        Step::Vacuum,
        Step::Check,
        Step::Retention,
    ];

    /// The step's name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Optimize => "optimize",
            Step::Checkpoint => "checkpoint",
            Step::Vacuum => "vacuum",
            Step::Check => "check",
            Step::Retention => "retention",
        }
    }

    /// The setting that turns it off (with 0).
    pub fn setting(self) -> &'static str {
        match self {
            Step::Optimize => OPTIMIZE_INTERVAL,
            Step::Checkpoint => WAL_LIMIT,
            Step::Vacuum => VACUUM_SHARE,
            Step::Check => CHECK_INTERVAL,
            Step::Retention => RETENTION_DAYS,
        }
    }
}

/// The maintenance settings, validated (a bad stored value falls back to
/// the default and is listed in `problems`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// `maintenance-optimize-interval`, seconds; 0: off.
    pub optimize_interval: i64,
    /// `maintenance-wal-limit`, bytes; 0: off.
    pub wal_limit: i64,
    /// `maintenance-vacuum-share`, percent; 0: off.
    pub vacuum_share: i64,
    /// `maintenance-check-interval`, seconds; 0: off.
    pub check_interval: i64,
    /// `maintenance-retention-days`; 0: off.
    pub retention_days: i64,
    /// Stored values that did not parse.
    pub problems: Vec<String>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::from_values([None, None, None, None, None])
    }
}

fn int_setting(name: &str, stored: Option<&str>, problems: &mut Vec<String>) -> i64 {
    let def = backoffice::settings::find(SETTINGS, name).expect("a maintenance setting");
    let v = match stored.map(|v| def.validate(v)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            problems.push(format!("{e}; using the default ({})", def.default));
            def.default.to_owned()
        }
        None => def.default.to_owned(),
    };
    v.parse().unwrap_or(0)
}

impl Schedule {
    /// From the stored values of the five settings, in [`Step::ALL`] order.
    pub fn from_values(v: [Option<&str>; 5]) -> Schedule {
        let mut problems = Vec::new();
        let mut get = |i: usize| int_setting(Step::ALL[i].setting(), v[i], &mut problems);
        let (a, b, c, d, e) = (get(0), get(1), get(2), get(3), get(4));
        Schedule {
            optimize_interval: a,
            wal_limit: b,
            vacuum_share: c,
            check_interval: d,
            retention_days: e,
            problems,
        }
    }

    /// Reads the settings.
    pub fn load(conn: &Connection) -> rusqlite::Result<Schedule> {
        let mut v: [Option<String>; 5] = Default::default();
        for (i, s) in Step::ALL.iter().enumerate() {
            v[i] = backoffice::repo::config_get(conn, s.setting())?;
        }
        Ok(Schedule::from_values([
            v[0].as_deref(),
            v[1].as_deref(),
            v[2].as_deref(),
            v[3].as_deref(),
            v[4].as_deref(),
        ]))
    }

    /// How often a step runs, in seconds; `None`: it is off.
    pub fn period(&self, step: Step, state: &State) -> Option<i64> {
        let on = |setting: i64, every: i64| (setting > 0).then_some(every);
        match step {
            Step::Optimize => on(self.optimize_interval, self.optimize_interval),
            Step::Checkpoint => on(
                self.wal_limit,
                if state.wal { WATCH_EVERY } else { IDLE_WATCH },
            ),
            Step::Vacuum => on(
                self.vacuum_share,
                if state.incremental {
                    WATCH_EVERY
                } else {
                    IDLE_WATCH
                },
            ),
            Step::Check => on(self.check_interval, self.check_interval),
            Step::Retention => on(self.retention_days, RETENTION_EVERY),
        }
    }

    /// When a step is next due; `None`: it is off. A step never run is due
    /// at once; a failed one after at most [`RETRY_AFTER`].
    pub fn next(&self, step: Step, state: &State) -> Option<i64> {
        let period = self.period(step, state)?;
        Some(match state.record(step) {
            None => i64::MIN,
            Some(r) if !r.ok => r.at.saturating_add(period.min(RETRY_AFTER)),
            Some(r) => r.at.saturating_add(period),
        })
    }

    /// When the task is next due, over all steps.
    pub fn due(&self, state: &State, now: i64) -> Due {
        Step::ALL
            .iter()
            .filter_map(|s| self.next(*s, state))
            .min()
            .map_or(Due::Never, |t| if t <= now { Due::Now } else { Due::At(t) })
    }
}

/// The last result of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time it ran.
    pub at: i64,
    /// False if it failed (and will be retried).
    pub ok: bool,
    /// What it did, or why it failed.
    pub text: String,
    /// How long it took, milliseconds.
    pub ms: u64,
}

/// A `quick_check` failure, kept until a check passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckFailure {
    /// When the check ran.
    pub at: i64,
    /// What it reported (at most 100 lines).
    pub lines: Vec<String>,
}

/// What the [`STATE_ROW`] holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Last `PRAGMA optimize`.
    pub optimize: Option<Record>,
    /// Last look at the WAL.
    pub checkpoint: Option<Record>,
    /// Last look at the free list.
    pub vacuum: Option<Record>,
    /// Last `PRAGMA quick_check`.
    pub check: Option<Record>,
    /// Last retention run.
    pub retention: Option<Record>,
    /// The database was in WAL mode at the last look.
    pub wal: bool,
    /// `auto_vacuum` was INCREMENTAL at the last look.
    pub incremental: bool,
    /// The last `quick_check` failure, if no check passed since.
    pub check_failure: Option<CheckFailure>,
}

impl State {
    /// A step's last result.
    pub fn record(&self, step: Step) -> Option<&Record> {
        match step {
            Step::Optimize => self.optimize.as_ref(),
            Step::Checkpoint => self.checkpoint.as_ref(),
            Step::Vacuum => self.vacuum.as_ref(),
            Step::Check => self.check.as_ref(),
            Step::Retention => self.retention.as_ref(),
        }
    }

    fn record_mut(&mut self, step: Step) -> &mut Option<Record> {
        match step {
            Step::Optimize => &mut self.optimize,
            Step::Checkpoint => &mut self.checkpoint,
            Step::Vacuum => &mut self.vacuum,
            Step::Check => &mut self.check,
            Step::Retention => &mut self.retention,
        }
    }

    /// Parses the stored row; a malformed one reads as a fresh state.
    pub fn parse(text: Option<&str>) -> State {
        text.and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }

    /// Reads the state row (`None` if maintenance never ran).
    pub fn load(conn: &Connection) -> rusqlite::Result<Option<State>> {
        Ok(backoffice::repo::config_get(conn, STATE_ROW)?.map(|t| State::parse(Some(&t))))
    }
}

/// What one step did in one call of [`maintain`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// True if it ran (false: off or not due).
    pub ran: bool,
    /// False if it failed (it is retried later).
    pub ok: bool,
    /// True if it changed something (optimized, truncated, freed, checked,
    /// deleted): these count as the run's items.
    pub did: bool,
    /// True if it found a problem an operator must look at (a failed check).
    pub alarm: bool,
    /// What it did, in words.
    pub text: String,
    /// How long it took, milliseconds.
    pub ms: u64,
}

/// The result of one step's work.
struct Done {
    did: bool,
    alarm: bool,
    text: String,
}

impl Done {
    fn did(text: String) -> Done {
        Done {
            did: true,
            alarm: false,
            text,
        }
    }
    fn nothing(text: String) -> Done {
        Done {
            did: false,
            alarm: false,
            text,
        }
    }
}

/// Bytes in words: `812 B`, `3.4 KiB`, `80.0 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The main database file of a connection, if it is a file.
fn db_file(conn: &Connection, repo: &Path) -> PathBuf {
    match conn.path() {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo.to_owned(),
    }
}

/// The size of the `-wal` file (0 if there is none).
pub fn wal_bytes(db: &Path) -> u64 {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
}

/// Runs a statement to its end, ignoring any rows.
fn exec_all(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut s = conn.prepare(sql)?;
    let mut rows = s.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn pragma_i64(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
}

/// Sets a short busy timeout for the life of the guard, then restores the
/// connection's own.
struct ShortWait<'a> {
    conn: &'a Connection,
    old_ms: i64,
}

impl<'a> ShortWait<'a> {
    fn new(conn: &'a Connection) -> rusqlite::Result<ShortWait<'a>> {
        let old_ms = pragma_i64(conn, "busy_timeout")?;
        conn.busy_timeout(Duration::from_millis(LOCK_WAIT_MS))?;
        Ok(ShortWait { conn, old_ms })
    }
}

impl Drop for ShortWait<'_> {
    fn drop(&mut self) {
        let _ = self
            .conn
            .busy_timeout(Duration::from_millis(self.old_ms.max(0) as u64));
    }
}

/// Below this many pages a database that was never analyzed is not:
/// statistics of tables that fit in a few pages change no query plan, and
/// once they exist every connection that opens the file reads them (for a
/// small repository a quarter of an idle sweep's time, measured). A
/// database that has statistics keeps them fresh whatever its size.
pub const OPTIMIZE_MIN_PAGES: i64 = 64;

fn optimize(conn: &Connection) -> rusqlite::Result<Done> {
    let pages = pragma_i64(conn, "page_count")?;
    if pages < OPTIMIZE_MIN_PAGES && !conn.table_exists(None, "sqlite_stat1")? {
        return Ok(Done::nothing(format!(
            "{pages} pages, never analyzed: too small for statistics to matter"
        )));
    }
    exec_all(conn, "PRAGMA optimize")?;
    Ok(Done::did("optimized".into()))
}

fn checkpoint(
    conn: &Connection,
    db: &Path,
    limit: i64,
    all: bool,
    state: &mut State,
) -> rusqlite::Result<Done> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    state.wal = mode.eq_ignore_ascii_case("wal");
    if !state.wal {
        return Ok(Done::nothing(format!(
            "not in WAL mode (journal_mode {mode})"
        )));
    }
    let before = wal_bytes(db);
    if before == 0 || (!all && before <= limit as u64) {
        return Ok(Done::nothing(format!(
            "WAL {}, within the limit of {}",
            human_bytes(before),
            human_bytes(limit as u64)
        )));
    }
    let (busy, _log, _done): (i64, i64, i64) = {
        let _wait = ShortWait::new(conn)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
    };
    let after = wal_bytes(db);
    let text = format!("WAL {} → {}", human_bytes(before), human_bytes(after));
    if busy != 0 {
        // Readers or a writer kept it from finishing: not an error of the
        // database, but the WAL is still large; try again soon.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!(
                "{text}: other connections kept the checkpoint from finishing"
            )),
        ));
    }
    Ok(Done::did(text))
}

fn vacuum(conn: &Connection, share: i64, all: bool, state: &mut State) -> rusqlite::Result<Done> {
    let mode = pragma_i64(conn, "auto_vacuum")?;
    state.incremental = mode == 2;
    let free0 = pragma_i64(conn, "freelist_count")?;
    let pages0 = pragma_i64(conn, "page_count")?;
    let pct = |f: i64, p: i64| {
        if p > 0 {
            f as f64 * 100.0 / p as f64
        } else {
            0.0
        }
    };
    let summary = |f: i64, p: i64| format!("{f} free of {p} pages ({:.1}%)", pct(f, p));
    if !state.incremental {
        let name = if mode == 1 { "FULL" } else { "NONE" };
        return Ok(Done::nothing(format!(
            "auto_vacuum is {name}, not INCREMENTAL: {}",
            summary(free0, pages0)
        )));
    }
    if free0 == 0 || (!all && free0 * 100 <= share * pages0) {
        return Ok(Done::nothing(format!(
            "{}, within {share}%",
            summary(free0, pages0)
        )));
    }
    let page_size = pragma_i64(conn, "page_size")?;
    let started = Instant::now();
    let _wait = ShortWait::new(conn)?;
    let mut free = free0;
    let mut freed = 0;
    while free > 0 && freed < VACUUM_MAX_PER_RUN && started.elapsed() < VACUUM_BUDGET {
        let n = VACUUM_STEP.min(VACUUM_MAX_PER_RUN - freed);
        // Its own transaction: the write lock is held for one step only.
        exec_all(conn, &format!("PRAGMA incremental_vacuum({n})"))?;
        let now_free = pragma_i64(conn, "freelist_count")?;
        if now_free >= free {
            break;
        }
        freed += free - now_free;
        free = now_free;
        // Let the application's writers in between steps.
        std::thread::sleep(Duration::from_millis(2));
    }
    let pages = pragma_i64(conn, "page_count")?;
    Ok(Done::did(format!(
        "freed {freed} pages ({}); {} left",
        human_bytes((freed * page_size).max(0) as u64),
        summary(free, pages)
    )))
}

/// Runs `PRAGMA quick_check`; `Ok(lines)` with the problems (empty: ok).
/// A database too damaged to read is a failure too, not an error.
pub fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let r = conn
        .prepare(&format!("PRAGMA quick_check({CHECK_MAX_ERRORS})"))
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    match r {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(Vec::new()),
        Ok(lines) => Ok(lines),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Ok(vec![msg.unwrap_or_else(|| e.to_string())])
        }
        Err(e) => Err(e),
    }
}

/// Queues the admin's email about a failed check, if email is set up.
/// Returns what happened, in words.
fn mail_admin(conn: &Connection, repo: &Path, lines: &[String], now: i64) -> String {
    let admin = backoffice::repo::config_get(conn, EMAIL_ADMIN)
        .ok()
        .flatten()
        .map(|a| a.trim().to_owned())
        .unwrap_or_default();
    if admin.is_empty() {
        return "not mailed: email-admin is not set".into();
    }
    match crate::notify::config::EmailConfig::load(conn) {
        Ok(c) if c.method == crate::notify::config::Method::Off => {
            return "not mailed: email-send-method is off".into();
        }
        Ok(_) => {}
        Err(p) => return format!("not mailed: {}", p.join("; ")),
    }
    let project = backoffice::repo::project_name(conn, repo);
    let mut body = format!(
        "PRAGMA quick_check found problems in {} ({project}) at {}:\n\n",
        repo.display(),
        backoffice::clock::format_utc(now)
    );
    for l in lines.iter().take(20) {
        body.push_str("  ");
        body.push_str(l);
        body.push('\n');
    }
    if lines.len() > 20 {
        body.push_str(&format!("  [... {} more]\n", lines.len() - 20));
    }
    body.push_str(
        "\nThe database may be damaged. Keep a copy of the file before anything\n\
         else; `sqlite3 FILE .recover` can often save the data\n\
         (https://sqlite.org/recovery.html).\n\n-- \n\
         Sent by the backoffice maintenance task to email-admin.\n",
    );
    let subject = format!("Database check failed: {project}");
    let queued = crate::notify::install(conn).and_then(|()| {
        outbox::queue(
            conn,
            &outbox::New {
                subscriberid: None,
                address: &admin,
                kind: "admin",
                subject: &subject,
                body: &body,
                code: None,
            },
            now,
        )
    });
    match queued {
        Ok(id) => format!("mail to {admin} queued (outbox #{id})"),
        Err(e) => format!("not mailed: cannot queue it: {e}"),
    }
}

fn check(conn: &Connection, repo: &Path, now: i64, state: &mut State) -> rusqlite::Result<Done> {
    let lines = quick_check(conn)?;
    if lines.is_empty() {
        state.check_failure = None;
        return Ok(Done::did("ok".into()));
    }
    let mailed = mail_admin(conn, repo, &lines, now);
    let text = format!(
        "FAILED, {} problem{}: {}; {mailed}",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        lines[0]
    );
    state.check_failure = Some(CheckFailure { at: now, lines });
    Ok(Done {
        did: true,
        alarm: true,
        text,
    })
}

fn retention(conn: &Connection, days: i64, now: i64) -> rusqlite::Result<Done> {
    let n = outbox::purge(conn, now - days * 86_400, false)?;
    Ok(Done::did(format!(
        "deleted {n} sent message{} older than {days} days",
        if n == 1 { "" } else { "s" }
    )))
}

/// Runs the maintenance steps that are due at `now` (every step not turned
/// off, ignoring schedules and thresholds, if `all`), records their results
/// in the state row, and returns what each step did. A failed step is
/// reported in its [`StepReport`]; `Err` only if the state cannot be read
/// or saved.
pub fn maintain(
    conn: &Connection,
    repo: &Path,
    now: i64,
    all: bool,
) -> rusqlite::Result<Vec<StepReport>> {
    maintain_with(conn, repo, now, all, &mut |_| {})
}

/// [`maintain`], calling `starting` with each step as it starts, so a
/// command on a terminal can say which step it is in while a long one
/// (`quick_check` on a large file) runs.
pub fn maintain_with(
    conn: &Connection,
    repo: &Path,
    now: i64,
    all: bool,
    starting: &mut dyn FnMut(Step),
) -> rusqlite::Result<Vec<StepReport>> {
    let sched = Schedule::load(conn)?;
    let mut state = State::load(conn)?.unwrap_or_default();
    let db = db_file(conn, repo);
    let mut out = Vec::with_capacity(Step::ALL.len());
    for step in Step::ALL {
        let Some(next) = sched.next(step, &state) else {
            out.push(StepReport {
                step,
                ran: false,
                ok: true,
                did: false,
                alarm: false,
                text: format!("off ({} is 0)", step.setting()),
                ms: 0,
            });
            continue;
        };
        if !all && next > now {
            out.push(StepReport {
                step,
                ran: false,
                ok: true,
                did: false,
                alarm: false,
                text: format!("not due; next {}", backoffice::clock::relative(next, now)),
                ms: 0,
            });
            continue;
        }
        starting(step);
        let started = Instant::now();
        let r = match step {
            Step::Optimize => optimize(conn),
            Step::Checkpoint => checkpoint(conn, &db, sched.wal_limit, all, &mut state),
            Step::Vacuum => vacuum(conn, sched.vacuum_share, all, &mut state),
            Step::Check => check(conn, repo, now, &mut state),
            Step::Retention => retention(conn, sched.retention_days, now),
        };
        let ms = started.elapsed().as_millis() as u64;
        let report = match r {
            Ok(d) => StepReport {
                step,
                ran: true,
                ok: true,
                did: d.did,
                alarm: d.alarm,
                text: format!("{} in {ms} ms", d.text),
                ms,
            },
            Err(e) => StepReport {
                step,
                ran: true,
                ok: false,
                did: false,
                alarm: false,
                text: format!("failed after {ms} ms: {e}"),
                ms,
            },
        };
        if !report.ok || report.alarm {
            tracing::warn!(step = step.name(), "{}", report.text);
        } else {
            tracing::info!(step = step.name(), "{}", report.text);
        }
        *state.record_mut(step) = Some(Record {
            at: now,
            ok: report.ok,
            text: report.text.clone(),
            ms,
        });
        out.push(report);
    }
    let text = serde_json::to_string(&state).expect("JSON");
    // The engine's own write: not an application change for replication.
    backoffice::writes::own_write(conn, |c| backoffice::repo::config_set(c, STATE_ROW, &text))?;
    Ok(out)
}

/// The maintenance task (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Maintenance;

impl Task for Maintenance {
    fn name(&self) -> &str {
        "maintenance"
    }

    /// What makes it due: its settings and state, all `config` rows (see `backoffice::due`).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn settings(&self) -> &'static [backoffice::settings::Def] {
        SETTINGS
    }

    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError> {
        let Some(conn) = db.sqlite() else {
            // SQLite only: nothing of this task's is ever due elsewhere.
            return Ok(Due::Never);
        };
        let (values, state): ([Option<String>; 5], Option<String>) = conn
            .prepare_cached(
                "SELECT (SELECT value FROM config WHERE name = ?1),
                        (SELECT value FROM config WHERE name = ?2),
                        (SELECT value FROM config WHERE name = ?3),
                        (SELECT value FROM config WHERE name = ?4),
                        (SELECT value FROM config WHERE name = ?5),
                        (SELECT value FROM config WHERE name = ?6)",
            )?
            .query_row(
                params![
                    OPTIMIZE_INTERVAL,
                    WAL_LIMIT,
                    VACUUM_SHARE,
                    CHECK_INTERVAL,
                    RETENTION_DAYS,
                    STATE_ROW
                ],
                |r| {
                    Ok((
                        [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?],
                        r.get(5)?,
                    ))
                },
            )?;
        // Never run here: it starts with the first worker run (module docs).
        let Some(state) = state else {
            return Ok(Due::Never);
        };
        let sched = Schedule::from_values([
            values[0].as_deref(),
            values[1].as_deref(),
            values[2].as_deref(),
            values[3].as_deref(),
            values[4].as_deref(),
        ]);
        Ok(sched.due(&State::parse(Some(&state)), now))
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let Some(conn) = ctx.db.sqlite() else {
            // SQLite only: `status` says so once; a failure in every run's
            // record would only be noise (maintenance of a PostgreSQL database
            // is PostgreSQL's own business).
            return Ok(0);
        };
        let reports = maintain(conn, ctx.repo, ctx.now, false)?;
        let items = reports.iter().filter(|r| r.did).count() as u64;
        let errors: Vec<String> = reports
            .iter()
            .filter(|r| !r.ok || r.alarm)
            .map(|r| format!("{}: {}", r.step.name(), r.text))
            .collect();
        if errors.is_empty() {
            Ok(items)
        } else {
            Err(Box::new(Partial {
                items,
                error: errors.join("; "),
            }))
        }
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let Some(conn) = db.sqlite() else {
            return TaskStatus::sqlite_only(db);
        };
        let mut st = TaskStatus::default();
        let sched = Schedule::load(conn).unwrap_or_default();
        st.problems.extend(sched.problems.iter().cloned());
        let state = State::load(conn).ok().flatten();
        if state.is_none() {
            st.info.push(
                "not run yet: it starts with the next worker run, or `backoffice maintain`".into(),
            );
        }
        let state = state.unwrap_or_default();
        for step in Step::ALL {
            let name = step.name();
            let Some(next) = sched.next(step, &state) else {
                st.info
                    .push(format!("{name}: off ({} is 0)", step.setting()));
                continue;
            };
            let Some(r) = state.record(step) else {
                continue;
            };
            let when = backoffice::clock::relative(r.at, now);
            let next = backoffice::clock::relative(next.max(now), now);
            if r.ok {
                st.info
                    .push(format!("{name}: {when}: {}; next {next}", r.text));
            } else {
                st.problems.push(format!(
                    "maintenance {name} {when}: {}; retried {next}",
                    r.text
                ));
            }
        }
        if let Some(f) = &state.check_failure {
            st.problems.push(format!(
                "quick_check FAILED {}: {}{}",
                backoffice::clock::relative(f.at, now),
                f.lines.first().map_or("", String::as_str),
                if f.lines.len() > 1 {
                    format!(" (and {} more)", f.lines.len() - 1)
                } else {
                    String::new()
                }
            ));
        }
        let db = match conn.path() {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => None,
        };
        st.gauges.push(Gauge::new(
            "maintenance",
            "wal-bytes",
            db.as_deref().map_or(0, wal_bytes) as i64,
        ));
        st.gauges.push(Gauge::new(
            "maintenance",
            "freelist-pages",
            pragma_i64(conn, "freelist_count").unwrap_or(0),
        ));
        st.gauges.push(Gauge::new(
            "maintenance",
            "page-count",
            pragma_i64(conn, "page_count").unwrap_or(0),
        ));
        st.gauges.push(Gauge::new(
            "maintenance",
            "check-failed",
            i64::from(state.check_failure.is_some()),
        ));
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_219_200;

    fn rec(at: i64, ok: bool) -> Option<Record> {
        Some(Record {
            at,
            ok,
            text: String::new(),
            ms: 0,
        })
    }

    /// A fresh file with a `config` table.
    fn temp_db() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.db");
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        (dir, p, conn)
    }

    fn set(conn: &Connection, name: &str, value: &str) {
        backoffice::repo::config_set(conn, name, value).unwrap();
    }

    fn report(rs: &[StepReport], step: Step) -> &StepReport {
        rs.iter().find(|r| r.step == step).unwrap()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn schedule_arithmetic() {
        let s = Schedule::default();
        assert_eq!(
            (s.optimize_interval, s.wal_limit, s.vacuum_share),
            (86_400, 67_108_864, 25)
        );
        assert_eq!((s.check_interval, s.retention_days), (604_800, 30));
        let mut st = State {
            optimize: rec(T0, true),
            checkpoint: rec(T0, true),
            vacuum: rec(T0, true),
            check: rec(T0 - 100, true),
            retention: rec(T0 + 5, true),
            ..State::default()
        };
        assert_eq!(s.next(Step::Optimize, &st), Some(T0 + 86_400));
        assert_eq!(s.next(Step::Check, &st), Some(T0 - 100 + 604_800));
        assert_eq!(s.next(Step::Retention, &st), Some(T0 + 5 + RETENTION_EVERY));
        // Not in WAL mode: the WAL is looked at daily; in WAL mode, often.
        assert_eq!(s.next(Step::Checkpoint, &st), Some(T0 + IDLE_WATCH));
        st.wal = true;
        assert_eq!(s.next(Step::Checkpoint, &st), Some(T0 + WATCH_EVERY));
        assert_eq!(s.next(Step::Vacuum, &st), Some(T0 + IDLE_WATCH));
        st.incremental = true;
        assert_eq!(s.next(Step::Vacuum, &st), Some(T0 + WATCH_EVERY));
        // The earliest step decides.
        assert_eq!(s.due(&st, T0), Due::At(T0 + WATCH_EVERY));
        assert_eq!(s.due(&st, T0 + WATCH_EVERY), Due::Now);
        // A failed step is retried after at most RETRY_AFTER.
        st.check = rec(T0, false);
        assert_eq!(s.next(Step::Check, &st), Some(T0 + RETRY_AFTER));
        // …but not later than its own period.
        let quick = Schedule::from_values([Some("60"), None, None, None, None]);
        st.optimize = rec(T0, false);
        assert_eq!(quick.next(Step::Optimize, &st), Some(T0 + 60));
        // A step never run is due at once.
        st.retention = None;
        assert_eq!(s.due(&st, T0), Due::Now);
        // 0 turns steps off; all off: never due.
        let off = Schedule::from_values([Some("0"); 5]);
        assert_eq!(off.next(Step::Optimize, &st), None);
        assert_eq!(off.due(&State::default(), T0), Due::Never);
        // A bad stored value falls back to the default and says so.
        let bad = Schedule::from_values([Some("soon"), None, None, None, None]);
        assert_eq!(bad.optimize_interval, 86_400);
        assert!(bad.problems[0].contains(OPTIMIZE_INTERVAL), "{bad:?}");
    }

    #[test]
    fn a_small_database_gets_no_statistics_a_larger_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("r.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v);
             INSERT INTO t(v) VALUES ('a'), ('b');",
        )
        .unwrap();
        let done = optimize(&conn).unwrap();
        assert!(!done.did, "{}", done.text);
        assert!(!conn.table_exists(None, "sqlite_stat1").unwrap());
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t(v) SELECT hex(randomblob(40)) FROM n;",
        )
        .unwrap();
        assert!(pragma_i64(&conn, "page_count").unwrap() >= OPTIMIZE_MIN_PAGES);
        assert!(optimize(&conn).unwrap().did);
        assert!(conn.table_exists(None, "sqlite_stat1").unwrap());
    }

    #[test]
    fn due_starts_never_then_follows_the_state() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        assert_eq!(Maintenance.due((&conn).into(), T0).unwrap(), Due::Never);
        let st = State {
            optimize: rec(T0, true),
            checkpoint: rec(T0, true),
            vacuum: rec(T0, true),
            check: rec(T0, true),
            retention: rec(T0, true),
            ..State::default()
        };
        set(&conn, STATE_ROW, &serde_json::to_string(&st).unwrap());
        assert_eq!(
            Maintenance.due((&conn).into(), T0).unwrap(),
            Due::At(T0 + 86_400),
            "optimize, retention and the daily looks are the earliest"
        );
        set(&conn, OPTIMIZE_INTERVAL, "3600");
        assert_eq!(
            Maintenance.due((&conn).into(), T0).unwrap(),
            Due::At(T0 + 3600)
        );
        for s in Step::ALL {
            set(&conn, s.setting(), "0");
        }
        assert_eq!(Maintenance.due((&conn).into(), T0).unwrap(), Due::Never);
    }

    #[test]
    fn a_wal_past_the_limit_is_truncated() {
        let (_dir, p, conn) = temp_db();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)")
            .unwrap();
        // The application's connection: it never checkpoints, and stays open
        // (the last connection to close would checkpoint by itself).
        let app = Connection::open(&p).unwrap();
        app.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
        for _ in 0..100 {
            app.execute("INSERT INTO t VALUES (randomblob(8000))", [])
                .unwrap();
        }
        let before = wal_bytes(&p);
        assert!(before > 500_000, "{before}");
        // Under the limit: left alone.
        let r = maintain(&conn, &p, T0, false).unwrap();
        let c = report(&r, Step::Checkpoint);
        assert!(c.ran && c.ok && !c.did, "{c:?}");
        assert!(c.text.contains("within the limit"), "{c:?}");
        assert!(wal_bytes(&p) >= before);
        // Past it (the next look): truncated.
        set(&conn, WAL_LIMIT, "65536");
        let r = maintain(&conn, &p, T0 + WATCH_EVERY, false).unwrap();
        let c = report(&r, Step::Checkpoint);
        assert!(c.ran && c.ok && c.did, "{c:?}");
        assert!(
            c.text.starts_with("WAL ") && c.text.contains("→ 0 B in "),
            "{c:?}"
        );
        // Saving the state afterwards writes a frame or two again.
        assert!(wal_bytes(&p) < 20_000, "{}", wal_bytes(&p));
        assert_eq!(count(&app, "SELECT count(*) FROM t"), 100);
        // Other steps were not due again.
        assert!(!report(&r, Step::Check).ran);
        let st = State::load(&conn).unwrap().unwrap();
        assert!(st.wal);
        assert_eq!(
            Maintenance.due((&conn).into(), T0 + WATCH_EVERY).unwrap(),
            Due::At(T0 + 2 * WATCH_EVERY)
        );
    }

    #[test]
    fn a_reader_holding_the_wal_is_a_retry_and_the_other_steps_run() {
        let (_dir, p, conn) = temp_db();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)")
            .unwrap();
        set(&conn, WAL_LIMIT, "1024");
        let app = Connection::open(&p).unwrap();
        app.execute_batch("PRAGMA wal_autocheckpoint=0; INSERT INTO t VALUES (randomblob(9000))")
            .unwrap();
        // A long reader on an old snapshot.
        let reader = Connection::open(&p).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        app.execute("INSERT INTO t VALUES (randomblob(9000))", [])
            .unwrap();
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &p,
            now: T0,
            debug: false,
            term: 0,
        };
        let err = Maintenance.run(&ctx).unwrap_err();
        let partial = err.downcast_ref::<Partial>().expect("a partial failure");
        assert!(partial.error.starts_with("checkpoint: failed"), "{partial}");
        assert_eq!(
            partial.items, 2,
            "check and retention did their work (optimize ran, and found the database too small to analyze)"
        );
        let st = State::load(&conn).unwrap().unwrap();
        assert!(st.optimize.as_ref().unwrap().ok);
        assert!(!st.checkpoint.as_ref().unwrap().ok);
        assert!(st.check.as_ref().unwrap().ok);
        assert_eq!(
            Maintenance.due((&conn).into(), T0).unwrap(),
            Due::At(T0 + RETRY_AFTER.min(WATCH_EVERY))
        );
        let status = Maintenance.status((&conn).into(), T0);
        assert!(
            status
                .problems
                .iter()
                .any(|p| p.starts_with("maintenance checkpoint")),
            "{status:?}"
        );
        reader.execute_batch("COMMIT").unwrap();
        let r = maintain(&conn, &p, T0 + RETRY_AFTER, false).unwrap();
        assert!(report(&r, Step::Checkpoint).did, "{r:?}");
        assert!(wal_bytes(&p) < 20_000, "{}", wal_bytes(&p));
    }

    #[test]
    fn incremental_vacuum_shrinks_the_file() {
        let (_dir, p, conn) = temp_db();
        conn.execute_batch(
            "PRAGMA auto_vacuum=INCREMENTAL; VACUUM; CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t SELECT randomblob(3000) FROM n;",
        )
        .unwrap();
        assert_eq!(pragma_i64(&conn, "auto_vacuum").unwrap(), 2);
        // Under the share: left alone.
        conn.execute("DELETE FROM t WHERE rowid <= 300", [])
            .unwrap();
        let r = maintain(&conn, &p, T0, false).unwrap();
        let v = report(&r, Step::Vacuum);
        assert!(v.ok && !v.did && v.text.contains("within 25%"), "{v:?}");
        // Past it: freed.
        conn.execute("DELETE FROM t WHERE rowid <= 2500", [])
            .unwrap();
        let free = pragma_i64(&conn, "freelist_count").unwrap();
        let pages = pragma_i64(&conn, "page_count").unwrap();
        assert!(free * 100 > 25 * pages, "{free} of {pages}");
        let size = std::fs::metadata(&p).unwrap().len();
        let r = maintain(&conn, &p, T0 + WATCH_EVERY, false).unwrap();
        let v = report(&r, Step::Vacuum);
        assert!(v.ok && v.did, "{v:?}");
        assert!(v.text.starts_with(&format!("freed {free} pages")), "{v:?}");
        assert_eq!(pragma_i64(&conn, "freelist_count").unwrap(), 0);
        // (Pointer-map pages go with the free ones.)
        assert!(pragma_i64(&conn, "page_count").unwrap() <= pages - free);
        assert!(std::fs::metadata(&p).unwrap().len() < size / 2);
        assert_eq!(count(&conn, "SELECT count(*) FROM t"), 500);
    }

    #[test]
    fn without_incremental_auto_vacuum_nothing_is_vacuumed() {
        let (_dir, p, conn) = temp_db();
        conn.execute_batch(
            "CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO t SELECT randomblob(3000) FROM n; DELETE FROM t;",
        )
        .unwrap();
        let free = pragma_i64(&conn, "freelist_count").unwrap();
        let r = maintain(&conn, &p, T0, true).unwrap();
        let v = report(&r, Step::Vacuum);
        assert!(
            v.ok && !v.did && v.text.contains("auto_vacuum is NONE"),
            "{v:?}"
        );
        assert_eq!(pragma_i64(&conn, "freelist_count").unwrap(), free);
    }

    /// A database with a damaged table page: its last page, a leaf of `junk`.
    fn corrupted_copy(dir: &Path) -> PathBuf {
        let good = dir.join("good.db");
        let conn = Connection::open(&good).unwrap();
        conn.execute_batch(
            "CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime);
             CREATE TABLE junk(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO junk SELECT printf('row %d %s', i, hex(randomblob(40))) FROM n;",
        )
        .unwrap();
        crate::notify::install(&conn).unwrap();
        assert!(quick_check(&conn).unwrap().is_empty());
        let page_size = pragma_i64(&conn, "page_size").unwrap() as usize;
        drop(conn);
        let bad = dir.join("bad.db");
        let mut bytes = std::fs::read(&good).unwrap();
        // Find the last table leaf (0x0D) holding rows, and garble its cell
        // pointers.
        let last = (1..bytes.len() / page_size)
            .rev()
            .find(|i| {
                let h = &bytes[i * page_size..];
                h[0] == 0x0D && u16::from_be_bytes([h[3], h[4]]) > 10
            })
            .unwrap();
        for b in &mut bytes[last * page_size + 8..last * page_size + 40] {
            *b = 0xEE;
        }
        std::fs::write(&bad, bytes).unwrap();
        bad
    }

    #[test]
    fn a_failed_check_is_kept_reported_and_mailed_to_the_admin() {
        let dir = tempfile::tempdir().unwrap();
        let bad = corrupted_copy(dir.path());
        let conn = Connection::open(&bad).unwrap();
        set(&conn, EMAIL_ADMIN, "admin@example.org");
        // Email off: reported, not mailed.
        let r = maintain(&conn, &bad, T0, false).unwrap();
        let c = report(&r, Step::Check);
        assert!(c.ran && c.ok && c.alarm, "{c:?}");
        assert!(
            c.text.starts_with("FAILED") && c.text.contains("not mailed: email-send-method is off"),
            "{c:?}"
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM bo_outbox"), 0);
        // Email on: the admin gets a message through the outbox.
        for (k, v) in [
            ("email-send-method", "stdout"),
            ("email-self", "bo@example.org"),
            ("email-url", "https://example.org"),
            ("email-subname", "[app]"),
        ] {
            set(&conn, k, v);
        }
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &bad,
            now: T0 + 1,
            debug: false,
            term: 0,
        };
        set(&conn, CHECK_INTERVAL, "1");
        let err = Maintenance.run(&ctx).unwrap_err().to_string();
        assert!(err.contains("check: FAILED"), "{err}");
        assert!(err.contains("mail to admin@example.org queued"), "{err}");
        let (address, kind, subject, body, state): (String, String, String, String, String) = conn
            .query_row(
                "SELECT address, kind, subject, body, state FROM bo_outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            (address.as_str(), kind.as_str()),
            ("admin@example.org", "admin")
        );
        assert_eq!(state, "queued");
        assert_eq!(subject, "Database check failed: bad.db");
        assert!(body.contains("quick_check found problems in"), "{body}");
        // Kept, and shown by status until a check passes.
        let st = Maintenance.status((&conn).into(), T0 + 2);
        assert!(
            st.problems
                .iter()
                .any(|p| p.starts_with("quick_check FAILED")),
            "{st:?}"
        );
        assert!(
            st.gauges
                .contains(&Gauge::new("maintenance", "check-failed", 1))
        );
        let state = State::load(&conn).unwrap().unwrap();
        assert!(!state.check_failure.unwrap().lines.is_empty());
    }

    #[test]
    fn a_passing_check_clears_a_kept_failure() {
        let (_dir, p, conn) = temp_db();
        let st = State {
            check_failure: Some(CheckFailure {
                at: T0,
                lines: vec!["old".into()],
            }),
            ..State::default()
        };
        set(&conn, STATE_ROW, &serde_json::to_string(&st).unwrap());
        let r = maintain(&conn, &p, T0, false).unwrap();
        assert_eq!(
            report(&r, Step::Check).text.split(" in ").next(),
            Some("ok")
        );
        assert_eq!(State::load(&conn).unwrap().unwrap().check_failure, None);
        let g = Maintenance.status((&conn).into(), T0).gauges;
        assert!(
            g.contains(&Gauge::new("maintenance", "check-failed", 0)),
            "{g:?}"
        );
    }

    #[test]
    fn retention_deletes_only_old_sent_messages() {
        let (_dir, p, conn) = temp_db();
        crate::notify::install(&conn).unwrap();
        let m = outbox::New {
            subscriberid: None,
            address: "a@example.org",
            kind: "alert",
            subject: "s",
            body: "b",
            code: None,
        };
        let day = 86_400;
        for _ in 0..5 {
            outbox::queue(&conn, &m, T0 - 90 * day).unwrap();
        }
        conn.execute_batch(&format!(
            "UPDATE bo_outbox SET state = 'sent', sent_time = {} WHERE msgid = 1;
             UPDATE bo_outbox SET state = 'sent', sent_time = {} WHERE msgid = 2;
             UPDATE bo_outbox SET state = 'dead' WHERE msgid = 3;
             UPDATE bo_outbox SET next_attempt = {} WHERE msgid = 4;",
            T0 - 31 * day,
            T0 - 29 * day,
            T0 - 60 * day
        ))
        .unwrap();
        let r = maintain(&conn, &p, T0, false).unwrap();
        let ret = report(&r, Step::Retention);
        assert!(
            ret.text
                .starts_with("deleted 1 sent message older than 30 days"),
            "{ret:?}"
        );
        let left: Vec<i64> = conn
            .prepare("SELECT msgid FROM bo_outbox ORDER BY msgid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![2, 3, 4, 5]);
        // Off with 0, even with --now.
        set(&conn, RETENTION_DAYS, "0");
        let r = maintain(&conn, &p, T0 + 400 * day, true).unwrap();
        assert!(!report(&r, Step::Retention).ran);
        assert_eq!(count(&conn, "SELECT count(*) FROM bo_outbox"), 4);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(80 * 1024 * 1024), "80.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
