//! `backoffice outbox`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::clock;
use backoffice_tasks::notify::outbox;

use crate::cli::{OutboxAction, OutboxArgs};

/// Runs `backoffice outbox`.
pub fn run(a: OutboxArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, None)?;
    let repo = super::open(&path)?;
    let conn = repo.conn();
    let now = clock::now();
    match a.action {
        OutboxAction::List {
            queued,
            sent,
            dead,
            limit,
            json,
        } => {
            let state = [(queued, "queued"), (sent, "sent"), (dead, "dead")]
                .iter()
                .find(|(on, _)| *on)
                .map(|(_, s)| *s);
            let rows = outbox::list(conn, state, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    let when = match r.state.as_str() {
                        "sent" => format!(
                            "sent {}",
                            clock::relative(r.sent_time.unwrap_or(r.ctime), now)
                        ),
                        "queued" if r.next_attempt > now => {
                            format!("next try {}", clock::relative(r.next_attempt, now))
                        }
                        "queued" => "due now".to_owned(),
                        _ => format!("after {} attempts", r.attempts),
                    };
                    println!(
                        "{:>6}  {:<6} {:<28} {:<18} {}",
                        r.msgid, r.state, r.address, when, r.subject
                    );
                    if let Some(e) = r.last_error.as_deref().filter(|_| r.state != "sent") {
                        println!("        error: {e}");
                    }
                }
                let (q, s, d) = outbox::counts(conn)?;
                println!("{q} queued, {s} sent, {d} dead");
            }
        }
        OutboxAction::Retry { id } => {
            repo.writable()?;
            let n = outbox::retry(conn, id, now)?;
            println!("{n} message{} queued again", if n == 1 { "" } else { "s" });
        }
        OutboxAction::Purge { days, dead } => {
            repo.writable()?;
            let n = outbox::purge(conn, now - days.max(0) * 86_400, dead)?;
            println!("{n} message{} deleted", if n == 1 { "" } else { "s" });
        }
    }
    Ok(ExitCode::SUCCESS)
}
