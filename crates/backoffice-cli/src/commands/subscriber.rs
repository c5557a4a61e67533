//! `backoffice subscriber`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::Db;
use backoffice_tasks::notify::pg;
use backoffice_tasks::notify::subscribers::{self, Changes, New, Subscriber};

use crate::cli::{SubscriberAction, SubscriberArgs};

fn line(s: &Subscriber) -> String {
    let mode = if s.digest { "digest" } else { "alerts" };
    let state = match (s.verified, s.donotcall) {
        (_, true) => "unsubscribed",
        (false, _) => "unverified",
        _ => "active",
    };
    format!(
        "{:>4}  {:<32} {:<7} {:<12} {}",
        s.id, s.address, mode, state, s.kinds
    )
}

/// Runs `backoffice subscriber`.
pub fn run(a: SubscriberArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, None)?;
    if let Some(url) = super::pg::url(&path)? {
        let conn = url.connect()?;
        return run_pg(a.action, Db::Postgres(&conn));
    }
    let repo = super::open(&path)?;
    let conn = repo.conn();
    match a.action {
        SubscriberAction::Add {
            address,
            kinds,
            digest,
            verified,
            name,
        } => {
            repo.writable()?;
            let s = subscribers::add(
                conn,
                &New {
                    address,
                    name,
                    kinds,
                    digest,
                    verified,
                },
            )?;
            println!("added: {}", line(&s));
            if !s.verified {
                println!(
                    "note: {} gets nothing until verified (subscriber set {} --verified on)",
                    s.address, s.id
                );
            }
        }
        SubscriberAction::List { json } => {
            let all = subscribers::list(conn)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for s in &all {
                    println!("{}", line(s));
                }
                println!(
                    "{} subscriber{}",
                    all.len(),
                    if all.len() == 1 { "" } else { "s" }
                );
            }
        }
        SubscriberAction::Show { who } => {
            let s = subscribers::find(conn, &who)?
                .ok_or_else(|| anyhow::anyhow!("no subscriber {who}"))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        SubscriberAction::Remove { who } => {
            repo.writable()?;
            let s = subscribers::remove(conn, &who)?;
            println!("removed {}", s.address);
        }
        SubscriberAction::Set {
            who,
            kinds,
            digest,
            verified,
            unsubscribed,
            name,
        } => {
            repo.writable()?;
            let changes = Changes {
                kinds,
                digest: super::on_off("digest", digest.as_deref())?,
                verified: super::on_off("verified", verified.as_deref())?,
                donotcall: super::on_off("unsubscribed", unsubscribed.as_deref())?,
                name,
            };
            let s = subscribers::set(conn, &who, &changes)?;
            println!("{}", line(&s));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `backoffice subscriber` on a PostgreSQL repository (the tables are
/// created in its schema on first use).
fn run_pg(action: SubscriberAction, db: Db<'_>) -> Result<ExitCode> {
    match action {
        SubscriberAction::Add {
            address,
            kinds,
            digest,
            verified,
            name,
        } => {
            let s = pg::subscriber_add(
                db,
                &New {
                    address,
                    name,
                    kinds,
                    digest,
                    verified,
                },
            )?;
            println!("added: {}", line(&s));
            if !s.verified {
                println!(
                    "note: {} gets nothing until verified (subscriber set {} --verified on)",
                    s.address, s.id
                );
            }
        }
        SubscriberAction::List { json } => {
            let all = pg::subscriber_list(db)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for s in &all {
                    println!("{}", line(s));
                }
                println!(
                    "{} subscriber{}",
                    all.len(),
                    if all.len() == 1 { "" } else { "s" }
                );
            }
        }
        SubscriberAction::Show { who } => {
            let s = pg::subscriber_find(db, &who)?
                .ok_or_else(|| anyhow::anyhow!("no subscriber {who}"))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        SubscriberAction::Remove { who } => {
            let s = pg::subscriber_remove(db, &who)?;
            println!("removed {}", s.address);
        }
        SubscriberAction::Set {
            who,
            kinds,
            digest,
            verified,
            unsubscribed,
            name,
        } => {
            let changes = Changes {
                kinds,
                digest: super::on_off("digest", digest.as_deref())?,
                verified: super::on_off("verified", verified.as_deref())?,
                donotcall: super::on_off("unsubscribed", unsubscribed.as_deref())?,
                name,
            };
            let s = pg::subscriber_set(db, &who, &changes)?;
            println!("{}", line(&s));
        }
    }
    Ok(ExitCode::SUCCESS)
}
