//! `backoffice trigger`: the after-request check for hosts in any language.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::{Backoffice, Check, Repo, Started, Tasks};

use crate::cli::TriggerArgs;

/// Runs `backoffice trigger`.
pub fn run(a: TriggerArgs, tasks: Tasks) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        return super::pg::trigger(&url, &tasks, a.quiet);
    }
    // The check never waits for a lock, and neither does opening the
    // repository for it: a locked repository answers "not now".
    let repo = match Repo::open_with(&path, backoffice::repo::CHECK_BUSY_TIMEOUT) {
        Ok(r) => r,
        Err(backoffice::Error::Locked { .. }) => {
            if !a.quiet {
                println!("{}", Check::Busy.describe());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    // This process exits right away; init reaps the worker.
    let bo = Backoffice::new(tasks).reap_children(false);
    let started = bo.after_request(repo.conn());
    if matches!(started, Started::Worker { .. }) {
        hand_wal_to_worker(&repo);
    }
    if !a.quiet {
        match &started {
            Started::NotNeeded(c) => println!("{}", c.describe()),
            Started::Worker { pid } => println!("work is due: started worker {pid}"),
            Started::InProcess(o) => println!("could not start a worker; ran in-process: {o:?}"),
            Started::Failed(e) => println!("could not start a worker or run in-process: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A worker was just started and is on its way to this repository: leave
/// SQLite's `-wal` and `-shm` files for it rather than remove them.
///
/// In WAL mode, when nothing else holds the database open, this command is
/// the last connection and its close would checkpoint the WAL and delete
/// both files; a moment later the worker's open creates them again: two
/// unlinks and two file creations in one directory, racing each other, on
/// the way from the request to its work. Turning off
/// the checkpoint-on-close for this one connection leaves them as a
/// server's long-lived connection would; the worker, the last to close,
/// checkpoints and removes them as usual. Nothing is weakened: a WAL file is
/// part of the database, this command wrote nothing, and any frames a
/// crashed writer left are checkpointed by the next closer. In rollback
/// mode the setting does nothing.
fn hand_wal_to_worker(repo: &Repo) {
    use rusqlite::config::DbConfig;
    if let Err(e) = repo
        .conn()
        .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
    {
        // Only the start-up time is at stake: close as usual.
        tracing::debug!(error = %e, "cannot keep the WAL files for the worker");
    }
}
