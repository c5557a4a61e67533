//! `backoffice subscriber`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::Db;
use backoffice_tasks::notify::pg;
use backoffice_tasks::notify::signup;
use backoffice_tasks::notify::subscribers::{self, Changes, New, Subscriber};

use crate::cli::{SubscriberAction, SubscriberArgs};

/// The column names over `subscriber list`'s rows, aligned as [`line`] aligns them.
fn header() -> String {
    format!(
        "{:>4}  {:<32} {:<7} {:<12} {}",
        "id", "address", "mode", "state", "kinds"
    )
}

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

/// Where the subscribers are: an SQLite repository file, or a PostgreSQL
/// schema (whose tables are created on first use). One dispatch below;
/// each store's own functions behind these calls.
enum Store<'a> {
    File(&'a backoffice::Repo),
    Pg(Db<'a>),
}

impl Store<'_> {
    /// Before a change: an SQLite file must be writable.
    fn writable(&self) -> Result<()> {
        if let Store::File(r) = self {
            r.writable()?;
        }
        Ok(())
    }

    fn add(&self, new: &New) -> Result<Subscriber> {
        self.writable()?;
        Ok(match self {
            Store::File(r) => subscribers::add(r.conn(), new)?,
            Store::Pg(db) => pg::subscriber_add(*db, new)?,
        })
    }

    fn list(&self) -> Result<Vec<Subscriber>> {
        Ok(match self {
            Store::File(r) => subscribers::list(r.conn())?,
            Store::Pg(db) => pg::subscriber_list(*db)?,
        })
    }

    fn find(&self, who: &str) -> Result<Option<Subscriber>> {
        Ok(match self {
            Store::File(r) => subscribers::find(r.conn(), who)?,
            Store::Pg(db) => pg::subscriber_find(*db, who)?,
        })
    }

    fn remove(&self, who: &str) -> Result<Subscriber> {
        self.writable()?;
        Ok(match self {
            Store::File(r) => subscribers::remove(r.conn(), who)?,
            Store::Pg(db) => pg::subscriber_remove(*db, who)?,
        })
    }

    fn set(&self, who: &str, changes: &Changes) -> Result<Subscriber> {
        self.writable()?;
        Ok(match self {
            Store::File(r) => subscribers::set(r.conn(), who, changes)?,
            Store::Pg(db) => pg::subscriber_set(*db, who, changes)?,
        })
    }
}

/// Runs `backoffice subscriber`.
pub fn run(a: SubscriberArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let pg_conn = super::pg::url(&path)?.map(|u| u.connect()).transpose()?;
    let file;
    let store = match &pg_conn {
        Some(c) => Store::Pg(Db::Postgres(c)),
        None => {
            file = super::open(&path)?;
            Store::File(&file)
        }
    };
    match a.action {
        SubscriberAction::Add {
            address,
            kinds,
            digest,
            verified,
            confirm,
            name,
        } => {
            let new = New {
                address,
                name,
                kinds,
                digest,
                verified,
            };
            if confirm {
                return add_and_confirm(&store, &new);
            }
            let s = store.add(&new)?;
            println!("added: {}", line(&s));
            if !s.verified {
                println!(
                    "note: {} gets nothing until verified (subscriber set {} --verified on)",
                    s.address, s.id
                );
            }
        }
        SubscriberAction::List { json } => {
            let all = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                if !all.is_empty() {
                    println!("{}", header());
                }
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
            let s = store
                .find(&who)?
                .ok_or_else(|| anyhow::anyhow!("no subscriber {who}"))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        SubscriberAction::Remove { who } => {
            let s = store.remove(&who)?;
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
            let s = store.set(&who, &changes)?;
            println!("{}", line(&s));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `subscriber add --confirm`: the subscriber, unverified, and the
/// sign-up confirmation email queued to it (SQLite only).
fn add_and_confirm(store: &Store, new: &New) -> Result<ExitCode> {
    let Store::File(repo) = store else {
        anyhow::bail!(
            "--confirm needs an SQLite repository (the confirmation links are not supported on PostgreSQL); add the subscriber with --verified, or without it and verify later"
        );
    };
    store.writable()?;
    let (s, lifetime) = signup::add_and_confirm(repo.conn(), new, backoffice::clock::now())?;
    println!("added: {}", line(&s));
    println!(
        "a confirmation email to {} is queued (its link works for {} hours); the next worker run sends it, and {} gets nothing until the link is followed",
        s.address,
        lifetime / 3600,
        s.address
    );
    Ok(ExitCode::SUCCESS)
}
