//! `backoffice hook`, on an SQLite repository file or a PostgreSQL URL.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use backoffice::Db;
use backoffice_tasks::hooks::{self, Changes, Hook, New, State};

use crate::cli::{HookAction, HookArgs};

fn state_words(h: &Hook, s: Option<&State>, now: i64) -> String {
    match s {
        _ if !h.runnable() => format!("not run (type {})", h.kind),
        None => "new (not yet seen by a run)".into(),
        Some(s) if s.failures == 0 => "ok".into(),
        Some(s) => format!(
            "{} failure(s), next attempt {}: {}",
            s.failures,
            backoffice::clock::relative(s.next_attempt, now),
            s.last_error.as_deref().unwrap_or("?")
        ),
    }
}

fn line(h: &Hook, s: Option<&State>, now: i64) -> String {
    let cursor = s.map_or("-".to_owned(), |s| s.cursor.to_string());
    format!(
        "{:>3}  {:<13} {:>5}  cursor {:<6} {}  {}",
        h.id,
        h.kind,
        h.seq,
        cursor,
        state_words(h, s, now),
        h.cmd
    )
}

/// Runs `backoffice hook`.
pub fn run(a: HookArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        let conn = url.connect()?;
        // The repository as hooks see it (`%R`): the URL, password hidden.
        return act(
            a.action,
            Db::Postgres(&conn),
            Path::new(url.redacted()),
            None,
        );
    }
    let repo = super::open(&path)?;
    act(a.action, Db::Sqlite(repo.conn()), &path, Some(&repo))
}

/// Does `action` on `conn`; `repo` is the SQLite repository, to check it is
/// writable (a PostgreSQL schema has no such check: the server's grants
/// decide).
fn act(
    action: HookAction,
    conn: Db<'_>,
    path: &Path,
    repo: Option<&backoffice::Repo>,
) -> Result<ExitCode> {
    let writable = || -> Result<()> {
        if let Some(r) = repo {
            r.writable()?;
        }
        Ok(())
    };
    let now = backoffice::clock::now();
    match action {
        HookAction::Add {
            command,
            seq,
            kind,
            from_start,
        } => {
            writable()?;
            let h = hooks::add(
                conn,
                &New {
                    cmd: command,
                    seq,
                    kind,
                    from_start,
                },
            )?;
            let s = hooks::state(conn, h.id)?;
            println!("added: {}", line(&h, s.as_ref(), now));
        }
        HookAction::List { json } => {
            let all = hooks::list(conn)?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(h, s)| serde_json::json!({"hook": h, "state": s}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (h, s) in &all {
                    println!("{}", line(h, s.as_ref(), now));
                }
                println!(
                    "{} hook{}",
                    all.len(),
                    if all.len() == 1 { "" } else { "s" }
                );
            }
        }
        HookAction::Edit {
            id,
            command,
            seq,
            kind,
        } => {
            writable()?;
            let h = hooks::edit(
                conn,
                id,
                &Changes {
                    cmd: command,
                    seq,
                    kind,
                },
            )?;
            let s = hooks::state(conn, h.id)?;
            println!("{}", line(&h, s.as_ref(), now));
        }
        HookAction::Remove { id } => {
            writable()?;
            let h = hooks::remove(conn, id)?;
            println!("removed hook {}: {}", h.id, h.cmd);
        }
        HookAction::Pause { id } => {
            writable()?;
            let h = hooks::pause(conn, id)?;
            println!("paused hook {}: {}", h.id, h.cmd);
        }
        HookAction::Resume { id } => {
            writable()?;
            let h = hooks::resume(conn, id)?;
            println!("resumed hook {} (due now): {}", h.id, h.cmd);
        }
        HookAction::Test { id } => {
            let (events, out) = hooks::test(conn, path, id)?;
            println!(
                "hook {id} ran on {} event(s) ({}..{}) in {} ms: {}",
                events.len(),
                events.first().map_or(0, |e| e.eventid),
                events.last().map_or(0, |e| e.eventid),
                out.elapsed_ms,
                out.failure.as_deref().unwrap_or("exit status: 0")
            );
            println!("output ({} bytes):", out.output_bytes);
            print!("{}", out.output);
            if !out.output.is_empty() && !out.output.ends_with('\n') {
                println!();
            }
            if out.failure.is_some() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
