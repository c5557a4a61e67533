//! `backoffice lease`: the lease, line for line as `fossil
//! test-backoffice-lease` prints it, then our extension fields.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::Result;
use backoffice::process::{self, Liveness};
use backoffice::settings::Settings;
use backoffice::{LEASE_ROW, read_lease};
use backoffice::{Repo, Slot, clock};

use crate::cli::LeaseArgs;

/// Runs `backoffice lease`.
pub fn run(a: LeaseArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    if let Some(url) = super::pg::url(&path)? {
        return super::pg::lease(&url, a.reset);
    }
    let repo = super::open(&path)?;
    if a.reset {
        repo.unset(LEASE_ROW)?;
    }
    print!("{}", render(&repo)?);
    Ok(ExitCode::SUCCESS)
}

/// The text `backoffice lease` prints.
pub fn render(repo: &Repo) -> Result<String> {
    let now = clock::now();
    let raw = repo.get(LEASE_ROW)?.unwrap_or_default();
    let (lease, problem) =
        read_lease(repo.conn()).map_err(|e| anyhow::anyhow!("reading the lease: {e}"))?;
    let lease_time = Settings::load(repo.conn())
        .map(|s| s.lease_time)
        .unwrap_or(60);
    let boot = lease.boot.as_deref();
    let live = |s: &Slot| process::liveness(s, boot, lease_time);
    let mut out = String::new();
    // Fossil's layout: a label in 11 columns, a space, the value in 20 columns.
    let _ = writeln!(out, "{:<11} {}", "now:", now);
    let _ = writeln!(out, "{:<11} \"{}\"", "lease:", raw);
    for (id, tm, slot) in [
        ("idCurrent:", "tmCurrent:", &lease.current),
        ("idNext:", "tmNext:", &lease.next),
    ] {
        let mark = if live(slot).is_alive() {
            "exists"
        } else {
            "done"
        };
        let _ = writeln!(out, "{:<11} {:<20} ({})", id, slot.pid, mark);
        if slot.expires > 0 {
            let _ = writeln!(
                out,
                "{:<11} {:<20} (now{:+})",
                tm,
                slot.expires,
                slot.expires.saturating_sub(now)
            );
        } else {
            let _ = writeln!(out, "{:<11} {:<20}", tm, slot.expires);
        }
    }
    // Our extension fields: why a holder counts as alive or gone.
    for (label, state, slot) in [
        ("startCur:", "stateCur:", &lease.current),
        ("startNext:", "stateNext:", &lease.next),
    ] {
        let start = match slot.start {
            Some(s) => s.to_string(),
            None => "-".to_owned(),
        };
        let note = match (slot.start, slot.pid > 0) {
            (Some(_), _) => "(recorded)",
            (None, true) => "(not recorded: Fossil's lease)",
            (None, false) => "",
        };
        let _ = writeln!(out, "{:<11} {:<20} {}", label, start, note).map(|_| ());
        let l: Liveness = live(slot);
        let _ = writeln!(out, "{:<11} {}", state, l.describe());
    }
    for (ns_label, beat_label, slot) in [
        ("nsCur:", "aliveCur:", &lease.current),
        ("nsNext:", "aliveNext:", &lease.next),
    ] {
        if let Some(ns) = slot.ns {
            let here = match process::pid_namespace() {
                Some(mine) if mine == ns => "(this PID namespace)",
                Some(_) => "(another PID namespace: its pid cannot be checked from here)",
                None => "",
            };
            let _ = writeln!(out, "{:<11} {:<20} {}", ns_label, ns, here);
        }
        if let Some(t) = slot.alive_until {
            let _ = writeln!(
                out,
                "{:<11} {:<20} (now{:+}; heartbeat)",
                beat_label,
                t,
                t.saturating_sub(now)
            );
        }
    }
    let boot_note = match (boot, process::boot_id()) {
        (Some(b), Some(ours)) if b == ours => "(this boot)",
        (Some(_), Some(_)) => "(another boot)",
        _ => "",
    };
    let _ = writeln!(
        out,
        "{:<11} {:<20} {}",
        "boot:",
        boot.unwrap_or("-"),
        boot_note
    );
    // The fencing term: a worker paused while another took over finds it
    // moved and commits nothing. 0 until our first takeover (Fossil's
    // leases have none).
    let _ = writeln!(
        out,
        "{:<11} {:<20} (takeovers so far; a worker's writes count only under its own term)",
        "term:", lease.term
    );
    if let Some(p) = problem {
        let _ = writeln!(out, "{:<11} {}", "problem:", p);
    }
    // Trailing spaces from empty notes would only confuse diffs.
    Ok(out
        .lines()
        .map(|l| {
            if l.starts_with("tm") {
                l.to_owned()
            } else {
                l.trim_end().to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}
