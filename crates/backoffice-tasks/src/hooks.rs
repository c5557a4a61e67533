//! Shell hooks: every new event reaches every hook, in order, retried.
//!
//! Fossil's after-receive hooks, generalised and made reliable.
//!
//! # Storage
//!
//! * The hooks themselves are Fossil's `config` row `hooks`: a JSON array of
//!   `{"type": T, "cmd": C, "seq": N}`. Our type is `after-event`; Fossil's
//!   `after-receive` is a synonym. Entries of any other type (`disabled`,
//!   `before-commit`, …) are kept untouched and never run. Each entry we
//!   write or first see gets an `"id"` (a positive integer, unique in the
//!   array), the stable key of its state; Fossil ignores extra fields. An
//!   entry without one (written by `fossil hook add`) is given one by the
//!   next run or `backoffice hook` command.
//! * Per-hook state is the engine's retry ledger ([`backoffice::ledger`]):
//!   task `hooks`, target the hook's id in decimal. Its `cursor` is the last
//!   `bo_event.eventid` the hook handled successfully.
//! * `config` row `backoffice-hooks-seen` holds the `hooks` value the ledger
//!   was last brought in line with, so an edit made by Fossil (or by
//!   hand) is noticed by the cheap `due` check and synchronised by the next
//!   run: new runnable hooks get an entry starting at the newest event,
//!   entries of hooks gone (or no longer runnable) are deleted. Its presence
//!   also means "hooks are set up here".
//!
//! # Upgrading
//!
//! Releases up to 0.1 kept the state in a table of their own,
//! `bo_hook_state(hookid, cursor, failures, next_attempt, last_run,
//! last_error, last_output)`. [`install`], which every writer path calls
//! first, moves its rows into the ledger and drops it, in one `BEGIN
//! IMMEDIATE` transaction that re-checks the table is still there (so two
//! processes upgrading at once cannot both copy, nor lose a row). Until
//! then `due` reports work (a worker then upgrades) and [`state`] reads the
//! old table, so nothing looks lost on a repository not yet upgraded.
//!
//! # Running
//!
//! For each runnable hook, in `seq` order, whose cursor is behind the newest
//! event and which is not backing off: the events after its cursor (at most
//! [`BATCH`] per run of the command) are written to its standard input, one
//! JSON object per line:
//!
//! ```text
//! {"eventid":7,"kind":"wiki","title":"Front page","body":"…","url":null,"author":"ann","time":1795261729}
//! ```
//!
//! and the command runs as `/bin/sh -c CMD` under a guard ([`backoffice::child`]:
//! its whole process tree ends with the run, or with a killed worker), in
//! the repository's directory, with
//! `%R` replaced by the repository's absolute path and `%F` by the
//! executable, both shell-quoted (`%%` is a `%`). Nothing from an event ever
//! reaches the command line. The environment adds `BACKOFFICE_REPO`,
//! `BACKOFFICE_HOOK_ID`, `BACKOFFICE_FIRST_EVENT`, `BACKOFFICE_LAST_EVENT`
//! and `BACKOFFICE_EVENT_COUNT`.
//!
//! No transaction is open while a hook runs, so a hook may read and write
//! the repository. Exit status 0 moves the cursor past the batch. Anything
//! else, or running longer than `hook-timeout` (its whole process tree is
//! then killed, see [`backoffice::child`]), leaves the cursor where it was: the same events are offered
//! again after a backoff ([`BACKOFF`]: 1 minute, doubling, at most 1 hour,
//! plus up to a tenth of jitter). After
//! `hook-max-failures` failures in a row the hook is reported as *failing*
//! by `status` and the run log, with its last output; it is still retried
//! every hour. Output (stdout and stderr together) is kept up to
//! [`OUTPUT_MAX`] bytes: the head and the tail, with the number of bytes cut
//! in between.
//!
//! # On PostgreSQL
//!
//! The same task runs on a PostgreSQL repository (`backoffice::pg`): the
//! hooks are the schema's `config` row `hooks`, their state the schema's
//! `bo_ledger` (no table of this task's own: both are part of every
//! schema), and `due`, `status`, `events_done` and the `hook` command read
//! them with portable SQL ([`Db`]). Events are read with
//! [`backoffice::events::after`], in the positions a worker stamps before
//! its tasks run, so a hook never skips an event that committed late.
//! Every write a run makes (a first sync of the `hooks` row, a cursor
//! moved, a failure recorded) is [`Db::write`] fenced on the run's term: a
//! worker whose lease was taken over while its hook ran records nothing
//! and stops, and the next holder offers the same batch again (hooks are
//! at least once). Writers of the `hooks` row and of the hooks' ledger
//! entries take turns on a per-schema advisory lock, as `BEGIN IMMEDIATE`
//! makes them on SQLite. On SQLite too, a run's cursor moves and failures
//! are recorded in a transaction fenced on its term (containers sharing one
//! repository file). `%R` and `BACKOFFICE_REPO` are the URL with its password
//! hidden (a hook is handed no secret), and the command runs in the
//! worker's directory. Only the upgrade of a 0.1 release's table (see
//! "Upgrading") is SQLite's: no PostgreSQL schema ever had one. The SQLite
//! path keeps its own statements (the after-request `due` is measured by
//! `cargo bench -p backoffice-tasks --bench hooks`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use backoffice::ledger::{self, Backoff};
use backoffice::settings::{Def, Kind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::{Map, Value};

use backoffice::db::DbError;
use backoffice::{Context, Db, Due, Gauge, Task, TaskError, TaskStatus};

/// The `config` row holding the hooks (Fossil's).
pub const HOOKS_ROW: &str = "hooks";
/// The `config` row holding the `hooks` value the ledger matches.
pub(crate) const SEEN_ROW: &str = "backoffice-hooks-seen";
/// Our hook type.
pub const AFTER_EVENT: &str = "after-event";
/// Fossil's type, accepted as a synonym.
pub const AFTER_RECEIVE: &str = "after-receive";
/// The `config` row holding the highest hook id ever issued, so that none
/// is issued twice (a removed hook's id would bring back its state).
pub(crate) const LAST_ID_ROW: &str = "backoffice-hooks-last-id";
/// `hook-timeout`
pub const TIMEOUT: &str = "hook-timeout";
/// `hook-max-failures`
pub const MAX_FAILURES: &str = "hook-max-failures";

/// The settings this task reads (see [`backoffice::settings`]).
pub const SETTINGS: &[Def] = &[
    Def {
        name: TIMEOUT,
        kind: Kind::Int {
            min: 1,
            max: 86_400,
        },
        default: "60",
        help: "Seconds a hook command may run; then everything it started is killed and the run counts as failed.",
        secret: false,
    },
    Def {
        name: MAX_FAILURES,
        kind: Kind::Int { min: 1, max: 1000 },
        default: "10",
        help: "Failures in a row after which `status` and the run log report a hook as failing (it is still retried hourly).",
        secret: false,
    },
];
/// Most events given to one run of a hook command.
pub const BATCH: usize = 500;
/// Batches one hook may take in one worker run.
const MAX_BATCHES_PER_RUN: usize = 20;
/// Most output bytes kept per run (head and tail halves).
pub const OUTPUT_MAX: usize = 64 * 1024;
/// The task's name, and its name in the retry ledger.
pub const TASK: &str = "hooks";
/// The retry policy: the ledger's, capped at one hour instead of six,
/// because hooks have always promised (README, `hook-max-failures`) that a
/// failing hook is still retried hourly.
pub const BACKOFF: Backoff = Backoff {
    first: 60,
    max: 3600,
};
/// The table releases up to 0.1 kept hook state in (see "Upgrading").
const LEGACY_TABLE: &str = "bo_hook_state";

/// Why a hook operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store refused (on PostgreSQL; or a fenced write).
    #[error("{0}")]
    Db(#[from] DbError),
    /// The `hooks` row is not a JSON array of objects.
    #[error("the config row `hooks` is not a JSON array of hooks: {0}")]
    BadJson(String),
    /// No hook has this id.
    #[error("no hook {0} (see `backoffice hook list`)")]
    NoSuchHook(i64),
    /// An empty command.
    #[error("a hook needs a command")]
    EmptyCommand,
    /// A type that is not a word.
    #[error("bad hook type {0:?}: use after-event (or after-receive, disabled, …)")]
    BadType(String),
    /// Every positive id is taken (a stored id of 9223372036854775807).
    #[error(
        "no hook id is left above the highest stored one ({}): renumber the ids in the config row `hooks`",
        i64::MAX
    )]
    IdsExhausted,
    /// The command could not be started.
    #[error("cannot run /bin/sh: {0}")]
    Spawn(std::io::Error),
}

