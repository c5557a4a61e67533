//! `backoffice maintain`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice_tasks::maintain;

use crate::cli::MaintainArgs;

/// Runs `backoffice maintain`.
pub fn run(a: MaintainArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let repo = super::open(&path)?;
    repo.writable()?;
    // On a terminal, which step is running and for how long: a
    // quick_check of a large file takes seconds and prints nothing.
    let ticker = super::progress::Ticker::start();
    let reports = maintain::maintain_with(
        repo.conn(),
        repo.path(),
        backoffice::clock::now(),
        a.now,
        &mut |step| ticker.set(format!("maintain: {}", step.name())),
    )?;
    drop(ticker);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let mark = match (r.ran, r.ok && !r.alarm) {
                (false, _) => "-",
                (true, true) => "ok",
                (true, false) => "FAILED",
            };
            println!("{:<11} {:<6} {}", r.step.name(), mark, r.text);
        }
    }
    Ok(if reports.iter().all(|r| r.ok && !r.alarm) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
