//! `backoffice status`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::Tasks;

use crate::cli::StatusArgs;

/// Runs `backoffice status`.
pub fn run(a: StatusArgs, tasks: Tasks) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        return super::pg::status(&url, &tasks, a.json);
    }
    // Never wait on a locked repository: say it is busy (status reads on
    // behalf of a person or a monitor, which should not hang).
    let repo = backoffice::Repo::open_with(&path, backoffice::repo::STATUS_BUSY_TIMEOUT)?;
    let st = backoffice::status::status(&repo, &tasks)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{st}");
    }
    Ok(ExitCode::SUCCESS)
}