/// One entry of the `hooks` row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hook {
    /// Our stable id (0 until one is assigned).
    pub id: i64,
    /// `type`: `after-event`, `after-receive`, or anything else (never run).
    #[serde(rename = "type")]
    pub kind: String,
    /// `cmd`.
    pub cmd: String,
    /// `seq`: hooks run in increasing order.
    pub seq: i64,
    /// The entry as stored, with any fields we do not know.
    #[serde(skip)]
    raw: Map<String, Value>,
}

impl Hook {
    /// True if this hook runs on events.
    pub fn runnable(&self) -> bool {
        self.kind == AFTER_EVENT || self.kind == AFTER_RECEIVE
    }

    fn from_value(v: Value) -> Result<Hook, HookError> {
        let Value::Object(raw) = v else {
            return Err(HookError::BadJson("an entry is not an object".into()));
        };
        let text = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let int = |k: &str| match raw.get(k) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        };
        Ok(Hook {
            id: int("id").max(0),
            kind: text("type"),
            cmd: text("cmd"),
            seq: int("seq"),
            raw,
        })
    }

    fn to_value(&self) -> Value {
        let mut m = self.raw.clone();
        m.insert("id".into(), self.id.into());
        m.insert("type".into(), self.kind.clone().into());
        m.insert("cmd".into(), self.cmd.clone().into());
        m.insert("seq".into(), self.seq.into());
        Value::Object(m)
    }
}

/// A hook's state: its ledger entry, in the shape `hook list --json` has
/// always printed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct State {
    /// The last event handled.
    pub cursor: i64,
    /// Failures in a row.
    pub failures: i64,
    /// Not retried before this Unix time.
    pub next_attempt: i64,
    /// When it last ran.
    pub last_run: Option<i64>,
    /// Why its last run failed (cleared by a success).
    pub last_error: Option<String>,
    /// What its last run printed (bounded).
    pub last_output: Option<String>,
}

impl From<ledger::Entry> for State {
    fn from(e: ledger::Entry) -> State {
        State {
            cursor: e.cursor,
            failures: e.failures,
            next_attempt: e.next_attempt,
            last_run: e.last_run,
            last_error: e.last_error,
            last_output: e.last_output,
        }
    }
}

/// Parses a `hooks` value; absent or empty means none.
pub fn parse(text: Option<&str>) -> Result<Vec<Hook>, HookError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Value>(text).map_err(|e| HookError::BadJson(e.to_string()))? {
        Value::Array(items) => items.into_iter().map(Hook::from_value).collect(),
        _ => Err(HookError::BadJson("not an array".into())),
    }
}

/// The hooks, as stored (ids of 0 mean "not yet assigned").
pub fn load<'a>(db: impl Into<Db<'a>>) -> Result<Vec<Hook>, HookError> {
    parse(db.into().config_get(HOOKS_ROW)?.as_deref())
}

/// The newest event's position (0: none). On PostgreSQL only positioned
/// events count: an event not yet given its position by a worker is not
/// offered to a hook yet.
fn newest_event(db: Db<'_>) -> Result<i64, DbError> {
    match db.sqlite() {
        Some(conn) => Ok(conn.query_row(
            "SELECT coalesce(max(eventid), 0) FROM bo_event",
            [],
            |r| r.get(0),
        )?),
        None => db
            .query_opt(
                "SELECT CAST(coalesce(max(eventid), 0) AS BIGINT) FROM bo_event",
                &[],
            )?
            .map_or(Ok(0), |r| r.int(0)),
    }
}

/// Integer setting `name` of this task, on either store: the stored value
/// if valid, else the default (as [`backoffice::settings::int`]).
fn setting_int(db: Db<'_>, name: &str) -> i64 {
    if let Some(conn) = db.sqlite() {
        return backoffice::settings::int(conn, SETTINGS, name);
    }
    let Some(def) = backoffice::settings::find(SETTINGS, name) else {
        debug_assert!(false, "unknown setting {name}");
        return 0;
    };
    db.config_get(name)
        .ok()
        .flatten()
        .and_then(|v| def.validate(&v).ok())
        .unwrap_or_else(|| def.default.to_owned())
        .parse()
        .unwrap_or(0)
}

/// The current time for the ledger: on PostgreSQL the database's clock
/// (every time in a PostgreSQL repository is the database's, so that
/// hosts whose clocks disagree retry alike), on SQLite this host's.
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

/// Gives ids to entries without one (or with one an earlier entry has):
/// each new id is above every id in the array *and* above `issued`, the
/// highest id ever issued here, so an id is never given twice — a hook
/// Fossil adds in the same edit that removed another never takes over the
/// removed one's state. Returns the new highest id issued. Ids are stored
/// values: no arithmetic on them may wrap, so when none is left above the
/// highest this fails with [`HookError::IdsExhausted`] instead.
pub fn assign_ids(hooks: &mut [Hook], issued: i64) -> Result<i64, HookError> {
    let mut seen = std::collections::HashSet::new();
    let mut top = hooks.iter().map(|h| h.id).fold(issued.max(0), i64::max);
    for h in hooks.iter_mut() {
        if h.id <= 0 || !seen.insert(h.id) {
            top = top.checked_add(1).ok_or(HookError::IdsExhausted)?;
            h.id = top;
            seen.insert(top);
        }
    }
    Ok(top)
}

/// The highest hook id ever issued in this repository (0 if none is
/// recorded; a malformed row counts as none).
fn issued(db: Db<'_>) -> Result<i64, HookError> {
    Ok(db
        .config_get(LAST_ID_ROW)?
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0))
}

/// Creates what hooks need (the event log, the ledger) and moves the state
/// of an older release into the ledger (see "Upgrading"). Idempotent. Runs
/// in the caller's transaction if there is one, else in a `BEGIN
/// IMMEDIATE` of its own, so the check for the old table and the move are
/// one step no other process can split.
pub fn install(conn: &Connection) -> Result<(), HookError> {
    let go = |c: &Connection| -> rusqlite::Result<()> {
        backoffice::events::install(c)?;
        ledger::install(c)?;
        migrate(c)
    };
    if conn.is_autocommit() {
        // On its own (a worker upgrading): the backoffice's bookkeeping, an
        // own write (see `backoffice::writes`). Inline, the write is the
        // caller's: a `hook add` changes the `hooks` row, which must count
        // as the application's change.
        backoffice::writes::own_write(conn, go)?;
    } else {
        go(conn)?;
    }
    Ok(())
}

/// Moves `bo_hook_state` rows into the ledger and drops the table, if it
/// is still there. `INSERT OR IGNORE`: an entry already in the ledger is
/// newer than the old row, never older (the ledger is written only after
/// this ran).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.table_exists(None, LEGACY_TABLE)? {
        return Ok(());
    }
    let moved = conn.execute(
        "INSERT OR IGNORE INTO bo_ledger(task, target, cursor, failures, next_attempt,
                                         last_run, last_error, last_output)
         SELECT ?1, CAST(hookid AS TEXT), cursor, failures, next_attempt,
                last_run, last_error, last_output
         FROM bo_hook_state",
        [TASK],
    )?;
    conn.execute_batch("DROP TABLE bo_hook_state")?;
    tracing::info!(hooks = moved, "hook state moved into the retry ledger");
    Ok(())
}

