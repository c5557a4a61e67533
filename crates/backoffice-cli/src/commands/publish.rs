//! `backoffice publish`: an event from any language.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice::events::{self, Event};
use backoffice::{Backoffice, Started, Tasks};

use crate::cli::PublishArgs;

/// Runs `backoffice publish`.
pub fn run(a: PublishArgs, tasks: Tasks) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let body = match a.body_file.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the body from standard input")?;
            s
        }
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => a.body.unwrap_or_default(),
    };
    let ev = Event {
        kind: a.kind,
        title: a.title,
        body,
        url: a.url,
        author: a.author,
        time: None,
    };
    if let Some(url) = super::pg::url(&path)? {
        return super::pg::publish(&url, &ev, &tasks, a.no_trigger);
    }
    let repo = super::open(&path)?;
    repo.writable()?;
    let id = events::publish(repo.conn(), &ev)?;
    println!("published event {id}");
    if !a.no_trigger {
        let bo = Backoffice::new(tasks).reap_children(false);
        match bo.after_request(repo.conn()) {
            Started::Worker { pid } => println!("started worker {pid}"),
            Started::NotNeeded(c) => println!("{}", c.describe()),
            Started::InProcess(o) => println!("could not start a worker; ran in-process: {o:?}"),
            Started::Failed(e) => println!("could not start a worker: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
