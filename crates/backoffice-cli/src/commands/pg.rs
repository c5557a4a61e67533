//! The commands on a PostgreSQL repository (`postgres://…?schema=NAME`):
//! `run`, `worker`, `trigger`, `lease`, `status`, `setting` and `publish`
//! are here; `hook`, `webhook`, `subscriber`, `outbox` and `token` take a
//! URL in their own modules. The other commands (`peer`, `maintain`,
//! `serve`, `cgi`) work on SQLite repository files only, and say so.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice::pg::{self, PgConn, PgLease, PgUrl};
use backoffice::settings::{self, Settings};
use backoffice::{Db, Outcome, RunOptions, Slot, Tasks, clock};
use serde::Serialize;

/// The repository as a PostgreSQL URL, if it is one. The full URL (with
/// its password) may come from the environment, as it does for a worker.
pub fn url(path: &Path) -> Result<Option<PgUrl>> {
    match path.to_str() {
        Some(s) if pg::is_url(s) => Ok(Some(pg::worker_url(s)?)),
        _ => Ok(None),
    }
}

fn connect(url: &PgUrl) -> Result<PgConn> {
    Ok(url.connect()?)
}

/// `backoffice run URL`: one worker through the lease.
pub fn run(url: &PgUrl, tasks: &Tasks, opts: &RunOptions) -> Result<Outcome> {
    Ok(pg::run(url, tasks, opts)?)
}

