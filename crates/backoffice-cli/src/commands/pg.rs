//! The commands on a PostgreSQL repository (`postgres://…?schema=NAME`):
//! `run`, `worker`, `trigger`, `lease`, `status`, `setting` and `publish`
//! are here; `hook`, `webhook`, `subscriber`, `outbox` and `token` take a
//! URL in their own modules, `serve` and `cgi` in the web front
//! (`web/site.rs`). `peer` and `maintain` work on SQLite repository files
//! only, and say so.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice::pg::{self, PgConn, PgUrl};
use backoffice::settings;
use backoffice::status::{Cluster, SlotView};
use backoffice::{Db, Outcome, RunOptions, Tasks, clock};

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

fn cluster(conn: &PgConn) -> Result<Cluster> {
    Ok(pg::cluster(conn)?)
}

fn render_lease(c: &Cluster) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "repository:  {} ({})", c.repository, c.store);
    let _ = writeln!(
        out,
        "db clock:    {} UTC ({})",
        clock::format_utc(c.db_now),
        c.clock_words()
    );
    let _ = writeln!(
        out,
        "term:        {} ({} hand-over{} after a holder's heartbeat ran out)",
        c.term,
        c.handovers,
        if c.handovers == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "current:     {}",
        SlotView::words(c.current.as_ref(), c.db_now)
    );
    if c.current.is_none() && c.lease_expires > 0 {
        let _ = writeln!(
            out,
            "             (the last lease ends {}: the next run waits for it)",
            clock::relative(c.lease_expires, c.db_now)
        );
    }
    let _ = writeln!(
        out,
        "on deck:     {}",
        SlotView::words(c.on_deck.as_ref(), c.db_now)
    );
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
