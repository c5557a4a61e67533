//! `backoffice run`: one worker, a sweep, or `--poll` forever.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use backoffice::poll::{Poller, SweepOptions, SweepReport, Visit};
use backoffice::{Outcome, Repo, RunOptions, Tasks};

use crate::cli::RunArgs;

/// Fossil's default for `--min`.
const DEFAULT_MIN: u64 = 3600;

/// Runs `backoffice run`.
pub fn run(a: RunArgs, tasks: Tasks) -> Result<ExitCode> {
    let mut repos: Vec<PathBuf> = a.repos;
    repos.extend(a.repository);
    if repos.is_empty() {
        bail!("no repository given: name one or more REPO files");
    }
    let opts = RunOptions {
        nodelay: a.nodelay,
        nolease: a.nolease,
        debug: a.debug,
        trace: a.trace,
        logfile: a.logfile,
    };
    let busy = Duration::from_millis(a.busy_timeout);
    if repos.len() == 1 && a.poll.is_none() {
        if let Some(url) = super::pg::url(&repos[0])? {
            let outcome = super::pg::run(&url, &tasks, &opts)?;
            report_outcome(Path::new(url.redacted()), &outcome, &opts);
            return Ok(ExitCode::SUCCESS);
        }
    }
    if repos.len() == 1 && a.poll.is_none() {
        let mut repo = Repo::open_with(&repos[0], busy)?;
        let outcome = backoffice::run(&mut repo, &tasks, &opts)?;
        report_outcome(&repos[0], &outcome, &opts);
        return Ok(ExitCode::SUCCESS);
    }
    let sweep = SweepOptions {
        run: opts.clone(),
        jobs: a.jobs.unwrap_or_else(backoffice::poll::default_jobs),
        busy,
        min: a
            .poll
            .map(|_| Duration::from_secs(a.min.unwrap_or(DEFAULT_MIN))),
    };
    let mut poller = Poller::new(repos, tasks, sweep);
    match a.poll {
        None => {
            let report = poller.sweep();
            let failed = print_report(&report, &opts);
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(secs) => {
            // Sweeps made by earlier images of this process (see below).
            let carried = |name: &str| -> u64 {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let before = carried(SWEEPS_DONE);
            // With --sweeps the poll ends, and like a single sweep it
            // reports failure when any repository failed in any sweep
            // (of this image or an earlier one).
            let mut failed = carried(SWEEPS_FAILED);
            let interval = Duration::from_secs(secs.max(1));
            let mut done = before;
            loop {
                let left = a.sweeps.map(|m| m.saturating_sub(done));
                if left == Some(0) {
                    break;
                }
                let mut replaced = false;
                let n = poller.poll(interval, left, |r| {
                    failed = failed.saturating_add(print_report(r, &opts) as u64);
                    replaced = backoffice::process::exe_replaced();
                    if replaced {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                });
                done = done.saturating_add(n);
                if !replaced {
                    break;
                }
                // Returns only if the new binary could not be started.
                reexec(done, failed);
                std::thread::sleep(interval);
            }
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// The environment variable that carries the number of sweeps already
/// made across a re-execution, so `--sweeps` still counts them all.
const SWEEPS_DONE: &str = "BACKOFFICE_POLL_SWEEPS_DONE";
/// Failures in those sweeps, so the exit status counts them too.
const SWEEPS_FAILED: &str = "BACKOFFICE_POLL_SWEEPS_FAILED";

/// Re-executes this `run --poll` with the same arguments from the binary now
/// installed at its path: an upgrade (a new file moved over the old one)
/// is picked up between sweeps without restarting anything by hand, as the
/// next detached worker picks it up. No lease is held between sweeps. If the
/// new binary cannot be started, this one goes on polling.
fn reexec(sweeps_done: u64, failed: u64) {
    use std::os::unix::process::CommandExt;
    let exe = match backoffice::process::installed_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("backoffice: the binary was replaced, but {e}; polling on");
            return;
        }
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(SWEEPS_DONE, sweeps_done.to_string())
        .env(SWEEPS_FAILED, failed.to_string())
        .exec();
    eprintln!(
        "backoffice: the binary was replaced, but {} cannot be started ({err}); polling on with the old one",
        exe.display()
    );
}

fn report_outcome(path: &std::path::Path, o: &Outcome, opts: &RunOptions) {
    if !(opts.debug || opts.trace) {
        return;
    }
    let shown = shown(path);
    let path = Path::new(&shown);
    match o {
        Outcome::Ran(r) => eprintln!("{}", r.log_line(&path.display().to_string())),
        Outcome::OnDeckExists { pid } => {
            eprintln!(
                "{}: worker {pid} is already on deck; nothing to do",
                path.display()
            )
        }
        Outcome::Busy { holder } => eprintln!(
            "{}: the lease is held (worker {holder}); not waiting (no-delay)",
            path.display()
        ),
    }
}

/// Prints failures (always) and outcomes (under --debug/--trace); returns
/// the number of failures.
fn print_report(r: &SweepReport, opts: &RunOptions) -> usize {
    let mut failed = 0;
    for (path, v) in &r.visits {
        match v {
            Visit::Failed(e) => {
                failed += 1;
                eprintln!("backoffice: {}: {e}", shown(path));
            }
            Visit::Ran(o) => report_outcome(path, o, opts),
            Visit::NothingDue => {}
        }
    }
    if opts.debug || opts.trace {
        eprintln!(
            "swept {} repositories in {} ms: {} ran, {} failed",
            r.visits.len(),
            r.elapsed.as_millis(),
            r.ran(),
            failed
        );
    }
    failed
}

/// A repository as messages show it: a URL's password hidden.
fn shown(path: &Path) -> String {
    backoffice::db::redact_url(&path.to_string_lossy())
}
