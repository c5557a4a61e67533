//! `backoffice webhook`, on an SQLite repository file or a PostgreSQL URL.

use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice::{Db, clock};
use backoffice_tasks::webhooks::{self, New, Webhook};

use crate::cli::{WebhookAction, WebhookArgs};

fn line(w: &Webhook, now: i64) -> String {
    let mut s = format!(
        "{:>4}  {:<40} {:<7} kinds {:<12} secret {}  cursor {}  delivered {}",
        w.id,
        w.url,
        w.state,
        w.kinds,
        webhooks::mask(&w.secret),
        w.cursor,
        w.delivered
    );
    if w.failures > 0 {
        s.push_str(&format!("  failures {}", w.failures));
        if w.state == "active" && w.next_attempt > now {
            s.push_str(&format!(
                ", next attempt {}",
                clock::relative(w.next_attempt, now)
            ));
        }
    }
    if let Some(e) = &w.last_error {
        s.push_str(&format!("\n      last error: {e}"));
    }
    s
}

/// Runs `backoffice webhook`.
pub fn run(a: WebhookArgs) -> Result<ExitCode> {
    if let WebhookAction::Secret = a.action {
        // Needs no repository: the secret goes to the receiver's
        // configuration and to `add --secret`, nowhere else.
        println!("{}", webhooks::standard::generate()?);
        return Ok(ExitCode::SUCCESS);
    }
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        let conn = url.connect()?;
        return act(a.action, Db::Postgres(&conn), None);
    }
    let repo = super::open(&path)?;
    act(a.action, Db::Sqlite(repo.conn()), Some(&repo))
}

/// Does `action` on `conn`; `repo` is the SQLite repository, to check it is
/// writable (a PostgreSQL schema has no such check: the server's grants
/// decide).
fn act(action: WebhookAction, conn: Db<'_>, repo: Option<&backoffice::Repo>) -> Result<ExitCode> {
    let writable = || -> Result<()> {
        if let Some(r) = repo {
            r.writable()?;
        }
        Ok(())
    };
    let now = clock::now();
    match action {
        WebhookAction::Add {
            url,
            secret,
            secret_file,
            kinds,
            from_start,
        } => {
            let secret = super::secret::read(
                "the webhook secret",
                secret,
                secret_file.as_deref(),
                Some("BACKOFFICE_WEBHOOK_SECRET"),
            )?
            .context(
                "a webhook needs a secret: --secret-file FILE (- for standard input), \
                 $BACKOFFICE_WEBHOOK_SECRET or --secret",
            )?;
            writable()?;
            let w = webhooks::add(
                conn,
                &New {
                    url,
                    secret,
                    kinds,
                    from_start,
                },
            )?;
            println!("added: {}", line(&w, now));
        }
        WebhookAction::List { json } => {
            let all = webhooks::list(conn)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for w in &all {
                    println!("{}", line(w, now));
                }
                println!(
                    "{} webhook{}",
                    all.len(),
                    if all.len() == 1 { "" } else { "s" }
                );
            }
        }
        WebhookAction::Remove { id } => {
            writable()?;
            let w = webhooks::remove(conn, id)?;
            println!("removed #{} {}", w.id, w.url);
        }
        WebhookAction::Pause { id } => {
            writable()?;
            let w = webhooks::pause(conn, id)?;
            println!("{}", line(&w, now));
        }
        WebhookAction::Retry { id } | WebhookAction::Resume { id } => {
            writable()?;
            let w = webhooks::retry(conn, id)?;
            println!("{}", line(&w, now));
        }
        WebhookAction::Test { id } => match webhooks::test(conn, id)? {
            Ok(status) => {
                println!("HTTP {status}");
                if !(200..300).contains(&status) {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(e) => anyhow::bail!("test delivery to webhook #{id} failed: {e}"),
        },
        // Handled in `run` before any repository is opened; the same here.
        WebhookAction::Secret => println!("{}", webhooks::standard::generate()?),
    }
    Ok(ExitCode::SUCCESS)
}