/// Writes the hooks and brings the ledger in line, inside the caller's
/// transaction: new runnable hooks start at the newest event, entries of
/// hooks gone or no longer runnable are deleted.
fn save(db: Db<'_>, hooks: &mut [Hook]) -> Result<(), HookError> {
    // Before any ledger write: an old state row must not lose to a fresh
    // entry started at the newest event. (On PostgreSQL the event log and
    // the ledger are the schema's, and there is no older release.)
    if let Some(conn) = db.sqlite() {
        install(conn)?;
    }
    let conn = db;
    let top = assign_ids(hooks, issued(conn)?)?;
    conn.config_set(LAST_ID_ROW, &top.to_string())?;
    let text = serde_json::to_string(&Value::Array(hooks.iter().map(Hook::to_value).collect()))
        .expect("JSON");
    conn.config_set(HOOKS_ROW, &text)?;
    conn.config_set(SEEN_ROW, &text)?;
    let newest = newest_event(conn)?;
    let keep: std::collections::HashSet<String> = hooks
        .iter()
        .filter(|h| h.runnable())
        .map(|h| h.id.to_string())
        .collect();
    for e in ledger::all(conn, TASK)? {
        if !keep.contains(&e.target) {
            ledger::remove(conn, TASK, &e.target)?;
        }
    }
    for target in &keep {
        ledger::start(conn, TASK, target, newest)?;
    }
    Ok(())
}

/// Runs `f` in a short write transaction: `BEGIN IMMEDIATE` on SQLite
/// (unfenced, as it always was), on PostgreSQL [`Db::write`] fenced on
/// `fence` (a worker's run passes its term).
fn write<T>(
    db: Db<'_>,
    fence: Option<u64>,
    f: impl FnOnce(Db<'_>) -> Result<T, HookError>,
) -> Result<T, HookError> {
    match db.sqlite() {
        Some(conn) => {
            let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let v = f(Db::Sqlite(&tx))?;
            tx.commit()?;
            Ok(v)
        }
        None => db.write(fence, |db| {
            lock(db)?;
            f(db)
        }),
    }
}

/// On PostgreSQL, inside a write: waits for, and holds until the end of
/// the transaction, the schema's hooks lock, so that writers of the
/// `hooks` row and of the hooks' ledger entries take turns, as `BEGIN
/// IMMEDIATE` makes them on SQLite. Without it two `hook add` at once
/// (read committed) both read the same row and the later commit drops the
/// other's hook; and a run recording a hook that a `hook remove` deleted
/// meanwhile would bring its entry back as an orphan.
fn lock(db: Db<'_>) -> Result<(), DbError> {
    if db.sqlite().is_none() {
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('backoffice-hooks:' || current_schema()))",
            &[],
        )?;
    }
    Ok(())
}

/// Brings ids and state in line with a `hooks` row edited elsewhere.
pub fn sync<'a>(db: impl Into<Db<'a>>) -> Result<(), HookError> {
    sync_fenced(db.into(), None)
}

fn sync_fenced(db: Db<'_>, fence: Option<u64>) -> Result<(), HookError> {
    write(db, fence, |c| {
        let mut hooks = load(c)?;
        save(c, &mut hooks)
    })
}

/// A hook to add.
#[derive(Clone, Debug)]
pub struct New {
    /// The command (`%R`, `%F` substituted).
    pub cmd: String,
    /// Its place in the order; `None`: after the others.
    pub seq: Option<i64>,
    /// Its type (default `after-event`).
    pub kind: String,
    /// Start from the first event instead of the newest.
    pub from_start: bool,
}

fn check_type(t: &str) -> Result<(), HookError> {
    if t.is_empty()
        || t.len() > 32
        || !t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(HookError::BadType(t.to_owned()));
    }
    Ok(())
}

/// Adds a hook; returns it with its id.
pub fn add<'a>(db: impl Into<Db<'a>>, new: &New) -> Result<Hook, HookError> {
    if new.cmd.trim().is_empty() {
        return Err(HookError::EmptyCommand);
    }
    check_type(&new.kind)?;
    write(db.into(), None, |c| {
        let mut hooks = load(c)?;
        let seq = new.seq.unwrap_or_else(|| {
            hooks
                .iter()
                .map(|h| h.seq)
                .max()
                .unwrap_or(0)
                .saturating_add(10)
        });
        // Its id is given by `save`, after those of entries that lack one.
        hooks.push(Hook {
            id: 0,
            kind: new.kind.clone(),
            cmd: new.cmd.clone(),
            seq,
            raw: Map::new(),
        });
        save(c, &mut hooks)?;
        let id = hooks.last().expect("just pushed").id;
        if new.from_start && hooks.last().is_some_and(Hook::runnable) {
            // Its entry was just started at the newest event.
            ledger::put(
                c,
                &ledger::Entry {
                    task: TASK.into(),
                    target: id.to_string(),
                    cursor: 0,
                    ..Default::default()
                },
            )?;
        }
        Ok(hooks.pop().expect("just pushed"))
    })
}

/// Changes to a hook.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// A new command.
    pub cmd: Option<String>,
    /// A new seq.
    pub seq: Option<i64>,
    /// A new type.
    pub kind: Option<String>,
}

/// Changes a hook; returns it.
pub fn edit<'a>(db: impl Into<Db<'a>>, id: i64, ch: &Changes) -> Result<Hook, HookError> {
    if ch.cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(HookError::EmptyCommand);
    }
    if let Some(t) = &ch.kind {
        check_type(t)?;
    }
    write(db.into(), None, |c| {
        let mut hooks = load(c)?;
        assign_ids(&mut hooks, issued(c)?)?;
        let h = hooks
            .iter_mut()
            .find(|h| h.id == id)
            .ok_or(HookError::NoSuchHook(id))?;
        if let Some(v) = &ch.cmd {
            h.cmd = v.clone();
        }
        if let Some(v) = ch.seq {
            h.seq = v;
        }
        if let Some(v) = &ch.kind {
            h.kind = v.clone();
        }
        let out = h.clone();
        save(c, &mut hooks)?;
        Ok(out)
    })
}

/// Removes a hook and its state; returns it.
pub fn remove<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Hook, HookError> {
    write(db.into(), None, |c| {
        let mut hooks = load(c)?;
        assign_ids(&mut hooks, issued(c)?)?;
        let i = hooks
            .iter()
            .position(|h| h.id == id)
            .ok_or(HookError::NoSuchHook(id))?;
        let h = hooks.remove(i);
        save(c, &mut hooks)?;
        Ok(h)
    })
}

/// Pauses a hook: it runs no more until [`resume`]d; its cursor is kept,
/// so it gets every event it missed when resumed.
pub fn pause<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Hook, HookError> {
    set_paused(db.into(), id, true)
}

/// Resumes a paused (or backing-off) hook: due now, failures reset.
pub fn resume<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Hook, HookError> {
    set_paused(db.into(), id, false)
}

fn set_paused(db: Db<'_>, id: i64, pause: bool) -> Result<Hook, HookError> {
    write(db, None, |c| {
        let mut hooks = load(c)?;
        assign_ids(&mut hooks, issued(c)?)?;
        let h = hooks
            .into_iter()
            .find(|h| h.id == id)
            .ok_or(HookError::NoSuchHook(id))?;
        let target = id.to_string();
        let found = if pause {
            ledger::pause(c, TASK, &target)?
        } else {
            ledger::resume(c, TASK, &target)?
        };
        // A hook with no entry yet has not been set up by a run: it
        // starts from the newest event, paused or not.
        if !found {
            ledger::start(c, TASK, &target, newest_event(c)?)?;
            if pause {
                ledger::pause(c, TASK, &target)?;
            }
        }
        Ok(h)
    })
}

/// A hook's state, if it has any: its ledger entry, or on a repository
/// not yet upgraded its row of the old table (read-only commands never
/// upgrade, and must not show a hook as new).
pub fn state<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Option<State>, HookError> {
    let db = db.into();
    if let Some(e) = ledger::get(db, TASK, &id.to_string())? {
        return Ok(Some(e.into()));
    }
    // Only SQLite repositories can hold an older release's table.
    let Some(conn) = db.sqlite() else {
        return Ok(None);
    };
    if !conn.table_exists(None, LEGACY_TABLE)? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached(
            "SELECT cursor, failures, next_attempt, last_run, last_error, last_output
             FROM bo_hook_state WHERE hookid = ?1",
        )?
        .query_row([id], |r| {
            Ok(State {
                cursor: r.get(0)?,
                failures: r.get(1)?,
                next_attempt: r.get(2)?,
                last_run: r.get(3)?,
                last_error: r.get(4)?,
                last_output: r.get(5)?,
            })
        })
        .optional()?)
}

