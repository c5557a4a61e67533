//! The `backoffice` command-line tool, as a library.
//!
//! The `backoffice` binary is [`main`] called with the five tasks of the
//! `backoffice-tasks` crate (`src/main.rs`). A Rust host calls [`main`]
//! with its own task list from its own binary and gets every command —
//! `run`, `trigger`, `status`, `setting` (its tasks' settings included),
//! `serve`, the hidden `worker` that triggers start — for free;
//! `examples/host.rs` does exactly that. The commands that manage the
//! shipped tasks' data (`subscriber`, `outbox`, `hook`, `webhook`, `peer`,
//! `maintain`) work on any repository, whichever tasks the binary runs.
//!
//! # Layout
//!
//! * `cli.rs`: every command and flag (clap derive); the doc comments are
//!   the `--help` text.
//! * `commands/`: one file per command; each takes its parsed arguments and
//!   the task list, and returns `anyhow::Result`.
//! * `web/`: the web front behind `serve` and `cgi` (axum on tokio; this
//!   crate only, so the engine stays synchronous and light); its files
//!   import one way (see `web/mod.rs`).
//!
//! The crates depend one way: `backoffice-cli` → `backoffice-tasks` →
//! `backoffice` (the engine), and a host's own tasks → `backoffice`.

#![deny(missing_docs)]

mod cli;
pub mod commands;
pub mod web;

use std::process::ExitCode;

use clap::Parser;

pub use cli::{Cli, Command};

/// Runs the command line in `std::env::args` with these tasks.
pub fn main(tasks: backoffice::Tasks) -> ExitCode {
    main_from(std::env::args_os(), tasks)
}

/// Runs a command line with these tasks. Errors are printed on stderr with
/// their causes; the exit status is 0 on success, 1 on failure, 2 for a usage error.
pub fn main_from<I, T>(args: I, tasks: backoffice::Tasks) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Before anything else, while the file we were started from is surely
    // still the one running: workers are started by this path, so the next
    // worker after an upgrade is the new binary.
    backoffice::process::remember_installed_exe();
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let parsed = match start_path(&args) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(args),
    };
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing();
    // Replication copies start `EXE guard-temp` to clean up after a copier
    // that is killed; every binary built on this crate understands it.
    if let Ok(exe) = backoffice::process::installed_exe() {
        backoffice_tasks::replicate::set_temp_guard(backoffice::process::WorkerCommand {
            program: exe,
            args: vec!["guard-temp".into()],
        });
    }
    // Hooks and the `pipe` send method run their command under `EXE
    // guard-child`, which ends the command's whole process tree with its
    // worker (see backoffice::child).
    if let Ok(exe) = backoffice::child::self_exe() {
        backoffice::child::set_guard(backoffice::process::WorkerCommand {
            program: exe,
            args: vec!["guard-child".into()],
        });
    }
    quiet_on_closed_stdout();
    let dispatched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commands::dispatch(cli.command, tasks)
    }));
    match dispatched {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("backoffice: error: {e:#}");
            ExitCode::FAILURE
        }
        // `backoffice status | head -1`: the reader went away, which is not
        // a failure of ours. Every command prints its results last, after
        // its work is committed, so stopping here loses nothing.
        Err(payload) if is_closed_stdout(payload.as_ref()) => ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// The two command lines on the way from a request to its work, `EXE
/// trigger [-q|--quiet] REPO` and `EXE worker [--logfile FILE] REPO` (as the trigger
/// starts it), read without clap: building clap's whole command tree (every
/// command, flag and help text) is a measurable part of a process start
/// that a triggered worker pays twice. Only these exact shapes, with plain
/// non-empty values (nothing clap would read differently: no leading `-`),
/// are taken here; anything else, `--help` included, goes to clap, which
/// gives the same result for these shapes (public for the integration
/// test that holds it to that: `commands::the_start_path_reads_as_clap_does`).
#[doc(hidden)]
pub fn start_path(args: &[std::ffi::OsString]) -> Option<Cli> {
    use std::path::PathBuf;
    let plain = |a: &std::ffi::OsString| !a.is_empty() && !a.as_encoded_bytes().starts_with(b"-");
    let quiet = |a: &std::ffi::OsString| a == "-q" || a == "--quiet";
    let command = match args {
        [_, cmd, repo] if cmd == "trigger" && plain(repo) => Command::Trigger(cli::TriggerArgs {
            repo: Some(PathBuf::from(repo)),
            repository: None,
            quiet: false,
        }),
        // `--quiet` is how hosts in other languages call it
        // (examples/after_request.py), before or after the repository.
        [_, cmd, q, repo] | [_, cmd, repo, q] if cmd == "trigger" && quiet(q) && plain(repo) => {
            Command::Trigger(cli::TriggerArgs {
                repo: Some(PathBuf::from(repo)),
                repository: None,
                quiet: true,
            })
        }
        [_, cmd, repo] if cmd == "worker" && plain(repo) => Command::Worker(cli::WorkerArgs {
            logfile: None,
            repo: PathBuf::from(repo),
        }),
        [_, cmd, flag, log, repo]
            if cmd == "worker" && flag == "--logfile" && plain(log) && plain(repo) =>
        {
            Command::Worker(cli::WorkerArgs {
                logfile: Some(PathBuf::from(log)),
                repo: PathBuf::from(repo),
            })
        }
        _ => return None,
    };
    Some(Cli { command })
}

/// `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE, so
/// the write fails with EPIPE instead of killing us). Rather than thread an
/// I/O error through every line every command prints, the panic is caught
/// once in [`main_from`]; this hook keeps it from printing a backtrace on
/// the way. Any other panic is reported as usual.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_closed_stdout(info.payload()) {
            default(info)
        }
    }));
}

/// Whether a panic is std's "failed printing to stdout: Broken pipe".
fn is_closed_stdout(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = match payload.downcast_ref::<String>() {
        Some(s) => s.as_str(),
        None => payload.downcast_ref::<&str>().copied().unwrap_or(""),
    };
    msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe")
}

/// Structured logs on stderr under `RUST_LOG` (default: warnings only).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
