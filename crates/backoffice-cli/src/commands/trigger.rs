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
    // This process exits right away and runs no other thread: its worker
    // is itself, forked (one process start fewer on the way to the work);
    // init reaps it.
    let bo = Backoffice::new(tasks).reap_children(false);
    let started = bo.trigger(repo);
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
