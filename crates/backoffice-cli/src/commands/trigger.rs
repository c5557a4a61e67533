//! `backoffice trigger`: the after-request check for hosts in any language.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::{Backoffice, Started, Tasks};

use crate::cli::TriggerArgs;

/// Runs `backoffice trigger`.
pub fn run(a: TriggerArgs, tasks: Tasks) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let repo = super::open(&path)?;
    // This process exits right away; init reaps the worker.
    let bo = Backoffice::new(tasks).reap_children(false);
    let started = bo.after_request(repo.conn());
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
