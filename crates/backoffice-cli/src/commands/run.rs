//! `backoffice run`: one worker, a sweep, or `--poll` forever.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
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
    // By hand (stderr a terminal), a worker says what it is doing; under
    // cron or into a log it keeps quiet unless asked (-v).
    let say = a.verbose || std::io::stderr().is_terminal();
    if repos.len() == 1 && a.poll.is_none() {
        if let Some(url) = super::pg::url(&repos[0])? {
            let outcome = super::pg::run(&url, &tasks, &opts)?;
            report_outcome(Path::new(url.redacted()), &outcome, &opts, say);
            return Ok(ExitCode::SUCCESS);
        }
    }
    if repos.len() == 1 && a.poll.is_none() {
        let mut repo = Repo::open_with(&repos[0], busy)?;
        let watch = say.then(|| DeckWatch::start(&repos[0]));
        let outcome = backoffice::run(&mut repo, &tasks, &opts);
        drop(watch);
        report_outcome(&repos[0], &outcome?, &opts, say);
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
    // A sweep over many repositories by hand shows how far it is; the
    // line is erased when a sweep ends, before its report.
    if super::progress::wanted() {
        let mut line = super::progress::Line::new();
        poller.on_progress(move |done, total| {
            let (done, total) = (done as u64, total as u64);
            line.show(
                &format!(
                    "sweep: {}",
                    super::progress::count(done, total, "repositories")
                ),
                // The first and the last are always drawn.
                done == 1 || done == total,
            );
            if done == total {
                line.clear();
            }
        });
    }
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

fn report_outcome(path: &std::path::Path, o: &Outcome, opts: &RunOptions, say: bool) {
    if !(opts.debug || opts.trace || say) {
        return;
    }
    let shown = shown(path);
    let path = Path::new(&shown);
    match o {
        Outcome::Ran(r) => eprintln!("{}", r.log_line(&path.display().to_string())),
        Outcome::OnDeckExists { pid } => {
            eprintln!(
                "{}: another worker ({pid}) is on deck; nothing to do",
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
            Visit::Ran(o) => report_outcome(path, o, opts, false),
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

/// While a worker run by hand waits, a thread that watches the lease from
/// its own read-only connection and says when this process is on deck and
/// until when: the engine sleeps in silence (a triggered worker has no one
/// to tell), and a person at a terminal should not wonder whether it hung.
/// It only reads, so it cannot change what the worker decides.
struct DeckWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeckWatch {
    fn start(path: &Path) -> DeckWatch {
        let (tx, rx) = mpsc::channel::<()>();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("backoffice-deck-watch".into())
            .spawn(move || {
                let me = i64::from(std::process::id());
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                let Ok(conn) = rusqlite::Connection::open_with_flags(&path, flags) else {
                    return;
                };
                let _ = conn.busy_timeout(Duration::from_millis(100));
                let mut told: Option<i64> = None;
                // Until the worker is done: it ends the watch by dropping it.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_millis(100))
                {
                    let Ok((lease, _)) = backoffice::read_lease(&conn) else {
                        continue;
                    };
                    if lease.next.pid != me || lease.current.pid == me {
                        continue;
                    }
                    // The engine wakes the second after the lease expires.
                    let wake = lease.current.expires.saturating_add(1);
                    if told == Some(wake) {
                        continue;
                    }
                    told = Some(wake);
                    eprintln!("{}", on_deck_line(&path, &lease.current, wake));
                }
            })
            .ok();
        DeckWatch {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for DeckWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// "app.db: waiting on deck until 13:25:01 UTC (41 s); worker 812 holds
/// the lease" (or "the last run's lease" when its holder is gone: runs
/// are spaced by the lease time even after their worker left).
fn on_deck_line(path: &Path, holder: &backoffice::Slot, wake: i64) -> String {
    let utc = backoffice::clock::format_utc(wake);
    let clock = utc.rsplit(' ').next().unwrap_or(&utc);
    let secs = wake.saturating_sub(backoffice::clock::now()).max(0);
    let why = if holder.pid > 0 {
        format!("worker {} holds the lease", holder.pid)
    } else {
        "the last run's lease has not ended yet".to_owned()
    };
    format!(
        "{}: waiting on deck until {clock} UTC ({secs} s); {why}",
        shown(path)
    )
}
