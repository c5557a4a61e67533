//! `backoffice hook`.

use std::process::ExitCode;

use anyhow::Result;
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
    let path = super::repo_path(a.repository, None)?;
    let repo = super::open(&path)?;
    let conn = repo.conn();
    let now = backoffice::clock::now();
    match a.action {
        HookAction::Add {
            command,
            seq,
            kind,
            from_start,
        } => {
            repo.writable()?;
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
            repo.writable()?;
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
            repo.writable()?;
            let h = hooks::remove(conn, id)?;
            println!("removed hook {}: {}", h.id, h.cmd);
        }
        HookAction::Test { id } => {
            let (events, out) = hooks::test(conn, &path, id)?;
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
