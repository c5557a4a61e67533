//! One module per command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice::{Repo, Tasks};

use crate::cli::Command;

pub mod cgi;
pub mod demo;
pub mod docs;
pub mod hook;
pub mod lease;
pub mod maintain;
pub mod outbox;
pub mod peer;
pub mod pg;
pub mod pid;
mod progress;
pub mod publish;
pub mod run;
pub mod schedule;
mod secret;
pub mod serve;
pub mod setting;
pub mod status;
pub mod subscriber;
pub mod token;
pub mod trigger;
pub mod webhook;

/// Runs one parsed command.
pub fn dispatch(cmd: Command, tasks: Tasks) -> Result<ExitCode> {
    match cmd {
        Command::Run(a) => run::run(a, tasks),
        Command::Lease(a) => lease::run(a),
        Command::Pid(a) => pid::run(a),
        Command::Setting(a) => setting::run(a, &tasks),
        Command::Status(a) => status::run(a, tasks),
        Command::Trigger(a) => trigger::run(a, tasks),
        Command::Publish(a) => publish::run(a, tasks),
        Command::Subscriber(a) => subscriber::run(a),
        Command::Outbox(a) => outbox::run(a),
        Command::Hook(a) => hook::run(a),
        Command::Webhook(a) => webhook::run(a),
        Command::Schedule(a) => schedule::run(a, tasks),
        Command::Peer(a) => peer::run(a),
        Command::Maintain(a) => maintain::run(a),
        Command::Serve(a) => serve::run(a, tasks),
        Command::Cgi(a) => cgi::run(a, tasks),
        Command::Token(a) => token::run(a),
        Command::Demo(a) => demo::run(a, tasks),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::GuardTemp(a) => {
            let code = backoffice_tasks::replicate::guard_temp(a.pid, a.start, &a.file);
            Ok(ExitCode::from(code as u8))
        }
        Command::GuardChild(a) => {
            let code = backoffice::child::guard_main(a.fd, &a.command);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Worker(a) => {
            let code = match a.repo.to_str().filter(|s| backoffice::pg::is_url(s)) {
                Some(url) => backoffice::pg::worker_main(url, a.logfile.as_deref(), &tasks),
                None => backoffice::worker_main(&a.repo, a.logfile.as_deref(), &tasks),
            };
            Ok(ExitCode::from(code as u8))
        }
    }
}

/// The repository from `-R REPO` (`flag`) or the plain argument REPO
/// (`plain`): exactly one of them, or a clear error. Every command that
/// works on one repository takes it both ways, as Fossil's commands do.
pub(crate) fn repo_path(flag: Option<PathBuf>, plain: Option<PathBuf>) -> Result<PathBuf> {
    match (flag, plain) {
        (Some(r), None) | (None, Some(r)) => Ok(r),
        // Neither path is shown: a postgres:// URL may carry a password.
        (Some(_), Some(_)) => {
            anyhow::bail!("the repository is given twice, as REPO and with -R REPO; give it once")
        }
        (None, None) => {
            anyhow::bail!("no repository given; name one with -R REPO or as the first argument")
        }
    }
}

/// Opens a repository, with its path in any error.
pub(crate) fn open(path: &std::path::Path) -> Result<Repo> {
    Ok(Repo::open(path)?)
}

/// Parses on/off for a flag value.
pub(crate) fn on_off(name: &str, v: Option<&str>) -> Result<Option<bool>> {
    v.map(|v| {
        backoffice::settings::parse_bool(v)
            .with_context(|| format!("--{name} takes on or off, not {v:?}"))
    })
    .transpose()
}
