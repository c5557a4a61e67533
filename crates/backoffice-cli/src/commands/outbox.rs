//! `backoffice outbox`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::{Db, clock};
use backoffice_tasks::notify::{outbox, pg};

use crate::cli::{OutboxAction, OutboxArgs};

/// Runs `backoffice outbox`.
pub fn run(a: OutboxArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        let conn = url.connect()?;
        let db = Db::Postgres(&conn);
        // Every time in a PostgreSQL repository is the database's.
        let now = pg::db_now(db)?;
        return act(a.action, &Store::Pg(db), now);
    }
    let repo = super::open(&path)?;
    let now = clock::now();
    act(a.action, &Store::Sqlite(&repo), now)
}

/// The repository an `outbox` command works on.
enum Store<'a> {
    Sqlite(&'a backoffice::Repo),
    Pg(Db<'a>),
}

impl Store<'_> {
    fn writable(&self) -> Result<()> {
        match self {
            Store::Sqlite(r) => Ok(r.writable()?),
            // The server's grants decide.
            Store::Pg(_) => Ok(()),
        }
    }

    fn list(&self, state: Option<&str>, limit: i64) -> Result<Vec<outbox::Row>> {
        Ok(match self {
            Store::Sqlite(r) => outbox::list(r.conn(), state, limit)?,
            Store::Pg(db) => pg::outbox_list(*db, state, limit)?,
        })
    }

    fn counts(&self) -> Result<(i64, i64, i64)> {
        Ok(match self {
            Store::Sqlite(r) => outbox::counts(r.conn())?,
            Store::Pg(db) => pg::outbox_counts(*db)?,
        })
    }

    fn retry(&self, id: Option<i64>, now: i64) -> Result<u64> {
        Ok(match self {
            Store::Sqlite(r) => outbox::retry(r.conn(), id, now)? as u64,
            Store::Pg(db) => pg::outbox_retry(*db, id, now)?,
        })
    }

    fn purge(&self, before: i64, dead: bool) -> Result<u64> {
        Ok(match self {
            Store::Sqlite(r) => outbox::purge(r.conn(), before, dead)? as u64,
            Store::Pg(db) => pg::outbox_purge(*db, before, dead)?,
        })
    }
}

fn act(action: OutboxAction, store: &Store<'_>, now: i64) -> Result<ExitCode> {
    match action {
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
            let rows = store.list(state, limit)?;
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
                let (q, s, d) = store.counts()?;
                println!("{q} queued, {s} sent, {d} dead");
            }
        }
        OutboxAction::Retry { id } => {
            store.writable()?;
            let n = store.retry(id, now)?;
            println!("{n} message{} queued again", if n == 1 { "" } else { "s" });
        }
        OutboxAction::Purge { days, dead } => {
            store.writable()?;
            let before = now.saturating_sub(days.max(0).saturating_mul(86_400));
            let n = store.purge(before, dead)?;
            println!("{n} message{} deleted", if n == 1 { "" } else { "s" });
        }
    }
    Ok(ExitCode::SUCCESS)
}
