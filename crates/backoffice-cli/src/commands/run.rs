//! `backoffice run`: one worker, a sweep, or `--poll` forever.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use backoffice::poll::{Poller, SweepOptions, SweepReport, Visit};
use backoffice::{Outcome, Repo, RunOptions, Tasks, engine};

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
        let mut repo = Repo::open_with(&repos[0], busy)?;
        let outcome = engine::run(&mut repo, &tasks, &opts)?;
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
            // With --sweeps the poll ends, and like a single sweep it
            // reports failure when any repository failed in any sweep.
            let mut failed = 0;
            poller.poll(Duration::from_secs(secs.max(1)), a.sweeps, |r| {
                failed += print_report(r, &opts);
            });
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn report_outcome(path: &std::path::Path, o: &Outcome, opts: &RunOptions) {
    if !(opts.debug || opts.trace) {
        return;
    }
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
                eprintln!("backoffice: {}: {e}", path.display());
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
