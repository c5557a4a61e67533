//! `backoffice schedule`: periodic commands and events, on an SQLite
//! repository file or a PostgreSQL URL.

use std::process::ExitCode;

use anyhow::{Result, bail};
use backoffice::{Backoffice, Db, Started, Tasks, ledger};
use backoffice_tasks::schedules::store::{self, Action, CatchUp, Schedule, TASK, Timing};
use backoffice_tasks::schedules::task::{Plan, plan, slot_text};

use crate::cli::{ScheduleAction, ScheduleArgs};

/// Runs `backoffice schedule`.
pub fn run(a: ScheduleArgs, tasks: Tasks) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        let pg = url.connect()?;
        return act(a.action, Db::Postgres(&pg), None, tasks, Some(&url));
    }
    let repo = super::open(&path)?;
    act(a.action, Db::Sqlite(repo.conn()), Some(&repo), tasks, None)
}

/// Does `action` on `conn`: an SQLite repository (`repo`, checked to be
/// writable before a change) or a PostgreSQL schema (`url`).
fn act(
    action: ScheduleAction,
    conn: Db<'_>,
    repo: Option<&backoffice::Repo>,
    tasks: Tasks,
    url: Option<&backoffice::pg::PgUrl>,
) -> Result<ExitCode> {
    let writable = || -> Result<()> {
        if let Some(r) = repo {
            r.writable()?;
        }
        Ok(())
    };
    let now = backoffice::clock::now();
    match action {
        ScheduleAction::Add {
            name,
            cron,
            tz,
            every,
            command,
            event,
            catch_up,
        } => {
            writable()?;
            let timing = match (cron, every) {
                (Some(pattern), None) => Timing::Cron { pattern, zone: tz },
                (None, Some(every)) => Timing::Every(every),
                _ => bail!("give either --cron PATTERN or --every INTERVAL"),
            };
            let action = match (command, event) {
                (Some(c), None) => Action::Command(c),
                (None, Some(k)) => Action::Event(k),
                _ => bail!("give either --command CMD or --event KIND"),
            };
            let catch_up = CatchUp::parse(&catch_up).unwrap_or(CatchUp::Once);
            let s = store::add(conn, &name, &timing, &action, catch_up, now)?;
            println!("added schedule {}: {}", s.name, describe(conn, &s, now));
        }
        ScheduleAction::List { json } => {
            let all = store::all(conn)?;
            if json {
                let rows: Vec<_> = all.iter().map(|s| to_json(conn, s, now)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if all.is_empty() {
                println!("no schedules (add one with `backoffice schedule add`)");
            } else {
                println!("{:<20} {:<28} {:<24} LAST", "NAME", "TIMING", "NEXT");
                for s in &all {
                    let e = ledger::get(conn, TASK, &s.name)?;
                    println!(
                        "{:<20} {:<28} {:<24} {}",
                        s.name,
                        timing(s),
                        next_words(s, e.as_ref(), now),
                        last_words(e.as_ref(), now)
                    );
                }
            }
        }
        ScheduleAction::Show { name } => {
            let s = get(conn, &name)?;
            let e = ledger::get(conn, TASK, &s.name)?;
            println!("name:      {}", s.name);
            println!("timing:    {}", timing(&s));
            match &s.action {
                Some(Action::Command(c)) => println!("command:   {c}"),
                Some(Action::Event(k)) => println!("event:     {k}"),
                None => println!("action:    none (the row was changed by hand)"),
            }
            println!("catch-up:  {}", s.catch_up.as_str());
            println!("state:     {}", if s.paused { "paused" } else { "active" });
            println!("next:      {}", next_words(&s, e.as_ref(), now));
            println!("last:      {}", last_words(e.as_ref(), now));
            println!(
                "missed:    {} in all ({} at the last catch-up)",
                s.missed, s.last_missed
            );
            if let Some(c) = s.claimed {
                println!(
                    "running:   the slot {} (claimed, not yet finished)",
                    slot_text(c)
                );
            }
            if let Some(out) = e.as_ref().and_then(|e| e.last_output.as_deref()) {
                println!("output of the last run:\n{out}");
            }
        }
        ScheduleAction::Remove { name } => {
            writable()?;
            store::remove(conn, &name)?;
            println!("removed schedule {name}");
        }
        ScheduleAction::Pause { name } => {
            writable()?;
            store::set_paused(conn, &name, true)?;
            println!("paused schedule {name}");
        }
        ScheduleAction::Resume { name } => {
            writable()?;
            store::set_paused(conn, &name, false)?;
            let s = get(conn, &name)?;
            println!("resumed schedule {name}: {}", describe(conn, &s, now));
        }
        ScheduleAction::Run { name } => {
            writable()?;
            store::request_run(conn, &name)?;
            if let Some(url) = url {
                println!("schedule {name}: run requested");
                return super::pg::trigger(url, &tasks, false);
            }
            let Some(sqlite) = conn.sqlite() else {
                return Ok(ExitCode::SUCCESS);
            };
            match Backoffice::new(tasks)
                .reap_children(false)
                .after_request(sqlite)
            {
                Started::Worker { pid } => println!("schedule {name}: started worker {pid}"),
                other => println!(
                    "schedule {name}: run requested; {}",
                    match other {
                        Started::NotNeeded(c) => c.describe(),
                        other => format!("{other:?}"),
                    }
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get(conn: Db<'_>, name: &str) -> Result<Schedule> {
    store::get(conn, name)?.ok_or_else(|| store::ScheduleError::NoSuch(name.to_owned()).into())
}

fn timing(s: &Schedule) -> String {
    s.parsed()
        .map(|p| p.describe())
        .unwrap_or_else(|e| format!("invalid: {e}"))
}

fn next_words(s: &Schedule, e: Option<&ledger::Entry>, now: i64) -> String {
    match plan(s, e, now) {
        Plan::Wait(Some(at)) => format!(
            "{} ({})",
            slot_text(at),
            backoffice::clock::relative(at, now)
        ),
        Plan::Wait(None) if s.paused => "paused".into(),
        Plan::Wait(None) => "none".into(),
        Plan::Broken(why) => format!("never: {why}"),
        Plan::Killed { .. } | Plan::Run { .. } | Plan::Skip { .. } => "due now".into(),
    }
}

fn last_words(e: Option<&ledger::Entry>, now: i64) -> String {
    let Some(e) = e else {
        return "never ran".into();
    };
    let slot = if e.cursor > 0 {
        format!("slot {}", slot_text(e.cursor))
    } else {
        "no slot yet".into()
    };
    match (&e.last_error, e.last_run) {
        (Some(err), _) => format!(
            "{slot}; failing ({} in a row, next try {}): {}",
            e.failures,
            backoffice::clock::relative(e.next_attempt, now),
            backoffice::short_line(err)
        ),
        (None, Some(t)) => format!("{slot}; ok, ran {}", backoffice::clock::relative(t, now)),
        (None, None) => slot,
    }
}

fn describe(conn: Db<'_>, s: &Schedule, now: i64) -> String {
    let e = ledger::get(conn, TASK, &s.name).ok().flatten();
    format!("{}, next {}", timing(s), next_words(s, e.as_ref(), now))
}

fn to_json(conn: Db<'_>, s: &Schedule, now: i64) -> serde_json::Value {
    let e = ledger::get(conn, TASK, &s.name).ok().flatten();
    let next = match plan(s, e.as_ref(), now) {
        Plan::Wait(at) => at,
        Plan::Broken(_) => None,
        _ => Some(now),
    };
    serde_json::json!({
        "name": s.name,
        "timing": timing(s),
        "command": match &s.action { Some(Action::Command(c)) => Some(c), _ => None },
        "event": match &s.action { Some(Action::Event(k)) => Some(k), _ => None },
        "catch_up": s.catch_up.as_str(),
        "paused": s.paused,
        "next_slot": next,
        "last_slot": e.as_ref().map(|e| e.cursor).filter(|&c| c > 0),
        "last_run": e.as_ref().and_then(|e| e.last_run),
        "failures": e.as_ref().map_or(0, |e| e.failures),
        "last_error": e.as_ref().and_then(|e| e.last_error.clone()),
        "missed": s.missed,
        "running_slot": s.claimed,
    })
}