/// The hooks in run order (seq, then id), each with its state.
pub fn list<'a>(db: impl Into<Db<'a>>) -> Result<Vec<(Hook, Option<State>)>, HookError> {
    let conn = db.into();
    let mut hooks = load(conn)?;
    hooks.sort_by_key(|h| (h.seq, h.id));
    hooks
        .into_iter()
        .map(|h| {
            let s = if h.id > 0 { state(conn, h.id)? } else { None };
            Ok((h, s))
        })
        .collect()
}

/// One event as a hook sees it (one line of its standard input).
pub use backoffice::events::StoredEvent as EventLine;

use backoffice::events::events_after;

/// Quotes a string for `/bin/sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Replaces `%R`, `%F` and `%%` in a command.
pub(crate) fn substitute(cmd: &str, repo: &Path, exe: &Path) -> String {
    let mut out = String::with_capacity(cmd.len() + 64);
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('R') => {
                chars.next();
                out.push_str(&shell_quote(&repo.to_string_lossy()));
            }
            Some('F') => {
                chars.next();
                out.push_str(&shell_quote(&exe.to_string_lossy()));
            }
            Some('%') => {
                chars.next();
                out.push('%');
            }
            _ => out.push('%'),
        }
    }
    out
}

/// Output kept from a command: the first and last `OUTPUT_MAX / 2` bytes.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: usize,
}

impl Capture {
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        let half = OUTPUT_MAX / 2;
        self.total += data.len();
        if self.head.len() < half {
            let n = (half - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= half {
            self.tail.clear();
            self.tail.extend(&data[data.len() - half..]);
        } else {
            let excess = (self.tail.len() + data.len()).saturating_sub(half);
            self.tail.drain(..excess);
            self.tail.extend(data);
        }
    }

    pub(crate) fn text(&self) -> String {
        let cut = self.total - self.head.len() - self.tail.len();
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if cut > 0 {
            s.push_str(&format!("\n[… {cut} bytes of output cut …]\n"));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        s.push_str(&String::from_utf8_lossy(&tail));
        s
    }
}

/// What one run of a hook command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `None` on success; else "exit status 3", "timed out after 60 s", …
    pub failure: Option<String>,
    /// Its output (stdout and stderr), bounded.
    pub output: String,
    /// Output bytes produced in all.
    pub output_bytes: usize,
    /// How long it ran.
    pub elapsed_ms: u64,
}

impl Outcome {
    /// A short one-line form: the failure and the end of the output.
    pub fn short(&self) -> String {
        let out = backoffice::short_line(&self.output);
        let n = out.chars().count();
        let tail: String = if n > 200 {
            let s: String = out.chars().skip(n - 200).collect();
            format!("…{s}")
        } else {
            out
        };
        match &self.failure {
            Some(f) if self.output.trim().is_empty() => f.clone(),
            Some(f) => format!("{f}: {tail}"),
            None => tail,
        }
    }
}

/// What a command runs with.
#[derive(Clone, Debug)]
pub struct Invocation<'a> {
    /// The hook's id (for the environment).
    pub id: i64,
    /// The command as stored.
    pub cmd: &'a str,
    /// The repository (made absolute).
    pub repo: &'a Path,
    /// The executable for `%F`.
    pub exe: &'a Path,
    /// Longest run.
    pub timeout: Duration,
}

/// Runs one hook command on a batch of events and waits for it (at most
/// the timeout, after which it is killed with everything it started). The
/// command's whole process tree ends with its run, and with its worker if
/// that dies first (see [`backoffice::child`]).
pub fn execute(inv: &Invocation<'_>, events: &[EventLine]) -> Result<Outcome, HookError> {
    // A PostgreSQL repository is its URL, password hidden (a hook is given
    // no secret; it connects with its own credentials), and has no
    // directory: the command runs in the worker's.
    let url = inv.repo.to_str().is_some_and(backoffice::db::is_pg_url);
    let repo = if url {
        inv.repo.to_owned()
    } else {
        std::path::absolute(inv.repo).unwrap_or_else(|_| inv.repo.to_owned())
    };
    let mut input = Vec::with_capacity(events.len() * 128);
    for e in events {
        serde_json::to_writer(&mut input, e).expect("JSON");
        input.push(b'\n');
    }
    let command = substitute(inv.cmd, &repo, inv.exe);
    let first = events.first().map_or(0, |e| e.eventid);
    let last = events.last().map_or(0, |e| e.eventid);
    let spec = backoffice::child::Spec {
        command: &command,
        dir: if url {
            None
        } else {
            Some(repo.parent().unwrap_or(Path::new("/")))
        },
        env: vec![
            ("BACKOFFICE_REPO", repo.clone().into_os_string()),
            ("BACKOFFICE_HOOK_ID", inv.id.to_string().into()),
            ("BACKOFFICE_FIRST_EVENT", first.to_string().into()),
            ("BACKOFFICE_LAST_EVENT", last.to_string().into()),
            ("BACKOFFICE_EVENT_COUNT", events.len().to_string().into()),
        ],
        input: &input,
        // stdout and stderr share one pipe, so their order is kept.
        stdout: true,
        timeout: inv.timeout,
    };
    let mut cap = Capture::default();
    let ran = backoffice::child::run(&spec, &mut |b| cap.push(b)).map_err(HookError::Spawn)?;
    let failure = match ran.status {
        None => Some(format!("timed out after {} s", inv.timeout.as_secs())),
        Some(s) if s.success() => None,
        Some(s) => Some(s.to_string()),
    };
    Ok(Outcome {
        failure,
        output: cap.text(),
        output_bytes: cap.total,
        elapsed_ms: u64::try_from(ran.elapsed.as_millis()).unwrap_or(u64::MAX),
    })
}

/// The executable `%F` names: the running program.
pub fn current_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("backoffice"))
}

/// Runs one hook once on the newest events (at most 5), or a sample event
/// when there are none, without touching its state.
pub fn test<'a>(
    db: impl Into<Db<'a>>,
    repo: &Path,
    id: i64,
) -> Result<(Vec<EventLine>, Outcome), HookError> {
    let db = db.into();
    let hook = list(db)?
        .into_iter()
        .map(|(h, _)| h)
        .find(|h| h.id == id)
        .ok_or(HookError::NoSuchHook(id))?;
    let mut events = match db.sqlite() {
        Some(conn) if conn.table_exists(None, "bo_event")? => {
            let newest = newest_event(db)?;
            events_after(conn, newest.saturating_sub(5).max(0), 5)?
        }
        Some(_) => Vec::new(),
        None => {
            let newest = newest_event(db)?;
            backoffice::events::after(db, newest.saturating_sub(5).max(0), 5)?
        }
    };
    if events.is_empty() {
        events.push(EventLine {
            eventid: 0,
            kind: "test".into(),
            title: "A sample event from backoffice hook test".into(),
            body: String::new(),
            url: None,
            author: None,
            time: backoffice::clock::now(),
        });
    }
    let exe = current_exe();
    let out = execute(
        &Invocation {
            id,
            cmd: &hook.cmd,
            repo,
            exe: &exe,
            timeout: Duration::from_secs(setting_int(db, TIMEOUT).max(1) as u64),
        },
        &events,
    )?;
    Ok((events, out))
}

/// The hooks task: runs shell hooks on new events (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks;

impl Task for Hooks {
    fn name(&self) -> &str {
        TASK
    }