/// `backoffice trigger URL`: the check, and a worker when work is due.
pub fn trigger(url: &PgUrl, tasks: &Tasks, quiet: bool) -> Result<ExitCode> {
    let conn = connect(url)?;
    let check = pg::check(&conn, tasks);
    let said = if check.is_needed() {
        let cmd = backoffice::process::WorkerCommand::current_exe()
            .context("finding the program to start a worker with")?;
        let logfile = conn
            .settings()
            .ok()
            .and_then(|s| s.logfile)
            .map(|p| p.to_path_buf());
        match pg::spawn_worker(&cmd, url, logfile.as_deref()) {
            Ok(child) => format!("work is due: started worker {}", child.id()),
            Err(e) => format!("work is due, but no worker could be started: {e}"),
        }
    } else {
        check.describe()
    };
    if !quiet {
        println!("{said}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `backoffice publish URL`: publish an event, then the check.
pub fn publish(
    url: &PgUrl,
    ev: &backoffice::events::Event,
    tasks: &Tasks,
    no_trigger: bool,
) -> Result<ExitCode> {
    let conn = connect(url)?;
    let id = pg::publish(&mut *conn.client(), url.schema(), ev)?;
    println!("published event {id} (its position in the log is given by the next worker)");
    drop(conn);
    if !no_trigger {
        trigger(url, tasks, false)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `backoffice setting URL [NAME [VALUE]]`.
pub fn setting(
    url: &PgUrl,
    tasks: &Tasks,
    name: Option<&str>,
    value: Option<String>,
    unset: bool,
) -> Result<ExitCode> {
    let registry = tasks.settings();
    let def = name.map(|n| registry.def(n)).transpose()?;
    let conn = connect(url)?;
    let db = Db::Postgres(&conn);
    let show = |d: &settings::Def| -> Result<String> {
        Ok(match db.config_get(d.name)? {
            Some(_) if d.secret => format!("{:<24} ********", d.name),
            Some(v) => format!("{:<24} {}", d.name, v),
            None => format!("{:<24} {} (default)", d.name, d.default),
        })
    };
    match (def, value) {
        (None, _) => {
            for d in registry.iter() {
                println!("{}", show(d)?);
            }
        }
        (Some(d), None) if unset => {
            db.execute("DELETE FROM config WHERE name = ?1", &[d.name.into()])?;
            println!("{}", show(d)?);
        }
        (Some(d), None) => println!("{}", show(d)?),
        (Some(d), Some(v)) => {
            let v = d.validate(&v)?;
            db.config_set(d.name, &v)?;
            println!("{}", show(d)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `backoffice lease URL [--reset]`.
pub fn lease(url: &PgUrl, reset: bool) -> Result<ExitCode> {
    let conn = connect(url)?;
    if reset {
        pg::reset_lease(&conn)?;
    }
    let st = cluster(&conn)?;
    print!("{}", render_lease(&st));
    Ok(ExitCode::SUCCESS)
}

/// One slot of the lease, for people and for JSON.
#[derive(Debug, Serialize)]
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

/// The cluster as `status` and `lease` show it.
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// The repository URL, its password hidden.
    pub repository: String,
    /// Always "PostgreSQL".
    pub store: &'static str,
    /// The database's clock, Unix seconds.
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
    /// The engine's settings that matter here.
    pub lease_time: i64,
    /// Heartbeat interval, seconds.
    pub heartbeat: i64,
    /// `backoffice-disable`.
    pub disabled: bool,
}

fn view(slot: &Slot, host: Option<&str>, now: i64, grace: i64, working: bool) -> Option<SlotView> {
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

fn cluster(conn: &PgConn) -> Result<Cluster> {
    let local_before = clock::now();
    let db_now = conn.now()?;
    let local_after = clock::now();
    let s: Settings = conn.settings()?;
    let l: PgLease = pg::read_lease(conn)?;
    let grace = s
        .heartbeat
        .max(1)
        .saturating_mul(backoffice::HEARTBEAT_GRACE_BEATS);
    Ok(Cluster {
        repository: conn.url().redacted().to_owned(),
        store: "PostgreSQL",
        db_now,
        clock_gap: (local_before.saturating_add(local_after) / 2).saturating_sub(db_now),
        host: pg::host_id(),
        term: l.lease.term,
        handovers: l.handovers,
        current: view(&l.lease.current, l.cur_host.as_deref(), db_now, grace, true),
        lease_expires: l.lease.current.expires,
        on_deck: view(&l.lease.next, l.next_host.as_deref(), db_now, grace, false),
        lease_time: s.lease_time,
        heartbeat: s.heartbeat,
        disabled: s.disable,
    })
}

fn slot_line(v: &Option<SlotView>, now: i64) -> String {
    match v {
        None => "nobody".into(),
        Some(v) => {
            let mut s = format!(
                "{} pid {}, until {} ({})",
                v.host.as_deref().unwrap_or("?"),
                v.pid,
                clock::format_utc(v.expires),
                clock::relative(v.expires, now)
            );
            if let Some(age) = v.heartbeat_age {
                let _ = write!(s, ", heartbeat {age} s ago");
            }
            s.push_str(if v.alive {
                ", alive"
            } else {
                ", heartbeat run out"
            });
            s
        }
    }
}

fn render_lease(c: &Cluster) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "repository:  {} ({})", c.repository, c.store);
    let _ = writeln!(
        out,
        "db clock:    {} UTC (this host, {}, is {:+} s from it)",
        clock::format_utc(c.db_now),
        c.host,
        c.clock_gap
    );
    let _ = writeln!(
        out,
        "term:        {} ({} hand-over{} after a holder's heartbeat ran out)",
        c.term,
        c.handovers,
        if c.handovers == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "current:     {}", slot_line(&c.current, c.db_now));
    if c.current.is_none() && c.lease_expires > 0 {
        let _ = writeln!(
            out,
            "             (the last lease ends {}: the next run waits for it)",
            clock::relative(c.lease_expires, c.db_now)
        );
    }
    let _ = writeln!(out, "on deck:     {}", slot_line(&c.on_deck, c.db_now));
    out
}

/// `backoffice status URL [--json]`.
pub fn status(url: &PgUrl, tasks: &Tasks, json: bool) -> Result<ExitCode> {
    let conn = connect(url)?;
    let c = cluster(&conn)?;
    let now = c.db_now;
    let db = Db::Postgres(&conn);
    let last_run: Option<serde_json::Value> = db
        .config_get(backoffice::LAST_RUN_ROW)?
        .and_then(|j| serde_json::from_str(&j).ok());
    let due = tasks.due_each(db, now);
    let mut task_lines = Vec::new();
    for t in tasks.iter() {
        let st = t.status(db, now);
        let d = due
            .iter()
            .find(|(n, _)| n == t.name())
            .map(|(_, d)| match d {
                Ok(d) if d.is_due(now) => "due now".to_owned(),
                Ok(backoffice::Due::At(at)) => format!("next due {}", clock::relative(*at, now)),
                Ok(_) => "nothing due".to_owned(),
                Err(e) => format!("cannot tell: {e}"),
            })
            .unwrap_or_default();
        task_lines.push(serde_json::json!({
            "task": t.name(), "due": d, "info": st.info, "problems": st.problems,
        }));
    }
    if json {
        let v = serde_json::json!({
            "cluster": c, "last_run": last_run, "tasks": task_lines,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = render_lease(&c);
    let _ = writeln!(
        out,
        "settings:    lease time {} s, heartbeat every {} s{}",
        c.lease_time,
        c.heartbeat,
        if c.disabled {
            ", DISABLED (backoffice-disable)"
        } else {
            ""
        }
    );
    match &last_run {
        Some(r) => {
            let started = r.get("started").and_then(|v| v.as_i64()).unwrap_or(0);
            let _ = writeln!(
                out,
                "last run:    {} UTC ({}), by pid {}",
                clock::format_utc(started),
                clock::relative(started, now),
                r.get("pid").and_then(|v| v.as_i64()).unwrap_or(0)
            );
        }
        None => {
            let _ = writeln!(out, "last run:    never");
        }
    }
    for t in &task_lines {
        let _ = writeln!(
            out,
            "task {}: {}",
            t["task"].as_str().unwrap_or(""),
            t["due"].as_str().unwrap_or("")
        );
        for (key, label) in [("info", ""), ("problems", "PROBLEM: ")] {
            for l in t[key].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  {label}{}", l.as_str().unwrap_or(""));
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