    /// What makes it due: new events, a retry made due, the hook list (a `config` row) (see `backoffice::due`).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&["bo_ledger"])
    }

    fn settings(&self) -> &'static [backoffice::settings::Def] {
        SETTINGS
    }

    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError> {
        let Some(conn) = db.sqlite() else {
            return due_portable(db, now);
        };
        // Never set up here: a `hooks` row written by Fossil or by hand
        // needs a first sync.
        let first_sync = || -> Result<Due, TaskError> {
            Ok(match backoffice::repo::config_get(conn, HOOKS_ROW)? {
                Some(v) if !parse(Some(&v)).unwrap_or_default().is_empty() => Due::Now,
                _ => Due::Never,
            })
        };
        if conn.table_exists(None, LEGACY_TABLE)? {
            // State of an older release: a run upgrades it (see
            // "Upgrading") and then does whatever else is due.
            return Ok(Due::Now);
        }
        if !conn.table_exists(None, "bo_ledger")? || !conn.table_exists(None, "bo_event")? {
            return first_sync();
        }
        // The task's name is written into the SQL, not bound: bound, this
        // check measured ~48 µs instead of ~9 (`cargo bench -p
        // backoffice-tasks --bench hooks`, due_with_10_hooks_nothing_new),
        // as the bundled SQLite is built with STAT4, which may plan a
        // statement again whenever a parameter that meets an index is
        // bound anew.
        debug_assert_eq!(TASK, "hooks");
        let (unset, edited, ready, next): (bool, bool, bool, Option<i64>) = conn
            .prepare_cached(
                "SELECT (SELECT value FROM config WHERE name = ?2) IS NULL,
                        (SELECT value FROM config WHERE name = 'hooks')
                          IS NOT (SELECT value FROM config WHERE name = ?2),
                        EXISTS(SELECT 1 FROM bo_ledger
                               WHERE task = 'hooks'
                                 AND cursor < (SELECT max(eventid) FROM bo_event)
                                 AND next_attempt <= ?1),
                        (SELECT min(next_attempt) FROM bo_ledger
                         WHERE task = 'hooks'
                           AND cursor < (SELECT max(eventid) FROM bo_event))",
            )?
            .query_row(params![now, SEEN_ROW], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        if unset {
            // The ledger and the event log are another task's.
            return first_sync();
        }
        Ok(if edited || ready {
            Due::Now
        } else {
            next.and_then(ledger::Entry::next_due)
                .map_or(Due::Never, Due::At)
        })
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let db = ctx.db;
        // SQLite: the connection, for the statements this task has always
        // run; PostgreSQL: the portable ones, every write fenced on the
        // run's term.
        let sqlite = db.sqlite();
        let fence = if sqlite.is_some() {
            None
        } else {
            Some(ctx.term)
        };
        // Nothing new and nothing to retry (the common case): as cheap as
        // the after-request check.
        if self.due(db, ctx.now)? != Due::Now {
            return Ok(0);
        }
        if let Some(conn) = sqlite {
            if conn.table_exists(None, LEGACY_TABLE)? {
                install(conn)?;
            }
        }
        let seen = db.config_get(SEEN_ROW)?;
        let set_up = seen.is_some();
        if db.config_get(HOOKS_ROW)? != seen {
            match load(db) {
                Ok(h) if h.is_empty() && !set_up => {
                    return Ok(0);
                }
                Ok(_) => sync_fenced(db, fence)?,
                Err(e) => {
                    // A hand-edited row that does not parse: say so once
                    // (and in `status` until fixed), not on every request.
                    if set_up {
                        let text = db.config_get(HOOKS_ROW)?.unwrap_or_default();
                        match sqlite {
                            Some(conn) => backoffice::repo::config_set(conn, SEEN_ROW, &text)?,
                            None => write(db, fence, |db| Ok(db.config_set(SEEN_ROW, &text)?))?,
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        let timeout = Duration::from_secs(setting_int(db, TIMEOUT).max(1) as u64);
        let max_failures = setting_int(db, MAX_FAILURES);
        let exe = current_exe();
        let newest = newest_event(db)?;
        let mut delivered = 0u64;
        let mut failed = Vec::new();
        for (hook, st) in list(db)? {
            let Some(mut st) = st.filter(|_| hook.runnable()) else {
                continue;
            };
            for _ in 0..MAX_BATCHES_PER_RUN {
                if st.cursor >= newest || st.next_attempt > ctx.now {
                    break;
                }
                let events = match sqlite {
                    Some(conn) => events_after(conn, st.cursor, BATCH)?,
                    None => backoffice::events::after(db, st.cursor, BATCH)?,
                };
                let Some(last) = events.last().map(|e| e.eventid) else {
                    break;
                };
                // No statement is open and no transaction: the hook may
                // read and write the repository.
                let out = execute(
                    &Invocation {
                        id: hook.id,
                        cmd: &hook.cmd,
                        repo: ctx.repo,
                        exe: &exe,
                        timeout,
                    },
                    &events,
                )?;
                let now = db_now(db)?;
                let target = hook.id.to_string();
                let recorded = match sqlite {
                    // An own write (see `backoffice::writes`): a failing
                    // hook's hourly retries must not make replication copy
                    // the repository each time.
                    // Fenced too: containers sharing one repository file
                    // each have their worker, and one paused past its
                    // heartbeat must not record over the next holder.
                    Some(conn) => Db::Sqlite(conn).write(Some(ctx.term), |_| {
                        backoffice::writes::note_own_write(conn).map_err(DbError::from)?;
                        record(conn, &target, &out, last, now).map_err(DbError::from)
                    })?,
                    // Fenced: a worker whose lease was taken over while
                    // the hook ran records nothing and stops here (the
                    // next holder offers the batch again: at least once).
                    None => db.write(fence, |db| {
                        lock(db)?;
                        record(db, &target, &out, last, now)
                    })?,
                };
                if out.failure.is_none() {
                    delivered += events.len() as u64;
                }
                let Some(failures) = recorded else {
                    break;
                };
                if out.failure.is_none() {
                    st.cursor = last;
                } else {
                    st.failures = failures;
                    let short = out.short();
                    let what = if st.failures >= max_failures {
                        format!(
                            "hook {} failing ({} failures in a row)",
                            hook.id, st.failures
                        )
                    } else {
                        format!("hook {} failed", hook.id)
                    };
                    tracing::warn!(hook = hook.id, failures = st.failures, "{what}: {short}");
                    failed.push(format!("{what}: {short}"));
                    break;
                }
            }
        }
        if failed.is_empty() {
            Ok(delivered)
        } else {
            Err(Box::new(backoffice::Partial {
                items: delivered,
                error: format!("{delivered} events delivered; {}", failed.join("; ")),
            }))
        }
    }

    /// The lowest cursor of the runnable hooks: events after it are still
    /// to be given to some hook. A failing hook (its cursor stays where it
    /// was, retried hourly for ever) keeps every event after its cursor,
    /// however old, until it succeeds or is removed — removing or disabling
    /// it is how an operator lets them go. A hook without state yet (added
    /// to the `hooks` row by Fossil, not yet synchronised) will start after
    /// the newest event, so it needs nothing older; no hooks at all: done
    /// with every event. A `hooks` row that does not parse is an error
    /// (nothing is purged until it is fixed; `status` says why).
    fn events_done(&self, db: Db<'_>) -> Result<Option<i64>, TaskError> {
        let newest = match db.sqlite() {
            Some(conn) => backoffice::events::newest(conn)?,
            None => newest_event(db)?,
        };
        let lowest = list(db)?
            .into_iter()
            .filter(|(h, _)| h.runnable())
            .filter_map(|(_, s)| s.map(|s| s.cursor))
            .min();
        Ok(Some(lowest.map_or(newest, |c| c.min(newest))))
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let mut st = TaskStatus::default();
        let hooks = match list(db) {
            Ok(h) => h,
            Err(e) => {
                st.problems.push(e.to_string());
                return st;
            }
        };
        if hooks.is_empty() {
            // Zeros rather than nothing: the task is installed, and a metric
            // that vanishes when the last hook is removed reads as "stale".
            st.gauges = hook_gauges(0, 0, 0, 0);
            return st;
        }
        let max_failures = setting_int(db, MAX_FAILURES);
        let newest = match db.sqlite() {
            Some(conn) if !conn.table_exists(None, "bo_event").unwrap_or(false) => 0,
            _ => newest_event(db).unwrap_or(0),
        };
        let (mut ok, mut retrying, mut failing, mut behind_total) = (0, 0, 0, 0);
        for (h, s) in hooks {
            let Some(s) = s.filter(|_| h.runnable()) else {
                st.info.push(format!(
                    "hook {} ({}): not run (type {})",
                    h.id, h.cmd, h.kind
                ));
                continue;
            };
            let behind = newest.saturating_sub(s.cursor).max(0);
            behind_total = i64::saturating_add(behind_total, behind);
            // "Failing" as the problem line below means it: hook-max-failures
            // in a row, the operator's own threshold. Below it a hook that
            // failed is "retrying" (backing off), so a page never shows
            // "failing 0" next to a hook that just failed.
            if s.failures >= max_failures {
                failing += 1;
            } else if s.failures > 0 {
                retrying += 1;
            } else {
                ok += 1;
            }
            let mut line = format!(
                "hook {} ({}): at event {}, {} behind",
                h.id, h.cmd, s.cursor, behind
            );
            if s.next_attempt == ledger::PAUSED {
                line.push_str(", paused (`backoffice hook resume ID`)");
            } else if s.failures > 0 {
                line.push_str(&format!(
                    ", {} failure(s) in a row, next attempt {}",
                    s.failures,
                    backoffice::clock::relative(s.next_attempt, now)
                ));
            }
            st.info.push(line);
            if s.failures >= max_failures {
                let out = Outcome {
                    failure: s.last_error.clone(),
                    output: s.last_output.clone().unwrap_or_default(),
                    output_bytes: 0,
                    elapsed_ms: 0,
                };
                st.problems.push(format!(
                    "hook {} is failing ({} failures in a row): {}",
                    h.id,
                    s.failures,
                    out.short()
                ));
            }
        }
        st.gauges = hook_gauges(ok, retrying, failing, behind_total);
        st
    }
}

/// Records one run of a hook in the ledger: a success moves its cursor to
/// `last`, a failure backs it off. Returns the failures in a row, or
/// `None` if the hook was removed while it ran (by another process, or by
/// itself): then its entry is gone and must stay gone, or an orphan entry
/// behind the newest event would make every check report work no run can
/// do. Inside the caller's write transaction, on either store.
fn record<'a, D: ledger::LedgerDb<'a>>(
    db: D,
    target: &str,
    out: &Outcome,
    last: i64,
    now: i64,
) -> Result<Option<i64>, D::Error> {
    if ledger::get(db, TASK, target)?.is_none() {
        return Ok(None);
    }
    match &out.failure {
        None => {
            ledger::succeeded(db, TASK, target, last, now, Some(&out.output))?;
            Ok(Some(0))
        }
        Some(f) => ledger::failed(db, TASK, target, now, f, Some(&out.output), &BACKOFF)
            .map(|e| Some(e.failures)),
    }
}

/// `due` on a store other than SQLite, in one statement: the same answer
/// as the SQLite check (see [`Hooks::due`]), in SQL both dialects share.
/// The event log and the ledger are part of a PostgreSQL schema, so they
/// are never missing; nor is there an older release's table to upgrade.
fn due_portable(db: Db<'_>, now: i64) -> Result<Due, TaskError> {
    let row = db
        .query_opt(
            "SELECT (SELECT value FROM config WHERE name = 'hooks'),
                    (SELECT value FROM config WHERE name = 'backoffice-hooks-seen'),
                    EXISTS(SELECT 1 FROM bo_ledger
                           WHERE task = 'hooks'
                             AND cursor < (SELECT max(eventid) FROM bo_event)
                             AND next_attempt <= ?1),
                    (SELECT min(next_attempt) FROM bo_ledger
                     WHERE task = 'hooks'
                       AND cursor < (SELECT max(eventid) FROM bo_event))",
            &[now.into()],
        )?
        .ok_or_else(|| DbError::Unsupported("the hooks check returned no row".into()))?;
    debug_assert_eq!((TASK, SEEN_ROW), ("hooks", "backoffice-hooks-seen"));
    let hooks = row.opt_text(0)?;
    let Some(seen) = row.opt_text(1)? else {
        // Never set up here: a `hooks` row written by hand needs a first
        // sync.
        return Ok(match parse(hooks.as_deref()) {
            Ok(h) if !h.is_empty() => Due::Now,
            _ => Due::Never,
        });
    };
    Ok(
        if hooks.as_deref() != Some(seen.as_str()) || row.int(2)? != 0 {
            Due::Now
        } else {
            row.opt_int(3)?
                .and_then(ledger::Entry::next_due)
                .map_or(Due::Never, Due::At)
        },
    )
}

/// The hooks task's gauges: runnable hooks ok, retrying and failing, and
/// the events they have yet to handle, summed.
fn hook_gauges(ok: i64, retrying: i64, failing: i64, behind: i64) -> Vec<Gauge> {
    vec![
        Gauge::new("hooks", "ok", ok),
        Gauge::new("hooks", "retrying", retrying),
        Gauge::new("hooks", "failing", failing),
        Gauge::new("hook-events", "behind", behind),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        conn
    }

    fn publish(conn: &Connection, title: &str) -> i64 {
        backoffice::events::publish(
            conn,
            &backoffice::events::Event {
                kind: "wiki".into(),
                title: title.into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn new(cmd: &str) -> New {
        New {
            cmd: cmd.into(),
            seq: None,
            kind: AFTER_EVENT.into(),
            from_start: false,
        }
    }

    #[test]
    fn quoting_and_substitution() {
        let s = substitute(
            "%F x -R %R 100%% %Q",
            Path::new("/srv/it's here.db"),
            Path::new("/bin/bo"),
        );
        assert_eq!(s, "'/bin/bo' x -R '/srv/it'\\''s here.db' 100% %Q");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("$(x) `y`; 'z'")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "$(x) `y`; 'z'");
    }

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::default();
        for _ in 0..100 {
            c.push(&[b'a'; 1000]);
        }
        c.push(b"THE END");
        let t = c.text();
        assert!(t.len() < OUTPUT_MAX + 100, "{}", t.len());
        assert!(t.ends_with("THE END"));
        assert!(t.contains(&format!(
            "[… {} bytes of output cut …]",
            100_007 - OUTPUT_MAX
        )));
        let mut small = Capture::default();
        small.push(b"hi");
        assert_eq!(small.text(), "hi");
    }

    #[test]
    fn fossil_entries_get_ids_and_unknown_fields_and_types_are_kept() {
        let conn = setup();
        backoffice::repo::config_set(
            &conn,
            HOOKS_ROW,
            r#"[{"type":"after-receive","cmd":"true","seq":5,"x":1},{"type":"disabled","cmd":"false","seq":1}]"#,
        )
        .unwrap();
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Now);
        sync(&conn).unwrap();
        let hooks = list(&conn).unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!((hooks[0].0.id, hooks[0].0.kind.as_str()), (2, "disabled"));
        assert!(hooks[0].1.is_none());
        assert_eq!(hooks[1].0.id, 1);
        assert_eq!(hooks[1].0.raw.get("x"), Some(&Value::from(1)));
        assert_eq!(hooks[1].1.as_ref().unwrap().cursor, 0);
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Never);
        // An edit made elsewhere is noticed.
        let text = backoffice::repo::config_get(&conn, HOOKS_ROW)
            .unwrap()
            .unwrap();
        backoffice::repo::config_set(&conn, HOOKS_ROW, &text.replace("true", "true ")).unwrap();
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Now);
    }

    /// Issue 10 item 19, as Fossil edits the row: one edit removes hook 1
    /// and adds an entry without an id.
    #[test]
    fn a_hook_added_in_the_edit_that_removed_another_never_gets_its_id_or_state() {
        let conn = setup();
        let old = add(&conn, &new("false")).unwrap();
        publish(&conn, "backlog 1");
        publish(&conn, "backlog 2");
        conn.execute(
            "UPDATE bo_ledger SET cursor = 0, failures = 4, next_attempt = 99999999999",
            [],
        )
        .unwrap();
        backoffice::repo::config_set(
            &conn,
            HOOKS_ROW,
            r#"[{"type":"after-receive","cmd":"cat >> got","seq":1}]"#,
        )
        .unwrap();
        sync(&conn).unwrap();
        let hooks = list(&conn).unwrap();
        assert_eq!(hooks.len(), 1);
        let (h, st) = &hooks[0];
        assert_ne!(h.id, old.id, "the removed hook's id was given again");
        let st = st.clone().unwrap();
        assert_eq!((st.cursor, st.failures, st.next_attempt), (2, 0, 0));
        assert!(state(&conn, old.id).unwrap().is_none());
        // And `hook add` after removing the highest does not reuse it either.
        let a = add(&conn, &new("true")).unwrap();
        remove(&conn, a.id).unwrap();
        assert!(add(&conn, &new("true")).unwrap().id > a.id);
    }

    /// Issue 10 item 20: stored ids and counters at the edges of i64 never
    /// wrap (a debug build panicked; a release build gave a hook a negative
    /// id, and it never ran).
    #[test]
    fn stored_values_at_the_edges_of_i64_never_wrap() {
        let conn = setup();
        backoffice::repo::config_set(
            &conn,
            HOOKS_ROW,
            r#"[{"type":"after-event","cmd":"true","seq":9223372036854775807,"id":9223372036854775807}]"#,
        )
        .unwrap();
        sync(&conn).unwrap();
        assert_eq!(list(&conn).unwrap()[0].0.id, i64::MAX);
        // A new hook has no id left: a clear error, nothing changed.
        let e = add(&conn, &new("true")).unwrap_err();
        assert!(matches!(e, HookError::IdsExhausted), "{e}");
        assert!(e.to_string().contains("renumber"), "{e}");
        assert_eq!(load(&conn).unwrap().len(), 1);
        let mut hooks = parse(Some(
            r#"[{"cmd":"a","id":9223372036854775807},{"cmd":"b"},{"cmd":"c","id":-5}]"#,
        ))
        .unwrap();
        assert!(matches!(
            assign_ids(&mut hooks, 0),
            Err(HookError::IdsExhausted)
        ));
        let mut hooks = parse(Some(r#"[{"cmd":"a","id":3},{"cmd":"b","id":3}]"#)).unwrap();
        assert_eq!(assign_ids(&mut hooks, i64::MAX - 1).unwrap(), i64::MAX);
        assert_eq!((hooks[0].id, hooks[1].id), (3, i64::MAX));
        let seed = ledger::seed(TASK, "1");
        assert!((60..=66).contains(&BACKOFF.delay(i64::MIN, seed)));
        assert!((3600..=3960).contains(&BACKOFF.delay(i64::MAX, seed)));
        // Counters and cursors written by hand.
        publish(&conn, "one");
        conn.execute(
            "UPDATE bo_ledger SET cursor = -9223372036854775808, failures = 9223372036854775807",
            [],
        )
        .unwrap();
        let st = Hooks.status((&conn).into(), 0);
        assert!(!st.problems.is_empty(), "{st:?}");
    }

    #[test]
    fn a_malformed_hooks_row_is_reported_once_not_on_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        add(&conn, &new("true")).unwrap();
        backoffice::repo::config_set(&conn, HOOKS_ROW, "[{oops").unwrap();
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Now);
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &path,
            now: 0,
            debug: false,
            term: 0,
        };
        let e = Hooks.run(&ctx).unwrap_err().to_string();
        assert!(e.contains("not a JSON array"), "{e}");
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Never);
        let st = Hooks.status((&conn).into(), 0);
        assert!(st.problems[0].contains("not a JSON array"), "{st:?}");
    }

    #[test]
    fn due_follows_events_and_backoff() {
        let conn = setup();
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Never);
        publish(&conn, "old");
        let h = add(&conn, &new("true")).unwrap();
        assert_eq!(state(&conn, h.id).unwrap().unwrap().cursor, 1);
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Never);
        publish(&conn, "new");
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Now);
        conn.execute("UPDATE bo_ledger SET next_attempt = 100", [])
            .unwrap();
        assert_eq!(Hooks.due((&conn).into(), 50).unwrap(), Due::At(100));
        assert_eq!(Hooks.due((&conn).into(), 100).unwrap(), Due::Now);
        let h2 = add(
            &conn,
            &New {
                from_start: true,
                ..new("true")
            },
        )
        .unwrap();
        assert_eq!(state(&conn, h2.id).unwrap().unwrap().cursor, 0);
        remove(&conn, h.id).unwrap();
        assert!(state(&conn, h.id).unwrap().is_none());
        edit(
            &conn,
            h2.id,
            &Changes {
                kind: Some("disabled".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(state(&conn, h2.id).unwrap().is_none());
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Never);
    }

    #[test]
    fn run_delivers_and_failures_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        let out = dir.path().join("out");
        let good = add(
            &conn,
            &new(&format!("cat >> {}", shell_quote(out.to_str().unwrap()))),
        )
        .unwrap();
        let bad = add(&conn, &new("echo oops; exit 3")).unwrap();
        publish(&conn, "one");
        publish(&conn, "two");
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &path,
            now: backoffice::clock::now(),
            debug: false,
            term: 0,
        };
        let err = Hooks.run(&ctx).unwrap_err().to_string();
        assert!(err.contains("2 events delivered"), "{err}");
        assert!(err.contains("exit status: 3: oops"), "{err}");
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["title"], "two");
        assert_eq!(lines[1]["eventid"], 2);
        assert_eq!(state(&conn, good.id).unwrap().unwrap().cursor, 2);
        let s = state(&conn, bad.id).unwrap().unwrap();
        assert_eq!((s.cursor, s.failures), (0, 1));
        // The policy's first wait, 60 s plus up to a tenth of jitter.
        let run_at = s.last_run.unwrap();
        assert!(run_at >= ctx.now);
        assert!(
            (run_at + 60..=run_at + 66).contains(&s.next_attempt),
            "{s:?}"
        );
        assert_eq!(s.last_output.as_deref(), Some("oops\n"));
        assert_eq!(
            Hooks.due((&conn).into(), ctx.now).unwrap(),
            Due::At(s.next_attempt)
        );
        // Backing off: nothing runs.
        assert_eq!(Hooks.run(&ctx).unwrap(), 0);
        // Doubling, at most an hour (plus jitter), as hooks always promised.
        let seed = ledger::seed(TASK, &bad.id.to_string());
        assert!((120..=132).contains(&BACKOFF.delay(2, seed)));
        assert!((3600..=3960).contains(&BACKOFF.delay(50, seed)));
    }

    /// Retention keeps every event after the lowest cursor of the
    /// runnable hooks: a failing hook holds back what it has not handled;
    /// a hook that is not run, or none at all, holds nothing back.
    #[test]
    fn events_done_is_the_lowest_runnable_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        assert_eq!(Hooks.events_done((&conn).into()).unwrap(), Some(0));
        let good = add(&conn, &new("cat >/dev/null")).unwrap();
        let bad = add(&conn, &new("exit 3")).unwrap();
        publish(&conn, "one");
        publish(&conn, "two");
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &path,
            now: backoffice::clock::now(),
            debug: false,
            term: 0,
        };
        Hooks.run(&ctx).unwrap_err();
        assert_eq!(state(&conn, good.id).unwrap().unwrap().cursor, 2);
        assert_eq!(
            Hooks.events_done((&conn).into()).unwrap(),
            Some(0),
            "bad is at 0"
        );
        // Disabled (not runnable): its state goes, and so does its hold.
        let mut hooks = load(&conn).unwrap();
        hooks.iter_mut().find(|h| h.id == bad.id).unwrap().kind = "disabled".into();
        let text = serde_json::to_string(&Value::Array(hooks.iter().map(Hook::to_value).collect()))
            .unwrap();
        backoffice::repo::config_set(&conn, HOOKS_ROW, &text).unwrap();
        assert_eq!(Hooks.events_done((&conn).into()).unwrap(), Some(2));
        publish(&conn, "three");
        assert_eq!(
            Hooks.events_done((&conn).into()).unwrap(),
            Some(2),
            "good is at 2"
        );
        remove(&conn, good.id).unwrap();
        remove(&conn, bad.id).unwrap();
        assert_eq!(
            Hooks.events_done((&conn).into()).unwrap(),
            Some(3),
            "no hooks: the newest"
        );
        // A `hooks` row that does not parse: no answer, so nothing is purged.
        backoffice::repo::config_set(&conn, HOOKS_ROW, "{not json").unwrap();
        assert!(Hooks.events_done((&conn).into()).is_err());
    }

    #[test]
    fn status_gauges_count_hooks_and_events_behind() {
        let conn = setup();
        assert_eq!(
            Hooks.status((&conn).into(), 0).gauges,
            hook_gauges(0, 0, 0, 0)
        );
        let a = add(&conn, &new("true")).unwrap();
        let b = add(&conn, &new("false")).unwrap();
        let c = add(&conn, &new("true")).unwrap();
        // Never run, so no state and not counted.
        add(
            &conn,
            &New {
                kind: "disabled".into(),
                ..new("x")
            },
        )
        .unwrap();
        for t in ["one", "two", "three"] {
            publish(&conn, t);
        }
        backoffice::repo::config_set(&conn, MAX_FAILURES, "3").unwrap();
        let set = |id: i64, cursor: i64, failures: i64| {
            conn.execute(
                "UPDATE bo_ledger SET cursor = ?2, failures = ?3 WHERE task = 'hooks' AND target = ?1",
                params![id.to_string(), cursor, failures],
            )
            .unwrap();
        };
        set(a.id, 3, 0);
        set(b.id, 1, 3); // failing: 2 behind
        set(c.id, 0, 2); // retrying, not yet failing: 3 behind
        assert_eq!(
            Hooks.status((&conn).into(), 0).gauges,
            hook_gauges(1, 1, 1, 5)
        );
    }

    /// A repository as releases up to 0.1 left it: three events, hooks 1
    /// and 2 runnable with state in `bo_hook_state` (hook 1 failing and
    /// backing off until 5000), hook 3 disabled (no state).
    fn old_release(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        for t in ["one", "two", "three"] {
            publish(&conn, t);
        }
        let hooks = r#"[{"type":"after-event","cmd":"false","seq":10,"id":1},{"type":"after-receive","cmd":"true","seq":20,"id":2},{"type":"disabled","cmd":"x","seq":30,"id":3}]"#;
        for (name, value) in [(HOOKS_ROW, hooks), (SEEN_ROW, hooks), (LAST_ID_ROW, "3")] {
            backoffice::repo::config_set(&conn, name, value).unwrap();
        }
        // The table exactly as release 0.1 created it.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS bo_hook_state(
               hookid INTEGER PRIMARY KEY,
               cursor INTEGER NOT NULL,
               failures INTEGER NOT NULL DEFAULT 0,
               next_attempt INTEGER NOT NULL DEFAULT 0,
               last_run INTEGER,
               last_error TEXT,
               last_output TEXT
             );
             INSERT INTO bo_hook_state VALUES (1, 2, 3, 5000, 4000, 'exit status: 1', 'oops');
             INSERT INTO bo_hook_state(hookid, cursor, last_run, last_output) VALUES (2, 3, 4100, 'fine');",
        )
        .unwrap();
        (path, conn)
    }

    /// The old state, as the ledger must hold it after the upgrade.
    fn old_state() -> Vec<ledger::Entry> {
        vec![
            ledger::Entry {
                task: TASK.into(),
                target: "1".into(),
                cursor: 2,
                failures: 3,
                next_attempt: 5000,
                last_run: Some(4000),
                last_error: Some("exit status: 1".into()),
                last_output: Some("oops".into()),
            },
            ledger::Entry {
                task: TASK.into(),
                target: "2".into(),
                cursor: 3,
                last_run: Some(4100),
                last_output: Some("fine".into()),
                ..Default::default()
            },
        ]
    }

    /// Issue 11 item 4: `bo_hook_state` of an older release moves into the
    /// ledger in place, whole, once; before that nothing looks lost.
    #[test]
    fn hook_state_of_an_older_release_moves_into_the_ledger_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = old_release(dir.path());
        // Not yet upgraded: a worker is called for, and read-only commands
        // show the old state.
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::Now);
        assert_eq!(
            state(&conn, 1).unwrap(),
            Some(old_state()[0].clone().into())
        );
        assert_eq!(
            Hooks.status((&conn).into(), 0).gauges,
            hook_gauges(1, 1, 0, 1)
        );
        // Upgraded by `install`, twice: the same ledger, the old table gone.
        install(&conn).unwrap();
        assert!(!conn.table_exists(None, LEGACY_TABLE).unwrap());
        assert_eq!(ledger::all(&conn, TASK).unwrap(), old_state());
        install(&conn).unwrap();
        assert_eq!(ledger::all(&conn, TASK).unwrap(), old_state());
        // Reads and the check see the same thing as before: hook 1 backs
        // off until 5000, hook 2 is up to date.
        assert_eq!(
            state(&conn, 2).unwrap(),
            Some(old_state()[1].clone().into())
        );
        assert_eq!(
            Hooks.status((&conn).into(), 0).gauges,
            hook_gauges(1, 1, 0, 1)
        );
        assert_eq!(Hooks.due((&conn).into(), 0).unwrap(), Due::At(5000));
        // Inside a caller's transaction it runs inline.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        install(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();

        // A worker's run upgrades an old repository and then does what is
        // due (here nothing: hook 1 backs off, hook 2 is up to date).
        let dir2 = tempfile::tempdir().unwrap();
        let (path2, conn2) = old_release(dir2.path());
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn2),
            repo: &path2,
            now: 0,
            debug: false,
            term: 0,
        };
        assert_eq!(Hooks.run(&ctx).unwrap(), 0);
        assert!(!conn2.table_exists(None, LEGACY_TABLE).unwrap());
        assert_eq!(ledger::all(&conn2, TASK).unwrap(), old_state());

        // Every writer path upgrades first: `hook add` keeps the old state
        // (a fresh entry at the newest event must not win over it).
        let dir3 = tempfile::tempdir().unwrap();
        let (_, conn3) = old_release(dir3.path());
        let h = add(&conn3, &new("true")).unwrap();
        assert_eq!(h.id, 4);
        assert!(!conn3.table_exists(None, LEGACY_TABLE).unwrap());
        let mut want = old_state();
        want.push(ledger::Entry {
            task: TASK.into(),
            target: "4".into(),
            cursor: 3,
            ..Default::default()
        });
        assert_eq!(ledger::all(&conn3, TASK).unwrap(), want);
        drop(path);
    }

    /// Recording a hook's run is the backoffice's own write: a failing
    /// hook retried every hour must not look like the application writing
    /// (replication would copy the repository each time).
    #[test]
    fn recording_a_hooks_run_is_an_own_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        add(&conn, &new("exit 3")).unwrap();
        publish(&conn, "one");
        backoffice::writes::track(&conn).unwrap();
        let settle = || backoffice::writes::own_write(&conn, |_| Ok(())).unwrap();
        settle();
        let before = backoffice::writes::app_generation(&conn);
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: &path,
            now: backoffice::clock::now(),
            debug: false,
            term: 0,
        };
        Hooks.run(&ctx).unwrap_err();
        assert_eq!(state(&conn, 1).unwrap().unwrap().failures, 1);
        settle();
        assert_eq!(backoffice::writes::app_generation(&conn), before);
    }

    #[test]
    fn timeout_kills_the_process_group() {
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = execute(
            &Invocation {
                id: 1,
                cmd: "echo before; sleep 30 & sleep 30; echo never",
                repo: &dir.path().join("r.db"),
                exe: Path::new("/bin/true"),
                timeout: Duration::from_secs(1),
            },
            &[],
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out.failure.as_deref(), Some("timed out after 1 s"));
        assert_eq!(out.output, "before\n");
    }
}
